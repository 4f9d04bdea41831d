"""`opd plot` over training seeds: the ``<run>-s<k>`` folders beside a run are its seeds, tables show mean ± sd,
curves the mean; --no-seeds (``seeds=False``) takes each folder alone."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from opd_cli.plot import PlotConfig, run_plot
from opd_cli.plot.seeds import mean_curve, mean_sd, percent, seed_folders

FIX = Path(__file__).parent / "fixtures"
RUNS = FIX / "plot_runs"

# the toy (dev and test) accuracy of opd_full at steps 2 and 4, per seed; seed 0 is the fixture's own
TOY = {0: {2: 0.3, 4: 0.45}, 1: {2: 0.2, 4: 0.35}, 2: {2: 0.4, 4: 0.4}}


def set_acc(run: Path, step: int, bench: str, acc: float) -> None:
    f = run / "eval" / f"step_{step:06d}" / f"{bench}.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "mean_acc": acc}))


@pytest.fixture
def seeded(tmp_path) -> Path:
    """opd_full with seeds 1 and 2 beside it (other accuracies), opd_prefix with seed 0 only, and the base row."""
    root = tmp_path / "runs"
    for name in ("opd_full", "opd_prefix", "base"):
        shutil.copytree(RUNS / name, root / name)
    for seed in (1, 2):
        run = root / f"opd_full-s{seed}"
        shutil.copytree(RUNS / "opd_full", run)
        for step, acc in TOY[seed].items():
            set_acc(run, step, "toy", acc)
        best = json.loads((run / "eval" / "best.json").read_text())
        best["best_step"] = 2 if seed == 2 else 4  # seed 2 keeps its step-2 checkpoint
        (run / "eval" / "best.json").write_text(json.dumps(best))
    return root


def plot(tmp_path, kind, runs, **kw):
    return run_plot(PlotConfig(kind=kind, runs=[str(r) for r in runs], output_dir=str(tmp_path / "out"), **kw))


def test_seed_folders(seeded):
    (seeded / "opd_full-s7").mkdir()  # no config.yaml: not a run
    (seeded / "opd_full-sx").mkdir()
    assert seed_folders(seeded / "opd_full") == [seeded / "opd_full", seeded / "opd_full-s1", seeded / "opd_full-s2"]
    assert seed_folders(seeded / "opd_prefix") == [seeded / "opd_prefix"]


def test_mean_sd_and_percent():
    mean, sd, n = mean_sd([0.3, None, 0.5])
    assert (round(mean, 6), round(sd, 6), n) == (0.4, round(statistics.stdev([0.3, 0.5]), 6), 2)
    assert mean_sd([0.3]) == (0.3, None, 1)
    assert mean_sd([]) == (None, None, 0)
    assert percent(0.47, 0.094) == "47.0 ± 9.4" and percent(0.47, None) == "47.0" and percent(None, None) == "-"
    assert mean_curve([{2: 0.1, 4: 0.3}, {4: 0.5, 6: 0.9}]) == {4: (0.4, pytest.approx(statistics.stdev([0.3, 0.5])))}


def test_main_table_over_seeds(tmp_path, seeded):
    res = plot(tmp_path, "main-table", [seeded / "base", seeded / "opd_full", seeded / "opd_prefix"])
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "main-table.csv").open())}
    full = rows["OPD full"]
    # each seed's test accuracy at the checkpoint its best.json picked: 0.45 (step 4), 0.35 (step 4), 0.4 (step 2)
    picked = [0.45, 0.35, 0.4]
    assert full["seeds"] == "3" and full["best_step"] == "4/4/2"
    assert float(full["toy"]) == pytest.approx(statistics.mean(picked))
    assert float(full["toy_sd"]) == pytest.approx(statistics.stdev(picked))
    assert rows["opd_prefix"]["seeds"] == "1" and rows["opd_prefix"]["toy_sd"] == ""
    md = res.data["markdown"]
    assert md.startswith("Mean ± standard deviation over training seeds")
    assert "| OPD full | 3 | 4/4/2 | **40.0 ± 5.0** |" in md
    assert "| opd_prefix | 1 | 4 | **40.0** |" in md  # the same mean: both marked best


def test_a_fixed_step_row_over_seeds(tmp_path, seeded):
    """opd_full@2: each seed's step-2 checkpoint, whatever its best.json picked."""
    at2 = [json.loads((seeded / f / "eval" / "step_000002" / "toy.json").read_text())["mean_acc"]
           for f in ("opd_full", "opd_full-s1", "opd_full-s2")]
    assert seed_folders(seeded / "opd_full@2") == [seeded / "opd_full@2", seeded / "opd_full-s1@2", seeded / "opd_full-s2@2"]
    res = plot(tmp_path, "main-table", [seeded / "base", f"{seeded / 'opd_full'}@2"])
    row = {r["method"]: r for r in res.data["rows"]}["OPD full @ step 2"]
    assert row["seeds"] == 3 and row["best_step"] == 2
    assert row["toy"] == pytest.approx(statistics.mean(at2)) and row["toy_sd"] == pytest.approx(statistics.stdev(at2))


