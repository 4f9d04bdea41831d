"""PG-OPD (prefix-guided rollout allocation; "Prefix-Guided On-Policy Distillation: Mining Golden Trajectories from
Rollouts"): which sampled candidates get the long budget.

Every candidate is first decoded to the same prefix (``--pg-prefix``); the teacher-student top-k overlap ratio
(``--probe-topk``), averaged over the prefix's first ``--probe-window`` tokens, scores it; the chosen candidates
are then decoded on to ``--max-new-tokens`` and the others stop at the prefix. ``--pg-select`` decides what the
overlap does:

    stop     continue each prompt's best ``--keep-per-prompt`` candidates and the best ``--keep-global`` fraction
             of all candidates (the union); stop the rest at the prefix (PG-OPD's rule)
    all      continue every candidate (ablation: the same two-stage rollouts, no allocation)
    weight   continue every candidate and weight each one's loss by its overlap over the batch mean (ablation:
             overlap as a weight, not as a stop)

Stopped candidates stay in the batch as prefix-length rollouts and train on their prefix tokens (the prefix OPD
signal); ``--no-pg-train-stopped`` drops them from the loss. These are pure functions; the trainer
(:mod:`opd_cli.train.trainer`) runs the two generation stages and the probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PG_SELECT = ("stop", "all", "weight")
ROLLOUTS = ("standard", "pg-opd")
# per-step sums each process accumulates (gathered at log time); the last two feed the FLOPs count of the probe
PG_SUMS = ("candidates", "continued", "stopped", "overlap_kept", "overlap_dropped", "tokens_stage1", "tokens_stage2",
           "probe_s", "probe_s2")  # fmt: skip
PG_KEYS = ("pg_candidates", "pg_continued", "pg_stopped", "pg_overlap_kept", "pg_overlap_dropped", "tokens_stage1",
           "tokens_stage2", "tokens_probe", "tokens_probe_sq")  # fmt: skip


def select_candidates(overlap: Sequence[float], groups: Sequence[int], keep_per_prompt: int, keep_global: float) -> list[bool]:
    """Which candidates to continue: each prompt's ``keep_per_prompt`` highest-overlap candidates, plus the
    ``ceil(keep_global * N)`` highest-overlap candidates of all N (the union). ``groups[i]`` is candidate i's
    prompt. Ties go to the earlier candidate."""
    if len(overlap) != len(groups):
        raise ValueError("one prompt index per candidate")
    order = sorted(range(len(overlap)), key=lambda i: (-overlap[i], i))
    keep = [False] * len(overlap)
    for i in order[: math.ceil(keep_global * len(overlap))]:
        keep[i] = True
    taken: dict[int, int] = {}
    for i in order:
        if taken.get(groups[i], 0) < keep_per_prompt:
            keep[i] = True
            taken[groups[i]] = taken.get(groups[i], 0) + 1
    return keep


def overlap_weights(overlap: Sequence[float]) -> list[float]:
    """``--pg-select weight``: each candidate's loss weight, its overlap over the batch mean (mean weight 1; all 1
    when every overlap is 0)."""
    mean = sum(overlap) / len(overlap) if overlap else 0.0
    return [x / mean if mean > 0 else 1.0 for x in overlap]


def step_metrics(sums: Sequence[float]) -> dict[str, Any]:
    """metrics.jsonl's PG-OPD fields from a step's gathered :data:`PG_SUMS`: candidates generated, continued and
    stopped, the mean probe overlap of the kept and of the dropped ones, tokens per generation stage, and the probe
    forwards' tokens and squared lengths (sum s, sum s^2: their FLOPs, :func:`opd_cli.core.flops_formula.probe_flops`)."""
    d = dict(zip(PG_SUMS, sums, strict=True))
    return {
        "pg_candidates": int(d["candidates"]),
        "pg_continued": int(d["continued"]),
        "pg_stopped": int(d["stopped"]),
        "pg_overlap_kept": d["overlap_kept"] / d["continued"] if d["continued"] else None,
        "pg_overlap_dropped": d["overlap_dropped"] / d["stopped"] if d["stopped"] else None,
        "tokens_stage1": int(d["tokens_stage1"]),
        "tokens_stage2": int(d["tokens_stage2"]),
        "tokens_probe": int(d["probe_s"]),
        "tokens_probe_sq": int(d["probe_s2"]),
    }


