"""Grading of toy answers with the same verifier as real benchmarks (math-verify on the boxed answer)."""

from __future__ import annotations


def grade(text: str, gold: str) -> bool:
    """True when the final boxed answer of ``text`` equals ``gold`` (opd_cli.grading when present, else math-verify)."""
    try:
        from opd_cli.grading import grade_math
    except ImportError:
        grade_math = None
    if grade_math is not None:
        return bool(grade_math(text, gold)[0])
    from math_verify import parse, verify

    pred = parse(text)
    return bool(pred) and bool(verify(parse("\\boxed{" + gold + "}"), pred))


def accuracy(texts: list[str], golds: list[str]) -> float:
    return sum(grade(t, g) for t, g in zip(texts, golds, strict=True)) / max(1, len(golds))
