"""Writing result tables: rows (one dict per row) to a CSV file, and a header plus rows to a markdown table.

Shared by the commands that write tables: `opd flops` (its CSV) and `opd plot` (lr-sweep, main-table, window-ablation).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` as CSV, columns in the order of the first row's keys; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
