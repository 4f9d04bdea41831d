"""The toy world's two students (--toy-student large | small) and the world's seed.

One miniature world built from seed 1 serves every test: ``ensure_world`` must keep it (a world built by
`opd toy build --seed 1` is the toy world, not something to rebuild from seed 0), and every command that falls back
to the toy student must resolve ``small`` to ``<root>/student-small``. Commands run with ``ensure_world`` patched to
return that world, on tiny models and a few tokens, so the file takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.errors import OpdError

runner = CliRunner()


@pytest.fixture(scope="module")
def seed1_world(tmp_path_factory: pytest.TempPathFactory):
    """A miniature world built from seed 1 (both students)."""
    from opd_cli.toy.build import ToyBuildConfig, run_toy_build

    root = tmp_path_factory.mktemp("toy_seed1") / "toy"
    return run_toy_build(dataclasses.replace(ToyBuildConfig.miniature(root), seed=1))


@pytest.fixture()
def patched_world(seed1_world, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every command's ``ensure_world`` returns the seed-1 world; the keyword arguments of each call are recorded."""
    import opd_cli.toy.build as build

    calls: list[dict] = []
    monkeypatch.setattr(build, "ensure_world", lambda *a, **k: calls.append(k) or seed1_world)
    return calls


def _copy_without_small(world, dst: Path):
    """A copy of ``world`` built "before there were two students": no student-small/, manifest re-hashed."""
    from opd_cli.toy.world import load_world, write_manifest

    shutil.copytree(world.root, dst)
    shutil.rmtree(dst / "student-small")
    write_manifest(dst, {k: v for k, v in world.manifest.items() if k != "student_small"})
    return load_world(dst)


