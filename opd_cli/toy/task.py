"""The toy task: apply tagged operations to a digit in tag order, for several rounds, modulo 10 (pure Python, seeded).

A question gives a start digit, a number of rounds and n tagged operations in shuffled order, e.g. ``4 x2: c*3 a+7
b+2``. The teacher's solution first writes a *plan* (the operations sorted by tag), then *executes* it: every round
applies the plan's operations in order, one line each (the operation, ``=``, the running value), and the answer,
the value at the end of each round, ends the solution::

    plan:a+7b+2c*3
    a+7=1
    b+2=3
    c*3=9
    a+7=6
    b+2=8
    c*3=4
    </think>
    \\boxed{94}

Each operation (``a+7``) is one token of the toy tokenizer, so the plan is n + 2 tokens and each execution line 4:
the plan is under ~10 % of the answer and decides it, while the long execution after it is easy (copy the next
planned operation, one digit of arithmetic). The student's plans swap neighbouring operations (``plan:b+2a+7c*3``),
which gives a wrong answer unless the swapped operations happen to commute; its execution of a plan is the
teacher's. Multipliers are 3, 7 and 9 (units mod 10), so a multiplication almost never commutes with an addition.
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
# split -> (min ops, max ops, min rounds, max rounds, probability of a multiplication)
SPLIT_SHAPE = {"train": (4, 8, 4, 6, 0.5), "dev": (4, 8, 4, 6, 0.5), "test": (4, 8, 4, 6, 0.5), "ood": (7, 8, 7, 8, 0.6)}
DEFAULT_SIZES = {"train": 20000, "dev": 200, "test": 200, "ood": 200}
PLAN_HEAD = "plan:"
STUDENT_SWAP = 0.5  # probability that the student's plan swaps an operation with the next one
# every tagged operation the task can write: one token each in the toy tokenizer
OPERATIONS = tuple(f"{t}+{k}" for t in TAGS for k in range(1, 10)) + tuple(f"{t}*{m}" for t in TAGS for m in MULTIPLIERS)


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


def question_text(start: int, rounds: int, ops: list[tuple[str, str]]) -> str:
    return f"{start} x{rounds}: " + " ".join(t + o for t, o in ops)


def solution_text(start: int, rounds: int, plan: list[tuple[str, str]]) -> tuple[str, int, str]:
    """(solution, plan length in characters, answer) for executing ``plan`` ``rounds`` times from ``start``.

    The answer is the value at the end of every round, one digit each (``4``, ``0``, ``7`` -> ``407``): one round is
    an affine map mod 10, and repeating a wrong one often lands on the right final digit by chance, never on every
    round's."""
    head = PLAN_HEAD + "".join(t + o for t, o in plan) + "\n"
    lines, value, ends = [], start, []
    for _ in range(rounds):
        for t, o in plan:
            value = apply_op(value, o)
            lines.append(f"{t}{o}={value}\n")
        ends.append(str(value))
    answer = "".join(ends)
    return head + "".join(lines) + "</think>\n\\boxed{" + answer + "}", len(head), answer


def make_record(rng: random.Random, split: str, index: int) -> dict[str, Any]:
    lo, hi, r_lo, r_hi, p_mul = SPLIT_SHAPE[split]
    n = rng.randint(lo, hi)
    rounds = rng.randint(r_lo, r_hi)
    ops = []
    for tag in TAGS[:n]:
        if rng.random() < p_mul:
            ops.append((tag, f"*{rng.choice(MULTIPLIERS)}"))
        else:
            ops.append((tag, f"+{rng.randint(1, 9)}"))
    shuffled = ops[:]
    rng.shuffle(shuffled)
    start = rng.randint(0, MOD - 1)
    solution, plan_chars, answer = solution_text(start, rounds, ops)  # ops are already in tag order
    # The student's plan is the teacher's with neighbouring operations swapped (each pair with probability
    # STUDENT_SWAP): it has learnt to look the operations up by tag but confuses neighbours, so its plans are often
    # wrong while its execution (the plan's operations in order, every round) is the teacher's. The skill is there
    # and the preference is wrong: what on-policy distillation can fix in a few dozen steps.
    student_plan = [(TAGS[i], op) for i, op in enumerate(swap_neighbours([op for _, op in ops], rng))]
    wrong, _, wrong_answer = solution_text(start, rounds, student_plan)
    return {
        "id": f"toy-{split}-{index:05d}",
        "question": question_text(start, rounds, shuffled),
        "answer": answer,
        "solution": solution,
        "plan_chars": plan_chars,
        "n_ops": n,
        "rounds": rounds,
        # the same execution of a wrong plan: what the student is trained on
        "student_solution": wrong,
        "student_answer": wrong_answer,
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


def parse_question(question: str) -> tuple[int, int, list[tuple[str, str]]]:
    """(start, rounds, [(tag, op), ...] in prompt order) from a question's text."""
    head, _, ops = question.partition(": ")
    start, rounds = head.split()
    return int(start), int(rounds.lstrip("x")), [(tok[0], tok[1:]) for tok in ops.split()]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with Path(path).open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
