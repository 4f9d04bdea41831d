"""Grading sampled answers: math by math-verify (parse + symbolic verify of the final boxed answer), multiple
choice by the letter, short free-text answers (the real-model task) by the gold word in their first sentence. The
prefix-OPD paper does not say how it grades: a maintained verifier, not hand-written regexes, is this project's
choice for math.

math-verify's own timeouts use ``signal.alarm``, which only works in the main thread; from any other thread we
call it with its timeouts off (``parsing_timeout=None``/``timeout_seconds=None``), so grading is safe inside
worker threads, dataloaders and servers. The only text handling done here is locating the *last* ``\\boxed{...}``
group by brace matching (math-verify would merge every boxed group of a response into one set).
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Any

MATH_TIMEOUT_S = 5  # per parse/verify call, main thread only
CHOICE_LETTERS = "ABCDEFGHIJKLMNOP"
THINK_CLOSE = "</think>"


def _timeout() -> int | None:
    return MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=1)
def _mv() -> Any:
    import math_verify
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    # math-verify warns once when its timeout is off (our worker-thread path); that is deliberate here.
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    latex = math_verify.LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    )
    return math_verify, [latex], [latex, math_verify.ExprExtractionConfig()]


def answer_region(text: str) -> str:
    """The part of a response that holds its final answer: after ``</think>`` when the model closed its reasoning."""
    i = text.rfind(THINK_CLOSE)
    return text[i + len(THINK_CLOSE) :] if i >= 0 else text


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) group of ``text`` including the command, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_i = text.find("{", start)
    if open_i < 0:
        return None
    depth = 0
    for j in range(open_i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start : j + 1]
    return None  # unbalanced: cut off by the length cap


def boxed_content(text: str) -> str | None:
    box = last_boxed(text)
    return None if box is None else box[box.index("{") + 1 : -1].strip()


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    mv, latex_only, both = _mv()
    t = _timeout()
    if "\\boxed" in gold or "\\fbox" in gold:
        return tuple(mv.parse(last_boxed(gold) or gold, extraction_config=latex_only, parsing_timeout=t))
    parsed = mv.parse(f"${gold}$", extraction_config=latex_only, parsing_timeout=t)
    if not parsed:
        parsed = mv.parse(gold, extraction_config=both, parsing_timeout=t)
    return tuple(parsed)


def grade_math(text: str, gold: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) for a math response: its last ``\\boxed{}`` against ``gold``, by math-verify.

    No boxed answer (or one cut off by the length cap) is wrong, with extracted ``None``.
    """
    box = last_boxed(answer_region(text))
    if box is None:
        return False, None
    mv, latex_only, _ = _mv()
    t = _timeout()
    pred = mv.parse(box, extraction_config=latex_only, parsing_timeout=t)
    extracted = box[box.index("{") + 1 : -1].strip()
    if not pred:
        return False, extracted
    gold_parsed = list(_parse_gold(str(gold).strip()))
    if not gold_parsed:
        # a gold math-verify cannot parse (plain words): compare the normalised strings math-verify would
        return extracted.replace(" ", "") == str(gold).strip().replace(" ", ""), extracted
    try:
        ok = bool(mv.verify(gold_parsed, pred, timeout_seconds=t))
    except Exception:  # math-verify raises on pathological sympy input; count it as wrong
        ok = False
    return ok, extracted


def extract_choice(text: str) -> str | None:
    """The option letter of a multiple-choice response: the last boxed answer (``\\boxed{B}``, ``\\boxed{(B)}``,
    ``\\boxed{\\text{B}}``), else math-verify's string extraction of an "answer is B"-style statement."""
    region = answer_region(text)
    content = boxed_content(region)
    if content is not None:
        inner = content
        for wrap in ("\\text{", "\\textbf{", "\\mathrm{", "\\mathbf{"):
            if inner.startswith(wrap) and inner.endswith("}"):
                inner = inner[len(wrap) : -1]
        inner = inner.strip().strip("().:$ ").strip()
        if len(inner) == 1 and inner.upper() in CHOICE_LETTERS:
            return inner.upper()
        if len(inner) > 1 and inner[0].upper() in CHOICE_LETTERS and inner[1] in ").: ":
            return inner[0].upper()  # "B) 42"
        return None
    mv, _, _ = _mv()
    found = mv.parse(
        region,
        extraction_config=[mv.StringExtractionConfig(strings=tuple(CHOICE_LETTERS), try_extract_without_anchor=False)],
        parsing_timeout=_timeout(),
    )
    for f in found:
        if isinstance(f, str) and len(f) == 1 and f.upper() in CHOICE_LETTERS:
            return f.upper()
    return None


def grade_choice(text: str, gold_letter: str) -> tuple[bool, str | None]:
    """(correct, extracted letter) for a multiple-choice response."""
    letter = extract_choice(text)
    return (letter is not None and letter == str(gold_letter).strip().upper()), letter


# a sentence ends at . ! or ? before whitespace and a capital, digit or quote (so "the U.S. is" does not end one),
# at the end of the text, or at a line break
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z0-9\"'(]|\s*$)|\n")


def first_sentence(text: str) -> str:
    """The first sentence of a response's answer region (after ``</think>`` when it has one), stripped."""
    region = answer_region(text).strip()
    m = _SENTENCE_END.search(region)
    return (region[: m.start()] if m else region).strip()


def grade_short(text: str, gold: str) -> tuple[bool, str | None]:
    """(correct, the sentence graded) for a one-word answer: right when the first sentence of the response names
    the gold (``|`` separates accepted spellings) as a whole word, ignoring case: "The capital of France is Paris."
    against ``Paris``. Only the first sentence counts, so a list of guesses or a late correction is wrong."""
    sentence = first_sentence(text)
    for alt in str(gold).split("|"):
        alt = alt.strip()
        if alt and re.search(r"(?<![\w-])" + re.escape(alt) + r"(?![\w-])", sentence, re.IGNORECASE):
            return True, sentence
    return False, sentence


def grade(problem: Any, text: str) -> tuple[bool, str | None]:
    """Grade ``text`` against a :class:`opd_cli.data.Problem` by its ``answer_type``."""
    if problem.answer_type == "choice":
        return grade_choice(text, problem.answer)
    if problem.answer_type == "short":
        return grade_short(text, problem.answer)
    return grade_math(text, problem.answer)


def math_accuracy(texts: list[str], golds: list[str]) -> float:
    """Fraction of ``texts`` whose last boxed answer equals its gold (:func:`grade_math`); the toy build's check."""
    return sum(grade_math(t, g)[0] for t, g in zip(texts, golds, strict=True)) / max(1, len(golds))
