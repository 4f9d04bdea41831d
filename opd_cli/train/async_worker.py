"""The rollout side of `opd train --async`: TRL 1.16's ``AsyncRolloutWorker`` (a spawned child process that samples
from the student's vLLM server and puts scored samples on a queue) with opd's sampling request, and a disk weight
transfer for servers without NCCL (docs/async.md).

- :class:`OpdRolloutLoop` (TRL's ``_AsyncRolloutLoop``) overrides ``_generate_and_score_one`` only: the prompt is
  opd's rendered ``prompt_ids`` (TRL renders chat messages), ``max_tokens`` is the length of the step the sample is
  dispatched at (the prefix L or its schedule, looked up by the policy version), vLLM returns the sampled tokens'
  behaviour log-probs (``logprobs: 0``; TRL's distillation worker drops them, its GRPO worker keeps them), the seed
  is a function of (run seed, prompt index) instead of ``random.getrandbits``, and a served teacher's log-prob of
  each sampled token is kept (a local teacher scores in the trainer instead);
- :class:`OpdRolloutWorker` (TRL's ``AsyncRolloutWorker``) starts :func:`_opd_child_main` instead of TRL's
  ``_child_main``, which names TRL's loop class (a spawned child re-imports modules, so a patch made in the parent
  never reaches it);
- :class:`DiskWeightTransfer` is TRL's ``WeightTransferProtocol`` over opd's disk sync (core/vllm_engine.py):
  safetensors into the run folder, reloaded by the server through ``/collective_rpc``.

Samples are TRL's ``RolloutSample``; opd's per-token arrays ride in its ``metrics`` dict (the field TRL leaves to
custom workers), read by :class:`opd_cli.train.async_trainer.OpdRolloutCollator`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from trl.experimental.async_distillation import async_rollout_worker as W


def request_seed(seed: int, prompt_id: int) -> int:
    """vLLM's sampling seed of the rollout of prompt ``prompt_id`` (counted over the run): the same prompt of the
    same run draws the same noise, whatever the timing."""
    return (seed * 1_000_003 + prompt_id * 7919 + 1) % (2**63 - 1)


class OpdRolloutLoop(W._AsyncRolloutLoop):
    """TRL's generate-and-score loop with opd's request (module docstring).

    ``lengths``: tokens to sample at each optimizer step (index = policy version - 1: TRL's cold sync makes the first
    step's policy version 1); ``seed``: the run seed; ``served``: score with the teacher servers (else the trainer
    scores with its local teacher)."""

    def __init__(self, *, lengths: list[int], seed: int, served: bool, ignore_eos: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.lengths, self.seed, self.served, self.ignore_eos = lengths, seed, served, ignore_eos

    async def _resolve_teacher_model_names(self) -> None:
        if self.served:  # a local teacher scores in the trainer: no teacher server to ask
            await super()._resolve_teacher_model_names()

    def length_at(self, version: int) -> int:
        return self.lengths[min(max(version - 1, 0), len(self.lengths) - 1)]

    async def _generate_and_score_one(self, prompt_id: int, row: dict[str, Any]) -> W.RolloutSample:
        version = self.model_version
        t0 = time.monotonic()
        prompt_ids = [int(x) for x in row["prompt_ids"]]
        L = self.length_at(version)
        payload = {"model": self._request_model, "prompt": prompt_ids, "max_tokens": L, "temperature": 1.0,
                   "top_p": 1.0, "top_k": 0, "n": 1, "return_token_ids": True, "logprobs": 0,
                   "seed": request_seed(self.seed, prompt_id), "ignore_eos": self.ignore_eos}
        out = await self._retry(lambda: self._post(self.vllm_server_url, "/v1/completions", payload, self.request_timeout),
                                max_attempts=3, label="student vllm /v1/completions")
        choice = out["choices"][0]
        completion_ids = list(choice["token_ids"])
        behaviour = [0.0 if x is None else float(x) for x in choice["logprobs"]["token_logprobs"]]
        teacher_id, teacher_logp, score_s = "default", None, 0.0
        if self.served:
            teacher_id, url = self._resolve_teacher_server_url(row)
            t1 = time.monotonic()
            ids, lps = await self._score_with_teacher(prompt_ids, completion_ids, url, self.teacher_model_names[teacher_id])
            score_s = time.monotonic() - t1
            # vLLM always reports the realised token among a position's candidates
            teacher_logp = np.asarray([lp[c.index(t)] for c, lp, t in zip(ids, lps, completion_ids, strict=True)], np.float32)
        n_p = len(prompt_ids)
        self._push_rollout_metrics(completion_ids=completion_ids, teacher_id=teacher_id, score_s=score_s,
                                   duration_s=time.monotonic() - t0)
        empty = np.zeros((n_p + len(completion_ids), 0))
        return W.RolloutSample(
            prompt=None, completion=None,
            input_ids=np.asarray(prompt_ids + completion_ids, dtype=np.int64),
            completion_mask=np.asarray([0] * n_p + [1] * len(completion_ids), dtype=np.int64),
            teacher_topk_ids=empty, teacher_topk_logprobs=empty, model_version=version, teacher_id=teacher_id,
            prompt_id=prompt_id,
            metrics={"behaviour_logp": np.asarray(behaviour, np.float32), "teacher_logp": teacher_logp,
                     "model_version": version},
        )


def _opd_child_main(loop_kwargs: dict[str, Any], samples_queue, model_version_value, stop_event, child_ready_event,
                    heartbeat_value, failed_event, exception_info_queue, metrics_queue) -> None:
    """TRL's ``_child_main`` (async_rollout_worker.py) building :class:`OpdRolloutLoop`."""
    W._scrub_child_env()
    from accelerate.state import PartialState

    PartialState()
    loop = OpdRolloutLoop(**loop_kwargs, rollout_buffer=samples_queue, model_version_value=model_version_value,
                          heartbeat_value=heartbeat_value, failed_event=failed_event,
                          exception_info_queue=exception_info_queue, metrics_queue=metrics_queue)
    child_ready_event.set()
    W._spawn_stop_watcher(loop, stop_event)
    loop.run()


