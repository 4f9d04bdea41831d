"""The maths of prefix OPD as small pure tensor functions, shared by `opd train`, `opd kl-by-position` and the tests.

Shape suffixes: B = sequences, T = response positions, V = vocabulary, H = hidden width, K = top-k.
Response position t = 0 is the first generated token; a prefix of length L keeps positions t < L.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

OVERLAP_KEYS = (
    "overlap_ratio",
    "overlap_adv",
    "entropy_student",
    "entropy_teacher",
    "entropy_gap",
    "overlap_mass_student",
    "overlap_mass_teacher",
)


# ----------------------------------------------------------------------------------------------- prefix schedule
def prefix_length(step: int, prefix: int | None, max_len: int, schedule: str = "none", start: int = 1, delta: int = 256) -> int:
    """L for the rollouts of optimizer step ``step`` (0-based: the first update uses step 0).

    Fixed prefix: ``min(prefix, max_len)``; ``prefix=None`` is full OPD (``max_len``). Linear schedule (paper §4,
    prefix scheduling): ``L = start + delta * step``, capped at ``max_len`` — 1, 257, 513, ... for start 1, delta 256.
    """
    if schedule == "linear":
        return min(start + delta * step, max_len)
    if schedule == "adaptive":
        raise ValueError("the adaptive schedule depends on the run's KL: use adaptive_prefix_lengths")
    return max_len if prefix is None else min(prefix, max_len)


def adaptive_grows(trace: Sequence[float], ratio: float, patience: int, floor: float = 0.0) -> bool:
    """The adaptive schedule's rule: has the signal at the current L been spent?

    ``trace``: the signal after each step since L last grew (the first value is the first step at this L): the mean
    KL over the trained prefix, or of its last position bin (:func:`adaptive_signal`). Grow when the latest value is at most ``ratio`` times the first (the KL there fell
    to that fraction) or below ``floor`` (nothing left to learn there), or when it stopped falling: none of the last
    ``patience`` values is below the minimum of the values before them (``patience`` 0 = this test is off).
    """
    if not trace:
        return False
    if trace[-1] <= max(ratio * trace[0], floor):
        return True
    return 0 < patience < len(trace) and min(trace[-patience:]) >= min(trace[:-patience])


def adaptive_prefix_lengths(
    signal: Sequence[float | None], start: int, delta: int, max_len: int, ratio: float, patience: int,
    floor: float = 0.0,
) -> list[int]:
    """L of steps 0..n of an adaptive run, from ``signal[i]`` = :func:`adaptive_signal` of the metrics logged at
    step i (None: no tokens there, which changes nothing). L starts at ``start`` and grows by ``delta`` (capped at
    ``max_len``) after a step at which :func:`adaptive_grows` holds; the trace restarts at each new L.

    It is a function of the logged KL only, so a resumed run replays it from metrics.jsonl.
    """
    L, trace, out = min(start, max_len), [], [min(start, max_len)]
    for value in signal:
        if value is not None:
            trace.append(float(value))
        if L < max_len and adaptive_grows(trace, ratio, patience, floor):
            L, trace = min(L + delta, max_len), []
        out.append(L)
    return out


def adaptive_signal(record: dict, signal: str) -> float | None:
    """The adaptive schedule's signal in one metrics.jsonl record: ``prefix`` = the mean KL over the trained tokens
    (``kl``); ``last-bin`` = the logged KL of the position bin holding the last trained token (position L - 1)."""
    if signal == "prefix":
        return record.get("kl")
    b = (record["prefix_len"] - 1) // record["kl_bin_size"]
    means = record.get("kl_bin_mean") or []
    return means[b] if 0 <= b < len(means) else None


# ----------------------------------------------------------------------------------------------- masks
def positions_BT(lengths_B: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Response positions (B, T) and the valid-token mask (t < length) for right-padded responses."""
    pos_BT = torch.arange(T, device=lengths_B.device).expand(lengths_B.shape[0], T)
    return pos_BT, pos_BT < lengths_B[:, None]


def prefix_mask_BT(lengths_B: torch.Tensor, T: int, L: int) -> torch.Tensor:
    """Valid tokens at positions t < L (prefix OPD: nothing past L is trained)."""
    pos_BT, valid_BT = positions_BT(lengths_B, T)
    return valid_BT & (pos_BT < L)


