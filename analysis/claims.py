"""Each method of a main table against a reference method: accuracy difference with Welch's t-test over training
seeds (p-value and 95 % confidence interval), share of the reference's gain over the base row, and FLOPs ratio
(the numbers the docs' claims are made from).

    .venv/bin/python analysis/claims.py analysis/toy/main-table.csv --reference toy-full --benchmark toy

The table is `opd plot main-table`'s CSV over training seeds (columns seeds, <benchmark> and <benchmark>_sd: the
seed count, mean and sample standard deviation). Two methods' means differ by d with standard error
se = sqrt(sd_a²/n_a + sd_b²/n_b); Welch's t = d / se on the Welch-Satterthwaite degrees of freedom (2-4 with three
seeds each, so a 5 % test needs |t| of 2.8-4.3, not 2) gives the two-sided p and the interval d ± t_0.975 · se. A
difference with p ≥ 0.05 is not shown to be zero: the interval says how large it could still be.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path


def _num(row: dict[str, str], key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


def _seeds(row: dict[str, str], benchmark: str) -> float:
    """How many seeds the benchmark's mean is over: its ``<benchmark>_n`` column (a seed not evaluated on it yet
    is left out), else the row's seeds (tables written before that column), else 1."""
    return _num(row, f"{benchmark}_n") or _num(row, "seeds") or 1.0


def welch(mean_a: float, sd_a: float, n_a: float, mean_b: float, sd_b: float, n_b: float) -> dict[str, float] | None:
    """Welch's two-sample t-test of mean_a - mean_b from the groups' means, sample sds and sizes: the difference,
    its standard error, degrees of freedom, two-sided p and 95 % interval. None where there is no variance to test
    with (both sds 0, or a group of one)."""
    from scipy import stats

    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0 or (n_a < 2 and n_b < 2):
        return None
    df = (va + vb) ** 2 / ((va**2 / (n_a - 1) if n_a > 1 else 0.0) + (vb**2 / (n_b - 1) if n_b > 1 else 0.0))
    diff = mean_a - mean_b
    p = float(stats.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=False).pvalue)
    half = float(stats.t.ppf(0.975, df)) * se
    return {"diff": diff, "se": se, "df": df, "t": diff / se, "p": p, "low": diff - half, "high": diff + half}


def _unseeded(label: str) -> str:
    """A label without the ` (3 seeds)` that `opd plot`'s curve tables append, which changes with TOY_SEEDS."""
    return re.sub(r" \(\d+ seeds\)$", "", label)


def compare(rows: list[dict[str, str]], reference: str, benchmark: str) -> list[dict[str, object]]:
    by_name = {r["method"]: r for r in rows}
    if reference not in by_name:  # `top-16 student` names `top-16 student (3 seeds)`
        by_name.update({_unseeded(m): r for m, r in by_name.items() if _unseeded(m) != m})
    if reference not in by_name:
        methods = ", ".join(r["method"] for r in rows)
        raise SystemExit(f"error: no method {reference!r} in the table (methods: {methods})")
    ref = by_name[reference]
    base = next((r for r in rows if r["method"].startswith("base")), None)
    acc_ref, sd_ref = _num(ref, benchmark), _num(ref, f"{benchmark}_sd") or 0.0
    n_ref = _seeds(ref, benchmark)
    out = []
    for r in rows:
        acc, sd, n = _num(r, benchmark), _num(r, f"{benchmark}_sd") or 0.0, _seeds(r, benchmark)
        if r is ref or acc is None or acc_ref is None or r is base:
            continue
        test = welch(acc, sd, n, acc_ref, sd_ref, n_ref)
        gain = None
        if base is not None and _num(base, benchmark) is not None and acc_ref != _num(base, benchmark):
            b = _num(base, benchmark)
            gain = (acc - b) / (acc_ref - b)
        flops, flops_ref = _num(r, "flops"), _num(ref, "flops")
        out.append({
            "method": r["method"], "acc": acc, "diff": acc - acc_ref, "test": test, "gain_share": gain,
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
    print(format_table(found, args.benchmark, args.reference))


def format_table(found: list[dict[str, object]], benchmark: str, reference: str) -> str:
    lines = [f"| method | {benchmark} | vs {reference} | 95 % interval | Welch t (df) | p | share of its gain | FLOPs ratio |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for c in found:
        t = c["test"]
        interval = "-" if t is None else f"[{100 * t['low']:+.1f}, {100 * t['high']:+.1f}]"
        welch_t = "-" if t is None else f"{t['t']:.2f} ({t['df']:.1f})"
        p = "-" if t is None else "< 0.001" if t["p"] < 0.0005 else f"{t['p']:.3f}"
        gain = "-" if c["gain_share"] is None else f"{100 * c['gain_share']:.0f} %"
        ratio = "-" if c["flops_ratio"] is None else f"{c['flops_ratio']:.2f}"
        lines.append(f"| {c['method']} | {100 * c['acc']:.1f} | {100 * c['diff']:+.1f} | {interval} | {welch_t} | {p} "
                     f"| {gain} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
