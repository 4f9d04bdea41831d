"""`opd window-ablation`: where in the rollout does the OPD signal matter? (paper §5, Table 3)

One base training config (a train recipe plus ``key=value`` overrides) expands into one ``opd train`` run per
loss window — gradient only on response positions [A, B), or on the last N tokens — plus two references: full
OPD and prefix OPD (``--prefix-ref``). The window runs sample full rollouts, so only the loss mask differs from
the full reference. Each run lives in ``<out>/runs/<label>/``; complete runs are reused, incomplete ones resumed.
The dev benchmark is then evaluated at ``--eval-steps`` and ``<out>/table.csv`` / ``table.md`` (method, window,
step, dev_acc) are written.

Here: the expansion of the config (window_ablation/config.py) into training configs, and the orchestration (train,
evaluate, tabulate). Reusing finished runs is in window_ablation/reuse.py, the table in window_ablation/table.py.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from opd_cli.core.config import check
from opd_cli.core.errors import OpdError
from opd_cli.core.log import logger
from opd_cli.window_ablation.config import WindowAblationConfig, parse_overrides, parse_window, window_label
from opd_cli.window_ablation.reuse import _check_reusable, adopt_run, find_stand_in
from opd_cli.window_ablation.table import collect_table, dev_score, print_table, write_table

ABLATION_CONFIG = "ablation.yaml"
# fields that switch off the windowing in a base config (the references and every window start from these)
_WINDOW_OFF = {"prefix": "full", "schedule": "none", "loss_window": None, "loss_tail": 0}


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
    from opd_cli.core.runs import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    return bool(ckpts) and ckpts[-1][0] >= steps


# ------------------------------------------------------------------------------------------------ run
def base_config(cfg: WindowAblationConfig) -> dict[str, Any]:
    """The base training config as a mapping: the train recipe's fields, then --set overrides, then --toy-student."""
    from opd_cli.core.config import read_recipe

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
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig

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
    from opd_cli.train.run import run_train

    status = {}
    for label, tcfg in planned:
        run_dir = Path(tcfg.output_dir)
        started = run_dir.is_dir() and any(run_dir.iterdir())
        is_ref = label == "full" or label.startswith("prefix-")
        if cfg is not None and cfg.reference_runs and is_ref and not started:
            src = find_stand_in(tcfg, cfg.reference_runs, cfg.eval_steps)
            if src is not None:
                from opd_cli.core.config import build_config
                from opd_cli.evaluate.config import EvalConfig

                adopt_run(
                    src, tcfg, cfg.eval_steps, build_config(EvalConfig, None, _eval_overrides(cfg, tcfg)), cfg.dev_benchmark
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
    from opd_cli.core.config import build_config
    from opd_cli.core.runs import list_checkpoints
    from opd_cli.evaluate.config import EvalConfig
    from opd_cli.evaluate.run import evaluate_run

    if not planned:
        return
    ecfg = build_config(EvalConfig, None, _eval_overrides(cfg, planned[0][1]))
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


def _eval_overrides(cfg: WindowAblationConfig, tcfg: Any) -> dict[str, Any]:
    """The dev evaluation's settings: the ablation's eval_* fields, and the prompts the runs trained on (the
    training config's template and <think>)."""
    kw: dict[str, Any] = {"samples": cfg.eval_samples, "limit": cfg.eval_limit, "temperature": cfg.eval_temperature,
                          "template": tcfg.template, "think": tcfg.think, "backend": cfg.eval_backend, "if_exists": "resume"}
    if cfg.eval_max_new_tokens:
        kw["max_new_tokens"] = cfg.eval_max_new_tokens
    if cfg.eval_batch_size:
        kw["batch_size"] = cfg.eval_batch_size
    return kw


def run_window_ablation(cfg: WindowAblationConfig) -> Path:
    """Plan, train (reusing complete runs), evaluate and tabulate; returns the ablation folder."""
    import shutil

    from opd_cli.core.config import dump_yaml

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
