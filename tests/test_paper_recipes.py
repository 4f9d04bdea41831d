"""The paper-scale recipes and make targets, without a GPU: every folder a `make paper-*` target reads is one it
writes; the recipes' FLOPs are the numbers docs/real-scale.md states beside the paper's; the Rethinking-OPD recipes
carry that paper's Table 2 settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from make_dryrun import command, flag, opd_lines, read_folders, unwritten_reads, written_folder

from opd_cli.core.config import build_config

ROOT = Path(__file__).resolve().parents[1]
R = ROOT / "recipes"
PAPER_TARGETS = ["paper-1.7b", "paper-8b", "paper-beyond", "paper-rethink"]


# ------------------------------------------------------------------------------------------- make targets
@pytest.mark.parametrize("target", PAPER_TARGETS)
def test_paper_targets_read_only_folders_they_write(target: str) -> None:
    """Each `opd train` / `opd sft-baseline` is followed by the `opd eval --run` of the folder it writes, and every
    folder an eval, plot, KL-by-position or window ablation reads is one an earlier command writes."""
    lines = opd_lines(target)
    assert lines, f"make -n {target} printed no opd command"
    for i, line in enumerate(lines):
        # the cold start's SFT is only the starting point of an OPD run: it is not evaluated
        if command(line) in ("train", "sft-baseline") and written_folder(line) != "runs/sft-baseline-paper-rethink-coldstart":
            assert flag(lines[i + 1], "--run") == written_folder(line), (line, lines[i + 1])
    assert unwritten_reads(lines) == []


def test_a_plot_of_a_folder_nobody_writes_is_caught() -> None:
    """What `make paper-8b` used to run: the KL profile written into one folder (its recipe's, the 1.7B one) and
    plotted from another."""
    lines = [
        ".venv/bin/opd kl-by-position --recipe recipes/kl-by-position-paper-full.yaml --run runs/train-paper-8b-full",
        ".venv/bin/opd plot kl-position runs/kl-by-position-paper-full -o analysis/paper-8b",
    ]
    assert written_folder(lines[0]) == "runs/kl-by-position-paper-1.7b-full"
    assert unwritten_reads(lines) == [("runs/train-paper-8b-full", lines[0]), ("runs/kl-by-position-paper-full", lines[1])]


@pytest.mark.parametrize("student", ["1.7b", "8b"])
def test_each_student_gets_its_own_figures(student: str) -> None:
    """Fig. 2, 3 and 5 are made from that student's own runs, into folders named by the student; the tables draw
    every run of the grid, the SFT baseline and the base model."""
    lines = opd_lines(f"paper-{student}")
    other = "8b" if student == "1.7b" else "1.7b"
    for line in lines:
        if command(line) in ("kl-by-position", "probe-teacher-prefix"):
            assert f"-{student}" in written_folder(line) and all(f"-{student}-" in f for f in read_folders(line)), line
        assert f"paper-{other}" not in line, line
    plots = {command(line): read_folders(line) for line in lines if command(line).startswith("plot ")}
    runs = [f"runs/train-paper-{student}-{r}" for r in ("prefix256", "prefix512", "prefix1024", "prefix2048", "schedule", "full")]
    assert plots["plot main-table"] == [f"runs/eval-paper-{student}-base", *runs, f"runs/sft-baseline-paper-{student}"]
    assert plots["plot compute-vs-acc"] == [*runs, f"runs/sft-baseline-paper-{student}"]
    kinds = {c for c in plots}
    assert {"plot kl-position", "plot teacher-prefix"} <= kinds
    assert [ln.split(" -o ")[1] for ln in lines if command(ln) == "plot kl-position"] == [
        f"analysis/paper-{student}/fig2", f"analysis/paper-{student}/fig5"]
    ablations = {"plot window-ablation", "plot lr-sweep", "plot sft-prefix"}
    assert ablations <= kinds if student == "8b" else not ablations & kinds


def test_paper_8b_ablations_read_the_main_runs() -> None:
    """Table 3 adopts the main full and prefix-1024 runs; Table 4's 5e-5 row is the main prefix-1024 run, evaluated
    on GPQA and MMLU-Pro at every checkpoint like the other learning rates."""
    lines = opd_lines("paper-8b")
    ablation = next(ln for ln in lines if command(ln) == "window-ablation")
    assert read_folders(ablation) == ["runs/train-paper-8b-full", "runs/train-paper-8b-prefix1024"]
    sweep = next(ln for ln in lines if command(ln) == "plot lr-sweep")
    assert read_folders(sweep) == ["runs/train-paper-8b-prefix1024"] + [
        f"runs/train-paper-8b-prefix1024-lr{lr}" for lr in ("2e-4", "2e-5", "5e-6")]
    for run in read_folders(sweep):
        evals = [ln for ln in lines if command(ln) == "eval" and flag(ln, "--run") == run]
        assert any(re.search(r"--benchmark gpqa --benchmark mmlu-pro", ln) for ln in evals), run


# ------------------------------------------------------------------------------------------------ FLOPs
PROMPT_TOKENS = 300  # the prompt length docs/real-scale.md assumes
ROWS = {"OPD (prefix 256)": ("prefix256", None), "OPD (prefix 512)": ("prefix512", None),
        "OPD (prefix 1024)": ("prefix1024", None), "OPD (prefix 2048)": ("prefix2048", None),
        "OPD (full, 10 steps)": ("full", 10), "OPD (full)": ("full", None), "OPD (prefix scheduling)": ("schedule", None)}


@pytest.fixture
def vllm_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("opd_cli.core.generation.vllm_available", lambda: True)


def recipe_flops(student: str, run: str, steps: int | None = None, prompt: int = PROMPT_TOKENS) -> float:
    """opd's FLOPs (appendix-B count) of a training recipe's first ``steps`` steps (all by default): batch_size
    rollouts per step, each ``prompt`` tokens plus the step's generation length (opd's own gen_len: the prefix, the
    schedule's L or the cap)."""
    from opd_cli.core.flops_formula import ModelShape, opd_flops
    from opd_cli.train.config import TrainConfig

    cfg = build_config(TrainConfig, R / f"train-paper-{student}-{run}.yaml", {})
    s, t = ModelShape.from_source(cfg.student), ModelShape.from_source(cfg.teacher)
    n = cfg.batch_size
    return sum(opd_flops(s, t, n * (prompt + cfg.gen_len(k)), n * (prompt + cfg.gen_len(k)) ** 2, cfg.attn_coef)
               for k in range(steps or cfg.steps))


def docs_flops_table() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "real-scale.md").read_text()
    section = text.split("## FLOPs of the paper recipes", 1)[1].split("\n## ", 1)[0]
    return {cells[0]: cells[1:] for line in section.splitlines() if line.startswith("| OPD")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_docs_state_the_flops_the_recipes_give(vllm_extra: None) -> None:
    """Every number of the docs' FLOPs table: opd's count for the recipe (within 1 %: the table rounds to 3
    digits), the paper's figure (as opd flops quotes it) and their ratio."""
    from opd_cli.flops import PAPER_FLOPS

    table = docs_flops_table()
    assert set(table) == set(ROWS)
    for row, (run, steps) in ROWS.items():
        for j, (student, model) in enumerate((("1.7b", "qwen3-1.7b-base"), ("8b", "qwen3-8b-base"))):
            ours, paper, ratio = (float(v) for v in table[row][3 * j: 3 * j + 3])
            computed = recipe_flops(student, run, steps)
            assert ours == pytest.approx(computed, rel=0.01), (row, student, computed)
            assert paper == PAPER_FLOPS[model][row]
            assert ratio == pytest.approx(paper / computed, abs=0.006), (row, student, paper / computed)


def test_opd_flops_recipes_give_the_prefix_and_full_rows(vllm_extra: None) -> None:
    """`opd flops --recipe recipes/flops-paper-<student>.yaml` (the command the docs give) prints the same totals
    for the fixed-prefix and full rows: 60 steps x the recipes' batch at 300 + L tokens."""
    from opd_cli.flops import FlopsConfig, paper_table

    for student in ("1.7b", "8b"):
        rows = paper_table(build_config(FlopsConfig, R / f"flops-paper-{student}.yaml", {}))
        by_len = {r["mean_seq_len"]: r["opd_total"] for r in rows}
        for run, L in (("prefix256", 256), ("prefix512", 512), ("prefix1024", 1024), ("prefix2048", 2048), ("full", 16384)):
            assert by_len[PROMPT_TOKENS + L] == pytest.approx(recipe_flops(student, run), rel=1e-9), (student, run)


def test_one_rollout_per_prompt_cannot_reach_the_papers_full_opd_flops(vllm_extra: None) -> None:
    """The docs' argument that the paper sampled several rollouts per prompt: with the recipes' 512 rollouts per
    step, even rollouts of 16,384 tokens after a 2,048-token prompt stay under the paper's full-OPD FLOPs."""
    from opd_cli.flops import PAPER_FLOPS

    for student, model in (("1.7b", "qwen3-1.7b-base"), ("8b", "qwen3-8b-base")):
        assert recipe_flops(student, "full", prompt=2048) < 0.9 * PAPER_FLOPS[model]["OPD (full)"]
        assert recipe_flops(student, "full", 10, prompt=2048) < 0.9 * PAPER_FLOPS[model]["OPD (full, 10 steps)"]


# ----------------------------------------------------------------------------------------- Rethinking OPD
R1_RUNS = ["sampled", "topk-student", "topk-overlap", "topk-nonoverlap", "k1", "k4", "k64", "template-teacher"]
QWEN_RUNS = ["coldstart", "coldstart-base", "teacher-base"]


@pytest.mark.parametrize("run", R1_RUNS + QWEN_RUNS)
def test_rethink_recipes_use_the_papers_table_2(run: str, vllm_extra: None) -> None:
    """Rethinking OPD's App. A.2 Table 2: 64 prompts x 4 rollouts per update (256 sequences), lr 1e-6,
    7,168 response tokens, temperature 1 / top-p 1 (opd's rollouts), Student Top-16 unless the loss is the
    experiment; R1-Distill-1.5B <- JustRL-1.5B on DAPO-Math-17K except §5.1's Qwen3 pair."""
    from opd_cli.train.config import TrainConfig

    raw = yaml.safe_load((R / f"train-paper-rethink-{run}.yaml").read_text())
    cfg = build_config(TrainConfig, R / f"train-paper-rethink-{run}.yaml", {})
    assert (cfg.batch_size, cfg.lr, cfg.max_new_tokens, cfg.prefix, cfg.warmup) == (256, 1e-6, 7168, "full", 0)
    assert (cfg.rollouts_per_prompt, cfg.prompts_per_step) == (4, 64)
    assert "temperature" not in raw and "top_p" not in raw  # opd samples rollouts at temperature 1, top-p 1
    if run in R1_RUNS:
        assert (cfg.student, cfg.teacher) == ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "hbx/JustRL-DeepSeek-1.5B")
        assert cfg.prompts == ("dapo-math-17k-boxed" if run == "template-teacher" else "dapo-math-17k")
        assert cfg.steps == 272  # ~17.4k prompts / 64 per step
    else:
        assert cfg.student.startswith("runs/sft-baseline-paper-rethink-coldstart/") if run == "coldstart" else cfg.student == "Qwen/Qwen3-1.7B-Base"
        assert cfg.teacher == ("Qwen/Qwen3-4B-Base" if run == "teacher-base" else "Qwen/Qwen3-4B")
        assert cfg.prompts == "openthoughts3" and cfg.steps == 480
    expected = {"sampled": ("sampled", 16, "student"), "topk-overlap": ("topk", 16, "overlap"),
                "topk-nonoverlap": ("topk", 16, "nonoverlap"), "k1": ("topk", 1, "student"), "k4": ("topk", 4, "student"),
                "k64": ("topk", 64, "student")}.get(run, ("topk", 16, "student"))
    assert (cfg.loss, cfg.topk, cfg.topk_support) == expected
    assert cfg.steps % cfg.save_every == 0  # the last step is a checkpoint the evaluations and analyses can read


def test_rethink_eval_recipe_is_the_papers(vllm_extra: None) -> None:
    from opd_cli.evaluate.config import EvalConfig

    cfg = build_config(EvalConfig, R / "eval-paper-rethink.yaml", {})
    assert (list(cfg.benchmark), cfg.samples, cfg.temperature, cfg.top_p, cfg.max_new_tokens) == (
        ["aime24", "aime25", "amc23"], 16, 0.7, 0.95, 31744)
    kl = yaml.safe_load((R / "kl-by-position-paper-rethink.yaml").read_text())
    sampled = yaml.safe_load((R / "train-paper-rethink-sampled.yaml").read_text())
    assert kl["run"] == f"runs/train-{sampled['name']}"
    assert all(s == 0 or s % sampled["save_every"] == 0 and s <= sampled["steps"] for s in kl["checkpoint_steps"])
