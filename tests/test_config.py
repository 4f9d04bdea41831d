"""Config resolution: defaults < recipe < command-line flags, type coercion, checks, the saved resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opd_cli.core.config import build_config, dump_yaml, read_recipe
from opd_cli.core.errors import OpdError
from opd_cli.evaluate.config import EvalConfig


def recipe(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    return f


def test_precedence_defaults_recipe_flags(tmp_path: Path) -> None:
    r = recipe(tmp_path, "command: eval\nsamples: 8\ntemperature: 0.6\nbenchmark: [aime24, math500]\n")
    default = build_config(EvalConfig)
    assert (default.samples, default.temperature, default.top_p) == (4, 1.0, 1.0)
    from_recipe = build_config(EvalConfig, r)
    assert (from_recipe.samples, from_recipe.temperature, from_recipe.top_p) == (8, 0.6, 1.0)
    assert from_recipe.benchmark == ["aime24", "math500"]
    flags = build_config(EvalConfig, r, {"samples": 2, "temperature": None, "top_p": 0.9})  # None = flag not given
    assert (flags.samples, flags.temperature, flags.top_p) == (2, 0.6, 0.9)


def test_coercion_of_cli_strings(tmp_path: Path) -> None:
    cfg = build_config(EvalConfig, None, {"run": Path("runs/x"), "steps": "10,20", "benchmark": ["toy,toy-ood"], "think": "false"})
    assert cfg.run == "runs/x" and cfg.steps == [10, 20] and cfg.benchmark == ["toy", "toy-ood"] and cfg.think is False
    with pytest.raises(OpdError, match="expected an integer"):
        build_config(EvalConfig, None, {"samples": "many"})


def test_checks_in_post_init() -> None:
    for bad, msg in [({"samples": 0}, "at least 1"), ({"top_p": 0}, "top-p"), ({"temperature": -1}, "temperature"),
                     ({"limit": -2}, "limit"), ({"model": "m", "run": "r"}, "not both"), ({"steps": [10]}, "needs --run"),
                     ({"model": "m"}, "needs something to evaluate"), ({"samples_per_benchmark": {"aime24": 0}}, "aime24")]:
        with pytest.raises(OpdError, match=msg):
            EvalConfig(**bad)


def test_recipe_for_another_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OpdError, match="is for `opd train`"):
        build_config(EvalConfig, recipe(tmp_path, "command: train\n"))
    assert read_recipe(recipe(tmp_path, "")) == {}
    with pytest.raises(OpdError, match="must be a mapping"):
        build_config(EvalConfig, recipe(tmp_path, "- a\n- b\n"))


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config(EvalConfig, None, {"samples_per_benchmark": {"aime24": 16}, "benchmark": ["aime24"], "model": "m"})
    saved = yaml.safe_load(dump_yaml(cfg))
    assert saved["command"] == "eval"
    again = build_config(EvalConfig, recipe(tmp_path, dump_yaml(cfg)))
    assert again == cfg and again.n_for("aime24") == 16 and again.n_for("math500") == 4


def test_flags_override_recipe_through_the_cli(tmp_path: Path) -> None:
    from opd_cli.cli import app

    r = recipe(tmp_path, "command: eval\nsamples: 0\n")  # invalid in the recipe, fixed by the flag
    res = CliRunner().invoke(app, ["eval", "--recipe", str(r), "--samples", "-3"])
    assert res.exit_code == 2 and "got -3" in res.stderr
