"""Grading of toy answers with the same verifier as real benchmarks (math-verify on the boxed answer)."""

from __future__ import annotations

from opd_cli.grading import grade_math


def grade(text: str, gold: str) -> bool:
    """True when the final boxed answer of ``text`` equals ``gold`` (:func:`opd_cli.grading.grade_math`)."""
    return bool(grade_math(text, gold)[0])


def accuracy(texts: list[str], golds: list[str]) -> float:
    return sum(grade(t, g) for t, g in zip(texts, golds, strict=True)) / max(1, len(golds))
