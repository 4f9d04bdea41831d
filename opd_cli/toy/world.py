"""The toy world on disk: a cache folder with the tokenizer, the models, the splits and a manifest.

    <root>/manifest.json        seed, sizes, model shapes, accuracies, sha256 of every file below
    <root>/tokenizer/           the character-level tokenizer
    <root>/teacher/ student/    Qwen3ForCausalLM + tokenizer (save_pretrained); student/ is the larger student
    <root>/student-small/       the compact student (worlds built before it existed lack it)
    <root>/data/{train,dev,test,ood}.jsonl

The manifest is written last, so a folder without one is half-built; any file whose hash differs from the
manifest makes the world invalid. Invalid worlds are never used: :func:`opd_cli.toy.build.ensure_world` rebuilds
them. This module only reads and checks worlds; building them is :mod:`opd_cli.toy.build`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 2: two students (student-small/ beside student/); 3: single-token operations, arithmetic written out
SPLITS = ("train", "dev", "test", "ood")
TOY_STUDENTS = ("large", "small")  # --toy-student values; large is the default everywhere
STUDENT_FOLDERS = {"large": "student", "small": "student-small"}


def check_toy_student(value: str) -> None:
    """One-line OpdError unless ``value`` names a toy student (for configs' ``__post_init__``)."""
    if value not in TOY_STUDENTS:
        raise OpdError(f"--toy-student must be {' or '.join(TOY_STUDENTS)}, got {value!r}")


def run_toy_student(config: dict[str, Any], run: Path | str) -> str:
    """The toy student a run's config.yaml names in ``toy_student`` (runs saved before the field existed: large)."""
    which = str(config.get("toy_student") or "large")
    if which not in TOY_STUDENTS:
        raise OpdError(f"{run}/config.yaml has toy_student {which!r}: it must be {' or '.join(TOY_STUDENTS)}")
    return which


SHIPPED = Path(__file__).resolve().parent / "world"  # the world built once and shipped with opd (package data)
CACHE = Path("~/.cache/opd/toy").expanduser()


def default_root() -> Path:
    """``$OPD_TOY_DIR`` if set, else the world shipped with opd (the same files on every machine), else
    ``~/.cache/opd/toy`` (an install without the shipped world)."""
    env = os.environ.get("OPD_TOY_DIR")
    if env:
        return Path(env).expanduser()
    return SHIPPED if (SHIPPED / MANIFEST).is_file() else CACHE


@dataclass
class ToyWorld:
    root: Path
    teacher_dir: Path
    student_dir: Path
    manifest: dict[str, Any]

    def split_path(self, name: str) -> Path:
        """The jsonl file of split ``name`` (train, dev, test or ood)."""
        if name not in SPLITS:
            raise OpdError(f"unknown toy split {name!r}: use one of {', '.join(SPLITS)}")
        return self.root / "data" / f"{name}.jsonl"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def student_path(self, which: str = "large") -> Path:
        """The folder of the ``large`` (``student/``, = :attr:`student_dir`) or ``small`` (``student-small/``) student.

        A world built before there were two students has no small one: asking for it is an OpdError (the manifest
        must list it, so its files are hash-checked like the rest of the world).
        """
        check_toy_student(which)
        folder = STUDENT_FOLDERS[which]
        if f"{folder}/config.json" not in self.manifest.get("files", {}):
            where = "" if self.root == default_root() else f" --root {self.root}"
            raise OpdError(f"the toy world at {self.root} has no {which} student ({folder}/): it was built before "
                           f"there were two; rebuild it with `opd toy build --rebuild{where}`")
        return self.root / folder


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, keyed by relative posix path."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }


def write_manifest(root: Path, manifest: dict[str, Any], version: int = FORMAT_VERSION) -> dict[str, Any]:
    """Hash the folder's files into ``manifest`` and write it atomically (the last step of a build); ``version``:
    the world's format version (the real-model world has its own)."""
    root = Path(root)
    full = {**manifest, "format_version": version, "files": hash_files(root)}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(full, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)
    return full


TOY_NEEDED = ("teacher/config.json", "student/config.json", "tokenizer/tokenizer.json", *(f"data/{s}.jsonl" for s in SPLITS))


def invalid_reason(root: Path, check_hashes: bool = True) -> str | None:
    """Why the world at ``root`` cannot be used, or None when it is complete and intact."""
    return manifest_reason(root, FORMAT_VERSION, TOY_NEEDED, check_hashes)


def manifest_reason(root: Path, version: int, needed: tuple[str, ...], check_hashes: bool = True) -> str | None:
    """Why the world at ``root`` is not a complete, intact build of format ``version`` whose manifest lists every
    file in ``needed``, or None (shared by the toy and the real-model worlds)."""
    mpath = root / MANIFEST
    if not root.is_dir():
        return f"{root} does not exist"
    if not mpath.is_file():
        return f"{root} has no {MANIFEST} (never built, or the build stopped half-way)"
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return f"{mpath} is not valid JSON"
    if not isinstance(manifest, dict) or manifest.get("format_version") != version:
        return f"{mpath} has another format version than {version}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{mpath} lists no files"
    for rel in needed:
        if rel not in files:
            return f"{mpath} does not list {rel}"
    for rel, digest in files.items():
        p = root / rel
        if not p.is_file():
            return f"{p} is missing"
        if check_hashes and sha256(p) != digest:
            return f"{p} does not match its hash in the manifest (modified or corrupt)"
    return None


def load_world(root: Path | str | None = None) -> ToyWorld:
    """The built world at ``root`` (default :func:`default_root`); OpdError when it is missing, half-built or corrupt."""
    root = Path(root).expanduser() if root is not None else default_root()
    why = invalid_reason(root)
    if why is not None:
        raise OpdError(f"no valid toy world at {root}: {why}; run `opd toy build --root {root}` to (re)build it")
    manifest = json.loads((root / MANIFEST).read_text())
    return ToyWorld(root=root, teacher_dir=root / "teacher", student_dir=root / "student", manifest=manifest)
