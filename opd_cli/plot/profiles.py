"""The `opd plot` kinds drawn from `opd kl-by-position` folders beyond the KL curve (Rethinking OPD §6.1):

* ``position-profile``: one ``--metric`` of ``kl_by_position.csv`` (kl, entropy-student, entropy-teacher, overlap)
  against the output position, one line per step, coloured from early (dark) to late (light) steps: Fig. 13
  (student entropy) and Fig. 23 (teacher entropy).
* ``reward-auroc``: from ``rollout_rewards.jsonl`` (``--grade``), the AUROC of the sequence-mean reward for correct
  vs incorrect rollouts over steps, and per step the two reward distributions as empirical CDFs: Fig. 14.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opd_cli.analyses.rollout_rewards import RECORDS_FILE, auroc, read_records
from opd_cli.core.errors import OpdError
from opd_cli.core.table_io import write_csv
from opd_cli.plot.curves import evenly_spaced
from opd_cli.plot.draw import PlotResult, _panels, _plt, axes_data, save
from opd_cli.plot.read import collect, label, read_csv

if TYPE_CHECKING:
    from opd_cli.plot.config import PlotConfig

TABLE = "kl_by_position.csv"
Y_LABELS = {
    "kl": "reverse KL (sampled-token estimate)",
    "entropy-student": "student entropy (nats)",
    "entropy-teacher": "teacher entropy (nats)",
    "overlap": "top-k overlap ratio (student, teacher)",
}


def _metric_column(cfg: PlotConfig) -> str:
    from opd_cli.analyses.position_table import METRICS, metric_column

    if cfg.metric not in METRICS:
        raise OpdError(f"unknown --metric {cfg.metric!r} for position-profile: use one of {', '.join(METRICS)}")
    return metric_column(cfg.metric)


def profile_curves(run: Path, cfg: PlotConfig, column: str) -> dict[str, tuple[list[float], list[float]]]:
    """``{"step N": (bin starts, means of column)}`` from the run's kl_by_position.csv (rows without a value, such as
    the logged rows of an entropy column, are left out); ``(source)`` is added when both sources remain."""
    f = run / TABLE
    if not f.is_file():
        raise OpdError(f"{run} has no {TABLE}: run opd kl-by-position first")
    rows = read_csv(f)
    if rows and column not in rows[0]:
        raise OpdError(f"{f} has no {column} column: run opd kl-by-position --metric {cfg.metric}")
    rows = [r for r in rows if r.get(column) not in (None, "")]
    rows = [r for r in rows if not cfg.steps or int(float(r["step"])) in cfg.steps]
    if not rows:
        at = f" at step(s) {', '.join(map(str, cfg.steps))}" if cfg.steps else ""
        raise OpdError(f"{f} has no {column} values{at}")
    keys = sorted({(r["source"], int(float(r["step"]))) for r in rows}, key=lambda t: (t[1], t[0]))
    several = len({s for s, _ in keys}) > 1
    curves = {}
    for source, step in keys:
        sel = sorted((r for r in rows if r["source"] == source and int(float(r["step"])) == step),
                     key=lambda r: float(r["bin_start"]))
        name = f"step {step}" + (f" ({source})" if several else "")
        curves[name] = ([float(r["bin_start"]) for r in sel], [float(r[column]) for r in sel])
    return curves


def plot_position_profile(cfg: PlotConfig, out: Path) -> PlotResult:
    column = _metric_column(cfg)
    runs = collect(cfg, lambda run: profile_curves(run, cfg, column), needs=TABLE)
    fig, axes = _panels(len(runs))
    _plt()  # the Agg backend, before any other matplotlib import
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    data = {}
    for ax, (run, curves) in zip(axes, runs, strict=True):
        for i, (name, (xs, ys)) in enumerate(curves.items()):
            ax.plot(xs, ys, marker="o", ms=3, label=name, color=cmap(0.9 * i / max(len(curves) - 1, 1)))
        ax.set(title=label(run), xlabel="response position (bin start, tokens)", ylabel=Y_LABELS[cfg.metric])
        ax.legend(fontsize=8)
        data[label(run)] = axes_data(ax)
    return PlotResult(save(fig, out, f"position-profile-{cfg.metric}"), data)


def _rewards(run: Path) -> dict[int, tuple[list[float], list[float]]]:
    """``{step: (rewards of correct rollouts, rewards of incorrect ones)}``; rollouts without a reward are left out."""
    f = run / RECORDS_FILE
    if not f.is_file():
        raise OpdError(f"{run} has no {RECORDS_FILE}: run opd kl-by-position --grade first")
    out: dict[int, tuple[list[float], list[float]]] = {}
    for r in read_records(f):
        if r.get("seq_mean_reward") is not None:
            good, bad = out.setdefault(int(r["step"]), ([], []))
            (good if r["correct"] else bad).append(float(r["seq_mean_reward"]))
    if not out:
        raise OpdError(f"{f} has no graded rollouts with a reward")
    return dict(sorted(out.items()))


def _ecdf(values: list[float]) -> tuple[list[float], list[float]]:
    xs = sorted(values)
    return xs, [(i + 1) / len(xs) for i in range(len(xs))]


def plot_reward_auroc(cfg: PlotConfig, out: Path) -> PlotResult:
    """The AUROC of each step's rewards (all steps), and the reward distributions at ``--steps`` (default: three
    evenly spaced steps of each run)."""
    runs = collect(cfg, _rewards, needs=RECORDS_FILE)
    shown: list[tuple[Path, int]] = []
    for run, by_step in runs:
        lacking = [s for s in cfg.steps if s not in by_step]
        if lacking:
            raise OpdError(f"{run / RECORDS_FILE} has no rollouts at step(s) {', '.join(map(str, lacking))} "
                           f"(graded: {', '.join(map(str, by_step))})")
        shown += [(run, s) for s in (cfg.steps or evenly_spaced(list(by_step)))]
    fig, axes = _panels(1 + len(shown), 4.5)
    table: list[dict[str, Any]] = []
    for run, by_step in runs:
        values = {s: auroc(good, bad) for s, (good, bad) in by_step.items()}
        axes[0].plot(list(values), [float("nan") if v is None else v for v in values.values()], marker="o",
                     label=label(run))
        table += [{"run": label(run), "step": s, "correct": len(by_step[s][0]), "incorrect": len(by_step[s][1]),
                   "auroc": "" if v is None else v} for s, v in values.items()]
    axes[0].axhline(0.5, ls=":", color="grey")  # chance
    axes[0].set(xlabel="step", ylabel="AUROC (correct vs incorrect)", title="sequence-mean reward AUROC", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    data: dict[str, Any] = {"auroc": axes_data(axes[0]), "table": table}
    runs_by_path = dict(runs)
    for ax, (run, step) in zip(axes[1:], shown, strict=True):
        good, bad = runs_by_path[run][step]
        for name, vals, color in (("correct", good, "tab:green"), ("incorrect", bad, "tab:red")):
            if vals:
                ax.step(*_ecdf(vals), where="post", label=name, color=color)
        a = auroc(good, bad)
        who = f"{label(run)}, " if len(runs) > 1 else ""  # one run: its name is in the first panel's legend
        ax.set(title=f"{who}step {step}: AUROC {'n/a' if a is None else f'{a:.2f}'} ({len(good)} correct, {len(bad)} not)",
               xlabel="sequence-mean reward (mean of logp_T - logp_S)", ylabel="fraction of rollouts (CDF)", ylim=(0, 1.05))
        ax.legend(fontsize=8)
        data[f"{label(run)} step {step}"] = axes_data(ax)
    paths = save(fig, out, "reward-auroc") + [write_csv(table, out / "reward-auroc.csv")]
    return PlotResult(paths, data)
