"""`opd toy build`: tokenizer, splits, a trained teacher and two plan-weak students, checked and cached with a manifest.

The teacher is trained (SFT) on full solutions (correct plan, then its execution). Both students, a larger one
(``student/``) and a compact one (``student-small/``), are trained on solutions whose plans swap neighbouring
operations, so they execute a plan well but plan wrongly: their errors sit in the plan, the first ~10 % of the
answer's tokens, which is what prefix OPD can fix. Everything runs on a fixed number of torch threads, so one seed gives one world.

:func:`ensure_world` and :func:`toy_model_paths` give every other command the cached world, building it on first use
(reading and checking a built world is :mod:`opd_cli.toy.world`'s).
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.toy.world import ToyWorld, default_root, invalid_reason, load_world, write_manifest


@dataclass
class ToyBuildConfig:
    command = "toy build"

    root: str = field("", help="Folder of the world ('' = $OPD_TOY_DIR, else the world shipped with opd; --rebuild then builds over it).")
    seed: int = field(0, help="Seed of the splits and the models; a failed teacher retries with seed + 1000*attempt.")
    rebuild: bool = field(False, help="Build even when a valid world with these settings is cached (false = reuse it).")
    train_size: int = field(20000, help="Training problems (count).")
    eval_size: int = field(200, help="Problems in each of dev, test and ood (count).")
    teacher_layers: int = field(4, help="Teacher transformer layers.")
    teacher_hidden: int = field(128, help="Teacher hidden width.")
    teacher_heads: int = field(4, help="Teacher attention heads.")
    teacher_steps: int = field(1000, help="Most teacher SFT steps (optimizer steps); early stopping usually ends it sooner.")
    teacher_min_steps: int = field(200, help="Teacher steps before the first early-stop check (steps).")
    student_layers: int = field(3, help="Larger student (--toy-student large): transformer layers.")
    student_hidden: int = field(128, help="Larger student: hidden width.")
    student_heads: int = field(4, help="Larger student: attention heads.")
    student_steps: int = field(700, help="Larger student: SFT steps (optimizer steps).")
    small_layers: int = field(2, help="Compact student (--toy-student small): transformer layers.")
    small_hidden: int = field(96, help="Compact student: hidden width.")
    small_heads: int = field(4, help="Compact student: attention heads.")
    small_steps: int = field(700, help="Compact student: SFT steps (optimizer steps).")
    student_correct_frac: float = field(0.0, help="Fraction of student training solutions with the correct plan (0 = none).")
    batch_size: int = field(32, help="SFT sequences per step.")
    teacher_lr: float = field(1e-3, help="Teacher SFT learning rate, constant after warmup (AdamW).")
    student_lr: float = field(1e-3, help="Student SFT learning rate, constant after warmup (AdamW).")
    warmup: int = field(20, help="Linear lr warmup (steps).")
    cooldown: float = field(0.15, help="Final fraction of each SFT run with lr decaying linearly to 0 (0 = constant lr).")
    check_every: int = field(25, help="Teacher early-stop check interval (steps; 0 = never stop early).")
    check_size: int = field(100, help="Dev problems scored at each check (greedy exact match, teacher-forced: one forward pass).")
    stop_acc: float = field(0.5, help="Dev greedy accuracy at a check that starts the teacher's final cooldown (fraction): "
                            "the op lookup, once it appears, is learnt within ~50 steps, and a decaying lr settles it.")
    stop_cooldown: int = field(500, help="Most teacher steps after the passing check, lr decaying linearly to 0 (steps).")
    done_sampled: float = field(0.9, help="A check at least `done_after` steps into the cooldown at which sampling at temperature 1 "
                                "reproduces the dev references with this mean probability ends it early (fraction; 1 = off).")
    done_after: int = field(100, help="Cooldown steps before `done_sampled` may end the teacher's training (steps).")
    max_attempts: int = field(2, help="Teacher (and student) training attempts before failing (count).")
    min_teacher_acc: float = field(0.9, help="Teacher test accuracy required at temperature 1 (fraction; 0 = off).")
    min_student_acc: float = field(0.05, help="Lowest student test accuracy accepted (fraction; 0 = off).")
    max_student_acc: float = field(0.4, help="Highest student test accuracy accepted (fraction; 1 = off).")
    max_new_tokens: int = field(256, help="Response cap when sampling test answers (tokens).")
    threads: int = field(2, help="torch CPU threads, fixed: the thread count changes the numerics, so one seed gives one world (identical files) only at one count (0 = every core).")

    def __post_init__(self) -> None:
        for name in ("train_size", "eval_size", "teacher_layers", "teacher_hidden", "teacher_heads", "teacher_steps",
                     "student_layers", "student_hidden", "student_heads", "student_steps", "batch_size",
                     "small_layers", "small_hidden", "small_heads", "small_steps",
                     "check_size", "max_attempts", "max_new_tokens", "stop_cooldown"):
            check(getattr(self, name) >= 1, f"toy build: {name} must be >= 1, got {getattr(self, name)}")
        check(self.teacher_hidden % self.teacher_heads == 0, "toy build: teacher_hidden must be a multiple of teacher_heads")
        check(self.student_hidden % self.student_heads == 0, "toy build: student_hidden must be a multiple of student_heads")
        check(self.small_hidden % self.small_heads == 0, "toy build: small_hidden must be a multiple of small_heads")
        check(self.teacher_lr > 0 and self.student_lr > 0, "toy build: teacher_lr and student_lr must be > 0")
        for name in ("warmup", "check_every", "teacher_min_steps", "threads", "done_after"):
            check(getattr(self, name) >= 0, f"toy build: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("cooldown", "student_correct_frac", "stop_acc", "done_sampled", "min_teacher_acc", "min_student_acc", "max_student_acc"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0, f"toy build: {name} must be a fraction in [0, 1], got {v}")
        check(self.min_student_acc <= self.max_student_acc, "toy build: min_student_acc must be <= max_student_acc")

    def root_path(self) -> Path:
        return Path(self.root).expanduser() if self.root else default_root()

    @classmethod
    def miniature(cls, root: Path | str) -> ToyBuildConfig:
        """Tiny models, a few dozen steps, no acceptance thresholds: a complete world in seconds (tests, smokes)."""
        return cls(
            root=str(root), rebuild=True, train_size=256, eval_size=16,
            teacher_layers=1, teacher_hidden=32, teacher_heads=2, teacher_steps=30, teacher_min_steps=30, stop_cooldown=5,
            student_layers=1, student_hidden=32, student_heads=2, student_steps=20,
            small_layers=1, small_hidden=16, small_heads=2, small_steps=10,
            batch_size=8, warmup=2, check_every=0, max_attempts=1, min_teacher_acc=0.0,
            min_student_acc=0.0, max_student_acc=1.0, max_new_tokens=200, threads=1,
        )


def _sizes(cfg: ToyBuildConfig) -> dict[str, int]:
    return {"train": cfg.train_size, "dev": cfg.eval_size, "test": cfg.eval_size, "ood": cfg.eval_size}


def _test_accuracy(model: Any, tok: Any, records: list[dict[str, Any]], cfg: ToyBuildConfig, seed: int) -> float:
    from opd_cli.core.generation import sample
    from opd_cli.core.grading import math_accuracy
    from opd_cli.core.prompts import build_prompt

    prompts = [build_prompt(tok, r["question"]) for r in records]
    groups = sample(model, tok, prompts, n=1, max_new_tokens=cfg.max_new_tokens, batch_size=100, seed=seed)
    texts = [g[0].text for g in groups]
    return math_accuracy(texts, [r["answer"] for r in records])


# role -> (config field prefix, folder): the larger student keeps the folder every command has always read
FIELDS = {"teacher": "teacher", "student": "student", "student_small": "small"}
FOLDERS = {"teacher": "teacher", "student": "student", "student_small": "student-small"}


def _train(
    role: str, cfg: ToyBuildConfig, tok: Any, data: list, seed: int, dev: list[dict[str, Any]], progress: Any,
) -> tuple[Any, dict[str, Any]]:
    """One SFT run of the teacher or the student.

    The teacher is checked every ``check_every`` steps (from ``teacher_min_steps``) on dev by teacher-forced greedy
    exact match; the first check at ``stop_acc`` or more starts a ``stop_cooldown``-step lr decay, then training
    ends, or earlier at a check ``done_after`` or more steps into the decay where the dev references' mean probability
    under sampling at temperature 1 reaches ``done_sampled`` (the build accepts the teacher by sampled accuracy).
    Whether (and when) the teacher learns the op lookup is stochastic, so this trains as long as needed, not a fixed
    budget.
    """
    from opd_cli.toy.tiny_qwen import encode_pairs, random_model, sft, teacher_forced_scores

    layers, hidden, heads, steps = (getattr(cfg, f"{FIELDS[role]}_{k}") for k in ("layers", "hidden", "heads", "steps"))
    model = random_model(tok, layers, hidden, heads, seed=seed)
    task = progress.add_task(f"{role} SFT (seed {seed})", total=steps)
    info: dict[str, Any] = {"steps": 0, "dev_checks": {}, "dev_sampled": {}}
    checking = role == "teacher" and cfg.check_every > 0
    dev_data = encode_pairs(tok, [(r["question"], r["solution"]) for r in dev[: cfg.check_size]]) if checking else []
    check_seconds = 0.0

    def on_step(step: int, loss: float) -> int | None:
        nonlocal check_seconds
        info["steps"], info["final_loss"] = step, loss
        progress.update(task, completed=step, description=f"{role} SFT (seed {seed}) loss {loss:.3f}")
        if not checking or step < cfg.teacher_min_steps or step % cfg.check_every:
            return None
        t = time.time()
        acc, sampled = teacher_forced_scores(model, dev_data, tok.pad_token_id)
        check_seconds += time.time() - t
        info["dev_checks"][str(step)] = acc
        info["dev_sampled"][str(step)] = round(sampled, 4)
        if "stopped_at" in info:
            if step - info["stopped_at"] >= cfg.done_after and sampled >= cfg.done_sampled:
                info["done_at"] = step
                return 0  # settled: end now
            return None
        if acc >= cfg.stop_acc and step < steps:
            info["stopped_at"] = step
            progress.update(task, total=min(steps, step + cfg.stop_cooldown))
            return cfg.stop_cooldown
        return None

    sft(model, data, steps=steps, batch_size=cfg.batch_size, lr=cfg.teacher_lr if role == "teacher" else cfg.student_lr, warmup=cfg.warmup,
        cooldown=cfg.cooldown, seed=seed, pad_id=tok.pad_token_id, on_step=on_step)
    model.eval()
    if checking:
        info["check_seconds"] = round(check_seconds, 1)
    progress.update(task, total=info["steps"], completed=info["steps"])
    return model, info


def run_toy_build(cfg: ToyBuildConfig, console: Any = None) -> Any:
    """Build (or reuse) the toy world at ``cfg.root``; returns the :class:`~opd_cli.toy.world.ToyWorld`."""
    from rich.console import Console

    console = console or Console()
    root = cfg.root_path()
    if not cfg.rebuild:
        why = invalid_reason(root)
        if why is None:
            world = load_world(root)
            if _same_world(world.manifest.get("config"), cfg):
                _report(console, world, reused=True)
                return world
            why = "it was built with other settings"
        console.print(f"toy world at {root}: {why}; building it")

    import os

    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        world = _build(cfg, root, console)
    finally:
        torch.set_num_threads(old_threads)
    _report(console, world, reused=False)
    return world


def ensure_world(
    root: Path | str | None = None, seed: int | None = None, console: Any = None, rebuild: bool = False
) -> ToyWorld:
    """A valid toy world at ``root``: the cached one when it is valid (and, if ``seed`` is given, was built from
    ``seed``), else a new build from ``seed`` (None: 0).

    Commands pass no seed: "the toy world" is whichever one `opd toy build --seed N` left in the cache, and a
    world built from another seed must not be silently replaced by the next train/eval call.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    if not rebuild:
        why = invalid_reason(root)
        if why is None:
            world = load_world(root)
            if seed is None or world.manifest.get("requested_seed") == seed:
                return world
            why = f"it was built from seed {world.manifest.get('requested_seed')}, not {seed}"
        if console is not None:
            console.print(f"toy world at {root}: {why}; building it")
    return run_toy_build(ToyBuildConfig(root=str(root), seed=0 if seed is None else seed, rebuild=True), console=console)


