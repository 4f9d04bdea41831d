"""analysis/seed_spread.py (make toy-seeds): each run's test accuracy over its seeds, and Welch's test of each run
against the last one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(folder: Path, acc: float, step: int = 30) -> None:
    (folder / "eval" / f"step_{step:06d}").mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 0\n")  # a run folder, as opd train writes one
    (folder / "eval" / "best.json").write_text(json.dumps({"best_step": step}))
    (folder / "eval" / f"step_{step:06d}" / "toy.json").write_text(json.dumps({"mean_acc": acc}))


def test_each_run_is_tested_against_the_last(tmp_path: Path) -> None:
    from scipy import stats

    prefix, full = [0.425, 0.5775, 0.4075], [0.71, 0.655, 0.67]
    for name, accs in (("train-p", prefix), ("train-f", full)):
        for seed, acc in enumerate(accs):
            _run(tmp_path / (name + (f"-s{seed}" if seed else "")), acc)
    out = subprocess.run([sys.executable, str(ROOT / "analysis" / "seed_spread.py"), str(tmp_path / "train-p"),
                          str(tmp_path / "train-f"), "-o", str(tmp_path / "out")], capture_output=True, text=True,
                         check=True).stdout
    raw = stats.ttest_ind(prefix, full, equal_var=False)
    low, high = raw.confidence_interval(0.95)
    assert f"p vs f: -20.8 points, 95 % interval [{100 * low:+.1f}, {100 * high:+.1f}]" in out
    assert f"p = {raw.pvalue:.3f}" in out and raw.pvalue > 0.05  # 20.8 points, and yet not a 5 % difference
    found = json.loads((tmp_path / "out" / "seed-spread.json").read_text())
    assert [r["run"] for r in found["runs"]] == ["p", "f"]
    assert found["tests"][0]["test"]["p"] == pytest.approx(raw.pvalue)


def test_one_seed_each_has_nothing_to_test(tmp_path: Path) -> None:
    _run(tmp_path / "train-p", 0.4)
    _run(tmp_path / "train-f", 0.7)
    out = subprocess.run([sys.executable, str(ROOT / "analysis" / "seed_spread.py"), str(tmp_path / "train-p"),
                          str(tmp_path / "train-f")], capture_output=True, text=True, check=True).stdout
    assert "p vs f: no spread to test with" in out
