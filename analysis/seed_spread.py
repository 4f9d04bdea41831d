"""Mean and standard deviation over training seeds of each run's test accuracy (`make toy-seeds`).

    .venv/bin/python analysis/seed_spread.py runs/train-toy-quick-prefix runs/train-toy-quick-full -o runs/toy-seeds

Each argument is a seed-0 run folder; its other seeds are the folders beside it named ``<run>-s<seed>``. For each
run, the accuracy is the Mean Acc of ``--benchmark`` at the checkpoint its ``eval/best.json`` picked (the step that
`opd eval --run` chose on its dev benchmark). With several runs, each is tested against the last one (the reference,
e.g. full OPD) with Welch's t over the seeds (analysis/claims.py): the difference, its 95 % interval and p. Prints a
table and the tests, and writes ``<out>/seed-spread.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from claims import welch  # analysis/claims.py, beside this script

from opd_cli.plot.seeds import SEED_SUFFIX, mean_sd, seed_folders


def seed_runs(run: Path) -> dict[int, Path]:
    """{seed: folder}: ``run`` (seed 0) and the ``<run>-s<k>`` run folders beside it that have an evaluation."""
    found = {}
    for folder in seed_folders(run):
        m = SEED_SUFFIX.search(folder.name) if folder != run else None
        if (folder / "eval" / "best.json").is_file():
            found[int(m.group(1)) if m else 0] = folder
    return found


def accuracy(run: Path, benchmark: str) -> float:
    best = json.loads((run / "eval" / "best.json").read_text())
    step = int(best["best_step"])
    return json.loads((run / "eval" / f"step_{step:06d}" / f"{benchmark}.json").read_text())["mean_acc"]


def spread(runs: list[Path], benchmark: str) -> list[dict]:
    rows = []
    for run in runs:
        accs = {seed: accuracy(folder, benchmark) for seed, folder in sorted(seed_runs(run).items())}
        if not accs:
            raise SystemExit(f"error: {run} has no evaluated seed (eval/best.json): run opd eval --run on it first "
                             "(make toy-seeds and make real-seeds do); a RUN@STEP row is read by opd plot main-table")
        values = list(accs.values())
        mean, sd, _ = mean_sd(values)
        rows.append({"run": run.name.removeprefix("train-"), "seeds": list(accs), "acc": values, "mean": mean, "sd": sd})
    return rows


def tests(rows: list[dict]) -> list[dict]:
    """Each run against the last one: Welch's t over their seeds (None where neither has a spread to test with)."""
    ref = rows[-1]
    return [{"run": r["run"], "reference": ref["run"],
             "test": welch(r["mean"], r["sd"] or 0.0, len(r["acc"]), ref["mean"], ref["sd"] or 0.0, len(ref["acc"]))}
            for r in rows[:-1]]


def markdown(rows: list[dict], benchmark: str, found: list[dict]) -> str:
    lines = [f"| run | seeds | {benchmark} mean ± sd | per seed |", "|---|---|---|---|"]
    for r in rows:
        sd = "n/a" if r["sd"] is None else f"{100 * r['sd']:.1f}"
        per = ", ".join(f"{100 * a:.1f}" for a in r["acc"])
        lines.append(f"| {r['run']} | {len(r['seeds'])} | {100 * r['mean']:.1f} ± {sd} | {per} |")
    for c in found:
        t, pair = c["test"], f"{c['run']} vs {c['reference']}"
        if t is None:
            lines.append(f"\n{pair}: no spread to test with (one seed each, or no variance)")
        else:
            lines.append(f"\n{pair}: {100 * t['diff']:+.1f} points, 95 % interval [{100 * t['low']:+.1f}, "
                         f"{100 * t['high']:+.1f}], Welch t = {t['t']:.2f} on {t['df']:.1f} df, p = {t['p']:.3f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="seed-0 run folders")
    p.add_argument("--benchmark", default="toy", help="the benchmark whose accuracy is reported (default: toy, the test split)")
    p.add_argument("-o", "--out", type=Path, default=None, help="folder for seed-spread.md and seed-spread.json")
    args = p.parse_args()
    rows = spread(args.runs, args.benchmark)
    found = tests(rows)  # none for a single run
    table = markdown(rows, args.benchmark, found)
    print(table, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "seed-spread.md").write_text(table)
        (args.out / "seed-spread.json").write_text(json.dumps({"runs": rows, "tests": found}, indent=2) + "\n")


if __name__ == "__main__":
    main()
