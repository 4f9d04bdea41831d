"""The table of `opd window-ablation` (paper Table 3): dev accuracy by loss window and training step.

Rows (method, window, step, dev_acc) are read from the ablation's run folders (``<out>/runs/<label>/eval/``), then
written as ``table.csv`` (tidy) and ``table.md`` (one row per run) and printed. `opd plot window-ablation` reads
table.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from opd_cli.core.runs import step_folder

TABLE_COLUMNS = ("method", "window", "step", "dev_acc")


def describe(label: str) -> tuple[str, str]:
    """(method, window) columns of the table for a run label."""
    if label == "full":
        return "OPD full", "all"
    if label.startswith("prefix-"):
        return "OPD prefix", f"[0, {label.split('-', 1)[1]})"
    if label.startswith("tail-"):
        return "OPD window", f"last {label.split('-', 1)[1]}"
    if label.startswith("window-"):
        a, b = label.split("-")[1:3]
        return "OPD window", f"[{a}, {b})"
    return label, ""


def dev_score(run_dir: Path, step: int, benchmark: str) -> float | None:
    """Mean accuracy of one evaluated checkpoint, or None when it has not been evaluated."""
    import json

    f = Path(run_dir) / "eval" / step_folder(step) / f"{benchmark}.json"
    if not f.is_file():
        return None
    try:
        return float(json.loads(f.read_text())["mean_acc"])
    except (ValueError, KeyError, TypeError):
        return None


def collect_table(out: Path, labels: list[str], eval_steps: list[int], benchmark: str) -> list[dict[str, Any]]:
    """Rows (method, window, step, dev_acc) from the runs' eval folders; dev_acc None where not evaluated."""
    rows = []
    for label in labels:
        method, window = describe(label)
        for step in eval_steps:
            rows.append(
                {
                    "method": method,
                    "window": window,
                    "step": step,
                    "dev_acc": dev_score(out / "runs" / label, step, benchmark),
                }
            )
    return rows


def write_table(out: Path, rows: list[dict[str, Any]], benchmark: str) -> tuple[Path, Path]:
    """``table.csv`` (tidy, one row per run and step) and ``table.md`` (one row per run, one column per step)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "table.csv", out / "table.md"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "dev_acc": "" if r["dev_acc"] is None else f"{r['dev_acc']:.4f}"})
    steps = sorted({r["step"] for r in rows})
    runs = list(dict.fromkeys((r["method"], r["window"]) for r in rows))
    acc = {(r["method"], r["window"], r["step"]): r["dev_acc"] for r in rows}
    lines = [
        f"Dev accuracy ({benchmark}, Mean Acc@n) by loss window and training step; - = not evaluated.",
        "",
        "| method | window | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|" + "---:|" * len(steps),
    ]
    for method, window in runs:
        cells = [acc.get((method, window, s)) for s in steps]
        lines.append(
            f"| {method} | {window} | " + " | ".join("-" if c is None else f"{100 * c:.1f}" for c in cells) + " |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def print_table(rows: list[dict[str, Any]], benchmark: str) -> None:
    from rich.console import Console
    from rich.table import Table

    steps = sorted({r["step"] for r in rows})
    table = Table(title=f"Window ablation: {benchmark} Mean Acc@n (%)")
    table.add_column("method")
    table.add_column("window")
    for s in steps:
        table.add_column(f"step {s}", justify="right")
    acc = {(r["method"], r["window"], r["step"]): r["dev_acc"] for r in rows}
    for method, window in dict.fromkeys((r["method"], r["window"]) for r in rows):
        cells = [acc.get((method, window, s)) for s in steps]
        table.add_row(method, window, *("-" if c is None else f"{100 * c:.1f}" for c in cells))
    Console().print(table)