def toy_model_paths(student: str = "large", console: Any = None) -> tuple[str, str]:
    """(student, teacher) folders of the toy world every command uses, building it on first use;
    ``student`` = large | small."""
    world = ensure_world(console=console)
    return str(world.student_path(student)), str(world.teacher_dir)


def _build(cfg: ToyBuildConfig, root: Path, console: Any) -> Any:
    from opd_cli.core.log import progress_bar
    from opd_cli.toy.task import generate_splits, write_jsonl
    from opd_cli.toy.tiny_qwen import encode_pairs, save_model
    from opd_cli.toy.tokenizer import build_tokenizer

    t0 = time.time()
    # Build beside the target and swap in at the end, so a crash never leaves a half-built world at root.
    work = root.with_name(root.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tok = build_tokenizer(work / "tokenizer")
    splits = generate_splits(cfg.seed, _sizes(cfg))
    (work / "data").mkdir()
    for name, records in splits.items():
        write_jsonl(work / "data" / f"{name}.jsonl", records)
    rng = random.Random(cfg.seed)
    teacher_data = encode_pairs(tok, [(r["question"], r["solution"]) for r in splits["train"]])
    student_data = encode_pairs(
        tok,
        [(r["question"], r["solution"] if rng.random() < cfg.student_correct_frac else r["student_solution"])
         for r in splits["train"]],
    )
    timings: dict[str, float] = {"data": round(time.time() - t0, 1)}
    manifest: dict[str, Any] = {"seed": cfg.seed, "requested_seed": cfg.seed, "sizes": _sizes(cfg), "config": _config_key(cfg)}
    with progress_bar(console) as progress:
        for role, data, lo, hi in (
            ("teacher", teacher_data, cfg.min_teacher_acc, 1.0),
            ("student", student_data, cfg.min_student_acc, cfg.max_student_acc),
            ("student_small", student_data, cfg.min_student_acc, cfg.max_student_acc),
        ):
            tried = []
            for attempt in range(cfg.max_attempts):
                seed = cfg.seed + 1000 * attempt + {"teacher": 0, "student": 1, "student_small": 2}[role]
                t_role = time.time()
                model, info = _train(role, cfg, tok, data, seed, splits["dev"], progress)
                t_test = time.time()
                timings[f"{role}_sft_{attempt}"] = round(t_test - t_role, 1)
                ev = progress.add_task(f"{role} test accuracy (temperature 1)", total=None)
                acc = _test_accuracy(model, tok, splits["test"], cfg, seed=cfg.seed)
                timings[f"{role}_test_{attempt}"] = round(time.time() - t_test, 1)
                progress.update(ev, total=1, completed=1, description=f"{role} test accuracy (temperature 1): {acc:.1%}")
                tried.append(acc)
                if lo <= acc <= hi:
                    break
                progress.console.print(f"[yellow]{role} test accuracy {acc:.1%} is outside [{lo:.0%}, {hi:.0%}]"
                                       f"{'; retrying with a new seed' if attempt + 1 < cfg.max_attempts else ''}[/yellow]")
            else:
                shutil.rmtree(work, ignore_errors=True)
                raise OpdError(
                    f"toy build: the {role}'s test accuracy {', '.join(f'{a:.1%}' for a in tried)} stayed outside "
                    f"[{lo:.0%}, {hi:.0%}] after {cfg.max_attempts} attempt(s); try another --seed or more --{role}-steps"
                )
            save_model(model, tok, work / FOLDERS[role])
            n_params = sum(p.numel() for p in model.parameters())
            manifest[role] = {"seed": seed, "attempts": len(tried), "test_acc": acc, "params": n_params,
                              "seconds": round(time.time() - t_role, 1), **info,
                              "shape": {k: getattr(cfg, f"{FIELDS[role]}_{k}") for k in ("layers", "hidden", "heads")}}
    import torch

    manifest["threads"] = torch.get_num_threads()
    manifest["timings"] = timings
    manifest["build_seconds"] = round(time.time() - t0, 1)
    write_manifest(work, manifest)
    old = root.with_name(root.name + ".old")
    if root.exists():
        shutil.rmtree(old, ignore_errors=True)
        root.rename(old)
    work.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return load_world(root)


# How the teacher is trained until it is good, not what the world is: a cached world that differs from the asked
# config only in these (e.g. built before early stopping existed) is still reused, since it passed the same
# acceptance thresholds, which stay in the key.
_SCHEDULE_FIELDS = ("teacher_steps", "teacher_min_steps", "check_every", "check_size", "stop_acc", "stop_cooldown", "done_sampled", "done_after",
                    "max_attempts", "max_new_tokens")


def _config_key(cfg: ToyBuildConfig) -> dict[str, Any]:
    """The fields that determine what gets built (not where, and not whether to rebuild)."""
    from opd_cli.core.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in ("root", "rebuild")}


def _same_world(built: Any, cfg: ToyBuildConfig) -> bool:
    """Whether a cached manifest's config matches ``cfg`` on every field except the teacher's schedule."""
    if not isinstance(built, dict):
        return False
    from opd_cli.core.config import differing_keys

    return not differing_keys(built, _config_key(cfg), _SCHEDULE_FIELDS)


def _report(console: Any, world: Any, reused: bool) -> None:
    m = world.manifest
    how = "reused cached" if reused else f"built in {m.get('build_seconds', '?')} s:"
    console.print(
        f"toy world {how} {world.root}\n"
        f"  one sample per test problem (temperature 1; too few to rank the students):\n"
        f"  teacher {m['teacher']['test_acc']:.1%}   student (large) {m['student']['test_acc']:.1%}   "
        f"student (small) {m.get('student_small', {}).get('test_acc', float('nan')):.1%}"
    )