# ------------------------------------------------------------------------------------------ inside the trainer
def generate(trainer: Any, prompt_ids: list[list[int]], step: int) -> tuple[list[list[int]], list[list[float]] | None]:
    """PG-OPD's two generation stages for this process's candidates; returns (completions, vLLM log-probs or None).

    Stage 1 decodes every candidate to ``--pg-prefix`` tokens; the probe scores each; the selection runs on the
    gathered overlaps of the global batch, so every process agrees. Stage 2 continues this process's selected
    candidates that have not ended, to ``--max-new-tokens`` in all. Every process makes the stage-2 call with the
    same number of rows (padded with repeats that are then dropped): vLLM gathers prompts across processes and
    ZeRO-3 gathers weights, both collectives.
    """
    import torch

    o, acc = trainer.opd, trainer.accelerator
    total = trainer.gen_len(step)
    P = min(o.pg_prefix, total)
    n = len(prompt_ids)
    first, N = acc.process_index * n, n * acc.num_processes
    comps, logps = trainer._sample(prompt_ids, step, P)
    comps = [list(c) for c in comps]
    overlap, probe_lens = probe_overlap(trainer, prompt_ids, comps)
    everyone = acc.gather(torch.tensor(overlap, device=acc.device, dtype=torch.float64)).tolist()
    if o.pg_select == "stop":
        keep_all = select_candidates(everyone, [i // o.candidates for i in range(N)], o.keep_per_prompt, o.keep_global)
    else:
        keep_all = [True] * N
    keep = keep_all[first : first + n]
    tokens_stage1 = sum(len(c) for c in comps)
    eos = set(trainer.eos_token_ids)
    todo = [i for i in range(n) if keep[i] and len(comps[i]) >= P and comps[i][-1] not in eos]
    m = int(acc.gather(torch.tensor([len(todo)], device=acc.device)).max().item())
    tokens_stage2 = 0
    if m and total > P:
        rows = todo + [todo[0] if todo else 0] * (m - len(todo))
        ext, ext_logps = trainer._sample([prompt_ids[i] + comps[i] for i in rows], step, total - P,
                                         [first + i for i in rows], N, stage=1)
        for j, i in enumerate(todo):
            comps[i] = comps[i] + list(ext[j])
            if logps is not None:
                logps[i] = list(logps[i]) + list(ext_logps[j])
            tokens_stage2 += len(ext[j])
    weights = overlap_weights(everyone)[first : first + n] if o.pg_select == "weight" else [1.0] * n
    trainer._pg_rows = {"keep": keep, "weights": weights}
    kept = [x for x, k in zip(overlap, keep, strict=True) if k]
    dropped = [x for x, k in zip(overlap, keep, strict=True) if not k]
    sums = (n, len(kept), len(dropped), sum(kept), sum(dropped), tokens_stage1, tokens_stage2,
            sum(probe_lens), sum(s * s for s in probe_lens))
    trainer.metrics.add_pg(torch.tensor(sums, device=acc.device, dtype=torch.float64))
    return comps, logps


def probe_overlap(trainer: Any, prompt_ids: list[list[int]], comps: list[list[int]]) -> tuple[list[float], list[int]]:
    """Each candidate's teacher-student top-k overlap ratio (``--probe-topk``), averaged over the first
    ``--probe-window`` tokens of its completion, and the length of each probe forward (prompt + window).

    One no-grad forward of each model over prompt + window, each through its wrapper's forward (TRL's forward
    redirection, as in the loss), so FSDP and ZeRO-3 gather their shards whatever ran before (HF ``generate``, a vLLM
    rollout, a backward); the top-k sets come from the LM heads one vocabulary tile at a time
    (:func:`opd_cli.core.maths.overlap_metrics_from_hidden_N`). A candidate without a token scores 0.
    """
    import torch
    from trl.trainer.utils import pad

    acc = trainer.accelerator
    pad_id = trainer._tokenizer.pad_token_id
    heads = [c[: trainer.opd.probe_window] for c in comps]
    p_ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=pad_id, padding_side="left")
    p_mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0, padding_side="left")
    c_ids = pad([torch.tensor(h or [pad_id]) for h in heads], padding_value=pad_id, padding_side="right")
    c_mask = pad([torch.tensor([1] * len(h) or [0]) for h in heads], padding_value=0, padding_side="right")
    ids, attn = torch.cat([p_ids, c_ids], 1).to(acc.device), torch.cat([p_mask, c_mask], 1).to(acc.device)
    valid = c_mask.bool().to(acc.device)
    student = acc.unwrap_model(trainer.model_wrapped)
    with torch.no_grad(), acc.autocast():
        ratio_N = trainer._forward_redirection(trainer.model_wrapped, student, _probe_ratios, trainer, student, ids, attn, valid)
    row_N = torch.arange(len(comps), device=acc.device)[:, None].expand_as(valid)[valid]
    sums = torch.zeros(len(comps), device=acc.device, dtype=torch.float64).index_add_(0, row_N, ratio_N.double())
    counts = valid.sum(1).clamp(min=1)
    return (sums / counts).tolist(), [len(p) + len(h) for p, h in zip(prompt_ids, heads, strict=True)]


def _probe_ratios(trainer: Any, student: Any, ids: Any, attn: Any, valid: Any) -> Any:
    """The overlap ratio of every valid probe position (N,); runs inside the student wrapper's forward."""
    import torch

    from opd_cli.core import maths

    T = valid.shape[1]
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    h_s = trainer._hidden_BTH(student, ids, attn, T)
    h_t = trainer._forward_redirection(trainer.teacher_model, teacher, trainer._hidden_BTH, teacher, ids, attn, T)
    hs_N, ht_N = h_s[valid], h_t[valid]
    s_head, t_head = student.get_output_embeddings(), teacher.get_output_embeddings()
    rows = max(trainer.opd.chunk, 1) * valid.shape[0]
    parts = [maths.overlap_metrics_from_hidden_N(hs_N[i : i + rows], s_head, ht_N[i : i + rows], t_head, trainer.opd.probe_topk)["overlap_ratio"]
             for i in range(0, hs_N.shape[0], rows)]
    return torch.cat(parts or [torch.zeros(0, device=ids.device)])


def loss_mask_and_weights(trainer: Any, train_BT: Any) -> tuple[Any, Any]:
    """The trained-token mask without the stopped candidates' rows when ``--no-pg-train-stopped``, and each row's
    loss weight (its overlap weight with ``--pg-select weight``, else 1); rows in generation order."""
    import torch

    rows = trainer._pg_rows
    if not trainer.opd.pg_train_stopped:
        train_BT = train_BT & torch.tensor(rows["keep"], device=train_BT.device)[:, None]
    return train_BT, torch.tensor(rows["weights"], device=train_BT.device, dtype=torch.float32)
