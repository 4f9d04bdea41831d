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
from opd_cli.evaluate.config import EvalConfig
from opd_cli.evaluate.model import pass_at_k, pass_ks, summarize
from opd_cli.evaluate.run import evaluate_run

runner = CliRunner()


def test_pass_at_k_known_values() -> None:
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_ks(16) == [1, 2, 4, 8, 16] and pass_ks(6) == [1, 2, 4, 6] and pass_ks(1) == [1]


def test_pass_at_k_is_the_chance_that_k_of_the_n_samples_hold_a_correct_one() -> None:
    """Brute force: over every k-subset of n samples (the first c correct), the fraction holding a correct one."""
    from itertools import combinations

    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(combinations(range(n), k))
                hit = sum(min(s) < c for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(hit, abs=1e-12), (n, c, k)


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
    f.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "question": f"start {i}; apply by tag, mod 10: a+1", "answer": str(i + 1)})
            + "\n"
            for i in range(3)
        )
    )
    return f


def read_samples(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_end_to_end_summary_matches_samples(
    tiny_model_dirs, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("opd_cli.core.grading.grade", fake_grade)
    out = tmp_path / "out"
    args = [
        "eval",
        "--model",
        str(tiny_model_dirs[0]),
        "--data",
        str(tiny_data),
        "-n",
        "4",
        "--max-new-tokens",
        "12",
        "--batch-size",
        "5",
        "-o",
        str(out),
    ]
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
    # every k = 1, 2, 4: the mean over problems of 1 - C(n - c, k) / C(n, k), with n = 4 and c the correct samples
    assert set(summary["pass_at_k"]) == {"1", "2", "4"}
    for k in (1, 2, 4):
        direct = sum(1 - math.comb(4 - sum(v), k) / math.comb(4, k) for v in per.values()) / 3
        assert summary["pass_at_k"][str(k)] == pytest.approx(direct), k
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


def test_eval_defaults_to_the_toy_student(
    tiny_model_dirs, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opd_cli.toy.build as build

    fake = SimpleNamespace(
        student_dir=tiny_model_dirs[0],
        teacher_dir=tiny_model_dirs[1],
        student_path=lambda which="large": tiny_model_dirs[0],
        split_path=lambda name: tiny_data,
    )
    monkeypatch.setattr(build, "ensure_world", lambda *a, **k: fake)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["eval", "--toy-model", "teacher", "-n", "1", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "runs" / "eval-toy-teacher" / "eval" / "toy.json").read_text())
    assert s["model"] == str(tiny_model_dirs[1]) and s["num_problems"] == 3


def test_evaluate_run_writes_best(
    tiny_model_dirs, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opd_cli.core.errors import OpdError
    from opd_cli.data import load_file

    monkeypatch.setattr("opd_cli.core.grading.grade", fake_grade)
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


def test_best_benchmarks_run_only_at_the_best_checkpoint(
    tiny_model_dirs, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opd_cli.toy.build as build

    monkeypatch.setattr("opd_cli.core.grading.grade", fake_grade)
    student, teacher = tiny_model_dirs
    # a toy-world run: its config names no student, so step 0 is the toy world's student
    monkeypatch.setattr(
        build,
        "ensure_world",
        lambda *a, **k: SimpleNamespace(
            student_dir=student,
            teacher_dir=teacher,
            student_path=lambda which="large": student,
            split_path=lambda name: tiny_data,
        ),
    )
    run = tmp_path / "run"
    (run / "config.yaml").parent.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": None}))
    d = run / "checkpoints" / "step_000010"
    shutil.copytree(teacher, d)
    (d / "COMPLETE").write_text("")
    args = [
        "eval",
        "--run",
        str(run),
        "--steps",
        "0,10",
        "--data",
        str(tiny_data),
        "--dev-benchmark",
        "tiny",
        "--best-benchmark",
        "toy",
        "-n",
        "3",
        "--max-new-tokens",
        "8",
        "--limit",
        "2",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    best = json.loads((run / "eval" / "best.json").read_text())
    assert set(best["scores"]) == {"0", "10"}
    step0 = json.loads((run / "eval" / "step_000000" / "tiny.json").read_text())
    assert step0["model"] == str(student)
    assert step0["num_problems"] == 2  # --limit shortens the per-checkpoint (dev) evaluations
    with_best = {p.parent.name for p in (run / "eval").glob("step_*/toy.json")}
    assert with_best == {f"step_{best['best_step']:06d}"}  # only the best checkpoint has the extra benchmark
    reported = json.loads((run / "eval" / f"step_{best['best_step']:06d}" / "toy.json").read_text())
    assert reported["num_problems"] == 3  # but never the reported splits: every row on all of them
    # more benchmarks at one checkpoint (a limited-budget row): the dev pick stays as it was
    r = runner.invoke(app, ["eval", "--run", str(run), "--steps", "0", "-b", "toy", "-n", "2", "--max-new-tokens", "8",
                            "--if-exists", "overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "best.json").read_text()) == best
    assert json.loads((run / "eval" / "step_000000" / "toy.json").read_text())["n"] == 2
    r = runner.invoke(app, ["eval", "--model", str(student), "--data", str(tiny_data), "--best-benchmark", "toy"])
    assert r.exit_code == 2 and "--best-benchmark needs --run" in r.output


def test_initial_and_step0_cache(
    tiny_model_dirs, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--initial adds step 0; a second run from the same student reuses its cached step-0 evaluation verbatim,
    while other settings (or a changed model file) evaluate again."""
    import opd_cli.evaluate.run as ev
    from opd_cli.data import load_file

    monkeypatch.setattr("opd_cli.core.grading.grade", fake_grade)
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

    best = evaluate_run(
        runs[0], None, problems, "dev", EvalConfig(samples=2, max_new_tokens=8, run=str(runs[0]), initial=True)
    )
    assert set(best["scores"]) == {"0", "10"} and calls == [0, 10]
    evaluate_run(
        runs[1], None, problems, "dev", EvalConfig(samples=2, max_new_tokens=8, run=str(runs[1]), initial=True)
    )
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
    from opd_cli.core.errors import OpdError

    with pytest.raises(OpdError, match="--initial needs --run"):
        EvalConfig(initial=True)


def _weights_digest(tensors) -> str:
    """One fingerprint of (name, tensor) pairs, whatever their order."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        h.update(name.encode() + t.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_vllm_run_eval_reuses_one_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`opd eval --run --backend vllm`: one engine for the initial student and three checkpoints, each checkpoint's
    weights loaded into it (through the worker call vLLM runs) before its samples are drawn, and the best one's
    loaded again for --best-benchmark."""
    from safetensors.torch import load_file

    import opd_cli.core.generation as gen
    from opd_cli.core.generation import Sample
    from opd_cli.data import Problem, register_source
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    run = tmp_path / "run"
    student = save_random_model(tmp_path / "student", tok, layers=1, hidden=32, heads=2, seed=0)
    ckpts = {0: student}
    for step in (10, 20, 30):
        ckpts[step] = save_random_model(
            run / "checkpoints" / f"step_{step:06d}", tok, layers=1, hidden=32, heads=2, seed=step
        )
        (ckpts[step] / "COMPLETE").write_text("")
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": str(student)}))
    digest = {step: _weights_digest(load_file(str(d / "model.safetensors")).items()) for step, d in ckpts.items()}
    assert len(set(digest.values())) == 4  # four different sets of weights
    step_of = {v: k for k, v in digest.items()}
    events: list[tuple] = []

    class FakeLLM:  # a vLLM engine with one worker, which holds whatever weights were loaded last
        def __init__(self, model: str) -> None:
            self.weights = _weights_digest(load_file(str(Path(model) / "model.safetensors")).items())
            events.append(("create", step_of[self.weights]))
            self.worker = SimpleNamespace(model_runner=SimpleNamespace(reload_weights=self._load))

        def _load(self, weights_iterator, is_checkpoint_format) -> None:
            assert is_checkpoint_format  # checkpoint names, as saved by transformers
            self.weights = _weights_digest(list(weights_iterator))
            events.append(("load", step_of[self.weights]))

        def collective_rpc(self, method, args=()):
            return [method(self.worker, *args)]

        def reset_prefix_cache(self) -> None:
            events.append(("reset",))

    def fake_sample_vllm(llm, tokenizer, prompts, n, *rest):
        events.append(("sample", step_of[llm.weights]))
        text = "right" if step_of[llm.weights] == 20 else "wrong"  # step 20 is the best checkpoint
        return [[Sample(text, [1], 1, False) for _ in range(n)] for _ in prompts]

    monkeypatch.setattr(gen, "vllm_available", lambda: True)
    monkeypatch.setattr(gen, "load_vllm", lambda model, **kw: FakeLLM(model))
    monkeypatch.setattr(gen, "_sample_vllm", fake_sample_vllm)
    monkeypatch.setattr("opd_cli.core.grading.grade", lambda problem, text: (text == "right", None))
    monkeypatch.setenv("OPD_EVAL_CACHE", "off")
    register_source(
        "unit-eval-extra", lambda limit=None, seed=0: [Problem("e0", "start 1; apply by tag, mod 10: a+1", "2")]
    )
    problems = {"dev": [Problem("p0", "start 3; apply by tag, mod 10: a+1", "4")]}
    cfg = EvalConfig(backend="vllm", samples=2, run=str(run), initial=True, best_benchmark=["unit-eval-extra"])

    best = evaluate_run(run, None, problems, "dev", cfg)
    assert best["best_step"] == 20
    assert events == [
        ("create", 0),
        ("sample", 0),
        ("load", 10),
        ("reset",),
        ("sample", 10),
        ("load", 20),
        ("reset",),
        ("sample", 20),
        ("load", 30),
        ("reset",),
        ("sample", 30),
        ("load", 20),
        ("reset",),
        ("sample", 20),
    ]  # the best checkpoint again, for unit-eval-extra
    extra = json.loads((run / "eval" / "step_000020" / "unit-eval-extra.json").read_text())
    assert extra["mean_acc"] == 1.0 and extra["backend"] == "vllm"


def test_weight_files_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from opd_cli.core.errors import OpdError
    from opd_cli.core.generation import load_vllm_weights, weight_files

    single, sharded, empty = (tmp_path / n for n in ("single", "sharded", "empty"))
    for d in (single, sharded, empty):
        d.mkdir()
    for f in ("model.safetensors", "training_state.safetensors"):
        (single / f).write_bytes(b"")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for f in [*shards, "model-old.safetensors"]:
        (sharded / f).write_bytes(b"")
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": shards[1], "b": shards[0], "c": shards[1]}})
    )
    assert weight_files(str(single)) == [str(single / "model.safetensors")]
    assert weight_files(str(sharded)) == [str(sharded / f) for f in shards]  # what the index names, nothing else
    with pytest.raises(OpdError, match="has no model\\*.safetensors weights"):
        weight_files(str(empty))
    # a real: name is its world's folder (the initial student of a real-model run, step 0 under vLLM)
    world = tmp_path / "world"
    (world / "student").mkdir(parents=True)
    (world / "student" / "config.json").write_text("{}")
    (world / "student" / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("OPD_REAL_DIR", str(world))
    assert weight_files("real:student") == [str(world / "student" / "model.safetensors")]

    def offline(*a, **k):
        raise OSError("We couldn't connect to the hub\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OpdError, match="cannot fetch the weights of org/none \\(We couldn't connect to the hub\\)"):
        weight_files("org/none")
    engine = SimpleNamespace(collective_rpc=lambda fn, args=(): [0], reset_prefix_cache=lambda: None)
    with pytest.raises(OpdError, match="no weights of .* reached the vLLM engine"):
        load_vllm_weights(engine, str(single))


@pytest.mark.parametrize("flag", ["--benchmark", "--dev-benchmark"])
def test_unknown_benchmark_is_one_line_before_the_config(flag, tmp_path: Path) -> None:
    r = runner.invoke(app, ["eval", flag, "nosuch-bench", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown benchmark 'nosuch-bench': use one of"), r.output
    assert not (tmp_path / "out").exists()


def test_summary_line_names_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    from opd_cli.core.config import build_config, summary_line
    from opd_cli.evaluate.config import EvalConfig

    cfg = build_config(EvalConfig, None, {"benchmark": ["toy"], "samples": 2, "temperature": 1.0})
    assert (
        summary_line(cfg, tmp_path / "config.yaml")
        == f"opd eval: benchmark=['toy'] samples=2  (full config: {tmp_path / 'config.yaml'})"
    )
    assert summary_line(build_config(EvalConfig, None, {})) == "opd eval: defaults"
