"""`opd window-ablation`: where in the rollout does the OPD signal matter? (paper §5, Table 3)

One base training config (a train recipe plus ``key=value`` overrides) expands into one ``opd train`` run per
loss window — gradient only on response positions [A, B), or on the last N tokens — plus two references: full
OPD and prefix OPD (``--prefix-ref``). The window runs sample full rollouts, so only the loss mask differs from
the full reference. Each run lives in ``<out>/runs/<label>/``; complete runs are reused, incomplete ones resumed.
The dev benchmark is then evaluated at ``--eval-steps`` and ``<out>/table.csv`` / ``table.md`` (method, window,
step, dev_acc) are written.

Here: the config, its expansion into training configs, and the orchestration (train, evaluate, tabulate). Reusing
finished runs is in window_ablation_reuse.py, the table in window_ablation_table.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from opd_cli.config import check, field
from opd_cli.errors import OpdError
from opd_cli.log import logger
from opd_cli.runs import IF_EXISTS
from opd_cli.toy.world import check_toy_student
from opd_cli.window_ablation_reuse import _check_reusable, adopt_run, find_stand_in
from opd_cli.window_ablation_table import collect_table, dev_score, print_table, write_table

ABLATION_CONFIG = "ablation.yaml"
_WINDOW_RE = re.compile(r"^(-?\d+):(-?\d+)$")
_TAIL_RE = re.compile(r"^tail:(-?\d+)$")
# fields that switch off the windowing in a base config (the references and every window start from these)
_WINDOW_OFF = {"prefix": "full", "schedule": "none", "loss_window": None, "loss_tail": 0}


@dataclass
class WindowAblationConfig:
    """Expand one training config into loss-window runs plus the full and prefix references; evaluate; tabulate."""

    command = "window-ablation"

    train_recipe: str = field("", help="Base `opd train` recipe (recipes/train-*.yaml; '' = opd train's defaults).")
    overrides: list[str] = field([], help="Overrides of the base config, key=value (repeatable), e.g. steps=30.")
    toy_student: str | None = field(
        None,
        help="The toy world's student every run distils into: large | small "
        "(None = the base config's, large unless it sets toy_student).",
    )
    windows: list[str] = field(
        ["1024:2048", "2048:3072", "3072:4096", "tail:1024"],
        help="Loss windows: A:B = response positions [A, B) in tokens, tail:N = the last N tokens of each rollout.",
    )
    prefix_ref: int = field(
        1024, help="Prefix-OPD reference: generation stops after L tokens (0 = no prefix reference)."
    )
    full_ref: bool = field(True, help="Add the full-OPD reference run (all positions trained).")
    reference_runs: list[str] = field(
        [],
        help="Finished `opd train` run folders that stand in for the full/prefix references when trained with the same "
        "settings (more steps are fine: the lr is constant, so their first steps are the same run); their checkpoints "
        "are hard-linked, not retrained ([] = train the references here).",
    )
    eval_steps: list[int] = field(
        [10, 20, 30], help="Checkpoint steps to evaluate on the dev benchmark (paper: 10,20,30)."
    )
    dev_benchmark: str = field("toy-dev", help="Benchmark of the table (paper: aime24).")
    eval_samples: int = field(4, help="Samples per dev problem (n of Mean Acc@n; paper: 16).")
    eval_limit: int = field(0, help="Evaluate only the first N dev problems (0 = all).")
    eval_max_new_tokens: int = field(
        0, help="Response cap at evaluation in tokens (0 = the eval default: no training cap)."
    )
    eval_batch_size: int = field(0, help="Sequences per generate call at evaluation (0 = the eval default).")
    skip_eval: bool = field(False, help="Train only; the table then shows the evaluations already on disk.")
    output_dir: str = field("runs/window-ablation", help="Ablation folder: runs/<label>/, table.csv, table.md.")
    if_exists: str = field(
        "resume",
        help="Existing ablation folder: resume (default: complete runs are reused, others resumed) | overwrite "
        "(delete it and retrain everything) | raise.",
    )

    def __post_init__(self) -> None:
        check(
            self.prefix_ref >= 0, f"--prefix-ref must be 0 (off) or a positive number of tokens, got {self.prefix_ref}"
        )
        check(all(s >= 0 for s in self.eval_steps), f"--eval-steps must be non-negative steps, got {self.eval_steps}")
        check(self.eval_samples >= 1, f"--eval-samples must be at least 1, got {self.eval_samples}")
        check(self.eval_limit >= 0, f"--eval-limit must be 0 (all) or positive, got {self.eval_limit}")
        check(self.if_exists in IF_EXISTS, f"--if-exists must be one of {', '.join(IF_EXISTS)}, got {self.if_exists!r}")
        check(
            bool(self.windows) or self.full_ref or self.prefix_ref > 0,
            "nothing to run: give --windows or keep a reference run",
        )
        for w in self.windows:
            parse_window(w)  # one-line error on a malformed window before anything runs
        parse_overrides(self.overrides)
        if self.toy_student is not None:
            check_toy_student(self.toy_student)


# ------------------------------------------------------------------------------------ pure functions
def parse_window(spec: str) -> tuple[str, int, int]:
    """``"A:B"`` -> ("window", A, B); ``"tail:N"`` -> ("tail", N, 0). Positions count response tokens from 0."""
    s = str(spec).strip().lower().replace(" ", "")
    if m := _TAIL_RE.match(s):
        n = int(m.group(1))
        check(n > 0, f"window {spec!r}: tail:N needs N > 0 tokens")
        return ("tail", n, 0)
    m = _WINDOW_RE.match(s)
    if m is None:
        raise OpdError(
            f"window {spec!r} is malformed: write A:B (response positions [A, B), e.g. 1024:2048) or tail:N (e.g. tail:1024)"
        )
    a, b = int(m.group(1)), int(m.group(2))
    check(a >= 0, f"window {spec!r} starts at {a} < 0, inside the prompt: windows count response tokens from 0")
    check(a < b, f"window {spec!r} is empty: A must be below B")
    return ("window", a, b)


def window_label(spec: str) -> tuple[str, str, str]:
    """(run label, method, window text) of one window spec."""
    kind, a, b = parse_window(spec)
    if kind == "tail":
        return f"tail-{a}", "OPD window", f"last {a}"
    return f"window-{a}-{b}", "OPD window", f"[{a}, {b})"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["steps=30", "lr=1e-4"]`` -> {"steps": 30, "lr": 0.0001} (values read as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OpdError(f"--set {item!r} is not key=value (e.g. --set steps=30)")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key] = value
    return out


def expand_windows(
    base_cfg: dict[str, Any], windows: list[str], prefix_ref: int, full_ref: bool = True
) -> list[tuple[str, dict[str, Any]]]:
    """One training config per run: ``full`` and ``prefix-L`` references, then one per loss window.

    Every config starts from ``base_cfg`` with prefix, loss window and tail switched off; a reference sets only
    ``prefix``, a window only ``loss_window`` ("A:B") or ``loss_tail`` (N), so the runs differ in one field.
    """
    base = {k: v for k, v in base_cfg.items() if k != "command"}
    cap = int(base.get("max_new_tokens") or 0)  # 0 = unknown here (TrainConfig's default is checked later)
    out: list[tuple[str, dict[str, Any]]] = []
    if full_ref:
        out.append(("full", {**base, **_WINDOW_OFF, "name": "full"}))
    if prefix_ref:
        check(not cap or prefix_ref <= cap, f"--prefix-ref {prefix_ref} exceeds the response cap max_new_tokens={cap}")
        out.append(
            (f"prefix-{prefix_ref}", {**base, **_WINDOW_OFF, "prefix": str(prefix_ref), "name": f"prefix-{prefix_ref}"})
        )
    for spec in windows:
        kind, a, b = parse_window(spec)
        label = window_label(spec)[0]
        if kind == "tail":
            check(
                not cap or a <= cap, f"window {spec!r}: the tail is longer than the response cap max_new_tokens={cap}"
            )
            cfg = {**base, **_WINDOW_OFF, "loss_tail": a, "name": label}
        else:
            check(
                not cap or b <= cap,
                f"window {spec!r} ends past the response cap max_new_tokens={cap}: raise max_new_tokens or move the window",
            )
            cfg = {**base, **_WINDOW_OFF, "loss_window": f"{a}:{b}", "name": label}
        out.append((label, cfg))
    labels = [lab for lab, _ in out]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    check(not dup, f"--windows repeats {', '.join(dup)}: give each window once")
    return out


def is_complete(run_dir: Path, steps: int) -> bool:
    """A run is complete when its last complete checkpoint is at (or past) its configured number of steps."""
    from opd_cli.runs import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    return bool(ckpts) and ckpts[-1][0] >= steps


# ------------------------------------------------------------------------------------------------ run
def base_config(cfg: WindowAblationConfig) -> dict[str, Any]:
    """The base training config as a mapping: the train recipe's fields, then --set overrides, then --toy-student."""
    from opd_cli.config import read_recipe

    base: dict[str, Any] = {}
    if cfg.train_recipe:
        base = read_recipe(cfg.train_recipe)
        named = base.pop("command", "train")
        check(
            named == "train",
            f"--train-recipe {cfg.train_recipe} is for `opd {named}`: window-ablation needs an `opd train` recipe",
        )
    base.update(parse_overrides(cfg.overrides))
    if cfg.toy_student is not None:
        base["toy_student"] = cfg.toy_student
    return base


