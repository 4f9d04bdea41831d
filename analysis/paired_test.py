"""Two methods on the same problems: the difference of their accuracies, a 95 % bootstrap interval and a paired
sign-flip permutation test over problems (no distributional assumption, exact up to Monte-Carlo error).

    .venv/bin/python analysis/paired_test.py runs/train-real-prefix runs/train-real-full --benchmark real

Each argument is a run folder (its evaluated checkpoint: eval/best.json's step; RUN@STEP: checkpoint STEP, as `opd
plot main-table` reads it) or an `opd eval --model` folder (eval/<benchmark>.samples.jsonl). A run's training seeds
(<run>-s<k> folders beside it; a window ablation's run <ablation>/runs/<name> has them in
<ablation>-s<k>/runs/<name>) are pooled: a problem's accuracy is the mean over every seed's samples of it. Both
sides must hold the same problems. The seeds' own spread (the sd of the seed means) is printed too: the test is over
problems, which it holds fixed, not over seeds.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
from pathlib import Path

from opd_cli.core.runs import step_folder
from opd_cli.plot.read import at_step


def _samples_file(folder: Path, benchmark: str, step: int | None = None) -> Path:
    """The samples of ``folder``'s checkpoint ``step``, else of its dev pick (eval/best.json), else of a model."""
    best = folder / "eval" / "best.json"
    if step is None and best.is_file():
        step = int(json.loads(best.read_text())["best_step"])
    if step is None:
        return folder / "eval" / f"{benchmark}.samples.jsonl"
    return folder / "eval" / step_folder(step) / f"{benchmark}.samples.jsonl"


def _seeds_beside(folder: Path) -> list[Path]:
    """``folder``'s <folder>-s<k> siblings, seed order."""
    pattern = re.escape(folder.name) + r"-s\d+"
    return sorted((p for p in folder.parent.glob(folder.name + "-s*") if re.fullmatch(pattern, p.name)),
                  key=lambda p: int(p.name.rsplit("-s", 1)[1]))


def seed_folders(run: Path) -> list[Path]:
    """The run and its seed folders, seed order: <run>-s<k> beside it, or, for a run inside a seeded ablation
    (<ablation>/runs/<name>, as opd window-ablation writes), <ablation>-s<k>/runs/<name>."""
    beside = _seeds_beside(run)
    if beside or run.parent.name != "runs":
        return [run, *beside]
    return [run, *(a / "runs" / run.name for a in _seeds_beside(run.parent.parent) if (a / "runs" / run.name).is_dir())]


def per_problem(folder: Path, benchmark: str, step: int | None = None) -> dict[str, list[bool]]:
    f = _samples_file(folder, benchmark, step)
    if not f.is_file():
        raise SystemExit(f"error: {f} does not exist: evaluate {folder} on {benchmark} first")
    out: dict[str, list[bool]] = {}
    for line in f.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.setdefault(r["problem_id"], []).append(bool(r["correct"]))
    return out


def pooled(run: Path, benchmark: str) -> tuple[dict[str, float], list[float]]:
    """(problem -> accuracy over all seeds' samples, each seed's mean accuracy). A seed folder not evaluated yet (a
    run still training) is left out, said on stderr, as `opd plot` does; the run itself must be evaluated."""
    run, step = at_step(run)
    run_itself, *others = seed_folders(run)
    seeds = [per_problem(run_itself, benchmark, step)]  # first: a run not evaluated is an error before any note
    for f in others:
        if _samples_file(f, benchmark, step).is_file():
            seeds.append(per_problem(f, benchmark, step))
        else:
            print(f"seed folder left out: {f} has no {benchmark} evaluation yet", file=sys.stderr)
    keys = set(seeds[0])
    if any(set(s) != keys for s in seeds):
        raise SystemExit(f"error: the seeds of {run} were evaluated on different problems of {benchmark}")
    acc = {k: sum(sum(s[k]) for s in seeds) / sum(len(s[k]) for s in seeds) for k in keys}
    means = [sum(sum(v) / len(v) for v in s.values()) / len(s) for s in seeds]
    return acc, means


def compare(a: Path, b: Path, benchmark: str, rounds: int = 10000, seed: int = 0) -> dict[str, float]:
    acc_a, seeds_a = pooled(a, benchmark)
    acc_b, seeds_b = pooled(b, benchmark)
    if set(acc_a) != set(acc_b):
        raise SystemExit(f"error: {a} and {b} were evaluated on different problems of {benchmark}")
    keys = sorted(acc_a)
    d = [acc_a[k] - acc_b[k] for k in keys]
    n, diff = len(d), sum(d) / len(d)
    rng = random.Random(seed)
    boot = sorted(sum(rng.choice(d) for _ in range(n)) / n for _ in range(rounds))
    extreme = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= abs(sum(d)) - 1e-12 for _ in range(rounds))
    return {"a": statistics.mean(seeds_a), "a_sd": statistics.stdev(seeds_a) if len(seeds_a) > 1 else 0.0,
            "b": statistics.mean(seeds_b), "b_sd": statistics.stdev(seeds_b) if len(seeds_b) > 1 else 0.0,
            "seeds_a": len(seeds_a), "seeds_b": len(seeds_b), "problems": n, "diff": diff,
            "lo": boot[int(0.025 * rounds)], "hi": boot[int(0.975 * rounds) - 1], "p": (extreme + 1) / (rounds + 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--rounds", type=int, default=10000)
    args = ap.parse_args(argv)
    try:
        r = compare(args.a, args.b, args.benchmark, args.rounds)
    except SystemExit as err:  # bad input: one line on stderr, exit 2 (as opd's own commands)
        if not isinstance(err.code, str):
            raise
        print(err.code, file=sys.stderr)
        return 2
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    print(f"{args.benchmark}: {args.a.name} {pct(r['a'])} ± {pct(r['a_sd'])} ({r['seeds_a']} seeds) vs {args.b.name} "
          f"{pct(r['b'])} ± {pct(r['b_sd'])} ({r['seeds_b']}); difference {pct(r['diff'])} points, 95 % interval "
          f"[{pct(r['lo'])}, {pct(r['hi'])}], paired permutation p = {r['p']:.3g} over {r['problems']} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
