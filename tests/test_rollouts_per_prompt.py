"""`opd train --rollouts-per-prompt G`: each step draws --batch-size / G prompts and samples G rollouts of each, on
tiny random models (the HF backend; colocated vLLM in tests/test_vllm.py)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.config import build_config
from opd_cli.core.runs import list_checkpoints, read_metrics

TIMING = {"time_generate", "time_teacher", "time_update", "time_step", "wall_time"}


def _train(tiny_model_dirs, prompts_file, out, **over):
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    student, teacher = tiny_model_dirs
    base = dict(student=str(student), teacher=str(teacher), data=str(prompts_file), steps=3, batch_size=8,
                micro_batch_size=2, rollouts_per_prompt=4, max_new_tokens=16, prefix="10", kl_bin=4, save_every=1,
                output_dir=str(out), device="cpu", chunk=8)
    run_train(build_config(TrainConfig, None, {**base, **over}))
    return read_metrics(out)


@pytest.fixture(scope="module")
def grouped_run(tiny_model_dirs, prompts_file, tmp_path_factory):
    """3 steps of batch 8 with 4 rollouts per prompt, prefix L = 10 of 16, every rollout batch the trainer built recorded:
    (run folder, metrics, [per step: (prompt texts, prompt ids, completion ids)])."""
    import opd_cli.train.trainer as trainer_mod

    seen = []

    class Recording(trainer_mod.OpdTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            pm, cm = out["prompt_mask"].bool(), out["completion_mask"].bool()
            seen.append(([x["prompt"] for x in inputs], [p[m].tolist() for p, m in zip(out["prompt_ids"], pm, strict=True)],
                         [c[m].tolist() for c, m in zip(out["completion_ids"], cm, strict=True)]))
            return out

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_mod, "OpdTrainer", Recording)
    try:
        out = tmp_path_factory.mktemp("runs") / "g4"
        rows = _train(tiny_model_dirs, prompts_file, out)
    finally:
        mp.undo()
    return out, rows, seen


def test_each_step_samples_two_prompts_four_times(grouped_run):
    _, rows, seen = grouped_run
    assert len(seen) == 3 and [r["step"] for r in rows] == [1, 2, 3]  # one rollout batch per step
    assert all(r["prefix_len"] == 10 and 0 < r["rollout_len_max"] <= 10 for r in rows)  # each rollout cut at L
    every_prompt = []
    for texts, _, completions in seen:
        assert len(texts) == len(completions) == 8
        # 2 distinct prompts, each 4 times in a row
        assert texts[0:4] == [texts[0]] * 4 and texts[4:8] == [texts[4]] * 4 and texts[0] != texts[4]
        for g in (0, 4):  # the 4 rollouts of one prompt differ: each has its own sampling noise
            assert len({tuple(c) for c in completions[g : g + 4]}) == 4, completions[g : g + 4]
        every_prompt += [texts[0], texts[4]]
    assert len(set(every_prompt)) == 6  # 3 steps x 2 prompts, none drawn twice within the epoch of 32


def test_flops_and_token_counts_cover_every_rollout(grouped_run, tiny_model_dirs):
    from opd_cli.core.flops_formula import ModelShape, opd_flops

    _, rows, seen = grouped_run
    s, t = (ModelShape.from_source(str(d)) for d in tiny_model_dirs)
    for r, (_, prompts, completions) in zip(rows, seen, strict=True):
        lens = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
        assert len(lens) == 8
        assert r["seq_tokens"] == sum(lens) and r["seq_tokens_sq"] == sum(x * x for x in lens)
        assert r["tokens_generated"] == sum(len(c) for c in completions)
        assert r["flops_step"] == pytest.approx(opd_flops(s, t, sum(lens), sum(x * x for x in lens), 12.0), rel=1e-12)
        # the 2 prompts' first rollouts alone would be about a quarter of it
        first = [lens[0], lens[4]]
        assert r["flops_step"] > 3 * opd_flops(s, t, sum(first), sum(x * x for x in first), 12.0)


def test_grouped_rollouts_are_seeded_and_resume_exactly(grouped_run, tiny_model_dirs, prompts_file, tmp_path):
    out, rows, _ = grouped_run

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rs]

    killed = tmp_path / "killed"  # killed during step 3: its checkpoint, final/ and metrics line missing
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "checkpoints" / "step_000003")
    shutil.rmtree(killed / "final")
    (killed / "metrics.jsonl").write_text("".join((killed / "metrics.jsonl").read_text().splitlines(True)[:2]))
    resumed = _train(tiny_model_dirs, prompts_file, killed, if_exists="resume")
    assert strip(resumed) == strip(rows)
    assert [s for s, _ in list_checkpoints(killed)] == [1, 2, 3]


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "6", "--micro-batch-size", "2", "--rollouts-per-prompt", "4"],
     "--batch-size 6 (rollouts per step) must be a multiple of --rollouts-per-prompt 4"),
    (["--rollouts-per-prompt", "0"], "--rollouts-per-prompt must be at least 1, got 0"),
    (["--rollout", "pg-opd", "--candidates", "4", "--rollouts-per-prompt", "2", "--batch-size", "8", "--pg-prefix", "4",
      "--probe-window", "2"], "--rollout pg-opd samples --candidates 4 rollouts of each prompt: drop --rollouts-per-prompt 2"),
])
def test_bad_rollouts_per_prompt_is_one_line_exit_2(args, needle, tiny_model_dirs, prompts_file, tmp_path):
    student, teacher = tiny_model_dirs
    out = tmp_path / "bad"
    res = CliRunner().invoke(app, ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
                                   "--max-new-tokens", "16", "--device", "cpu", "-o", str(out), *args])
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before the run folder is made