def window_mask_BT(lengths_B: torch.Tensor, T: int, start: int, end: int) -> torch.Tensor:
    """Valid tokens at positions start <= t < end (window ablation, paper Table 3)."""
    pos_BT, valid_BT = positions_BT(lengths_B, T)
    return valid_BT & (pos_BT >= start) & (pos_BT < end)


def tail_mask_BT(lengths_B: torch.Tensor, T: int, n: int) -> torch.Tensor:
    """The last ``n`` valid tokens of each response (window ablation, "last 1024 tokens")."""
    pos_BT, valid_BT = positions_BT(lengths_B, T)
    return valid_BT & (pos_BT >= (lengths_B[:, None] - n))


# ----------------------------------------------------------------------------------------------- log-probs
def token_logprobs_BT(logits_BTV: torch.Tensor, ids_BT: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] in float32 (one chunk's worth of logits)."""
    logp_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
    return logp_BTV.gather(-1, ids_BT.unsqueeze(-1)).squeeze(-1)


def map_chunks_T(fn: Callable[..., torch.Tensor | tuple], *tensors_BT: torch.Tensor, chunk: int = 256, remat: bool | None = None):
    """Apply ``fn`` to slices [:, i:i+chunk] of every tensor along dim 1 and concatenate the results along dim 1.

    With gradients (``remat`` None = when any input requires grad) each chunk is recomputed in backward
    (activation checkpointing), so only one chunk's (B, chunk, V) logits ever exist at a time.
    """
    T = tensors_BT[0].shape[1]
    if remat is None:
        remat = torch.is_grad_enabled() and any(t.requires_grad for t in tensors_BT)
    outs = []
    for i in range(0, max(T, 1), chunk):
        parts = [t[:, i : i + chunk] for t in tensors_BT]
        outs.append(checkpoint(fn, *parts, use_reentrant=False) if remat else fn(*parts))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(o, dim=1) for o in zip(*outs, strict=True))
    return torch.cat(outs, dim=1)