def test_a_benchmark_one_row_lacks_is_a_dash(tmp_path, seeded):
    (seeded / "base" / "eval" / "toy-ood.json").unlink()  # the base row was evaluated on toy only
    res = plot(tmp_path, "main-table", [seeded / "base", seeded / "opd_full"])
    assert "| base | 1 | - | 10.0 | - |" in res.data["markdown"]


def test_a_cell_over_fewer_seeds_than_its_row_says_so(tmp_path, seeded):
    """A seed whose picked checkpoint has no toy-ood evaluation yet (its evaluation stopped) counts for toy only."""
    (seeded / "opd_full-s1" / "eval" / "step_000004" / "toy-ood.json").unlink()
    res = plot(tmp_path, "main-table", [seeded / "base", seeded / "opd_full"])
    row = {r["method"]: r for r in res.data["rows"]}["OPD full"]
    assert row["seeds"] == 3
    line = next(ln for ln in res.data["markdown"].splitlines() if ln.startswith("| OPD full |"))
    assert "| **40.0 ± 5.0** | " in line and "** (2 of 3 seeds) |" in line and line.count("of 3 seeds") == 1
    full = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "main-table.csv").open())}["OPD full"]
    assert (full["seeds"], full["toy_n"], full["toy-ood_n"]) == ("3", "3", "2")  # what analysis/claims.py tests on


def test_a_folder_of_runs_folds_seed_folders_into_their_run(tmp_path, seeded):
    res = plot(tmp_path, "main-table", [seeded])
    assert [r["method"] for r in res.data["rows"]] == ["base", "OPD full", "opd_prefix"]
    assert [r["seeds"] for r in res.data["rows"]] == [1, 3, 1]


def test_no_seeds_takes_each_folder_alone(tmp_path, seeded):
    res = plot(tmp_path, "main-table", [seeded], seeds=False)
    assert len(res.data["rows"]) == 5 and "seeds" not in res.data["rows"][0]
    assert not res.data["markdown"].startswith("Mean")


def test_compute_vs_acc_draws_the_mean_over_seeds(tmp_path, seeded):
    res = plot(tmp_path, "compute-vs-acc", [seeded / "opd_full", seeded / "opd_prefix"], x_axis="step")
    acc = res.data["acc"]
    assert set(acc) == {"OPD full (3 seeds)", "opd_prefix"}
    assert acc["OPD full (3 seeds)"]["x"] == [0.0, 2.0, 4.0]
    means = [statistics.mean(TOY[s][step] for s in TOY) for step in (2, 4)]
    assert acc["OPD full (3 seeds)"]["y"][1:] == pytest.approx(means)


