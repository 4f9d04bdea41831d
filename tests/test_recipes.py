"""Every recipe in recipes/ loads and validates against its command's config class.

The rule (for anyone adding a recipe):
  1. the file's first line is a comment showing the command that runs it, e.g. ``# opd eval --recipe recipes/x.yaml``;
  2. the file sets ``command: <name>`` (the `opd` subcommand: eval, train, sft-baseline, ...);
  3. that command's config is a dataclass somewhere in ``opd_cli`` with the class attribute ``command = "<name>"``.
This test finds the class by (3) — no list to update here — and builds it with ``build_config(cls, recipe)``, so
unknown fields, bad types and ``__post_init__`` checks all fail the test. A recipe that needs a flag the command
requires (say ``--model``) should still validate on its own; if it cannot, list the flag in ``EXTRA`` below.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path

import pytest
import yaml

import opd_cli
from opd_cli.core.config import build_config

# accelerate-*.yaml are `accelerate launch` configs, not opd recipes (tests/test_sharded.py loads them)
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.y*ml") if not p.name.startswith("accelerate-"))
# recipe file name -> flags it is always run with (what the command line would add)
EXTRA: dict[str, dict] = {"eval-paper.yaml": {"run": "runs/train-paper-8b-prefix512"}, "eval-real.yaml": {"run": "runs/train-real-prefix"}}


def _reraise(name: str) -> None:
    """walk_packages' onerror: called inside its ``except`` block, so a bare raise re-raises the import error."""
    raise


def config_classes() -> dict[str, type]:
    """command name -> config dataclass, from every module of opd_cli.

    A module that fails to import fails the test with its own error (not "no config dataclass with command = ..."):
    walk_packages would otherwise skip a package whose import raises ImportError."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(opd_cli.__path__, "opd_cli.", onerror=_reraise):
        mod = importlib.import_module(info.name)
        for obj in vars(mod).values():
            cmd = getattr(obj, "command", None)
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and isinstance(cmd, str) and obj.__module__ == mod.__name__:
                found.setdefault(cmd, obj)
    return found


def test_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"eval-paper.yaml", "eval-toy.yaml"} <= names


@pytest.fixture
def vllm_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recipes that name `backend: vllm` validate whether or not this machine has the vllm extra: the extra is
    checked when a command runs (tests/test_cli.py checks that message), the recipe's fields here."""
    monkeypatch.setattr("opd_cli.core.generation.vllm_available", lambda: True)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates(path: Path, vllm_extra: None) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# opd ") and "--recipe" in first and path.name in first, f"{path.name}: first line must show its command"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and "command" in data, f"{path.name} must set `command:`"
    classes = config_classes()
    assert data["command"] in classes, f"{path.name}: no config dataclass with command = {data['command']!r} in opd_cli"
    assert f"opd {data['command']} " in first + " ", f"{path.name}: the first line runs another command than `command:`"
    cfg = build_config(classes[data["command"]], path, EXTRA.get(path.name, {}))
    from opd_cli.core.config import to_dict

    resolved = to_dict(cfg)
    differs = {k: (v, resolved.get(k)) for k, v in data.items() if resolved.get(k) != v and str(resolved.get(k)) != str(v)}
    assert not differs, f"{path.name}: fields read differently from the file: {differs}"


def test_paper_eval_settings(vllm_extra: None) -> None:
    from opd_cli.evaluate.config import EvalConfig

    cfg = build_config(EvalConfig, Path(__file__).resolve().parents[1] / "recipes" / "eval-paper.yaml", {"model": "m"})
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.backend) == (1.0, 1.0, 16384, "vllm")
    assert {b: cfg.n_for(b) for b in cfg.benchmark} == {"aime24": 16, "aime25": 16, "math500": 4, "gpqa": 4, "mmlu-pro": 4}
    assert cfg.dev_benchmark == "aime24"


def test_toy_opd_recipes_share_lr_steps_and_batch() -> None:
    """The toy OPD recipes share one lr (picked by the Fig. 7 sweep), one batch and one response cap; the paper's
    experiments run 80 steps, the Rethinking-OPD ones (train-toy-rethink-*) 30."""
    toy = [p for p in RECIPES if p.name.startswith("train-toy-")]
    assert {p.name for p in toy} >= {"train-toy-full.yaml", "train-toy-prefix.yaml", "train-toy-schedule.yaml"}
    loaded = {p.name: yaml.safe_load(p.read_text()) for p in toy}
    shared = {(d["lr"], d["batch_size"], d["max_new_tokens"]) for d in loaded.values()}
    assert shared == {(1e-4, 64, 192)}, shared
    steps = {name: d["steps"] for name, d in loaded.items()}
    assert {s for n, s in steps.items() if not n.startswith("train-toy-rethink-")} == {80}
    assert {s for n, s in steps.items() if n.startswith("train-toy-rethink-")} == {30}


def test_toy_prefix_recipe_covers_every_plan() -> None:
    """recipes/train-toy-prefix.yaml is the plan-covering L: the longest toy plan is 8 operations + plan: + newline."""
    from opd_cli.toy.task import SPLIT_SHAPE

    longest_plan = max(hi for _, hi in SPLIT_SHAPE.values()) + 2
    assert yaml.safe_load((RECIPES[0].parent / "train-toy-prefix.yaml").read_text())["prefix"] == longest_plan