def logprobs_from_hidden_BT(hidden_BTH: torch.Tensor, head: Callable, ids_BT: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Per-token log-probs of ``ids`` from last hidden states and an LM head, chunked along the sequence."""
    return map_chunks_T(lambda h, ids: token_logprobs_BT(head(h), ids), hidden_BTH, ids_BT, chunk=chunk)


# ----------------------------------------------------------------------------------------------- reverse KL
def kl_estimate_BT(logp_old_BT: torch.Tensor, logp_teacher_BT: torch.Tensor) -> torch.Tensor:
    """Sampled-token reverse-KL estimate k_t = log p_old(x_t) - log p_T(x_t) (the prefix-OPD paper §2.1, Eq. 1).

    Its expectation over x_t ~ p_old is KL(p_old || p_T) at that position.
    """
    return logp_old_BT - logp_teacher_BT


def sum_over_seqs(per_token_BT: torch.Tensor, mask_BT: torch.Tensor, num_seqs: float | torch.Tensor) -> torch.Tensor:
    """Sum over masked tokens, divided by the number of sequences (the paper sums over the length)."""
    return (per_token_BT * mask_BT).sum() / num_seqs


def sampled_loss(
    logp_BT: torch.Tensor,
    logp_old_BT: torch.Tensor,
    logp_teacher_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    num_seqs: float | torch.Tensor,
    task_adv_BT: torch.Tensor | None = None,
    is_cap: float = 0.0,
) -> torch.Tensor:
    """Importance-sampled policy-gradient OPD loss (the prefix-OPD paper §2.1, after Thinking Machines' on-policy
    distillation recipe).

    A_t = -(logp_old - logp_T) without gradient, rho_t = exp(logp_theta - logp_old), loss = -sum_t rho_t A_t over
    masked tokens, averaged over sequences. At rho = 1 its gradient is -sum_t A_t grad log p_theta(x_t).
    ``task_adv_BT`` (None = off) is added to A_t: ``w * r`` of :func:`task_advantage_B` broadcast over a rollout's
    tokens (verl's ``use_task_rewards``). ``is_cap`` > 0 truncates rho_t at it (:func:`is_ratio_BT`; 0 = off).
    """
    adv_BT = -kl_estimate_BT(logp_old_BT, logp_teacher_BT).detach()
    if task_adv_BT is not None:
        adv_BT = adv_BT + task_adv_BT.detach()
    ratio_BT = torch.exp(logp_BT - logp_old_BT.detach())
    if is_cap > 0:  # value min(rho, C), gradient min(rho, C) grad log p_theta
        ratio_BT = ratio_BT * (is_ratio_BT(logp_BT, logp_old_BT, is_cap) / ratio_BT).detach()
    return sum_over_seqs(-ratio_BT * adv_BT, mask_BT.to(logp_BT.dtype), num_seqs)


def is_ratio_BT(logp_BT: torch.Tensor, logp_behaviour_BT: torch.Tensor, cap: float = 0.0) -> torch.Tensor:
    """Per-token importance weight of a rollout sampled by an older policy (``opd train --async``), without
    gradient: rho_t = pi_theta(x_t) / pi_behaviour(x_t) = exp(logp_theta - logp_behaviour), truncated at ``cap``
    when ``cap`` > 0 (truncated importance sampling; TRL's async GRPO weights by the same ratio, clipped PPO-style).
    A rollout k weight versions old has logp_behaviour from those weights; at staleness 0, rho = 1."""
    rho_BT = torch.exp(logp_BT.detach() - logp_behaviour_BT.detach())
    return rho_BT.clamp(max=cap) if cap > 0 else rho_BT


def task_advantage_B(verdict_B: torch.Tensor, weight: float) -> torch.Tensor:
    """The task reward's share of the advantage, ``w * r`` per rollout, r = 1 when the grader accepts its answer and
    0 otherwise. verl's ``use_task_rewards`` adds the task reward's policy-gradient loss (GRPO's advantage) to the
    distillation loss; with one rollout per prompt GRPO's group of one has mean 0 and std 1, so its advantage is r
    itself, and the sum of the two vanilla policy-gradient losses is one loss with A_t = -k_t + w * r."""
    return weight * verdict_B.float()


def reverse_kl_full_BT(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary KL(p_student || p_teacher) per position."""
    logp_BTV = torch.log_softmax(student_logits_BTV.float(), dim=-1)
    logq_BTV = torch.log_softmax(teacher_logits_BTV.float(), dim=-1)
    return (logp_BTV.exp() * (logp_BTV - logq_BTV)).sum(-1)


def topk_support_BTV(logp_BTV: torch.Tensor, logq_BTV: torch.Tensor, k: int, support: str) -> torch.Tensor:
    """Boolean (B, T, V) support: student top-k | top-k overlap | symmetric difference (Rethinking OPD §4.2)."""
    in_p = torch.zeros_like(logp_BTV, dtype=torch.bool).scatter_(-1, logp_BTV.topk(k, dim=-1).indices, True)
    if support == "student":
        return in_p
    in_q = torch.zeros_like(logq_BTV, dtype=torch.bool).scatter_(-1, logq_BTV.topk(k, dim=-1).indices, True)
    if support == "overlap":
        return in_p & in_q
    if support == "nonoverlap":
        return in_p ^ in_q
    raise ValueError(f"unknown top-k support {support!r}")


def renormalised_logp(logp_BTV: torch.Tensor, support_BTV: torch.Tensor) -> torch.Tensor:
    """log of p restricted to the support and renormalised on it (-inf outside)."""
    masked = logp_BTV.masked_fill(~support_BTV, float("-inf"))
    return masked - torch.logsumexp(masked, dim=-1, keepdim=True)


def reverse_kl_topk_BT(
    student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, k: int = 16, support: str = "student"
) -> torch.Tensor:
    """KL(p̄ || q̄) on a top-k support with both distributions renormalised on it (Rethinking OPD Eq. 5).

    The support is chosen without gradient; a position with an empty support contributes 0.
    """
    logp_BTV = torch.log_softmax(student_logits_BTV.float(), dim=-1)
    logq_BTV = torch.log_softmax(teacher_logits_BTV.float(), dim=-1)
    sup_BTV = topk_support_BTV(logp_BTV.detach(), logq_BTV.detach(), k, support)
    nonempty_BT = sup_BTV.any(-1)
    sup_BTV = sup_BTV | ~nonempty_BT[..., None]  # avoid 0/0 on empty supports; zeroed below
    lp_BTV = renormalised_logp(logp_BTV, sup_BTV)
    lq_BTV = renormalised_logp(logq_BTV, sup_BTV)
    diff_BTV = torch.where(sup_BTV, lp_BTV - lq_BTV, torch.zeros_like(lp_BTV))
    kl_BT = (lp_BTV.exp() * diff_BTV).sum(-1)
    return kl_BT * nonempty_BT


def divergence_BT(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, loss: str, k: int = 16, support: str = "student") -> torch.Tensor:
    """Per-position divergence for the ``full`` and ``topk`` losses."""
    if loss == "full":
        return reverse_kl_full_BT(student_logits_BTV, teacher_logits_BTV)
    if loss == "topk":
        return reverse_kl_topk_BT(student_logits_BTV, teacher_logits_BTV, k, support)
    raise ValueError(f"divergence_BT has no {loss!r} loss")


# ----------------------------------------------------------------------------------------------- overlap metrics
@torch.no_grad()
def overlap_metrics_BT(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, k: int = 16) -> dict[str, torch.Tensor]:
    """Rethinking-OPD dynamics per position (§2.3, Eqs. 6-8 and overlap mass, App. B.1), each (B, T):

    overlap_ratio |S_p ∩ S_q| / k; overlap_adv mean over the overlap of p̄ (log q̄ - log p̄), both renormalised on
    the overlap (0 where it is empty); entropies H(p), H(q) and gap |H(q) - H(p)|; overlap mass sum_{S_p ∩ S_q} p
    and sum_{S_p ∩ S_q} q.

    Everything past the two log-partition functions and entropies works on the k student top-k tokens (the overlap
    is a subset of them), so besides the two logits at most one (B, T, V) temporary is alive at a time.
    """
    zs, zt = student_logits_BTV.float(), teacher_logits_BTV.float()
    lse_s, lse_t = torch.logsumexp(zs, -1), torch.logsumexp(zt, -1)
    h_p_BT = lse_s - (torch.softmax(zs, -1) * zs).sum(-1)
    h_q_BT = lse_t - (torch.softmax(zt, -1) * zt).sum(-1)
    top_s_BTK, top_t_BTK = zs.topk(k, dim=-1).indices, zt.topk(k, dim=-1).indices
    ov_BTK = (top_s_BTK[..., :, None] == top_t_BTK[..., None, :]).any(-1)  # student top-k token also in the teacher's
    logp_BTK = zs.gather(-1, top_s_BTK) - lse_s[..., None]
    logq_BTK = zt.gather(-1, top_s_BTK) - lse_t[..., None]
    out = _overlap_keys(logp_BTK, logq_BTK, ov_BTK, k)  # works on any leading shape
    out.update(entropy_student=h_p_BT, entropy_teacher=h_q_BT, entropy_gap=(h_q_BT - h_p_BT).abs())
    return out


def _renormalise_k(logp_BTK: torch.Tensor, keep_BTK: torch.Tensor) -> torch.Tensor:
    """log-probs renormalised on the kept entries (rows keeping nothing stay finite and are zeroed by the caller)."""
    masked = logp_BTK.masked_fill(~keep_BTK, float("-inf"))
    lse = torch.logsumexp(masked, -1, keepdim=True)
    return masked - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


@torch.no_grad()
def overlap_metrics_from_hidden_N(
    hs_NH: torch.Tensor, s_head: torch.nn.Module, ht_NH: torch.Tensor, t_head: torch.nn.Module, k: int = 16,
    vocab_chunk: int = 8192,
) -> dict[str, torch.Tensor]:
    """:func:`overlap_metrics_BT`'s overlap keys per row from hidden states and LM heads, one vocabulary tile at a time.

    Running log-sum-exps and running top-k sets (the student's, with the teacher's logits at those tokens, and the
    teacher's) are merged tile by tile, so no (N, V) tensor exists: memory is a few (N, vocab_chunk) tiles. ``k`` is
    capped at V. Sharded heads are gathered first (:mod:`opd_cli.core.sharding`).
    """
    from opd_cli.core.sharding import dense_head, gathered_heads

    with gathered_heads(s_head, t_head):
        return _overlap_metrics(hs_NH, dense_head(s_head), ht_NH, dense_head(t_head), k, vocab_chunk)


def _overlap_metrics(hs_NH: torch.Tensor, s_wb: tuple, ht_NH: torch.Tensor, t_wb: tuple, k: int, vocab_chunk: int) -> dict[str, torch.Tensor]:
    N, V = hs_NH.shape[0], s_wb[0].shape[0]
    k = min(k, V)
    dev = hs_NH.device
    lse_s = torch.full((N,), float("-inf"), device=dev)
    lse_t = torch.full((N,), float("-inf"), device=dev)
    top_s = torch.full((N, 0), float("-inf"), device=dev)  # student's running top-k logits
    top_s_t = torch.zeros((N, 0), device=dev)  # the teacher's logits at those tokens
    idx_s = torch.zeros((N, 0), dtype=torch.long, device=dev)
    top_t = torch.full((N, 0), float("-inf"), device=dev)
    idx_t = torch.zeros((N, 0), dtype=torch.long, device=dev)
    for start in range(0, V, vocab_chunk):
        end = min(start + vocab_chunk, V)
        zs = _project(hs_NH, s_wb, start, end)
        zt = _project(ht_NH, t_wb, start, end)
        lse_s = torch.logaddexp(lse_s, torch.logsumexp(zs, -1))
        lse_t = torch.logaddexp(lse_t, torch.logsumexp(zt, -1))
        kk = min(k, end - start)
        vs, js = zs.topk(kk, dim=-1)
        vt, jt = zt.topk(kk, dim=-1)
        top_s, pick = torch.cat([top_s, vs], 1).topk(min(k, top_s.shape[1] + kk), dim=-1)
        top_s_t = torch.cat([top_s_t, zt.gather(1, js)], 1).gather(1, pick)
        idx_s = torch.cat([idx_s, js + start], 1).gather(1, pick)
        top_t, pick = torch.cat([top_t, vt], 1).topk(min(k, top_t.shape[1] + kk), dim=-1)
        idx_t = torch.cat([idx_t, jt + start], 1).gather(1, pick)
    ov_NK = (idx_s[:, :, None] == idx_t[:, None, :]).any(-1)
    return _overlap_keys(top_s - lse_s[:, None], top_s_t - lse_t[:, None], ov_NK, k)


def _overlap_keys(logp_NK: torch.Tensor, logq_NK: torch.Tensor, ov_NK: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The overlap keys of :func:`overlap_metrics_BT` from the student's top-k log-probs, the teacher's log-probs
    at those tokens (only read where ``ov``) and which of them are in the teacher's top-k (``ov``)."""
    n_N = ov_NK.sum(-1)
    lp_NK, lq_NK = _renormalise_k(logp_NK, ov_NK), _renormalise_k(logq_NK, ov_NK)
    a_NK = torch.where(ov_NK, lp_NK.exp() * (lq_NK - lp_NK), torch.zeros_like(lp_NK))
    return {
        "overlap_ratio": n_N.float() / k,
        "overlap_adv": a_NK.sum(-1) / n_N.clamp(min=1),
        "overlap_mass_student": (logp_NK.exp() * ov_NK).sum(-1),
        "overlap_mass_teacher": (logq_NK.exp() * ov_NK).sum(-1),
    }


@torch.no_grad()
def overlap_metrics_vs_topk_N(hs_NH: torch.Tensor, s_head: torch.nn.Module, t_ids_NK: torch.Tensor, t_logp_NK: torch.Tensor,
                              k: int = 16, rows: int = 256) -> dict[str, torch.Tensor]:
    """:func:`overlap_metrics_from_hidden_N`'s keys against a teacher known only by its top tokens by rank
    (``t_ids``, ``t_logp``: (N, K), K >= k, as a vLLM server sends them): every quantity reads the teacher only on
    the overlap, which lies inside its top-k. The student's logits are built ``rows`` rows at a time."""
    from opd_cli.core.sharding import dense_head, gathered_heads

    if t_ids_NK.shape[-1] < k:
        raise ValueError(f"the teacher's top-{t_ids_NK.shape[-1]} cannot give top-{k} overlap metrics")
    out: dict[str, list[torch.Tensor]] = {}
    with gathered_heads(s_head):
        wb = dense_head(s_head)
        for i in range(0, hs_NH.shape[0], rows):
            logp_NV = torch.log_softmax(_project(hs_NH[i : i + rows], wb, 0, wb[0].shape[0]), -1)
            logp_NK, idx_NK = logp_NV.topk(min(k, logp_NV.shape[-1]), dim=-1)
            match_NKK = idx_NK[:, :, None] == t_ids_NK[i : i + rows, None, :k]
            logq_NK = torch.where(match_NKK, t_logp_NK[i : i + rows, None, :k].float(), float("-inf")).amax(-1)
            for key, v in _overlap_keys(logp_NK, logq_NK, match_NKK.any(-1), k).items():
                out.setdefault(key, []).append(v)
    return {key: torch.cat(v) for key, v in out.items()}


def _project(h_NH: torch.Tensor, head_wb: tuple, start: int, end: int) -> torch.Tensor:
    """Logits of vocabulary rows [start, end) in float32, from a head's (weight, bias) as plain tensors."""
    weight, bias = head_wb
    w = weight[start:end]
    z = h_NH.to(w.dtype) @ w.t()
    if bias is not None:
        z = z + bias[start:end]
    return z.float()


# ----------------------------------------------------------------------------------------------- fused LM head
def head_logprobs_N(
    hidden_NH: torch.Tensor, head: torch.nn.Module, ids_N: torch.Tensor, entropy: bool = False, vocab_chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(ids) (and optionally the entropy) of ``head(hidden)`` per row, never holding (N, V) logits.

    TRL's ``ChunkedLogProbFunction`` projects vocabulary tiles and folds them into online log-sum-exp statistics;
    its backward recomputes each tile. Gradients flow to ``hidden`` and the head's weight and bias. ``vocab_chunk``
    (None = TRL's 32768 where its Triton kernels fold a tile in place, 8192 where the torch fallback allocates several
    temporaries per tile) is the tile width. A sharded head is gathered for the forward (ZeRO-3: the kernel's
    backward gathers it again itself; FSDP2: once, :func:`opd_cli.core.sharding.dense_head`).
    """
    from trl.kernels import ChunkedLogProbFunction

    from opd_cli.core.sharding import dense_head, gathered_heads

    if vocab_chunk is None:
        vocab_chunk = 32768 if hidden_NH.device.type in ("cuda", "xpu") else 8192
    outputs = ("entropy",) if entropy else ()
    with gathered_heads(head):
        weight, bias = dense_head(head)
        # autograd.Function.apply takes no keywords; in forward's order: hidden, weight, bias, targets,
        # temperature, chunk_size, final_logit_softcapping, logit_scale, outputs
        logp_N, ent_N, *_ = ChunkedLogProbFunction.apply(
            hidden_NH, weight, bias, ids_N, 1.0, vocab_chunk, None, 1.0, outputs
        )
    return logp_N, ent_N


# ----------------------------------------------------------------------------------------------- position bins
def bin_by_position(values_BT: torch.Tensor, mask_BT: torch.Tensor, bin_size: int) -> tuple[list[float], list[int]]:
    """Sum and count of ``values`` per response-position bin b = [b*size, (b+1)*size), over masked tokens.

    Returns plain lists up to the last bin that holds a token (sums, not means, so bins add across batches).
    """
    T = values_BT.shape[1]
    if T == 0:
        return [], []
    bins_T = torch.arange(T, device=values_BT.device) // bin_size
    nb = int(bins_T[-1].item()) + 1
    m_BT = mask_BT.to(torch.float64)
    sums = torch.zeros(nb, dtype=torch.float64, device=values_BT.device).index_add_(0, bins_T, (values_BT.double() * m_BT).sum(0))
    counts = torch.zeros(nb, dtype=torch.float64, device=values_BT.device).index_add_(0, bins_T, m_BT.sum(0))
    nz = torch.nonzero(counts).flatten()
    last = int(nz[-1].item()) + 1 if nz.numel() else 0
    return sums[:last].tolist(), [int(c) for c in counts[:last].tolist()]


def add_bins(acc_sums: list[float], acc_counts: list[int], sums: list[float], counts: list[int]) -> None:
    """Accumulate bin sums/counts in place (lists grow to the longest)."""
    for i, (s, c) in enumerate(zip(sums, counts, strict=True)):
        if i >= len(acc_sums):
            acc_sums.append(0.0)
            acc_counts.append(0)
        acc_sums[i] += s
        acc_counts[i] += c


def map_rows(fn: Callable, hidden_NH: torch.Tensor, head: Any, ids_N: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(hidden, head, ids, entropy=True)`` over slices of ``rows`` rows, concatenated (bounds the logits tiles)."""
    parts = [fn(hidden_NH[i : i + rows], head, ids_N[i : i + rows], entropy=True) for i in range(0, max(hidden_NH.shape[0], 1), rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
