"""The toy reproduction's make targets, read back from `make -n -B` (tests/make_dryrun.py): every folder a plot or
analysis reads is written earlier by the same target, and every run read at a fixed checkpoint (RUN@STEP, the
limited-budget rows and Table 4) is evaluated at that step, for every seed."""

from __future__ import annotations

import csv
import re
import shlex

import pytest
from make_dryrun import ROOT, command, dry_run, flag, opd_lines, unwritten_reads, written_folder

SEEDS = "TOY_SEEDS=0 1 2"


@pytest.mark.parametrize("target", ["toy-paper-all", "toy-pgopd", "toy-adaptive"])
def test_toy_targets_read_only_folders_they_write(target: str) -> None:
    lines = opd_lines(target, SEEDS)
    assert lines and unwritten_reads(lines) == []


@pytest.mark.parametrize("target", ["toy-table12", "toy-fig7"])
def test_each_fixed_step_row_is_evaluated_at_its_step_for_every_seed(target: str) -> None:
    lines = opd_lines(target, SEEDS)
    evaluated = {(flag(ln, "--run"), flag(ln, "--steps")) for ln in lines if command(ln) == "eval" and flag(ln, "--steps")}
    rows = [m for ln in lines if command(ln) == "plot main-table" for m in re.findall(r"(runs/\S+)@(\d+)", ln)]
    assert rows, "no RUN@STEP row"
    for run, step in rows:
        for seed in ("", "-s1", "-s2"):
            assert (run + seed, step) in evaluated, f"{run}{seed} is not evaluated at step {step}"


def test_the_limited_budget_rows_are_in_tables_1_and_2() -> None:
    plots = [ln for ln in opd_lines("toy-table12", SEEDS) if command(ln) == "plot main-table"]
    assert {tuple(re.findall(r"runs/\S+@\d+", ln)) for ln in plots} == {
        ("runs/train-toy-full@10", "runs/sft-baseline-toy@20"),
        ("runs/train-toy-small-full@10", "runs/sft-baseline-toy-small@20"),
    }


def test_the_headline_rows_get_five_seeds() -> None:
    """prefix OPD (L = 10) and full OPD of both students, and full OPD's 10-step row: seeds 0-4; the rest 0-2."""
    lines = opd_lines("toy-table12", SEEDS)
    trained = {flag(ln, "--name") or "" for ln in lines if command(ln) == "train"}
    for run in ("toy-full", "toy-prefix", "toy-small-full", "toy-small-prefix"):
        assert {f"{run}-s{k}" for k in (1, 2, 3, 4)} <= trained
    assert not {n for n in trained if n.endswith(("-s3", "-s4"))} - {f"{r}-s{k}" for r in (
        "toy-full", "toy-prefix", "toy-small-full", "toy-small-prefix") for k in (3, 4)}
    evaluated = {flag(ln, "--run") for ln in lines if command(ln) == "eval" and flag(ln, "--steps") == "10"}
    assert {"runs/train-toy-full-s3", "runs/train-toy-full-s4", "runs/train-toy-small-full-s4"} <= evaluated


def test_toy_rethinking_reads_only_folders_its_runs_write() -> None:
    """toy-rethinking trains through a parallel sub-make ($(TOY_MAKE) toy-rethinking-runs), which `make -n` does not
    expand: its lines are the runs target's, then its own plots'."""
    lines = opd_lines("toy-rethinking-runs", SEEDS) + opd_lines("toy-rethinking", SEEDS)
    assert sum(command(ln) == "train" for ln in lines) >= 3 * 10 and any(command(ln).startswith("plot") for ln in lines)
    assert unwritten_reads(lines) == []


@pytest.mark.parametrize(
    "target", ["toy-table12", "toy-fig6", "toy-fig7", "toy-pgopd", "toy-adaptive", "toy-rethinking-claims"]
)
def test_each_claims_reference_is_a_method_of_its_shipped_table(target: str) -> None:
    """The claims the docs quote (analysis/claims.py on a main table) compare against a row the table has: the
    labels `opd plot main-table` gives (`toy-small-full (small)`, `toy-prefix-lr1e-4 @ step 30`) are easy to miss."""
    out = dry_run(target, SEEDS)
    calls = [shlex.split(m) for m in re.findall(r"analysis/claims\.py ([^;]+?) --benchmark", out)]
    assert calls, f"{target} writes no claims"
    for words in calls:
        table, reference = ROOT / words[0], words[words.index("--reference") + 1]
        with table.open(newline="") as f:
            methods = [row["method"] for row in csv.DictReader(f)]
        # a curve table's labels end in ` (3 seeds)`, which claims.py lets the reference leave out
        methods += [re.sub(r" \(\d+ seeds\)$", "", m) for m in methods]
        assert reference in methods, f"{table}: no row {reference!r}"


@pytest.mark.parametrize("target", ["toy-table12", "toy-pgopd", "toy-adaptive"])
def test_each_paired_test_compares_runs_its_target_writes(target: str) -> None:
    """analysis/paired_test.py is no `opd` line, so the read-back above does not see it: each run it compares is a
    folder an `opd` line of the same target writes (a typo there would test nothing until the target ran)."""
    written = {out for ln in opd_lines(target, SEEDS) if (out := written_folder(ln)) is not None}
    out = dry_run(target, SEEDS)
    compared = [re.sub(r"@\d+$", "", f) for m in re.findall(r"analysis/paired_test\.py ([^;]+?) --benchmark", out)
                for f in m.split() if f != "runs/$r"]
    # a shell loop over runs (`for r in A B; do ... paired_test.py runs/$r ...`) compares each of them
    compared += [f"runs/{r}" for m in re.findall(r"for r in ([^;]+); do for b in toy toy-ood; do \S+/python "
                                                   r"analysis/paired_test\.py runs/\$r", out) for r in m.split()]
    assert compared, f"{target} writes no paired tests"
    assert sorted(set(compared) - written) == []