def plan_runs(cfg: WindowAblationConfig, out: Path) -> list[tuple[str, Any]]:
    """Expand and validate every training config (TrainConfig checks run here, before anything trains)."""
    from opd_cli.config import build_config
    from opd_cli.train import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    base = base_config(cfg)
    unknown = sorted(set(base) - known)
    check(not unknown, f"--set/--train-recipe name unknown `opd train` field(s) {', '.join(unknown)}")
    planned = []
    for label, d in expand_windows(base, cfg.windows, cfg.prefix_ref, cfg.full_ref):
        d = {**d, "output_dir": str(out / "runs" / label), "if_exists": "raise"}
        try:
            planned.append((label, build_config(TrainConfig, None, d)))
        except OpdError as err:
            raise OpdError(f"run {label}: {err}") from None
    return planned


def train_all(planned: list[tuple[str, Any]], cfg: WindowAblationConfig | None = None) -> dict[str, str]:
    """Train (or reuse, adopt, or resume) every planned run; returns label -> what happened."""
    from opd_cli.train import run_train

    status = {}
    for label, tcfg in planned:
        run_dir = Path(tcfg.output_dir)
        started = run_dir.is_dir() and any(run_dir.iterdir())
        is_ref = label == "full" or label.startswith("prefix-")
        if cfg is not None and cfg.reference_runs and is_ref and not started:
            src = find_stand_in(tcfg, cfg.reference_runs, cfg.eval_steps)
            if src is not None:
                from opd_cli.config import build_config
                from opd_cli.evaluate import EvalConfig

                adopt_run(
                    src, tcfg, cfg.eval_steps, build_config(EvalConfig, None, _eval_overrides(cfg)), cfg.dev_benchmark
                )
                logger.info(f"[{label}] adopted the first {tcfg.steps} steps of {src} (same settings): not retrained")
                status[label] = "adopted"
                continue
            logger.info(f"[{label}] none of --reference-runs was trained with these settings: training it")
        if is_complete(run_dir, tcfg.steps):
            _check_reusable(label, run_dir, tcfg)
            logger.info(f"[{label}] complete ({tcfg.steps} steps): reused")
            status[label] = "reused"
            continue
        tcfg.if_exists = "resume" if started else "raise"
        logger.info(f"[{label}] {'resuming' if started else 'training'}: {_window_text(tcfg)}")
        run_train(tcfg)
        status[label] = "resumed" if started else "trained"
    return status


