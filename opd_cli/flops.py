"""`opd flops`: training FLOPs of finished run folders, per sequence of a model config, or the paper's totals.

Run folders are totalled from their logged ``seq_tokens`` and ``seq_tokens_sq`` (the formula is linear in both);
the formula itself and ``ModelShape`` live in core/flops_formula.py (paper appendix B).
Everything here is plain Python (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.core.flops_formula import ModelShape, flops, n_dense, opd_flops, sft_flops
from opd_cli.core.log import logger
from opd_cli.core.table_io import write_csv

ATTN_COEFS = (6, 12)

# The paper's FLOPs columns (Tables 1 and 2; teacher Qwen3-8B), to set beside `opd flops --paper`.
PAPER_FLOPS = {
    "qwen3-1.7b-base": {
        "table": "Table 1",
        "OPD (full, 10 steps)": 8.2e18,
        "OPD (prefix 256)": 9.4e17,
        "OPD (prefix 512)": 1.4e18,
        "OPD (prefix 1024)": 2.5e18,
        "OPD (prefix 2048)": 4.7e18,
        "OPD (full)": 5.7e19,
        "OPD (prefix scheduling)": 2.4e19,
        "SFT (300 steps)": 1.3e19,
        "SFT (1500 steps)": 6.6e19,
    },
    "qwen3-8b-base": {
        "table": "Table 2",
        "OPD (full, 10 steps)": 2.7e19,
        "OPD (prefix 256)": 3.4e18,
        "OPD (prefix 512)": 5.2e18,
        "OPD (prefix 1024)": 8.9e18,
        "OPD (prefix 2048)": 1.7e19,
        "OPD (full)": 1.8e20,
        "OPD (prefix scheduling)": 7.5e19,
        "SFT (300 steps)": 4.4e19,
        "SFT (1500 steps)": 2.2e20,
    },
}


# ------------------------------------------------------------------------------------------ run folders
@dataclass
class RunTotals:
    run: str
    command: str
    student: str
    teacher: str
    steps: int
    seq_tokens: float
    seq_tokens_sq: float
    flops: float
    logged_flops: float | None
    wall_time: float | None


def _last_per_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One metrics line per step (the last one wins: a resumed run may repeat steps)."""
    by_step: dict[Any, dict[str, Any]] = {}
    for r in rows:
        by_step[r.get("step")] = r
    return [by_step[k] for k in sorted(by_step, key=lambda s: (s is None, s if isinstance(s, (int, float)) else 0))]


def _toy_model(what: str, config: dict[str, Any], run: Path) -> Path:
    """A run trained with no model arguments used the toy world: the cached folder of its model (the student is
    the one the run's ``toy_student`` names: student/ or student-small/)."""
    from opd_cli.toy.world import STUDENT_FOLDERS, default_root, run_toy_student

    return default_root() / (STUDENT_FOLDERS[run_toy_student(config, run)] if what == "student" else what)


def _toy_student_name(config: dict[str, Any]) -> str:
    """The table's name of a toy-world run's student: toy student (the large one), or toy student (small)."""
    return "toy student (small)" if config.get("toy_student") == "small" else "toy student"


def _resolve_model(name: Any, run: Path, what: str) -> ModelShape:
    why = ""
    if not name:
        from opd_cli.core.runs import read_config

        config = read_config(run)
        if config.get("command") in ("train", "sft-baseline"):
            folder = _toy_model(what, config, run)
            name = str(folder) if (folder / "config.json").is_file() else None
            why = f" and the toy world's {what} ({folder}) is not built"
    if not name:
        raise OpdError(f"run {run}: its config.yaml names no {what}{why}: FLOPs need the {what}'s model config")
    name = str(name)
    local = Path(name).expanduser()
    if not local.exists() and not local.is_absolute() and (run / name).exists():
        name = str(run / name)  # a path written relative to the run folder
    try:
        return ModelShape.from_source(name)
    except OpdError as err:
        raise OpdError(f"run {run}: {what} {err}") from None


