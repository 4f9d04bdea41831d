"""`opd plot KIND RUNS...`: the paper's figures and tables from run folders (docs/run-format.md), nothing else.

Each kind reads only the files a command wrote (config.yaml, metrics.jsonl, eval/..., probe.csv, table.csv,
kl_by_position.csv), draws with matplotlib's Agg backend, writes PNG + PDF (and CSV/markdown for tables) and
returns the values it drew, read back from the Axes, so tests can compare them with the inputs.

Here: the command (``PlotConfig``, ``run_plot``) and ``PLOTTERS``, kind -> function. read.py reads run folders, draw.py
holds the matplotlib helpers and ``PlotResult``, curves.py the line-figure kinds, support.py the training-dynamics
kinds (Rethinking OPD) and tables.py the table kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opd_cli.config import check, field
from opd_cli.log import logger
from opd_cli.plot.curves import (
    plot_compute_vs_acc,
    plot_kl_position,
    plot_lr_sweep,
    plot_overlap,
    plot_sft_prefix,
    plot_teacher_prefix,
)
from opd_cli.plot.draw import PlotResult
from opd_cli.plot.profiles import plot_position_profile, plot_reward_auroc
from opd_cli.plot.support import plot_dynamics, plot_topk_support
from opd_cli.plot.tables import plot_main_table, plot_window_ablation

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
    metric: str = field("kl", help="position-profile: the kl-by-position profile to draw, kl | entropy-student | "
                                   "entropy-teacher | overlap.")

    def __post_init__(self) -> None:
        check(self.kind in KINDS, f"unknown plot kind {self.kind!r}: use one of {', '.join(KINDS)}")
        check(bool(self.runs), f"`opd plot {self.kind}` needs one or more run folders (or folders of runs)")
        check(self.x_axis in ("flops", "wall", "step"), f"--x-axis must be flops, wall or step, got {self.x_axis!r}")
        check(all(s >= 0 for s in self.steps), f"--steps must be non-negative, got {self.steps}")


PLOTTERS: dict[str, Callable[[PlotConfig, Path], PlotResult]] = {
    "kl-position": plot_kl_position,
    "teacher-prefix": plot_teacher_prefix,
    "compute-vs-acc": plot_compute_vs_acc,
    "sft-prefix": plot_sft_prefix,
    "lr-sweep": plot_lr_sweep,
    "window-ablation": plot_window_ablation,
    "main-table": plot_main_table,
    "overlap": plot_overlap,
    "topk-support": plot_topk_support,
    "dynamics": plot_dynamics,
    "position-profile": plot_position_profile,
    "reward-auroc": plot_reward_auroc,
}


def run_plot(cfg: PlotConfig) -> PlotResult:
    """`opd plot`: draw one kind and print the files written."""
    result = PLOTTERS[cfg.kind](cfg, Path(cfg.output_dir))
    for p in result.paths:
        logger.info(f"wrote {p}")
    if "markdown" in result.data:
        print(result.data["markdown"], end="")
    return result
