"""analysis/claims.py: differences to a reference method with their standard error, gain shares, FLOPs ratios."""

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
    out = {c["method"]: c for c in claims.compare(ROWS, "full", "toy")}
    assert set(out) == {"prefix", "close"}  # neither the reference nor the base row
    se = math.sqrt(0.06**2 / 3 + 0.03**2 / 3)
    assert out["prefix"]["diff"] == pytest.approx(-0.1) and out["prefix"]["spread"] == pytest.approx(se)
    assert out["prefix"]["beyond"] is True and out["close"]["beyond"] is False  # 0.1 > 2 x 0.039; 0.02 < 2 x 0.039
    assert out["prefix"]["gain_share"] == pytest.approx(0.8)  # (0.6 - 0.2) / (0.7 - 0.2)
    assert out["prefix"]["flops_ratio"] == pytest.approx(0.2)


def test_unknown_reference_is_one_line():
    with pytest.raises(SystemExit, match="no method 'nope' in the table"):
        claims.compare(ROWS, "nope", "toy")
