"""`opd kl-by-position`: where along the output the student and the teacher disagree (paper Fig. 2 and Fig. 5).

Two sources of curves, written as one tidy table (docs/run-format.md, "Analyses"):

* ``checkpoint``: for each checkpoint, the student samples full-length rollouts (no prefix cap, so Fig. 5 can
  measure the KL *beyond* the training prefix L), the teacher scores them without gradient, and the sampled-token
  reverse-KL estimate ``k_t = logp_S(x_t) - logp_T(x_t)`` (the prefix-OPD paper §2.1, Eq. 1) is averaged per
  output-position bin [b*bin, (b+1)*bin).
* ``logged``: the per-bin KL that ``opd train`` already logged on its own rollouts (``kl_bin_mean`` /
  ``kl_bin_count`` in metrics.jsonl) at chosen steps: Fig. 2 during full OPD, for free.

``--metric`` bins more per-token profiles of the same rollouts in the same pass (Rethinking OPD Fig. 13 and 23: the
student's and the teacher's entropy along the output; the teacher-student top-16 overlap ratio), one
``mean_<metric>`` column each. ``--grade`` also grades every rollout and relates its sequence-mean reward to its
correctness (Rethinking OPD Fig. 14): :mod:`opd_cli.analyses.rollout_rewards`.

Outputs in the run folder: ``kl_by_position.csv`` / ``.json`` (source, step, bin_start, bin_end, mean_kl, tokens,
then one column per extra --metric), ``summary.json`` (which model each step is, how many rollouts and tokens) and,
with --grade, ``rollout_rewards.jsonl`` and ``reward_auroc.csv``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.analyses.position_table import (
    COLUMNS,
    METRICS,
    OVERLAP_K,
    PROFILE_KEYS,
    logged_rows,
    means_from_sums,
    metric_column,
    rows_from_bins,
    span,
    table_columns,
    write_table,
)
from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.toy.world import check_toy_student


@dataclass
class KlByPositionConfig:
    command = "kl-by-position"

    models: list[str] = field([], help="Model folders or hub ids to roll out, one curve each (step = the N of a "
                                        "step_N folder, else its position 0, 1, ...). Empty = use --run, or the toy student.")
    run: str | None = field(None, help="A training run folder: its checkpoints (see --checkpoint-steps) and its logged KL (see --steps).")
    checkpoint_steps: list[int] = field([], help="Checkpoints of --run to roll out, e.g. 0,10,20,30 (0 = the run's initial "
                                                  "student). Empty with --run and no --steps = every saved checkpoint.")
    steps: list[int] = field([], help="Steps of --run whose logged per-bin KL (metrics.jsonl) to include. Empty = none.")
    toy_student: str = field("large", help="Without --model/--run: the toy world's large (student/) or small (student-small/) student "
                                           "(a --run's step 0 is the student its config names).")
    teacher: str | None = field(None, help="Teacher that scores the rollouts (default: --run's teacher, else the toy teacher).")
    benchmark: str | None = field(None, help="Registered benchmark whose questions are the prompts (toy-train, toy-dev, aime24, "
                                             "...; None = --run's training prompts, else toy-dev).")
    data: str | None = field(None, help="Local jsonl/parquet/csv file of prompts (instead of --benchmark).")
    question_column: str | None = field(None, help="Column with the problem text for --data.")
    limit: int = field(32, help="Prompts to roll out (0 = all).")
    samples: int = field(1, help="Rollouts per prompt.")
    max_new_tokens: int = field(16384, help="Rollout length cap in tokens (full length: the KL past a training prefix is measured too).")
    bin: int = field(256, help="Position-bin width in tokens.")
    temperature: float = field(1.0, help="Sampling temperature of the rollouts (1.0 = on-policy, as in training).")
    top_p: float = field(1.0, help="Nucleus sampling (1.0 = off).")
    batch_size: int = field(8, help="Sequences per generate / scoring call.")
    chunk: int = field(1024, help="Positions per log-softmax chunk when scoring (bounds memory; 0 = no chunking).")
    template: str = field("auto", help="Prompt template: auto | chat | plain | teacher.")
    think: bool = field(True, help="Append <think> to the prompt (as in training).")
    dtype: str = field("auto", help="auto | float32 | bfloat16 | float16.")
    device: str = field("auto", help="auto | cpu | cuda.")
    seed: int = field(0, help="Sampling seed (the same prompts and seed for every checkpoint).")
    metric: list[str] = field(["kl"], help=f"Per-position profiles to bin, e.g. kl,entropy-student: {' | '.join(METRICS)} "
                                           f"(student-teacher top-{OVERLAP_K} overlap ratio). kl is always written (mean_kl); "
                                           "each other metric adds a mean_<metric> column, empty on logged rows.")
    grade: bool = field(False, help="Also grade each rollout against its problem's answer: rollout_rewards.jsonl (correct, "
                                    "sequence-mean reward = mean of logp_T - logp_S) and per step the reward's AUROC "
                                    "for correct vs incorrect (reward_auroc.csv, summary.json).")
    answer_column: str | None = field(None, help="Column with the gold answer for --data (graded with --grade).")
    output_dir: str | None = field(None, help="Run folder (default: runs/kl-by-position[-<run name>]).")
    if_exists: str = field("raise", help="Existing run folder: raise | resume | overwrite.")

    def __post_init__(self) -> None:
        check(self.bin >= 1, f"--bin must be a positive number of tokens, got {self.bin}")
        check(self.samples >= 1, f"--samples must be at least 1, got {self.samples}")
        check(self.limit >= 0, f"--limit must be >= 0 (0 = all), got {self.limit}")
        check(self.max_new_tokens >= 1, f"--max-new-tokens must be positive, got {self.max_new_tokens}")
        check(self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}")
        check(self.chunk >= 0, f"--chunk must be >= 0 (0 = no chunking), got {self.chunk}")
        check(self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        unknown = [m for m in self.metric if m not in METRICS]
        check(not unknown, f"unknown --metric {', '.join(map(repr, unknown))}: use {', '.join(METRICS)} (comma-separated)")
        bad = [s for s in [*self.checkpoint_steps, *self.steps] if s < 0]
        check(not bad, f"steps must be >= 0, got {bad}")
        check(self.run is not None or not (self.checkpoint_steps or self.steps),
              "--checkpoint-steps and --steps need --run (a training run folder)")
        check(not (self.models and self.run and self.checkpoint_steps),
              "give either --model folders or --run with --checkpoint-steps, not both")
        check_toy_student(self.toy_student)
        check(self.toy_student == "large" or not (self.models or self.run),
              "--toy-student small picks the toy student to roll out: drop it with --model or --run (its config names its student)")


# ------------------------------------------------------------------------------------------- sources
def resolve_checkpoints(cfg: KlByPositionConfig, run_cfg: dict) -> list[tuple[int, str]]:
    """(step, model path) for each curve to roll out."""
    from opd_cli.core.runs import CKPT_PREFIX, list_checkpoints

    if cfg.models:
        out = []
        for i, m in enumerate(cfg.models):
            name = Path(m).name
            step = int(name[len(CKPT_PREFIX):]) if name.startswith(CKPT_PREFIX) and name[len(CKPT_PREFIX):].isdigit() else i
            out.append((step, m))
        return out
    if cfg.run is None:
        return []
    saved = dict(list_checkpoints(cfg.run))
    wanted = cfg.checkpoint_steps or ([] if cfg.steps else sorted(saved))
    if not wanted and not cfg.steps:  # --steps alone: the logged KL only
        raise OpdError(f"no checkpoints found in {cfg.run}/checkpoints: train with checkpoints saved, or pass --steps "
                       f"to read the logged KL only")
    out = []
    for s in wanted:
        if s == 0:
            out.append((0, _initial_student(cfg.run, run_cfg)))
        elif s in saved:
            out.append((s, str(saved[s])))
        else:
            raise OpdError(f"no checkpoint for step {s} in {cfg.run}/checkpoints (saved: "
                           f"{span(sorted(saved)) if saved else 'none'}): choose --checkpoint-steps among them")
    return out


def _initial_student(run: str, run_cfg: dict) -> str:
    student = run_cfg.get("student")
    if student:
        return str(student)
    from opd_cli.toy.build import toy_model_paths
    from opd_cli.toy.world import run_toy_student

    return toy_model_paths(run_toy_student(run_cfg, run))[0]


# ------------------------------------------------------------------------------------------- scoring
def rollout_bins(student: Any, teacher: Any, tokenizer: Any, prompts: list[str], cfg: KlByPositionConfig,
                 progress: Any = None) -> tuple[dict[str, list[float | None]], list[int], dict, list, list]:
    """Sample rollouts of ``student`` on ``prompts`` and bin each --metric along the output position.

    Returns (per-bin means by column: ``mean_kl`` of ``logp_S - logp_T`` and one per extra metric, per-bin token
    counts, stats, the sampled groups of each prompt, each rollout's sequence-mean reward ``mean_t(logp_T - logp_S)``
    with None for a rollout without tokens). The student's log-probs are recomputed with one forward pass on the
    finished rollouts (at temperature 1 they are the sampling log-probs of training's ``logp_old``): by
    :func:`~opd_cli.core.scoring.response_logprobs` for kl alone, by :func:`~opd_cli.core.scoring.response_profiles` (which
    also gives the entropies and the overlap) when more metrics are asked for.
    """
    import torch

    from opd_cli.core import maths
    from opd_cli.core.generation import sample
    from opd_cli.core.scoring import response_logprobs, response_profiles

    groups = sample(student, tokenizer, prompts, n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                    max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    # token_ids hold the generated tokens only (EOS included when produced): exactly what training scores
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    seqs, starts, where = [], [], []
    for i, (pid, group) in enumerate(zip(prompt_ids, groups, strict=False)):
        for j, smp in enumerate(group):
            resp = list(smp.token_ids)
            if resp:
                seqs.append(list(pid) + resp)
                starts.append(len(pid))
                where.append((i, j))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    extras = [m for m in METRICS[1:] if m in cfg.metric]
    columns = [metric_column(m) for m in ("kl", *extras)]
    sums: dict[str, list[float]] = {c: [] for c in columns}
    counts: dict[str, list[int]] = {c: [] for c in columns}
    rewards: list[list[float | None]] = [[None] * len(g) for g in groups]
    lengths = [len(s) - st for s, st in zip(seqs, starts, strict=False)]
    for i in range(0, len(seqs), cfg.batch_size):
        bs, bst = seqs[i : i + cfg.batch_size], starts[i : i + cfg.batch_size]
        if extras:
            rows = cfg.chunk * len(bs) if cfg.chunk else sum(lengths[i : i + cfg.batch_size])
            prof = response_profiles(student, teacher, bs, bst, pad, OVERLAP_K if "overlap" in extras else 0, rows)
            lp_s, lp_t = [p["logp_student"] for p in prof], [p["logp_teacher"] for p in prof]
        else:
            prof = []
            lp_s = response_logprobs(student, bs, bst, pad, cfg.chunk)
            lp_t = response_logprobs(teacher, bs, bst, pad, cfg.chunk)
        values = {"mean_kl": [maths.kl_estimate_BT(a, b) for a, b in zip(lp_s, lp_t, strict=False)]}
        values.update({metric_column(m): [p[PROFILE_KEYS[m]] for p in prof] for m in extras})
        for (pi, sj), k_T in zip(where[i : i + cfg.batch_size], values["mean_kl"], strict=True):
            rewards[pi][sj] = -float(k_T.double().mean())  # the mean per-token advantage A_t = -k_t
        T = max(len(x) for x in lp_s)
        mask_BT = torch.zeros(len(bs), T, dtype=torch.bool)
        for j, a in enumerate(lp_s):
            mask_BT[j, : len(a)] = True
        for col, per_seq in values.items():
            v_BT = torch.zeros(len(bs), T, dtype=torch.float64)
            for j, v in enumerate(per_seq):
                v_BT[j, : len(v)] = v.double()
            maths.add_bins(sums[col], counts[col], *maths.bin_by_position(v_BT, mask_BT, cfg.bin))
    kl_counts = counts["mean_kl"]
    means = {c: means_from_sums(sums[c], counts[c]) for c in columns}
    n = sum(len(g) for g in groups)
    total = sum(kl_counts)
    stats = {"rollouts": n, "tokens": int(total), "mean_length": (sum(lengths) / len(lengths)) if lengths else 0.0,
             "truncated_frac": sum(bool(s.truncated) for g in groups for s in g) / max(n, 1),
             **{c: (sum(sums[c]) / total) if total else None for c in columns}}
    return means, kl_counts, stats, groups, rewards


# ------------------------------------------------------------------------------------------- command
def run_kl_by_position(cfg: KlByPositionConfig) -> list[dict]:
    """Roll out each checkpoint, score with the teacher, bin the KL (and --metric); add the logged bins; write the
    table; with --grade, grade the rollouts and write their rewards and the per-step AUROC."""
    from rich.console import Console

    from opd_cli.analyses import rollout_rewards as rr
    from opd_cli.core.config import summary_line
    from opd_cli.core.log import progress_bar
    from opd_cli.core.runs import open_run, read_config, read_metrics, write_json
    from opd_cli.toy.build import toy_model_paths

    console = Console(stderr=True)
    run_cfg: dict = {}
    if cfg.run is not None:
        if not (Path(cfg.run) / "config.yaml").is_file():
            raise OpdError(f"--run {cfg.run} is not a run folder (no config.yaml): pass the folder `opd train` wrote")
        run_cfg = read_config(cfg.run)
    # Everything the user can get wrong is checked before any model is loaded or sampled.
    logged = logged_rows(read_metrics(cfg.run), cfg.steps, cfg.run) if cfg.steps else []
    ckpts = resolve_checkpoints(cfg, run_cfg)
    if not ckpts and not logged and cfg.run is None:
        ckpts = [(0, toy_model_paths(cfg.toy_student, console)[0])]
    if cfg.grade and not ckpts:
        raise OpdError("--grade grades rollouts, and there is no checkpoint to roll out (only logged --steps): "
                       "add --checkpoint-steps or drop --grade")
    columns = table_columns(cfg.metric)
    extra_cols = columns[len(COLUMNS):]
    problems = None
    if cfg.grade:  # answers are checked before a run folder is written or a model loaded
        problems, where = _problems(cfg, run_cfg)
        rr.check_answers(problems, where)

    out_dir = cfg.output_dir or f"runs/kl-by-position{'-' + Path(cfg.run).name if cfg.run else ''}"
    # resume may add checkpoints or logged steps; finished checkpoints are reused (see _finished)
    run = open_run(out_dir, cfg.if_exists, cfg, compare_ignore=("models", "checkpoint_steps", "steps"))
    console.print(summary_line(cfg, run.config_file), markup=False, highlight=False)

    rows = list(logged)
    summary: dict[str, Any] = {"bin": cfg.bin, "run": cfg.run, "logged_steps": cfg.steps, "checkpoints": {}}
    if extra_cols:
        summary["metrics"] = [m for m in METRICS if m == "kl" or m in cfg.metric]
    records: list[dict] = []
    # --if-exists resume: checkpoints already rolled out (same step, same model) are kept, not sampled again
    done = _finished(run.path) if run.resumed else {}
    old_records = rr.read_records(run.path / rr.RECORDS_FILE) if run.resumed and cfg.grade else []
    todo = _reuse_finished(ckpts, done, old_records, summary, rows, records, run.path, console)
    if todo:
        from opd_cli.core.models import load_model, load_tokenizer

        if problems is None:
            problems, where = _problems(cfg, run_cfg)
        teacher_path = cfg.teacher or run_cfg.get("teacher") or toy_model_paths("large", console)[1]
        teacher_tok = load_tokenizer(str(teacher_path), "teacher")
        teacher = load_model(str(teacher_path), cfg.dtype, cfg.device, "teacher")
        summary.update(teacher=str(teacher_path), prompts=len(problems), samples=cfg.samples,
                       max_new_tokens=cfg.max_new_tokens, source_prompts=where)
        with progress_bar(console) as progress:
            for step, path in todo:
                new_rows, graded, summary["checkpoints"][str(step)] = _roll_out_checkpoint(
                    cfg, step, path, teacher, teacher_tok, problems, extra_cols, progress, console)
                rows += new_rows
                records += graded
                # written after every checkpoint, so a killed run resumes from the last finished one
                write_table(run.path, rows, columns)
                if cfg.grade:
                    rr.write_reward_files(run.path, records)
                write_json(run.path / "summary.json", summary)

    write_table(run.path, rows, columns)
    if cfg.grade:
        rr.write_reward_files(run.path, records)
    write_json(run.path / "summary.json", summary)
    console.print(f"wrote {run.path / 'kl_by_position.csv'} ({len(rows)} rows)"
                  + (f" and {run.path / rr.AUROC_FILE}" if cfg.grade else ""))
    return rows


def _reuse_finished(ckpts: list[tuple[int, str]], done: dict, old_records: list[dict], summary: dict, rows: list[dict],
                    records: list[dict], out: Path, console: Any) -> list[tuple[int, str]]:
    """--if-exists resume: the checkpoints already rolled out (same step, same model) go into ``summary``, ``rows``
    and ``records`` as they were; returns the (step, path) still to roll out."""
    todo = []
    for step, path in ckpts:
        if step in done and done[step][0].get("model") == path:
            summary["checkpoints"][str(step)] = done[step][0]
            rows += done[step][1]
            records += [r for r in old_records if int(r["step"]) == step]
            console.print(f"  step {step}: reusing the rollouts in {out}")
        else:
            todo.append((step, path))
    return todo


def _roll_out_checkpoint(cfg: KlByPositionConfig, step: int, path: str, teacher: Any, teacher_tok: Any,
                         problems: list, extra_cols: list[str], progress: Any, console: Any) -> tuple[list, list, dict]:
    """One checkpoint rolled out, scored by the teacher and binned (graded with --grade): (its table rows, its
    graded records, its summary entry)."""
    from opd_cli.analyses import rollout_rewards as rr
    from opd_cli.core.models import check_same_vocab, load_model, load_tokenizer
    from opd_cli.core.prompts import build_prompt

    t0 = time.time()
    tok = load_tokenizer(path, "checkpoint")
    student = load_model(path, cfg.dtype, cfg.device, "checkpoint")
    check_same_vocab(tok, teacher_tok, student, teacher)
    prompts = [build_prompt(tok, p.question, template=cfg.template, think=cfg.think,
                            teacher_tokenizer=teacher_tok) for p in problems]
    task = progress.add_task(f"step {step}: rollouts", total=len(prompts) * cfg.samples)
    means, counts, stats, groups, rewards = rollout_bins(student, teacher, tok, prompts, cfg,
                                                         lambda k, t=task: progress.advance(t, k))
    rows = rows_from_bins("checkpoint", step, cfg.bin, means["mean_kl"], counts, {c: means[c] for c in extra_cols})
    line, graded = "", []
    if cfg.grade:
        graded = rr.grade_records(step, problems, groups, rewards)
        g = rr.step_summary(step, graded)
        stats.update({k: g[k] for k in ("accuracy", "auroc", "mean_reward_correct", "mean_reward_incorrect")})
        line = f", accuracy {g['accuracy']:.3f}, reward AUROC {'n/a' if g['auroc'] is None else round(g['auroc'], 3)}"
    entry = {"model": path, **stats, "seconds": round(time.time() - t0, 2)}
    console.print(f"  step {step}: {stats['rollouts']} rollouts, {stats['tokens']} tokens, "
                  f"mean KL {stats['mean_kl'] if stats['mean_kl'] is None else round(stats['mean_kl'], 4)}{line}")
    del student
    return rows, graded, entry


def _problems(cfg: KlByPositionConfig, run_cfg: dict) -> tuple[list, str]:
    """The problems to roll out and where they come from: as asked, else the run's own training prompts (what its
    logged KL was measured on), else toy-dev."""
    from opd_cli.data import load_problems

    if cfg.benchmark or cfg.data:
        source, data = cfg.benchmark, cfg.data
    elif run_cfg.get("data"):
        source, data = None, run_cfg["data"]
    else:
        toy_run = run_cfg.get("student") is None
        source = run_cfg.get("prompts") or ("toy-dev" if not run_cfg else "toy-train" if toy_run else "openthoughts3")
        data = None
    problems = load_problems(source, data, cfg.limit, cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column)
    return problems, data or source


def _finished(out: Path) -> dict[int, tuple[dict, list[dict]]]:
    """Checkpoints a previous run of this folder finished: step -> (summary entry, its table rows)."""
    import json

    try:
        summary = json.loads((out / "summary.json").read_text())
        rows = json.loads((out / "kl_by_position.json").read_text())
    except (OSError, ValueError):
        return {}
    return {int(s): (entry, [r for r in rows if r["source"] == "checkpoint" and int(r["step"]) == int(s)])
            for s, entry in summary.get("checkpoints", {}).items()}
