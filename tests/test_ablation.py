"""opd window-ablation: window parsing and expansion (pure), table writing, a tiny end-to-end run, reuse, CLI errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.core.errors import OpdError
from opd_cli.window_ablation.config import parse_window
from opd_cli.window_ablation.run import expand_windows
from opd_cli.window_ablation.table import collect_table, write_table

PAPER_WINDOWS = ["1024:2048", "2048:3072", "3072:4096", "tail:1024"]


def test_parse_window() -> None:
    assert parse_window("1024:2048") == ("window", 1024, 2048)
    assert parse_window(" tail:1024 ") == ("tail", 1024, 0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("-1:5", "inside the prompt"),
        ("5:5", "empty"),
        ("9:3", "empty"),
        ("1024-2048", "malformed"),
        ("tail:0", "N > 0"),
        ("a:b", "malformed"),
    ],
)
def test_parse_window_rejects(spec: str, message: str) -> None:
    with pytest.raises(OpdError, match=message) as err:
        parse_window(spec)
    assert "\n" not in str(err.value)


def test_expand_windows_paper_table3() -> None:
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig

    base = {"command": "train", "steps": 30, "max_new_tokens": 4096, "prefix": "2048", "lr": 5e-5}
    runs = expand_windows(base, PAPER_WINDOWS, prefix_ref=1024)
    labels = [label for label, _ in runs]
    assert labels == ["full", "prefix-1024", "window-1024-2048", "window-2048-3072", "window-3072-4096", "tail-1024"]
    by = dict(runs)
    assert by["full"]["prefix"] == "full" and by["full"]["loss_window"] is None and by["full"]["loss_tail"] == 0
    assert by["prefix-1024"]["prefix"] == "1024" and by["prefix-1024"]["loss_window"] is None
    assert by["window-2048-3072"]["loss_window"] == "2048:3072" and by["window-2048-3072"]["prefix"] == "full"
    assert by["tail-1024"]["loss_tail"] == 1024 and by["tail-1024"]["loss_window"] is None
    for label, cfg in runs:
        assert "command" not in cfg and cfg["name"] == label and cfg["lr"] == 5e-5 and cfg["steps"] == 30
        # runs differ from the full reference only in the window fields
        diff = {k for k in cfg if cfg[k] != by["full"][k]} - {"name"}
        assert diff <= {"prefix", "loss_window", "loss_tail"}
        build_config(TrainConfig, None, cfg)  # every expanded config is a valid opd train config


def test_expand_windows_errors() -> None:
    with pytest.raises(OpdError, match="ends past the response cap"):
        expand_windows({"max_new_tokens": 2048}, ["1024:4096"], prefix_ref=0)
    with pytest.raises(OpdError, match="repeats window-1-2"):
        expand_windows({}, ["1:2", "1:2"], prefix_ref=0)
    with pytest.raises(OpdError, match="exceeds the response cap"):
        expand_windows({"max_new_tokens": 512}, [], prefix_ref=1024)
    assert [label for label, _ in expand_windows({}, ["tail:8"], prefix_ref=0, full_ref=False)] == ["tail-8"]


def _fake_eval(out: Path, label: str, step: int, acc: float, bench: str = "toy-dev") -> None:
    f = out / "runs" / label / "eval" / f"step_{step:06d}" / f"{bench}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"benchmark": bench, "step": step, "mean_acc": acc}))


def test_table_from_fake_runs(tmp_path: Path) -> None:
    _fake_eval(tmp_path, "full", 10, 0.25)
    _fake_eval(tmp_path, "prefix-1024", 10, 0.5)
    _fake_eval(tmp_path, "window-1024-2048", 20, 0.125)
    rows = collect_table(tmp_path, ["full", "prefix-1024", "window-1024-2048"], [10, 20], "toy-dev")
    assert len(rows) == 6
    csv_path, md_path = write_table(tmp_path, rows, "toy-dev")
    got = list(csv.DictReader(csv_path.open()))
    assert list(got[0]) == ["method", "window", "step", "dev_acc"]
    assert [(r["method"], r["window"], r["step"], r["dev_acc"]) for r in got] == [
        ("OPD full", "all", "10", "0.2500"),
        ("OPD full", "all", "20", ""),
        ("OPD prefix", "[0, 1024)", "10", "0.5000"),
        ("OPD prefix", "[0, 1024)", "20", ""),
        ("OPD window", "[1024, 2048)", "10", ""),
        ("OPD window", "[1024, 2048)", "20", "0.1250"),
    ]
    md = md_path.read_text()
    assert "| OPD prefix | [0, 1024) | 50.0 | - |" in md and "| OPD window | [1024, 2048) | - | 12.5 |" in md


@pytest.fixture()
def tiny_ablation(tiny_model_dirs: tuple[Path, Path], tmp_path: Path):
    from opd_cli import data
    from opd_cli.core.config import build_config
    from opd_cli.window_ablation.config import WindowAblationConfig

    student, teacher = tiny_model_dirs
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": str(i), "question": f"{i}+{i}", "answer": str(2 * i)}) + "\n" for i in range(4))
    )
    data.register_source(
        "tiny-ablation-dev", lambda limit=None, seed=0: [data.Problem(str(i), f"{i}+1", str(i + 1)) for i in range(2)]
    )
    overrides = [
        f"student={student}",
        f"teacher={teacher}",
        f"data={prompts}",
        "steps=2",
        "save_every=1",
        "batch_size=2",
        "micro_batch_size=2",
        "max_new_tokens=8",
        "kl_bin=4",
    ]

    def make() -> WindowAblationConfig:
        return build_config(
            WindowAblationConfig,
            None,
            dict(
                overrides=overrides,
                windows="2:6,tail:3",
                prefix_ref=4,
                eval_steps="1,2",
                dev_benchmark="tiny-ablation-dev",
                eval_samples=1,
                eval_max_new_tokens=8,
                output_dir=str(tmp_path / "abl"),
            ),
        )

    return make


def test_window_ablation_smoke_and_reuse(tiny_ablation, capsys: pytest.CaptureFixture[str]) -> None:
    from opd_cli.core.runs import list_checkpoints, read_config
    from opd_cli.window_ablation.run import run_window_ablation

    out = run_window_ablation(tiny_ablation())
    labels = ["full", "prefix-4", "window-2-6", "tail-3"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(labels)
    assert read_config(out / "runs" / "window-2-6")["loss_window"] == "2:6"
    assert read_config(out / "runs" / "tail-3")["loss_tail"] == 3
    assert read_config(out / "runs" / "prefix-4")["prefix"] == "4"
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert len(rows) == 8 and {r["step"] for r in rows} == {"1", "2"}
    for step in (1, 2):  # each table cell is the fraction of correct samples in that run's evaluation at that step
        cells = sorted(round(float(r["dev_acc"]), 4) for r in rows if r["step"] == str(step))
        graded = []
        for lab in labels:
            [samples] = (out / "runs" / lab / "eval" / f"step_{step:06d}").glob("*.samples.jsonl")
            marks = [json.loads(line)["correct"] for line in samples.read_text().splitlines()]
            graded.append(round(sum(marks) / len(marks), 4))
        assert cells == sorted(graded)
    stamps = {lab: [p.stat().st_mtime_ns for _, p in list_checkpoints(out / "runs" / lab)] for lab in labels}
    metrics = {lab: (out / "runs" / lab / "metrics.jsonl").read_text() for lab in labels}
    capsys.readouterr()

    run_window_ablation(tiny_ablation())  # second call: nothing retrains
    printed = capsys.readouterr().out
    assert printed.count("reused") == 4
    for lab in labels:
        assert [p.stat().st_mtime_ns for _, p in list_checkpoints(out / "runs" / lab)] == stamps[lab]
        assert (out / "runs" / lab / "metrics.jsonl").read_text() == metrics[lab]


def test_cli_bad_inputs(tmp_path: Path) -> None:
    from opd_cli.cli import app

    runner = CliRunner()
    cases = [
        (["--windows", "-1024:0"], "inside the prompt"),
        (["--windows", "2048:1024"], "empty"),
        (["--windows", "1k:2k"], "malformed"),
        (["--set", "steps"], "key=value"),
        (["--prefix-ref", "-1"], "--prefix-ref"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["window-ablation", *args, "-o", str(tmp_path / "x")])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parents[1].glob("recipes/window-ablation-*.yaml")), ids=lambda p: p.name
)
def test_window_ablation_recipes_expand(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from opd_cli.core.config import build_config
    from opd_cli.window_ablation.config import WindowAblationConfig
    from opd_cli.window_ablation.run import plan_runs

    monkeypatch.chdir(path.parents[1])  # recipes name their base train recipe relative to the repository root
    monkeypatch.setattr("opd_cli.core.generation.vllm_available", lambda: True)  # paper recipes name --backend vllm
    assert path.read_text().splitlines()[0].startswith("# opd window-ablation --recipe recipes/" + path.name)
    assert yaml.safe_load(path.read_text())["command"] == "window-ablation"
    cfg = build_config(WindowAblationConfig, path)
    planned = plan_runs(cfg, Path("/nonexistent/ablation"))  # every run is a valid TrainConfig
    assert len(planned) == len(cfg.windows) + 2
    steps = int(next(o for o in cfg.overrides if o.startswith("steps=")).split("=")[1])  # 30 (toy, paper), 40 (real)
    assert steps in (30, 40) and all(t.steps == steps for _, t in planned)
    assert max(cfg.eval_steps) == steps  # the table's last column is the runs' last step


def test_reference_runs_stand_in_for_references(
    tiny_ablation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished train run with the same settings and more steps is adopted (hard links, cut metrics), not retrained."""
    import dataclasses

    from opd_cli.core.runs import list_checkpoints, read_config, read_metrics
    from opd_cli.evaluate.config import EvalConfig
    from opd_cli.evaluate.run import evaluate_run
    from opd_cli.train.run import run_train
    from opd_cli.window_ablation.run import plan_runs, run_window_ablation

    cfg = tiny_ablation()
    full_cfg = dict(plan_runs(cfg, tmp_path / "plan"))["full"]
    longer = dataclasses.replace(
        full_cfg, steps=3, name="longer", output_dir=str(tmp_path / "train-longer"), if_exists="raise"
    )
    run_train(longer)
    src = Path(longer.output_dir)
    evaluate_run(src, steps=[1], benchmarks=["tiny-ablation-dev"], cfg=EvalConfig(samples=1, max_new_tokens=8))
    other_lr = dataclasses.replace(longer, lr=longer.lr * 2, output_dir=str(tmp_path / "train-other"))
    (tmp_path / "train-other").mkdir()
    (tmp_path / "train-other" / "config.yaml").write_text(
        (src / "config.yaml").read_text().replace(f"lr: {longer.lr}", f"lr: {other_lr.lr}")
    )
    capsys.readouterr()

    cfg = dataclasses.replace(
        cfg, windows=["tail:3"], prefix_ref=0, reference_runs=[str(tmp_path / "train-other"), str(src)]
    )
    out = run_window_ablation(cfg)
    printed = capsys.readouterr().out
    assert f"[full] adopted the first 2 steps of {src}" in printed
    full = out / "runs" / "full"
    assert [s for s, _ in list_checkpoints(full)] == [1, 2]
    assert [r["step"] for r in read_metrics(full)] == [1, 2]
    assert read_config(full)["steps"] == 2 and read_config(full)["name"] == "full"
    a = full / "checkpoints" / "step_000002" / "model.safetensors"
    assert a.stat().st_ino == (src / "checkpoints" / "step_000002" / "model.safetensors").stat().st_ino
    copied = json.loads((full / "eval" / "step_000001" / "tiny-ablation-dev.json").read_text())
    original = json.loads((src / "eval" / "step_000001" / "tiny-ablation-dev.json").read_text())
    assert copied["mean_acc"] == original["mean_acc"] and copied["model"] == original["model"]
    assert (full / "eval" / "step_000002" / "tiny-ablation-dev.json").is_file()  # not in the source: evaluated here
    assert json.loads((full / "reference.json").read_text())["source"] == str(src)
    assert not (out / "runs" / "tail-3" / "reference.json").exists()


def test_the_evaluation_backend_reaches_every_evaluation():
    """eval_backend goes into the evaluations' settings (a reference run's evaluations are adopted only when their
    backend is the same); anything but hf or vllm is one line."""
    from types import SimpleNamespace

    from opd_cli.core.config import build_config
    from opd_cli.window_ablation.config import WindowAblationConfig
    from opd_cli.window_ablation.run import _eval_overrides

    cfg = build_config(WindowAblationConfig, None, {"eval_backend": "vllm"})
    assert _eval_overrides(cfg, SimpleNamespace(template="chat", think=False))["backend"] == "vllm"
    assert _eval_overrides(build_config(WindowAblationConfig, None, {}), SimpleNamespace(template="chat", think=False))["backend"] == "hf"
    with pytest.raises(OpdError, match="--eval-backend must be hf or vllm, got 'tpu'"):
        build_config(WindowAblationConfig, None, {"eval_backend": "tpu"})
