"""Training-dynamics kinds of `opd plot` for the Rethinking-OPD experiments: dev accuracy over checkpoints beside
the overlap dynamics that `opd train` logs (overlap ratio, overlap-token advantage, entropy gap, overlap mass).

    topk-support   Fig. 7 and 15-16: one curve per top-k support or support size, labelled by the run's loss
                   ("sampled-token", "top-16 student", "top-16 overlap", "top-4 student", ...)
    dynamics       Fig. 6, 8 and 9: the same panels labelled by run name (two teachers, cold start, template)

Over a run's training seeds (``<run>-s<k>`` folders beside it) each line is the mean with a ± sd band, and a table
(markdown and CSV) gives the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opd_cli.core.errors import OpdError
from opd_cli.core.table_io import markdown_table, write_csv
from opd_cli.plot.draw import PlotResult, _panels, axes_data, save
from opd_cli.plot.read import dev_curve, label, metrics_by_step
from opd_cli.plot.seeds import band, collect_seeds, label_with_seeds, mean_curve, percent

if TYPE_CHECKING:
    from opd_cli.plot.config import PlotConfig

DYNAMICS = ("overlap_ratio", "overlap_adv", "entropy_gap", "overlap_mass_teacher")


def loss_label(config: dict[str, Any]) -> str:
    """How a run's training loss reads in a legend: sampled-token, full-vocabulary, or top-k with its support."""
    loss = config.get("loss", "sampled")
    if loss == "topk":
        return f"top-{config.get('topk', 16)} {config.get('topk_support', 'student')}"
    return {"sampled": "sampled-token", "full": "full-vocabulary"}.get(loss, str(loss))


def _load(run: Path, cfg: PlotConfig) -> tuple[str, dict[int, float], dict[int, dict[str, Any]]]:
    bench, scores = dev_curve(run, cfg)
    m = metrics_by_step(run)
    if not any(r.get("overlap_ratio") is not None for r in m.values()):
        raise OpdError(f"run {run}: metrics.jsonl has no overlap metrics (logged by opd train with --metrics-every > 0)")
    return bench, scores, m


def _mean_lines(ax: Any, curves: list[dict[int, float]], lab: str, marker: str) -> dict[int, tuple[float, float | None]]:
    """Draw the mean over seeds of ``{step: value}`` curves with its ± sd band; returns the mean curve."""
    mean = mean_curve(curves)
    xs, means, sds = list(mean), [m for m, _ in mean.values()], [sd for _, sd in mean.values()]
    ax.plot(xs, means, marker=marker, label=lab)
    band(ax, xs, means, sds)
    return mean


def _draw(cfg: PlotConfig, out: Path, stem: str, name: Any) -> PlotResult:
    """Dev accuracy and the overlap dynamics per method; over a run's seeds (``<run>-s<k>``) the mean with a ± sd
    band. ``<stem>.md``/``.csv``: per method, the dev accuracy at each evaluated step and the dynamics at the last
    logged step, mean ± sd."""
    from opd_cli.core.runs import read_config

    runs = collect_seeds(cfg, lambda run: _load(run, cfg))
    fig, axes = _panels(1 + len(DYNAMICS), 4.0)
    rows, steps = [], set()
    for run, seeds in runs:
        lab = label_with_seeds(name(run, read_config(run)), len(seeds))
        acc = _mean_lines(axes[0], [scores for _, scores, _ in seeds], lab, "o")
        steps |= set(acc)
        row: dict[str, Any] = {"method": lab, "seeds": len(seeds)}
        row |= {f"acc_step_{s}": m for s, (m, _) in acc.items()} | {f"acc_step_{s}_sd": sd for s, (_, sd) in acc.items()}
        for ax, key in zip(axes[1:], DYNAMICS, strict=True):
            curves = [{s: float(r[key]) for s, r in m.items() if r.get(key) is not None} for _, _, m in seeds]
            last = _mean_lines(ax, curves, lab, ".")
            if last:
                row[key], row[f"{key}_sd"] = last[max(last)]
        rows.append(row)
    benches = sorted({b for _, seeds in runs for b, _, _ in seeds})
    axes[0].set(xlabel="step", ylabel=f"{'/'.join(benches)} Mean Acc", title="dev accuracy")
    for ax, key in zip(axes[1:], DYNAMICS, strict=True):
        ax.set(xlabel="step", title=key)
    for ax in axes:
        ax.legend(fontsize=7)
    md = _summary(rows, sorted(steps))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md)
    paths = save(fig, out, stem) + [write_csv(rows, out / f"{stem}.csv"), out / f"{stem}.md"]
    data = {"acc": axes_data(axes[0])} | {key: axes_data(ax) for ax, key in zip(axes[1:], DYNAMICS, strict=True)}
    return PlotResult(paths, data | {"rows": rows, "markdown": md})


def _summary(rows: list[dict[str, Any]], steps: list[int]) -> str:
    """The markdown table: dev Mean Acc per evaluated step (percent) and the last logged dynamics, mean ± sd."""
    body = []
    for r in rows:
        accs = [percent(r.get(f"acc_step_{s}"), r.get(f"acc_step_{s}_sd")) for s in steps]
        dyn = [_plain(r.get(k), r.get(f"{k}_sd")) for k in DYNAMICS]
        body.append([r["method"], str(r["seeds"]), *accs, *dyn])
    md = markdown_table(["method", "seeds", *[f"acc @{s}" for s in steps], *[f"{k} (last)" for k in DYNAMICS]], body)
    most = max((r["seeds"] for r in rows), default=1)
    spread = f"mean ± standard deviation over up to {most} training seeds" if most > 1 else "one training seed"
    return f"Dev Mean Acc (%) at each evaluated step and the overlap dynamics at the last logged step; {spread}.\n\n{md}"


def _plain(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def plot_topk_support(cfg: PlotConfig, out: Path) -> PlotResult:
    return _draw(cfg, out, "topk-support", lambda run, config: loss_label(config))


def plot_dynamics(cfg: PlotConfig, out: Path) -> PlotResult:
    return _draw(cfg, out, "dynamics", lambda run, config: label(run))
