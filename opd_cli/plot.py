"""`opd plot KIND RUNS...`: the paper's figures and tables from run folders (docs/run-format.md), nothing else.

Each kind reads only the files a command wrote (config.yaml, metrics.jsonl, eval/..., probe.csv, table.csv,
kl_by_position.csv), draws with matplotlib's Agg backend, writes PNG + PDF (and CSV/markdown for tables) and
returns the values it drew, read back from the Axes, so tests can compare them with the inputs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from opd_cli.config import check, field
from opd_cli.errors import OpdError
from opd_cli.log import logger
from opd_cli.runs import step_folder

KINDS = (
    "kl-position",
    "teacher-prefix",
    "compute-vs-acc",
    "sft-prefix",
    "lr-sweep",
    "window-ablation",
    "main-table",
    "overlap",
)
OVERLAP_METRICS = ("overlap_ratio", "overlap_adv", "entropy_gap", "overlap_mass_student", "overlap_mass_teacher")


@dataclass
class PlotConfig:
    command = "plot"

    kind: str = field("", help=f"What to draw: {' | '.join(KINDS)}.")
    runs: list[str] = field([], help="Run folders, or folders of run folders.")
    output_dir: str = field("plots", help="Folder for the PNG/PDF (and CSV/markdown) files.")
    steps: list[int] = field([], help="kl-position: training steps to draw; [] = three evenly spaced logged steps.")
    dev_benchmark: str = field("", help="Dev benchmark that picks checkpoints; '' = each run's eval/best.json.")
    in_domain: list[str] = field(["math500", "aime24", "aime25", "toy"], help="main-table/lr-sweep: in-domain benchmarks.")
    ood: list[str] = field(["gpqa", "mmlu-pro", "mmlu_pro", "toy-ood"], help="main-table/lr-sweep: out-of-domain benchmarks.")
    x_axis: str = field("flops", help="sft-prefix: x axis, flops | step.")
    match_acc: float = field(-1.0, help="lr-sweep: dev accuracy to match for OOD (0..1); -1 = the best level every run reaches.")

    def __post_init__(self) -> None:
        check(self.kind in KINDS, f"unknown plot kind {self.kind!r}: use one of {', '.join(KINDS)}")
        check(bool(self.runs), f"`opd plot {self.kind}` needs one or more run folders (or folders of runs)")
        check(self.x_axis in ("flops", "step"), f"--x-axis must be flops or step, got {self.x_axis!r}")
        check(all(s >= 0 for s in self.steps), f"--steps must be non-negative, got {self.steps}")


@dataclass
class PlotResult:
    """The files written and the values drawn: ``data[panel][label] = {"x": [...], "y": [...]}`` or table rows."""

    paths: list[Path]
    data: dict[str, Any] = dc_field(default_factory=dict)


# ------------------------------------------------------------------------------------------- reading runs
def run_folders(paths: list[str], needs: str = "") -> list[tuple[Path, bool]]:
    """Expand arguments into ``(folder, named)`` pairs: a run folder (config.yaml, or the analysis file ``needs``)
    is taken as named; a folder of runs contributes each run under it. Missing paths and empty folders are errors."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise OpdError(f"run folder(s) not found: {', '.join(missing)}")

    def is_run(d: Path) -> bool:
        return (d / "config.yaml").is_file() or bool(needs and (d / needs).is_file())

    found: list[tuple[Path, bool]] = []
    for p in map(Path, paths):
        if is_run(p):
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
    from opd_cli.runs import read_config

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
    from opd_cli.runs import read_metrics

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


def flops_at(run: Path, steps: list[int]) -> dict[int, float]:
    """Cumulative training FLOPs (metrics ``flops_total``) at each step; step 0 costs nothing."""
    m = metrics_by_step(run)
    out, lacking = {}, []
    for s in steps:
        if s == 0:
            out[s] = 0.0
        elif m.get(s, {}).get("flops_total") is None:
            lacking.append(s)
        else:
            out[s] = float(m[s]["flops_total"])
    if lacking:
        raise OpdError(f"run {run}: metrics.jsonl has no flops_total at step(s) {', '.join(map(str, lacking))}")
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- drawing
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def axes_data(ax: Any) -> dict[str, dict[str, list[float]]]:
    """The labelled lines of an Axes, as plotted: ``{label: {"x": [...], "y": [...]}}``."""
    out = {}
    for line in ax.get_lines():
        lab = line.get_label()
        if lab and not lab.startswith("_"):
            out[lab] = {"x": [float(v) for v in line.get_xdata()], "y": [float(v) for v in line.get_ydata()]}
    return out