def _window_text(tcfg: Any) -> str:
    if getattr(tcfg, "loss_window", ""):
        return f"loss on response positions [{tcfg.loss_window.replace(':', ', ')})"
    if getattr(tcfg, "loss_tail", 0):
        return f"loss on the last {tcfg.loss_tail} tokens"
    if getattr(tcfg, "prefix", 0):
        return f"prefix OPD, L = {tcfg.prefix}"
    return "full OPD"


def evaluate_all(cfg: WindowAblationConfig, planned: list[tuple[str, Any]]) -> None:
    """Evaluate each run's checkpoints at --eval-steps on the dev benchmark (evaluations already on disk are kept)."""
    from opd_cli.config import build_config
    from opd_cli.evaluate import EvalConfig
    from opd_cli.evaluate_run import evaluate_run
    from opd_cli.runs import list_checkpoints

    ecfg = build_config(EvalConfig, None, _eval_overrides(cfg))
    for label, tcfg in planned:
        run_dir = Path(tcfg.output_dir)
        available = {s for s, _ in list_checkpoints(run_dir)} | {0}
        missing = [s for s in cfg.eval_steps if s not in available]
        if missing:
            logger.info(
                f"[{label}] no checkpoint at step(s) {', '.join(map(str, missing))}: set save_every so they are saved"
            )
        steps = [s for s in cfg.eval_steps if s in available and dev_score(run_dir, s, cfg.dev_benchmark) is None]
        if steps:
            evaluate_run(
                run_dir,
                steps=steps,
                benchmarks=[cfg.dev_benchmark],
                dev_benchmark=cfg.dev_benchmark,
                cfg=ecfg,
                if_exists="resume",
            )


