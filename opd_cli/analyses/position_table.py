"""The tidy per-position table of `opd kl-by-position` (docs/run-format.md, "Analyses"): its columns, the binning of
per-token values by output position, and the rows from rollouts or from the KL that `opd train` logged.

Position t (0 = the first response token) falls in bin ``t // bin``; a row is one (source, step, bin) with the mean
of each metric over the tokens there.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError

COLUMNS = ("source", "step", "bin_start", "bin_end", "mean_kl", "tokens")
METRICS = ("kl", "entropy-student", "entropy-teacher", "overlap")
OVERLAP_K = 16  # top-k of the overlap ratio (Rethinking OPD's k)
PROFILE_KEYS = {"entropy-student": "entropy_student", "entropy-teacher": "entropy_teacher", "overlap": "overlap_ratio"}


def metric_column(metric: str) -> str:
    """The table column of a --metric: kl -> mean_kl, entropy-student -> mean_entropy_student, overlap -> mean_overlap."""
    return "mean_" + metric.replace("-", "_")


def table_columns(metrics: list[str]) -> tuple[str, ...]:
    """The table's columns: :data:`COLUMNS`, then one per requested metric besides kl, in :data:`METRICS` order."""
    return COLUMNS + tuple(metric_column(m) for m in METRICS[1:] if m in metrics)


def bin_positions(values_BT: Any, mask_BT: Any, bin_size: int) -> tuple[list[float | None], list[int]]:
    """Mean of ``values_BT`` per output-position bin over the tokens where ``mask_BT`` is true.

    Position t (0 = first response token) falls in bin ``t // bin_size``. Returns ``(means, counts)`` up to the
    last bin that holds a token; a bin with no tokens has mean None. The sums come from
    :func:`opd_cli.core.maths.bin_by_position`, the same binning `opd train` logs with.
    """
    import torch

    from opd_cli.core import maths

    if bin_size < 1:
        raise ValueError(f"bin_size must be >= 1, got {bin_size}")
    values_BT, mask_BT = torch.as_tensor(values_BT), torch.as_tensor(mask_BT).bool()
    if values_BT.shape != mask_BT.shape or values_BT.dim() != 2:
        raise ValueError(f"values {tuple(values_BT.shape)} and mask {tuple(mask_BT.shape)} must be the same (B, T) shape")
    sums, counts = maths.bin_by_position(values_BT, mask_BT, bin_size)
    return means_from_sums(sums, counts), counts


def means_from_sums(sums: list[float], counts: list[int]) -> list[float | None]:
    return [s / c if c else None for s, c in zip(sums, counts, strict=False)]


def rows_from_bins(source: str, step: int, bin_size: int, means: list[float | None], counts: list[int],
                   extra: dict[str, list[float | None]] | None = None) -> list[dict]:
    """Tidy rows; bins without tokens are left out (their mean is undefined). ``extra``: column -> per-bin means."""
    rows = []
    for b, (m, c) in enumerate(zip(means, counts, strict=False)):
        if not c or m is None or (isinstance(m, float) and math.isnan(m)):
            continue
        row = {"source": source, "step": step, "bin_start": b * bin_size, "bin_end": (b + 1) * bin_size,
               "mean_kl": float(m), "tokens": int(c)}
        for col, vals in (extra or {}).items():
            row[col] = float(vals[b]) if b < len(vals) and vals[b] is not None else None
        rows.append(row)
    return rows


def logged_rows(metrics: list[dict], steps: list[int], run: str | Path) -> list[dict]:
    """Rows from the per-bin KL ``opd train`` logged at ``steps``; a missing step or field is a one-line error."""
    by_step = {int(r["step"]): r for r in metrics if "step" in r}
    rows = []
    for s in steps:
        rec = by_step.get(s)
        if rec is None:
            have = sorted(by_step)
            raise OpdError(f"{run}/metrics.jsonl has no step {s} (logged steps: "
                           f"{span(have) if have else 'none'}): choose --steps among them")
        if not all(k in rec and rec[k] is not None for k in ("kl_bin_size", "kl_bin_mean", "kl_bin_count")):
            raise OpdError(f"{run}/metrics.jsonl step {s} has no kl_bin_size/kl_bin_mean/kl_bin_count: "
                           f"it was not written by `opd train` with --kl-bin")
        rows += rows_from_bins("logged", s, int(rec["kl_bin_size"]), rec["kl_bin_mean"], rec["kl_bin_count"])
    return rows


def span(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"


def write_table(out: Path, rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> None:
    """``kl_by_position.csv`` and ``.json`` with ``columns`` (an extra metric is empty/null on logged rows)."""
    from opd_cli.core.runs import write_json

    rows = [{c: r.get(c) for c in columns} for r in rows]
    with (out / "kl_by_position.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    write_json(out / "kl_by_position.json", rows)
