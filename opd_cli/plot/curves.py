"""The line-figure kinds of `opd plot`: kl-position (Fig. 2/5), teacher-prefix (Fig. 3), compute-vs-acc,
sft-prefix (Fig. 6), lr-sweep (with its OOD table at matched dev accuracy) and overlap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opd_cli.core.errors import OpdError
from opd_cli.core.table_io import write_csv
from opd_cli.plot.draw import PlotResult, _panels, axes_data, save
from opd_cli.plot.read import collect, dev_curve, eval_scores, flops_at, label, metrics_by_step, read_csv
from opd_cli.plot.seeds import band, collect_seeds, label_with_seeds, mean_curve, mean_sd

if TYPE_CHECKING:
    from opd_cli.plot.config import PlotConfig

OVERLAP_METRICS = ("overlap_ratio", "overlap_adv", "entropy_gap", "overlap_mass_student", "overlap_mass_teacher")


X_TOTALS = {"flops": "flops_total", "wall": "wall_time"}  # x axes read from running totals in metrics.jsonl


def evenly_spaced(steps: list[int], k: int = 3) -> list[int]:
    steps = sorted(steps)
    if len(steps) <= k:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (k - 1))] for i in range(k)})


def kl_curves(run: Path, cfg: PlotConfig) -> dict[str, tuple[list[float], list[float]]]:
    """KL per position bin: from ``kl_by_position.csv`` in the folder, else from logged ``kl_bin_mean``."""
    csv_file = run / "kl_by_position.csv"
    curves: dict[str, tuple[list[float], list[float]]] = {}
    if csv_file.is_file():
        rows = read_csv(csv_file)
        keys = sorted({(r["source"], int(float(r["step"]))) for r in rows}, key=lambda t: (t[1], t[0]))
        sources = {s for s, _ in keys}
        for source, step in keys:
            if cfg.steps and step not in cfg.steps:
                continue
            sel = sorted(
                (r for r in rows if r["source"] == source and int(float(r["step"])) == step),
                key=lambda r: float(r["bin_start"]),
            )
            name = f"step {step}" + (f" ({source})" if len(sources) > 1 else "")
            curves[name] = ([float(r["bin_start"]) for r in sel], [float(r["mean_kl"]) for r in sel])
        if cfg.steps and not curves:
            raise OpdError(f"{csv_file} has no rows at step(s) {', '.join(map(str, cfg.steps))}")
        return curves
    m = metrics_by_step(run)
    logged = [s for s, r in m.items() if r.get("kl_bin_mean")]
    if not logged:
        raise OpdError(
            f"run {run}: no kl_by_position.csv and no kl_bin_mean in metrics.jsonl: run opd kl-by-position or opd train"
        )
    steps = cfg.steps or evenly_spaced(logged)
    lacking = [s for s in steps if s not in logged]
    if lacking:
        raise OpdError(
            f"run {run}: no kl_bin_mean logged at step(s) {', '.join(map(str, lacking))} (logged: {min(logged)}..{max(logged)})"
        )
    for s in steps:
        size = float(m[s].get("kl_bin_size") or 256)
        ys = [float(v) if v is not None else float("nan") for v in m[s]["kl_bin_mean"]]
        curves[f"step {s}"] = ([i * size for i in range(len(ys))], ys)
    return curves


def plot_kl_position(cfg: PlotConfig, out: Path) -> PlotResult:
    runs = collect(cfg, lambda run: kl_curves(run, cfg), needs="kl_by_position.csv")
    fig, axes = _panels(len(runs))
    data = {}
    for ax, (run, curves) in zip(axes, runs, strict=True):
        for name, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o", ms=3, label=name)
        ax.set(
            title=label(run),
            xlabel="response position (bin start, tokens)",
            ylabel="reverse KL (sampled-token estimate)",
        )
        ax.legend(fontsize=8)
        data[label(run)] = axes_data(ax)
    return PlotResult(save(fig, out, "kl-position"), data)


def _probe(run: Path) -> tuple[list[dict[str, str]], float | None]:
    f = run / "probe.csv"
    if not f.is_file():
        raise OpdError(f"{run} has no probe.csv: run opd probe-teacher-prefix first")
    rows = sorted(read_csv(f), key=lambda r: int(float(r["length"])))
    if not rows:
        raise OpdError(f"{f} has no rows")
    summary = run / "summary.json"
    teacher = json.loads(summary.read_text()).get("teacher_acc") if summary.is_file() else None
    return rows, teacher


def plot_teacher_prefix(cfg: PlotConfig, out: Path) -> PlotResult:
    """Accuracy vs prefix length L. A teacher-prefix run (Fig. 3): the student continues, the flat lines are the
    student alone (L = 0) and the teacher's own solutions. A student-prefix run (``prefix_from: student``,
    Rethinking-OPD Fig. 11b): the teacher continues, the flat lines are the teacher alone and the student's own."""
    from opd_cli.core.runs import read_config

    runs = collect(cfg, _probe, needs="probe.csv")
    fig, axes = _panels(1, 6)
    ax = axes[0]
    directions: set[str] = set()
    for run, (rows, teacher) in runs:
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        # who wrote the prefixes; runs made before --prefix-from record it nowhere: the teacher
        side = rows[0].get("prefix_from") or summary.get("prefix_from") or read_config(run).get("prefix_from") or "teacher"
        continuer = "student" if side == "teacher" else "teacher"
        directions.add(side)
        own = teacher if side == "teacher" else summary.get("student_acc")  # the writer's own solutions
        probe = [r for r in rows if int(float(r["length"])) > 0]
        name = label(run)
        curve = name if side == "teacher" else f"{name} (student prefix, teacher continues)"
        (line,) = ax.plot([int(float(r["length"])) for r in probe], [float(r["mean_acc"]) for r in probe], marker="o",
                          label=curve)
        colour = line.get_color()  # a run's flat lines in its curve's colour: several runs stay apart
        alone = [float(r["mean_acc"]) for r in rows if int(float(r["length"])) == 0]
        if alone:
            ax.axhline(alone[0], ls=":", color=colour, label=f"{name}: {continuer} alone")
        if own is not None:
            own_label = f"{name}: teacher" if side == "teacher" else f"{name}: student (own solutions)"
            ax.axhline(float(own), ls="--", color=colour, alpha=0.6, label=own_label)
    if directions == {"teacher"}:
        xlabel, ylabel, title = "teacher prefix length L (tokens)", "Mean Acc (student continues)", "teacher-prefix probe"
    elif directions == {"student"}:
        xlabel, ylabel, title = "student prefix length L (tokens)", "Mean Acc (teacher continues)", "student-prefix probe"
    else:
        xlabel, ylabel, title = "prefix length L (tokens)", "Mean Acc (prefix + continuation)", "prefix probes"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    axes_text = {"x": xlabel, "y": ylabel, "title": title}
    return PlotResult(save(fig, out, "teacher-prefix"), {"probe": axes_data(ax), "axes": axes_text})


