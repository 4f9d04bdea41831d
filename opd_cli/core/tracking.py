"""Experiment trackers and the Hub, shared by `opd train` and `opd sft-baseline`.

Trackers are transformers' own reporting callbacks (``report_to``): opd only chooses them, checks that their package
is installed before any work starts, points TensorBoard at the run folder and hands them the same scalars it writes
to ``metrics.jsonl`` (which stays the file ``opd plot`` reads). Pushing uploads a finished model folder with
``huggingface_hub``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from opd_cli.core.config import check

TRACKERS = ("tensorboard", "wandb", "trackio")
# tracker -> packages of which one must be importable (transformers' own availability checks)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}
TENSORBOARD_DIR = "tensorboard"  # inside the run folder
# where a run reports and whether it is pushed: a run resumed with other choices is still the same run
TRACKING_FIELDS = ("report_to", "push_to_hub", "hub_model_id")


def parse_report_to(values: Iterable[str] | str | None) -> list[str]:
    """The trackers named in ``values`` (repeated or comma-separated; ``none`` = no tracker), checked and installed."""
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values or []:
        for name in str(value).split(","):
            name = name.strip().lower()
            if name and name != "none" and name not in names:
                names.append(name)
    for name in names:
        check(name in TRACKERS, f"unknown --report-to {name!r}: use none or any of {', '.join(TRACKERS)}")
        check(any(importlib.util.find_spec(p) is not None for p in PACKAGES[name]),
              f"--report-to {name} needs the {PACKAGES[name][0]} package: pip install {PACKAGES[name][0]}")
    return names


def check_hub(push_to_hub: bool, hub_model_id: str | None) -> None:
    check(not hub_model_id or hub_model_id.count("/") == 1 and all(hub_model_id.split("/")),
          f"--hub-model-id must be owner/name, got {hub_model_id!r}")
    check(not push_to_hub or bool(hub_model_id), "--push-to-hub needs --hub-model-id owner/name")


def training_args(report_to: list[str], name: str) -> dict[str, Any]:
    """The TrainingArguments fields that choose the trackers."""
    return {"report_to": report_to or "none", "run_name": name}


def point_tensorboard(trainer: Any, run_path: Path) -> None:
    """Make transformers' TensorBoard callback (if any) write into ``run_path/tensorboard``."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(Path(run_path) / TENSORBOARD_DIR)


def tracker_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics.jsonl record (lists, None and the step itself left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def push_folder(folder: Path, hub_model_id: str, message: str) -> str:
    """Create ``hub_model_id`` if needed and upload ``folder`` to it; returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(hub_model_id, exist_ok=True)
    api.upload_folder(repo_id=hub_model_id, folder_path=str(folder), commit_message=message)
    return str(url)
