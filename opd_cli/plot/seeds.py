"""Training seeds in `opd plot`: the folders ``<run>-s<k>`` beside a run folder are the same method trained with
seed k (``make toy-paper`` names them so). Tables show the mean ± sample standard deviation over a run's seeds and
curves the mean with a ± sd band; ``--no-seeds`` takes every folder on its own."""

from __future__ import annotations

import glob
import math
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opd_cli.core.errors import OpdError
from opd_cli.core.log import logger
from opd_cli.plot.read import at_step, collect

if TYPE_CHECKING:
    from opd_cli.plot.config import PlotConfig

SEED_SUFFIX = re.compile(r"-s(\d+)$")


def seed_folders(run: Path, needs: str = "") -> list[Path]:
    """``run`` and the run folders ``<run>-s<k>`` beside it (a config.yaml, or the file ``needs``), by seed;
    ``<run>@<step>`` gives ``<run>-s<k>@<step>``."""
    folder, step = at_step(run)
    if step is not None:
        return [f.with_name(f"{f.name}@{step}") for f in seed_folders(folder, needs)]
    found = [(0, run)]
    for other in run.parent.glob(f"{glob.escape(run.name)}-s*"):
        tail = other.name[len(run.name) + 2 :]
        is_run = (other / "config.yaml").is_file() or bool(needs and (other / needs).is_file())
        if tail.isdigit() and int(tail) > 0 and is_run:
            found.append((int(tail), other))
    return [folder for _, folder in sorted(found)]


def collect_seeds(cfg: PlotConfig, load: Callable[[Path], Any], needs: str = "") -> list[tuple[Path, list[Any]]]:
    """Like :func:`~opd_cli.plot.read.collect`, but one entry per method: its seed-0 folder and what ``load`` gave
    for each of its seeds. A ``<run>-s<k>`` folder given (or found) beside ``<run>`` joins it; a seed folder whose
    data is missing is left out with a note (the table's seed count shows it)."""
    runs = collect(cfg, load, needs)
    if not cfg.seeds:
        return [(run, [data]) for run, data in runs]
    loaded = dict(runs)
    bases: list[Path] = []
    for run, _ in runs:
        folder, step = at_step(run)
        m = SEED_SUFFIX.search(folder.name)
        base = folder.with_name(folder.name[: m.start()]) if m else folder
        base = base.with_name(f"{base.name}@{step}") if step is not None else base
        base = base if base in loaded else run  # a seed folder joins its run only when that run is listed too
        if base not in bases:
            bases.append(base)
    out = []
    for base in bases:
        values = []
        for folder in seed_folders(base, needs):
            if folder in loaded:
                values.append(loaded[folder])
                continue
            try:
                values.append(load(folder))
            except OpdError as err:
                logger.warning(f"seed folder left out: {err}")
        out.append((base, values))
    return out


def mean_sd(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n) of the values that are not None; sd is None below two values."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not present:
        return None, None, 0
    sd = statistics.stdev(present) if len(present) > 1 else None
    return statistics.mean(present), sd, len(present)


def percent(mean: float | None, sd: float | None) -> str:
    """``47.0 ± 9.4`` (percent), ``47.0`` without a spread, ``-`` without a value."""
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" if sd is None else f"{100 * mean:.1f} ± {100 * sd:.1f}"


def mean_curve(curves: list[dict[int, float]]) -> dict[int, tuple[float, float | None]]:
    """{step: (mean, sd)} over the steps every curve has (seeds evaluated at other steps are cut to the common ones)."""
    common = set.intersection(*(set(c) for c in curves)) if curves else set()
    out = {}
    for step in sorted(common):
        mean, sd, _ = mean_sd(c[step] for c in curves)
        out[step] = (float(mean), sd)  # type: ignore[arg-type]
    return out


def label_with_seeds(name: str, n: int) -> str:
    return f"{name} ({n} seeds)" if n > 1 else name


def band(ax: Any, xs: list[float], means: list[float], sds: list[float | None]) -> None:
    """Shade mean ± sd under the line just drawn on ``ax`` (nothing where there is one seed)."""
    if all(sd is None for sd in sds):
        return
    lo = [m - (s or 0.0) for m, s in zip(means, sds, strict=True)]
    hi = [m + (s or 0.0) for m, s in zip(means, sds, strict=True)]
    ax.fill_between(xs, lo, hi, alpha=0.2, color=ax.get_lines()[-1].get_color(), linewidth=0)