def test_lr_sweep_matches_on_the_mean_curve(tmp_path, seeded):
    plot(tmp_path, "lr-sweep", [seeded / "opd_full", seeded / "opd_prefix"], ood=["toy-ood"])
    rows = list(csv.DictReader((tmp_path / "out" / "lr-sweep.csv").open()))
    # the mean dev curve of opd_full peaks at 0.4 (step 4): the level both runs reach, matched there
    assert [(r["method"], r["step"], float(r["dev_acc"])) for r in rows] == [
        ("OPD full (lr=5e-05) (3 seeds)", "4", pytest.approx(0.4)), ("opd_prefix (lr=2e-05)", "4", 0.4)]


def test_window_ablation_over_seeds(tmp_path):
    for seed, shift in ((0, 0.0), (1, 0.1)):
        folder = tmp_path / ("abl" if seed == 0 else f"abl-s{seed}")
        shutil.copytree(FIX / "analyses" / "ablation", folder)
        rows = list(csv.DictReader((folder / "table.csv").open()))
        with (folder / "table.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({**r, "dev_acc": float(r["dev_acc"]) + shift} for r in rows)
    res = plot(tmp_path, "window-ablation", [tmp_path / "abl"])
    md = res.data["markdown"]
    assert md.startswith("Dev Mean Acc, mean ± standard deviation over 2 training seeds")
    sd = 100 * statistics.stdev([0.2, 0.3])
    assert f"| full | 25.0 ± {sd:.1f} | 35.0 ± {sd:.1f} |" in md
    assert res.data["acc"]["full"]["y"] == pytest.approx([0.25, 0.35])


def test_dynamics_over_seeds_draws_means_and_tabulates_them(tmp_path, seeded):
    # seed 1's overlap ratio is 0.1 above seed 0's at every step, seed 2's 0.2 above
    for seed in (1, 2):
        f = seeded / f"opd_full-s{seed}" / "metrics.jsonl"
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        f.write_text("".join(json.dumps({**r, "overlap_ratio": r["overlap_ratio"] + 0.1 * seed}) + "\n" for r in rows))
    base = {r["step"]: r["overlap_ratio"] for r in map(json.loads, (RUNS / "opd_full" / "metrics.jsonl").read_text().splitlines())}
    res = plot(tmp_path, "dynamics", [seeded / "opd_full", seeded / "opd_prefix"])
    ratio = res.data["overlap_ratio"]["OPD full (3 seeds)"]
    assert ratio["y"] == pytest.approx([base[int(s)] + 0.1 for s in ratio["x"]])
    acc = res.data["acc"]["OPD full (3 seeds)"]
    assert acc["y"][1:] == pytest.approx([statistics.mean(TOY[s][step] for s in TOY) for step in (2, 4)])
    row = res.data["rows"][0]
    assert row["seeds"] == 3 and row["overlap_ratio_sd"] == pytest.approx(0.1)
    assert row["acc_step_4_sd"] == pytest.approx(statistics.stdev([0.45, 0.35, 0.4]))
    md = (tmp_path / "out" / "dynamics.md").read_text()
    assert "over up to 3 training seeds" in md and "| OPD full (3 seeds) | 3 |" in md and "| opd_prefix | 1 |" in md
    assert (tmp_path / "out" / "dynamics.csv").is_file()


def test_lr_sweep_matches_only_where_every_seed_was_evaluated_out_of_domain(tmp_path, seeded):
    """Seeds 1 and 2 lack toy-ood at step 4 (seed 0's alone is there): opd_full is matched at step 2, where all three
    seeds have it, and the level is the 0.3 its mean curve reaches there."""
    for seed in (1, 2):
        (seeded / f"opd_full-s{seed}" / "eval" / "step_000004" / "toy-ood.json").unlink()
    res = plot(tmp_path, "lr-sweep", [seeded / "opd_full", seeded / "opd_prefix"], ood=["toy-ood"])
    assert res.data["target"] == pytest.approx(0.3)
    rows = list(csv.DictReader((tmp_path / "out" / "lr-sweep.csv").open()))
    assert [(r["step"], r["trains"]) for r in rows] == [("2", "True"), ("2", "True")]
