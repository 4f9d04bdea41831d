"""`opd kl-by-position --grade`: does the teacher's token reward tell correct rollouts from incorrect ones?
(Rethinking OPD §6.1, Fig. 14.)

Each rollout y that kl-by-position already sampled and scored is graded against its problem's answer (as `opd eval`
grades a sample), and gets its sequence-mean reward ``r(y) = mean_t [logp_T(y_t) - logp_S(y_t)]``, the mean
per-token advantage of sampled-token OPD (the negated mean KL estimate). Per step, the AUROC of ``r`` separating
correct from incorrect rollouts measures how informative the reward is globally.

Files in the run folder (docs/run-format.md, "Analyses"): ``rollout_rewards.jsonl`` (one record per rollout) and
``reward_auroc.csv`` (one row per step); the same per-step numbers go into ``summary.json``.

Only the standard library is imported here, so `opd plot reward-auroc` can use :func:`auroc` without torch.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError

RECORDS_FILE = "rollout_rewards.jsonl"
AUROC_FILE = "reward_auroc.csv"
RECORD_KEYS = ("step", "problem_id", "sample", "correct", "extracted", "seq_mean_reward", "length", "truncated")
AUROC_COLUMNS = ("step", "rollouts", "correct", "incorrect", "accuracy", "auroc", "mean_reward_correct",
                 "mean_reward_incorrect")


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(a positive scores above a negative) + 1/2 P(tie): the area under the ROC curve of the score.

    Computed from mid-ranks (the Mann-Whitney U statistic), O(n log n). None when either class is empty.
    """
    n_pos, n_neg = len(positive), len(negative)
    if not n_pos or not n_neg:
        return None
    scored = sorted([(float(s), 1) for s in positive] + [(float(s), 0) for s in negative])
    rank_sum, i = 0.0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # ranks i+1..j share their mean
        rank_sum += mid * sum(label for _, label in scored[i:j])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def check_answers(problems: Sequence[Any], where: str) -> None:
    """--grade needs a gold answer for every problem: a one-line error before any model is loaded."""
    empty = [p.id for p in problems if not str(p.answer or "").strip()]
    if empty:
        raise OpdError(f"--grade needs each problem's answer, but {len(empty)} of {len(problems)} problems from "
                       f"{where} have none (e.g. id {empty[0]}): pass --data/--benchmark with answers, or drop --grade")


def grade_records(step: int, problems: Sequence[Any], groups: Sequence[Sequence[Any]],
                  rewards: Sequence[Sequence[float | None]]) -> list[dict[str, Any]]:
    """One record per rollout: ``groups[i][j]`` (an :class:`opd_cli.core.generation.Sample` of problem i) graded against
    ``problems[i]``, with its sequence-mean reward ``rewards[i][j]`` (None for a rollout without tokens)."""
    from opd_cli.core.grading import grade

    records = []
    for prob, group, rews in zip(problems, groups, rewards, strict=True):
        for j, (smp, r) in enumerate(zip(group, rews, strict=True)):
            ok, extracted = grade(prob, smp.text)
            records.append({"step": step, "problem_id": prob.id, "sample": j, "correct": bool(ok),
                            "extracted": extracted, "seq_mean_reward": r, "length": int(smp.length),
                            "truncated": bool(smp.truncated)})
    return records


def step_summary(step: int, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A :data:`AUROC_FILE` row for one step's records; rollouts without a reward count but are not scored."""
    good = [float(r["seq_mean_reward"]) for r in records if r["correct"] and r["seq_mean_reward"] is not None]
    bad = [float(r["seq_mean_reward"]) for r in records if not r["correct"] and r["seq_mean_reward"] is not None]
    n_ok = sum(bool(r["correct"]) for r in records)
    return {"step": step, "rollouts": len(records), "correct": n_ok, "incorrect": len(records) - n_ok,
            "accuracy": n_ok / len(records) if records else None, "auroc": auroc(good, bad),
            "mean_reward_correct": sum(good) / len(good) if good else None,
            "mean_reward_incorrect": sum(bad) / len(bad) if bad else None}


def read_records(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []
    except ValueError:
        raise OpdError(f"{path} is not JSON lines: re-run opd kl-by-position --grade") from None


def write_reward_files(out: Path, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write :data:`RECORDS_FILE` and :data:`AUROC_FILE` (steps in order); returns the per-step rows."""
    steps = sorted({int(r["step"]) for r in records})
    rows = [step_summary(s, [r for r in records if int(r["step"]) == s]) for s in steps]
    tmp = out / (RECORDS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps({k: r[k] for k in RECORD_KEYS}) + "\n" for r in records))
    tmp.replace(out / RECORDS_FILE)
    with (out / AUROC_FILE).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=AUROC_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows
