"""`opd kl-by-position`: position binning, batched scoring, logged-KL reading, a tiny end-to-end run, bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opd_cli.analyses.position_table import bin_positions, logged_rows, rows_from_bins
from opd_cli.cli import app
from opd_cli.core.errors import OpdError
from opd_cli.core.scoring import response_logprobs

PROBLEMS = [
    {"id": "p0", "question": "start 4; apply by tag, mod 10: b-2 a+7", "answer": "9"},
    {"id": "p1", "question": "start 1; apply by tag, mod 10: a*3 b+1", "answer": "4"},
    {"id": "p2", "question": "start 2; apply by tag, mod 10: a+1", "answer": "3"},
]


def _output(result) -> str:
    """stdout and stderr once each (click >= 8.2 already mixes stderr into ``output``)."""
    try:
        err = result.stderr or ""
    except ValueError:  # older click: stderr not captured separately
        err = ""
    return result.output if err in result.output else result.output + err


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("kl_data") / "problems.jsonl"
    f.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return f


# ------------------------------------------------------------------------------------------- pure functions
def test_bin_positions_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    means, counts = bin_positions(values, mask, 2)
    # bins [0,2) [2,4) [4,6): (1+2+10+20)/4, (3+4+30)/3, 5/1
    assert counts == [4, 3, 1]
    assert means == pytest.approx([33 / 4, 37 / 3, 5.0])
    assert sum(counts) == int(mask.sum())


def test_bin_positions_skips_masked_and_trailing_empty_bins():
    values = torch.tensor([[7.0, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[True, False, False, False]])
    means, counts = bin_positions(values, mask, 1)
    assert (means, counts) == ([7.0], [1])  # masked values never count, empty trailing bins are dropped
    means, counts = bin_positions(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, False, True]]), 1)
    assert counts == [1, 0, 1] and means[1] is None
    assert [r["bin_start"] for r in rows_from_bins("checkpoint", 0, 1, means, counts)] == [0, 2]  # empty bin: no row


def test_bin_positions_bin_wider_than_sequence():
    means, counts = bin_positions(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.bool), 256)
    assert counts == [12] and means == [1.0]


def test_logged_rows_reads_train_metrics_and_rejects_missing_steps(tmp_path):
    metrics = [
        {"step": 1, "kl": 0.5},
        {"step": 2, "kl_bin_size": 4, "kl_bin_mean": [0.3, None, 0.1], "kl_bin_count": [8, 0, 2]},
    ]
    rows = logged_rows(metrics, [2], tmp_path)
    assert rows == [
        {"source": "logged", "step": 2, "bin_start": 0, "bin_end": 4, "mean_kl": 0.3, "tokens": 8},
        {"source": "logged", "step": 2, "bin_start": 8, "bin_end": 12, "mean_kl": 0.1, "tokens": 2},
    ]
    with pytest.raises(OpdError, match="no step 7"):
        logged_rows(metrics, [7], tmp_path)
    with pytest.raises(OpdError, match="kl_bin"):
        logged_rows(metrics, [1], tmp_path)


def test_response_logprobs_batched_equals_one_at_a_time(tiny_model_dirs):
    from opd_cli.core.models import load_model

    model = load_model(str(tiny_model_dirs[0]), "float32", "cpu")
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15], [20, 21, 22, 23, 24, 25]]
    starts = [3, 2, 5]
    batched = response_logprobs(model, seqs, starts, pad_id=0, chunk=2)
    for s, st, got in zip(seqs, starts, batched, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s])).logits[0].float()
        want = torch.log_softmax(logits[st - 1 : -1], -1).gather(-1, torch.tensor(s[st:])[:, None]).squeeze(-1)
        assert got.shape == (len(s) - st,)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- end to end
def _read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_kl_by_position_model_smoke(tiny_model_dirs, data_file, tmp_path):
    student, teacher = map(str, tiny_model_dirs)
    out = tmp_path / "kl"
    args = ["kl-by-position", "--model", student, "--teacher", teacher, "--data", str(data_file), "-n", "2",
            "--max-new-tokens", "10", "--bin", "3", "--batch-size", "4", "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, _output(res)
    rows = _read_csv(out / "kl_by_position.csv")
    assert list(rows[0]) == ["source", "step", "bin_start", "bin_end", "mean_kl", "tokens"]
    assert json.loads((out / "kl_by_position.json").read_text()) == [
        {**r, "step": int(r["step"]), "bin_start": int(r["bin_start"]), "bin_end": int(r["bin_end"]),
         "mean_kl": pytest.approx(float(r["mean_kl"])), "tokens": int(r["tokens"])} for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    ck = summary["checkpoints"]["0"]
    assert ck["rollouts"] == 6
    # every rollout token lands in exactly one bin
    assert sum(int(r["tokens"]) for r in rows) == ck["tokens"] == round(ck["mean_length"] * ck["rollouts"])
    assert all(r["source"] == "checkpoint" and r["step"] == "0" for r in rows)
    assert [int(r["bin_start"]) for r in rows] == list(range(0, 3 * len(rows), 3))
    assert max(int(r["bin_end"]) for r in rows) <= 12  # 10 tokens at most -> bins up to [9, 12)
    mean = sum(float(r["mean_kl"]) * int(r["tokens"]) for r in rows) / ck["tokens"]
    assert mean == pytest.approx(ck["mean_kl"])

    # a teacher identical to the student: the estimate is exactly 0 at every position
    res = CliRunner().invoke(app, [*args[:4], student, *args[5:-1], str(tmp_path / "same")])
    assert res.exit_code == 0, _output(res)
    assert all(abs(float(r["mean_kl"])) < 1e-5 for r in _read_csv(tmp_path / "same" / "kl_by_position.csv"))


@pytest.fixture()
def train_run(tiny_model_dirs, tmp_path) -> Path:
    """A hand-made `opd train` run folder: config, two metrics lines with KL bins, one complete checkpoint."""
    student, teacher = map(str, tiny_model_dirs)
    run = tmp_path / "train-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"command: train\nstudent: {student}\nteacher: {teacher}\nkl_bin: 4\n")
    lines = [{"step": s, "kl": 0.1 * s, "kl_bin_size": 4, "kl_bin_mean": [0.2 * s, 0.1 * s], "kl_bin_count": [16, 9]}
             for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ck = run / "checkpoints" / "step_000002"
    shutil.copytree(student, ck)
    (ck / "COMPLETE").write_text("")
    return run


def test_kl_by_position_run_checkpoints_and_logged(train_run, data_file, tmp_path):
    out = tmp_path / "kl-run"
    res = CliRunner().invoke(app, ["kl-by-position", "--run", str(train_run), "--checkpoint-steps", "0,2",
                                   "--steps", "1,2", "--data", str(data_file), "--limit", "2",
                                   "--max-new-tokens", "8", "--bin", "4", "-o", str(out)])
    assert res.exit_code == 0, _output(res)
    rows = _read_csv(out / "kl_by_position.csv")
    logged = [r for r in rows if r["source"] == "logged"]
    assert [(r["step"], r["bin_start"], float(r["mean_kl"]), r["tokens"]) for r in logged] == [
        ("1", "0", pytest.approx(0.2), "16"), ("1", "4", pytest.approx(0.1), "9"),
        ("2", "0", pytest.approx(0.4), "16"), ("2", "4", pytest.approx(0.2), "9")]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["checkpoints"]) == ["0", "2"]
    assert summary["checkpoints"]["2"]["model"].endswith("step_000002")
    for step in ("0", "2"):
        ck = [r for r in rows if r["source"] == "checkpoint" and r["step"] == step]
        assert sum(int(r["tokens"]) for r in ck) == summary["checkpoints"][step]["tokens"] > 0
    # the same weights at step 0 and step 2, the same prompts and seed: the same curve
    a = [float(r["mean_kl"]) for r in rows if r["source"] == "checkpoint" and r["step"] == "0"]
    b = [float(r["mean_kl"]) for r in rows if r["source"] == "checkpoint" and r["step"] == "2"]
    assert a == pytest.approx(b) and all(math.isfinite(x) for x in a)

    # resume with fewer logged steps: the finished checkpoints are reused, not rolled out again
    res = CliRunner().invoke(app, ["kl-by-position", "--run", str(train_run), "--checkpoint-steps", "0,2",
                                   "--steps", "2", "--data", str(data_file), "--limit", "2",
                                   "--max-new-tokens", "8", "--bin", "4", "-o", str(out), "--if-exists", "resume"])
    assert res.exit_code == 0, _output(res)
    assert _output(res).count("reusing") == 2
    assert json.loads((out / "summary.json").read_text())["checkpoints"] == summary["checkpoints"]  # same timings too
    again = _read_csv(out / "kl_by_position.csv")
    assert [r for r in again if r["source"] == "checkpoint"] == [r for r in rows if r["source"] == "checkpoint"]
    assert {r["step"] for r in again if r["source"] == "logged"} == {"2"}


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checkpoint-steps", "1,x"], "integer"),
        (["--steps", "5"], "no step 5"),
        (["--checkpoint-steps", "7"], "no checkpoint for step 7"),
        (["--bin", "0"], "--bin"),
    ],
)
def test_kl_by_position_bad_input(train_run, tmp_path, extra, message):
    res = CliRunner().invoke(app, ["kl-by-position", "--run", str(train_run), *extra, "-o", str(tmp_path / "x")])
    assert res.exit_code == 2, _output(res)
    assert message in _output(res)
    assert not (tmp_path / "x" / "kl_by_position.csv").exists()


def test_kl_by_position_run_without_checkpoints(tmp_path):
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "config.yaml").write_text("command: train\n")
    res = CliRunner().invoke(app, ["kl-by-position", "--run", str(run), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no checkpoints found" in _output(res)
    res = CliRunner().invoke(app, ["kl-by-position", "--steps", "10", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "need --run" in _output(res)


# ------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("recipe", sorted((Path(__file__).parent.parent / "recipes").glob("kl-by-position-*.yaml")), ids=lambda p: p.name)
def test_kl_by_position_recipes_load(recipe):
    from opd_cli.analyses.kl_by_position import KlByPositionConfig
    from opd_cli.core.config import build_config

    assert recipe.read_text().startswith(f"# opd kl-by-position --recipe recipes/{recipe.name}")
    cfg = build_config(KlByPositionConfig, recipe)
    assert cfg.run and (cfg.steps or cfg.checkpoint_steps)


# ------------------------------------------------------------------------------------------- --metric and --grade
def test_auroc_by_hand_with_ties_and_empty_classes():
    from opd_cli.analyses.rollout_rewards import auroc

    # 5 of the 6 (correct, incorrect) pairs are ordered right: only 0.4 < 0.5
    assert auroc([0.9, 0.8, 0.4], [0.5, 0.1]) == pytest.approx(5 / 6)
    # ties count one half: (1 vs 1) 0.5 + (1 vs 0) 1, twice -> 3 / 4
    assert auroc([1.0, 1.0], [1.0, 0.0]) == pytest.approx(0.75)
    assert auroc([2.0, 2.0], [2.0]) == 0.5
    assert auroc([0.0], [1.0, 2.0]) == 0.0
    assert auroc([], [0.3]) is None and auroc([0.3], []) is None


def test_auroc_equals_pairwise_count_on_many_ties():
    import random

    from opd_cli.analyses.rollout_rewards import auroc

    rng = random.Random(0)
    pos = [rng.randint(0, 5) for _ in range(40)]
    neg = [rng.randint(0, 5) for _ in range(25)]
    pairs = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert auroc(pos, neg) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_grade_records_and_step_summary():
    from opd_cli.analyses.rollout_rewards import grade_records, step_summary
    from opd_cli.core.generation import Sample
    from opd_cli.data import Problem

    problems = [Problem("a", "q", "9"), Problem("b", "q", "4")]
    groups = [[Sample("so \\boxed{9}", [1, 2], 2, False), Sample("\\boxed{8}", [1], 1, False)],
              [Sample("no answer", [1, 2, 3], 3, True), Sample("</think> \\boxed{4}", [5], 1, False)]]
    recs = grade_records(3, problems, groups, [[0.2, -0.1], [None, 0.5]])
    assert [(r["problem_id"], r["sample"], r["correct"], r["extracted"], r["length"]) for r in recs] == [
        ("a", 0, True, "9", 2), ("a", 1, False, "8", 1), ("b", 0, False, None, 3), ("b", 1, True, "4", 1)]
    s = step_summary(3, recs)
    # the rollout without a reward counts as graded but is not scored: correct {0.2, 0.5} vs incorrect {-0.1}
    assert (s["rollouts"], s["correct"], s["incorrect"], s["accuracy"], s["auroc"]) == (4, 2, 2, 0.5, 1.0)
    assert s["mean_reward_correct"] == pytest.approx(0.35) and s["mean_reward_incorrect"] == pytest.approx(-0.1)


def test_response_profiles_match_full_softmax(tiny_model_dirs):
    from opd_cli.core.models import load_model
    from opd_cli.core.scoring import response_profiles

    student, teacher = (load_model(str(d), "float32", "cpu") for d in tiny_model_dirs)
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15], [20, 21, 22, 23, 24, 25]]
    starts = [3, 2, 5]
    got = response_profiles(student, teacher, seqs, starts, pad_id=0, overlap_k=16, rows=3)
    for s, st, prof in zip(seqs, starts, got, strict=True):
        with torch.no_grad():
            logp_s = torch.log_softmax(student(input_ids=torch.tensor([s])).logits[0, st - 1 : -1].float(), -1)
            logp_t = torch.log_softmax(teacher(input_ids=torch.tensor([s])).logits[0, st - 1 : -1].float(), -1)
        y = torch.tensor(s[st:])[:, None]
        top_s, top_t = logp_s.topk(16, -1).indices.tolist(), logp_t.topk(16, -1).indices.tolist()
        want = {
            "logp_student": logp_s.gather(-1, y).squeeze(-1),
            "logp_teacher": logp_t.gather(-1, y).squeeze(-1),
            "entropy_student": -(logp_s.exp() * logp_s).sum(-1),
            "entropy_teacher": -(logp_t.exp() * logp_t).sum(-1),
            "overlap_ratio": torch.tensor([len(set(a) & set(b)) / 16 for a, b in zip(top_s, top_t, strict=True)]),
        }
        assert set(prof) == set(want)
        for key, w in want.items():
            assert prof[key].shape == (len(s) - st,)
            torch.testing.assert_close(prof[key], w, atol=1e-4, rtol=1e-4)


def test_rollout_bins_profiles_equal_a_direct_computation(tiny_model_dirs):
    """Every binned profile (KL, both entropies, top-16 overlap) and each rollout's reward, recomputed from the sampled
    tokens with the models' full softmax and plain per-bin averages."""
    from opd_cli.analyses.kl_by_position import KlByPositionConfig, rollout_bins
    from opd_cli.core.models import load_model, load_tokenizer

    student, teacher = (load_model(str(d), "float32", "cpu") for d in tiny_model_dirs)
    tok = load_tokenizer(str(tiny_model_dirs[0]))
    cfg = KlByPositionConfig(metric=["kl", "entropy-student", "entropy-teacher", "overlap"], samples=2,
                             max_new_tokens=7, bin=3, batch_size=3, chunk=2)
    prompts = ["start 4; apply by tag, mod 10: b-2 a+7", "start 2; apply by tag, mod 10: a+1"]
    means, counts, stats, groups, rewards = rollout_bins(student, teacher, tok, prompts, cfg)
    per_bin: dict[str, dict[int, list[float]]] = {}
    for p, group, rews in zip(prompts, groups, rewards, strict=True):
        pid = tok(p, add_special_tokens=False)["input_ids"]
        for smp, r in zip(group, rews, strict=True):
            seq, st = pid + list(smp.token_ids), len(pid)
            with torch.no_grad():
                ls = torch.log_softmax(student(input_ids=torch.tensor([seq])).logits[0, st - 1 : -1].float(), -1)
                lt = torch.log_softmax(teacher(input_ids=torch.tensor([seq])).logits[0, st - 1 : -1].float(), -1)
            kl = [float(ls[t, y] - lt[t, y]) for t, y in enumerate(smp.token_ids)]
            assert r == pytest.approx(-sum(kl) / len(kl), abs=1e-5)
            for t in range(len(kl)):
                overlap = len(set(ls[t].topk(16).indices.tolist()) & set(lt[t].topk(16).indices.tolist())) / 16
                for col, v in (("mean_kl", kl[t]), ("mean_entropy_student", float(-(ls[t].exp() * ls[t]).sum())),
                               ("mean_entropy_teacher", float(-(lt[t].exp() * lt[t]).sum())), ("mean_overlap", overlap)):
                    per_bin.setdefault(col, {}).setdefault(t // 3, []).append(v)
    assert set(means) == set(per_bin)
    nbins = max(per_bin["mean_kl"]) + 1
    assert counts == [len(per_bin["mean_kl"][b]) for b in range(nbins)]
    assert stats["rollouts"] == 4 and stats["tokens"] == sum(counts)
    for col, bins in per_bin.items():
        assert means[col] == pytest.approx([sum(bins[b]) / len(bins[b]) for b in range(nbins)], abs=1e-4)
        flat = [v for b in range(nbins) for v in bins[b]]
        assert stats[col] == pytest.approx(sum(flat) / len(flat), abs=1e-4)


def test_kl_by_position_metrics_and_grade_smoke(train_run, data_file, tmp_path, monkeypatch):
    """Checkpoints 0 and 2 of a 2-step run, all metrics and --grade, against a default run of the same rollouts."""
    from opd_cli.analyses.position_table import COLUMNS
    from opd_cli.analyses.rollout_rewards import auroc

    calls: list[tuple[str, str]] = []

    def fake_grade(problem, text):  # alternate right/wrong, so both classes exist; "extract" the gold answer
        calls.append((problem.id, text))
        return len(calls) % 2 == 1, problem.answer

    monkeypatch.setattr("opd_cli.core.grading.grade", fake_grade)
    common = ["kl-by-position", "--run", str(train_run), "--checkpoint-steps", "0,2", "--steps", "1,2",
              "--data", str(data_file), "-n", "2", "--max-new-tokens", "8", "--bin", "4"]
    res = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "plain")])
    assert res.exit_code == 0, _output(res)
    assert not calls and not (tmp_path / "plain" / "rollout_rewards.jsonl").exists()
    out = tmp_path / "full"
    res = CliRunner().invoke(app, [*common, "--metric", "kl,entropy-student,entropy-teacher,overlap", "--grade",
                                   "-o", str(out)])
    assert res.exit_code == 0, _output(res)

    plain, rows = _read_csv(tmp_path / "plain" / "kl_by_position.csv"), _read_csv(out / "kl_by_position.csv")
    extra = ["mean_entropy_student", "mean_entropy_teacher", "mean_overlap"]
    assert list(rows[0]) == [*COLUMNS, *extra]
    assert [[r[c] for c in COLUMNS if c != "mean_kl"] for r in rows] == [[r[c] for c in COLUMNS if c != "mean_kl"] for r in plain]
    assert [float(r["mean_kl"]) for r in rows] == pytest.approx([float(r["mean_kl"]) for r in plain], abs=1e-5)
    logged = [r for r in rows if r["source"] == "logged"]
    assert len(logged) == 4 and all(r[c] == "" for r in logged for c in extra)
    ck = [r for r in rows if r["source"] == "checkpoint"]
    assert all(0 < float(r["mean_entropy_student"]) <= math.log(198) + 1e-6 for r in ck)
    assert all(0 <= float(r["mean_overlap"]) <= 1 for r in ck)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == ["kl", "entropy-student", "entropy-teacher", "overlap"]

    records = [json.loads(x) for x in (out / "rollout_rewards.jsonl").read_text().splitlines()]
    by_id = {p["id"]: p["answer"] for p in PROBLEMS}
    auroc_rows = {r["step"]: r for r in _read_csv(out / "reward_auroc.csv")}
    for step in (0, 2):
        entry, recs = summary["checkpoints"][str(step)], [r for r in records if r["step"] == step]
        assert len(recs) == entry["rollouts"] == 6  # 3 problems x 2 samples, each graded once
        assert sum(r["length"] for r in recs) == entry["tokens"]
        assert all(r["extracted"] == by_id[r["problem_id"]] for r in recs)
        # the rewards are the negated KL of the same tokens the table binned
        step_rows = [r for r in ck if int(r["step"]) == step]
        assert sum(r["seq_mean_reward"] * r["length"] for r in recs) == pytest.approx(
            -sum(float(r["mean_kl"]) * int(r["tokens"]) for r in step_rows), abs=1e-4)
        good = [r["seq_mean_reward"] for r in recs if r["correct"]]
        bad = [r["seq_mean_reward"] for r in recs if not r["correct"]]
        assert len(good) == len(bad) == 3
        assert entry["auroc"] == pytest.approx(auroc(good, bad))
        assert float(auroc_rows[str(step)]["auroc"]) == pytest.approx(entry["auroc"])
        assert entry["accuracy"] == 0.5 and auroc_rows[str(step)]["correct"] == "3"
        weighted = sum(float(r["mean_entropy_teacher"]) * int(r["tokens"]) for r in step_rows) / entry["tokens"]
        assert entry["mean_entropy_teacher"] == pytest.approx(weighted)
    assert len(calls) == len(records) == 12