def one_error_line(args: list[str], expect: str) -> str:
    """``opd args`` fails with exit code 2 and exactly one error line on stderr mentioning ``expect``."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    return lines[0]


class Stop(Exception):
    """Raised by a patched loader once the command has resolved its model folder (nothing is trained)."""


def _stop_at_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_tokenizer(path, *a, **k):
        raise Stop(str(path))

    monkeypatch.setattr("opd_cli.core.models.load_tokenizer", load_tokenizer)


# ------------------------------------------------------------------------------------- the world's seed
def test_ensure_world_keeps_a_world_built_from_another_seed(seed1_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import opd_cli.toy.build as build
    from opd_cli.toy.build import ensure_world

    root = seed1_world.root
    assert seed1_world.manifest["requested_seed"] == 1
    before = (root / "manifest.json").read_text()
    builds: list = []
    monkeypatch.setattr(build, "run_toy_build", lambda cfg, console=None: builds.append(cfg) or "rebuilt")

    world = ensure_world(root)  # no seed: the valid cached world, whatever its seed
    assert builds == [] and world.manifest == seed1_world.manifest and world.root == root
    assert ensure_world(root, seed=1).manifest == seed1_world.manifest and builds == []
    assert (root / "manifest.json").read_text() == before

    assert ensure_world(root, seed=0) == "rebuilt"  # an explicit other seed still rebuilds
    assert [(b.seed, b.rebuild, Path(b.root)) for b in builds] == [(0, True, root)]
    assert ensure_world(tmp_path / "none") == "rebuilt"  # nothing cached: seed 0
    assert ensure_world(root, rebuild=True) == "rebuilt"
    assert [b.seed for b in builds] == [0, 0, 0]


def test_train_uses_the_cached_world_whatever_its_seed(patched_world, seed1_world, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _stop_at_tokenizer(monkeypatch)
    r = runner.invoke(app, ["train", "-o", str(tmp_path / "run")])
    assert isinstance(r.exception, Stop) and r.exception.args[0] == str(seed1_world.root / "student")
    assert patched_world and all(k.get("seed") is None for k in patched_world)


# ------------------------------------------------------------------------------------- the world's students
def test_student_path(seed1_world, tmp_path: Path) -> None:
    from opd_cli.toy.world import TOY_STUDENTS, invalid_reason, load_world

    root = seed1_world.root
    assert TOY_STUDENTS == ("large", "small")
    assert seed1_world.student_path() == seed1_world.student_dir == root / "student"
    assert seed1_world.student_path("small") == root / "student-small"
    assert (root / "student-small" / "config.json").is_file() and "student_small" in seed1_world.manifest
    with pytest.raises(OpdError, match="--toy-student must be large or small, got 'medium'"):
        seed1_world.student_path("medium")

    old = _copy_without_small(seed1_world, tmp_path / "old")  # still a valid world: student-small is optional
    assert invalid_reason(old.root) is None and old.student_path("large") == old.root / "student"
    with pytest.raises(OpdError) as err:
        old.student_path("small")
    assert "\n" not in str(err.value) and "no small student" in str(err.value)
    assert f"opd toy build --rebuild --root {old.root}" in str(err.value)

    bad = tmp_path / "bad"  # hashes cover the small student like every other file
    shutil.copytree(root, bad)
    (bad / "student-small" / "config.json").write_text("{}")
    assert "does not match its hash" in invalid_reason(bad)
    with pytest.raises(OpdError, match="no valid toy world"):
        load_world(bad)


@pytest.mark.parametrize("command", [
    ["train"], ["eval"], ["sft-baseline"], ["kl-by-position"], ["probe-teacher-prefix"], ["window-ablation"],
])
def test_cli_rejects_an_unknown_toy_student(command: list[str]) -> None:
    one_error_line([*command, "--toy-student", "medium"], "--toy-student must be large or small, got 'medium'")


def test_small_cannot_go_with_an_explicit_model(tiny_model_dirs) -> None:
    student, teacher = map(str, tiny_model_dirs)
    small = ["--toy-student", "small"]
    one_error_line(["train", "--student", student, "--teacher", teacher, *small], "cannot be combined with --student")
    one_error_line(["sft-baseline", "--student", student, *small], "cannot be combined with --student")
    one_error_line(["probe-teacher-prefix", "--student", student, *small], "cannot be combined with --student")
    one_error_line(["eval", "--toy-model", "teacher", *small], "--toy-student small")
    one_error_line(["eval", "--run", "somewhere", *small], "--toy-student small")
    one_error_line(["kl-by-position", "--model", student, *small], "--toy-student small")


def test_train_resolves_the_small_student(patched_world, seed1_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stop_at_tokenizer(monkeypatch)
    r = runner.invoke(app, ["train", "--toy-student", "small", "-o", str(tmp_path / "run")])
    assert isinstance(r.exception, Stop) and r.exception.args[0] == str(seed1_world.root / "student-small")


def test_sft_resolves_the_small_student(patched_world, seed1_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stop_at_tokenizer(monkeypatch)
    out = tmp_path / "sft"
    r = runner.invoke(app, ["sft-baseline", "--toy-student", "small", "--steps", "1", "--batch-size", "2", "-o", str(out)])
    small = str(seed1_world.root / "student-small")
    assert isinstance(r.exception, Stop) and r.exception.args[0] == small
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["student"] == small and saved["toy_student"] == "small"


def test_eval_of_the_small_student(patched_world, seed1_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opd_cli.plot.read import label

    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["eval", "--toy-student", "small", "-n", "1", "--max-new-tokens", "4", "--limit", "2"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "eval-toy-student-small"
    assert json.loads((out / "eval" / "toy.json").read_text())["model"] == str(seed1_world.root / "student-small")
    assert label(out) == "base: toy student (small)"


def test_eval_run_step0_is_the_run_student(patched_world, seed1_world, tmp_path: Path) -> None:
    from opd_cli.evaluate.run import initial_student

    root = seed1_world.root
    for saved, want in (({"toy_student": "small"}, root / "student-small"), ({"toy_student": "large"}, root / "student"),
                        ({}, root / "student")):  # a run saved before toy_student existed: the large one
        run = tmp_path / f"run-{len(saved) and saved['toy_student']}"
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": None, **saved}))
        assert initial_student(run) == str(want)
    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": None, "toy_student": "tiny"}))
    with pytest.raises(OpdError, match="toy_student 'tiny'"):
        initial_student(run)


def test_analyses_resolve_the_small_student(patched_world, seed1_world, tmp_path: Path) -> None:
    from opd_cli.analyses.kl_by_position import _initial_student
    from opd_cli.toy.build import toy_model_paths

    root = seed1_world.root
    small = str(root / "student-small")
    assert toy_model_paths("small") == (small, str(root / "teacher"))
    assert _initial_student(str(tmp_path), {"command": "train", "student": None, "toy_student": "small"}) == small
    assert _initial_student(str(tmp_path), {"command": "train", "student": None}) == str(root / "student")

    out = tmp_path / "probe"
    r = runner.invoke(app, ["probe-teacher-prefix", "--toy-student", "small", "--benchmark", "toy-dev", "--limit", "2",
                            "-n", "1", "--lengths", "2", "--margin", "0", "--teacher-max-new-tokens", "8",
                            "--max-new-tokens", "4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["student"] == small

    out = tmp_path / "kl"
    r = runner.invoke(app, ["kl-by-position", "--toy-student", "small", "--benchmark", "toy-dev", "--limit", "2",
                            "--max-new-tokens", "6", "--bin", "3", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["checkpoints"]["0"]["model"] == small


def test_window_ablation_passes_the_student_through(tmp_path: Path) -> None:
    from opd_cli.window_ablation.config import WindowAblationConfig
    from opd_cli.window_ablation.run import plan_runs

    def students(**kw) -> set[str]:
        cfg = WindowAblationConfig(windows=["4:8"], prefix_ref=4, **kw)
        return {t.toy_student for _, t in plan_runs(cfg, tmp_path)}

    assert students() == {"large"}
    assert students(toy_student="small") == {"small"}
    assert students(overrides=["toy_student=small"]) == {"small"}
    assert students(overrides=["toy_student=small"], toy_student="large") == {"large"}  # the flag wins


def test_runs_saved_before_toy_student_stay_resumable(tmp_path: Path) -> None:
    """A config.yaml without toy_student reads as the default (large): resume and ablation reuse still match it."""
    from opd_cli.core.config import to_dict
    from opd_cli.core.runs import open_run
    from opd_cli.train.config import TrainConfig
    from opd_cli.window_ablation.reuse import _check_reusable, find_stand_in

    run = tmp_path / "run"
    cfg = TrainConfig(output_dir=str(run), steps=2, save_every=1)
    old = {k: v for k, v in to_dict(cfg).items() if k != "toy_student"}
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    (run / "metrics.jsonl").write_text("")
    assert open_run(run, "resume", cfg).resumed
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(OpdError, match="differs in toy_student"):
        open_run(run, "resume", dataclasses.replace(cfg, toy_student="small"))

    _check_reusable("full", run, cfg)  # no error
    with pytest.raises(OpdError, match="different toy_student"):
        _check_reusable("full", run, dataclasses.replace(cfg, toy_student="small"))
    for step in (1, 2):
        (run / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
        (run / "checkpoints" / f"step_{step:06d}" / "COMPLETE").write_text("")
    assert find_stand_in(cfg, [str(run)], [1, 2]) == run
    assert find_stand_in(dataclasses.replace(cfg, toy_student="small"), [str(run)], [1, 2]) is None


# ------------------------------------------------------------------------------------------------ flops
def test_flops_costs_a_small_student_run_with_its_shape(seed1_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opd_cli.core.flops_formula import ModelShape, opd_flops
    from opd_cli.flops import run_totals

    root = seed1_world.root
    monkeypatch.setenv("OPD_TOY_DIR", str(root))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "seq_tokens": 30, "seq_tokens_sq": 500}) + "\n")
    teacher = ModelShape.from_source(str(root / "teacher"))
    large, small = (ModelShape.from_source(str(root / d)) for d in ("student", "student-small"))
    assert large != small

    for toy_student, shape, name in (("small", small, "toy student (small)"), ("large", large, "toy student")):
        (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": None, "teacher": None,
                                                         "toy_student": toy_student}))
        totals = run_totals(run)
        assert totals.flops == pytest.approx(opd_flops(shape, teacher, 30, 500, 12)) and totals.student == name

    (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": None, "teacher": None,
                                                     "toy_student": "small"}))
    monkeypatch.setenv("OPD_TOY_DIR", str(_copy_without_small(seed1_world, tmp_path / "old").root))
    with pytest.raises(OpdError, match="student-small.* is not built"):
        run_totals(run)
