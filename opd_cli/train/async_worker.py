"""The rollout side of `opd train --async`: TRL 1.16's ``AsyncRolloutWorker`` (a spawned child process that samples
from the student's vLLM server and puts scored samples on a queue) with opd's sampling request, and a disk weight
transfer for servers without NCCL (docs/async.md).

- :class:`OpdRolloutLoop` (TRL's ``_AsyncRolloutLoop``) overrides ``_generate_and_score_one`` only: the prompt is
  opd's rendered ``prompt_ids`` (TRL renders chat messages), ``max_tokens`` is the length of the step the sample is
  dispatched at (the prefix L or its schedule, looked up by the policy version; the adaptive schedule's, which
  depends on the logged KL, is the one the trainer last published), vLLM returns the sampled tokens' behaviour
  log-probs (``logprobs: 0``; TRL's distillation worker drops them, its GRPO worker keeps them), the seed is a
  function of (run seed, prompt index) instead of ``random.getrandbits``, and a served teacher's log-prob of each
  sampled token is kept (a local teacher scores in the trainer instead). With ``--reward-weight`` the child grades
  the rollout (:mod:`opd_cli.train.task_reward`'s rule: one cut at L without ending is continued to
  ``--max-new-tokens`` first) and stamps the verdict on the sample, off the trainer's step;
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


def request_seed(seed: int, prompt_id: int, stage: int = 0) -> int:
    """vLLM's sampling seed of the rollout of prompt ``prompt_id`` (counted over the run): the same prompt of the
    same run draws the same noise, whatever the timing. ``stage``: 0 the rollout, task_reward.GRADING_STAGE its
    continuation for grading."""
    return (seed * 1_000_003 + prompt_id * 7919 + stage * 104_729 + 1) % (2**63 - 1)


class OpdRolloutLoop(W._AsyncRolloutLoop):
    """TRL's generate-and-score loop with opd's request (module docstring).

    ``lengths``: tokens to sample at each optimizer step (index = policy version - 1 - ``version_shift``: TRL's cold
    sync makes the first step's policy version 1, and a resumed run's one more); ``live``: instead, shared values (prefix L, tokens to sample) the trainer publishes
    after each step (the adaptive schedule); ``seed``: the run seed; ``served``: score with the teacher servers (else
    the trainer scores with its local teacher); ``problems`` (by dataset row ``problem``) and ``max_new_tokens``:
    grade each rollout (--reward-weight; None = no grading)."""

    def __init__(self, *, lengths: list[int], seed: int, served: bool, ignore_eos: bool = False, live: Any = None,
                 problems: list[Any] | None = None, max_new_tokens: int = 0, version_shift: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.lengths, self.seed, self.served, self.ignore_eos = lengths, seed, served, ignore_eos
        self.live, self.problems, self.max_new_tokens = live, problems, max_new_tokens
        # TRL numbers a resumed run's prompts from 0 again: the seeds count from where the run stopped
        self.start_index = int(kwargs.get("dataset_start_index", 0))
        self.version_shift = version_shift  # 1 in a resumed run (OpdAsyncTrainer.step_of)

    async def _resolve_teacher_model_names(self) -> None:
        if self.served:  # a local teacher scores in the trainer: no teacher server to ask
            await super()._resolve_teacher_model_names()

    def length_at(self, version: int) -> tuple[int | None, int]:
        """(prefix L or None = the trainer's own schedule, tokens to sample) for a rollout dispatched at ``version``."""
        if self.live is not None:
            return self.live.read()
        return None, self.lengths[min(max(version - 1 - self.version_shift, 0), len(self.lengths) - 1)]

    async def _grade(self, prompt_id: int, row: dict[str, Any], prompt_ids: list[int], completion_ids: list[int],
                     L: int) -> tuple[float, int]:
        """(the grader's verdict, tokens graded): a rollout cut at L without ending is continued to --max-new-tokens
        first, no log-probs, its own seed (task_reward's docstring)."""
        from opd_cli.core.grading import grade
        from opd_cli.train.task_reward import GRADING_STAGE

        full = list(completion_ids)
        budget = self.max_new_tokens - L
        if budget > 0 and len(full) >= L and full and full[-1] not in self.eos_token_ids:
            payload = {"model": self._request_model, "prompt": prompt_ids + full, "max_tokens": budget, "temperature": 1.0,
                       "top_p": 1.0, "top_k": 0, "n": 1, "return_token_ids": True,
                       "seed": request_seed(self.seed, self.start_index + prompt_id, GRADING_STAGE), "ignore_eos": self.ignore_eos}
            out = await self._retry(lambda: self._post(self.vllm_server_url, "/v1/completions", payload, self.request_timeout),
                                    max_attempts=3, label="student vllm /v1/completions (grading)")
            full += list(out["choices"][0]["token_ids"])
        text = self.tokenizer.decode(full, skip_special_tokens=True)
        return float(grade(self.problems[int(row["problem"])], text)[0]), len(full)

    async def _generate_and_score_one(self, prompt_id: int, row: dict[str, Any]) -> W.RolloutSample:
        version = self.model_version
        t0 = time.monotonic()
        prompt_ids = [int(x) for x in row["prompt_ids"]]
        prefix, L = self.length_at(version)
        payload = {"model": self._request_model, "prompt": prompt_ids, "max_tokens": L, "temperature": 1.0,
                   "top_p": 1.0, "top_k": 0, "n": 1, "return_token_ids": True, "logprobs": 0,
                   "seed": request_seed(self.seed, self.start_index + prompt_id), "ignore_eos": self.ignore_eos}
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
        verdict, graded = (await self._grade(prompt_id, row, prompt_ids, completion_ids, L)) if self.problems else (None, None)
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
                     "model_version": version, "prefix_len": prefix, "reward": verdict, "graded_len": graded},
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


class LiveLengths:
    """The adaptive schedule's current (prefix L, tokens to sample), written by the trainer and read by the child
    before each request, through a small file: TRL checks that the loop's arguments pickle, which a shared
    ``mp.Value`` does not (it travels only as a Process argument)."""

    def __init__(self, path: str):
        self.path = path

    def write(self, prefix: int, length: int) -> None:
        tmp = f"{self.path}.tmp"
        Path(tmp).write_text(f"{prefix} {length}")
        Path(tmp).replace(self.path)  # atomic: the child never reads half a write

    def read(self) -> tuple[int, int]:
        prefix, length = Path(self.path).read_text().split()
        return int(prefix), int(length)


class OpdRolloutWorker(W.AsyncRolloutWorker):
    """TRL's worker (spawn, queue, health checks, resume index) running :class:`OpdRolloutLoop` in its child.

    ``live``: (prefix L, tokens to sample) of the first step, for a schedule the trainer computes as it goes (the
    adaptive one): a :class:`LiveLengths` shared with the child, updated by :meth:`publish_lengths`."""

    def __init__(self, *, live: tuple[int, int] | None = None, **kwargs: Any):
        import os
        import tempfile

        self._live = None
        if live is not None:
            fd, path = tempfile.mkstemp(prefix="opd-schedule-")
            os.close(fd)
            self._live = LiveLengths(path)
            self._live.write(*live)
            kwargs["live"] = self._live
        super().__init__(**kwargs)

    def publish_lengths(self, prefix: int, length: int) -> None:
        """The adaptive schedule's next L: the rollouts dispatched from now on sample ``length`` tokens."""
        self._live.write(prefix, length)

    def stop(self) -> None:
        super().stop()
        if self._live is not None:
            Path(self._live.path).unlink(missing_ok=True)

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
