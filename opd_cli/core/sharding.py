"""Sharded training (FSDP2 / FSDP1 / DeepSpeed ZeRO-3 through accelerate): models used outside their own forward.

A sharded parameter is whole only inside its module's forward (FSDP's pre-forward all-gather, ZeRO-3's per-module
gather hooks). opd uses three things outside one:

- the teacher. TRL 1.16 prepares it with ``accelerator.prepare_model(evaluation_mode=True)``, which under FSDP
  neither shards it nor moves it to the device (accelerate turns device placement off for FSDP);
  :func:`prepare_teacher` shards it like the student;
- the models' LM heads, whose weights the chunked log-prob kernels and the overlap metrics read directly.
  :func:`gathered_heads` all-gathers ZeRO-3 partitions (TRL's ``maybe_gather_lm_head_ctx``); :func:`dense_head`
  turns FSDP2's DTensor weights into plain tensors, once per call rather than per vocabulary tile;
- the student's backbone in PG-OPD's probe, which runs inside the student wrapper's forward
  (:mod:`opd_cli.train.pg_opd`, through TRL's forward redirection) like the loss does.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any


def prepare_teacher(trainer: Any) -> Any:
    """The teacher as the trainer should hold it: under FSDP2 sharded like the student (accelerate's
    ``fsdp2_prepare_model``: one unit per decoder layer, which moves the shards to the device), under FSDP1 wrapped by
    TRL's ``prepare_fsdp``; otherwise as TRL prepared it (DDP: moved to the device; ZeRO-3: ``prepare_deepspeed``)."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return trainer.teacher_model
    acc = trainer.accelerator
    teacher = acc.unwrap_model(trainer.teacher_model)
    teacher.requires_grad_(False)
    if acc.state.fsdp_plugin.fsdp_version == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        teacher = fsdp2_prepare_model(acc, teacher)
        teacher.eval()
        return teacher
    from trl.models.utils import prepare_fsdp

    return prepare_fsdp(teacher, acc)


def gathered_heads(*heads: Any):
    """A context in which the heads' weights and biases are whole under ZeRO-3 (a null context otherwise)."""
    from trl.trainer import utils  # looked up at call time, so a test can stand in for ZeRO-3

    return utils.maybe_gather_lm_head_ctx(*[p for h in heads for p in (h.weight, getattr(h, "bias", None))])


def dense_head(head: Any) -> tuple[Any, Any]:
    """(weight, bias) of an LM head as plain tensors: an FSDP2 head outside its unit's forward holds DTensor shards,
    gathered here once (differentiably) instead of per vocabulary tile."""
    import torch.distributed.tensor  # a submodule: `torch.distributed` alone does not load it

    weight, bias = head.weight, getattr(head, "bias", None)
    if isinstance(weight, torch.distributed.tensor.DTensor):
        weight = weight.full_tensor()
        bias = bias.full_tensor() if bias is not None else None
    return weight, bias


@contextmanager
def full_state_dict(trainer: Any):
    """A context in which ``trainer.save_model`` writes the whole model (safetensors + config, from every rank's
    shards) under FSDP even when checkpoints are sharded (``fsdp_state_dict_type: SHARDED_STATE_DICT``, which
    ``save_model`` otherwise skips): ``final/`` is always a model that ``opd eval --model`` loads."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not getattr(trainer, "is_fsdp_enabled", False) or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        yield
        return
    saved = (plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config)
    plugin.state_dict_config = plugin.optim_state_dict_config = None
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        yield
    finally:
        plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config = saved
