"""`make -n -B <target>` read back: the opd commands a target runs, the run folder each one writes and the folders each
one reads. Shared by the tests of the real-model targets (test_real.py) and the paper-scale ones
(test_paper_recipes.py); no opd code is run, only the recipes the commands name are read."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def dry_run(target: str, *variables: str) -> str:
    """What `make -n -B <target> VAR=value ...` prints, continuation lines joined."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    return subprocess.run(["make", "-n", "-B", "--no-print-directory", target, *variables], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")


def opd_lines(target: str, *variables: str) -> list[str]:
    """The `opd` command lines `make -n -B <target> VAR=value ...` prints, in order, continuations joined."""
    return [" ".join(ln.split()) for ln in dry_run(target, *variables).splitlines() if "/opd " in ln]


def command(line: str) -> str:
    """The opd subcommand of a line: ``train``, ``eval``, ``plot main-table``, ..."""
    words = line.split("/opd ", 1)[1].split()
    return " ".join(words[:2]) if words[0] == "plot" else words[0]


def flag(line: str, *names: str) -> str | None:
    """The value of the last of ``names`` (e.g. ``--output-dir``, ``-o``) on the line, or None."""
    found = [m.group(2) for n in names for m in re.finditer(rf"(^|\s){re.escape(n)} (\S+)", line)]
    return found[-1] if found else None


def recipe(line: str) -> dict:
    path = flag(line, "--recipe")
    return yaml.safe_load((ROOT / path).read_text()) if path else {}


def _run_folder(path: str) -> str:
    """runs/<folder>/checkpoints/step_000010 -> runs/<folder>"""
    return "/".join(Path(path).parts[:2])


def written_folder(line: str) -> str | None:
    """The run folder a command writes (None for eval --run, plot and flops, which write into others' folders or
    elsewhere): --output-dir, else the recipe's output_dir, else the command's default folder."""
    cmd, rec = command(line), recipe(line)
    out = flag(line, "--output-dir", "-o") if cmd in ("train", "sft-baseline", "eval", "kl-by-position",
                                                      "probe-teacher-prefix", "window-ablation") else None
    out = out or rec.get("output_dir")
    name = flag(line, "--name") or rec.get("name")
    if cmd == "train":
        return out or f"runs/train-{name}"
    if cmd == "sft-baseline":
        return out or f"runs/sft-baseline-{name}"
    if cmd == "eval":
        return None if flag(line, "--run") else out
    if cmd == "kl-by-position":
        run = flag(line, "--run") or rec.get("run")
        return out or f"runs/kl-by-position{'-' + Path(run).name if run else ''}"
    if cmd == "probe-teacher-prefix":
        return out or f"runs/probe-{rec.get('prefix_from', 'teacher')}-prefix-{rec.get('benchmark')}"
    if cmd == "window-ablation":
        return out or "runs/window-ablation"
    return None


def read_folders(line: str) -> list[str]:
    """The run folders a command reads: eval's --run, the runs a plot draws, kl-by-position's run, the window
    ablation's reference runs, and a student or teacher that is a checkpoint under runs/."""
    cmd, rec = command(line), recipe(line)
    if cmd.startswith("plot "):  # RUN@STEP: the run read at one checkpoint
        return [re.sub(r"@\d+$", "", f) for f in re.findall(r"(runs/\S+)", line.split(" -o ")[0])]
    if cmd == "eval":
        return [flag(line, "--run")] if flag(line, "--run") else []
    if cmd == "kl-by-position":
        run = flag(line, "--run") or rec.get("run")
        return [run] if run else []
    if cmd == "window-ablation":
        refs = re.findall(r"--reference-runs (\S+)", line)
        return refs or list(rec.get("reference_runs") or [])
    if cmd in ("train", "sft-baseline"):
        models = [flag(line, "--student") or rec.get("student"), flag(line, "--teacher") or rec.get("teacher")]
        return [_run_folder(m) for m in models if isinstance(m, str) and m.startswith("runs/")]
    return []


def unwritten_reads(lines: list[str]) -> list[tuple[str, str]]:
    """(folder, line) for every folder a command reads that no earlier command of the target wrote."""
    written: set[str] = set()
    missing = []
    for line in lines:
        missing += [(f, line) for f in read_folders(line) if f not in written]
        if (out := written_folder(line)) is not None:
            written.add(out)
    return missing