def _run_label(run: Path, with_lr: bool) -> str:
    from opd_cli.core.runs import read_config

    name, lr = label(run), read_config(run).get("lr")
    return f"{name} (lr={lr})" if with_lr and lr is not None and "lr" not in name else name


def _acc_points(run: Path, cfg: PlotConfig, x_axis: str) -> tuple[str, dict[int, tuple[float, float]]]:
    """Dev accuracy at each evaluated checkpoint, ``{step: (x, acc)}``, x = cumulative FLOPs or training wall time
    (step 0 left out: log axis) or the step."""
    bench, scores = dev_curve(run, cfg)
    if x_axis in X_TOTALS:
        steps = [s for s in scores if s > 0]
        f = flops_at(run, steps, X_TOTALS[x_axis])
        return bench, {s: (f[s], scores[s]) for s in steps}
    return bench, {s: (float(s), acc) for s, acc in scores.items()}


def _acc_plot(cfg: PlotConfig, out: Path, stem: str, x_axis: str, title: str, with_lr: bool) -> PlotResult:
    """One line per method: over its seeds, the mean accuracy at the mean x of each step every seed reached, with a
    ± sd band."""
    runs = collect_seeds(cfg, lambda run: _acc_points(run, cfg, x_axis))
    fig, axes = _panels(1, 6)
    ax = axes[0]
    for run, seeds in runs:
        xs = mean_curve([{s: x for s, (x, _) in points.items()} for _, points in seeds])
        ys = mean_curve([{s: y for s, (_, y) in points.items()} for _, points in seeds])
        means, sds = [m for m, _ in ys.values()], [sd for _, sd in ys.values()]
        ax.plot([m for m, _ in xs.values()], means, marker="o", label=label_with_seeds(_run_label(run, with_lr), len(seeds)))
        band(ax, [m for m, _ in xs.values()], means, sds)
    if x_axis in X_TOTALS:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        if hi / lo > 10:  # several decades: their labels only (minor ones overlap); within one, matplotlib's 2-9 labels
            ax.xaxis.set_minor_formatter(NullFormatter())
    benches = sorted({b for _, seeds in runs for b, _ in seeds})
    ax.set(
        xlabel={"flops": "cumulative training FLOPs", "wall": "training wall time (s)"}.get(x_axis, "step"),
        ylabel=f"{'/'.join(benches)} Mean Acc",
        title=title,
    )
    ax.legend(fontsize=8, framealpha=0.5)  # see-through: with wide bands no corner is free of points
    fig.canvas.draw()  # tick labels are made at draw time
    lo, hi = ax.get_xlim()
    ticks = [t.get_text() for minor in (False, True) for t in ax.get_xticklabels(minor=minor)
             if t.get_text() and lo <= t.get_position()[0] <= hi]
    return PlotResult(save(fig, out, stem), {"acc": axes_data(ax), "x_tick_labels": ticks})


