"""`opd train`'s options: :class:`TrainConfig` (one field per flag), its panels and choices, and the keys of
metrics.jsonl. No torch here: building a config and `opd train --help` must stay instant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from opd_cli.core import generation
from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.core.generation import check_backend

# the panels of `opd train --help`, in the order they are shown (Typer lists a panel where its first flag comes)
RUN = "Run folder and tracking"
MODELS = "Models and data"
PREFIX = "Prefix and schedule"
PG = "PG-OPD (prefix-guided rollout allocation)"
LOSS = "Loss"
OPTIM = "Batch and optimisation"
LORA = "LoRA (train an adapter, not the student's weights)"
ROLLOUTS = "Rollouts and vLLM"
SERVED = "Served teacher"
DEVICE = "Precision and device"
PANELS = (RUN, MODELS, PREFIX, PG, LOSS, OPTIM, LORA, ROLLOUTS, SERVED, DEVICE)

# the choices of TrainConfig's fields, here and not in core/maths.py: building a config must not import torch
LOSSES = ("sampled", "full", "topk")
TOPK_SUPPORTS = ("student", "overlap", "nonoverlap")
SCHEDULES = ("none", "linear", "adaptive")
ADAPTIVE_SIGNALS = ("prefix", "last-bin")
VLLM_MODES = ("colocate", "server")
TIMING_KEYS = ("time_generate", "time_teacher", "time_update", "time_step", "wall_time")
METRIC_KEYS = (
    "step", "prefix_len", "loss", "kl", "kl_bin_size", "kl_bin_mean", "kl_bin_count",
    "rollout_len_mean", "rollout_len_min", "rollout_len_max", "clipped_frac",
    "tokens_generated", "tokens_scored", "tokens_trained", "seq_tokens", "seq_tokens_sq", "flops_step", "flops_total",
    *TIMING_KEYS, "lr", "grad_norm",
    "overlap_ratio", "overlap_adv", "entropy_student", "entropy_teacher", "entropy_gap",
    "overlap_mass_student", "overlap_mass_teacher",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Prefix on-policy distillation of a teacher into a student (no --student/--teacher: the toy world)."""

    command = "train"

    name: str = field("opd", help="Run name; the default output folder is runs/train-<name>.", panel=RUN)
    student: str | None = field(None, help="Student: hub id or local folder (None = the toy world's student).", panel=MODELS)
    teacher: str | None = field(None, help="Teacher: hub id or local folder sharing the student's vocabulary (None = toy teacher).", panel=MODELS)
    toy_student: str = field("large", help="Without --student/--teacher: the toy world's large (student/) or small (student-small/) student.", panel=MODELS)
    prompts: str | None = field(None, help="Registered prompt source, e.g. toy-train, openthoughts3 (None = toy-train on the toy world, openthoughts3 otherwise).", panel=MODELS)
    data: str | None = field(None, help="Local jsonl/parquet/csv file of prompts instead of --prompts (None = off).", panel=MODELS)
    question_column: str | None = field(None, help="Column of --data holding the question (None = guess).", panel=MODELS)
    limit: int = field(0, help="Use only the first N prompts (0 = all).", panel=MODELS)
    prefix: str = field("full", help="Prefix length L in tokens: only the first L response tokens are sampled and trained; 'full' = --max-new-tokens.", panel=PREFIX)
    schedule: str = field("none", help="Prefix schedule: none (fixed --prefix) | linear (L = start + delta*step, capped) | adaptive (L grows by delta once the KL signal at the current L is spent, see --adaptive-signal).", panel=PREFIX)
    prefix_start: int = field(1, help="Linear and adaptive schedules: L at the first step (tokens).", panel=PREFIX)
    prefix_delta: int = field(256, help="Linear schedule: L growth per optimizer step; adaptive: per growth (tokens; --kl-bin is a natural choice).", panel=PREFIX)
    adaptive_signal: str = field("prefix", help="Adaptive schedule's signal: prefix (mean KL over the trained tokens) | last-bin (KL of the position bin holding the last trained token).", panel=PREFIX)
    adaptive_ratio: float = field(0.5, help="Adaptive schedule: grow L once the signal falls to this fraction of its value at the current L's first step.", panel=PREFIX)
    adaptive_patience: int = field(3, help="Adaptive schedule: also grow L when the signal has not gone below its earlier minimum for this many steps (0 = off).", panel=PREFIX)
    adaptive_floor: float = field(0.01, help="Adaptive schedule: also grow L when the signal is below this many nats (nothing left to learn there).", panel=PREFIX)
    rollout: str = field("standard", help="standard (every rollout to the step's length) | pg-opd (prefix-guided rollout allocation: candidates decoded to --pg-prefix, the high-overlap ones continued).", panel=PG)
    candidates: int = field(4, help="PG-OPD: candidates per prompt (the step's prompts = --batch-size / candidates).", panel=PG)
    pg_prefix: int = field(256, help="PG-OPD: tokens every candidate is decoded to before the overlap decides.", panel=PG)
    probe_window: int = field(128, help="PG-OPD: the first N tokens of the prefix over which the top-k overlap is averaged.", panel=PG)
    probe_topk: int = field(16, help="PG-OPD: k of the teacher-student top-k overlap.", panel=PG)
    keep_per_prompt: int = field(1, help="PG-OPD: each prompt's best N candidates are continued.", panel=PG)
    keep_global: float = field(0.25, help="PG-OPD: and the best fraction of all candidates, in (0, 1].", panel=PG)
    pg_select: str = field("stop", help="PG-OPD: stop (stop the low-overlap candidates at the prefix) | all (continue every candidate) | weight (continue all, weight each loss by its overlap).", panel=PG)
    pg_train_stopped: bool = field(True, help="PG-OPD: stopped candidates train on their prefix tokens (off = they carry no loss).", panel=PG)
    max_new_tokens: int = field(512, help="Response cap in tokens (full OPD length; the paper uses 16384).", panel=PREFIX)
    loss: str = field("sampled", help="sampled (importance-sampled sampled-token reverse KL) | full (full-vocabulary reverse KL) | topk.", panel=LOSS)
    topk: int = field(16, help="k of --loss topk (tokens).", panel=LOSS)
    topk_support: str = field("student", help="--loss topk support: student | overlap | nonoverlap (Rethinking OPD §4.2).", panel=LOSS)
    loss_window: str | None = field(None, help="Only response positions A <= t < B carry gradient, as 'A:B' (None = off); rollouts run to at least B.", panel=LOSS)
    loss_tail: int = field(0, help="Only the last N tokens of each full-length rollout carry gradient (0 = off).", panel=LOSS)
    reward_weight: float = field(0.0, help="Task reward mixed into --loss sampled's advantage, verl's use_task_rewards: A_t = -k_t + w * r, r = 1 when the grader accepts the rollout's answer, else 0 (0 = off). A rollout cut at L < --max-new-tokens is continued, for grading only, to --max-new-tokens.", panel=LOSS)
    kl_bin: int = field(256, help="Position-bin width of the logged KL profile (tokens).", panel=RUN)
    batch_size: int = field(32, help="Rollouts (sequences) per optimizer step, over all processes: --batch-size / --rollouts-per-prompt prompts.", panel=OPTIM)
    rollouts_per_prompt: int = field(1, help="Rollouts sampled from each prompt per step (GRPO's group size G): each step draws --batch-size / G prompts and G rollouts of each (1 = one rollout per prompt; PG-OPD: --candidates).", panel=OPTIM)
    micro_batch_size: int = field(8, help="Rollouts per forward/backward per process; gradient accumulation = batch / (micro * processes).", panel=OPTIM)
    lr: float = field(5e-5, help="AdamW learning rate (constant after warmup).", panel=OPTIM)
    weight_decay: float = field(0.0, help="AdamW weight decay (0 = off).", panel=OPTIM)
    max_grad_norm: float = field(1.0, help="Gradient clipping norm (0 = off).", panel=OPTIM)
    steps: int = field(60, help="Optimizer steps.", panel=OPTIM)
    warmup: int = field(0, help="Linear warmup steps (0 = off).", panel=OPTIM)
    seed: int = field(0, help="Seed of data order, sampling and initialisation.", panel=OPTIM)
    lora: bool = field(False, help="Train a LoRA adapter (peft, the lora extra) instead of every student weight: checkpoints and final/ hold the merged weights (what opd eval loads) and the adapter in adapter/; vLLM gets the merged weights (off = full fine-tuning).", panel=LORA)
    lora_r: int = field(16, help="--lora: rank r of each adapter.", panel=LORA)
    lora_alpha: float = field(32.0, help="--lora: alpha; the adapter adds B A x * alpha / r.", panel=LORA)
    lora_dropout: float = field(0.0, help="--lora: dropout on the adapter's input in the training forward, never in rollouts (0 = off).", panel=LORA)
    lora_target_modules: list[str] = field(["all-linear"], help="--lora: modules that get an adapter, names or name suffixes (repeat or comma-separate); all-linear = every linear layer but the LM head, whose weight opd's losses read directly.", panel=LORA)
    save_every: int = field(10, help="Checkpoint every N optimizer steps (0 = only the final model).", panel=RUN)
    optimizer_states: str = field("all", help="Optimizer states kept in checkpoints: all | last (the newest checkpoint's only, all a resume reads; older checkpoints keep their weights for evaluation, at about a third of the size under Adam).", panel=RUN)
    backend: str = field("hf", help="Rollouts: hf (transformers generate) | vllm (the vllm extra on a GPU, make install-vllm on a CPU).", panel=ROLLOUTS)
    vllm_mode: str = field("colocate", help="--backend vllm: colocate (an engine inside each training process) | server (a `vllm serve` of the student, see --vllm-host).", panel=ROLLOUTS)
    vllm_host: str = field("127.0.0.1", help="--vllm-mode server: host of the student's vLLM server.", panel=ROLLOUTS)
    vllm_port: int = field(8000, help="--vllm-mode server: port of the student's vLLM server.", panel=ROLLOUTS)
    vllm_timeout: float = field(240.0, help="Seconds to wait for a vLLM server (student or --teacher-server) to answer before giving up.", panel=ROLLOUTS)
    vllm_weight_sync: str = field("auto", help="--vllm-mode server: how the student's weights reach the server after each step: nccl (TRL's transfer, CUDA) | disk (safetensors in the run folder, reloaded by the server) | auto (nccl on CUDA, disk otherwise).", panel=ROLLOUTS)
    vllm_memory: float = field(0.3, help="--vllm-mode colocate: share of the GPU's memory the engine reserves, in (0, 1) (on a CPU the KV cache is VLLM_CPU_KVCACHE_SPACE GiB, default 1).", panel=ROLLOUTS)
    async_rollouts: bool = field(False, help="--async: rollouts sampled from the student's vLLM server (--backend vllm --vllm-mode server) by a background worker while the trainer trains on earlier ones (TRL's AsyncDistillationTrainer, docs/async.md); a rollout's tokens are weighted by pi_theta / pi_behaviour (off = each step samples, then trains).", panel=ROLLOUTS)
    max_staleness: int = field(1, help="--async: rollouts sampled more than N weight versions ago are dropped (0 = only the current weights').", panel=ROLLOUTS)
    is_cap: float = field(0.0, help="Truncate each token's importance weight pi_theta / pi_behaviour at C (truncated IS; 0 = off, untruncated as sync opd).", panel=ROLLOUTS)
    vllm_sleep: bool = field(False, help="--vllm-mode colocate: put the engine to sleep (weights and KV cache offloaded) between rollouts (GPU only).", panel=ROLLOUTS)
    vllm_tensor_parallel: int = field(1, help="--vllm-mode colocate: tensor-parallel size of each engine (must divide the processes).", panel=ROLLOUTS)
    teacher_server: list[str] | None = field(None, help="A `vllm serve` of the teacher, as URL (e.g. http://127.0.0.1:8001) or NAME=URL; repeat with names for several teachers, routed per prompt by --teacher-column: the teacher's log-probs come from it instead of a local forward (--loss sampled only; none = the local teacher).", panel=SERVED)
    teacher_column: str | None = field(None, help="Column of the prompts (a --data column, or a field of the prompt source) naming each prompt's --teacher-server; needed with several (None = one teacher scores every prompt).", panel=SERVED)
    teacher_topk: int = field(16, help="--teacher-server: top-k log-probs asked for per position (the overlap metrics' k; at most the server's --max-logprobs).", panel=SERVED)
    dtype: str = field("auto", help="auto (bfloat16 on a GPU that has it, float32 otherwise) | float32 | bfloat16 | float16: bfloat16/float16 train fp32 master weights under autocast; the frozen teacher is loaded in that dtype.", panel=DEVICE)
    pure_dtype: bool = field(False, help="With --dtype bfloat16/float16: keep the student's weights in that dtype too (no fp32 master copy; off = mixed precision).", panel=DEVICE)
    device: str = field("auto", help="auto | cpu | cuda (accelerate launch picks the device per process).", panel=DEVICE)
    template: str = field("auto", help="Prompt template: auto | chat | plain | teacher.", panel=MODELS)
    think: bool = field(True, help="Append <think> to the prompt (paper §3).", panel=MODELS)
    chunk: int = field(256, help="Response positions per logits chunk (bounds (micro-batch, chunk, V) memory).", panel=DEVICE)
    metrics_every: int = field(5, help="Overlap metrics (full-vocabulary top-k) on the first, every N-th and the last step (0 = never; entropies and KL every step).", panel=RUN)
    ignore_eos: bool = field(False, help="Never stop a rollout at EOS: fixed-length rollouts, for benchmarks (off = stop at EOS).", panel=ROLLOUTS)
    attn_coef: float = field(12.0, help="Attention coefficient c of the FLOPs formula (12 = verl <= 0.7, 6 after).", panel=RUN)
    report_to: list[str] = field([], help="Experiment trackers besides metrics.jsonl: tensorboard, wandb, trackio (repeat or comma-separate; none = off). TensorBoard writes into the run folder's tensorboard/.", panel=RUN)
    push_to_hub: bool = field(False, help="Upload final/ to the Hub at the end (needs --hub-model-id).", panel=RUN)
    hub_model_id: str | None = field(None, help="Hub repository for --push-to-hub, owner/name.", panel=RUN)
    output_dir: str | None = field(None, help="Run folder (None = runs/train-<name>).", panel=RUN)
    if_exists: str = field("raise", help="Existing run folder: raise | resume | overwrite.", panel=RUN)

    def __post_init__(self) -> None:
        from opd_cli.toy.world import check_toy_student

        self.prefix = str(self.prefix).strip().lower()
        check(self.prefix == "full" or self.prefix.lstrip("-").isdigit(), f"--prefix must be a token count or 'full', got {self.prefix!r}")
        check(self.prefix == "full" or int(self.prefix) > 0, f"--prefix must be > 0 tokens (or 'full'), got {self.prefix}")
        check(self.max_new_tokens > 0, f"--max-new-tokens must be > 0, got {self.max_new_tokens}")
        check(self.schedule in SCHEDULES, f"unknown --schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        check(self.prefix_start > 0 and self.prefix_delta >= 0, "--prefix-start must be > 0 and --prefix-delta >= 0")
        check(self.adaptive_signal in ADAPTIVE_SIGNALS, f"unknown --adaptive-signal {self.adaptive_signal!r}: use one of {', '.join(ADAPTIVE_SIGNALS)}")
        check(0 < self.adaptive_ratio < 1, f"--adaptive-ratio must be in (0, 1), got {self.adaptive_ratio}")
        check(self.adaptive_floor >= 0, f"--adaptive-floor must be >= 0 nats, got {self.adaptive_floor}")
        check(self.adaptive_patience >= 0, f"--adaptive-patience must be >= 0 (0 = off), got {self.adaptive_patience}")
        check(self.schedule != "adaptive" or self.prefix_delta > 0, "--schedule adaptive needs --prefix-delta > 0")
        self._check_pg_opd()
        check(self.loss in LOSSES, f"unknown --loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        check(self.topk > 0, f"--topk must be > 0, got {self.topk}")
        check(self.topk_support in TOPK_SUPPORTS, f"unknown --topk-support {self.topk_support!r}: use one of {', '.join(TOPK_SUPPORTS)}")
        if self.loss_window is not None:
            a, b = self.window
            check(0 <= a < b, f"--loss-window A:B needs 0 <= A < B, got {self.loss_window}")
            check(b <= self.max_new_tokens, f"--loss-window end {b} is past --max-new-tokens {self.max_new_tokens}")
        check(self.loss_tail >= 0, f"--loss-tail must be >= 0 (0 = off), got {self.loss_tail}")
        check(self.loss_tail <= self.max_new_tokens, f"--loss-tail {self.loss_tail} is larger than --max-new-tokens {self.max_new_tokens}")
        check(not (self.loss_tail and self.loss_window), "use either --loss-window or --loss-tail, not both")
        check(not (self.loss_tail and (self.prefix != "full" or self.schedule != "none")), "--loss-tail trains the end of full-length rollouts: use it with --prefix full and no schedule")
        self._check_reward()
        check(self.kl_bin > 0, f"--kl-bin must be > 0 tokens, got {self.kl_bin}")
        check(self.batch_size > 0 and self.micro_batch_size > 0, "--batch-size and --micro-batch-size must be > 0")
        check(self.batch_size % self.micro_batch_size == 0, f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size {self.micro_batch_size}")
        self._check_rollouts_per_prompt()
        self._check_lora()
        check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        from opd_cli.core.tracking import check_hub, parse_report_to

        self.report_to = parse_report_to(self.report_to)
        check_hub(self.push_to_hub, self.hub_model_id)
        check(self.steps > 0, f"--steps must be > 0, got {self.steps}")
        check(self.warmup >= 0 and self.save_every >= 0 and self.limit >= 0, "--warmup, --save-every and --limit must be >= 0")
        check(self.chunk > 0, f"--chunk must be > 0, got {self.chunk}")
        from opd_cli.core.runs import OPTIMIZER_STATES

        check(self.optimizer_states in OPTIMIZER_STATES, f"unknown --optimizer-states {self.optimizer_states!r}: use last or all")
        check(self.metrics_every >= 0, f"--metrics-every must be >= 0 (0 = never), got {self.metrics_every}")
        check(not self.pure_dtype or self.dtype in ("bfloat16", "float16"), "--pure-dtype needs --dtype bfloat16 or float16")
        check_backend(self.backend)
        self._check_vllm()
        self._check_async()
        check((self.student is None) == (self.teacher is None), "pass both --student and --teacher, or neither (the toy world)")
        check_toy_student(self.toy_student)
        check(self.student is None or self.toy_student == "large", "--toy-student small picks a toy-world student: it cannot be combined with --student")
        check(not (self.prompts and self.data), "pass either --prompts or --data, not both")

    def _check_vllm(self) -> None:
        from opd_cli.core.generation import WEIGHT_SYNCS

        check(self.vllm_mode in VLLM_MODES, f"unknown --vllm-mode {self.vllm_mode!r}: use one of {', '.join(VLLM_MODES)}")
        check(self.vllm_weight_sync in WEIGHT_SYNCS, f"unknown --vllm-weight-sync {self.vllm_weight_sync!r}: use one of {', '.join(WEIGHT_SYNCS)}")
        check(0 < self.vllm_memory < 1, f"--vllm-memory must be in (0, 1), got {self.vllm_memory}")
        check(self.vllm_timeout > 0, f"--vllm-timeout must be > 0 seconds, got {self.vllm_timeout}")
        check(self.vllm_tensor_parallel >= 1, f"--vllm-tensor-parallel must be >= 1, got {self.vllm_tensor_parallel}")
        check(0 < self.vllm_port < 65536, f"--vllm-port must be a TCP port, got {self.vllm_port}")
        if isinstance(self.teacher_server, str):  # a config built in code may pass one URL
            self.teacher_server = [self.teacher_server]
        self.teacher_server = self.teacher_server or None  # none: None, as runs saved before several teachers
        teachers = self.teachers  # parsed (and checked) here, before anything runs
        if not teachers:
            check(self.teacher_column is None, "--teacher-column routes prompts among --teacher-server teachers: give them, or drop --teacher-column")
            return
        check(len(teachers) == 1 or self.teacher_column is not None,
              f"{len(teachers)} --teacher-server teachers ({', '.join(teachers)}) need --teacher-column, the prompt column naming each prompt's teacher")
        check(self.loss == "sampled", f"--loss {self.loss} needs the teacher's whole distribution, which a --teacher-server does not send: use --loss sampled or a local --teacher")
        check(self.rollout == "standard", "--rollout pg-opd probes the teacher's hidden states: use a local --teacher with it")
        check(self.teacher_topk >= 1, f"--teacher-topk must be >= 1, got {self.teacher_topk}")
        check(generation.vllm_available(), generation.TEACHER_SERVER_NEEDS_VLLM)

    def _check_async(self) -> None:
        check(self.max_staleness >= 0, f"--max-staleness must be >= 0 weight versions, got {self.max_staleness}")
        check(self.is_cap >= 0, f"--is-cap must be >= 0 (0 = off), got {self.is_cap}")
        if not self.async_rollouts:
            return
        check(self.backend == "vllm" and self.vllm_mode == "server",
              "--async samples from the student's vLLM server: add --backend vllm --vllm-mode server (docs/async.md)")
        unsupported = [flag for flag, on in (("--loss full/topk", self.loss != "sampled"), ("--rollout pg-opd", self.rollout != "standard")) if on]
        check(not unsupported, f"--async does not support {', '.join(unsupported)} yet (docs/async.md): drop it or train without --async")

    def _check_reward(self) -> None:
        check(self.reward_weight >= 0, f"--reward-weight must be >= 0 (0 = off), got {self.reward_weight}")
        if not self.reward_weight:
            return
        check(self.loss == "sampled", f"--reward-weight mixes the task reward into the advantage of --loss sampled; --loss {self.loss} has no advantage to mix it into")
        check(self.rollout == "standard", "--reward-weight grades whole rollouts, and --rollout pg-opd stops candidates before their answer: use --rollout standard")

    def _check_lora(self) -> None:
        if not self.lora:
            return
        import importlib.util

        check(importlib.util.find_spec("peft") is not None, "--lora needs peft: pip install 'opd-cli[lora]' (or pip install 'peft>=0.13')")
        check(self.lora_r >= 1, f"--lora-r must be at least 1, got {self.lora_r}")
        check(self.lora_alpha > 0, f"--lora-alpha must be > 0, got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        check(bool(self.lora_target_modules), "--lora-target-modules is empty: name the modules, or all-linear")
        check("lm_head" not in self.lora_target_modules,
              "--lora-target-modules lm_head: opd's losses read the LM head's weight directly, so an adapter on it would never "
              "train; leave it out (all-linear already does)")

    def _check_rollouts_per_prompt(self) -> None:
        G = self.rollouts_per_prompt
        check(G >= 1, f"--rollouts-per-prompt must be at least 1, got {G}")
        check(self.rollout != "pg-opd" or G in (1, self.candidates),
              f"--rollout pg-opd samples --candidates {self.candidates} rollouts of each prompt: drop --rollouts-per-prompt {G} (or set --candidates {G})")
        check(self.batch_size % G == 0, f"--batch-size {self.batch_size} (rollouts per step) must be a multiple of --rollouts-per-prompt {G}: "
                                        f"each step samples {G} rollouts of --batch-size / {G} prompts")

    def _check_pg_opd(self) -> None:
        from opd_cli.train.pg_opd import PG_SELECT, ROLLOUTS

        check(self.rollout in ROLLOUTS, f"unknown --rollout {self.rollout!r}: use one of {', '.join(ROLLOUTS)}")
        if self.rollout != "pg-opd":
            return
        check(self.candidates >= 1, f"--candidates must be at least 1, got {self.candidates}")
        check(self.batch_size % self.candidates == 0, f"--batch-size {self.batch_size} must be a multiple of --candidates {self.candidates}")
        check(0 < self.pg_prefix < self.max_new_tokens, f"--pg-prefix must be in [1, --max-new-tokens {self.max_new_tokens}), got {self.pg_prefix}")
        check(0 < self.probe_window <= self.pg_prefix, f"--probe-window {self.probe_window} must be in [1, --pg-prefix {self.pg_prefix}]")
        check(self.probe_topk > 0, f"--probe-topk must be > 0, got {self.probe_topk}")
        check(0 <= self.keep_per_prompt <= self.candidates, f"--keep-per-prompt must be in [0, --candidates {self.candidates}], got {self.keep_per_prompt}")
        check(0 < self.keep_global <= 1, f"--keep-global must be in (0, 1], got {self.keep_global}")
        check(self.pg_select in PG_SELECT, f"unknown --pg-select {self.pg_select!r}: use one of {', '.join(PG_SELECT)}")
        check(self.prefix == "full" and self.schedule == "none" and not self.loss_window and not self.loss_tail,
              "--rollout pg-opd trains whole rollouts: use it with --prefix full, no --schedule, --loss-window or --loss-tail")
        check(self.pg_select != "weight" or self.loss != "full", "--pg-select weight needs --loss sampled or topk (the fused full loss takes no weights)")

    @property
    def group_size(self) -> int:
        """Rollouts of each prompt per step: PG-OPD's --candidates, else --rollouts-per-prompt."""
        return self.candidates if self.rollout == "pg-opd" else self.rollouts_per_prompt

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.group_size

    @property
    def teachers(self) -> dict[str, str]:
        """--teacher-server as {name: URL}, in the order given (:func:`parse_teacher_servers`)."""
        return parse_teacher_servers(self.teacher_server)

    @property
    def window(self) -> tuple[int, int]:
        try:
            a, b = (int(x) for x in str(self.loss_window).split(":"))
        except ValueError:
            raise OpdError(f"--loss-window must look like A:B (token positions), got {self.loss_window!r}") from None
        return a, b

    @property
    def prefix_tokens(self) -> int | None:
        return None if self.prefix == "full" else int(self.prefix)

    def prefix_len(self, step: int, adaptive: list[int] | None = None) -> int:
        """L for the rollouts of optimizer step ``step`` (0-based). The adaptive schedule's L depends on the run's
        logged KL: ``adaptive`` = its L per step so far (:func:`opd_cli.core.maths.adaptive_prefix_lengths`)."""
        from opd_cli.core.maths import prefix_length

        if self.schedule == "adaptive":
            return adaptive[min(step, len(adaptive) - 1)] if adaptive else min(self.prefix_start, self.max_new_tokens)
        return prefix_length(step, self.prefix_tokens, self.max_new_tokens, self.schedule, self.prefix_start, self.prefix_delta)

    def gen_len(self, step: int, adaptive: list[int] | None = None) -> int:
        """Tokens to generate at ``step``: L, but at least the loss window's end (window ablation)."""
        L = self.prefix_len(step, adaptive)
        return max(L, self.window[1]) if self.loss_window else L

    def max_gen_len(self) -> int:
        """The longest rollout of the run (the adaptive schedule may reach --max-new-tokens)."""
        if self.schedule == "adaptive":
            return self.max_new_tokens
        return max(self.gen_len(s) for s in range(self.steps))

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / f"train-{self.name}"


TEACHER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # names appear in metric keys: kl/<name>


def parse_teacher_servers(specs: list[str] | str | None) -> dict[str, str]:
    """``--teacher-server`` values, each ``URL`` or ``NAME=URL``, as {name: URL} in the order given. A bare URL is
    named ``default``; several teachers must each have a name, and names are unique. One-line errors otherwise."""
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, str] = {}
    specs = [str(x).strip() for x in specs or []]
    for spec in specs:
        bare = spec.startswith(("http://", "https://"))
        check(not bare or len(specs) == 1, "several --teacher-server teachers: name each one, NAME=URL (a bare URL is only for a single teacher)")
        name, url = ("default", spec) if bare else (spec.partition("=")[0], spec.partition("=")[2])
        check(url.startswith(("http://", "https://")), f"--teacher-server must be a URL like http://127.0.0.1:8001 or NAME=URL, got {spec!r}")
        check(TEACHER_NAME.fullmatch(name) is not None, f"--teacher-server {spec!r}: a teacher's name is letters, digits, '_', '.' or '-', got {name!r}")
        check(name not in out, f"--teacher-server names the teacher {name!r} twice: give each teacher its own name")
        out[name] = url.rstrip("/")
    return out
