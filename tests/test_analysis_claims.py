"""analysis/claims.py: differences to a reference method with Welch's t-test, gain shares, FLOPs ratios."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("claims", Path(__file__).parents[1] / "analysis" / "claims.py")
claims = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(claims)

ROWS = [
    {"method": "base: toy student", "seeds": "1", "toy": "0.2", "toy_sd": "", "flops": ""},
    {"method": "full", "seeds": "3", "toy": "0.7", "toy_sd": "0.03", "flops": "5e12"},
    {"method": "prefix", "seeds": "3", "toy": "0.6", "toy_sd": "0.06", "flops": "1e12"},
    {"method": "close", "seeds": "3", "toy": "0.68", "toy_sd": "0.06", "flops": "2e12"},
]


def test_compare_against_the_reference():
    from scipy import stats

    out = {c["method"]: c for c in claims.compare(ROWS, "full", "toy")}
    assert set(out) == {"prefix", "close"}  # neither the reference nor the base row
    se = math.sqrt(0.06**2 / 3 + 0.03**2 / 3)
    test = out["prefix"]["test"]
    assert out["prefix"]["diff"] == pytest.approx(-0.1) and test["se"] == pytest.approx(se)
    # three seeds whose mean and sd are the table's: scipy's Welch test on the values themselves agrees
    raw = stats.ttest_ind([0.54, 0.6, 0.66], [0.67, 0.7, 0.73], equal_var=False)
    assert test["p"] == pytest.approx(raw.pvalue) and test["df"] == pytest.approx(raw.df)
    low, high = raw.confidence_interval(0.95)
    assert (test["low"], test["high"]) == (pytest.approx(low), pytest.approx(high))
    # 0.1 is over twice its standard error (0.039) and yet not a 5 % difference on ~2.9 degrees of freedom
    assert abs(test["t"]) > 2 and 0.05 < test["p"] < 0.1
    assert out["prefix"]["gain_share"] == pytest.approx(0.8)  # (0.6 - 0.2) / (0.7 - 0.2)
    assert out["prefix"]["flops_ratio"] == pytest.approx(0.2)
    table = claims.format_table(list(out.values()), "toy", "full")
    assert "| prefix | 60.0 | -10.0 | [" in table and "| 0.083 |" in table
    far = claims.compare([{**ROWS[1], "seeds": "10"}, {**ROWS[2], "seeds": "10", "toy": "0.2"}], "full", "toy")
    assert far[0]["test"]["p"] < 0.0005  # 50 points below on 10 seeds each
    assert "| < 0.001 |" in claims.format_table(far, "toy", "full")


def test_no_test_without_variance():
    assert claims.welch(0.5, 0.0, 3, 0.4, 0.0, 3) is None
    assert claims.welch(0.5, 0.1, 1, 0.4, 0.0, 1) is None


def test_unknown_reference_is_one_line():
    with pytest.raises(SystemExit, match="no method 'nope' in the table"):
        claims.compare(ROWS, "nope", "toy")


def test_a_column_over_fewer_seeds_is_tested_on_those():
    """toy_n (opd plot main-table's count of the seeds a column's mean is over) outranks the row's seeds."""
    from scipy import stats

    rows = [dict(r) for r in ROWS]
    rows[2]["toy_n"] = "2"  # prefix: one of its 3 seeds not evaluated on toy yet
    test = {c["method"]: c for c in claims.compare(rows, "full", "toy")}["prefix"]["test"]
    raw = stats.ttest_ind_from_stats(0.6, 0.06, 2, 0.7, 0.03, 3, equal_var=False)
    assert test["p"] == pytest.approx(raw.pvalue) and test["se"] == pytest.approx(math.sqrt(0.06**2 / 2 + 0.03**2 / 3))


def test_a_curve_tables_step_column_and_seed_suffix():
    """opd plot topk-support / dynamics tables: `acc_step_30` columns and labels ending in ` (3 seeds)`, which the
    reference may leave out (the suffix changes with TOY_SEEDS)."""
    rows = [
        {"method": "sampled-token (3 seeds)", "seeds": "3", "acc_step_30": "0.66", "acc_step_30_sd": "0.01"},
        {"method": "top-16 student (3 seeds)", "seeds": "3", "acc_step_30": "0.76", "acc_step_30_sd": "0.02"},
    ]
    (found,) = claims.compare(rows, "top-16 student", "acc_step_30")
    assert found["method"] == "sampled-token (3 seeds)" and found["diff"] == pytest.approx(-0.1)
    assert found["gain_share"] is None and found["flops_ratio"] is None and found["test"]["p"] < 0.05
    with pytest.raises(SystemExit, match=r"no method 'top-16' in the table \(methods: sampled-token \(3 seeds\)"):
        claims.compare(rows, "top-16", "acc_step_30")
