"""Each method of a main table against a reference method: accuracy difference with its spread, share of the
reference's gain over the base row, and FLOPs ratio (the numbers the docs' claims are made from).

    .venv/bin/python analysis/claims.py analysis/toy/main-table.csv --reference toy-full --benchmark toy

The table is `opd plot main-table`'s CSV over training seeds (columns seeds, <benchmark> and <benchmark>_sd: the
seed count, mean and sample standard deviation). A difference of two methods' means is given ± its standard error,
sqrt(sd_a²/n_a + sd_b²/n_b); it is "beyond the seeds' spread" when it exceeds twice that.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path


def _num(row: dict[str, str], key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


def compare(rows: list[dict[str, str]], reference: str, benchmark: str) -> list[dict[str, object]]:
    by_name = {r["method"]: r for r in rows}
    if reference not in by_name:
        raise SystemExit(f"error: no method {reference!r} in the table (methods: {', '.join(by_name)})")
    ref = by_name[reference]
    base = next((r for r in rows if r["method"].startswith("base")), None)
    acc_ref, sd_ref = _num(ref, benchmark), _num(ref, f"{benchmark}_sd") or 0.0
    n_ref = _num(ref, "seeds") or 1.0
    out = []
    for r in rows:
        acc, sd, n = _num(r, benchmark), _num(r, f"{benchmark}_sd") or 0.0, _num(r, "seeds") or 1.0
        if r is ref or acc is None or acc_ref is None or r is base:
            continue
        diff, spread = acc - acc_ref, math.sqrt(sd**2 / n + sd_ref**2 / n_ref)
        gain = None
        if base is not None and _num(base, benchmark) is not None and acc_ref != _num(base, benchmark):
            b = _num(base, benchmark)
            gain = (acc - b) / (acc_ref - b)
        flops, flops_ref = _num(r, "flops"), _num(ref, "flops")
        out.append({
            "method": r["method"], "acc": acc, "diff": diff, "spread": spread,
            "beyond": abs(diff) > 2 * spread if spread else None, "gain_share": gain,
            "flops_ratio": flops / flops_ref if flops and flops_ref else None,
        })
    return out


def _fail(message: str) -> None:
    """Bad input: one line on stderr, exit 2 (as opd's own commands)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", type=Path, help="main-table.csv written by `opd plot main-table`")
    p.add_argument("--reference", required=True, help="the method to compare against (its label in the table)")
    p.add_argument("--benchmark", default="toy", help="the accuracy column (default: toy, the test split)")
    args = p.parse_args()
    if not args.table.is_file():
        _fail(f"error: {args.table} does not exist: draw it with `opd plot main-table ... -o FOLDER` first")
    with args.table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        found = compare(rows, args.reference, args.benchmark)
    except SystemExit as err:
        _fail(str(err))
    print(f"| method | {args.benchmark} | vs {args.reference} | beyond 2 SE | share of its gain | FLOPs ratio |")
    print("|---|---:|---:|---|---:|---:|")
    for c in found:
        beyond = "-" if c["beyond"] is None else ("yes" if c["beyond"] else "no")
        gain = "-" if c["gain_share"] is None else f"{100 * c['gain_share']:.0f} %"
        ratio = "-" if c["flops_ratio"] is None else f"{c['flops_ratio']:.2f}"
        print(f"| {c['method']} | {100 * c['acc']:.1f} | {100 * c['diff']:+.1f} ± {100 * c['spread']:.1f} | {beyond} "
              f"| {gain} | {ratio} |")


if __name__ == "__main__":
    main()
