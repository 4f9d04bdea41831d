"""FLOPs (paper appendix B): the formula against numbers worked out by hand, run-folder totals, CLI errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.errors import OpdError
from opd_cli.core.flops_formula import ModelShape, flops, flops_from_sums, n_dense, opd_flops, sft_flops, shipped_names
from opd_cli.flops import FlopsConfig, run_flops, run_totals

FIX = Path(__file__).parent / "fixtures"
RUNS = FIX / "plot_runs"
TINY = FIX / "tiny_model"
CONFIGS = Path(__file__).parents[1] / "opd_cli" / "model_configs"


def _config_json(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text())


def _paper_flops(c: dict, sum_s: float, sum_s2: float, coef: float) -> float:
    """The prefix-OPD paper's FLOPs (appendix B) written out on a config.json mapping, independently of ModelShape and
    n_dense."""
    h, layers, n_q = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    n_kv, d = c.get("num_key_value_heads") or n_q, c.get("head_dim") or h // n_q
    n_dense = (
        layers * (3 * h * c["intermediate_size"] + h * (n_q * d + 2 * n_kv * d + n_q * d)) + 2 * c["vocab_size"] * h
    )
    return 6 * n_dense * sum_s + coef * sum_s2 * d * n_q * layers


def test_flops_needs_no_torch():
    """`opd flops` is arithmetic on config.json files: importing it and counting a model's FLOPs, in a fresh
    interpreter, loads neither torch nor transformers."""
    code = (
        "import sys\n"
        "import opd_cli.flops\n"
        "from opd_cli.core.flops_formula import ModelShape, flops\n"
        f"print(flops(ModelShape.from_source({str(TINY)!r}), [10, 20]), "
        "[m for m in ('torch', 'transformers', 'trl', 'vllm') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(15_575_040 + 768_000), "[]"]  # the FLOPs of test_tiny_config_by_hand


def test_tiny_config_by_hand():
    shape = ModelShape.from_source(str(TINY))
    # h=64, I=128, L=2, n_q=4, n_kv=2, d=16, V=100
    # per layer: 3*64*128 = 24576; 64*(4*16 + 2*2*16 + 4*16) = 12288 -> 2*(36864) + 2*100*64 = 86528
    assert n_dense(shape) == 86528
    # lengths 10 and 20: 6*86528*30 = 15_575_040; attention 12*(100+400)*16*4*2 = 768_000
    assert flops(shape, [10, 20]) == 15_575_040 + 768_000
    assert flops(shape, [10, 20], attn_coef=6) == 15_575_040 + 384_000
    assert flops_from_sums(shape, 30, 500, 12) == 15_575_040 + 768_000  # sum s = 10 + 20, sum s^2 = 100 + 400
    # also through the config.json path itself
    assert ModelShape.from_source(str(TINY / "config.json")) == shape


def test_qwen3_8b_by_hand():
    shape = ModelShape.from_source("qwen3-8b")
    assert (shape.hidden_size, shape.num_layers, shape.num_heads, shape.num_kv_heads, shape.head_dim) == (
        4096,
        36,
        32,
        8,
        128,
    )
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
    # student 1.7B: N = 28*(3*2048*6144 + 2048*(16*128 + 2*8*128 + 16*128)) + 2*151936*2048 = 2_031_616_000
    # x = 6*N*5000 + 12*9e6*128*16*28 = 60_948_480_000_000 + 6_193_152_000_000 = 67_141_632_000_000
    x = 67_141_632_000_000
    # teacher 8B: y = 6*8_190_427_136*5000 + 12*9e6*128*32*36 = 245_712_814_080_000 + 15_925_248_000_000
    y = 261_638_062_080_000
    # x/3 (generate) + x/3 (student log-probs) + y/3 (teacher log-probs) + x (update) = (5x + y)/3
    assert opd_flops(s, t, 5000, 9_000_000) == pytest.approx(199_115_407_360_000, rel=1e-12) == (5 * x + y) / 3
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
    # the sft fixture by hand, as in test_run_totals_against_hand_made_metrics
    sft = 6 * 86528 * 80 + 12 * 1800 * 16 * 4 * 2
    assert rows[1]["flops"] == sft
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == pytest.approx(sft / _hand_totals_opd_full(), rel=1e-12)
    assert rows[0]["hours"] == 1.0 and rows[0]["gpu_hours"] == 8.0
    written = list(csv.DictReader(out.open()))
    assert float(written[0]["flops"]) == pytest.approx(_hand_totals_opd_full())
    assert "OPD full" in capsys.readouterr().out


def test_model_and_paper_tables():
    rows = run_flops(FlopsConfig(model="qwen3-8b", lengths=[4096], attn_coef=6))
    assert rows[0]["flops"] == 216_131_344_269_312
    paper = run_flops(FlopsConfig(paper=True, lengths=[1000], steps=2, rollouts=3))
    # 2 x 3 = 6 rollouts of 1000 tokens: sum s = 6000, sum s^2 = 6e6; student 8B-Base and teacher 8B have one shape,
    # x = y = 6*8_190_427_136*6000 + 12*6e6*128*32*36 = 294_855_376_896_000 + 10_616_832_000_000
    x = 305_472_208_896_000
    assert paper[0]["x_student"] == paper[0]["y_teacher"] == pytest.approx(x / 6, rel=1e-12)  # one 1000-token rollout
    assert paper[0]["opd_total"] == pytest.approx(5 * x / 3 + x / 3, rel=1e-12)  # = 2x = 610_944_417_792_000


def test_run_without_metrics(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("command: train\nstudent: qwen3-8b\nteacher: qwen3-8b\n")
    with pytest.raises(OpdError, match="no metrics"):
        run_totals(tmp_path / "r")


runner = CliRunner()


def test_cli_lengths_and_errors():
    ok = runner.invoke(app, ["flops", "--model", "qwen3-8b", "--lengths", "1024,4096"])
    assert ok.exit_code == 0, ok.output
    # 1024: 6*8_190_427_136*1024 + 12*1024^2*128*32*36 = 52_177_410_195_456; 4096: 230_974_751_244_288 (above)
    lines = ok.output.splitlines()
    assert any("1024" in ln and "5.22e+13" in ln for ln in lines) and any(
        "4096" in ln and "2.31e+14" in ln for ln in lines
    )
    bad = runner.invoke(app, ["flops", "--model", "qwen3-8b", "--lengths", "1024,abc"])
    assert bad.exit_code == 2 and "lengths: expected an integer" in bad.output
    bad = runner.invoke(app, ["flops", "--model", str(FIX / "bad_model"), "--lengths", "1024"])
    assert bad.exit_code == 2 and "lacks" in bad.output
    bad = runner.invoke(app, ["flops", "--model", "qwen3-8b", "--attn-coef", "7"])
    assert bad.exit_code == 2 and "--attn-coef" in bad.output
    bad = runner.invoke(app, ["flops", str(FIX / "nowhere")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).parents[1] / "recipes").glob("flops-*.yaml")), ids=lambda p: p.name
)
def test_flops_recipes_load_and_run(recipe):
    from opd_cli.core.config import build_config

    assert recipe.read_text().startswith("# opd flops --recipe")
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    rows = run_flops(build_config(FlopsConfig, recipe))
    assert [r["mean_seq_len"] for r in rows] == raw["lengths"] and len(rows) == 5  # prefix 256-2048 and full
    student, teacher = (_config_json(CONFIGS / f"{raw[k]}.json") for k in ("model", "teacher"))
    n, c = raw["steps"] * raw["rollouts"], raw["attn_coef"]
    for r in rows:  # n rollouts of mean length s: sum s = n*s, sum s^2 taken as n*s^2
        s = r["mean_seq_len"]
        x, y = _paper_flops(student, n * s, n * s * s, c), _paper_flops(teacher, n * s, n * s * s, c)
        assert r["opd_total"] == pytest.approx(5 * x / 3 + y / 3, rel=1e-12), s


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
    x, y = (_paper_flops(_config_json(d / "config.json"), 30, 500, 12) for d in (student, teacher))
    assert run_totals(run).flops == pytest.approx(5 * x / 3 + y / 3, rel=1e-12)  # the toy student and teacher
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
