"""The table kinds of `opd plot`: window-ablation (Table 3: a figure and markdown from `opd window-ablation`'s
table.csv) and main-table (Tables 1-2: each run's best dev checkpoint, FLOPs and hours, as CSV and markdown)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opd_cli.core.errors import OpdError
from opd_cli.core.runs import step_folder
from opd_cli.core.table_io import markdown_table, write_csv
from opd_cli.plot.draw import PlotResult, _panels, axes_data, save
from opd_cli.plot.read import at_step, best_info, label, metrics_by_step, read_csv
from opd_cli.plot.seeds import band, collect_seeds, mean_sd, percent

if TYPE_CHECKING:
    from opd_cli.plot.config import PlotConfig


def _table_csv(run: Path) -> list[dict[str, str]]:
    f = run / "table.csv"
    if not f.is_file():
        raise OpdError(f"{run} has no table.csv: run opd window-ablation first")
    rows = read_csv(f)
    if not rows:
        raise OpdError(f"{f} has no rows")
    return rows


def _window_key(row: dict[str, str]) -> str:
    """The method, with its window where that says more (``OPD window [10, 40)``; a bare ``A:B`` gets brackets)."""
    window = row.get("window") or ""
    if window in ("", row["method"]):
        return row["method"]
    return f"{row['method']} {window if window.startswith('[') else f'[{window}]'}"


def plot_window_ablation(cfg: PlotConfig, out: Path) -> PlotResult:
    """Dev accuracy per method and window over steps; over an ablation's seeds (``<ablation>-s<k>`` folders) the
    mean ± sd."""
    values: dict[str, dict[int, list[float]]] = {}
    for _, seeds in collect_seeds(cfg, _table_csv, needs="table.csv"):
        for rows in seeds:
            for r in rows:
                values.setdefault(_window_key(r), {}).setdefault(int(float(r["step"])), []).append(float(r["dev_acc"]))
    methods = {name: {s: mean_sd(v) for s, v in sorted(sc.items())} for name, sc in values.items()}
    steps = sorted({s for v in methods.values() for s in v})
    most = max(n for sc in methods.values() for _, _, n in sc.values())
    fig, axes = _panels(1, 6)
    for name, sc in methods.items():
        xs, means, sds = list(sc), [m for m, _, _ in sc.values()], [sd for _, sd, _ in sc.values()]
        axes[0].plot(xs, means, marker="o", label=name)
        band(axes[0], xs, means, sds)
    axes[0].set(xlabel="step", ylabel="dev Mean Acc", title="window ablation")
    axes[0].legend(fontsize=8)
    md = markdown_table(
        ["method", *[f"step {s}" for s in steps]],
        [[name, *[percent(*sc[s][:2]) if s in sc else "-" for s in steps]] for name, sc in methods.items()],
    )
    if most > 1:
        md = f"Dev Mean Acc, mean ± standard deviation over {most} training seeds.\n\n{md}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "window-ablation.md").write_text(md)
    paths = save(fig, out, "window-ablation") + [out / "window-ablation.md"]
    return PlotResult(paths, {"acc": axes_data(axes[0]), "markdown": md})


def _mark(values: dict[str, float | None], sds: dict[str, float | None] | None = None) -> dict[str, str]:
    """Best in bold, second best underlined (ties share the mark), in percent, with ``± sd`` where there is one."""
    present = sorted({v for v in values.values() if v is not None}, reverse=True)
    out = {}
    for k, v in values.items():
        if v is None:
            out[k] = "-"
            continue
        text = percent(v, (sds or {}).get(k))
        if len(present) > 1 and v == present[0]:
            text = f"**{text}**"
        elif len(present) > 2 and v == present[1]:
            text = f"<u>{text}</u>"
        out[k] = text
    return out


def main_table_row(run: Path) -> dict[str, Any]:
    """One run: the accuracies of its best dev checkpoint (eval/best.json), its total FLOPs and hours; ``RUN@STEP``:
    the accuracies of checkpoint STEP and the FLOPs and hours spent up to it (a limited-budget row)."""
    run, fixed = at_step(run)
    info = best_info(run)
    if fixed is not None:
        step, folder = fixed, run / "eval" / step_folder(fixed)
        if not folder.is_dir():
            raise OpdError(f"run {run} has no evaluation of step {fixed}: opd eval --run {run} --steps {fixed} -b ...")
    elif info:
        step = int(info["best_step"])
        folder = run / "eval" / step_folder(step)
    elif list((run / "eval").glob("*.json")):
        step, folder = None, run / "eval"  # `opd eval --model`: a model without training (the base row)
    else:
        raise OpdError(f"run {run} has no eval/best.json and no eval/*.json: run opd eval on it first")
    scores, problems = {}, {}
    for f in sorted(folder.glob("*.json")):
        if f.name != "best.json":
            summary = json.loads(f.read_text())
            scores[f.stem] = float(summary["mean_acc"])
            problems[f.stem] = summary.get("num_problems")
    if not scores:
        raise OpdError(f"run {run}: no benchmark summaries in {folder}")
    m = metrics_by_step(run)
    last = m.get(fixed, {}) if fixed is not None else (m[max(m)] if m else {})
    wall = last.get("wall_time")
    return {
        "method": label(run) if fixed is None else f"{label(run)} @ step {fixed}",
        "best_step": step,
        **scores,
        "flops": float(last["flops_total"]) if last.get("flops_total") is not None else None,
        "hours": float(wall) / 3600 if wall is not None else None,
        "problems": problems,
    }


TABLE_KEYS = ("method", "seeds", "best_step", "flops", "hours", "problems", "counts")


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's main-table row over its seeds: each benchmark's mean and ``<benchmark>_sd``, the seeds' best
    steps (one number when they agree, else ``30/50/80``), and the mean FLOPs and hours."""
    steps = [r["best_step"] for r in rows]
    out: dict[str, Any] = {
        "method": rows[0]["method"],
        "seeds": len(rows),
        "best_step": steps[0] if len(set(steps)) == 1 else "/".join("-" if s is None else str(s) for s in steps),
    }
    out["counts"] = {}
    for bench in dict.fromkeys(k for r in rows for k in r if k not in TABLE_KEYS):
        out[bench], out[f"{bench}_sd"], out["counts"][bench] = mean_sd(r.get(bench) for r in rows)
    out["flops"] = mean_sd(r["flops"] for r in rows)[0]
    out["hours"] = mean_sd(r["hours"] for r in rows)[0]
    out["problems"] = {b: {r["problems"].get(b) for r in rows if b in r["problems"]} for r in rows for b in r["problems"]}
    return out


def _fewer_seeds(row: dict[str, Any], bench: str) -> str:
    """`` (2 of 3 seeds)`` after a cell whose mean leaves out seeds of its row, else nothing."""
    n = row.get("counts", {}).get(bench, 0)
    return f" ({n} of {row['seeds']} seeds)" if row.get("seeds", 1) > 1 and 0 < n < row["seeds"] else ""


def problems_note(rows: list[dict[str, Any]], benches: list[str]) -> str:
    """How many problems each benchmark's column is scored on: one count when every row agrees, else each row's
    (a table whose rows are scored on different problems says so under it)."""
    same, differ = [], []
    for b in benches:
        counts = {r["method"]: r["problems"].get(b, set()) for r in rows if r.get(b) is not None}
        found = set().union(*counts.values()) - {None}
        if len(found) == 1:
            same.append(f"{b} {found.pop()}")
        elif found:
            each = "; ".join(f"{m} {'/'.join(str(n) for n in sorted(c - {None}))}" for m, c in counts.items())
            differ.append(f"{b}: {each}")
    note = f"Problems per row: {', '.join(same)} (every row on the same problems)." if same else ""
    if differ:
        note += f"{' ' if note else ''}NOT the same problems in every row: {' | '.join(differ)}."
    return note


def plot_main_table(cfg: PlotConfig, out: Path) -> PlotResult:
    rows = [over_seeds(rs) for _, rs in collect_seeds(cfg, main_table_row)]
    multi = any(r["seeds"] > 1 for r in rows)
    present = {k for r in rows for k in r if not k.endswith("_sd")} - set(TABLE_KEYS)
    known = [b for b in cfg.in_domain if b in present] + [b for b in cfg.ood if b in present]
    benches = known + sorted(present - set(known))
    marks = {b: _mark({r["method"]: r.get(b) for r in rows}, {r["method"]: r.get(f"{b}_sd") for r in rows})
             for b in benches}
    header = ["method", *(["seeds"] if multi else []), "best step",
              *[f"{b} (OOD)" if b in cfg.ood else b for b in benches], "FLOPs", "hours"]
    md_rows = [
        [
            r["method"],
            *([str(r["seeds"])] if multi else []),
            "-" if r["best_step"] is None else str(r["best_step"]),
            *[marks[b][r["method"]] + _fewer_seeds(r, b) for b in benches],
            "-" if r["flops"] is None else f"{r['flops']:.2g}",
            "-" if r["hours"] is None else f"{r['hours']:.2f}",
        ]
        for r in rows
    ]
    md = markdown_table(header, md_rows)
    note = problems_note(rows, benches)
    if note:
        md = f"{md}\n{note}\n"
    if multi:
        md = f"Mean ± standard deviation over training seeds (the seeds column: how many).\n\n{md}"
        columns = ["method", "seeds", "best_step", *benches, *[f"{b}_sd" for b in benches],
                   *[f"{b}_n" for b in benches], "flops", "hours"]
    else:
        columns = ["method", "best_step", *benches, "flops", "hours"]
    rows = [{**r, **{f"{b}_n": n for b, n in r["counts"].items()}} for r in rows]  # <benchmark>_n: its seeds
    rows = [{k: r.get(k) for k in columns} for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "main-table.md").write_text(md)
    paths = [write_csv(rows, out / "main-table.csv"), out / "main-table.md"]
    return PlotResult(paths, {"rows": rows, "benchmarks": benches, "markdown": md})
