"""The toy task: apply tagged operations to a digit, in tag order, modulo 10 (pure Python, seeded).

A question lists n tagged operations in shuffled order, e.g. ``start 4; apply by tag, mod 10: c*3 a+7 b-2``.
The teacher's solution first writes a *plan* (the operations sorted by tag), then *executes* it one line per
operation, copying each operation from the plan and updating the running value, and ends with the answer::

    plan: a+7 b-2 c*3
    a+7: 4 -> 1
    b-2: 1 -> 9
    c*3: 9 -> 7
    </think>
    \\boxed{7}

The plan is the first ~25 % of the solution and decides success: the student's plans swap neighbouring operations
(``plan: a-2 b+7 c*3`` above), which gives a wrong answer unless the swapped operations happen to commute.
Multipliers are 3, 7 and 9 (units mod 10), so a multiplication almost never commutes with an addition.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MOD = 10
TAGS = "abcdefgh"
MULTIPLIERS = (3, 7, 9)
SPLITS = ("train", "dev", "test", "ood")
# split -> (min ops, max ops, probability of a multiplication)
SPLIT_SHAPE = {"train": (4, 8, 0.5), "dev": (4, 8, 0.5), "test": (4, 8, 0.5), "ood": (7, 8, 0.6)}
DEFAULT_SIZES = {"train": 20000, "dev": 200, "test": 200, "ood": 200}
PLAN_HEAD = "plan: "
STUDENT_SWAP = 0.5  # probability that the student's plan swaps an operation with the next one


def swap_neighbours(ops: list[str], rng: random.Random, p: float = STUDENT_SWAP) -> list[str]:
    """``ops`` with disjoint neighbouring pairs swapped, each with probability ``p`` (left to right)."""
    out, i = list(ops), 0
    while i < len(out) - 1:
        if rng.random() < p:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return out


def apply_op(value: int, op: str) -> int:
    """``op`` is ``+k``, ``-k`` or ``*k`` with one digit k; the result is taken modulo 10 (the task uses + and *)."""
    sign, k = op[0], int(op[1:])
    if sign == "+":
        return (value + k) % MOD
    if sign == "-":
        return (value - k) % MOD
    if sign == "*":
        return (value * k) % MOD
    raise ValueError(f"unknown operation {op!r}")


def question_text(start: int, ops: list[tuple[str, str]]) -> str:
    return f"start {start}; apply by tag, mod {MOD}: " + " ".join(t + o for t, o in ops)


def solution_text(start: int, plan: list[tuple[str, str]]) -> tuple[str, int, int]:
    """(solution, plan length in characters, final value) for executing ``plan`` from ``start``."""
    head = PLAN_HEAD + " ".join(t + o for t, o in plan) + "\n"
    lines, value = [], start
    for t, o in plan:
        new = apply_op(value, o)
        lines.append(f"{t}{o}: {value} -> {new}\n")
        value = new
    return head + "".join(lines) + "</think>\n\\boxed{" + str(value) + "}", len(head), value


def make_record(rng: random.Random, split: str, index: int) -> dict[str, Any]:
    lo, hi, p_mul = SPLIT_SHAPE[split]
    n = rng.randint(lo, hi)
    ops = []
    for tag in TAGS[:n]:
        if rng.random() < p_mul:
            ops.append((tag, f"*{rng.choice(MULTIPLIERS)}"))
        else:
            ops.append((tag, f"+{rng.randint(1, 9)}"))
    shuffled = ops[:]
    rng.shuffle(shuffled)
    start = rng.randint(0, MOD - 1)
    solution, plan_chars, answer = solution_text(start, ops)  # ops are already in tag order
    # The student's plan is the teacher's with neighbouring operations swapped (each pair with probability
    # STUDENT_SWAP): it has learnt to look the operations up by tag but confuses neighbours, so its plans are often
    # wrong while its execution (line i does tag i, copying the operation the plan gave it) is the teacher's. The
    # skill is there and the preference is wrong: what on-policy distillation can fix in a few dozen steps.
    student_plan = [(TAGS[i], op) for i, op in enumerate(swap_neighbours([op for _, op in ops], rng))]
    wrong, _, wrong_answer = solution_text(start, student_plan)
    return {
        "id": f"toy-{split}-{index:05d}",
        "question": question_text(start, shuffled),
        "answer": str(answer),
        "solution": solution,
        "plan_chars": plan_chars,
        "n_ops": n,
        # the same execution of a wrong plan: what the student is trained on
        "student_solution": wrong,
        "student_answer": str(wrong_answer),
    }


def generate_splits(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """All splits from one seed; no question appears in two splits (nor twice in one)."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    rng = random.Random(f"opd-toy-{seed}")
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    # evaluation splits first, so their content does not depend on the train size
    for split in ("test", "dev", "ood", "train"):
        records: list[dict[str, Any]] = []
        tries = 0
        while len(records) < sizes[split]:
            rec = make_record(rng, split, len(records))
            tries += 1
            if tries > 50 * sizes[split] + 1000:
                raise RuntimeError(f"cannot draw {sizes[split]} distinct {split} problems")
            if rec["question"] in seen:
                continue
            seen.add(rec["question"])
            records.append(rec)
        out[split] = records
    return {s: out[s] for s in SPLITS}


def parse_question(question: str) -> tuple[int, list[tuple[str, str]]]:
    """(start, [(tag, op), ...] in prompt order) from a question's text."""
    head, _, ops = question.partition(": ")
    start = int(head.split(";")[0].split()[1])
    return start, [(tok[0], tok[1:]) for tok in ops.split()]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with Path(path).open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
