"""The trainer of `opd train --async`: a subclass of TRL 1.16's ``AsyncDistillationTrainer`` (docs/async.md).

TRL runs the asynchrony: a rollout worker (:mod:`opd_cli.train.async_worker`) samples and scores in a child process
while the trainer trains; samples older than ``max_staleness`` weight versions are dropped when drawn
(``RolloutQueueDataset``); the weights reach the server after every optimizer step (``_sync_weight``, through
:class:`opd_cli.train.async_worker.DiskWeightTransfer`), the policy version moving with them. opd overrides:

- ``get_train_dataloader``: TRL's queue dataset and fixed-count batcher, with :class:`OpdRolloutCollator`, which
  lays a micro-batch out as the sync trainer's (prompts left-padded, completions right-padded, the prefix mask of
  each rollout's own step, vLLM's behaviour log-probs as ``old_logp``), instead of TRL's padding-free packing, so
  that the loss and metrics are the sync trainer's own code (``OpdTrainer.compute_loss``, ``_opd_loss``);
- ``compute_loss``: the sync loss, after recording each rollout's staleness (policy version now - version it was
  dispatched at). The importance weight rho_t = pi_theta / pi_behaviour (truncated at ``--is-cap``) is the sampled
  loss's ratio against vLLM's behaviour log-probs (:func:`opd_cli.core.maths.is_ratio_BT`);
- ``log`` and ``_save_checkpoint``: metrics.jsonl through ``StepMetrics`` (the sync keys, ``time_generate`` = the
  time the trainer waited for rollouts, plus staleness_mean/max, is_ratio_mean, dropped_stale) and checkpoints
  committed into the run folder; ``train`` starts the step clock.

A local teacher scores in the trainer (TRL's worker scores with servers only); served teachers in the worker, and
with --reward-weight the worker grades each rollout. The adaptive schedule's L goes to the worker after each step
(``log``); a LoRA student is TRL's ``peft_config``, its merged weights synced by TRL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # opd pins TRL 1.16 and names the experimental API it uses

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from trl.experimental.async_distillation import AsyncDistillationTrainer  # noqa: E402
from trl.experimental.async_distillation.async_distillation_trainer import FixedCountBatcher, RolloutQueueDataset  # noqa: E402
from trl.trainer.utils import pad  # noqa: E402

from opd_cli.core import maths  # noqa: E402
from opd_cli.train.step_metrics import StepMetrics  # noqa: E402
from opd_cli.train.trainer import OpdTrainer, commit_checkpoint, save_lora_folder  # noqa: E402


class OpdRolloutCollator:
    """One micro-batch of TRL ``RolloutQueueDataset`` rows as the sync trainer's batch (module docstring)."""

    def __init__(self, trainer: OpdAsyncTrainer):
        self.t = trainer

    def __call__(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        t, opd = self.t, self.t.opd
        rows = [ex for group in examples[0] for ex in group]  # one process: the planner's one group
        prompts, completions, old, teacher, versions, L_B, reward, graded = [], [], [], [], [], [], [], []
        for ex in rows:
            ids, cm = torch.as_tensor(ex["input_ids"]), torch.as_tensor(ex["completion_mask"]).bool()
            prompts.append(ids[~cm])
            completions.append(ids[cm])
            m = ex["metrics"]
            if m["behaviour_logp"] is not None:  # None: rollouts of the current weights (the sync HF path's ratio 1)
                old.append(torch.as_tensor(m["behaviour_logp"], dtype=torch.float32))
            if m["teacher_logp"] is not None:
                teacher.append(torch.as_tensor(m["teacher_logp"], dtype=torch.float32))
            versions.append(int(m["model_version"]))
            # the L it was sampled with: the adaptive schedule's as published then, else that of the step it was for
            L = m.get("prefix_len")
            L_B.append(int(L) if L is not None else t.prefix_len(t.step_of(int(m["model_version"]))))
            if m.get("reward") is not None:  # --reward-weight: the child's verdict on the (continued) answer
                reward.append(float(m["reward"]))
                graded.append(int(m["graded_len"]))
        pad_id = t.processing_class.pad_token_id
        out = {
            "prompt_ids": pad(prompts, padding_value=pad_id, padding_side="left"),
            "prompt_mask": pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left"),
            "completion_ids": pad(completions, padding_value=pad_id, padding_side="right"),
            "completion_mask": pad([torch.ones_like(c) for c in completions], padding_value=0, padding_side="right"),
            "model_version": torch.tensor(versions),
            "prompt_id": torch.tensor([int(ex["prompt_id"]) for ex in rows]),
            # the step's rollouts (sum over tokens, mean over sequences), one per row: accelerate slices every tensor by row
            "num_items_in_batch": torch.full((len(rows),), float(opd.batch_size)),
        }
        if old:
            out["old_logp"] = pad(old, padding_value=0.0, padding_side="right")
        if teacher:
            out["teacher_logp"] = pad(teacher, padding_value=0.0, padding_side="right")
        if reward:
            out["reward"], out["graded_len"] = torch.tensor(reward), torch.tensor(graded)
        if opd.teacher_column is not None:
            names = list(opd.teachers)
            out["teacher_idx"] = torch.tensor([names.index(ex["teacher_id"]) for ex in rows])
        B, T = out["completion_ids"].shape
        lengths_B = out["completion_mask"].sum(1)
        train_BT = torch.stack([maths.prefix_mask_BT(lengths_B[i : i + 1], T, L)[0] for i, L in enumerate(L_B)])
        if opd.loss_window:
            train_BT &= maths.window_mask_BT(lengths_B, T, *opd.window)
        if opd.loss_tail:
            train_BT &= maths.tail_mask_BT(lengths_B, T, opd.loss_tail)
        out["train_mask"] = train_BT
        return out


class OpdAsyncTrainer(AsyncDistillationTrainer):
    """TRL's async distillation trainer with opd's batch, loss, metrics and run folder (module docstring).

    ``teacher_model``: the local teacher (None: served teachers score in the worker); ``opd``, ``run``,
    ``flops_fn``, ``offsets``: as :class:`opd_cli.train.trainer.OpdTrainer`'s."""

    # the sync trainer's loss, teacher forward and helpers, unchanged (they read only the attributes set below)
    compute_loss_sync = OpdTrainer.compute_loss
    _opd_loss = OpdTrainer._opd_loss
    _teacher_scores = OpdTrainer._teacher_scores
    _hidden_BTH = OpdTrainer._hidden_BTH
    _sync = OpdTrainer._sync
    _step_index = OpdTrainer._step_index
    prefix_len = OpdTrainer.prefix_len
    gen_len = OpdTrainer.gen_len
    _write_metrics = OpdTrainer._write_metrics
    _adaptive_lengths = OpdTrainer._adaptive_lengths

    def __init__(self, model: str, *, opd: Any, run: Any, flops_fn: Any, offsets: dict[str, float],
                 teacher_model: Any = None, **kwargs: Any):
        from unittest import mock

        from trl.experimental.async_distillation import async_distillation_trainer as T

        self.opd, self.run_dir, self.progress = opd, run, None
        # TRL's __init__ asks CUDA for the device's name (its MFU metric) even on a CPU, where that raises: no MFU there
        peak = T.get_peak_flops_per_device
        with mock.patch.object(T, "get_peak_flops_per_device", lambda acc, dtype: peak(acc, dtype) if acc.device.type == "cuda" else None):
            super().__init__(model, **kwargs)
        self.teacher_model = teacher_model
        if teacher_model is not None:
            self.teacher_model = teacher_model.to(self.accelerator.device).eval().requires_grad_(False)
        self.teacher_server = True if opd.teacher_server else None  # served teachers score in the worker
        # the adaptive schedule: its signal at every step so far (replayed from metrics.jsonl on resume), L per step
        self._version_shift = 0  # 1 in a resumed run (below)
        self._signal = [maths.adaptive_signal(r, opd.adaptive_signal) for r in run.read_metrics()] if opd.schedule == "adaptive" else []
        self._adaptive = self._adaptive_lengths()
        self.metrics = StepMetrics(opd, self.accelerator.device, flops_fn, offsets)

    def _metrics_step(self) -> bool:
        """The overlap metrics need the teacher's distribution: a local teacher's (a served one's are not sent)."""
        return self.teacher_model is not None and OpdTrainer._metrics_step(self)

    def get_train_dataloader(self) -> DataLoader:
        dataset = RolloutQueueDataset(
            rollout_queue=self.rollout_queue, model_version_fn=lambda: self.model_version,
            check_health_fn=self.rollout_worker.check_health, stale_after_s=self.args.heartbeat_stale_after_s,
            metrics=self._metrics["train"], max_staleness=self.args.max_staleness, report_to=[])
        self._rollout_dataset = dataset
        batcher = FixedCountBatcher(dataset, 1, self.args.per_device_train_batch_size)
        return self.accelerator.prepare(DataLoader(batcher, batch_size=1, collate_fn=OpdRolloutCollator(self), num_workers=0))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        version_B = inputs.pop("model_version")
        # trained now, not when collated (the dispatcher collates a micro-batch ahead): the checkpoint's
        # rollout_state.json names the first prompt not trained, where a resumed worker starts
        self._trained_prompts.update(int(i) for i in inputs.pop("prompt_id"))
        inputs["num_items_in_batch"] = inputs["num_items_in_batch"][0]
        # the rollout metrics of the trained micro-batch (the dispatcher collates one batch ahead of training)
        self.metrics.add_staleness((self.model_version - version_B).double())  # versions old when trained
        ids_BT, lengths_B = inputs["completion_ids"], inputs["completion_mask"].sum(1)
        gen_B = torch.tensor([self.gen_len(self.step_of(int(v))) for v in version_B], device=ids_BT.device)
        last = ids_BT.gather(1, (lengths_B - 1).clamp(min=0)[:, None]).squeeze(1)
        ended = torch.isin(last, torch.tensor(self.eos_token_ids, device=ids_BT.device)) & (lengths_B > 0)
        self.metrics.add_rollouts(lengths_B, (~ended) & (lengths_B >= gen_B), inputs["prompt_mask"].sum(1) + lengths_B,
                                  self.prefix_len(self._step_index()))
        if "teacher_idx" in inputs:
            self.metrics.add_teacher_rollouts(inputs["teacher_idx"])
        if "graded_len" in inputs:
            from opd_cli.train import task_reward

            self.metrics.add_reward(task_reward.sums(inputs["reward"], inputs["prompt_mask"].sum(1), lengths_B,
                                                     inputs.pop("graded_len")))
        return self.compute_loss_sync(model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "grad_norm" in logs and "train_runtime" not in logs:  # the once-per-optimizer-step log
            from opd_cli.core.tracking import tracker_scalars

            sink = self._metrics["train"]
            self.metrics.add_time("time_generate", float(sum(sink.get("perf/rollout_wait_s", []))))
            self.metrics.dropped_stale = len(sink.get("sample/dropped_stale_total", []))
            logs = {**logs, **tracker_scalars(self._write_metrics(logs))}
            if self.opd.schedule == "adaptive":  # the next step's L, from the KL just logged, to the worker
                step = int(self.state.global_step)
                self.rollout_worker.publish_lengths(self.prefix_len(step), self.gen_len(step))
        super().log(logs, start_time)

    def step_of(self, version: int) -> int:
        """The optimizer step (0-based) a rollout sampled at policy ``version`` was for."""
        return max(version - 1 - self._version_shift, 0)

    def train(self, *args, resume_from_checkpoint: Any = None, **kwargs):
        if resume_from_checkpoint is not None:
            # TRL restores the checkpoint's policy version (1 + its steps), then its cold sync at train begin adds one:
            # from then on, step k's rollouts are sampled at version k + 2, and the worker must know it too
            self._version_shift = 1
            if hasattr(self.rollout_worker, "_loop_kwargs"):
                self.rollout_worker._loop_kwargs["version_shift"] = 1
        if self.opd.schedule == "adaptive":  # a resumed run's L, from its logged KL, before the worker starts
            step = len(self._signal)
            self.rollout_worker.publish_lengths(self.prefix_len(step), self.gen_len(step))
        self.metrics.start_clock()
        return super().train(*args, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self.opd.lora:  # as the sync trainer's: the adapter, not the merged weights beside it
            from opd_cli.train.trainer import LORA_ADAPTER_DIR

            resume_from_checkpoint = str(Path(resume_from_checkpoint) / LORA_ADAPTER_DIR)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As the sync trainer's: a LoRA student's folder holds the merged weights and the adapter in adapter/."""
        super().save_model(output_dir, _internal_call)
        if self.opd.lora and self.args.should_save:
            save_lora_folder(self.accelerator.unwrap_model(self.model), Path(output_dir or self.args.output_dir))

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # TRL's: rollout_state.json, then the Trainer's files
        commit_checkpoint(self, trial)


def async_args(cfg: Any, tmp_root: Any, grad_accum: int, device: str, precision: Any, mixed: bool) -> Any:
    """TRL's ``AsyncDistillationConfig`` for :class:`OpdAsyncTrainer`: the sync run's optimiser, schedule and
    checkpointing (``opd_cli.train.run._distillation_args``), one weight sync per optimizer step (so the policy version
    is the step + 1), ``--max-staleness``, the student loaded in opd's dtype with SDPA attention (TRL's default is a
    flash-attention kernel, which opd's padded batches do not need), and fixed-count micro-batches."""
    from trl.experimental.async_distillation import AsyncDistillationConfig

    from opd_cli.core.tracking import training_args

    batch_rows = cfg.micro_batch_size * grad_accum
    return AsyncDistillationConfig(
        output_dir=str(tmp_root), per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=grad_accum,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, max_steps=cfg.steps,
        warmup_steps=cfg.warmup, lr_scheduler_type="constant_with_warmup", optim="adamw_torch", logging_strategy="steps",
        logging_steps=1, save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 1,
        **training_args(cfg.report_to, cfg.name), disable_tqdm=True, seed=cfg.seed, data_seed=cfg.seed,
        bf16=mixed and precision == torch.bfloat16, fp16=mixed and precision == torch.float16, use_cpu=device == "cpu",
        dataloader_num_workers=0, remove_unused_columns=False, save_only_model=False, gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32" if mixed else str(precision).removeprefix("torch."), "attn_implementation": "sdpa"},
        max_completion_length=cfg.max_gen_len(), temperature=1.0, top_p=1.0, top_k=0,
        vllm_server_base_url=f"http://{cfg.vllm_host}:{cfg.vllm_port}", vllm_server_timeout=cfg.vllm_timeout,
        teacher_server_urls=dict(cfg.teachers) or None, teacher_top_k=cfg.teacher_topk, request_timeout=int(cfg.vllm_timeout),
        max_staleness=cfg.max_staleness, weight_sync_steps=1, token_budget=0,
        max_inflight_tasks=max(cfg.max_staleness, 1) * batch_rows, queue_maxsize=max(cfg.max_staleness, 1) * batch_rows,
    )


def rollout_worker(cfg: Any, dataset: Any, tokenizer: Any, problems: list[Any] | None = None) -> Any:
    """The worker that samples (and with --teacher-server scores, with --reward-weight grades against ``problems``)
    the rollouts: TRL's, running opd's loop, asking the student's server for the model it serves."""
    import requests

    from opd_cli.train.async_worker import OpdRolloutWorker

    url = f"http://{cfg.vllm_host}:{cfg.vllm_port}"
    model_name = requests.get(f"{url}/v1/models", timeout=cfg.vllm_timeout).json()["data"][0]["id"]
    batch_rows = cfg.batch_size
    return OpdRolloutWorker(
        model_name=model_name, dataset=dataset, processing_class=tokenizer, eos_token_ids=[tokenizer.eos_token_id],
        max_inflight_tasks=max(cfg.max_staleness, 1) * batch_rows, queue_maxsize=max(cfg.max_staleness, 1) * batch_rows,
        vllm_server_url=url, teacher_server_urls=dict(cfg.teachers) or None,
        teacher_top_k=cfg.teacher_topk, request_timeout=int(cfg.vllm_timeout),
        lengths=[cfg.gen_len(s) for s in range(cfg.steps)], seed=cfg.seed, served=bool(cfg.teacher_server),
        ignore_eos=cfg.ignore_eos, live=(cfg.prefix_len(0), cfg.gen_len(0)) if cfg.schedule == "adaptive" else None,
        problems=problems if cfg.reward_weight else None, max_new_tokens=cfg.max_new_tokens,
    )
