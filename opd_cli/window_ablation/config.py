"""`opd window-ablation`'s options (:class:`WindowAblationConfig`) and the parsing of its windows and overrides.
No torch here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.core.runs import IF_EXISTS
from opd_cli.toy.world import check_toy_student

_WINDOW_RE = re.compile(r"^(-?\d+):(-?\d+)$")
_TAIL_RE = re.compile(r"^tail:(-?\d+)$")


@dataclass
class WindowAblationConfig:
    """Expand one training config into loss-window runs plus the full and prefix references; evaluate; tabulate."""

    command = "window-ablation"

    train_recipe: str = field("", help="Base `opd train` recipe (recipes/train-*.yaml; '' = opd train's defaults).")
    overrides: list[str] = field([], help="Overrides of the base config, key=value (repeatable), e.g. steps=30.")
    toy_student: str | None = field(
        None,
        help="The toy world's student every run distils into: large | small "
        "(None = the base config's, large unless it sets toy_student).",
    )
    windows: list[str] = field(
        ["1024:2048", "2048:3072", "3072:4096", "tail:1024"],
        help="Loss windows: A:B = response positions [A, B) in tokens, tail:N = the last N tokens of each rollout.",
    )
    prefix_ref: int = field(
        1024, help="Prefix-OPD reference: generation stops after L tokens (0 = no prefix reference)."
    )
    full_ref: bool = field(True, help="Add the full-OPD reference run (all positions trained).")
    reference_runs: list[str] = field(
        [],
        help="Finished `opd train` run folders that stand in for the full/prefix references when trained with the same "
        "settings (more steps are fine: the lr is constant, so their first steps are the same run); their checkpoints "
        "are hard-linked, not retrained ([] = train the references here).",
    )
    eval_steps: list[int] = field(
        [10, 20, 30], help="Checkpoint steps to evaluate on the dev benchmark (paper: 10,20,30)."
    )
    dev_benchmark: str = field("toy-dev", help="Benchmark of the table (paper: aime24).")
    eval_samples: int = field(4, help="Samples per dev problem (n of Mean Acc@n; paper: 16).")
    eval_limit: int = field(0, help="Evaluate only the first N dev problems (0 = all).")
    eval_max_new_tokens: int = field(
        0, help="Response cap at evaluation in tokens (0 = the eval default: no training cap)."
    )
    eval_batch_size: int = field(0, help="Sequences per generate call at evaluation (0 = the eval default).")
    eval_temperature: float = field(1.0, help="Sampling temperature at evaluation (the paper: 1.0).")
    eval_backend: str = field("hf", help="Evaluation backend: hf | vllm (as opd eval --backend; the references' evaluations are adopted only from the same one).")
    skip_eval: bool = field(False, help="Train only; the table then shows the evaluations already on disk.")
    output_dir: str = field("runs/window-ablation", help="Ablation folder: runs/<label>/, table.csv, table.md.")
    if_exists: str = field(
        "resume",
        help="Existing ablation folder: resume (default: complete runs are reused, others resumed) | overwrite "
        "(delete it and retrain everything) | raise.",
    )

    def __post_init__(self) -> None:
        check(
            self.prefix_ref >= 0, f"--prefix-ref must be 0 (off) or a positive number of tokens, got {self.prefix_ref}"
        )
        check(all(s >= 0 for s in self.eval_steps), f"--eval-steps must be non-negative steps, got {self.eval_steps}")
        check(self.eval_samples >= 1, f"--eval-samples must be at least 1, got {self.eval_samples}")
        check(self.eval_limit >= 0, f"--eval-limit must be 0 (all) or positive, got {self.eval_limit}")
        check(self.eval_backend in ("hf", "vllm"), f"--eval-backend must be hf or vllm, got {self.eval_backend!r}")
        check(self.if_exists in IF_EXISTS, f"--if-exists must be one of {', '.join(IF_EXISTS)}, got {self.if_exists!r}")
        check(
            bool(self.windows) or self.full_ref or self.prefix_ref > 0,
            "nothing to run: give --windows or keep a reference run",
        )
        for w in self.windows:
            parse_window(w)  # one-line error on a malformed window before anything runs
        parse_overrides(self.overrides)
        if self.toy_student is not None:
            check_toy_student(self.toy_student)


# ------------------------------------------------------------------------------------ pure functions
def parse_window(spec: str) -> tuple[str, int, int]:
    """``"A:B"`` -> ("window", A, B); ``"tail:N"`` -> ("tail", N, 0). Positions count response tokens from 0."""
    s = str(spec).strip().lower().replace(" ", "")
    if m := _TAIL_RE.match(s):
        n = int(m.group(1))
        check(n > 0, f"window {spec!r}: tail:N needs N > 0 tokens")
        return ("tail", n, 0)
    m = _WINDOW_RE.match(s)
    if m is None:
        raise OpdError(
            f"window {spec!r} is malformed: write A:B (response positions [A, B), e.g. 1024:2048) or tail:N (e.g. tail:1024)"
        )
    a, b = int(m.group(1)), int(m.group(2))
    check(a >= 0, f"window {spec!r} starts at {a} < 0, inside the prompt: windows count response tokens from 0")
    check(a < b, f"window {spec!r} is empty: A must be below B")
    return ("window", a, b)


def window_label(spec: str) -> tuple[str, str, str]:
    """(run label, method, window text) of one window spec."""
    kind, a, b = parse_window(spec)
    if kind == "tail":
        return f"tail-{a}", "OPD window", f"last {a}"
    return f"window-{a}-{b}", "OPD window", f"[{a}, {b})"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["steps=30", "lr=1e-4"]`` -> {"steps": 30, "lr": 0.0001} (values read as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OpdError(f"--set {item!r} is not key=value (e.g. --set steps=30)")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key] = value
    return out