def _eval_overrides(cfg: WindowAblationConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"samples": cfg.eval_samples, "limit": cfg.eval_limit, "if_exists": "resume"}
    if cfg.eval_max_new_tokens:
        kw["max_new_tokens"] = cfg.eval_max_new_tokens
    if cfg.eval_batch_size:
        kw["batch_size"] = cfg.eval_batch_size
    return kw


def run_window_ablation(cfg: WindowAblationConfig) -> Path:
    """Plan, train (reusing complete runs), evaluate and tabulate; returns the ablation folder."""
    import shutil

    from opd_cli.config import dump_yaml

    out = Path(cfg.output_dir)
    planned = plan_runs(cfg, out)
    if out.is_dir() and any(out.iterdir()):
        if cfg.if_exists == "raise":
            raise OpdError(
                f"ablation folder {out} exists: pass --if-exists resume to reuse its runs, overwrite to retrain, or another --output-dir"
            )
        if cfg.if_exists == "overwrite":
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # Not config.yaml: the ablation folder is not a run folder (its runs are under runs/, which `opd plot` reads).
    # Per-run configs guard reuse (see _check_reusable), so the ablation's own settings may change between calls.
    (out / ABLATION_CONFIG).write_text(dump_yaml(cfg))
    logger.info(f"window ablation: {len(planned)} runs in {out / 'runs'}: {', '.join(label for label, _ in planned)}")
    train_all(planned, cfg)
    if not cfg.skip_eval:
        evaluate_all(cfg, planned)
    rows = collect_table(out, [label for label, _ in planned], cfg.eval_steps, cfg.dev_benchmark)
    csv_path, md_path = write_table(out, rows, cfg.dev_benchmark)
    print_table(rows, cfg.dev_benchmark)
    logger.info(f"wrote {csv_path} and {md_path}")
    return out