def run_totals(run: str | Path, attn_coef: float = 12) -> RunTotals:
    """Training FLOPs of a finished run, recomputed from its logged ``seq_tokens`` and ``seq_tokens_sq``."""
    from opd_cli.core.runs import read_config, read_metrics

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise OpdError(f"{run} is not a run folder (no config.yaml): pass folders written by opd train or sft-baseline")
    cfg = read_config(run)
    rows = _last_per_step(read_metrics(run))
    if not rows:
        raise OpdError(f"run {run} has no metrics (metrics.jsonl missing or empty): was it trained?")
    lacking = [r.get("step") for r in rows if r.get("seq_tokens") is None or r.get("seq_tokens_sq") is None]
    if lacking:
        raise OpdError(
            f"run {run}: metrics lack seq_tokens/seq_tokens_sq at step(s) {', '.join(map(str, lacking[:5]))}"
        )
    command = str(cfg.get("command") or "train")
    student = _resolve_model(cfg.get("student"), run, "student")
    sum_s = sum(float(r["seq_tokens"]) for r in rows)
    sum_s2 = sum(float(r["seq_tokens_sq"]) for r in rows)
    if command.startswith("sft"):
        teacher_name, total = "", sft_flops(student, sum_s, sum_s2, attn_coef)
    else:
        teacher = _resolve_model(cfg.get("teacher"), run, "teacher")
        teacher_name, total = (
            str(cfg.get("teacher") or "toy teacher"),
            opd_flops(student, teacher, sum_s, sum_s2, attn_coef),
        )
    logged = rows[-1].get("flops_total")
    walls = [float(r["wall_time"]) for r in rows if r.get("wall_time") is not None]
    return RunTotals(
        run=str(cfg.get("name") or run.name),
        command=command,
        student=str(cfg.get("student") or _toy_student_name(cfg)),
        teacher=teacher_name,
        steps=max(int(r.get("step") or 0) for r in rows),
        seq_tokens=sum_s,
        seq_tokens_sq=sum_s2,
        flops=total,
        logged_flops=float(logged) if logged is not None else None,
        wall_time=max(walls) if walls else None,
    )


# ------------------------------------------------------------------------------------------ command
@dataclass
class FlopsConfig:
    command = "flops"

    runs: list[str] = field([], help="Run folders (or folders of runs) to total from their logged lengths; [] = none.")
    model: str = field("", help="Model config: shipped name (qwen3-8b), folder, config.json or hub id; '' = none.")
    teacher: str = field(
        "", help="Teacher config for OPD per-rollout / --paper numbers; '' = none (--paper: qwen3-8b)."
    )
    lengths: list[int] = field(
        [], help="Sequence lengths in tokens (prompt + response); [] = 1024,2048,4096,8192,16384."
    )
    attn_coef: int = field(12, help="Attention coefficient c: 12 (verl <= 0.7.0, the paper) or 6 (later verl).")
    gpus: int = field(0, help="GPUs per run, to turn logged wall_time into GPU-hours; 0 = off.")
    paper: bool = field(False, help="The paper's OPD accounting: --steps x --rollouts rollouts at each mean length.")
    steps: int = field(60, help="--paper: optimizer steps.")
    rollouts: int = field(512, help="--paper: rollouts per step (the OPD batch).")
    output: str = field("", help="CSV file for the table; '' = print only.")

    def __post_init__(self) -> None:
        check(
            self.attn_coef in ATTN_COEFS,
            f"--attn-coef must be 12 or 6 (verl before / after v0.7.0), got {self.attn_coef}",
        )
        check(all(int(s) > 0 for s in self.lengths), f"--lengths must be positive token counts, got {self.lengths}")
        check(self.gpus >= 0, f"--gpus must be >= 0 (0 = no GPU-hours), got {self.gpus}")
        check(self.steps > 0 and self.rollouts > 0, "--steps and --rollouts must be positive")
        check(
            bool(self.runs or self.model or self.paper),
            "nothing to count: pass run folders, --model NAME --lengths 1024,4096, or --paper",
        )


DEFAULT_LENGTHS = [1024, 2048, 4096, 8192, 16384]


def model_table(cfg: FlopsConfig) -> list[dict[str, Any]]:
    """FLOPs per sequence of one model at each length (and per OPD rollout with a teacher)."""
    shape = ModelShape.from_source(cfg.model)
    teacher = ModelShape.from_source(cfg.teacher) if cfg.teacher else None
    rows = []
    for s in cfg.lengths or DEFAULT_LENGTHS:
        row: dict[str, Any] = {
            "model": cfg.model,
            "seq_len": s,
            "n_dense": n_dense(shape),
            "dense_flops": 6 * n_dense(shape) * s,
            "attn_flops": flops(shape, [s], cfg.attn_coef) - 6 * n_dense(shape) * s,
            "flops": flops(shape, [s], cfg.attn_coef),
        }
        if teacher is not None:
            row["opd_flops_per_rollout"] = opd_flops(shape, teacher, s, s * s, cfg.attn_coef)
        rows.append(row)
    return rows