def plot_compute_vs_acc(cfg: PlotConfig, out: Path) -> PlotResult:
    stem = "compute-vs-acc" if cfg.x_axis == "flops" else f"compute-vs-acc-{cfg.x_axis}"
    return _acc_plot(cfg, out, stem, cfg.x_axis, "compute vs accuracy", with_lr=False)


def plot_sft_prefix(cfg: PlotConfig, out: Path) -> PlotResult:
    return _acc_plot(cfg, out, "sft-prefix", cfg.x_axis, "prefix SFT vs OPD", with_lr=True)


def plot_lr_sweep(cfg: PlotConfig, out: Path) -> PlotResult:
    """Dev accuracy over steps per lr, and OOD accuracy at a matched dev level: each run's checkpoint closest to the
    level among those where every seed was evaluated out of domain (all of them where none is). The level is
    --match-acc, else the highest that every run that trains reaches at such a checkpoint; a run that never rises
    above its first checkpoint (a collapsed lr) does not set it, or it would be the untrained student's. Over seeds,
    the mean curve picks the checkpoint and the OOD accuracy is the seeds' mean there."""
    groups = collect_seeds(cfg, lambda run: (dev_curve(run, cfg)[1], {b: eval_scores(run, b) for b in cfg.ood}))
    curves = {run: {s: m for s, (m, _) in mean_curve([dev for dev, _ in seeds]).items()} for run, seeds in groups}
    candidates = {}
    for run, seeds in groups:
        # a step where every seed was evaluated out of domain (a seed's own best pick is evaluated there alone)
        with_ood = set(curves[run]).intersection(*({s for b in cfg.ood for s in oods[b]} for _, oods in seeds))
        candidates[run] = sorted(with_ood or curves[run])
    reach = {run: max(curves[run][s] for s in candidates[run]) for run in curves}
    trains = {run: reach[run] > curves[run][min(curves[run])] for run in curves}
    levels = [reach[run] for run in curves if trains[run]] or list(reach.values())
    target = cfg.match_acc if cfg.match_acc >= 0 else min(levels)
    fig, axes = _panels(2, 5.5)
    rows: list[dict[str, Any]] = []
    for run, seeds in groups:
        scores = curves[run]
        name = label_with_seeds(_run_label(run, with_lr=True), len(seeds))
        axes[0].plot(list(scores), list(scores.values()), marker="o", label=name)
        step = min(candidates[run], key=lambda s: (abs(scores[s] - target), s))  # earliest of equally close ones
        row: dict[str, Any] = {"method": name, "step": step, "dev_acc": scores[step], "trains": trains[run]}
        for b in cfg.ood:
            ood = [oods[b][step] for _, oods in seeds if step in oods[b]]
            if ood:
                row[b] = mean_sd(ood)[0]
        rows.append(row)
    axes[0].axhline(target, ls=":", color="grey")
    axes[0].set(xlabel="step", ylabel="dev Mean Acc", title="learning-rate sweep")
    axes[0].legend(fontsize=8)
    oods = [b for b in cfg.ood if any(b in r for r in rows)]
    if not oods:
        raise OpdError(
            f"no out-of-domain eval ({', '.join(cfg.ood)}) at the matched checkpoints: evaluate them or set --ood"
        )
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        axes[1].bar(
            [j + i * width for j in range(len(oods))], [r.get(b, float("nan")) for b in oods], width,
            label=r["method"] if r["trains"] else f"{r['method']}: does not train (step {r['step']})",
            hatch="" if r["trains"] else "//",
        )
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(oods))], oods)
    axes[1].set(ylabel="Mean Acc", title=f"OOD at matched dev accuracy ({target:.3f})")
    top = max((r.get(b, 0.0) for r in rows for b in oods), default=0.0)
    axes[1].set_ylim(0, 1.5 * top or 1.0)  # room above the bars for the legend
    axes[1].legend(fontsize=8)
    table = [{k: r.get(k, "") for k in ["method", "step", "dev_acc", *oods, "trains"]} for r in rows]
    paths = save(fig, out, "lr-sweep") + [write_csv(table, out / "lr-sweep.csv")]
    return PlotResult(paths, {"dev": axes_data(axes[0]), "matched": table, "target": target})


