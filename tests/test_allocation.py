"""PG-OPD rollout allocation and the adaptive prefix schedule: the pure rules on hand-made inputs, and 2-step
trainings on tiny models that check the trainer follows them."""

from __future__ import annotations

import shutil

import pytest
from test_cli import bad
from test_train import _train
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.maths import adaptive_grows, adaptive_prefix_lengths, adaptive_signal
from opd_cli.train.pg_opd import PG_KEYS, overlap_weights, select_candidates

TIMING = {"time_generate", "time_teacher", "time_update", "time_step", "wall_time"}


# ------------------------------------------------------------------------------------------ the selection rule
OVERLAP = [0.1, 0.9, 0.5, 0.2, 0.3, 0.3, 0.8, 0.1]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1]


def kept(keep: list[bool]) -> set[int]:
    return {i for i, k in enumerate(keep) if k}


def test_each_prompts_best_plus_the_best_overall() -> None:
    # top ceil(0.25 * 8) = 2 overall: 1 (0.9), 6 (0.8), which are also each prompt's best
    assert kept(select_candidates(OVERLAP, GROUPS, 1, 0.25)) == {1, 6}
    # top 4 overall: 1, 6, 2 (0.5), then 4 and 5 tie at 0.3 and the earlier one wins
    assert kept(select_candidates(OVERLAP, GROUPS, 1, 0.5)) == {1, 6, 2, 4}
    # two per prompt (0: 1, 2; 1: 6, then 4 before 5) and the top ceil(0.125 * 8) = 1 overall (1, already in)
    assert kept(select_candidates(OVERLAP, GROUPS, 2, 0.125)) == {1, 2, 4, 6}
    # the global share can take a prompt's second candidate over another prompt's best
    assert kept(select_candidates([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1], 0, 0.5)) == {0, 1}
    assert kept(select_candidates([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1], 1, 0.25)) == {0, 3}
    assert kept(select_candidates(OVERLAP, GROUPS, 0, 1.0)) == set(range(8))
    with pytest.raises(ValueError):
        select_candidates([0.1], [0, 1], 1, 0.5)


def test_overlap_weights_have_mean_one() -> None:
    assert overlap_weights([0.2, 0.6]) == pytest.approx([0.5, 1.5])
    assert overlap_weights([0.0, 0.0]) == [1.0, 1.0]


# ------------------------------------------------------------------------------------------ the schedule rule
def test_adaptive_rule_on_hand_made_traces() -> None:
    assert not adaptive_grows([], 0.5, 3)
    assert not adaptive_grows([2.0, 1.5], 0.5, 3)
    assert adaptive_grows([2.0, 1.5, 0.9], 0.5, 3)  # 0.9 <= 0.5 * 2.0
    # stopped falling: the last 3 (1.3, 1.25, 1.4) never go below the earlier minimum 1.2
    assert adaptive_grows([2.0, 1.2, 1.3, 1.25, 1.4], 0.5, 3)
    assert not adaptive_grows([2.0, 1.2, 1.3, 1.1, 1.4], 0.5, 3)  # 1.1 is a new minimum
    assert not adaptive_grows([2.0, 1.2, 1.3, 1.25, 1.4], 0.5, 0)  # patience 0: that test is off
    assert adaptive_grows([0.02, 0.015], 0.5, 0, floor=0.02)  # below the floor: nothing left to learn
    assert not adaptive_grows([0.02, 0.015], 0.5, 0, floor=0.01)


def test_adaptive_lengths_restart_the_trace_at_each_growth() -> None:
    # start 4, delta 4, cap 10: grows after step 1 (1.0 <= 0.5 * 2.0); at L = 8 the trace restarts at 3.0 and
    # grows after 1.4; then L = 10 is the cap and stays; a None (no tokens) changes nothing
    signal = [2.0, 1.0, 3.0, None, 2.0, 1.4, 0.1]
    assert adaptive_prefix_lengths(signal, 4, 4, 10, 0.5, 0) == [4, 4, 8, 8, 8, 8, 10, 10]
    assert adaptive_prefix_lengths([], 4, 4, 10, 0.5, 0) == [4]


def test_adaptive_signal_reads_a_metrics_record() -> None:
    rec = {"kl": 0.7, "prefix_len": 9, "kl_bin_size": 4, "kl_bin_mean": [3.0, 2.0, 1.5]}
    assert adaptive_signal(rec, "prefix") == 0.7
    assert adaptive_signal(rec, "last-bin") == 1.5  # position 8 is in bin 2
    assert adaptive_signal({**rec, "prefix_len": 13}, "last-bin") is None  # bin 3 was never logged


