"""The FLOPs formula of the prefix-OPD paper (appendix B) and the model sizes it needs.

Per sequence, verl's counter for dense Qwen2/Qwen3/Llama models (forward + backward):

    d       = head_dim (or hidden / n_heads)
    N_dense = n_layers * (3*h*I + h*(n_q*d + 2*n_kv*d + n_q*d)) + 2*V*h     # V*h twice, tied or not
    F(seqs) = 6 * N_dense * sum_i s_i  +  c * sum_i s_i^2 * d * n_q * n_layers

``c`` is 12 in verl up to v0.7.0 and 6 after; the paper predates the change, so 12 is the default.
OPD counts x/3 (generation) + x/3 (student log-probs) + y/3 (teacher log-probs) + x (update) per rollout,
x and y being F of the student and of the teacher on that rollout; SFT counts x per sample.

``ModelShape`` reads those sizes from a shipped config (model_configs/), a config.json or a hub id. Everything here
is plain Python (no torch); ``transformers`` is imported only to fetch a hub config. `opd flops` is in flops.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.config import check
from opd_cli.core.errors import OpdError

CONFIG_DIR = Path(__file__).parent.parent / "model_configs"  # opd_cli/model_configs
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


# ------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class ModelShape:
    """The sizes of a dense decoder that the FLOPs formula needs."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    name: str = dataclasses.field(default="", compare=False)  # where it came from, for messages

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "") -> ModelShape:
        """Read a config.json mapping (Qwen2/Qwen3/Llama keys; a nested ``text_config`` is used when present)."""
        if not isinstance(config, dict):
            raise OpdError(f"model config {name or ''} is not a JSON object".replace("  ", " "))
        if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
            config = config["text_config"]
        missing = [k for k in REQUIRED if config.get(k) is None]
        if missing:
            raise OpdError(
                f"model config {name or '(unnamed)'} lacks {', '.join(missing)}: "
                "FLOPs need a dense decoder config.json (hidden_size, intermediate_size, num_hidden_layers, "
                "num_attention_heads, vocab_size; num_key_value_heads and head_dim are optional)"
            )
        try:
            h = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            kv = int(config.get("num_key_value_heads") or heads)  # absent in old Llama configs: multi-head attention
            d = int(config.get("head_dim") or h // heads)
            return cls(
                hidden_size=h,
                intermediate_size=int(config["intermediate_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=kv,
                head_dim=d,
                vocab_size=int(config["vocab_size"]),
                name=name,
            )
        except (TypeError, ValueError, ZeroDivisionError):
            raise OpdError(f"model config {name or '(unnamed)'} has non-integer sizes: check its config.json") from None

    @classmethod
    def from_source(cls, source: str | Path) -> ModelShape:
        """A shipped name (``qwen3-8b``), a folder with config.json, a config.json file, a hub id, or ``real:<name>``
        (a model of the real-model world)."""
        from opd_cli.core.models import resolve_source

        src = resolve_source(str(source).strip())
        check(src != "", "empty model config: pass a shipped name (e.g. qwen3-8b), a folder, a config.json or a hub id")
        path = Path(src).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise OpdError(f"{src} has no config.json: pass a model folder, a config.json file or a shipped name")
            return cls.from_config(_read_json(path / "config.json"), name=src)
        if path.is_file():
            return cls.from_config(_read_json(path), name=src)
        shipped = shipped_config_path(src)
        if shipped is not None:
            return cls.from_config(_read_json(shipped), name=src)
        if src.startswith((".", "/", "~")) or src.endswith(".json") or src.count("/") != 1:
            raise OpdError(
                f"unknown model config {src!r}: not a file or folder, not a shipped config "
                f"({', '.join(shipped_names())}) and not a hub id like Qwen/Qwen3-8B"
            )
        return cls.from_config(_hub_config(src), name=src)


def shipped_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def shipped_config_path(name: str) -> Path | None:
    """The shipped config for ``qwen3-8b`` or a hub id whose last part matches (``Qwen/Qwen3-8B``)."""
    key = name.rstrip("/").split("/")[-1].lower()
    p = CONFIG_DIR / f"{key}.json"
    return p if key and p.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OpdError(f"cannot read {path} as JSON ({type(err).__name__}): pass a valid config.json") from None


def _hub_config(hub_id: str) -> dict[str, Any]:
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(hub_id).to_dict()
    except Exception as err:  # network, gated repos, unknown model types: all one line for the user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise OpdError(
            f"cannot fetch the config of {hub_id!r} ({first}): pass a local config.json or a shipped name"
        ) from None


# ------------------------------------------------------------------------------------------ formulas
def n_dense(shape: ModelShape) -> int:
    """Dense parameter count of the formula: MLP + attention projections per layer, plus 2*V*h."""
    h, d = shape.hidden_size, shape.head_dim
    attn = h * (shape.num_heads * d + 2 * shape.num_kv_heads * d + shape.num_heads * d)
    mlp = 3 * h * shape.intermediate_size
    return shape.num_layers * (mlp + attn) + 2 * shape.vocab_size * h


def seq_sums(seq_lens: Iterable[int]) -> tuple[int, int]:
    """(sum s_i, sum s_i^2) of sequence lengths."""
    lens = [int(s) for s in seq_lens]
    return sum(lens), sum(s * s for s in lens)


def flops_from_sums(shape: ModelShape, sum_s: float, sum_s2: float, attn_coef: float = 12) -> float:
    """F for sequences given only sum s_i and sum s_i^2 (F is linear in both)."""
    return 6 * n_dense(shape) * sum_s + attn_coef * sum_s2 * shape.head_dim * shape.num_heads * shape.num_layers


def flops(shape: ModelShape, seq_lens: Iterable[int], attn_coef: float = 12) -> float:
    """F(seqs), forward + backward FLOPs of training on sequences of ``seq_lens`` tokens (prompt + response)."""
    sum_s, sum_s2 = seq_sums(seq_lens)
    return flops_from_sums(shape, sum_s, sum_s2, attn_coef)


def opd_flops(student: ModelShape, teacher: ModelShape, sum_s: float, sum_s2: float, attn_coef: float = 12,
              lora: bool = False) -> float:
    """OPD rollouts: x/3 (generate) + x/3 (student log-probs) + y/3 (teacher log-probs) + x (update).

    ``lora``: the update of a LoRA student is 2x/3, a forward and the backward's activation gradients, without the
    weight gradients of the frozen base (a third of x); the adapters' own FLOPs, 2 r (d_in + d_out) per token and
    linear layer (a few % of the layer's at r = 16), are not counted."""
    x = flops_from_sums(student, sum_s, sum_s2, attn_coef)
    y = flops_from_sums(teacher, sum_s, sum_s2, attn_coef)
    return x / 3 + x / 3 + y / 3 + (2 * x / 3 if lora else x)


def sft_flops(student: ModelShape, sum_s: float, sum_s2: float, attn_coef: float = 12) -> float:
    """SFT samples: x per sample (one forward + backward)."""
    return flops_from_sums(student, sum_s, sum_s2, attn_coef)


def probe_flops(student: ModelShape, teacher: ModelShape, sum_s: float, sum_s2: float, attn_coef: float = 12) -> float:
    """PG-OPD's probe: one forward of the student and one of the teacher over each candidate's prompt + window,
    x/3 + y/3 (forward only: a third of F)."""
    return (flops_from_sums(student, sum_s, sum_s2, attn_coef) + flops_from_sums(teacher, sum_s, sum_s2, attn_coef)) / 3
