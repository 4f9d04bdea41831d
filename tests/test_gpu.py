"""GPU tests (`make test-gpu`): the vLLM rollout path of `opd train`, and `opd eval` of a model and of a run's
checkpoints (one engine, each checkpoint's weights loaded into it). Skipped without a CUDA GPU (tests/conftest.py)
and without the vllm extra (importorskip)."""

from __future__ import annotations

import json

import pytest

from opd_cli.runs import read_metrics

pytestmark = pytest.mark.gpu


def test_vllm_train_keeps_rollout_logprobs_and_stops_at_L(tiny_model_dirs, prompts_file, tmp_path):
    pytest.importorskip("vllm")
    from opd_cli.config import build_config
    from opd_cli.train import TrainConfig, run_train

    student, teacher = tiny_model_dirs
    cfg = build_config(TrainConfig, None, dict(
        student=str(student), teacher=str(teacher), data=str(prompts_file), steps=2, batch_size=8,
        micro_batch_size=4, max_new_tokens=32, prefix="12", kl_bin=4, save_every=0, backend="vllm",
        vllm_mode="colocate", output_dir=str(tmp_path / "run"), dtype="float32"))
    run_train(cfg)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rollout_len_max"] <= 12 for r in rows)  # generation stopped at L
    assert all(r["kl"] is not None and abs(r["kl"]) < 50 for r in rows)  # vLLM log-probs line up with the teacher's


def test_vllm_eval_matches_its_sample_file(tiny_model_dirs, prompts_file, tmp_path):
    pytest.importorskip("vllm")
    from typer.testing import CliRunner

    from opd_cli.cli import app

    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dirs[0]), "--data", str(prompts_file), "-n", "2",
                                 "--max-new-tokens", "16", "--backend", "vllm", "-o", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "eval" / "prompts.json").read_text())
    samples = [json.loads(x) for x in (out / "eval" / "prompts.samples.jsonl").read_text().splitlines() if x]
    assert len(samples) == 16 * 2
    assert summary["mean_acc"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples))


def test_vllm_run_eval_loads_each_checkpoint_into_one_engine(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """`opd eval --run --backend vllm` creates one engine and loads each checkpoint's weights into it: greedy
    samples change with other weights and come back with the initial student's own (step 20 is a copy of it)."""
    vllm = pytest.importorskip("vllm")
    import shutil

    import yaml

    from opd_cli.data import load_file
    from opd_cli.evaluate import EvalConfig, evaluate_run
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    student = tiny_model_dirs[0]
    run = tmp_path / "run"
    save_random_model(run / "checkpoints" / "step_000010", build_tokenizer(), layers=1, hidden=32, heads=2, seed=7)
    shutil.copytree(student, run / "checkpoints" / "step_000020")
    for step in (10, 20):
        (run / "checkpoints" / f"step_{step:06d}" / "COMPLETE").write_text("")
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": str(student)}))
    created = []

    class CountingLLM(vllm.LLM):
        def __init__(self, *args, **kwargs):
            created.append(kwargs.get("model"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vllm, "LLM", CountingLLM)
    monkeypatch.setenv("OPD_EVAL_CACHE", "off")
    cfg = EvalConfig(backend="vllm", run=str(run), initial=True, samples=1, temperature=0.0, max_new_tokens=16, dtype="float32")
    evaluate_run(run, None, {"prompts": load_file(prompts_file)}, "prompts", cfg)
    texts = {step: [json.loads(x)["text"] for x in (run / "eval" / f"step_{step:06d}" / "prompts.samples.jsonl").read_text().splitlines() if x]
             for step in (0, 10, 20)}
    assert created == [str(student)]  # one engine for the three evaluations
    assert texts[10] != texts[0]  # step 10's weights were loaded
    assert texts[20] == texts[0]  # and the student's came back with step 20
