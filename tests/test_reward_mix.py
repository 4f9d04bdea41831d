"""`opd train --reward-weight w`: the grader's verdict mixed into the sampled loss's advantage, A_t = -k_t + w * r
(verl's use_task_rewards): the maths, the trainer against a hand computation on tiny models, the continuation of cut
rollouts for grading, the metrics, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core import maths
from opd_cli.core.config import build_config
from opd_cli.core.runs import read_metrics

TIMING = {"time_generate", "time_teacher", "time_update", "time_step", "wall_time"}


def _train(tiny_model_dirs, prompts_file, out, callbacks=None, **over):
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    student, teacher = tiny_model_dirs
    base = dict(student=str(student), teacher=str(teacher), data=str(prompts_file), steps=2, batch_size=4,
                micro_batch_size=2, max_new_tokens=16, kl_bin=4, save_every=0, output_dir=str(out), device="cpu", chunk=8)
    run_train(build_config(TrainConfig, None, {**base, **over}), callbacks=callbacks)
    return read_metrics(out)


def test_task_advantage_value_and_gradient_at_ratio_one():
    """loss = -(1/B) sum_t rho_t (-k_t + w r_b): at rho = 1 its value is (sum k - w sum_b r_b T_b) / B and its
    gradient -(1/B) sum_t (-k_t + w r_b) grad log p(x_t)."""
    g = torch.Generator().manual_seed(3)
    B, T, V, w = 3, 5, 11, 0.7
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    ids = torch.randint(V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    logp = maths.token_logprobs_BT(logits, ids)
    logq = maths.token_logprobs_BT(torch.randn(B, T, V, generator=g), ids)
    r = torch.tensor([1.0, 0.0, 1.0])
    task = maths.task_advantage_B(r, w)
    assert task.tolist() == pytest.approx([0.7, 0.0, 0.7])
    loss = maths.sampled_loss(logp, logp.detach(), logq, mask, B, task[:, None].expand(B, T))
    k = (logp - logq).detach()
    T_b = mask.sum(1).float()
    assert loss.item() == pytest.approx((((k * mask).sum() - w * (r * T_b).sum()) / B).item(), rel=1e-6)
    loss.backward()
    adv = -k + w * r[:, None]
    ref = -((adv * mask)[..., None] * (F.one_hot(ids, V).float() - torch.softmax(logits.detach(), -1))) / B
    torch.testing.assert_close(logits.grad, ref, rtol=1e-5, atol=1e-6)
    # w = 0 and no task term are the same loss, bit for bit
    zero = maths.sampled_loss(logp.detach(), logp.detach(), logq, mask, B, maths.task_advantage_B(r, 0.0)[:, None].expand(B, T))
    assert zero.item() == maths.sampled_loss(logp.detach(), logp.detach(), logq, mask, B).item()


def test_trainer_loss_and_gradient_equal_the_hand_computation(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """Full-length rollouts (nothing to continue) graded by a fake grader (right iff the decoded answer holds an even
    number of '+'): each row's reward is its own answer's verdict, and the trainer's loss and every gradient
    equal -(1/B) sum rho (-(logp - logq) + w r) on full logits of the initial models; reward_mean is logged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import opd_cli.core.grading as grading
    import opd_cli.train.trainer as trainer_mod

    monkeypatch.setattr(grading, "grade", lambda problem, text: (text.count("+") % 2 == 0, None))
    seen: dict = {}

    class Recording(trainer_mod.OpdTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            seen.setdefault("inputs", {k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            seen.setdefault("loss", float(loss.detach()))
            return loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            out = super().training_step(model, inputs, num_items_in_batch)
            seen.setdefault("grads", {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
            return out

        def _grade(self, out, problems):
            prompts = self.processing_class.batch_decode(out["prompt_ids"], skip_special_tokens=True)
            seen["graded_against"] = [p.question in text for p, text in zip(problems, prompts, strict=True)]
            return super()._grade(out, problems)

    monkeypatch.setattr(trainer_mod, "OpdTrainer", Recording)
    w = 0.5
    rows = _train(tiny_model_dirs, prompts_file, tmp_path / "run", steps=1, micro_batch_size=4, metrics_every=0, reward_weight=w)

    student_dir, teacher_dir = tiny_model_dirs
    x = seen["inputs"]
    cmask = x["completion_mask"].bool()
    tok = AutoTokenizer.from_pretrained(str(student_dir))
    texts = tok.batch_decode([c[m].tolist() for c, m in zip(x["completion_ids"], cmask, strict=True)], skip_special_tokens=True)
    r = torch.tensor([float(t.count("+") % 2 == 0) for t in texts])
    assert seen["graded_against"] == [True] * 4  # each rollout graded against its own prompt's problem
    assert x["reward"].tolist() == r.tolist()
    assert 0 < r.sum() < 4, texts  # both verdicts occur, so the test sees the reward move the loss
    assert rows[0]["reward_mean"] == pytest.approx(r.mean().item()) and rows[0]["tokens_graded"] == 0

    student = AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    ids = torch.cat([x["prompt_ids"], x["completion_ids"]], 1)
    attn = torch.cat([x["prompt_mask"], x["completion_mask"]], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    T = x["completion_ids"].shape[1]

    def logp(model):
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -T - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, x["completion_ids"][..., None]).squeeze(-1)

    with torch.no_grad():
        logq = logp(teacher)
    logp_s = logp(student)
    mask = (x["train_mask"].bool() & cmask).float()
    adv = -(logp_s.detach() - logq) + w * r[:, None]
    ref = -(torch.exp(logp_s - logp_s.detach()) * adv * mask).sum() / 4
    ref.backward()
    assert seen["loss"] == pytest.approx(float(ref.detach()), rel=1e-4, abs=1e-6)
    without = float(((logp_s.detach() - logq) * mask).sum() / 4)  # the loss w = 0 would give
    assert abs(seen["loss"] - without) > 1e-3  # the reward moved it: by -w sum_b r_b T_b / B
    assert seen["loss"] == pytest.approx(without - w * float((r * mask.sum(1)).sum()) / 4, rel=1e-4, abs=1e-6)
    for name, p in student.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(seen["grads"][name], p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_prefix_rollouts_are_continued_for_grading_only(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """Prefix 4 of 16, a grader that always says wrong: the training is the w = 0 run's, number for number (the
    continuations draw their own noise and train nothing); the grader sees answers longer than L, the continued
    tokens are logged and charged as generation FLOPs."""
    import opd_cli.core.grading as grading
    from opd_cli.core.flops_formula import ModelShape, n_dense

    lengths = []
    monkeypatch.setattr(grading, "grade", lambda problem, text: (lengths.append(len(text)) or False, None))
    common = dict(prefix="4", ignore_eos=True)  # every rollout is cut at L = 4: all are continued, to 16 tokens
    base = _train(tiny_model_dirs, prompts_file, tmp_path / "base", **common)
    mixed = _train(tiny_model_dirs, prompts_file, tmp_path / "mixed", reward_weight=2.0, **common)
    extra = {"reward_mean", "tokens_graded"}
    assert all(not (extra & set(r)) for r in base)
    for b, m in zip(base, mixed, strict=True):
        assert set(m) - set(b) == extra
        assert m["reward_mean"] == 0.0 and m["tokens_graded"] == 4 * (16 - 4)
        same = {k for k in b if k not in TIMING | {"flops_step", "flops_total"}}
        assert {k: m[k] for k in same} == {k: b[k] for k in same}
        # the continuations' generation: x/3 of 12 more tokens per rollout, dense part 2 N per token (+ attention)
        dense = 2 * n_dense(ModelShape.from_source(str(tiny_model_dirs[0]))) * m["tokens_graded"]
        assert m["flops_step"] - b["flops_step"] > dense
    assert len(lengths) == 2 * 4  # every rollout of both steps graded once


def _bad(args, tiny_model_dirs, data, tmp_path):
    student, teacher = tiny_model_dirs
    keep = tmp_path / "run"
    keep.mkdir()
    (keep / "keep.txt").write_text("mine")
    res = CliRunner().invoke(app, ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(data),
                                   "--max-new-tokens", "16", "--device", "cpu", "-o", str(keep), "--if-exists", "overwrite", *args])
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert res.exit_code == 2, res.output
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in keep.iterdir()) == ["keep.txt"]  # the run folder untouched
    return err


@pytest.mark.parametrize("args,needle", [
    (["--reward-weight", "-0.5"], "--reward-weight must be >= 0"),
    (["--reward-weight", "1", "--loss", "full"], "--loss full has no advantage to mix it into"),
    (["--reward-weight", "1", "--loss", "topk"], "--loss topk has no advantage to mix it into"),
    (["--reward-weight", "1", "--rollout", "pg-opd", "--pg-prefix", "4", "--probe-window", "2", "--batch-size", "8"],
     "use --rollout standard"),
])
def test_bad_reward_input_is_one_line_exit_2(args, needle, tiny_model_dirs, prompts_file, tmp_path):
    assert needle in _bad(args, tiny_model_dirs, prompts_file, tmp_path)


def test_prompts_without_gold_answers_are_refused(tiny_model_dirs, tmp_path):
    data = tmp_path / "no_answers.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "" if i % 2 else "3"}) + "\n" for i in range(6)))
    err = _bad(["--reward-weight", "1"], tiny_model_dirs, data, tmp_path)
    assert "3 of the 6 prompts" in err and "have none" in err