# ------------------------------------------------------------------------------------------ in the trainer
def test_pg_opd_trains_two_steps_with_its_metrics_and_flops(tiny_model_dirs, prompts_file, tmp_path) -> None:
    from opd_cli.core.flops_formula import ModelShape, opd_flops, probe_flops

    rows = _train(tiny_model_dirs, prompts_file, tmp_path / "pg", steps=2, batch_size=8, micro_batch_size=4, max_new_tokens=16,
                  rollout="pg-opd", candidates=4, pg_prefix=6, probe_window=3, probe_topk=4, keep_per_prompt=1, keep_global=0.25)
    s, t = (ModelShape.from_source(str(d)) for d in tiny_model_dirs)
    for r in rows:
        assert set(PG_KEYS) <= set(r)
        assert r["pg_candidates"] == 8 and r["pg_continued"] + r["pg_stopped"] == 8
        # each of the 2 prompts' best, plus the top 2 overall: 2 to 4 candidates continue
        assert 2 <= r["pg_continued"] <= 4
        assert r["tokens_stage1"] <= 8 * 6 and r["tokens_stage2"] <= r["pg_continued"] * (16 - 6)
        assert r["tokens_generated"] == r["tokens_stage1"] + r["tokens_stage2"]
        assert r["rollout_len_max"] <= 16
        assert r["flops_step"] == pytest.approx(opd_flops(s, t, r["seq_tokens"], r["seq_tokens_sq"], 12)
                                                + probe_flops(s, t, r["tokens_probe"], r["tokens_probe_sq"], 12))
        assert r["tokens_probe"] > 0 and r["pg_overlap_kept"] is not None


def test_pg_opd_continue_all_generates_more_than_stop(tiny_model_dirs, prompts_file, tmp_path) -> None:
    # k = 16: with k = 4 these random tied-embedding models share exactly one top token everywhere, so every
    # overlap is 0.25 and every weight 1
    common = dict(steps=1, batch_size=8, micro_batch_size=8, max_new_tokens=16, rollout="pg-opd", candidates=4,
                  pg_prefix=6, probe_window=6, probe_topk=16, ignore_eos=True)
    stop = _train(tiny_model_dirs, prompts_file, tmp_path / "stop", **common)[-1]
    everyone = _train(tiny_model_dirs, prompts_file, tmp_path / "all", pg_select="all", **common)[-1]
    weight = _train(tiny_model_dirs, prompts_file, tmp_path / "weight", pg_select="weight", **common)[-1]
    # with EOS ignored every rollout has exactly its budget: 6 tokens stopped, 16 continued
    assert everyone["tokens_generated"] == 8 * 16 and everyone["pg_stopped"] == 0
    assert stop["tokens_generated"] == stop["pg_continued"] * 16 + stop["pg_stopped"] * 6
    # same rollouts (same seeds, all continued) for all and weight; only the loss differs
    assert weight["tokens_generated"] == everyone["tokens_generated"] and weight["kl"] == pytest.approx(everyone["kl"])
    assert weight["loss"] != pytest.approx(everyone["loss"])


def test_adaptive_schedule_follows_its_rule_and_resumes(tiny_model_dirs, prompts_file, tmp_path) -> None:
    over = dict(steps=4, save_every=2, schedule="adaptive", prefix_start=2, prefix_delta=4, max_new_tokens=16,
                adaptive_ratio=0.9, adaptive_patience=1)
    out = tmp_path / "adaptive"
    rows = _train(tiny_model_dirs, prompts_file, out, **over)
    lengths = adaptive_prefix_lengths([adaptive_signal(r, "prefix") for r in rows], 2, 4, 16, 0.9, 1, 0.01)
    assert [r["prefix_len"] for r in rows] == lengths[:4]
    assert all(r["rollout_len_max"] <= r["prefix_len"] for r in rows)
    # killed after step 2's checkpoint: the resumed run replays L from metrics.jsonl and logs the same steps
    shutil.rmtree(out / "checkpoints" / "step_000004")
    shutil.rmtree(out / "final")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    resumed = _train(tiny_model_dirs, prompts_file, out, if_exists="resume", **over)
    assert strip(resumed) == strip(rows)


def test_bad_allocation_and_schedule_options_are_one_line(tiny_model_dirs, prompts_file) -> None:
    student, teacher = tiny_model_dirs
    base = ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file), "--rollout", "pg-opd"]
    bad(base + ["--candidates", "0"], "--candidates must be at least 1")
    bad(base + ["--pg-prefix", "64", "--probe-window", "100"], "--probe-window 100 must be in [1, --pg-prefix 64]")
    bad(base + ["--keep-global", "0"], "--keep-global must be in (0, 1]")
    bad(base + ["--keep-global", "1.5"], "--keep-global must be in (0, 1]")
    bad(base + ["--batch-size", "6", "--micro-batch-size", "2"], "must be a multiple of --candidates 4")
    bad(base + ["--prefix", "8"], "use it with --prefix full")
    bad(base + ["--pg-select", "weight", "--loss", "full"], "--pg-select weight needs --loss sampled or topk")
    bad(["train", "--schedule", "adaptive", "--adaptive-ratio", "1.5"], "--adaptive-ratio must be in (0, 1)")
    bad(["train", "--schedule", "adaptive", "--adaptive-signal", "nope"], "unknown --adaptive-signal 'nope'")
    assert CliRunner().invoke(app, ["train", "--help"]).output.count("--keep-per-prompt") == 1
