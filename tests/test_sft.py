"""opd sft-baseline: a 2-step SFT on tiny models (metrics, FLOPs, loadable checkpoints), prefix SFT, resume,
teacher-generated responses, and one-line errors through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.sft_baseline import strip_think


def _write_data(path: Path, n: int = 8) -> list[tuple[str, str]]:
    """n problems whose teacher responses have different lengths (so each sequence length is distinct)."""
    pairs = [(f"{i}+{i}", "<think>\n" + "step " * (4 + 2 * i) + f"</think>\n\\boxed{{{2 * i}}}") for i in range(n)]
    path.write_text(
        "".join(
            json.dumps({"id": str(i), "question": q, "answer": str(2 * i), "response": r}) + "\n"
            for i, (q, r) in enumerate(pairs)
        )
    )
    return pairs


def _expected_lengths(tok_dir: Path, pairs: list[tuple[str, str]], max_length: int = 0) -> list[int]:
    """prompt + completion + eos tokens, computed independently of TRL, cut at max_length."""
    from transformers import AutoTokenizer

    from opd_cli.core.prompts import build_prompt

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    out = []
    for q, r in pairs:
        n = len(tok(build_prompt(tok, q) + strip_think(r), add_special_tokens=False)["input_ids"]) + 1
        out.append(min(n, max_length) if max_length else n)
    return out


def _paper_flops(model_dir: Path, sum_s: float, sum_s2: float, coef: float = 12) -> float:
    """The prefix-OPD paper's FLOPs (appendix B) written out on the model's config.json (independent of opd_cli.flops):
    SFT counts x per sample."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    h, layers, n_q = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    n_kv, d = c.get("num_key_value_heads") or n_q, c.get("head_dim") or h // n_q
    n_dense = (
        layers * (3 * h * c["intermediate_size"] + h * (n_q * d + 2 * n_kv * d + n_q * d)) + 2 * c["vocab_size"] * h
    )
    return 6 * n_dense * sum_s + coef * sum_s2 * d * n_q * layers


def _cfg(student: Path, data: Path, out: Path, **kw):
    from opd_cli.core.config import build_config
    from opd_cli.sft_baseline import SftConfig

    base = dict(
        student=str(student),
        data=str(data),
        steps=2,
        batch_size=4,
        micro_batch_size=2,
        save_every=1,
        lr=1e-3,
        output_dir=str(out),
    )
    return build_config(SftConfig, None, {**base, **kw})


def test_strip_think() -> None:
    assert strip_think("<think>\nplan: a") == "plan: a"
    assert strip_think("plan: a") == "plan: a"


def test_sft_smoke_metrics_flops_checkpoint(tiny_model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from opd_cli.core.runs import list_checkpoints, read_config, read_metrics
    from opd_cli.sft_baseline import run_sft

    student, _ = tiny_model_dirs
    pairs = _write_data(tmp_path / "d.jsonl")
    out = run_sft(_cfg(student, tmp_path / "d.jsonl", tmp_path / "run"))

    assert read_config(out)["command"] == "sft-baseline"
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["lr"] for r in rows] == [pytest.approx(1e-3)] * 2  # --lr 1e-3, constant schedule
    assert 0 < rows[0]["wall_time"] < rows[1]["wall_time"]
    # 2 steps x 4 sequences = one pass over the 8 examples: the logged lengths are exactly theirs
    lens = _expected_lengths(student, pairs)
    assert sum(r["seq_tokens"] for r in rows) == sum(lens)
    assert sum(r["seq_tokens_sq"] for r in rows) == sum(n * n for n in lens)
    for r in rows:
        assert r["flops_step"] == pytest.approx(_paper_flops(student, r["seq_tokens"], r["seq_tokens_sq"]), rel=1e-12)
    assert rows[-1]["flops_total"] == pytest.approx(
        _paper_flops(student, sum(lens), sum(n * n for n in lens)), rel=1e-12
    )

    ckpts = list_checkpoints(out)
    assert [s for s, _ in ckpts] == [1, 2]
    trained = AutoModelForCausalLM.from_pretrained(str(ckpts[-1][1]))
    initial = AutoModelForCausalLM.from_pretrained(str(student))
    assert (ckpts[-1][1] / "tokenizer.json").is_file()
    deltas = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), initial.parameters(), strict=True)]
    assert max(deltas) > 0  # it trained
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows])).all()
    assert not (out / ".trainer").exists()


