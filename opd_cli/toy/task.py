"""The toy task: apply tagged operations to a digit in tag order, modulo 10 (pure Python, seeded).

A question gives a start digit and n tagged operations in shuffled order, e.g. ``4: c+2 a*7 b+5``. The teacher's
solution first writes a short *plan* (the operations sorted by tag), then a long *execution*: one line per planned
operation with the arithmetic written out, and the answer::

    plan:a*7b+5c+2
    a*7: 4*7=28 -> 8
    b+5: 8+5=13 -> 3
    c+2: 3+2=5 -> 5
    </think>
    \\boxed{5}

Each tagged operation (``a*7``) and ``plan:`` are one token of the toy tokenizer, the rest one token per character,
so the plan is n + 2 tokens and each execution line 12-15: the plan is ~10 % of the answer's tokens and decides it,
while the execution after it is long and locally easy (copy the next planned operation, one digit of arithmetic,
keep the last digit). Along the tag order the operations alternate between multiplying (by 3, 7 or 9, units mod 10)
and adding (1-9), so two neighbours almost never commute (only ``+5`` does): the student's plans swap neighbouring
operations (``plan:b+5a*7c+2``), which gives a wrong answer, while its execution of a plan is the teacher's.
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
# split -> (min ops, max ops): out-of-domain problems have longer plans
SPLIT_SHAPE = {"train": (4, 8), "dev": (4, 8), "test": (4, 8), "ood": (7, 8)}
DEFAULT_SIZES = {"train": 20000, "dev": 200, "test": 200, "ood": 200}
PLAN_HEAD = "plan:"
STUDENT_SWAP = 0.5  # probability that the student's plan swaps an operation with the next one
# every tagged operation the task can write: one token each in the toy tokenizer
OPERATIONS = tuple(f"{t}+{k}" for t in TAGS for k in range(1, 10)) + tuple(f"{t}*{m}" for t in TAGS for m in MULTIPLIERS)


def swap_neighbours(ops: list[Any], rng: random.Random, p: float = STUDENT_SWAP) -> list[Any]:
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
    return _full(value, op) % MOD


def _full(value: int, op: str) -> int:
    sign, k = op[0], int(op[1:])
    if sign == "+":
        return value + k
    if sign == "-":
        return value - k
    if sign == "*":
        return value * k
    raise ValueError(f"unknown operation {op!r}")


def question_text(start: int, ops: list[tuple[str, str]]) -> str:
    return f"{start}: " + " ".join(t + o for t, o in ops)


def solution_text(start: int, plan: list[tuple[str, str]]) -> tuple[str, int, int]:
    """(solution, plan length in characters, final value) for executing ``plan`` from ``start``."""
    head = PLAN_HEAD + "".join(t + o for t, o in plan) + "\n"
    lines, value = [], start
    for t, o in plan:
        full = _full(value, o)
        lines.append(f"{t}{o}: {value}{o}={full} -> {full % MOD}\n")
        value = full % MOD
    return head + "".join(lines) + "</think>\n\\boxed{" + str(value) + "}", len(head), value


def draw_operations(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """n operations tagged a, b, ... that alternate between a multiplication and an addition (either first)."""
    multiply_first = rng.random() < 0.5
    ops = []
    for i, tag in enumerate(TAGS[:n]):
        if (i % 2 == 0) == multiply_first:
            ops.append((tag, f"*{rng.choice(MULTIPLIERS)}"))
        else:
            ops.append((tag, f"+{rng.randint(1, 9)}"))
    return ops


def make_record(rng: random.Random, split: str, index: int) -> dict[str, Any]:
    lo, hi = SPLIT_SHAPE[split]
    n = rng.randint(lo, hi)
    ops = draw_operations(rng, n)
    shuffled = ops[:]
    rng.shuffle(shuffled)
    start = rng.randint(0, MOD - 1)
    solution, plan_chars, answer = solution_text(start, ops)  # ops are already in tag order
    # The student's plan is the teacher's with neighbouring operations swapped (each pair with probability
    # STUDENT_SWAP): it has learnt to look the operations up but confuses the order of neighbours, so its plans are
    # often wrong while its execution (line i does the plan's i-th operation) is the teacher's. The skill is there
    # and the preference is wrong: what on-policy distillation can fix in a few dozen steps.
    student_plan = swap_neighbours(ops, rng)
    wrong, _, wrong_answer = solution_text(start, student_plan)
    return {
        "id": f"toy-{split}-{index:05d}",
        "question": question_text(start, shuffled),
        "answer": str(answer),
        "solution": solution,
        "plan_chars": plan_chars,
        "plan_tokens": n + 2,  # plan: + one token per operation + newline
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
    start = int(head)
    return start, [(tok[0], tok[1:]) for tok in ops.split()]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with Path(path).open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
