"""Reusing finished runs in `opd window-ablation`, so that nothing trains twice.

A complete run in the ablation folder is reused only if it was trained with the same config (``_check_reusable``).
A reference run (full or prefix OPD) can instead be adopted from ``--reference-runs``: a finished run trained like
it, for at least as many steps (``find_stand_in``), whose checkpoints are hard-linked in (``adopt_run``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError
from opd_cli.core.runs import step_folder
from opd_cli.core.tracking import TRACKING_FIELDS


def _check_reusable(label: str, run_dir: Path, train_cfg: Any) -> None:
    """A complete run is reused only if it was trained with the same config (else results would be stale)."""
    from opd_cli.core.config import differing_keys, to_dict, with_defaults
    from opd_cli.core.runs import read_config

    saved = with_defaults(read_config(run_dir), train_cfg)
    diff = differing_keys(saved, to_dict(train_cfg), {"if_exists", "output_dir", "optimizer_states", *TRACKING_FIELDS},
                          only_now=True)
    if saved and diff:
        raise OpdError(
            f"run {run_dir} is complete but was trained with different {', '.join(diff)}: "
            f"pass --if-exists overwrite to retrain the ablation, or another --output-dir"
        )


# fields a stand-in reference may differ in: where it lives, how long it ran (checkpoints must cover the steps) and
# what its checkpoints keep besides the weights
_STAND_IN_FREE = {"name", "output_dir", "if_exists", "steps", "save_every", "optimizer_states", *TRACKING_FIELDS}


def find_stand_in(tcfg: Any, candidates: list[str], eval_steps: list[int]) -> Path | None:
    """The first candidate run trained like ``tcfg`` for at least its steps, with checkpoints at every needed step."""
    from opd_cli.core.config import differing_keys, to_dict, with_defaults
    from opd_cli.core.runs import list_checkpoints, read_config

    want = to_dict(tcfg)
    need = {s for s in eval_steps if 0 < s <= tcfg.steps} | {tcfg.steps}
    for cand in map(Path, candidates):
        saved = with_defaults(read_config(cand), tcfg)
        if not saved or int(saved.get("steps") or 0) < tcfg.steps:
            continue
        if differing_keys(saved, want, _STAND_IN_FREE, only_now=True):
            continue
        if need <= {s for s, _ in list_checkpoints(cand)}:
            return cand
    return None


def adopt_run(src: Path, tcfg: Any, eval_steps: list[int], ecfg: Any, benchmark: str) -> None:
    """Make ``tcfg.output_dir`` a copy of ``src``'s first ``tcfg.steps`` steps without retraining.

    Checkpoint files are hard-linked (copied where links are impossible), metrics are cut at ``tcfg.steps``, and
    dev evaluations at ``eval_steps`` are copied when they were made with the ablation's eval settings (else they
    are redone here). The ablation's own config.yaml is written, plus ``reference.json`` naming the source.
    """
    import json
    import os
    import shutil

    from opd_cli.core.runs import RunDir, list_checkpoints, read_metrics, write_json

    dst = Path(tcfg.output_dir)
    tmp = dst.with_name(dst.name + ".adopting")
    shutil.rmtree(tmp, ignore_errors=True)
    run = RunDir(tmp)
    tmp.mkdir(parents=True)
    run.write_config(tcfg)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    for step, ckpt in list_checkpoints(src):
        if step <= tcfg.steps:
            shutil.copytree(ckpt, run.checkpoint_dir(step), copy_function=link)
    for rec in read_metrics(src):
        if rec.get("step", 0) <= tcfg.steps:
            run.log(rec)
    # the settings a summary records (docs/run-format.md); with no --eval-limit the problem count is not checked
    same = {
        "n": ecfg.samples,
        "temperature": ecfg.temperature,
        "top_p": ecfg.top_p,
        "max_new_tokens": ecfg.max_new_tokens,
        "backend": ecfg.backend,
        "seed": ecfg.seed,
    }
    if ecfg.limit:
        same["num_problems"] = ecfg.limit
    for step in (s for s in eval_steps if s <= tcfg.steps):
        res = src / "eval" / step_folder(step) / f"{benchmark}.json"
        try:
            summary = json.loads(res.read_text())
        except (OSError, ValueError):
            continue
        if all(summary.get(k) == v for k, v in same.items()):
            out = tmp / "eval" / step_folder(step)
            out.mkdir(parents=True, exist_ok=True)
            for f in res.parent.glob(f"{benchmark}.*"):
                shutil.copy2(f, out / f.name)
    write_json(tmp / "reference.json", {"source": str(src), "steps": tcfg.steps})
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
