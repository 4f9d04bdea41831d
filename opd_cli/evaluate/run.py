"""`opd eval` the command (:func:`run_eval`: a model, a run's checkpoints, or the toy world's student), built on
:mod:`opd_cli.evaluate.model`'s one-model evaluation. ``opd eval --run``: the checkpoints of a training run, each on every
benchmark, and the best one on a dev benchmark recorded in ``run/eval/best.json`` (docs/run-format.md); the further
benchmarks at that best checkpoint; and the cache of step-0 evaluations (the initial student, shared by many runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opd_cli.core.config import dump_yaml, summary_line
from opd_cli.core.errors import OpdError
from opd_cli.core.runs import list_checkpoints, open_run, read_config, step_folder, write_json
from opd_cli.data import Problem, load_problems
from opd_cli.evaluate.config import EvalConfig
from opd_cli.evaluate.model import (
    checkpoint_loader,
    evaluate_model,
    finished_summary,
    load_for_eval,
    model_label,
    print_summary,
    resolve_benchmarks,
    toy_label,
)
from opd_cli.toy.build import toy_model_paths
from opd_cli.toy.world import run_toy_student


def evaluate_run(
    run_dir: str | Path,
    steps: Sequence[int] | None,
    benchmarks: Mapping[str, list[Problem]] | Sequence[str],
    dev_benchmark: str | None = None,
    cfg: EvalConfig | None = None,
    if_exists: str | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Evaluate checkpoints of a run: ``run/eval/step_XXXXXX/<benchmark>.json`` (+ ``.samples.jsonl``) per step and
    ``run/eval/best.json`` = ``{"dev_benchmark", "best_step", "scores": {"<step>": mean_acc}}`` (ties: earliest).

    Step 0 is the run's initial student (``student`` in its config.yaml); ``steps`` None/empty = every complete
    checkpoint. Already evaluated steps follow ``if_exists`` (default ``cfg.if_exists``): raise | resume | overwrite.
    """
    from rich.console import Console

    cfg = cfg or EvalConfig()
    if_exists = if_exists or cfg.if_exists
    console = console or Console()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise OpdError(f"{run_dir} is not a run folder (no config.yaml): pass a folder written by `opd train`")
    if not isinstance(benchmarks, Mapping):
        benchmarks = {b: load_problems(b, None, cfg.limit, cfg.seed) for b in benchmarks}
    if not benchmarks:
        raise OpdError("nothing to evaluate on: pass --benchmark NAME or --data FILE")
    # a run whose best.json picks on a benchmark not evaluated now (more benchmarks at one checkpoint, e.g. test and
    # OOD after 10 steps for a limited-budget row) keeps its pick: only the dev benchmark's scores move it
    picked = best_json(run_dir).get("dev_benchmark")
    keep_pick = dev_benchmark is None and picked is not None and picked not in benchmarks
    dev = dev_benchmark or (picked if picked in benchmarks else next(iter(benchmarks)))
    if dev not in benchmarks and not keep_pick:
        raise OpdError(f"--dev-benchmark {dev} is not among the evaluated benchmarks ({', '.join(benchmarks)}): add it with --benchmark")
    ckpts = dict(list_checkpoints(run_dir))
    wanted = sorted(set(steps)) if steps else ([0] if cfg.initial else []) + sorted(ckpts)
    if not wanted:
        raise OpdError(f"{run_dir} has no complete checkpoints yet: pass --steps 0 to evaluate its initial student")
    targets: list[tuple[int, str]] = []
    for s in wanted:
        if s == 0:
            targets.append((0, initial_student(run_dir, console)))
        elif s in ckpts:
            targets.append((s, str(ckpts[s])))
        else:
            have = ", ".join(str(k) for k in sorted(ckpts)) or "none"
            raise OpdError(f"{run_dir} has no complete checkpoint for step {s} (have: {have})")
    eval_root = run_dir / "eval"
    if if_exists == "raise":
        for s, _ in targets:
            clash = [b for b in benchmarks if finished_summary(eval_root / step_folder(s), b) is not None]
            if clash:
                raise OpdError(
                    f"{eval_root / step_folder(s)} already has results for {', '.join(clash)}: pass --if-exists resume "
                    f"to keep them, --if-exists overwrite to redo them"
                )
    eval_root.mkdir(parents=True, exist_ok=True)
    (eval_root / "eval_config.yaml").write_text(dump_yaml(cfg))
    load = checkpoint_loader(cfg)  # with vLLM, one engine for every checkpoint below
    summaries = []
    for s, model in targets:
        summaries += _evaluate_step(run_dir, s, model, benchmarks, cfg, if_exists, console, load)
    if keep_pick:
        print_summary(summaries, console, title=f"opd eval --run {run_dir}")
        console.print(f"{eval_root / 'best.json'} keeps its pick on {picked} (not evaluated here)")
        return best_json(run_dir)
    best = record_best(run_dir, dev, {s["step"]: s["mean_acc"] for s in summaries if s["benchmark"] == dev})
    if cfg.best_benchmark:
        # the reported splits, always whole: --limit shortens only the per-checkpoint (dev) evaluations, so every
        # row of a table (a base model's, each run's best checkpoint) is scored on the same problems
        extra = {b: load_problems(b, None, 0, cfg.seed) for b in cfg.best_benchmark}
        summaries += evaluate_best(run_dir, best["best_step"], extra, cfg, "overwrite" if if_exists == "overwrite" else "resume",
                                   console, load)
    print_summary(summaries, console, title=f"opd eval --run {run_dir}")
    console.print(f"best step on {dev}: {best['best_step']} (Mean Acc {best['scores'][str(best['best_step'])]:.3f}) -> {eval_root / 'best.json'}")
    return best