def save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.tight_layout()
    for p in paths:  # no creation date in the PDF: the same runs give the same bytes (clean diffs of analysis/)
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    _plt().close(fig)
    return paths


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _panels(n: int, width: float = 5.0) -> tuple[Any, list[Any]]:
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(width * n, 3.8), squeeze=False)
    return fig, list(axes[0])


# ------------------------------------------------------------------------------------------- kinds
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
            sel = sorted((r for r in rows if r["source"] == source and int(float(r["step"])) == step), key=lambda r: float(r["bin_start"]))
            name = f"step {step}" + (f" ({source})" if len(sources) > 1 else "")
            curves[name] = ([float(r["bin_start"]) for r in sel], [float(r["mean_kl"]) for r in sel])
        if cfg.steps and not curves:
            raise OpdError(f"{csv_file} has no rows at step(s) {', '.join(map(str, cfg.steps))}")
        return curves
    m = metrics_by_step(run)
    logged = [s for s, r in m.items() if r.get("kl_bin_mean")]
    if not logged:
        raise OpdError(f"run {run}: no kl_by_position.csv and no kl_bin_mean in metrics.jsonl: run opd kl-by-position or opd train")
    steps = cfg.steps or evenly_spaced(logged)
    lacking = [s for s in steps if s not in logged]
    if lacking:
        raise OpdError(f"run {run}: no kl_bin_mean logged at step(s) {', '.join(map(str, lacking))} (logged: {min(logged)}..{max(logged)})")
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
        ax.set(title=label(run), xlabel="response position (bin start, tokens)", ylabel="reverse KL (sampled-token estimate)")
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
    runs = collect(cfg, _probe, needs="probe.csv")
    fig, axes = _panels(1, 6)
    ax = axes[0]
    for run, (rows, teacher) in runs:
        probe = [r for r in rows if int(float(r["length"])) > 0]
        name = label(run)
        ax.plot([int(float(r["length"])) for r in probe], [float(r["mean_acc"]) for r in probe], marker="o", label=name)
        alone = [float(r["mean_acc"]) for r in rows if int(float(r["length"])) == 0]
        if alone:
            ax.axhline(alone[0], ls=":", color="grey", label=f"{name}: student alone")
        if teacher is not None:
            ax.axhline(float(teacher), ls="--", color="black", label=f"{name}: teacher")
    ax.set(xlabel="teacher prefix length L (tokens)", ylabel="Mean Acc (student continues)", title="teacher-prefix probe")
    ax.legend(fontsize=8)
    return PlotResult(save(fig, out, "teacher-prefix"), {"probe": axes_data(ax)})


def _run_label(run: Path, with_lr: bool) -> str:
    from opd_cli.runs import read_config

    name, lr = label(run), read_config(run).get("lr")
    return f"{name} (lr={lr})" if with_lr and lr is not None and "lr" not in name else name


def _acc_points(run: Path, cfg: PlotConfig, x_axis: str) -> tuple[str, list[float], list[float]]:
    """Dev accuracy over evaluated checkpoints against cumulative FLOPs (step 0 left out: log axis) or steps."""
    bench, scores = dev_curve(run, cfg)
    if x_axis == "flops":
        steps = [s for s in scores if s > 0]
        f = flops_at(run, steps)
        return bench, [f[s] for s in steps], [scores[s] for s in steps]
    return bench, [float(s) for s in scores], list(scores.values())


def _acc_plot(cfg: PlotConfig, out: Path, stem: str, x_axis: str, title: str, with_lr: bool) -> PlotResult:
    runs = collect(cfg, lambda run: _acc_points(run, cfg, x_axis))
    fig, axes = _panels(1, 6)
    ax = axes[0]
    for run, (_, xs, ys) in runs:
        ax.plot(xs, ys, marker="o", label=_run_label(run, with_lr))
    if x_axis == "flops":
        ax.set_xscale("log")
    benches = sorted({b for _, (b, _, _) in runs})
    ax.set(xlabel="cumulative training FLOPs" if x_axis == "flops" else "step", ylabel=f"{'/'.join(benches)} Mean Acc", title=title)
    ax.legend(fontsize=8)
    return PlotResult(save(fig, out, stem), {"acc": axes_data(ax)})


