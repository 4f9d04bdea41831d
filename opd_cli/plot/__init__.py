"""`opd plot KIND RUNS...`: the paper's figures and tables from run folders (docs/run-format.md), nothing else.

Each kind reads only the files a command wrote (config.yaml, metrics.jsonl, eval/..., probe.csv, table.csv,
kl_by_position.csv), draws with matplotlib's Agg backend, writes PNG + PDF (and CSV/markdown for tables) and
returns the values it drew, read back from the Axes, so tests can compare them with the inputs.

Here: the command (``run_plot``) and ``PLOTTERS``, kind -> function. config.py holds its options (``PlotConfig``,
``KINDS``), read.py reads run folders, draw.py holds the matplotlib helpers and ``PlotResult``, curves.py the
line-figure kinds, support.py the training-dynamics kinds (Rethinking OPD) and tables.py the table kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from opd_cli.core.log import logger
from opd_cli.plot.config import PlotConfig
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
