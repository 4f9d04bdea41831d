"""The toy world shipped with opd (opd_cli/toy/world/): intact, built by this code with its default settings, the
default of every command, and with two students of two sizes under the teacher."""

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
    the same SFT data less well (higher final loss). Its test accuracy at temperature 1 is not lower in this world
    (20.5 % against 18.0 % on 200 problems, within sampling error): only the teacher is checked to be far above both."""
    large, small, teacher = manifest["student"], manifest["student_small"], manifest["teacher"]
    assert small["params"] < large["params"] < teacher["params"]
    assert small["shape"]["layers"] < large["shape"]["layers"] and small["shape"]["hidden"] < large["shape"]["hidden"]
    assert small["final_loss"] > large["final_loss"]
    assert teacher["test_acc"] > 2 * max(small["test_acc"], large["test_acc"])
