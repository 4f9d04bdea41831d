"""The options of `opd plot` (:class:`PlotConfig`) and the kinds it draws; the plotting modules import it for types."""

from __future__ import annotations

from dataclasses import dataclass

from opd_cli.core.config import check, field

KINDS = (
    "kl-position",
    "teacher-prefix",
    "compute-vs-acc",
    "sft-prefix",
    "lr-sweep",
    "window-ablation",
    "main-table",
    "overlap",
    "topk-support",
    "dynamics",
    "position-profile",
    "reward-auroc",
)


@dataclass
class PlotConfig:
    command = "plot"

    kind: str = field("", help=f"What to draw: {' | '.join(KINDS)}.")
    runs: list[str] = field([], help="Run folders, or folders of run folders.")
    output_dir: str = field("plots", help="Folder for the PNG/PDF (and CSV/markdown) files.")
    steps: list[int] = field([], help="kl-position: training steps to draw; [] = three evenly spaced logged steps.")
    dev_benchmark: str = field("", help="Dev benchmark that picks checkpoints; '' = each run's eval/best.json.")
    in_domain: list[str] = field(
        ["math500", "aime24", "aime25", "toy"], help="main-table/lr-sweep: in-domain benchmarks."
    )
    ood: list[str] = field(
        ["gpqa", "mmlu-pro", "mmlu_pro", "toy-ood"], help="main-table/lr-sweep: out-of-domain benchmarks."
    )
    x_axis: str = field("flops", help="compute-vs-acc, sft-prefix: x axis, flops | wall (training wall time) | step.")
    match_acc: float = field(
        -1.0, help="lr-sweep: dev accuracy to match for OOD (0..1); -1 = the best level every run reaches."
    )
    seeds: bool = field(
        True, help="main-table, compute-vs-acc, sft-prefix, lr-sweep, window-ablation: the folders <run>-s<k> beside "
                   "a run are its training seeds k: mean ± sd in tables, a ± sd band on curves; --no-seeds: each alone."
    )
    metric: str = field("kl", help="position-profile: the kl-by-position profile to draw, kl | entropy-student | "
                                   "entropy-teacher | overlap.")

    def __post_init__(self) -> None:
        check(self.kind in KINDS, f"unknown plot kind {self.kind!r}: use one of {', '.join(KINDS)}")
        check(bool(self.runs), f"`opd plot {self.kind}` needs one or more run folders (or folders of runs)")
        check(self.x_axis in ("flops", "wall", "step"), f"--x-axis must be flops, wall or step, got {self.x_axis!r}")
        check(all(s >= 0 for s in self.steps), f"--steps must be non-negative, got {self.steps}")
