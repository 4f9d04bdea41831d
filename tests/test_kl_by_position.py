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

from opd_cli.analyses.kl_by_position import bin_positions, logged_rows, rows_from_bins
from opd_cli.cli import app
from opd_cli.errors import OpdError
from opd_cli.scoring import response_logprobs

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
    from opd_cli.models import load_model

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
    from opd_cli.config import build_config

    assert recipe.read_text().startswith(f"# opd kl-by-position --recipe recipes/{recipe.name}")
    cfg = build_config(KlByPositionConfig, recipe)
    assert cfg.run and (cfg.steps or cfg.checkpoint_steps)
