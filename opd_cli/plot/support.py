"""Training-dynamics kinds of `opd plot` for the Rethinking-OPD experiments: dev accuracy over checkpoints beside
the overlap dynamics that `opd train` logs (overlap ratio, overlap-token advantage, entropy gap, overlap mass).

    topk-support   Fig. 7 and 15-16: one curve per top-k support or support size, labelled by the run's loss
                   ("sampled-token", "top-16 student", "top-16 overlap", "top-4 student", ...)
    dynamics       Fig. 6, 8 and 9: the same panels labelled by run name (two teachers, cold start, template)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opd_cli.core.errors import OpdError
from opd_cli.plot.draw import PlotResult, _panels, axes_data, save
from opd_cli.plot.read import collect, dev_curve, label, metrics_by_step

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


def _draw(cfg: PlotConfig, out: Path, stem: str, name: Any) -> PlotResult:
    from opd_cli.core.runs import read_config

    runs = collect(cfg, lambda run: _load(run, cfg))
    fig, axes = _panels(1 + len(DYNAMICS), 4.0)
    for run, (_, scores, m) in runs:
        lab = name(run, read_config(run))
        axes[0].plot(list(scores), list(scores.values()), marker="o", label=lab)
        for ax, key in zip(axes[1:], DYNAMICS, strict=True):
            steps = [s for s in sorted(m) if m[s].get(key) is not None]
            ax.plot(steps, [float(m[s][key]) for s in steps], marker=".", label=lab)
    benches = sorted({b for _, (b, _, _) in runs})
    axes[0].set(xlabel="step", ylabel=f"{'/'.join(benches)} Mean Acc", title="dev accuracy")
    for ax, key in zip(axes[1:], DYNAMICS, strict=True):
        ax.set(xlabel="step", title=key)
    for ax in axes:
        ax.legend(fontsize=7)
    data = {"acc": axes_data(axes[0])} | {key: axes_data(ax) for ax, key in zip(axes[1:], DYNAMICS, strict=True)}
    return PlotResult(save(fig, out, stem), data)


def plot_topk_support(cfg: PlotConfig, out: Path) -> PlotResult:
    return _draw(cfg, out, "topk-support", lambda run, config: loss_label(config))


def plot_dynamics(cfg: PlotConfig, out: Path) -> PlotResult:
    return _draw(cfg, out, "dynamics", lambda run, config: label(run))
