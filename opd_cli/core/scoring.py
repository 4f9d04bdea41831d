"""Teacher-forced scoring of finished sequences: one forward pass over prompt + response, no sampling.

``kl-by-position`` scores student rollouts under the student and the teacher with :func:`response_logprobs`, or with
:func:`response_profiles` when it also bins entropies or the top-k overlap; the toy world's build scores reference
solutions with :func:`pad_right` and :func:`opd_cli.core.maths.token_logprobs_BT`.
(Training scores its rollouts inside the trainer, one micro-batch at a time: :mod:`opd_cli.train.trainer`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    """(ids_BT, attention_mask_BT) of token sequences right-padded to the longest with ``pad_id``."""
    import torch

    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), T), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids.to(device), attn.to(device)


def response_logprobs(model: Any, sequences: list[list[int]], starts: list[int], pad_id: int, chunk: int = 1024) -> list[Any]:
    """Log-probability of each response token under ``model`` (no gradient): one 1-D tensor per sequence.

    ``sequences[i]`` = prompt + response ids, the response starting at ``starts[i]``. Sequences are right-padded
    to one batch; the LM head runs on the response positions only, ``chunk`` positions at a time, so the
    (B, T, V) logits of a 16k-token rollout never exist at once.
    """
    import torch

    from opd_cli.core import maths

    ids, attn = pad_right(sequences, pad_id, next(model.parameters()).device)
    first = min(starts)
    with torch.no_grad():
        logp_BT = maths.logprobs_from_hidden_BT(_response_hidden(model, ids, attn, first), model.get_output_embeddings(),
                                                ids[:, first:], chunk=chunk or ids.shape[1])
    return [logp_BT[i, starts[i] - first : len(s) - first].float().cpu() for i, s in enumerate(sequences)]


def _response_hidden(model: Any, ids_BT: Any, attn_BT: Any, first: int) -> Any:
    """Last hidden states that predict tokens ``ids[:, first:]``: the state at t predicts token t + 1."""
    hidden_BTH = model.base_model(input_ids=ids_BT, attention_mask=attn_BT, use_cache=False).last_hidden_state
    return hidden_BTH[:, first - 1 : -1]


def response_profiles(student: Any, teacher: Any, sequences: list[list[int]], starts: list[int], pad_id: int,
                      overlap_k: int = 0, rows: int = 1024) -> list[dict[str, Any]]:
    """Per-token profiles of each response under the student and the teacher (no gradient), one dict of 1-D float32
    tensors per sequence: ``logp_student``, ``logp_teacher`` (log-probs of the sampled tokens), ``entropy_student``,
    ``entropy_teacher`` (entropies of the full next-token distributions) and, when ``overlap_k`` > 0,
    ``overlap_ratio`` = |top-k(student) ∩ top-k(teacher)| / k (Rethinking OPD §2.3, Eq. 6).

    Every response holds at least one token; both models sit on one device. One forward pass per model over the
    right-padded batch (as :func:`response_logprobs`); the heads then run on the response positions only, ``rows``
    positions at a time, through TRL's chunked log-prob kernel (:func:`opd_cli.core.maths.head_logprobs_N`) and
    :func:`opd_cli.core.maths.overlap_metrics_from_hidden_N`, so no (positions, V) logits exist at once.
    """
    import torch

    from opd_cli.core import maths

    dev = next(student.parameters()).device
    ids, attn = pad_right(sequences, pad_id, dev)
    first = min(starts)
    lengths = [len(s) - st for s, st in zip(sequences, starts, strict=True)]
    pos_BT = torch.arange(ids.shape[1] - first, device=dev).expand(len(sequences), -1)
    lo_B1 = torch.tensor([st - first for st in starts], device=dev)[:, None]
    resp_BT = (pos_BT >= lo_B1) & (pos_BT < lo_B1 + torch.tensor(lengths, device=dev)[:, None])
    y_N = ids[:, first:][resp_BT]  # response tokens, sequence by sequence
    rows = max(rows, 1)
    with torch.no_grad():
        hs_N = _response_hidden(student, ids, attn, first)[resp_BT]
        ht_N = _response_hidden(teacher, ids, attn, first)[resp_BT]
        s_head, t_head = student.get_output_embeddings(), teacher.get_output_embeddings()
        logp_s, ent_s = maths.map_rows(maths.head_logprobs_N, hs_N, s_head, y_N, rows)
        logp_t, ent_t = maths.map_rows(maths.head_logprobs_N, ht_N, t_head, y_N, rows)
        out = {"logp_student": logp_s, "logp_teacher": logp_t, "entropy_student": ent_s, "entropy_teacher": ent_t}
        if overlap_k:
            k = min(overlap_k, s_head.weight.shape[0], t_head.weight.shape[0])
            out["overlap_ratio"] = torch.cat([
                maths.overlap_metrics_from_hidden_N(hs_N[i : i + rows], s_head, ht_N[i : i + rows], t_head, k)["overlap_ratio"]
                for i in range(0, hs_N.shape[0], rows)])
    parts = {key: v.float().cpu().split(lengths) for key, v in out.items()}
    return [{key: parts[key][i] for key in parts} for i in range(len(sequences))]