def test_prefix_sft_truncates(tiny_model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from opd_cli.core.runs import read_metrics
    from opd_cli.sft_baseline import run_sft

    student, _ = tiny_model_dirs
    pairs = _write_data(tmp_path / "d.jsonl")
    out = run_sft(_cfg(student, tmp_path / "d.jsonl", tmp_path / "run", max_length=24))
    rows = read_metrics(out)
    assert max(r["seq_len_max"] for r in rows) <= 24
    lens = _expected_lengths(student, pairs, max_length=24)
    assert max(_expected_lengths(student, pairs)) > 24  # the cap bites
    assert sum(r["seq_tokens"] for r in rows) == sum(lens)


def test_sft_resume_extends_run(tiny_model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from opd_cli.core.runs import list_checkpoints, read_metrics
    from opd_cli.sft_baseline import run_sft

    student, _ = tiny_model_dirs
    _write_data(tmp_path / "d.jsonl")
    out = run_sft(_cfg(student, tmp_path / "d.jsonl", tmp_path / "run"))
    first = read_metrics(out)
    step2 = list_checkpoints(out)[-1][1].stat().st_mtime_ns
    run_sft(_cfg(student, tmp_path / "d.jsonl", tmp_path / "run", steps=3, if_exists="resume"))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[:2] == first  # steps 1-2 were not redone
    assert list_checkpoints(out)[1][1].stat().st_mtime_ns == step2
    assert rows[-1]["flops_total"] == pytest.approx(sum(r["flops_step"] for r in rows))


def test_sft_optimizer_states_last(tiny_model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """--optimizer-states last: only the newest checkpoint keeps optimizer.pt, every one its weights."""
    from opd_cli.core.runs import list_checkpoints
    from opd_cli.sft_baseline import run_sft

    student, _ = tiny_model_dirs
    _write_data(tmp_path / "d.jsonl")
    out = run_sft(_cfg(student, tmp_path / "d.jsonl", tmp_path / "run", steps=3, optimizer_states="last"))
    ckpts = list_checkpoints(out)
    assert [s for s, _ in ckpts] == [1, 2, 3]
    assert [(c / "optimizer.pt").exists() for _, c in ckpts] == [False, False, True]
    assert all((c / "model.safetensors").exists() for _, c in ckpts)


def test_sft_generate_with_teacher(tiny_model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """The teacher writes 2 responses to each of 4 problems, capped at 6 tokens; the one step trains on 4 of those 8
    examples (prompt + response, as written), not on the data file's own responses."""
    from itertools import combinations

    from opd_cli.core.runs import read_metrics
    from opd_cli.sft_baseline import TEACHER_CACHE, run_sft

    student, teacher = tiny_model_dirs
    pairs = _write_data(tmp_path / "d.jsonl", n=4)
    cfg = _cfg(
        student,
        tmp_path / "d.jsonl",
        tmp_path / "run",
        steps=1,
        batch_size=4,
        micro_batch_size=0,
        generate_with_teacher=True,
        teacher=str(teacher),
        teacher_samples=2,
        teacher_max_new_tokens=6,
    )
    out = run_sft(cfg)
    cache = [json.loads(line) for line in (out / TEACHER_CACHE).read_text().splitlines()]
    assert sorted((r["problem_id"], r["sample"]) for r in cache) == [(str(i), j) for i in range(4) for j in range(2)]
    assert all(r["length"] <= 6 for r in cache) and all(r["length"] == 6 for r in cache if r["truncated"])
    (row,) = read_metrics(out)
    assert row["step"] == 1
    written = _expected_lengths(student, [(pairs[int(r["problem_id"])][0], r["response"]) for r in cache])
    given = _expected_lengths(student, pairs)
    four_of = {(sum(c), sum(n * n for n in c)) for c in combinations(written, 4)}
    assert (row["seq_tokens"], row["seq_tokens_sq"]) in four_of
    assert (row["seq_tokens"], row["seq_tokens_sq"]) != (sum(given), sum(n * n for n in given))


def test_cli_bad_inputs(tmp_path: Path) -> None:
    from opd_cli.cli import app

    runner = CliRunner()
    cases = [
        (["--max-length", "-1"], "--max-length"),
        (["--batch-size", "4", "--micro-batch-size", "3"], "multiple of --micro-batch-size"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--prompts", "toy-train", "--data", "x.jsonl"], "not both"),
        (["--lr-scheduler", "wavy"], "--lr-scheduler"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["sft-baseline", *args, "-o", str(tmp_path / "x")])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output
    res = runner.invoke(
        app,
        ["sft-baseline", "--data", str(tmp_path / "none.jsonl"), "--student", str(tmp_path), "-o", str(tmp_path / "y")],
    )
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parents[1].glob("recipes/sft-*.yaml")), ids=lambda p: p.name
)
def test_sft_recipes_load(path: Path) -> None:
    import yaml

    from opd_cli.core.config import build_config
    from opd_cli.sft_baseline import SftConfig

    first = path.read_text().splitlines()[0]
    assert first.startswith("# opd sft-baseline --recipe recipes/" + path.name)
    assert yaml.safe_load(path.read_text())["command"] == "sft-baseline"
    raw = yaml.safe_load(path.read_text())
    cfg = build_config(SftConfig, path)
    for key, value in raw.items():  # every setting the recipe writes reaches the config unchanged
        if key != "command":
            assert getattr(cfg, key) == value, key
    if "paper" in path.name and "rethink" not in path.name:
        assert (cfg.batch_size, cfg.lr) == (128, 1e-4)  # the prefix paper's SFT settings
    if "rethink" in path.name:
        assert (cfg.lr, cfg.lr_scheduler, cfg.max_length) == (1e-5, "cosine", 14336)  # Rethinking OPD, Table 3


def test_sft_checkpoint_starts_opd_and_flops_agree(tiny_model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """Off-policy cold start (Rethinking OPD §5.1): the SFT checkpoint is a valid `opd train --student`; and
    `opd flops` recomputes the SFT run's logged total from its metrics."""
    from opd_cli.core.config import build_config
    from opd_cli.core.runs import list_checkpoints, read_config, read_metrics
    from opd_cli.flops import run_totals
    from opd_cli.sft_baseline import run_sft
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    student, teacher = tiny_model_dirs
    _write_data(tmp_path / "d.jsonl")
    sft_run = run_sft(_cfg(student, tmp_path / "d.jsonl", tmp_path / "sft", steps=1, save_every=0))
    totals = run_totals(sft_run)
    (row,) = read_metrics(sft_run)
    x = _paper_flops(student, row["seq_tokens"], row["seq_tokens_sq"])  # SFT: x per sample
    assert totals.command == "sft-baseline" and totals.seq_tokens == row["seq_tokens"]
    assert totals.flops == pytest.approx(x, rel=1e-12) and row["flops_total"] == pytest.approx(x, rel=1e-12)

    ckpt = list_checkpoints(sft_run)[-1][1]
    cfg = build_config(
        TrainConfig,
        None,
        dict(
            student=str(ckpt),
            teacher=str(teacher),
            data=str(tmp_path / "d.jsonl"),
            steps=1,
            batch_size=2,
            micro_batch_size=2,
            max_new_tokens=8,
            save_every=0,
            kl_bin=4,
            output_dir=str(tmp_path / "opd"),
        ),
    )
    opd_run = run_train(cfg)
    assert read_config(opd_run)["student"] == str(ckpt)
    (opd,) = read_metrics(opd_run)
    # OPD from the checkpoint: x/3 + x/3 + y/3 + x, x of the checkpoint (the student's shape), y of the teacher
    x, y = (_paper_flops(d, opd["seq_tokens"], opd["seq_tokens_sq"]) for d in (ckpt, teacher))
    assert opd["step"] == 1 and opd["flops_total"] == pytest.approx(5 * x / 3 + y / 3, rel=1e-12)


def test_sft_leaves_the_libraries_logging_as_it_was(tiny_model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    import logging

    import datasets
    from transformers.utils import logging as hf_logging

    from opd_cli.sft_baseline import run_sft

    student, _ = tiny_model_dirs
    _write_data(tmp_path / "d.jsonl")
    before = (
        hf_logging.get_verbosity(),
        logging.getLogger("trl").level,
        hf_logging.is_progress_bar_enabled(),
        datasets.is_progress_bar_enabled(),
    )
    run_sft(_cfg(student, tmp_path / "d.jsonl", tmp_path / "run", steps=1, save_every=0))
    after = (
        hf_logging.get_verbosity(),
        logging.getLogger("trl").level,
        hf_logging.is_progress_bar_enabled(),
        datasets.is_progress_bar_enabled(),
    )
    assert after == before
