"""Mean and standard deviation over training seeds of each run's test accuracy (`make toy-seeds`).

    .venv/bin/python analysis/seed_spread.py runs/train-toy-quick-prefix runs/train-toy-quick-full -o runs/toy-seeds

Each argument is a seed-0 run folder; its other seeds are the folders beside it named ``<run>-s<seed>``. For each
run, the accuracy is the Mean Acc of ``--benchmark`` at the checkpoint its ``eval/best.json`` picked (the step that
`opd eval --run` chose on its dev benchmark). Prints a table and writes ``<out>/seed-spread.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def markdown(rows: list[dict], benchmark: str) -> str:
    lines = [f"| run | seeds | {benchmark} mean ± sd | per seed |", "|---|---|---|---|"]
    for r in rows:
        sd = "n/a" if r["sd"] is None else f"{100 * r['sd']:.1f}"
        per = ", ".join(f"{100 * a:.1f}" for a in r["acc"])
        lines.append(f"| {r['run']} | {len(r['seeds'])} | {100 * r['mean']:.1f} ± {sd} | {per} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="seed-0 run folders")
    p.add_argument("--benchmark", default="toy", help="the benchmark whose accuracy is reported (default: toy, the test split)")
    p.add_argument("-o", "--out", type=Path, default=None, help="folder for seed-spread.md and seed-spread.json")
    args = p.parse_args()
    rows = spread(args.runs, args.benchmark)
    table = markdown(rows, args.benchmark)
    print(table, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "seed-spread.md").write_text(table)
        (args.out / "seed-spread.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
