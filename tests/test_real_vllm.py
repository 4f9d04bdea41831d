"""vLLM's CPU build on the real SmolLM2 models (`make test-real`; CI runs it): colocated rollouts of prefix OPD on
real:student, their log-probs against an HF forward of the weights that sampled them."""

from __future__ import annotations

import pytest
from test_real_model import world  # noqa: F401  (the built real-model world)
from test_vllm import MEM, _engine_gone, check_rollouts_came_from_synced_weights, recorded  # noqa: F401

pytestmark = [pytest.mark.real, pytest.mark.vllm]


def test_vllm_rollouts_of_the_real_student_equal_an_hf_forward(world, tmp_path, monkeypatch, recorded):  # noqa: F811
    """Three colocated vLLM steps of prefix OPD on the real models: each step's rollout log-probs equal an HF
    forward of the weights that sampled them (the initial student, then each synced checkpoint), and each loss
    equals the HF path's on the same tokens (tests/test_vllm.py's check)."""
    from opd_cli.core.config import build_config
    from opd_cli.core.runs import read_metrics
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    monkeypatch.setenv("OPD_REAL_DIR", str(world.root))
    out = tmp_path / "run"
    run_train(build_config(TrainConfig, "recipes/train-real-prefix.yaml", dict(
        steps=3, batch_size=4, micro_batch_size=4, prefix="6", max_new_tokens=8, save_every=1, lr=1e-4,
        output_dir=str(out), dtype="float32", backend="vllm", vllm_mode="colocate", vllm_memory=MEM)))
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    check_rollouts_came_from_synced_weights(recorded, out, world.root / "student", world.root / "teacher")