OVERLAP_PANELS = (
    ("overlap_ratio",),
    ("overlap_adv",),
    ("entropy_gap",),
    ("overlap_mass_student", "overlap_mass_teacher"),
)


def _overlap_metrics(run: Path) -> dict[int, dict[str, Any]]:
    m = metrics_by_step(run)
    lacking = [k for k in OVERLAP_METRICS if not any(r.get(k) is not None for r in m.values())]
    if lacking:
        raise OpdError(f"run {run}: metrics.jsonl lacks {', '.join(lacking)} (logged by opd train)")
    return m


def plot_overlap(cfg: PlotConfig, out: Path) -> PlotResult:
    runs = collect(cfg, _overlap_metrics)
    fig, axes = _panels(len(OVERLAP_PANELS), 4.2)
    for run, m in runs:
        for ax, keys in zip(axes, OVERLAP_PANELS, strict=True):
            for k in keys:
                steps = [s for s in sorted(m) if m[s].get(k) is not None]
                suffix = f" ({k.split('_')[-1]})" if len(keys) > 1 else ""
                ax.plot(steps, [float(m[s][k]) for s in steps], marker=".", label=f"{label(run)}{suffix}")
    for ax, keys in zip(axes, OVERLAP_PANELS, strict=True):
        ax.set(xlabel="step", title=keys[0] if len(keys) == 1 else "overlap mass (student, teacher)")
        ax.legend(fontsize=7)
    data = {
        keys[0] if len(keys) == 1 else "overlap_mass": axes_data(ax)
        for ax, keys in zip(axes, OVERLAP_PANELS, strict=True)
    }
    return PlotResult(save(fig, out, "overlap"), data)
