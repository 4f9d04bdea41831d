"""`opd eval` numbers: Mean Acc@n, pass@k, the summary against the per-sample file, checkpoints of a run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.evaluate import EvalConfig, evaluate_run, pass_at_k, pass_ks, summarize

runner = CliRunner()


def test_pass_at_k_known_values() -> None:
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_ks(16) == [1, 2, 4, 8, 16] and pass_ks(6) == [1, 2, 4, 6] and pass_ks(1) == [1]


def test_summarize_known_values() -> None:
    s = summarize([[True, False], [True, True], [False, False]], [10, 20, 30, 40, 50, 60], [False] * 5 + [True])
    assert s["mean_acc"] == pytest.approx(0.5)
    assert s["stderr"] == pytest.approx(0.5 / math.sqrt(3))  # std of (0.5, 1, 0) over problems, / sqrt(3)
    assert s["pass_at_k"] == {"1": pytest.approx(0.5), "2": pytest.approx(2 / 3)}
    assert (s["n"], s["num_problems"], s["mean_length"], s["truncated_frac"]) == (2, 3, 35.0, pytest.approx(1 / 6))


def fake_grade(problem, text):
    """Deterministic and varied: 'correct' when the sample's text length is even (random tiny models never box)."""
    return len(text) % 2 == 0, None


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    f = tmp_path / "tiny.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "question": f"start {i}; apply by tag, mod 10: a+1", "answer": str(i + 1)}) + "\n"
                         for i in range(3)))
    return f


