"""Reading run folders for `opd plot`: which folders are runs, and their labels, metrics, eval scores and CSV files.

Only the files a command wrote are read (docs/run-format.md); a missing file is a one-line ``OpdError``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opd_cli.core.errors import OpdError
from opd_cli.core.log import logger

if TYPE_CHECKING:
    from opd_cli.plot.config import PlotConfig


def at_step(run: Path) -> tuple[Path, int | None]:
    """``runs/x@10`` -> (``runs/x``, 10): a run read at a fixed checkpoint (a main-table row such as the paper's
    "full OPD, 10 steps") instead of at its best; a plain folder -> (folder, None)."""
    name, sep, step = run.name.rpartition("@")
    if sep and step.isdigit():
        return run.with_name(name), int(step)
    return run, None


def run_folders(paths: list[str], needs: str = "") -> list[tuple[Path, bool]]:
    """Expand arguments into ``(folder, named)`` pairs: a run folder (config.yaml, or the analysis file ``needs``)
    is taken as named; a folder of runs contributes each run under it. Missing paths and empty folders are errors.
    ``RUN@STEP`` names a run read at one checkpoint (:func:`at_step`)."""
    missing = [p for p in paths if not at_step(Path(p))[0].exists()]
    if missing:
        raise OpdError(f"run folder(s) not found: {', '.join(missing)}")

    def is_run(d: Path) -> bool:
        return (d / "config.yaml").is_file() or bool(needs and (d / needs).is_file())

    found: list[tuple[Path, bool]] = []
    for p in map(Path, paths):
        if is_run(at_step(p)[0]):
            found.append((p, True))
        elif p.is_dir():
            found.extend((d, False) for d in sorted(p.iterdir()) if d.is_dir() and is_run(d))
    if not found:
        what = "config.yaml" + (f" or {needs}" if needs else "")
        raise OpdError(f"no run folders in {', '.join(paths)} (a run folder has a {what})")
    return found


def collect(cfg: PlotConfig, load: Callable[[Path], Any], needs: str = "") -> list[tuple[Path, Any]]:
    """``load`` every run; a run found inside a folder of runs that lacks the data is skipped with a note,
    a run named on the command line that lacks it is an error, and so is having nothing left."""

    out, skipped = [], []
    for run, named in run_folders(cfg.runs, needs):
        try:
            out.append((run, load(run)))
        except OpdError as err:
            if named:
                raise
            skipped.append(str(err))
    for msg in skipped:
        logger.warning(f"skipped: {msg}")
    if not out:
        raise OpdError(f"no run in {', '.join(cfg.runs)} has what `opd plot {cfg.kind}` needs: {skipped[0]}")
    return out


def label(run: Path) -> str:
    """Method label: the config's ``name`` (an SFT run's prefixed with "sft"), a model evaluated without training
    as "base <model>", else the folder name; runs of the toy world's small student end in " (small)"."""
    from opd_cli.core.runs import read_config

    config = read_config(run)
    small = " (small)" if config.get("toy_student") == "small" else ""
    if config.get("command") == "eval" and not config.get("name"):
        model = config.get("model") or f"toy {config.get('toy_model', 'student')}{small}"
        return f"base: {Path(str(model)).name if config.get('model') else model}"
    name = str(config.get("name") or run.name)
    if config.get("command") == "sft-baseline" and not name.lower().startswith("sft"):
        return f"sft {name}{small}"
    return f"{name}{small}"


def metrics_by_step(run: Path) -> dict[int, dict[str, Any]]:
    from opd_cli.core.runs import read_metrics

    out: dict[int, dict[str, Any]] = {}
    for r in read_metrics(run):
        if isinstance(r.get("step"), (int, float)):
            out[int(r["step"])] = r  # last line per step wins (resumed runs)
    return out


def eval_scores(run: Path, benchmark: str) -> dict[int, float]:
    """``{step: mean_acc}`` from ``eval/step_*/<benchmark>.json``."""
    out: dict[int, float] = {}
    root = run / "eval"
    if root.is_dir():
        for d in root.glob("step_*"):
            f = d / f"{benchmark}.json"
            if f.is_file():
                try:
                    out[int(d.name[len("step_") :])] = float(json.loads(f.read_text())["mean_acc"])
                except (ValueError, KeyError, json.JSONDecodeError):
                    raise OpdError(f"{f} is not an eval summary with mean_acc: re-run opd eval") from None
    return dict(sorted(out.items()))


def best_info(run: Path) -> dict[str, Any]:
    f = run / "eval" / "best.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        raise OpdError(f"{f} is not valid JSON: re-run opd eval --run {run}") from None


def dev_benchmark(run: Path, cfg: PlotConfig) -> str:
    name = cfg.dev_benchmark or best_info(run).get("dev_benchmark")
    if not name:
        raise OpdError(f"run {run}: no dev benchmark (no eval/best.json): pass --dev-benchmark, e.g. aime24 or toy")
    return str(name)


def dev_curve(run: Path, cfg: PlotConfig) -> tuple[str, dict[int, float]]:
    bench = dev_benchmark(run, cfg)
    scores = eval_scores(run, bench)
    if not scores:
        raise OpdError(f"run {run} has no eval/step_*/{bench}.json: run `opd eval --run {run}` first")
    return bench, scores


def flops_at(run: Path, steps: list[int], key: str = "flops_total") -> dict[int, float]:
    """Cumulative training FLOPs (metrics ``flops_total``, or another running total such as ``wall_time``) at each
    step; step 0 costs nothing."""
    m = metrics_by_step(run)
    out, lacking = {}, []
    for s in steps:
        if s == 0:
            out[s] = 0.0
        elif m.get(s, {}).get(key) is None:
            lacking.append(s)
        else:
            out[s] = float(m[s][key])
    if lacking:
        raise OpdError(f"run {run}: metrics.jsonl has no {key} at step(s) {', '.join(map(str, lacking))}")
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
