"""GPU tests (`make test-gpu`): the vLLM rollout path of `opd train`, and `opd eval` of a model and of a run's
checkpoints (one engine, each checkpoint's weights loaded into it). Skipped without a CUDA GPU (tests/conftest.py)
and without the vllm extra (importorskip)."""

from __future__ import annotations

import json

import pytest

from opd_cli.runs import read_metrics

pytestmark = pytest.mark.gpu


def _hf_token_logprobs(model_dir, rollout):
    """log p(completion token) under a plain HF forward (float32, CPU) of ``model_dir`` on a recorded micro-batch:
    prompts left-padded, positions counted from each row's first real token (as generation numbers them)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.cat([rollout["prompt_ids"], rollout["completion_ids"]], 1)
    attn = torch.cat([rollout["prompt_mask"], rollout["completion_mask"]], 1)
    pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
    T = rollout["completion_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -T - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, rollout["completion_ids"][..., None]).squeeze(-1)


def test_vllm_train_logprobs_and_kl_match_an_hf_forward(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """The vLLM path keeps vLLM's sampled-token log-probs as logp_old, and they are the log-probs of the weights that
    sampled: an HF forward of the initial student (step 1) or of checkpoint 1 (step 2, after the weight sync) on the
    same rollouts gives them back, so the importance ratio is ~1. The logged KL is the mean over trained tokens of
    log p_student - log p_teacher from plain HF forwards, and generation stopped at L = 12."""
    pytest.importorskip("vllm")
    import torch

    import opd_cli.trainer as trainer_mod
    from opd_cli.config import build_config
    from opd_cli.runs import list_checkpoints
    from opd_cli.train import TrainConfig, run_train

    seen: list[tuple[int, dict]] = []  # (optimizer step, 1-based; the micro-batch as compute_loss received it)
    real = trainer_mod.make_trainer_class

    def recording():
        class Recording(real()):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                rollout = {k: v.detach().cpu().clone() for k, v in inputs.items() if torch.is_tensor(v)}
                seen.append((int(self.state.global_step) + 1, rollout))
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        return Recording

    monkeypatch.setattr(trainer_mod, "make_trainer_class", recording)
    student, teacher = tiny_model_dirs
    # lr 1e-2: one step moves the student's log-probs by ~0.1 per token, so step 2 must come from the synced weights
    cfg = build_config(
        TrainConfig,
        None,
        dict(
            student=str(student),
            teacher=str(teacher),
            data=str(prompts_file),
            steps=2,
            batch_size=8,
            micro_batch_size=4,
            max_new_tokens=32,
            prefix="12",
            kl_bin=4,
            save_every=1,
            lr=1e-2,
            backend="vllm",
            vllm_mode="colocate",
            output_dir=str(tmp_path / "run"),
            dtype="float32",
        ),
    )
    run_train(cfg)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    assert [s for s, _ in seen] == [1, 1, 2, 2]  # 8 rollouts per step, 2 micro-batches of 4
    sampled_by = {1: student, 2: dict(list_checkpoints(tmp_path / "run"))[1]}
    for step, row in zip((1, 2), rows, strict=True):
        kl_sum, n_trained, lengths = 0.0, 0, []
        for rollout in (r for s, r in seen if s == step):
            assert "old_logp" in rollout  # vLLM's log-probs are kept, not replaced by the update's own
            valid = rollout["completion_mask"].bool()
            lengths += valid.sum(1).tolist()
            # every generated token lies within L = 12, so every one is trained
            assert torch.equal(rollout["train_mask"].bool() & valid, valid)
            logp = _hf_token_logprobs(sampled_by[step], rollout)
            torch.testing.assert_close(rollout["old_logp"][valid], logp[valid], rtol=0, atol=1e-2)
            logq = _hf_token_logprobs(teacher, rollout)
            kl_sum += float((logp - logq)[valid].sum())
            n_trained += int(valid.sum())
        assert max(lengths) == row["rollout_len_max"] == 12  # stopped at L (random models almost never end sooner)
        assert sum(lengths) == row["tokens_generated"] == row["tokens_trained"] == n_trained
        assert row["kl"] == pytest.approx(kl_sum / n_trained, abs=5e-3)


def test_vllm_eval_matches_its_sample_file(tiny_model_dirs, prompts_file, tmp_path):
    pytest.importorskip("vllm")
    from typer.testing import CliRunner

    from opd_cli.cli import app

    out = tmp_path / "eval"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_model_dirs[0]),
            "--data",
            str(prompts_file),
            "-n",
            "2",
            "--max-new-tokens",
            "16",
            "--backend",
            "vllm",
            "-o",
            str(out),
        ],
    )
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
    from opd_cli.evaluate import EvalConfig
    from opd_cli.evaluate_run import evaluate_run
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
    cfg = EvalConfig(
        backend="vllm", run=str(run), initial=True, samples=1, temperature=0.0, max_new_tokens=16, dtype="float32"
    )
    evaluate_run(run, None, {"prompts": load_file(prompts_file)}, "prompts", cfg)
    texts = {
        step: [
            json.loads(x)["text"]
            for x in (run / "eval" / f"step_{step:06d}" / "prompts.samples.jsonl").read_text().splitlines()
            if x
        ]
        for step in (0, 10, 20)
    }
    assert created == [str(student)]  # one engine for the three evaluations
    assert texts[10] != texts[0]  # step 10's weights were loaded
    assert texts[20] == texts[0]  # and the student's came back with step 20
