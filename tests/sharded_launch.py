"""`opd train` under torchrun with accelerate in FSDP2 mode on a CPU (gloo) process group, for tests/test_sharded.py.

accelerate only selects FSDP for accelerator devices: with ``ACCELERATE_USE_FSDP=true`` and a CPU process group it
stays in MULTI_CPU mode and wraps the student in DDP (``accelerate launch --cpu --use_fsdp`` silently runs DDP). torch's
``fully_shard`` runs on a CPU device mesh, so :func:`fsdp2_on_cpu` promotes the state the way a GPU launch with
``recipes/accelerate-fsdp2.yaml`` sets it; everything after that (sharding the student, the optimizer, gradient
clipping, sharded checkpoints, resume) is accelerate's and transformers' own FSDP2 code.

Usage: ``torchrun --nproc_per_node 2 tests/sharded_launch.py JSON...``: each argument is one run's ``TrainConfig``
fields, or ``{"kill_after": [src, dst, step]}`` (:func:`kill_after`), done one after another in the same process
group. The ``FSDP_*`` variables of the environment override :data:`FSDP2_ENV`. Each rank writes ``placement_<rank>.json``
into the run folder: where the trainer's student and teacher parameters are and how they are sharded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# what `accelerate launch --config_file recipes/accelerate-fsdp2.yaml` exports (with sharded checkpoints, so that
# resuming from them is tested)
FSDP2_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "false",
    "FSDP_OFFLOAD_PARAMS": "false",
}


def fsdp2_on_cpu() -> None:
    """Let ``AcceleratorState`` take the FSDP plugin on a CPU process group (see the module docstring)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin
            # every later AcceleratorState() copies PartialState's fields back over its own
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = patched


def placement(module) -> dict:
    """Per parameter: its class, device, global and local element counts, and its DTensor placements."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in module.named_parameters():
        sharded = isinstance(p, DTensor)
        local = p.to_local() if sharded else p
        out[name] = {"dtensor": sharded, "device": str(local.device), "numel": p.numel(), "local_numel": local.numel(),
                     "placements": [str(x) for x in p.placements] if sharded else [],
                     "mesh_size": p.device_mesh.size() if sharded else 1}
    return out


def record_placement() -> None:
    """Write each rank's student and teacher placement (as the trainer holds them) into the run folder at step 1, and
    leave the student resharded after every rollout, as a vLLM rollout (which never runs the student's forward) or a
    backward leaves it: HF ``generate`` leaves some of its parameters gathered, which hides calls made outside its
    forward."""
    import opd_cli.train.trainer as trainer_mod

    class Recording(trainer_mod.OpdTrainer):
        def _sample(self, *args, **kwargs):
            out = super()._sample(*args, **kwargs)
            _reshard(self.model_wrapped)
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            path = Path(self.run_dir.path) / f"placement_{self.accelerator.process_index}.json"
            if not path.exists():
                _reshard(self.model_wrapped)  # at rest: a forward gathers some units and may leave them gathered
                _reshard(self.teacher_model)
                rec = {"device": str(self.accelerator.device), "student": placement(self.model_wrapped),
                       "teacher": placement(self.teacher_model)}
                path.write_text(json.dumps(rec, indent=1))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer_mod.OpdTrainer = Recording


def _reshard(model) -> None:
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def kill_after(src: str, dst: str, step: int) -> None:
    """A copy of run ``src`` as if killed after checkpoint ``step``: later checkpoints and final/ gone (rank 0)."""
    import shutil

    import torch.distributed as dist

    if dist.get_rank() == 0:
        shutil.copytree(src, dst)
        for d in Path(dst, "checkpoints").glob("step_*"):
            if int(d.name.removeprefix("step_")) > step:
                shutil.rmtree(d)
        shutil.rmtree(Path(dst, "final"))
    dist.barrier()


def main(configs: list[str]) -> None:
    os.environ.update({**FSDP2_ENV, **{k: v for k, v in os.environ.items() if k.startswith("FSDP_")}})
    fsdp2_on_cpu()
    record_placement()
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    for c in map(json.loads, configs):
        if "kill_after" in c:  # {"kill_after": [src, dst, step]}
            kill_after(*c["kill_after"])
        else:
            run_train(build_config(TrainConfig, None, c))


if __name__ == "__main__":
    main(sys.argv[1:])
