"""Analyses of the prefix-OPD paper that are not training: where the KL sits along the output, and how far a
teacher-written prefix carries an untrained student.

    kl_by_position   Fig. 2 and 5: per-position-bin reverse KL of student rollouts scored by the teacher
    probe            Fig. 3: the student continues from the first L tokens of teacher solutions

Shared helpers live here; everything heavy (torch, transformers) is imported inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opd_cli.errors import OpdError


def toy_models(console: Any = None, student: str = "large") -> tuple[str, str]:
    """(student_dir, teacher_dir) of the built-in toy world (:func:`opd_cli.toy.world.toy_model_paths`)."""
    from opd_cli.toy.world import toy_model_paths

    return toy_model_paths(student, console)


def load_problems(benchmark: str | None, data: str | None, limit: int, seed: int, **columns: Any) -> list[Any]:
    """Problems from ``--data`` (a local file) or a registered ``--benchmark``; ``limit`` 0 = all."""
    from opd_cli import data as data_mod

    lim = limit or None
    if data:
        if not Path(data).is_file():
            raise OpdError(f"--data {data} is not a file: pass a jsonl/parquet/csv file of problems")
        kwargs = {k: v for k, v in columns.items() if v}
        problems = data_mod.load_file(data, **kwargs)
        problems = list(problems)[:lim] if lim else list(problems)
    else:
        problems = list(data_mod.load_benchmark(benchmark, limit=lim, seed=seed))
    if not problems:
        raise OpdError(f"no problems loaded from {data or benchmark}: check --benchmark / --data / --limit")
    return problems


def progress_bar(console: Any = None) -> Any:
    """A rich progress bar with counts and elapsed time (rendered to stderr, so CSV/JSON output stays clean)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
