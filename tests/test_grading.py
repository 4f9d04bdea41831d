"""Grading: math-verify agreement on equivalent forms, wrong and missing answers, multiple-choice letters."""

from __future__ import annotations

import threading

import pytest

from opd_cli.core.grading import extract_choice, grade, grade_choice, grade_math, last_boxed
from opd_cli.data import Problem


@pytest.mark.parametrize("pred", [r"\boxed{1/2}", r"\boxed{0.5}", r"\boxed{\frac{1}{2}}", r"so $x = \boxed{\dfrac12}$."])
@pytest.mark.parametrize("gold", ["1/2", "0.5", r"\frac{1}{2}"])
def test_equivalent_forms_agree(pred: str, gold: str) -> None:
    ok, extracted = grade_math("reasoning...\n" + pred, gold)
    assert ok, (pred, gold)
    assert extracted is not None


def test_wrong_and_missing_answers() -> None:
    assert grade_math(r"\boxed{1/3}", "1/2") == (False, "1/3")
    assert grade_math("the answer is 0.5", "1/2") == (False, None)  # no boxed answer
    assert grade_math(r"cut off at \boxed{1/", "1/2") == (False, None)  # truncated mid-answer
    assert grade_math("", "1/2") == (False, None)


def test_last_boxed_answer_counts() -> None:
    assert grade_math(r"first \boxed{3}, then corrected: \boxed{1/2}", "1/2")[0]
    assert not grade_math(r"first \boxed{1/2}, then corrected: \boxed{3}", "1/2")[0]
    # the reasoning block's drafts do not count when the model closes it
    assert grade_math(r"<think>maybe \boxed{9}</think> \boxed{10}", "10")[0]
    assert last_boxed(r"a \boxed{\frac{1}{2}} b") == r"\boxed{\frac{1}{2}}"


def test_symbolic_and_boxed_gold() -> None:
    assert grade_math(r"\boxed{x^2+2x+1}", "(x+1)^2")[0]
    assert grade_math(r"\boxed{7}", r"... so the value is \boxed{7}")[0]  # a full solution as the gold


def test_choice_letters() -> None:
    assert grade_choice(r"\boxed{B}", "B") == (True, "B")
    assert grade_choice(r"\boxed{\text{(c)}}", "C") == (True, "C")
    assert grade_choice("Answer: D", "d") == (True, "D")
    assert grade_choice(r"\boxed{A}", "B") == (False, "A")
    assert grade_choice("no idea", "A") == (False, None)
    assert extract_choice(r"\boxed{42}") is None


def test_grade_dispatches_on_answer_type() -> None:
    assert grade(Problem("1", "q", "C", "choice"), r"\boxed{C}")[0]
    assert grade(Problem("2", "q", "0.5"), r"\boxed{\frac12}")[0]


def test_safe_in_worker_threads() -> None:
    results = []
    t = threading.Thread(target=lambda: results.append(grade_math(r"\boxed{0.5}", "1/2")))
    t.start()
    t.join()
    assert results == [(True, "0.5")]