def read_samples(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_end_to_end_summary_matches_samples(tiny_model_dirs, tiny_data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("opd_cli.grading.grade", fake_grade)
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_model_dirs[0]), "--data", str(tiny_data), "-n", "4", "--max-new-tokens", "12",
            "--batch-size", "5", "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "eval" / "tiny.json").read_text())
    rows = read_samples(out / "eval" / "tiny.samples.jsonl")
    assert len(rows) == 12 and {r["problem_id"] for r in rows} == {"p0", "p1", "p2"}
    assert summary["mean_acc"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    assert 0 < summary["mean_acc"] < 1  # the fake grader gives a mix, so the comparison means something
    assert summary["mean_length"] == pytest.approx(sum(r["length"] for r in rows) / len(rows))
    assert summary["truncated_frac"] == pytest.approx(sum(r["truncated"] for r in rows) / len(rows))
    per = {}
    for row in rows:
        per.setdefault(row["problem_id"], []).append(row["correct"])
    assert summary["pass_at_k"]["4"] == pytest.approx(sum(any(v) for v in per.values()) / 3)
    assert (summary["n"], summary["num_problems"], summary["max_new_tokens"]) == (4, 3, 12)
    assert yaml.safe_load((out / "config.yaml").read_text())["command"] == "eval"
    assert "opd eval" in r.stdout and "tiny" in r.stdout  # the summary table

    # same folder again: refused; resume keeps the finished benchmark; overwrite redoes it
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    before = (out / "eval" / "tiny.json").read_text()
    assert runner.invoke(app, args + ["--if-exists", "resume"]).exit_code == 0
    assert (out / "eval" / "tiny.json").read_text() == before
    assert runner.invoke(app, args + ["--if-exists", "overwrite", "--seed", "1"]).exit_code == 0
    assert json.loads((out / "eval" / "tiny.json").read_text())["seed"] == 1


def test_eval_defaults_to_the_toy_student(tiny_model_dirs, tiny_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import opd_cli.toy.world as world

    fake = SimpleNamespace(student_dir=tiny_model_dirs[0], teacher_dir=tiny_model_dirs[1],
                           split_path=lambda name: tiny_data)
    monkeypatch.setattr(world, "ensure_world", lambda *a, **k: fake)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["eval", "--toy-model", "teacher", "-n", "1", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "runs" / "eval-toy-teacher" / "eval" / "toy.json").read_text())
    assert s["model"] == str(tiny_model_dirs[1]) and s["num_problems"] == 3


def test_evaluate_run_writes_best(tiny_model_dirs, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opd_cli.data import load_file
    from opd_cli.errors import OpdError

    monkeypatch.setattr("opd_cli.grading.grade", fake_grade)
    student, teacher = tiny_model_dirs
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": str(student)}))
    for step, src in ((10, student), (20, teacher)):
        d = run / "checkpoints" / f"step_{step:06d}"
        shutil.copytree(src, d)
        (d / "COMPLETE").write_text("")
    shutil.copytree(student, run / "checkpoints" / "step_000030")  # no COMPLETE marker: never evaluated
    cfg = EvalConfig(samples=3, max_new_tokens=8, run=str(run))
    problems = {"dev": load_file(tiny_data), "other": load_file(tiny_data)[:1]}

    best = evaluate_run(run, None, problems, "dev", cfg)
    assert set(best["scores"]) == {"10", "20"}
    for step in (10, 20):
        s = json.loads((run / "eval" / f"step_{step:06d}" / "dev.json").read_text())
        assert best["scores"][str(step)] == pytest.approx(s["mean_acc"]) and s["step"] == step
        assert (run / "eval" / f"step_{step:06d}" / "other.samples.jsonl").is_file()
    on_disk = json.loads((run / "eval" / "best.json").read_text())
    assert on_disk == best and on_disk["dev_benchmark"] == "dev"
    assert best["best_step"] == int(max(best["scores"], key=lambda k: (best["scores"][k], -int(k))))

    with pytest.raises(OpdError, match="already has results"):
        evaluate_run(run, [10], problems, "dev", cfg)
    best = evaluate_run(run, [0, 10], problems, "dev", cfg, if_exists="resume")  # step 0 = the initial student
    assert set(best["scores"]) == {"0", "10", "20"}
    with pytest.raises(OpdError, match="no complete checkpoint for step 30"):
        evaluate_run(run, [30], problems, "dev", cfg)


def test_best_benchmarks_run_only_at_the_best_checkpoint(tiny_model_dirs, tiny_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import opd_cli.toy.world as world

    monkeypatch.setattr("opd_cli.grading.grade", fake_grade)
    student, teacher = tiny_model_dirs
    # a toy-world run: its config names no student, so step 0 is the toy world's student
    monkeypatch.setattr(world, "ensure_world", lambda *a, **k: SimpleNamespace(student_dir=student, teacher_dir=teacher,
                                                                               split_path=lambda name: tiny_data))
    run = tmp_path / "run"
    (run / "config.yaml").parent.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": None}))
    d = run / "checkpoints" / "step_000010"
    shutil.copytree(teacher, d)
    (d / "COMPLETE").write_text("")
    args = ["eval", "--run", str(run), "--steps", "0,10", "--data", str(tiny_data), "--dev-benchmark", "tiny",
            "--best-benchmark", "toy", "-n", "3", "--max-new-tokens", "8"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    best = json.loads((run / "eval" / "best.json").read_text())
    assert set(best["scores"]) == {"0", "10"}
    step0 = json.loads((run / "eval" / "step_000000" / "tiny.json").read_text())
    assert step0["model"] == str(student)
    with_best = {p.parent.name for p in (run / "eval").glob("step_*/toy.json")}
    assert with_best == {f"step_{best['best_step']:06d}"}  # only the best checkpoint has the extra benchmark
    r = runner.invoke(app, ["eval", "--model", str(student), "--data", str(tiny_data), "--best-benchmark", "toy"])
    assert r.exit_code == 2 and "--best-benchmark needs --run" in r.output


def test_initial_and_step0_cache(tiny_model_dirs, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--initial adds step 0; a second run from the same student reuses its cached step-0 evaluation verbatim,
    while other settings (or a changed model file) evaluate again."""
    import opd_cli.evaluate as ev
    from opd_cli.data import load_file

    monkeypatch.setattr("opd_cli.grading.grade", fake_grade)
    monkeypatch.setenv("OPD_EVAL_CACHE", str(tmp_path / "cache"))
    student = tmp_path / "student"
    shutil.copytree(tiny_model_dirs[0], student)
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        d = run / "checkpoints" / "step_000010"
        shutil.copytree(student, d)
        (d / "COMPLETE").write_text("")
        (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": str(student)}))
        runs.append(run)
    problems = {"dev": load_file(tiny_data)}
    calls = []
    real = ev.evaluate_model
    monkeypatch.setattr(ev, "evaluate_model", lambda *a, **k: calls.append(k["step"]) or real(*a, **k))

    best = evaluate_run(runs[0], None, problems, "dev", EvalConfig(samples=2, max_new_tokens=8, run=str(runs[0]), initial=True))
    assert set(best["scores"]) == {"0", "10"} and calls == [0, 10]
    evaluate_run(runs[1], None, problems, "dev", EvalConfig(samples=2, max_new_tokens=8, run=str(runs[1]), initial=True))
    assert calls == [0, 10, 10]  # step 0 came from the cache
    for suffix in (".json", ".samples.jsonl"):
        a, b = (r / "eval" / "step_000000" / f"dev{suffix}" for r in runs)
        assert a.read_text() == b.read_text()
    evaluate_run(runs[1], [0], problems, "dev", EvalConfig(samples=3, max_new_tokens=8), if_exists="overwrite")
    assert calls[-1] == 0 and len(calls) == 4  # other n: evaluated again
    (student / "config.json").write_text((student / "config.json").read_text() + " ")
    evaluate_run(runs[1], [0], problems, "dev", EvalConfig(samples=2, max_new_tokens=8), if_exists="overwrite")
    assert len(calls) == 5  # the model folder changed: evaluated again
    monkeypatch.setenv("OPD_EVAL_CACHE", "off")
    assert ev.eval_cache_dir() is None
    from opd_cli.errors import OpdError

    with pytest.raises(OpdError, match="--initial needs --run"):
        EvalConfig(initial=True)
