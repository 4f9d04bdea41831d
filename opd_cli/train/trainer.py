"""The trainer of `opd train`: a ``trl.DistillationTrainer`` subclass for prefix on-policy distillation.

The trainer overrides these methods of ``trl.DistillationTrainer`` (TRL 1.16) and nothing else:

- ``_generate_single_turn``: generation *stops* at this step's length (L, or the loss window's end). On the HF path
  each rollout's sampling noise is a function of (seed, step, its index in the global batch) only
  (:func:`opd_cli.core.generation.rollout_seed`), so one process and N processes, or a resumed run, draw the same tokens; on the vLLM path
  vLLM's sampled-token log-probs are kept instead of discarded. ``--rollout pg-opd`` generates in two stages with
  a probe between them (:mod:`opd_cli.train.pg_opd`). With ``--reward-weight`` the rollouts cut at L are continued
  for grading only (:mod:`opd_cli.train.task_reward`);
- ``_get_train_sampler``: each prompt ``--rollouts-per-prompt`` times in a row (``--candidates`` with
  ``--rollout pg-opd``); TRL's distillation sampler draws each prompt once;
- ``_generate_and_score_completions``: after TRL's rollout/padding code, only the trained-token mask, vLLM's
  log-probs, ``num_items_in_batch`` = number of sequences (the paper sums over tokens) and, with ``--reward-weight``,
  the grader's verdict on each rollout. No model runs here;
- ``compute_loss``: per micro-batch, like TRL's own loss: the student forward (with gradient), the teacher forward
  (through the forward redirection, so FSDP/ZeRO-3 gather their shards), per-token log-probs from TRL's chunked
  log-prob kernel (no (micro-batch, T, V) logits), the ``sampled`` / ``full`` / ``topk`` loss from :mod:`opd_cli.core.maths`,
  and the step's metrics. Memory is bounded by the micro-batch, not by the rollouts per step;
- ``log`` and ``_save_checkpoint``: one metrics.jsonl line per optimizer step from our own accumulators
  (:class:`opd_cli.train.step_metrics.StepMetrics`; the trackers of ``--report-to`` get the same numbers), and
  checkpoints committed into ``checkpoints/step_XXXXXX`` once every rank has written its files;
- ``save_model`` and ``_load_from_checkpoint``: with ``--lora``, a checkpoint holds the merged weights (what
  `opd eval` loads) and the adapter in ``adapter/`` (what a resume loads);
- ``train``: starts the step clock.

``--schedule adaptive`` sets each step's L from the KL logged so far (:func:`opd_cli.core.maths.adaptive_prefix_lengths`).

On the HF path the rollout log-probs ``logp_old`` are the update's own log-probs, detached: weights only change at
the optimizer step, so the importance ratio is exactly 1 and a second no-grad student pass would compute the same
numbers again (the paper's FLOPs count still charges that pass, x/3, as verl runs it). Sampling uses temperature 1,
top-p 1, top-k off: the sampling distribution is the model's distribution.

torch, transformers and trl are imported at the top: only :func:`opd_cli.train.run.run_train` imports this module, so
the CLI stays free of them until a run starts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import GenerationConfig, LogitsProcessorList
from trl import DistillationTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import pad

from opd_cli.core import maths
from opd_cli.core.generation import global_batch_sampling, rollout_seed
from opd_cli.train.step_metrics import StepMetrics


class OpdTrainer(DistillationTrainer):
    """``trl.DistillationTrainer`` with the overrides listed above; ``opd`` is the run's
    :class:`opd_cli.train.config.TrainConfig` (typed Any: importing it here would make train/config.py and this module a cycle)."""

    def __init__(self, *args: Any, opd: Any, run: Any, flops_fn: Any, offsets: dict[str, float],
                 engine_dtype: str | None = None, problems: list[Any] | None = None, **kwargs: Any):
        self.opd = opd
        self.run_dir = run
        self.progress = None
        self.problems = problems  # the dataset's problems by row (their gold answers grade --reward-weight's rollouts)
        super().__init__(*args, **kwargs)
        from opd_cli.core.sharding import prepare_teacher

        if self.teacher_model is not None:  # None: a --teacher-server scores the rollouts
            self.teacher_model = prepare_teacher(self)  # under FSDP TRL leaves it unsharded, where it was loaded
            self.teacher_model.requires_grad_(False)
        self.teacher_server = None
        if opd.teacher_server:  # one or several served teachers (--teacher-server [NAME=]URL ...)
            from opd_cli.core import served_teacher

            self.teacher_server = served_teacher.ServedTeachers(opd.teachers, opd.teacher_topk, opd.vllm_timeout)
        if opd.backend == "vllm":
            from opd_cli.core.vllm_engine import rollout_engine

            self.use_vllm, self.vllm_mode, self._last_loaded_step = True, opd.vllm_mode, -1
            self.vllm_generation = rollout_engine(self, engine_dtype)
        # the adaptive schedule: its signal at every step so far (replayed from metrics.jsonl on resume), L per step
        self._signal = [maths.adaptive_signal(r, opd.adaptive_signal) for r in run.read_metrics()] if opd.schedule == "adaptive" else []
        self._adaptive = self._adaptive_lengths()
        self.metrics = StepMetrics(opd, self.accelerator.device, flops_fn, offsets)  # the step's accumulators
        if opd.lora and opd.lora_dropout:  # TRL's disable_dropout zeroed every nn.Dropout, the adapters' too
            for name, module in self.model.named_modules():
                if ".lora_dropout." in f"{name}." and isinstance(module, torch.nn.Dropout):
                    module.p = opd.lora_dropout

    def _adaptive_lengths(self) -> list[int] | None:
        o = self.opd
        if o.schedule != "adaptive":
            return None
        return maths.adaptive_prefix_lengths(self._signal, o.prefix_start, o.prefix_delta, o.max_new_tokens,
                                             o.adaptive_ratio, o.adaptive_patience, o.adaptive_floor)

    def prefix_len(self, step: int) -> int:
        return self.opd.prefix_len(step, self._adaptive)

    def gen_len(self, step: int) -> int:
        return self.opd.gen_len(step, self._adaptive)

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """Each step's prompts, each G times in a row (G = --rollouts-per-prompt, or PG-OPD's --candidates): TRL's
        RepeatSampler grouped as GRPO's; G = 1 is TRL's own sampler. Each copy is its own rollout: on the HF path its
        row in the global batch seeds its sampling noise, so the G rollouts of one prompt differ."""
        G = self.opd.group_size
        if G == 1:
            return super()._get_train_sampler(dataset)
        from trl.trainer.utils import RepeatSampler

        args = self.args
        rows = args.per_device_train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps
        return RepeatSampler(data_source=dataset if dataset is not None else self.train_dataset, mini_repeat_count=G,
                             batch_size=rows // G, repeat_count=args.gradient_accumulation_steps,
                             shuffle=self.shuffle_dataset, seed=args.seed)

    # ------------------------------------------------------------------ helpers
    def _step_index(self) -> int:
        return int(self.state.global_step)

    def _metrics_step(self) -> bool:
        """The overlap metrics (full-vocabulary top-k) run on the first, every --metrics-every-th and last step."""
        s, every = self._step_index(), self.opd.metrics_every
        return every > 0 and (s % every == 0 or s == self.opd.steps - 1)

    def _sync(self) -> None:
        if self.accelerator.device.type == "cuda":  # phase timings must not charge queued kernels to the next phase
            torch.cuda.synchronize()

    def _hidden_BTH(self, model: Any, ids: torch.Tensor, attn: torch.Tensor, T: int) -> torch.Tensor:
        """Last hidden states predicting the T completion tokens, with position ids that skip left padding
        (generate numbers positions that way; a plain forward would shift the prompts of padded rows)."""
        pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
        if is_peft_model(model):  # --lora: a PEFT model's base_model is its tuner; the backbone is the base's (as TRL)
            model = model.get_base_model()
        out = model.base_model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, -T - 1 : -1, :]

    # ------------------------------------------------------------------ hook 1: generation
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        step = self._step_index()
        self._sync()
        t0 = time.perf_counter()
        if self.opd.rollout == "pg-opd":
            from opd_cli.train import pg_opd

            completion_ids, self._rollout_logprobs = pg_opd.generate(self, prompt_ids, step)
        else:
            completion_ids, self._rollout_logprobs = self._sample(prompt_ids, step, self.gen_len(step))
        if self.opd.reward_weight:  # the answers the grader reads: cut rollouts continued (task_reward's docstring)
            from opd_cli.train import task_reward

            self._graded = task_reward.complete(self, prompt_ids, completion_ids, step)
        self.metrics.add_time("time_generate", time.perf_counter() - t0)
        return completion_ids

    def _sample(self, prompt_ids: list[list[int]], step: int, max_new: int, rows: list[int] | None = None,
                global_rows: int | None = None, stage: int = 0) -> tuple[list[list[int]], list[list[float]] | None]:
        """(completions, vLLM's sampled-token log-probs or None) of each prompt, at most ``max_new`` tokens.

        Every process must call it, with equally many prompts (vLLM gathers them; ZeRO-3 gathers weights).
        ``rows``: the prompts' indices in the global batch of ``global_rows`` (default: this process's contiguous
        slice), which fix each rollout's sampling noise on the HF path."""
        if self.use_vllm:
            if self.state.global_step != self._last_loaded_step:
                self.vllm_generation.sync_weights()
                self._last_loaded_step = self.state.global_step
            self.vllm_generation.max_completion_length = max_new
            _, completion_ids, logprobs, _ = self.vllm_generation.generate(prompts=prompt_ids, images=None, num_generations=1)
            return completion_ids, [[lp[0] for lp in seq] for seq in logprobs]
        return self._generate_hf(prompt_ids, step, max_new, rows, global_rows, stage), None

    def _generate_hf(self, prompt_ids: list[list[int]], step: int, gen_len: int, rows_idx: list[int] | None = None,
                     global_rows: int | None = None, stage: int = 0) -> list[list[int]]:
        """transformers ``generate`` with per-rollout seeds (see :func:`opd_cli.core.generation.rollout_seed`); returns completions cut
        after their first EOS, like TRL's."""
        device = self.accelerator.device
        rows = [torch.tensor(p) for p in prompt_ids]
        ids = pad(rows, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        attn = pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side="left").to(device)
        first = self.accelerator.process_index * len(rows)  # each process holds one contiguous slice of the batch
        sampling = global_batch_sampling(rollout_seed(self.opd.seed, step, stage),
                                       slice(first, first + len(rows)) if rows_idx is None else rows_idx,
                                       global_rows or len(rows) * self.accelerator.num_processes, device)
        config = GenerationConfig(
            max_new_tokens=gen_len, min_new_tokens=gen_len if self.opd.ignore_eos else None, do_sample=False,
            eos_token_id=self.eos_token_ids, pad_token_id=self._tokenizer.pad_token_id, disable_compile=True,
        )
        with (
            unwrap_model_for_generation(self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation) as model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
            self.accelerator.autocast(),
        ):
            training = model.training
            model.eval()  # --lora-dropout drops in the training forward only: rollouts sample the policy itself
            try:
                out = model.generate(input_ids=ids, attention_mask=attn, generation_config=config,
                                     logits_processor=LogitsProcessorList([sampling]))
            finally:
                model.train(training)
        completions = out[:, ids.shape[1] :].cpu()
        is_eos = torch.isin(completions, torch.tensor(self.eos_token_ids))
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completions.shape[1])
        return [c[:n].tolist() for c, n in zip(completions, ends.tolist(), strict=True)]

    # ------------------------------------------------------------------ hook 2: the rollout batch
    def _generate_and_score_completions(self, inputs):
        """TRL's rollout and padding code, then what the loss needs besides the models: the trained-token mask,
        vLLM's sampling log-probs, the sequence count, and with --reward-weight each rollout's verdict. Both models run
        later, one micro-batch at a time."""
        out = super()._generate_and_score_completions(inputs)
        if self.opd.reward_weight:
            self._grade(out, [self.problems[x["problem"]] for x in inputs])
        step = self._step_index()
        L = self.prefix_len(step)
        ids_BT, cmask_BT = out["completion_ids"], out["completion_mask"]
        B, T = ids_BT.shape
        lengths_B = cmask_BT.sum(1)
        train_BT = maths.prefix_mask_BT(lengths_B, T, L)
        if self.opd.loss_window:
            a, b = self.opd.window
            train_BT &= maths.window_mask_BT(lengths_B, T, a, b)
        if self.opd.loss_tail:
            train_BT &= maths.tail_mask_BT(lengths_B, T, self.opd.loss_tail)
        if self.opd.rollout == "pg-opd":
            from opd_cli.train import pg_opd

            train_BT, out["loss_weight"] = pg_opd.loss_mask_and_weights(self, train_BT)
        out["train_mask"] = train_BT
        if self.opd.teacher_column is not None:  # each rollout's teacher, an index into --teacher-server's names
            out["teacher_idx"] = torch.tensor([x["teacher"] for x in inputs], device=ids_BT.device)
            self.metrics.add_teacher_rollouts(out["teacher_idx"])
        if self.teacher_server is not None:  # the teachers' log-probs of this process's rollouts, one request each
            t0 = time.perf_counter()
            out.update(self.teacher_server.score(out["prompt_ids"], out["prompt_mask"], ids_BT, cmask_BT,
                                                 out.get("teacher_idx")))
            self.metrics.add_time("time_teacher", time.perf_counter() - t0)
        if self._rollout_logprobs is not None:  # vLLM: the log-probs it sampled with (importance ratio != 1)
            lp = torch.zeros(B, T, device=ids_BT.device)
            for i, seq in enumerate(self._rollout_logprobs):
                vals = [x if x is not None else 0.0 for x in seq][:T]
                lp[i, : len(vals)] = torch.tensor(vals, device=ids_BT.device)
            out["old_logp"] = lp
        # The paper sums over tokens and averages over sequences: normalise by the global rollout count, not
        # by TRL's completion-token count.
        out["num_items_in_batch"] = self.accelerator.gather(torch.tensor(float(B), device=ids_BT.device)).sum()

        gen_len = self.gen_len(step)
        last = ids_BT.gather(1, (lengths_B - 1).clamp(min=0)[:, None]).squeeze(1)
        ended = torch.isin(last, torch.tensor(self.eos_token_ids, device=ids_BT.device)) & (lengths_B > 0)
        self.metrics.add_rollouts(lengths_B, (~ended) & (lengths_B >= gen_len), out["prompt_mask"].sum(1) + lengths_B, L)
        return out

    def _grade(self, out: dict[str, Any], problems: list[Any]) -> None:
        """out["reward"] = the grader's verdict on each rollout's answer (1 or 0), and the step's reward sums."""
        from opd_cli.train import task_reward

        dev = out["completion_ids"].device
        verdict_B = torch.tensor(task_reward.verdicts(problems, self._tokenizer, self._graded), device=dev)
        graded_B = torch.tensor([len(a) for a in self._graded], device=dev)
        self.metrics.add_reward(task_reward.sums(verdict_B, out["prompt_mask"].sum(1), out["completion_mask"].sum(1), graded_B))
        out["reward"] = verdict_B

    # ------------------------------------------------------------------ hook 3: scoring + loss, per micro-batch
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = _trim_padding(inputs)
        # Per-process divisor: DDP averages gradients over processes, so divide by (sequences / processes).
        P = self.accelerator.num_processes
        n = inputs["num_items_in_batch"].clamp(min=1.0) / P
        unwrapped = self.accelerator.unwrap_model(model)
        # Through the wrapper's forward (DDP hooks, FSDP/ZeRO-3 gathers), which skips accelerate's autocast patch
        with self.accelerator.autocast():
            loss = self._forward_redirection(model, unwrapped, self._opd_loss, unwrapped, inputs, n)
        self.metrics.add_loss(loss.detach().double() / P)  # the processes' losses sum to P x the global loss
        return (loss, None) if return_outputs else loss

    def _opd_loss(self, student, inputs, n):
        ids_BT, valid_BT, train_BT = inputs["completion_ids"], inputs["completion_mask"].bool(), inputs["train_mask"]
        B, T = ids_BT.shape
        ids = torch.cat([inputs["prompt_ids"], ids_BT], 1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        h_s = self._hidden_BTH(student, ids, attn, T)
        rows = B * self.opd.chunk  # rows per head call: the logits of a (B, chunk, V) block at a time
        y_N, tr_N = ids_BT[valid_BT], train_BT[valid_BT]
        # --pg-select weight: each rollout's loss weighted by its probe overlap (the metrics stay unweighted)
        w_BT = train_BT * inputs["loss_weight"][:, None] if "loss_weight" in inputs else train_BT
        hs_N, s_head = h_s[valid_BT], student.get_output_embeddings()
        h_t, t_head, logq_N, ent_q_N = self._teacher_scores(inputs, ids, attn, valid_BT, y_N, rows)
        ht_N = h_t[valid_BT] if h_t is not None else None

        if self.opd.loss == "sampled":
            logp_N, ent_p_N = maths.map_rows(maths.head_logprobs_N, hs_N, s_head, y_N, rows)
            old_N = inputs["old_logp"][valid_BT] if "old_logp" in inputs else logp_N.detach()
            task_N = None
            if self.opd.reward_weight:  # A_t = -k_t + w * r, r the rollout's verdict
                task_N = maths.task_advantage_B(inputs["reward"], self.opd.reward_weight)[:, None].expand(B, T)[valid_BT]
            loss = maths.sampled_loss(logp_N, old_N, logq_N, w_BT[valid_BT], n, task_N, self.opd.is_cap)
            if self.opd.async_rollouts:  # stale rollouts: their importance weights (1 at staleness 0)
                self.metrics.add_is_ratio(maths.is_ratio_BT(logp_N, old_N, self.opd.is_cap), tr_N)
        else:
            with torch.no_grad():
                logp_N, ent_p_N = maths.map_rows(maths.head_logprobs_N, hs_N.detach(), s_head, y_N, rows)
            old_N = inputs["old_logp"][valid_BT] if "old_logp" in inputs else logp_N
            if self.opd.loss == "full":  # TRL's fused reverse KL (beta = 1), (N, V) logits never materialised
                from trl.trainer.distillation_trainer import _chunked_divergence_loss

                from opd_cli.core.sharding import gathered_heads

                with gathered_heads(s_head, t_head):  # ZeRO-3: the kernel's input must have the head's shape
                    loss, _, _ = _chunked_divergence_loss(
                        student_hidden_states=h_s, teacher_hidden_states=h_t,
                        student_lm_head_weight=s_head.weight, teacher_lm_head_weight=t_head.weight,
                        completion_mask=train_BT.int(), beta=1.0, num_items_in_batch=n,
                        student_lm_head_bias=s_head.bias, teacher_lm_head_bias=t_head.bias,
                    )
            else:
                div_BT = maths.map_chunks_T(
                    lambda hs, ht: maths.divergence_BT(s_head(hs), t_head(ht), "topk", self.opd.topk, self.opd.topk_support),
                    h_s, h_t, chunk=self.opd.chunk,
                )
                loss = maths.sum_over_seqs(div_BT, w_BT.to(div_BT.dtype), n)
        with torch.no_grad():
            served = (inputs["teacher_top_ids"], inputs["teacher_top_logp"]) if "teacher_top_ids" in inputs else None
            teacher_N = inputs["teacher_idx"][:, None].expand(B, T)[valid_BT] if "teacher_idx" in inputs else None
            self.metrics.add_tokens(old_N.detach(), logq_N, ent_p_N, ent_q_N, tr_N, valid_BT, hs_N, ht_N, s_head, t_head,
                                    served, metrics_step=self._metrics_step(), teacher_N=teacher_N)
        return loss

    def _teacher_scores(self, inputs, ids, attn, valid_BT, y_N, rows):
        """(h_t, t_head, log q(y), H(q)) of the teacher on the micro-batch's completion tokens: a local forward,
        or the --teacher-server's log-probs sent with the rollouts (no hidden states, head or entropy then)."""
        if self.teacher_server is not None:
            return None, None, inputs["teacher_logp"][valid_BT], None
        self._sync()
        t0 = time.perf_counter()
        self.teacher_model.eval()
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        T = valid_BT.shape[1]
        with torch.no_grad():
            h_t = self._forward_redirection(self.teacher_model, teacher, self._hidden_BTH, teacher, ids, attn, T)
            t_head = teacher.get_output_embeddings()
            logq_N, ent_q_N = maths.map_rows(maths.head_logprobs_N, h_t[valid_BT], t_head, y_N, rows)
        self._sync()
        self.metrics.add_time("time_teacher", time.perf_counter() - t0)
        return h_t, t_head, logq_N, ent_q_N

    # ------------------------------------------------------------------ hook 4: metrics + checkpoints
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "grad_norm" in logs and "train_runtime" not in logs:  # the once-per-optimizer-step log
            from opd_cli.core.tracking import tracker_scalars

            logs = {**logs, **tracker_scalars(self._write_metrics(logs))}  # trackers see metrics.jsonl's names
        super().log(logs, start_time)

    def _write_metrics(self, logs: dict[str, float]) -> dict[str, Any]:
        step = int(self.state.global_step)
        rec = self.metrics.record(self.accelerator, logs, step, self.prefix_len(step - 1), self.teacher_server is not None)
        if self.opd.schedule == "adaptive":  # every process computes the same L from the gathered KL
            self._signal.append(maths.adaptive_signal(rec, self.opd.adaptive_signal))
            self._adaptive = self._adaptive_lengths()
        if self.accelerator.is_main_process:
            self.run_dir.log(rec)
            if self.progress is not None:
                self.progress(rec)
        return rec

    def train(self, *args, **kwargs):
        self.metrics.start_clock()
        return super().train(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's save (a LoRA student: the adapter alone); with --lora the folder then holds the merged weights where
        a model's are (what `opd eval` and vLLM load) and the adapter in adapter/ (what a resume loads)."""
        super().save_model(output_dir, _internal_call)
        if self.opd.lora and self.args.should_save:
            save_lora_folder(self.accelerator.unwrap_model(self.model), Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self.opd.lora:  # transformers would load the merged weights beside it into the PEFT model, not the adapter
            resume_from_checkpoint = str(Path(resume_from_checkpoint) / LORA_ADAPTER_DIR)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        commit_checkpoint(self, trial)


def commit_checkpoint(trainer: Any, trial: Any) -> None:
    """After TRL's save into checkpoint-N: opd_state.json beside it, then the folder committed into the run folder's
    checkpoints/step_N (``OpdTrainer`` and the ``--async`` trainer)."""
    step = int(trainer.state.global_step)
    src = Path(trainer._get_output_dir(trial=trial)) / f"checkpoint-{step}"
    trainer.accelerator.wait_for_everyone()  # every rank has written its files (RNG states, shards)
    if trainer.accelerator.is_main_process:
        state = {"step": step, "prefix_len": trainer.prefix_len(step - 1), "next_prefix_len": trainer.prefix_len(step),
                 "flops_total": trainer.metrics.flops_total}
        (src / "opd_state.json").write_text(json.dumps(state, indent=2) + "\n")
        trainer.run_dir.commit(src, step, trainer.opd.optimizer_states)
    trainer.accelerator.wait_for_everyone()


LORA_ADAPTER_DIR = "adapter"  # --lora: the adapter's folder inside a checkpoint and final/
PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")  # what peft's save_pretrained writes


def save_lora_folder(model: Any, folder: Path) -> None:
    """``folder`` as a LoRA run's checkpoint: peft's adapter files (written there by TRL's save) moved into
    ``adapter/``, and the merged weights (:func:`opd_cli.core.models.merged_lora_params`) saved with the student's
    config as a plain model, so that ``from_pretrained(folder)`` and vLLM load the trained student."""
    from opd_cli.core.models import merged_lora_params

    adapter = folder / LORA_ADAPTER_DIR
    adapter.mkdir(parents=True, exist_ok=True)
    for name in PEFT_FILES:
        if (folder / name).exists():
            (folder / name).replace(adapter / name)
    model.get_base_model().save_pretrained(str(folder), state_dict=dict(merged_lora_params(model)))


def _trim_padding(inputs: dict[str, Any]) -> dict[str, Any]:
    """Drop the columns of a micro-batch that are padding in every row (prompts are left-padded and completions
    right-padded to the longest of the whole step, not of this micro-batch)."""
    pm, cm = inputs["prompt_mask"], inputs["completion_mask"]
    cols = pm.any(0).nonzero()
    p0 = int(cols[0].item()) if cols.numel() else pm.shape[1]
    T = max(int(cm.sum(1).max().item()), 1)
    out = dict(inputs)
    for key in ("prompt_ids", "prompt_mask"):
        out[key] = inputs[key][:, p0:]
    for key in ("completion_ids", "completion_mask", "train_mask", "old_logp", "teacher_logp", "teacher_top_ids",
                "teacher_top_logp"):  # loss_weight is per row
        if key in inputs:
            out[key] = inputs[key][:, :T]
    return out
