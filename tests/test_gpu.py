"""GPU tests (`make test-gpu`): the vLLM rollout path of `opd train` and `opd eval`. Skipped without a CUDA GPU
(tests/conftest.py) and without the vllm extra (importorskip)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opd_cli.runs import read_metrics

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    from opd_cli.toy.task import generate_splits, write_jsonl

    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_jsonl(path, generate_splits(seed=0, sizes={"train": 16, "dev": 2, "test": 4, "ood": 2})["train"])
    return path


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