def paper_table(cfg: FlopsConfig) -> list[dict[str, Any]]:
    """Total OPD FLOPs for steps x rollouts sequences of each mean length (sum s^2 taken as n * mean^2, a lower bound)."""
    student_name = cfg.model or "qwen3-8b-base"
    teacher_name = cfg.teacher or "qwen3-8b"
    student, teacher = ModelShape.from_source(student_name), ModelShape.from_source(teacher_name)
    n = cfg.steps * cfg.rollouts
    rows = []
    for s in cfg.lengths or DEFAULT_LENGTHS:
        rows.append(
            {
                "mean_seq_len": s,
                "rollouts": n,
                "x_student": flops(student, [s], cfg.attn_coef),
                "y_teacher": flops(teacher, [s], cfg.attn_coef),
                "opd_per_rollout": opd_flops(student, teacher, s, s * s, cfg.attn_coef),
                "opd_total": opd_flops(student, teacher, n * s, n * s * s, cfg.attn_coef),
            }
        )
    return rows


def runs_table(cfg: FlopsConfig) -> list[dict[str, Any]]:
    from opd_cli.core.runs import iter_run_dirs

    for p in cfg.runs:
        if not Path(p).exists():
            raise OpdError(f"run folder {p} does not exist")
    dirs = list(iter_run_dirs(cfg.runs))
    if not dirs:
        raise OpdError(f"no run folders (with config.yaml) in {', '.join(cfg.runs)}")
    totals = [run_totals(d, cfg.attn_coef) for d in dirs]
    base = totals[0].flops
    rows = []
    for t in totals:
        hours = t.wall_time / 3600 if t.wall_time is not None else None
        rows.append(
            {
                "run": t.run,
                "command": t.command,
                "student": t.student,
                "teacher": t.teacher,
                "steps": t.steps,
                "seq_tokens": t.seq_tokens,
                "seq_tokens_sq": t.seq_tokens_sq,
                "flops": t.flops,
                "logged_flops": t.logged_flops,
                "ratio": t.flops / base if base else None,
                "hours": hours,
                "gpu_hours": hours * cfg.gpus if hours is not None and cfg.gpus else None,
            }
        )
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-2):
            return f"{v:.3g}"
        return f"{v:.3g}" if not v.is_integer() else f"{int(v)}"
    if isinstance(v, int) and abs(v) >= 1e6:
        return f"{v:.3g}"
    return str(v)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for k in rows[0]:
        table.add_column(k, justify="left" if k in ("model", "run", "command", "student", "teacher") else "right")
    for r in rows:
        table.add_row(*[_fmt(v) for v in r.values()])
    import sys

    # a log or a pipe (make's output) has no width: rich would cut every column to fit 80 characters
    Console(width=None if sys.stdout.isatty() else 220).print(table)


def run_flops(cfg: FlopsConfig) -> list[dict[str, Any]]:
    """`opd flops`: a per-length table for a model config, the paper's totals, or totals of run folders."""
    if cfg.runs:
        rows = runs_table(cfg)
        title = f"training FLOPs recomputed from logged lengths (c={cfg.attn_coef}; ratio to {rows[0]['run']})"
    elif cfg.paper:
        rows = paper_table(cfg)
        student = cfg.model or "qwen3-8b-base"
        title = f"OPD FLOPs of {student} <- {cfg.teacher or 'qwen3-8b'}, {cfg.steps} steps x {cfg.rollouts} rollouts, c={cfg.attn_coef}"
        ref = PAPER_FLOPS.get(student.rstrip("/").split("/")[-1].lower())
        if ref:
            note = ", ".join(f"{k} {v:.1e}" for k, v in ref.items() if k.startswith("OPD"))
            title += f"\npaper {ref['table']}: {note}"
    else:
        rows = model_table(cfg)
        title = f"FLOPs per sequence of {cfg.model} (forward + backward, c={cfg.attn_coef})"
    print_table(rows, title)
    if cfg.output:
        logger.info(f"wrote {write_csv(rows, cfg.output)}")
    return rows
