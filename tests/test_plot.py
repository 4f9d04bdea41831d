"""`opd plot`: every kind renders from the small fixture run folders, and what it drew equals the fixture's values."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.errors import OpdError
from opd_cli.plot import PlotConfig, run_plot
from opd_cli.plot.curves import evenly_spaced

FIX = Path(__file__).parent / "fixtures"
RUNS = FIX / "plot_runs"
AN = FIX / "analyses"


def plot(tmp_path, kind, runs, **kw):
    res = run_plot(PlotConfig(kind=kind, runs=[str(r) for r in runs], output_dir=str(tmp_path), **kw))
    for p in res.paths:
        assert p.is_file() and p.stat().st_size > 0
    return res


def metric(run, step, key):
    for line in (RUNS / run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["step"] == step:
            return r[key]
    raise KeyError(step)


def test_imports_are_lazy():
    code = "import sys, opd_cli.plot, opd_cli.flops; bad = {'matplotlib', 'torch', 'pandas'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evenly_spaced():
    assert evenly_spaced([1, 2, 3, 4]) == [1, 3, 4]
    assert evenly_spaced(list(range(1, 31))) == [1, 15, 30]
    assert evenly_spaced([5, 10]) == [5, 10]


def test_kl_position_from_metrics(tmp_path):
    res = plot(tmp_path, "kl-position", [RUNS / "opd_full"], steps=[2, 4])
    assert {p.suffix for p in res.paths} == {".png", ".pdf"}
    lines = res.data["OPD full"]
    assert set(lines) == {"step 2", "step 4"}
    assert lines["step 2"]["x"] == [0, 256, 512]
    assert lines["step 2"]["y"] == metric("opd_full", 2, "kl_bin_mean")
    assert lines["step 4"]["y"] == metric("opd_full", 4, "kl_bin_mean")


def test_kl_position_default_steps_and_folder_of_runs(tmp_path):
    res = plot(tmp_path, "kl-position", [RUNS])  # sft/base lack kl_bin_mean: skipped, the two OPD runs drawn
    assert set(res.data) == {"OPD full", "opd_prefix"}
    assert set(res.data["OPD full"]) == {"step 1", "step 3", "step 4"}


def test_kl_position_from_csv(tmp_path):
    res = plot(tmp_path, "kl-position", [AN / "klpos"])
    assert res.data["klpos"]["step 10"] == {"x": [0, 256], "y": [0.8, 0.4]}
    assert res.data["klpos"]["step 30"]["y"] == [0.3, 0.2]


def test_kl_position_missing_step(tmp_path):
    with pytest.raises(OpdError, match=r"no kl_bin_mean logged at step\(s\) 7"):
        plot(tmp_path, "kl-position", [RUNS / "opd_full"], steps=[7])


def test_teacher_prefix(tmp_path):
    res = plot(tmp_path, "teacher-prefix", [AN / "probe"])
    lines = res.data["probe"]
    assert lines["probe"] == {"x": [2048, 4096], "y": [0.2, 0.35]}
    assert lines["probe: student alone"]["y"][0] == 0.05
    assert lines["probe: teacher"]["y"][0] == 0.6


def test_compute_vs_acc(tmp_path):
    res = plot(tmp_path, "compute-vs-acc", [RUNS / "opd_full", RUNS / "opd_prefix", RUNS / "sft"])
    acc = res.data["acc"]
    assert acc["OPD full"]["x"] == [metric("opd_full", 2, "flops_total"), metric("opd_full", 4, "flops_total")]
    assert acc["OPD full"]["y"] == [0.3, 0.45]
    assert acc["opd_prefix"]["y"] == [0.35, 0.4]
    assert acc["SFT"] == {"x": [1.0e13, 2.0e13], "y": [0.2, 0.25]}


def test_compute_vs_acc_labels_its_ticks_within_one_decade(tmp_path):
    """Runs whose FLOPs span less than a decade (3e15-1e16 here) have no decade tick in view: the 2-9 x 10^k ticks
    are labelled; over several decades only the decades are."""
    import shutil

    run = tmp_path / "opd_full"
    shutil.copytree(RUNS / "opd_full", run)
    res = plot(tmp_path / "one", "compute-vs-acc", [run])
    assert res.data["acc"]["OPD full"]["x"] == [3.0e15, 1.0e16]
    assert res.data["x_tick_labels"] and all("times10^{15}" in t or "10^{16}" in t for t in res.data["x_tick_labels"])
    assert any("times" in t for t in res.data["x_tick_labels"])
    wide = plot(tmp_path / "wide", "compute-vs-acc", [RUNS / "opd_full", RUNS / "sft"])  # 1e13 to 1e16
    assert wide.data["x_tick_labels"] and not any("times" in t for t in wide.data["x_tick_labels"])


def test_compute_vs_acc_over_wall_time(tmp_path):
    res = plot(tmp_path, "compute-vs-acc", [RUNS / "opd_full", RUNS / "opd_prefix"], x_axis="wall")
    acc = res.data["acc"]
    assert acc["OPD full"]["x"] == [metric("opd_full", 2, "wall_time"), metric("opd_full", 4, "wall_time")]
    assert acc["OPD full"]["y"] == [0.3, 0.45]
    assert (tmp_path / "compute-vs-acc-wall.png").is_file()


def test_sft_prefix_by_step(tmp_path):
    res = plot(tmp_path, "sft-prefix", [RUNS / "sft", RUNS / "opd_full"], x_axis="step")
    acc = res.data["acc"]
    assert acc["SFT (lr=0.0001)"] == {"x": [0, 1, 2], "y": [0.1, 0.2, 0.25]}
    assert acc["OPD full (lr=5e-05)"]["y"] == [0.1, 0.3, 0.45]


def test_lr_sweep(tmp_path):
    res = plot(tmp_path, "lr-sweep", [RUNS / "opd_full", RUNS / "opd_prefix"], ood=["toy-ood"])
    assert res.data["target"] == 0.4  # the highest dev accuracy both runs reach
    assert res.data["dev"]["OPD full (lr=5e-05)"]["y"] == [0.1, 0.3, 0.45]
    rows = list(csv.DictReader((tmp_path / "lr-sweep.csv").open()))
    assert [(r["step"], float(r["dev_acc"]), float(r["toy-ood"])) for r in rows] == [("4", 0.45, 0.3), ("4", 0.4, 0.28)]


def test_window_ablation(tmp_path):
    res = plot(tmp_path, "window-ablation", [AN / "ablation"])
    md = (tmp_path / "window-ablation.md").read_text()
    assert "| full | 20.0 | 30.0 |" in md
    assert "| prefix 1024 [0:1024] | 25.0 | 28.0 |" in md
    assert res.data["acc"]["window [1024:2048]"] == {"x": [10, 20], "y": [0.1, 0.12]}


def test_main_table(tmp_path):
    res = plot(tmp_path, "main-table", [RUNS])
    assert res.data["benchmarks"] == ["toy", "toy-ood"]
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "main-table.csv").open())}
    assert set(rows) == {"base", "OPD full", "opd_prefix", "SFT"}
    assert float(rows["OPD full"]["toy"]) == 0.45 and rows["OPD full"]["best_step"] == "4"
    assert float(rows["OPD full"]["flops"]) == metric("opd_full", 4, "flops_total")
    assert float(rows["OPD full"]["hours"]) == 1.0
    assert rows["base"]["flops"] == ""
    md = res.data["markdown"]
    assert "| OPD full | 4 | **45.0** | **30.0** |" in md
    assert "| opd_prefix | 4 | <u>40.0</u> | <u>28.0</u> |" in md
    assert "toy-ood (OOD)" in md
    assert "Problems per row: toy 10, toy-ood 10 (every row on the same problems)." in md


def test_main_table_row_at_a_fixed_step(tmp_path):
    """RUN@STEP: the paper's limited-budget rows (full OPD after 10 steps): that checkpoint's accuracies and the
    FLOPs and hours spent up to it, not the best checkpoint's and the whole run's."""
    res = plot(tmp_path, "main-table", [RUNS / "base", RUNS / "opd_full", f"{RUNS / 'opd_full'}@2"])
    rows = {r["method"]: r for r in res.data["rows"]}
    assert set(rows) == {"base", "OPD full", "OPD full @ step 2"}
    short = rows["OPD full @ step 2"]
    assert (short["best_step"], short["toy"], short["toy-ood"]) == (2, 0.3, 0.25)
    assert short["flops"] == metric("opd_full", 2, "flops_total") and short["hours"] == 0.5
    assert rows["OPD full"]["toy"] == 0.45
    with pytest.raises(OpdError, match="has no evaluation of step 3"):
        plot(tmp_path, "main-table", [f"{RUNS / 'opd_full'}@3"])


def test_main_table_says_when_rows_are_on_different_problems(tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    base = runs / "base" / "eval" / "toy.json"
    base.write_text(json.dumps({**json.loads(base.read_text()), "num_problems": 20}))
    md = plot(tmp_path / "out", "main-table", [runs]).data["markdown"]
    assert "Problems per row: toy-ood 10 (every row on the same problems)." in md
    assert "NOT the same problems in every row: toy: base 20; OPD full 10; opd_prefix 10; SFT 10." in md


def test_overlap(tmp_path):
    res = plot(tmp_path, "overlap", [RUNS / "opd_full", RUNS / "opd_prefix"])
    ratio = res.data["overlap_ratio"]["OPD full"]
    assert ratio["x"] == [1, 2, 3, 4]
    assert ratio["y"] == [metric("opd_full", s, "overlap_ratio") for s in range(1, 5)]
    assert res.data["overlap_mass"]["opd_prefix (teacher)"]["y"][0] == metric("opd_prefix", 1, "overlap_mass_teacher")


def test_missing_metrics_named(tmp_path):
    with pytest.raises(OpdError, match="sft: metrics.jsonl lacks overlap_ratio"):
        plot(tmp_path, "overlap", [RUNS / "sft"])


def test_missing_eval_named(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("command: train\n")
    with pytest.raises(OpdError, match="no dev benchmark"):
        plot(tmp_path / "out", "compute-vs-acc", [run])
    with pytest.raises(OpdError, match=r"has no eval/step_\*/toy.json"):
        plot(tmp_path / "out", "compute-vs-acc", [run], dev_benchmark="toy")


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(OpdError, match="no run folders"):
        plot(tmp_path, "overlap", [tmp_path])
    with pytest.raises(OpdError, match="not found"):
        plot(tmp_path, "overlap", [tmp_path / "nowhere"])


runner = CliRunner()


def test_cli(tmp_path):
    ok = runner.invoke(app, ["plot", "main-table", str(RUNS), "--output-dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "main-table.md").is_file()
    ok = runner.invoke(app, ["plot", "kl-position", str(RUNS / "opd_full"), "--steps", "1,4", "-o", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "kl-position.png").is_file() and (tmp_path / "kl-position.pdf").is_file()
    bad = runner.invoke(app, ["plot", "histogram", str(RUNS)])
    assert bad.exit_code == 2 and "unknown plot kind 'histogram'" in bad.output
    bad = runner.invoke(app, ["plot", "overlap", str(tmp_path / "empty")])
    assert bad.exit_code == 2 and "not found" in bad.output
    bad = runner.invoke(app, ["plot", "kl-position"])
    assert bad.exit_code == 2 and "needs one or more run folders" in bad.output


def test_method_labels(tmp_path: Path) -> None:
    from opd_cli.plot.read import label

    cases = {
        "a": ({"command": "train", "name": "toy-prefix"}, "toy-prefix"),
        "b": ({"command": "sft-baseline", "name": "toy"}, "sft toy"),
        "c": ({"command": "sft-baseline", "name": "SFT 300"}, "SFT 300"),
        "d": ({"command": "eval", "toy_model": "student", "model": None}, "base: toy student"),
        "e": ({"command": "eval", "model": "Qwen/Qwen3-8B-Base"}, "base: Qwen3-8B-Base"),
    }
    for folder, (config, want) in cases.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.yaml").write_text(yaml.safe_dump(config))
        assert label(tmp_path / folder) == want


def test_pdf_bytes_do_not_depend_on_the_time(tmp_path: Path) -> None:
    """Replotting the same data gives the same PDF (no creation date), so analysis/ diffs show real changes only."""
    from opd_cli.plot.draw import _plt, save

    blobs = []
    for sub in ("a", "b"):
        fig, ax = _plt().subplots()
        ax.plot([0, 1], [0.2, 0.5])
        save(fig, tmp_path / sub, "x")
        blobs.append((tmp_path / sub / "x.pdf").read_bytes())
    assert blobs[0] == blobs[1] and b"CreationDate" not in blobs[0]


def test_topk_support_labels_runs_by_their_loss(tmp_path):
    import shutil

    import yaml

    runs = []
    for src, extra in (("opd_full", {"loss": "sampled"}), ("opd_prefix", {"loss": "topk", "topk": 4, "topk_support": "overlap"})):
        run = tmp_path / "runs" / src
        shutil.copytree(RUNS / src, run)
        config = yaml.safe_load((run / "config.yaml").read_text()) | extra
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        runs.append(run)
    res = plot(tmp_path / "out", "topk-support", runs)
    assert set(res.data["acc"]) == {"sampled-token", "top-4 overlap"}
    assert res.data["acc"]["sampled-token"] == {"x": [0.0, 2.0, 4.0], "y": [0.1, 0.3, 0.45]}
    adv = res.data["overlap_adv"]["top-4 overlap"]
    assert adv["y"] == [metric("opd_prefix", s, "overlap_adv") for s in adv["x"]] and adv["x"] == [1.0, 2.0, 3.0, 4.0]
    assert (tmp_path / "out" / "topk-support.png").is_file()
    # dynamics: the same panels, labelled by run name
    dyn = plot(tmp_path / "out", "dynamics", runs)
    assert set(dyn.data["entropy_gap"]) == {"OPD full", "opd_prefix"}
    assert dyn.data["entropy_gap"]["OPD full"]["y"] == [metric("opd_full", s, "entropy_gap") for s in range(1, 5)]


def test_topk_support_needs_overlap_metrics(tmp_path):
    with pytest.raises(OpdError, match="has no overlap metrics"):
        plot(tmp_path, "topk-support", [RUNS / "sft"])


# ------------------------------------------------------------------------------------------- kl-by-position profiles
PROFILES = AN / "profiles"  # a kl-by-position folder written with --metric kl,entropy-student,... --grade


def _fixture_rewards(step: int) -> tuple[list[float], list[float]]:
    recs = [json.loads(x) for x in (PROFILES / "rollout_rewards.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["step"] == step and r["seq_mean_reward"] is not None]
    return ([r["seq_mean_reward"] for r in recs if r["correct"]], [r["seq_mean_reward"] for r in recs if not r["correct"]])


def test_position_profile_draws_the_chosen_metric(tmp_path):
    res = plot(tmp_path, "position-profile", [PROFILES], metric="entropy-student")
    assert res.paths[0].name == "position-profile-entropy-student.png"
    # the logged row has no entropy: only the two checkpoint steps are drawn
    assert res.data["profiles"] == {"step 10": {"x": [0, 256], "y": [1.2, 1.5]}, "step 30": {"x": [0, 256], "y": [1.0, 2.5]}}
    over = plot(tmp_path, "position-profile", [PROFILES], metric="overlap", steps=[30])
    assert over.data["profiles"] == {"step 30": {"x": [0, 256], "y": [0.625, 0.25]}}
    kl = plot(tmp_path, "position-profile", [PROFILES]).data["profiles"]  # default metric kl: the logged row too
    assert kl["step 20 (logged)"] == {"x": [0], "y": [0.5]}
    assert kl["step 10 (checkpoint)"]["y"] == [0.8, 0.4]
    # the extra columns leave the KL curve of `kl-position` as it was
    assert plot(tmp_path, "kl-position", [PROFILES]).data["profiles"] == kl


def test_position_profile_missing_column_and_bad_metric(tmp_path):
    with pytest.raises(OpdError, match="has no mean_entropy_teacher column: run opd kl-by-position --metric entropy-teacher"):
        plot(tmp_path, "position-profile", [AN / "klpos"], metric="entropy-teacher")
    with pytest.raises(OpdError, match="no mean_overlap values at step"):
        plot(tmp_path, "position-profile", [PROFILES], metric="overlap", steps=[20])
    bad = runner.invoke(app, ["plot", "position-profile", str(PROFILES), "--metric", "entropy", "-o", str(tmp_path)])
    assert bad.exit_code == 2
    lines = [x for x in bad.stderr.splitlines() if x.strip()]
    assert lines == ["error: unknown --metric 'entropy' for position-profile: use one of kl, entropy-student, "
                     "entropy-teacher, overlap"]


def test_reward_auroc(tmp_path):
    from opd_cli.analyses.rollout_rewards import auroc

    res = plot(tmp_path, "reward-auroc", [PROFILES])
    # hand-computed: step 10 correct {0.1, -0.2, 0.3} vs incorrect {-0.5, 0.1} (the null reward left out): 4.5 / 6
    assert res.data["auroc"]["profiles"] == {"x": [10, 30], "y": [0.75, 1.0]}
    assert res.data["auroc"]["profiles"]["y"] == [auroc(*_fixture_rewards(10)), auroc(*_fixture_rewards(30))]
    assert res.data["profiles step 10"] == {"correct": {"x": [-0.2, 0.1, 0.3], "y": [1 / 3, 2 / 3, 1.0]},
                                            "incorrect": {"x": [-0.5, 0.1], "y": [0.5, 1.0]}}
    assert res.data["profiles step 30"]["incorrect"]["x"] == sorted(_fixture_rewards(30)[1])
    rows = list(csv.DictReader((tmp_path / "reward-auroc.csv").open()))
    fixture = list(csv.DictReader((PROFILES / "reward_auroc.csv").open()))
    assert [(r["step"], r["correct"], float(r["auroc"])) for r in rows] == [
        (f["step"], f["correct"], float(f["auroc"])) for f in fixture]
    one = plot(tmp_path, "reward-auroc", [PROFILES], steps=[30])
    assert set(one.data) == {"auroc", "table", "profiles step 30"}
    with pytest.raises(OpdError, match=r"no rollouts at step\(s\) 20"):
        plot(tmp_path, "reward-auroc", [PROFILES], steps=[20])
    with pytest.raises(OpdError, match="run opd kl-by-position --grade first"):
        plot(tmp_path, "reward-auroc", [AN / "klpos"])


def _student_prefix_run(root: Path) -> Path:
    """A student-prefix probe folder as `opd probe-teacher-prefix --prefix-from student` writes it."""
    run = root / "sp"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("command: probe-teacher-prefix\nname: sp\nprefix_from: student\n")
    (run / "probe.csv").write_text("length,mean_acc,stderr,n,mean_prefix_tokens,gain,prefix_from\n"
                                   "0,0.5,0.02,16,0,0.4,student\n"
                                   "1024,0.45,0.02,16,1000,0.35,student\n"
                                   "8192,0.15,0.02,16,7000,0.05,student\n")
    (run / "summary.json").write_text(json.dumps({"prefix_from": "student", "student_acc": 0.1}))
    return run


def test_teacher_prefix_plot_of_a_student_prefix_run(tmp_path):
    res = plot(tmp_path / "out", "teacher-prefix", [_student_prefix_run(tmp_path)])
    lines = res.data["probe"]
    assert set(lines) == {"sp (student prefix, teacher continues)", "sp: teacher alone", "sp: student (own solutions)"}
    assert lines["sp (student prefix, teacher continues)"] == {"x": [1024, 8192], "y": [0.45, 0.15]}
    assert lines["sp: teacher alone"]["y"][0] == 0.5
    assert lines["sp: student (own solutions)"]["y"][0] == 0.1
    assert res.data["axes"] == {"x": "student prefix length L (tokens)", "y": "Mean Acc (teacher continues)",
                                "title": "student-prefix probe"}
    # beside a teacher-prefix run: that one keeps its labels, the axes name neither direction
    both = plot(tmp_path / "both", "teacher-prefix", [AN / "probe", _student_prefix_run(tmp_path / "b")])
    assert {"probe", "probe: student alone", "probe: teacher", "sp: teacher alone"} <= set(both.data["probe"])
    assert both.data["axes"]["x"] == "prefix length L (tokens)"
    assert plot(tmp_path / "t", "teacher-prefix", [AN / "probe"]).data["axes"]["x"] == "teacher prefix length L (tokens)"


def _sweep_run(tmp_path, name, dev, ood_steps):
    """A copy of the prefix fixture with dev (toy) accuracies ``dev`` at steps 0, 2, 4 and toy-ood only at
    ``ood_steps``."""
    run = tmp_path / "runs" / name
    shutil.copytree(RUNS / "opd_prefix", run)
    for step, acc in zip((0, 2, 4), dev, strict=True):
        folder = run / "eval" / f"step_{step:06d}"
        summary = json.loads((folder / "toy.json").read_text())
        (folder / "toy.json").write_text(json.dumps({**summary, "mean_acc": acc}))
        if step not in ood_steps:
            (folder / "toy-ood.json").unlink()
    return run


def test_lr_sweep_level_is_not_set_by_a_run_that_never_trains(tmp_path):
    """A collapsed lr (never above its first checkpoint) would put the level at the untrained student's; the
    checkpoint is picked among those evaluated out of domain (here step 4 of `late`, not its closer step 2)."""
    runs = [_sweep_run(tmp_path, "good", [0.1, 0.35, 0.4], {0, 2, 4}),
            _sweep_run(tmp_path, "late", [0.1, 0.42, 0.5], {0, 4}),
            _sweep_run(tmp_path, "collapsed", [0.1, 0.05, 0.02], {0, 4})]
    res = plot(tmp_path / "out", "lr-sweep", runs, ood=["toy-ood"])
    assert res.data["target"] == 0.4  # the lowest level the runs that train reach, not 0.1
    rows = {r["method"].split(" ")[0]: r for r in csv.DictReader((tmp_path / "out" / "lr-sweep.csv").open())}
    assert [(rows[n]["step"], rows[n]["trains"]) for n in ("good", "late", "collapsed")] == [
        ("4", "True"), ("4", "True"), ("0", "False")]
    assert float(rows["late"]["toy-ood"]) == 0.28
