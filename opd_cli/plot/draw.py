"""Drawing for `opd plot`: matplotlib (Agg, imported only when a figure is drawn), panels, saving PNG + PDF,
reading the drawn lines back, and ``PlotResult``, what every kind returns."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any


@dataclass
class PlotResult:
    """The files written and the values drawn: ``data[panel][label] = {"x": [...], "y": [...]}`` or table rows."""

    paths: list[Path]
    data: dict[str, Any] = dc_field(default_factory=dict)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def axes_data(ax: Any) -> dict[str, dict[str, list[float]]]:
    """The labelled lines of an Axes, as plotted: ``{label: {"x": [...], "y": [...]}}``."""
    out = {}
    for line in ax.get_lines():
        lab = line.get_label()
        if lab and not lab.startswith("_"):
            out[lab] = {"x": [float(v) for v in line.get_xdata()], "y": [float(v) for v in line.get_ydata()]}
    return out


def save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.tight_layout()
    for p in paths:  # no creation date in the PDF: the same runs give the same bytes (clean diffs of analysis/)
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    _plt().close(fig)
    return paths


def _panels(n: int, width: float = 5.0) -> tuple[Any, list[Any]]:
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(width * n, 3.8), squeeze=False)
    return fig, list(axes[0])
