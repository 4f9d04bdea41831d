"""Run folders: one layout that every command writes and that `opd plot` and `analysis/` read.

    runs/<name>/config.yaml          resolved config (``command:`` names the subcommand)
    runs/<name>/metrics.jsonl        one JSON object per line, each with a ``step``
    runs/<name>/checkpoints/step_000010/   complete checkpoints only (written to a temp dir, then renamed)
    runs/<name>/eval/...             evaluation summaries and per-sample files
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opd_cli.core.config import differing_keys, dump_yaml, to_dict, with_defaults
from opd_cli.core.errors import OpdError

IF_EXISTS = ("raise", "resume", "overwrite")
CKPT_PREFIX = "step_"
COMPLETE_MARK = "COMPLETE"


def step_folder(step: int) -> str:
    """The folder name of a step, under checkpoints/ and eval/: step_000010."""
    return f"{CKPT_PREFIX}{step:06d}"


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


@dataclass
class RunDir:
    path: Path
    resumed: bool = False

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, cfg: Any) -> None:
        self.config_file.write_text(dump_yaml(cfg))

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics line (must carry ``step``)."""
        if "step" not in record:
            raise ValueError("metrics records need a 'step'")
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(_finite(record), default=_json_default) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metrics lines past ``after_step`` (resume replays them from the checkpoint)."""
        keep = [r for r in self.read_metrics() if r["step"] <= after_step]
        tmp = self.metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.metrics_file)

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / step_folder(step)

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        return list_checkpoints(self.path)

    def last_checkpoint(self) -> tuple[int, Path] | None:
        ckpts = self.list_checkpoints()
        return ckpts[-1] if ckpts else None

    def resume_point(self, write: bool = True) -> tuple[int, Path, dict[str, float]] | None:
        """Where a resumed run continues: (step, folder, totals) of its last complete checkpoint, or None to start
        over. The metrics lines logged past that step are dropped (all of them when there is no checkpoint), and
        ``totals`` holds the ``flops_total`` and ``wall_time`` logged at it, so the running counters go on from
        there. ``write=False`` (the other processes of a multi-process run) only reads."""
        if not self.resumed:
            return None
        last = self.last_checkpoint()
        if write and self.metrics_file.exists():
            self.truncate_metrics(last[0] if last else 0)
        if last is None:
            return None
        rows = [r for r in self.read_metrics() if r["step"] == last[0]]
        totals = {k: float(rows[-1].get(k) or 0.0) for k in ("flops_total", "wall_time")} if rows else {}
        return (*last, totals)

    def commit(self, tmp_dir: Path, step: int, optimizer_states: str = "all") -> Path:
        """Move a fully written checkpoint folder into checkpoints/ as ``step`` (:func:`commit_checkpoint`).
        ``optimizer_states="last"``: then drop the optimizer state of every older checkpoint (their weights stay,
        for evaluation; a resume reads only the newest), which is most of a checkpoint's size under Adam."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        commit_checkpoint(tmp_dir, self.checkpoint_dir(step))
        if optimizer_states == "last":
            for older, folder in list_checkpoints(self.path):
                if older < step:
                    drop_optimizer_state(folder)
        return self.checkpoint_dir(step)


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    f = Path(run) / "metrics.jsonl"
    if not f.is_file():
        return []
    out = []
    for line in f.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
    return out


def read_config(run: str | Path) -> dict[str, Any]:
    f = Path(run) / "config.yaml"
    if not f.is_file():
        return {}
    return yaml.safe_load(f.read_text()) or {}


def list_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. A checkpoint is complete when its COMPLETE marker exists."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith(CKPT_PREFIX) and (d / COMPLETE_MARK).exists():
            try:
                out.append((int(d.name[len(CKPT_PREFIX) :]), d))
            except ValueError:
                continue
    return sorted(out)


OPTIMIZER_STATES = ("last", "all")


def drop_optimizer_state(folder: Path) -> None:
    """Remove a checkpoint's optimizer state: transformers' optimizer.pt, accelerate's sharded optimizer_<i> folders."""
    for entry in folder.glob("optimizer*"):
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def commit_checkpoint(tmp_dir: Path, final_dir: Path) -> None:
    """Mark ``tmp_dir`` complete and move it into place atomically: a kill mid-write leaves only a temp folder."""
    (tmp_dir / COMPLETE_MARK).write_text("")
    swap_in(tmp_dir, final_dir)


def swap_in(tmp_dir: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by the fully written ``tmp_dir`` (a rename: readers never see a half-written folder)."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def open_run(
    output_dir: str | Path, if_exists: str, cfg: Any, resumable: bool = True, compare_ignore: tuple[str, ...] = ()
) -> RunDir:
    """Create (or reopen) a run folder according to ``--if-exists``.

    raise: refuse an existing, non-empty folder. overwrite: delete it and start again. resume: reopen it; the
    saved config must match ``cfg`` except for fields in ``compare_ignore`` (and ``if_exists`` itself).
    """
    path = Path(output_dir)
    if if_exists not in IF_EXISTS:
        raise OpdError(f"--if-exists must be one of {', '.join(IF_EXISTS)}, got {if_exists!r}")
    exists = path.exists() and any(path.iterdir()) if path.is_dir() else path.exists()
    if exists and not path.is_dir():
        raise OpdError(f"{path} exists and is not a folder: choose another --output-dir")
    if exists and if_exists == "raise":
        raise OpdError(
            f"run folder {path} already exists: pass --if-exists resume to continue it, "
            f"--if-exists overwrite to replace it, or choose another --output-dir"
        )
    if exists and if_exists == "resume":
        if not resumable:
            raise OpdError(f"`opd {getattr(cfg, 'command', '')}` cannot resume: use --if-exists overwrite or a new --output-dir")
        saved = with_defaults(read_config(path), cfg)  # a field added since the run was saved: its default
        diff = differing_keys(saved, to_dict(cfg), {"if_exists", *compare_ignore})
        if saved and diff:
            raise OpdError(
                f"cannot resume {path}: its config differs in {', '.join(diff)}; "
                f"rerun with the saved settings ({path / 'config.yaml'}) or use another --output-dir"
            )
        run = RunDir(path, resumed=True)
        run.write_config(cfg)
        return run
    if exists and if_exists == "overwrite":
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path)
    run.write_config(cfg)
    return run


def iter_run_dirs(paths: list[str | Path]) -> Iterator[Path]:
    """Expand arguments into run folders: a run folder itself, or every run folder directly under a folder."""
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            yield p
        elif p.is_dir():
            yield from sorted(d for d in p.iterdir() if (d / "config.yaml").is_file())


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)

