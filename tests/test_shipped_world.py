"""The toy world shipped with opd (opd_cli/toy/world/): intact, built by this code with its default settings, the
default of every command, and with two students of two sizes under the teacher, the compact one the weaker."""

from __future__ import annotations

import json

import pytest

from opd_cli.toy import world


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not (world.SHIPPED / world.MANIFEST).is_file():
        pytest.fail(f"no world shipped at {world.SHIPPED}: build it with `opd toy build --root {world.SHIPPED}`")
    return json.loads((world.SHIPPED / world.MANIFEST).read_text())


def test_every_shipped_file_matches_its_hash(manifest):
    assert world.invalid_reason(world.SHIPPED) is None
    on_disk = world.hash_files(world.SHIPPED)
    assert on_disk == manifest["files"]  # nothing missing, nothing extra, nothing changed
    assert {"teacher/model.safetensors", "student/model.safetensors", "student-small/model.safetensors"} <= set(on_disk)


def test_the_shipped_world_is_what_this_code_builds_by_default(manifest):
    from opd_cli.toy.build import ToyBuildConfig, _config_key

    assert manifest["format_version"] == world.FORMAT_VERSION
    assert manifest["config"] == _config_key(ToyBuildConfig())  # the defaults (= recipes/toy-build.yaml)


def test_commands_use_the_shipped_world_by_default(monkeypatch):
    from opd_cli.toy.build import toy_model_paths

    monkeypatch.delenv("OPD_TOY_DIR", raising=False)
    assert world.default_root() == world.SHIPPED
    assert toy_model_paths("large") == (str(world.SHIPPED / "student"), str(world.SHIPPED / "teacher"))
    assert toy_model_paths("small")[0] == str(world.SHIPPED / "student-small")


def test_the_two_students_are_two_sizes_below_the_teacher(manifest):
    """The compact student has fewer layers, a narrower body and 2.5x fewer parameters than the larger one, and fits
    the same SFT data less well (higher final loss); the teacher is far above both (the build's one-sample test
    accuracies; which student is weaker needs more samples than that, see the next test)."""
    large, small, teacher = manifest["student"], manifest["student_small"], manifest["teacher"]
    assert small["params"] < large["params"] < teacher["params"]
    assert small["shape"]["layers"] < large["shape"]["layers"] and small["shape"]["hidden"] < large["shape"]["hidden"]
    assert small["final_loss"] > large["final_loss"]
    assert teacher["test_acc"] > 2 * max(small["test_acc"], large["test_acc"])


def test_the_compact_student_is_the_weaker_one(tmp_path):
    """Both students on the shipped world's test split, 4 samples per problem at temperature 1 (800 answers each):
    the compact student answers fewer correctly. The build's own figure (one sample each, 200 answers: 20.5 % against
    18.0 %) is too noisy to tell; with 8 samples (`opd eval --toy-model student [--toy-student small] --benchmark toy
    --samples 8`) they were 13.1 % against 18.6 %, standard errors 1.0 and 1.1."""
    from typer.testing import CliRunner

    from opd_cli.cli import app

    acc = {}
    for which in ("large", "small"):
        out = tmp_path / which
        r = CliRunner().invoke(app, ["eval", "--toy-model", "student", "--toy-student", which, "--benchmark", "toy",
                                     "--samples", "4", "--max-new-tokens", "192", "--batch-size", "100", "-o", str(out)])
        assert r.exit_code == 0, r.output
        acc[which] = json.loads((out / "eval" / "toy.json").read_text())
    assert acc["small"]["num_problems"] == acc["large"]["num_problems"] == 200
    gap = acc["large"]["mean_acc"] - acc["small"]["mean_acc"]
    assert gap > 2 * (acc["large"]["stderr"] ** 2 + acc["small"]["stderr"] ** 2) ** 0.5, acc