def _error_line(res) -> str:
    assert res.exit_code == 2, _output(res)
    lines = [x for x in res.stderr.splitlines() if x.strip() and "Loading weights" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_kl_by_position_metric_and_grade_bad_input(train_run, tmp_path):
    line = _error_line(CliRunner().invoke(app, ["kl-by-position", "--metric", "kl,entropy", "-o", str(tmp_path / "x")]))
    assert "unknown --metric 'entropy'" in line and "kl, entropy-student, entropy-teacher, overlap" in line
    # --grade without answers fails before any model is loaded (these model folders do not exist)
    data = tmp_path / "no_answers.jsonl"
    data.write_text(json.dumps({"id": "q0", "question": "1+1?", "answer": "2"}) + "\n"
                    + json.dumps({"id": "q1", "question": "2+2?", "answer": ""}) + "\n")
    res = CliRunner().invoke(app, ["kl-by-position", "--model", str(tmp_path / "nowhere"), "--teacher",
                                   str(tmp_path / "nowhere"), "--data", str(data), "--grade", "-o", str(tmp_path / "y")])
    line = _error_line(res)
    assert "--grade needs each problem's answer" in line and "1 of 2" in line and "q1" in line
    line = _error_line(CliRunner().invoke(app, ["kl-by-position", "--run", str(train_run), "--steps", "1", "--grade",
                                                "-o", str(tmp_path / "z")]))
    assert "no checkpoint to roll out" in line
    assert not (tmp_path / "x").exists() and not (tmp_path / "z" / "kl_by_position.csv").exists()


def test_kl_by_position_logged_steps_only(train_run, tmp_path):
    res = CliRunner().invoke(app, ["kl-by-position", "--run", str(train_run), "--steps", "2", "-o", str(tmp_path / "x")])
    assert res.exit_code == 0, _output(res)
    rows = _read_csv(tmp_path / "x" / "kl_by_position.csv")
    assert [(r["source"], r["step"], float(r["mean_kl"])) for r in rows] == [
        ("logged", "2", pytest.approx(0.4)), ("logged", "2", pytest.approx(0.2))]
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["checkpoints"] == {}
