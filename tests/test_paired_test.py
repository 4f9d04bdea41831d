"""analysis/paired_test.py: the difference, its interval and the paired permutation p on made-up evaluations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
import paired_test  # noqa: E402


def _eval(folder: Path, correct: list[list[bool]], step: int | None = None) -> Path:
    sub = folder / "eval" / (f"step_{step:06d}" if step is not None else "")
    sub.mkdir(parents=True)
    if step is not None:
        (folder / "eval" / "best.json").write_text(json.dumps({"best_step": step}))
    lines = [json.dumps({"problem_id": f"p{i}", "sample": j, "correct": c}) for i, row in enumerate(correct) for j, c in enumerate(row)]
    (sub / "b.samples.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_method_right_where_the_other_is_wrong(tmp_path):
    a = _eval(tmp_path / "run-a", [[True, True]] * 20, step=40)
    _eval(tmp_path / "run-a-s1", [[True, False]] * 20, step=40)  # a seed: pooled per problem, 0.75
    b = _eval(tmp_path / "base", [[False, False]] * 20)
    r = paired_test.compare(a, b, "b", rounds=2000)
    assert r["seeds_a"] == 2 and r["a"] == pytest.approx(0.75) and r["a_sd"] == pytest.approx(0.3535534, rel=1e-6)
    assert r["diff"] == pytest.approx(0.75) and r["lo"] == r["hi"] == pytest.approx(0.75)
    assert r["p"] < 0.001  # every one of 20 paired differences positive: 2 / 2^20 of the sign flips are as extreme


def test_the_same_answers_give_no_difference(tmp_path):
    rows = [[i % 2 == 0, i % 3 == 0] for i in range(30)]
    r = paired_test.compare(_eval(tmp_path / "x", rows), _eval(tmp_path / "y", rows), "b", rounds=500)
    assert r["diff"] == 0 and r["p"] == 1.0


def test_other_problems_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="different problems"):
        paired_test.compare(_eval(tmp_path / "x", [[True]] * 3), _eval(tmp_path / "y", [[True]] * 4), "b")


def test_a_seed_not_evaluated_yet_is_left_out_and_said(tmp_path, capsys):
    a = _eval(tmp_path / "run-a", [[True, True]] * 5, step=40)
    (tmp_path / "run-a-s1" / "eval").mkdir(parents=True)  # seed 1 still training
    r = paired_test.compare(a, _eval(tmp_path / "base", [[False, True]] * 5), "b", rounds=200)
    assert r["seeds_a"] == 1 and r["a"] == 1.0
    err = capsys.readouterr().err
    assert "seed folder left out" in err and "run-a-s1" in err
    with pytest.raises(SystemExit, match="does not exist"):  # the run itself must be evaluated
        paired_test.compare(tmp_path / "run-a-s1", a, "b")


def test_run_at_step_reads_that_checkpoint(tmp_path):
    """runs/x@10: step 10's samples, not the dev pick's (a window ablation's runs compared at a fixed step)."""
    a = _eval(tmp_path / "run-a", [[True, True]] * 6, step=40)
    (a / "eval" / "step_000010").mkdir()
    lines = [json.dumps({"problem_id": f"p{i}", "sample": 0, "correct": i < 3}) for i in range(6)]
    (a / "eval" / "step_000010" / "b.samples.jsonl").write_text("\n".join(lines) + "\n")
    base = _eval(tmp_path / "base", [[False]] * 6)
    assert paired_test.compare(a, base, "b", rounds=200)["diff"] == pytest.approx(1.0)
    assert paired_test.compare(Path(f"{a}@10"), base, "b", rounds=200)["diff"] == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="step_000020"):
        paired_test.compare(Path(f"{a}@20"), base, "b")


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    a = _eval(tmp_path / "run-a", [[True]] * 3, step=40)
    _eval(tmp_path / "run-a-s1", [[True]] * 3, step=40)  # a seed without step 20 either: no note before the error
    assert paired_test.main([f"{a}@20", str(_eval(tmp_path / "base", [[False]] * 3)), "--benchmark", "b"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("error: ") and "step_000020" in out.err


def test_a_window_ablation_run_pools_the_seeded_ablations(tmp_path):
    """<ablation>/runs/<name>'s seeds live in <ablation>-s<k>/runs/<name> (opd window-ablation per seed)."""
    a = _eval(tmp_path / "window-ablation" / "runs" / "prefix-10", [[True, True]] * 8, step=30)
    _eval(tmp_path / "window-ablation-s1" / "runs" / "prefix-10", [[False, False]] * 8, step=30)
    _eval(tmp_path / "window-ablation-s2" / "runs" / "prefix-10", [[True, False]] * 8, step=30)
    (tmp_path / "window-ablation-s3" / "runs").mkdir(parents=True)  # a seed without this window: not a seed of it
    assert paired_test.seed_folders(a) == [a, *(tmp_path / f"window-ablation-s{k}" / "runs" / "prefix-10" for k in (1, 2))]
    r = paired_test.compare(a, _eval(tmp_path / "base", [[False, False]] * 8), "b", rounds=200)
    assert r["seeds_a"] == 3 and r["a"] == pytest.approx(0.5) and r["diff"] == pytest.approx(0.5)