def plot_compute_vs_acc(cfg: PlotConfig, out: Path) -> PlotResult:
    return _acc_plot(cfg, out, "compute-vs-acc", "flops", "compute vs accuracy", with_lr=False)


def plot_sft_prefix(cfg: PlotConfig, out: Path) -> PlotResult:
    return _acc_plot(cfg, out, "sft-prefix", cfg.x_axis, "prefix SFT vs OPD", with_lr=True)


def plot_lr_sweep(cfg: PlotConfig, out: Path) -> PlotResult:
    """Dev accuracy over steps per lr, and OOD accuracy at the checkpoint whose dev accuracy is closest to a level."""
    curves = dict(collect(cfg, lambda run: dev_curve(run, cfg)))
    target = cfg.match_acc if cfg.match_acc >= 0 else min(max(s.values()) for _, s in curves.values())
    fig, axes = _panels(2, 5.5)
    rows: list[dict[str, Any]] = []
    for run, (_, scores) in curves.items():
        name = _run_label(run, with_lr=True)
        axes[0].plot(list(scores), list(scores.values()), marker="o", label=name)
        step = min(scores, key=lambda s: (abs(scores[s] - target), s))  # earliest of equally close checkpoints
        row: dict[str, Any] = {"method": name, "step": step, "dev_acc": scores[step]}
        for b in cfg.ood:
            ood = eval_scores(run, b)
            if step in ood:
                row[b] = ood[step]
        rows.append(row)
    axes[0].axhline(target, ls=":", color="grey")
    axes[0].set(xlabel="step", ylabel="dev Mean Acc", title="learning-rate sweep")
    axes[0].legend(fontsize=8)
    oods = [b for b in cfg.ood if any(b in r for r in rows)]
    if not oods:
        raise OpdError(f"no out-of-domain eval ({', '.join(cfg.ood)}) at the matched checkpoints: evaluate them or set --ood")
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        axes[1].bar([j + i * width for j in range(len(oods))], [r.get(b, float("nan")) for b in oods], width, label=r["method"])
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(oods))], oods)
    axes[1].set(ylabel="Mean Acc", title=f"OOD at matched dev accuracy ({target:.3f})")
    axes[1].legend(fontsize=8)
    table = [{k: r.get(k, "") for k in ["method", "step", "dev_acc", *oods]} for r in rows]
    paths = save(fig, out, "lr-sweep") + [write_rows(table, out / "lr-sweep.csv")]
    return PlotResult(paths, {"dev": axes_data(axes[0]), "matched": table, "target": target})


def _table_csv(run: Path) -> list[dict[str, str]]:
    f = run / "table.csv"
    if not f.is_file():
        raise OpdError(f"{run} has no table.csv: run opd window-ablation first")
    rows = read_csv(f)
    if not rows:
        raise OpdError(f"{f} has no rows")
    return rows


def plot_window_ablation(cfg: PlotConfig, out: Path) -> PlotResult:
    rows = [r for _, rs in collect(cfg, _table_csv, needs="table.csv") for r in rs]
    methods: dict[str, dict[int, float]] = {}
    for r in rows:
        key = r["method"] if r.get("window") in (None, "", r["method"]) else f"{r['method']} [{r['window']}]"
        methods.setdefault(key, {})[int(float(r["step"]))] = float(r["dev_acc"])
    steps = sorted({s for v in methods.values() for s in v})
    fig, axes = _panels(1, 6)
    for name, sc in methods.items():
        axes[0].plot(sorted(sc), [sc[s] for s in sorted(sc)], marker="o", label=name)
    axes[0].set(xlabel="step", ylabel="dev Mean Acc", title="window ablation")
    axes[0].legend(fontsize=8)
    md = markdown_table(
        ["method", *[f"step {s}" for s in steps]],
        [[name, *[f"{100 * sc[s]:.1f}" if s in sc else "-" for s in steps]] for name, sc in methods.items()],
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "window-ablation.md").write_text(md)
    paths = save(fig, out, "window-ablation") + [out / "window-ablation.md"]
    return PlotResult(paths, {"acc": axes_data(axes[0]), "markdown": md})