class OpdRolloutWorker(W.AsyncRolloutWorker):
    """TRL's worker (spawn, queue, health checks, resume index) running :class:`OpdRolloutLoop` in its child."""

    def start(self) -> None:
        # TRL's start() names its module's _child_main when it builds the Process; the child imports the function
        # it is given by module path, so ours (a module-level function) is what runs there.
        with mock.patch.object(W, "_child_main", _opd_child_main):
            super().start()


class DiskWeightTransfer:
    """TRL's ``WeightTransferProtocol`` through a folder: the student's weights as safetensors in ``folder``, which
    the server (started with ``VLLM_SERVER_DEV_MODE=1``) reloads, then drops its prefix cache. Requests in flight
    go on with the new weights; their behaviour log-probs are what vLLM sampled with, so the importance ratio stays
    exact per token."""

    def __init__(self, base_url: str, folder: Path, timeout: float):
        self.base_url, self.folder, self.timeout = base_url.rstrip("/"), Path(folder).resolve(), timeout

    def init_weight_transfer(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def destroy(self) -> None:
        pass

    def send_weights(self, iterator) -> None:
        import requests
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in iterator}
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "model.safetensors.partial"
        save_file(tensors, str(tmp))
        tmp.replace(self.folder / "model.safetensors")
        r = requests.post(f"{self.base_url}/collective_rpc", timeout=self.timeout,
                          json={"method": "reload_weights", "kwargs": {"weights_path": str(self.folder)}})
        r.raise_for_status()
        requests.post(f"{self.base_url}/reset_prefix_cache", timeout=self.timeout).raise_for_status()
