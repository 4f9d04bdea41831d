"""FLOPs (paper appendix B): the formula against numbers worked out by hand, run-folder totals, CLI errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.errors import OpdError
from opd_cli.flops import (
    FlopsConfig,
    ModelShape,
    flops,
    flops_from_sums,
    n_dense,
    opd_flops,
    run_flops,
    run_totals,
    sft_flops,
    shipped_names,
)

FIX = Path(__file__).parent / "fixtures"
RUNS = FIX / "plot_runs"
TINY = FIX / "tiny_model"


def test_module_imports_no_torch():
    src = (Path(__file__).parents[1] / "opd_cli" / "flops.py").read_text()
    assert "import torch" not in src


def test_tiny_config_by_hand():
    shape = ModelShape.from_source(str(TINY))
    # h=64, I=128, L=2, n_q=4, n_kv=2, d=16, V=100
    # per layer: 3*64*128 = 24576; 64*(4*16 + 2*2*16 + 4*16) = 12288 -> 2*(36864) + 2*100*64 = 86528
    assert n_dense(shape) == 86528
    # lengths 10 and 20: 6*86528*30 = 15_575_040; attention 12*(100+400)*16*4*2 = 768_000
    assert flops(shape, [10, 20]) == 15_575_040 + 768_000
    assert flops(shape, [10, 20], attn_coef=6) == 15_575_040 + 384_000
    assert flops_from_sums(shape, 30, 500, 12) == flops(shape, [10, 20])
    # also through the config.json path itself
    assert ModelShape.from_source(str(TINY / "config.json")) == shape


def test_qwen3_8b_by_hand():
    shape = ModelShape.from_source("qwen3-8b")
    assert (shape.hidden_size, shape.num_layers, shape.num_heads, shape.num_kv_heads, shape.head_dim) == (4096, 36, 32, 8, 128)
    # 36*(3*4096*12288 + 4096*(32*128 + 2*8*128 + 32*128)) + 2*151936*4096
    assert n_dense(shape) == 36 * (150_994_944 + 41_943_040) + 1_244_659_712 == 8_190_427_136
    dense = 201_287_937_294_336  # 6 * N * 4096
    attn12 = 29_686_813_949_952  # 12 * 4096^2 * 128 * 32 * 36
    assert flops(shape, [4096]) == dense + attn12 == 230_974_751_244_288
    assert flops(shape, [4096], attn_coef=6) == dense + attn12 // 2 == 216_131_344_269_312


def test_tied_embeddings_still_count_twice():
    tied = ModelShape.from_source("qwen3-1.7b")
    assert n_dense(tied) == 28 * (3 * 2048 * 6144 + 2048 * (16 * 128 + 2 * 8 * 128 + 16 * 128)) + 2 * 151936 * 2048


def test_shipped_and_hub_names():
    assert {"qwen3-1.7b", "qwen3-1.7b-base", "qwen3-8b", "qwen3-8b-base"} <= set(shipped_names())
    assert ModelShape.from_source("Qwen/Qwen3-8B-Base") == ModelShape.from_source("qwen3-8b-base")  # offline


def test_opd_and_sft_accounting():
    s, t = ModelShape.from_source("qwen3-1.7b-base"), ModelShape.from_source("qwen3-8b")
    x, y = flops_from_sums(s, 5000, 9_000_000), flops_from_sums(t, 5000, 9_000_000)
    assert opd_flops(s, t, 5000, 9_000_000) == pytest.approx(x / 3 + x / 3 + y / 3 + x)
    assert sft_flops(s, 5000, 9_000_000) == x


def test_missing_fields_named():
    with pytest.raises(OpdError, match="intermediate_size, num_attention_heads, vocab_size"):
        ModelShape.from_source(str(FIX / "bad_model"))


def test_unknown_config():
    with pytest.raises(OpdError, match="unknown model config"):
        ModelShape.from_source("qwen3-9b")


def _hand_totals_opd_full():
    # metrics: seq_tokens = 1000*s, seq_tokens_sq = 300000*s for s = 1..4
    sum_s, sum_s2 = 1000 * 10, 300_000 * 10
    ns = 28 * (3 * 2048 * 6144 + 2048 * (16 * 128 + 2 * 8 * 128 + 16 * 128)) + 2 * 151936 * 2048
    nt = 8_190_427_136
    x = 6 * ns * sum_s + 12 * sum_s2 * 128 * 16 * 28
    y = 6 * nt * sum_s + 12 * sum_s2 * 128 * 32 * 36
    return x * 5 / 3 + y / 3


def test_run_totals_against_hand_made_metrics():
    t = run_totals(RUNS / "opd_full")
    assert t.run == "OPD full" and t.steps == 4 and t.seq_tokens == 10_000 and t.seq_tokens_sq == 3_000_000
    assert t.flops == pytest.approx(_hand_totals_opd_full(), rel=1e-12)
    assert t.wall_time == 3600.0
    sft = run_totals(RUNS / "sft")  # a local model folder written relative to the run folder; x per sample
    assert sft.flops == 6 * 86528 * 80 + 12 * 1800 * 16 * 4 * 2


def test_run_flops_table_and_csv(tmp_path, capsys):
    out = tmp_path / "flops.csv"
    rows = run_flops(FlopsConfig(runs=[str(RUNS / "opd_full"), str(RUNS / "sft")], gpus=8, output=str(out)))
    assert [r["run"] for r in rows] == ["OPD full", "SFT"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == pytest.approx(rows[1]["flops"] / rows[0]["flops"])
    assert rows[0]["hours"] == 1.0 and rows[0]["gpu_hours"] == 8.0
    written = list(csv.DictReader(out.open()))
    assert float(written[0]["flops"]) == pytest.approx(_hand_totals_opd_full())
    assert "OPD full" in capsys.readouterr().out


def test_model_and_paper_tables():
    rows = run_flops(FlopsConfig(model="qwen3-8b", lengths=[4096], attn_coef=6))
    assert rows[0]["flops"] == 216_131_344_269_312
    paper = run_flops(FlopsConfig(paper=True, lengths=[1000], steps=2, rollouts=3))
    s, t = ModelShape.from_source("qwen3-8b-base"), ModelShape.from_source("qwen3-8b")
    assert paper[0]["opd_total"] == pytest.approx(6 * (flops(s, [1000]) * 5 / 3 + flops(t, [1000]) / 3))


def test_run_without_metrics(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("command: train\nstudent: qwen3-8b\nteacher: qwen3-8b\n")
    with pytest.raises(OpdError, match="no metrics"):
        run_totals(tmp_path / "r")


runner = CliRunner()


def test_cli_lengths_and_errors():
    ok = runner.invoke(app, ["flops", "--model", "qwen3-8b", "--lengths", "1024,4096"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["flops", "--model", "qwen3-8b", "--lengths", "1024,abc"])
    assert bad.exit_code == 2 and "lengths: expected an integer" in bad.output
    bad = runner.invoke(app, ["flops", "--model", str(FIX / "bad_model"), "--lengths", "1024"])
    assert bad.exit_code == 2 and "lacks" in bad.output
    bad = runner.invoke(app, ["flops", "--model", "qwen3-8b", "--attn-coef", "7"])
    assert bad.exit_code == 2 and "--attn-coef" in bad.output
    bad = runner.invoke(app, ["flops", str(FIX / "nowhere")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("flops-*.yaml")), ids=lambda p: p.name)
def test_flops_recipes_load_and_run(recipe):
    from opd_cli.config import build_config

    assert recipe.read_text().startswith("# opd flops --recipe")
    rows = run_flops(build_config(FlopsConfig, recipe))
    assert len(rows) == 4 and all(r["opd_total"] > 0 for r in rows)


def test_toy_world_run_uses_the_toy_models(tmp_path, monkeypatch, tiny_model_dirs):
    """A run trained with no model arguments (student: null) is costed with the toy world's models."""
    import json
    import shutil

    import yaml

    student, teacher = tiny_model_dirs
    root = tmp_path / "toy"
    shutil.copytree(student, root / "student")
    shutil.copytree(teacher, root / "teacher")
    monkeypatch.setenv("OPD_TOY_DIR", str(root))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": None, "teacher": None}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "seq_tokens": 30, "seq_tokens_sq": 500}) + "\n")
    s, t = ModelShape.from_source(str(student)), ModelShape.from_source(str(teacher))
    assert run_totals(run).flops == pytest.approx(opd_flops(s, t, 30, 500, 12))
    monkeypatch.setenv("OPD_TOY_DIR", str(tmp_path / "not-built"))
    with pytest.raises(OpdError, match="names no student"):
        run_totals(run)


def test_opd_messages_go_through_the_opd_cli_logger(tmp_path, capsys):
    import logging

    out = tmp_path / "flops.csv"
    run_flops(FlopsConfig(runs=[str(RUNS / "sft")], output=str(out)))
    assert f"wrote {out}" in capsys.readouterr().out
    log = logging.getLogger("opd_cli")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        run_flops(FlopsConfig(runs=[str(RUNS / "sft")], output=str(out)))
    finally:
        log.setLevel(level)
    printed = capsys.readouterr().out
    assert "wrote" not in printed and "SFT" in printed  # the table itself is output, not a log message
