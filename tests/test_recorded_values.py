"""Recorded values (torchtune's habit): `compute_loss` on one fixed micro-batch of the tiny random models, for
each --loss kind, against numbers recorded from this code, so that a silent change of the loss or the logged KL
fails a test instead of only moving a curve."""

from __future__ import annotations

import pytest

from opd_cli.core.config import build_config

RECORDED = {
    "sampled": {"loss": -0.026403427124023438, "kl": -0.00792102813720703},
    "full": {"loss": 0.05113077163696289, "kl": -0.00792102813720703},
    "topk": {"loss": 0.08634061366319656, "kl": -0.00792102813720703},
}
TOL = 1e-4  # relative: float32 sums over a few dozen tokens

# the fixed micro-batch: 3 rollouts; prompts left-padded, completions right-padded (0 = padding in the masks). The
# completions are not the student's samples, so the sampled-token KL estimate (mean log p - log q) may be negative.
PROMPTS = [[5, 17, 23, 8], [11, 4], [30, 9, 14]]
COMPLETIONS = [[7, 12, 19, 3, 25, 6], [21, 2, 16], [13, 28, 10, 27, 5]]
TRAINED = [[0, 1, 1, 1, 1, 0], [1, 1, 1], [0, 0, 1, 1, 1]]  # a window on some positions of each rollout


def _fixed_inputs():
    import torch

    P = max(len(p) for p in PROMPTS)
    T = max(len(c) for c in COMPLETIONS)
    left = lambda rows, w: torch.tensor([[0] * (w - len(r)) + r for r in rows])  # noqa: E731
    right = lambda rows, w: torch.tensor([r + [0] * (w - len(r)) for r in rows])  # noqa: E731
    return {
        "prompt_ids": left(PROMPTS, P),
        "prompt_mask": left([[1] * len(p) for p in PROMPTS], P),
        "completion_ids": right(COMPLETIONS, T),
        "completion_mask": right([[1] * len(c) for c in COMPLETIONS], T),
        "train_mask": right(TRAINED, T).bool(),
        "num_items_in_batch": torch.tensor(float(len(PROMPTS))),
    }


def record_fixed_batch(monkeypatch, make_inputs) -> dict:
    """Make `opd train`'s trainer, before its first step, score the micro-batch ``make_inputs(tokenizer)``: fills the
    returned dict with the loss compute_loss gives, the KL the step would log (mean over trained tokens) and the
    trained-token count, and leaves the real step's metrics as they were (tests/test_real_model.py uses it too)."""
    import torch

    import opd_cli.train.trainer as trainer_mod

    seen: dict = {}

    class Recording(trainer_mod.OpdTrainer):
        def _prepare_inputs(self, generation_batch):
            inputs = super()._prepare_inputs(generation_batch)
            if not seen:
                before = {k: v.clone() for k, v in self.metrics.acc.items() if torch.is_tensor(v)}
                with torch.no_grad():
                    seen["loss"] = float(self.compute_loss(self.model_wrapped, make_inputs(self.processing_class)))
                sums = self.metrics.acc["sums"] - before["sums"]
                seen["kl"] = float(sums[0] / sums[1])
                seen["trained"] = int(sums[1])
                self.metrics.acc.update(before)  # the real step's metrics stay the real batch's
            return inputs

    monkeypatch.setattr(trainer_mod, "OpdTrainer", Recording)
    return seen


@pytest.mark.parametrize("loss", ["sampled", "full", "topk"])
def test_loss_and_logged_kl_match_the_recorded_values(tiny_model_dirs, prompts_file, tmp_path, monkeypatch, loss):
    """The trainer built by `opd train` (tiny random student seed 1, teacher seed 2, from conftest) scores the
    fixed micro-batch above: the loss compute_loss returns and the KL the step would log (mean over trained tokens)
    equal the recorded values to a relative 1e-4.

    How RECORDED was made: on 2026-12-03, on a CPU in float32 with the project's venv (torch, transformers, TRL
    1.16), by running this file with each entry of RECORDED set to None and copying the values the failing
    assertion printed. The KL is the same for every loss kind: it is the sampled-token estimate on the same tokens.
    When to update: only for a change meant to move the loss or the KL (another estimator or normalisation, other
    tiny models in conftest, a TRL kernel that computes differently), after tests/test_maths.py passes; record them
    again the same way and say in the commit message why they moved. A drift with no such change is a bug."""

    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    seen = record_fixed_batch(monkeypatch, lambda tok: _fixed_inputs())
    student, teacher = tiny_model_dirs
    cfg = dict(student=str(student), teacher=str(teacher), data=str(prompts_file), steps=1, batch_size=4,
               micro_batch_size=4, max_new_tokens=8, save_every=0, output_dir=str(tmp_path / "run"), device="cpu",
               chunk=4, loss=loss, topk=4, metrics_every=0)
    run_train(build_config(TrainConfig, None, cfg))

    assert seen["trained"] == sum(map(sum, TRAINED))
    want = RECORDED[loss]
    got = {k: seen[k] for k in want}
    assert all(v is not None for v in want.values()), f"record these for {loss!r}: {got!r}"
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=TOL), (loss, key, got[key], want[key])
