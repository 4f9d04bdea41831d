"""vLLM in `opd train`: the student's rollout engine, colocated or served, and how its weights follow the student.

:class:`RolloutEngine` is TRL's ``VLLMGeneration`` with three changes:

- colocate mode builds the engine with opd's settings (memory share, sleep mode, eager execution on a CPU, where
  compiling costs more than it saves on short rollouts);
- the colocated weight sync streams the student's parameters through vLLM's layerwise ``reload_weights`` (vLLM's CPU
  build repacks its linear layers after loading, so a per-tensor ``load_weights`` no longer finds their loaders); a
  LoRA student's are its merged weights, computed without touching the base weights;
- server mode can sync through a folder instead of NCCL (``--vllm-weight-sync disk``, the default without CUDA,
  where TRL's NCCL transfer cannot run): the student's weights are written as safetensors and the server reloads
  them through its development endpoint ``/collective_rpc`` (start it with ``VLLM_SERVER_DEV_MODE=1``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from opd_cli.core.generation import quiet_vllm

quiet_vllm()  # before TRL imports vLLM, which sets up its logging once

import torch  # noqa: E402
from trl.generation.vllm_generation import VLLMGeneration  # noqa: E402

from opd_cli.core.errors import OpdError  # noqa: E402

SERVE_HINT = {
    "student": "start it with: VLLM_SERVER_DEV_MODE=1 vllm serve <student> --host H --port P (docs/vllm.md)",
    "teacher": "start it with: vllm serve <teacher> --host H --port P --max-logprobs K (docs/vllm.md)",
}


def resolve_weight_sync(sync: str, device: torch.device) -> str:
    """auto = nccl on CUDA (TRL's transfer), disk elsewhere."""
    if sync == "auto":
        return "nccl" if device.type == "cuda" else "disk"
    return sync


def connect(base_url: str, timeout: float, what: str, role: str = "student") -> Any:
    """A TRL ``VLLMClient`` for a running vLLM server; one line (:class:`OpdError`) when none answers in time."""
    import requests
    from trl.generation.vllm_client import VLLMClient

    try:
        return VLLMClient(base_url=base_url, connection_timeout=timeout)
    except (ConnectionError, requests.RequestException):
        raise OpdError(f"no vLLM server answers at {base_url} (waited {timeout:g} s) for the {what}: {SERVE_HINT[role]}") from None


class RolloutEngine(VLLMGeneration):
    """TRL's vLLM generation with opd's engine settings and weight sync (see the module docstring).

    ``weight_sync``: nccl | disk (server mode); ``sync_dir``: the folder the disk sync writes, which the server must
    be able to read; ``dtype``: the engine's dtype (None = the model's); ``seed``: the engine's sampling seed.
    """

    def __init__(self, *args: Any, weight_sync: str = "nccl", sync_dir: str | None = None, dtype: str | None = None,
                 seed: int = 0, **kwargs: Any):
        self.weight_sync, self.sync_dir, self.dtype, self.seed = weight_sync, sync_dir, dtype, seed
        super().__init__(*args, **kwargs)

    def _init_vllm(self) -> None:
        if self.mode == "colocate":
            self._init_colocated()
        elif self.weight_sync == "disk":  # no NCCL communicator: the weights travel through sync_dir
            if self.accelerator.is_main_process:
                self.vllm_client = connect(self._base_url(), self.server_timeout, "student's rollouts")
            self.accelerator.wait_for_everyone()
        else:
            import requests

            try:
                super()._init_vllm()
            except (ConnectionError, requests.RequestException):
                raise OpdError(f"no vLLM server answers at {self._base_url()} for the student's rollouts: {SERVE_HINT['student']}") from None

    def _base_url(self) -> str:
        return self.server_base_url or f"http://{self.server_host}:{self.server_port}"

    def _init_colocated(self) -> None:
        """One engine per process in the training process itself (TRL's colocate set-up, opd's engine settings)."""
        from trl.trainer.utils import ensure_master_addr_port
        from vllm import LLM

        acc = self.accelerator
        if acc.num_processes % self.tensor_parallel_size:
            raise OpdError(f"--vllm-tensor-parallel {self.tensor_parallel_size} must divide the {acc.num_processes} processes")
        if self.tensor_parallel_size > 1:
            n = self.tensor_parallel_size
            self.tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                [list(range(i * n, (i + 1) * n)) for i in range(acc.num_processes // n)])
        os.environ["RANK"] = str(acc.process_index)
        os.environ["LOCAL_RANK"] = str(acc.local_process_index)
        os.environ["WORLD_SIZE"] = str(acc.num_processes)
        ensure_master_addr_port()
        on_cpu = acc.device.type == "cpu"
        if on_cpu:
            from opd_cli.core.generation import cpu_kv_cache

            cpu_kv_cache()
        self.llm = LLM(
            model=self.model.name_or_path, dtype=self.dtype or "auto", tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_length,
            max_num_seqs=self.max_num_seqs, enable_sleep_mode=self.enable_sleep_mode, model_impl=self.model_impl,
            distributed_executor_backend="external_launcher", seed=self.seed + acc.process_index // self.tensor_parallel_size,
            max_num_batched_tokens=4096, logprobs_mode="processed_logprobs", enforce_eager=on_cpu,
            trust_remote_code=self.trust_remote_code,
        )
        if self.enable_sleep_mode:
            self.llm.sleep(level=2)
        self._llm_weights_sleeping = self.enable_sleep_mode
        acc.wait_for_everyone()

    def _iter_named_params(self):
        """The student's parameters under vLLM's names; a LoRA student's with each adapter merged aside
        (:func:`opd_cli.core.models.merged_lora_params`) instead of TRL's in-place merge and unmerge, which would move
        the base weights by rounding at every sync. Sharded students are refused with --lora before this runs."""
        from accelerate.utils import is_peft_model

        if not is_peft_model(self.model):
            yield from super()._iter_named_params()
            return
        from opd_cli.core.models import merged_lora_params

        for name, tensor in merged_lora_params(self.model):
            yield self._fix_param_name_to_vllm(name), tensor

    def sync_weights(self) -> None:
        if self.mode == "colocate":
            if self.enable_sleep_mode:
                self.llm.wake_up(tags=["weights"])
                self._llm_weights_sleeping = False
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            # one layerwise reload of every (name, tensor), in checkpoint names
            runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
            self.llm.reset_prefix_cache()
        elif self.weight_sync == "disk":
            self._sync_through_disk()
        else:
            super().sync_weights()

    def _sync_through_disk(self) -> None:
        """Write the student's weights into ``sync_dir`` (every process takes part in the gathers) and have the
        server reload them from there, then drop its prefix cache (computed with the old weights)."""
        from safetensors.torch import save_file

        if not self.accelerator.is_main_process:
            for _ in self._iter_named_params():  # take part in the gathers; only the main process writes
                pass
        else:
            tensors = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in self._iter_named_params()}
            folder = Path(self.sync_dir or "").resolve()
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "model.safetensors.partial"
            save_file(tensors, str(tmp))
            tmp.replace(folder / "model.safetensors")
            client = self.vllm_client
            client._post(f"{client.base_url}/collective_rpc",
                         json={"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
            client.reset_prefix_cache()
        self.accelerator.wait_for_everyone()


def rollout_engine(trainer: Any, dtype: str | None) -> RolloutEngine:
    """The student's vLLM engine for an ``OpdTrainer`` (its ``opd`` config: mode, server address, memory, sleep,
    ``--ignore-eos``); sampling is the model's own distribution (temperature 1, top-p 1, top-k off)."""
    cfg, args, acc = trainer.opd, trainer.args, trainer.accelerator
    return RolloutEngine(
        model=trainer.model, accelerator=acc, processing_class=trainer.processing_class, mode=cfg.vllm_mode,
        server_host=cfg.vllm_host, server_port=cfg.vllm_port, server_timeout=cfg.vllm_timeout,
        tensor_parallel_size=cfg.vllm_tensor_parallel, gpu_memory_utilization=cfg.vllm_memory,
        max_num_seqs=args.per_device_train_batch_size * args.gradient_accumulation_steps * cfg.vllm_tensor_parallel,
        enable_sleep_mode=cfg.vllm_sleep, temperature=1.0, top_p=1.0, top_k=0,
        max_completion_length=cfg.max_gen_len(), logprobs=0,
        # vLLM stops at EOS unless told otherwise (the HF path sets min_new_tokens instead)
        generation_kwargs={"ignore_eos": True} if cfg.ignore_eos else None,
        weight_sync=resolve_weight_sync(cfg.vllm_weight_sync, acc.device), sync_dir=str(trainer.run_dir.path / ".vllm-sync"),
        dtype=dtype, seed=cfg.seed,
    )


def preflight(cfg: Any, student: str) -> None:
    """What `opd train` checks before its run folder is touched: vLLM can load the student (colocate), and the
    student's server (server mode) and every teacher's server answer within ``--vllm-timeout``."""
    from opd_cli.core.generation import check_vllm_model

    if cfg.backend == "vllm" and cfg.vllm_sleep and (cfg.vllm_mode == "server" or _device().type != "cuda"):
        raise OpdError("--vllm-sleep offloads a colocated engine's GPU memory: use it with --vllm-mode colocate on a GPU")
    if cfg.backend == "vllm" and cfg.vllm_mode == "colocate":
        check_vllm_model(student)
    if cfg.backend == "vllm" and cfg.vllm_mode == "server":
        client = connect(f"http://{cfg.vllm_host}:{cfg.vllm_port}", cfg.vllm_timeout, "student's rollouts")
        if resolve_weight_sync(cfg.vllm_weight_sync, _device()) == "disk":
            status = client.session.get(f"{client.base_url}/server_info").status_code
            if status == 404:
                raise OpdError(f"the vLLM server at {client.base_url} has no development endpoints, which the disk weight sync "
                               "uses: restart it with VLLM_SERVER_DEV_MODE=1 in its environment")
    for name, url in cfg.teachers.items():  # every --teacher-server, named as the user named it
        what = "teacher (--teacher-server)" if name == "default" else f"teacher {name!r} (--teacher-server {name}=...)"
        connect(url, cfg.vllm_timeout, what, role="teacher")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