def initial_student(run_dir: str | Path, console: Any = None) -> str:
    """The model a run started from (step 0): its config's ``student``, or the toy world's student that its
    ``toy_student`` names (large when absent) when that is empty (``opd train`` / ``opd sft-baseline`` with no
    model arguments)."""
    config = read_config(run_dir)
    if config.get("student"):
        return str(config["student"])
    if config.get("command") in ("train", "sft-baseline"):
        return toy_model_paths(run_toy_student(config, run_dir), console)[0]
    raise OpdError(f"{run_dir}/config.yaml names no `student`, so step 0 cannot be evaluated")


def evaluate_best(
    run_dir: str | Path,
    best_step: int,
    benchmarks: Mapping[str, list[Problem]],
    cfg: EvalConfig,
    if_exists: str = "resume",
    console: Any = None,
    load: Callable[[str], tuple[Any, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate only the best dev checkpoint on further benchmarks (the paper reports each method's test and
    out-of-domain accuracies at the checkpoint its dev score picks). ``load``: a :func:`checkpoint_loader` to
    reuse (its vLLM engine); None = a new one."""
    model = initial_student(run_dir, console) if best_step == 0 else str(dict(list_checkpoints(run_dir))[best_step])
    return _evaluate_step(run_dir, best_step, model, benchmarks, cfg, if_exists, console, load or checkpoint_loader(cfg))


def _evaluate_step(
    run_dir: str | Path, step: int, model: str, benchmarks: Mapping[str, list[Problem]], cfg: EvalConfig,
    if_exists: str, console: Any, load: Callable[[str], tuple[Any, Any]],
) -> list[dict[str, Any]]:
    """One checkpoint on each benchmark into ``run/eval/step_XXXXXX/``; ``resume`` keeps finished benchmarks.
    ``load`` (a :func:`checkpoint_loader`) gives the model, loaded only when some benchmark is evaluated."""
    out = Path(run_dir) / "eval" / step_folder(step)
    summaries, loaded = [], None
    for name, probs in benchmarks.items():
        prev = finished_summary(out, name) if if_exists == "resume" else None
        if prev is not None:
            summaries.append(prev)
            continue
        # step 0 is the initial student, usually shared by many runs: its evaluation is cached by model and settings
        key = _cache_key(model, name, probs, cfg) if step == 0 else None
        if key is not None and (hit := _cache_get(key, out, name)) is not None:
            from rich.console import Console

            (console or Console()).print(f"step 0 on {name}: the cached evaluation of {model} with these settings")
            summaries.append(hit)
            continue
        loaded = loaded or load(model)
        summaries.append(evaluate_model(loaded, probs, cfg, out, name, model_name=model, step=step, console=console))
        if key is not None:
            _cache_put(key, out, name)
    if loaded is not None:  # hf: free this checkpoint before the next one loads (a vLLM engine stays, held by `load`)
        del loaded
        _free_memory()
    return summaries


def eval_cache_dir() -> Path | None:
    """Where step-0 evaluations are cached: ``$OPD_EVAL_CACHE`` ('' or off = no cache), default ~/.cache/opd/eval."""
    import os

    value = os.environ.get("OPD_EVAL_CACHE")
    if value is None:
        return Path.home() / ".cache" / "opd" / "eval"
    return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()


def _cache_key(model: str, benchmark: str, problems: Sequence[Problem], cfg: EvalConfig) -> str | None:
    """A key naming everything that decides an evaluation's samples: the model folder's files (name, size, mtime),
    the problems, and the sampling settings. None (no caching) for hub ids and when the cache is off."""
    import hashlib

    from opd_cli import __version__

    folder = Path(model)
    if eval_cache_dir() is None or not folder.is_dir():
        return None
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
    blob = json.dumps({
        "opd": __version__, "model": str(folder.resolve()), "files": files, "benchmark": benchmark,
        "problems": hashlib.sha256(json.dumps([(p.id, p.question, p.answer) for p in problems]).encode()).hexdigest(),
        "settings": [cfg.n_for(benchmark), cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.backend, cfg.template,
                     cfg.think, cfg.dtype, cfg.device, cfg.seed],
    })
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cache_get(key: str, out: Path, benchmark: str) -> dict[str, Any] | None:
    import shutil

    root = eval_cache_dir()
    src = root / key if root is not None else None
    if src is None or finished_summary(src, benchmark) is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (".samples.jsonl", ".json"):  # summary last: finished_summary() sees both or neither
        shutil.copyfile(src / f"{benchmark}{suffix}", out / f"{benchmark}{suffix}")
    return finished_summary(out, benchmark)


def _cache_put(key: str, out: Path, benchmark: str) -> None:
    import os
    import shutil

    root = eval_cache_dir()
    if root is None:
        return
    tmp = root / f"{key}.tmp{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for suffix in (".samples.jsonl", ".json"):
            shutil.copyfile(out / f"{benchmark}{suffix}", tmp / f"{benchmark}{suffix}")
        dst = root / key
        if not dst.exists():
            os.replace(tmp, dst)
    except OSError:  # a read-only or full cache only costs the reuse
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def best_json(run_dir: str | Path) -> dict[str, Any]:
    """``run/eval/best.json`` as written by :func:`record_best`; {} when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / "eval" / "best.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def record_best(run_dir: str | Path, dev_benchmark: str, scores: Mapping[int, float]) -> dict[str, Any]:
    """Merge ``scores`` (step -> dev Mean Acc) into ``run/eval/best.json`` and pick the best step (ties: earliest)."""
    f = Path(run_dir) / "eval" / "best.json"
    merged: dict[str, float] = {}
    if f.is_file():
        try:
            old = json.loads(f.read_text())
            if old.get("dev_benchmark") == dev_benchmark:
                merged.update({str(k): v for k, v in old.get("scores", {}).items() if v is not None})
        except json.JSONDecodeError:
            pass
    merged.update({str(k): float(v) for k, v in scores.items()})
    ordered = dict(sorted(merged.items(), key=lambda kv: int(kv[0])))
    best_step = max(ordered, key=lambda k: (ordered[k], -int(k)))
    best = {"dev_benchmark": dev_benchmark, "best_step": int(best_step), "scores": ordered}
    write_json(f, best)
    return best


def run_eval(cfg: EvalConfig) -> list[dict[str, Any]] | dict[str, Any]:
    """`opd eval`: a model (hub id or folder), a run's checkpoints, or by default the toy world's student."""
    from rich.console import Console

    console = Console()
    if cfg.run is not None:
        benchmarks = resolve_benchmarks(cfg, default=[cfg.dev_benchmark] if cfg.dev_benchmark else ["toy"])
        console.print(summary_line(cfg, Path(cfg.run) / "eval" / "eval_config.yaml"), markup=False, highlight=False)
        return evaluate_run(cfg.run, cfg.steps, benchmarks, cfg.dev_benchmark, cfg, console=console)
    benchmarks = resolve_benchmarks(cfg, default=["toy"])
    if cfg.model is not None:
        model, label = cfg.model, model_label(cfg.model)
    else:
        model, label = toy_model_paths(cfg.toy_student, console)[cfg.toy_model == "teacher"], toy_label(cfg.toy_model, cfg.toy_student)
    loaded = load_for_eval(model, cfg)  # a bad path fails here, before the output folder is created
    run = open_run(cfg.output_dir or f"runs/eval-{label}", cfg.if_exists, cfg)
    console.print(summary_line(cfg, run.config_file), markup=False, highlight=False)
    summaries = []
    for name, probs in benchmarks.items():
        prev = finished_summary(run.path / "eval", name) if run.resumed else None
        summaries.append(prev if prev is not None else
                         evaluate_model(loaded, probs, cfg, run.path / "eval", name, model_name=model, console=console))
    print_summary(summaries, console)
    console.print(f"results: {run.path / 'eval'}")
    return summaries