def _mark(values: dict[str, float | None]) -> dict[str, str]:
    """Best in bold, second best underlined (ties share the mark), in percent."""
    present = sorted({v for v in values.values() if v is not None}, reverse=True)
    out = {}
    for k, v in values.items():
        if v is None:
            out[k] = "-"
            continue
        text = f"{100 * v:.1f}"
        if len(present) > 1 and v == present[0]:
            text = f"**{text}**"
        elif len(present) > 2 and v == present[1]:
            text = f"<u>{text}</u>"
        out[k] = text
    return out


def main_table_row(run: Path) -> dict[str, Any]:
    """One run: the accuracies of its best dev checkpoint (eval/best.json), its total FLOPs and hours."""
    info = best_info(run)
    if info:
        step = int(info["best_step"])
        folder = run / "eval" / step_folder(step)
    elif list((run / "eval").glob("*.json")):
        step, folder = None, run / "eval"  # `opd eval --model`: a model without training (the base row)
    else:
        raise OpdError(f"run {run} has no eval/best.json and no eval/*.json: run opd eval on it first")
    scores = {}
    for f in sorted(folder.glob("*.json")):
        if f.name != "best.json":
            scores[f.stem] = float(json.loads(f.read_text())["mean_acc"])
    if not scores:
        raise OpdError(f"run {run}: no benchmark summaries in {folder}")
    m = metrics_by_step(run)
    last = m[max(m)] if m else {}
    wall = last.get("wall_time")
    return {
        "method": label(run),
        "best_step": step,
        **scores,
        "flops": float(last["flops_total"]) if last.get("flops_total") is not None else None,
        "hours": float(wall) / 3600 if wall is not None else None,
    }


def plot_main_table(cfg: PlotConfig, out: Path) -> PlotResult:
    rows = [r for _, r in collect(cfg, main_table_row)]
    present = {k for r in rows for k in r} - {"method", "best_step", "flops", "hours"}
    known = [b for b in cfg.in_domain if b in present] + [b for b in cfg.ood if b in present]
    benches = known + sorted(present - set(known))
    rows = [{k: r.get(k) for k in ["method", "best_step", *benches, "flops", "hours"]} for r in rows]
    marks = {b: _mark({r["method"]: r[b] for r in rows}) for b in benches}
    header = ["method", "best step", *[f"{b} (OOD)" if b in cfg.ood else b for b in benches], "FLOPs", "hours"]
    md_rows = [
        [
            r["method"],
            "-" if r["best_step"] is None else str(r["best_step"]),
            *[marks[b][r["method"]] for b in benches],
            "-" if r["flops"] is None else f"{r['flops']:.2g}",
            "-" if r["hours"] is None else f"{r['hours']:.2f}",
        ]
        for r in rows
    ]
    md = markdown_table(header, md_rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "main-table.md").write_text(md)
    paths = [write_rows(rows, out / "main-table.csv"), out / "main-table.md"]
    return PlotResult(paths, {"rows": rows, "benchmarks": benches, "markdown": md})


OVERLAP_PANELS = (("overlap_ratio",), ("overlap_adv",), ("entropy_gap",), ("overlap_mass_student", "overlap_mass_teacher"))


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
    data = {keys[0] if len(keys) == 1 else "overlap_mass": axes_data(ax) for ax, keys in zip(axes, OVERLAP_PANELS, strict=True)}
    return PlotResult(save(fig, out, "overlap"), data)


PLOTTERS: dict[str, Callable[[PlotConfig, Path], PlotResult]] = {
    "kl-position": plot_kl_position,
    "teacher-prefix": plot_teacher_prefix,
    "compute-vs-acc": plot_compute_vs_acc,
    "sft-prefix": plot_sft_prefix,
    "lr-sweep": plot_lr_sweep,
    "window-ablation": plot_window_ablation,
    "main-table": plot_main_table,
    "overlap": plot_overlap,
}


def run_plot(cfg: PlotConfig) -> PlotResult:
    """`opd plot`: draw one kind and print the files written."""
    result = PLOTTERS[cfg.kind](cfg, Path(cfg.output_dir))
    for p in result.paths:
        logger.info(f"wrote {p}")
    if "markdown" in result.data:
        print(result.data["markdown"], end="")
    return result
