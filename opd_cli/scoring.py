"""Teacher-forced scoring of finished sequences: one forward pass over prompt + response, no sampling.

``kl-by-position`` scores student rollouts under the student and the teacher with :func:`response_logprobs`; the toy
world's build scores reference solutions with :func:`pad_right` and :func:`opd_cli.maths.token_logprobs_BT`.
(Training scores its rollouts inside the trainer, one micro-batch at a time: :mod:`opd_cli.trainer`.)
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

    from opd_cli import maths

    ids, attn = pad_right(sequences, pad_id, next(model.parameters()).device)
    first = min(starts)
    with torch.no_grad():
        hidden_BTH = model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        # hidden state at t predicts token t+1: response tokens ids[:, first:] come from hidden[:, first-1:-1]
        logp_BT = maths.logprobs_from_hidden_BT(hidden_BTH[:, first - 1 : -1], model.get_output_embeddings(),
                                                ids[:, first:], chunk=chunk or ids.shape[1])
    return [logp_BT[i, starts[i] - first : len(s) - first].float().cpu() for i, s in enumerate(sequences)]
