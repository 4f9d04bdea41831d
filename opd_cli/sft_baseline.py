"""`opd sft-baseline`: off-policy SFT on teacher responses with TRL's ``SFTTrainer`` (paper Tables 1-2, Fig. 6).

The student imitates fixed teacher responses (prompt-completion format, loss on the completion only). The prompts
are built by :func:`opd_cli.core.prompts.build_prompt`, exactly as ``opd train`` builds them, so an SFT checkpoint is a
valid ``opd train --student`` (off-policy cold start, Rethinking OPD §5.1). ``--max-length`` caps prompt +
completion in tokens: 2048 is the paper's prefix SFT (Fig. 6). FLOPs: the paper's training FLOPs ``x`` per sample
(appendix B, "FLOP Calculation Details"; no rollouts to count).

Run folder (docs/run-format.md): ``config.yaml``, ``metrics.jsonl`` (one line per optimizer step),
``checkpoints/step_XXXXXX/`` (model + tokenizer + trainer state), and, with ``--generate-with-teacher``,
``teacher_responses.jsonl`` (the generated data, reused when the run is resumed).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.core.log import logger
from opd_cli.core.runs import IF_EXISTS
from opd_cli.core.tracking import TRACKING_FIELDS, point_tensorboard, push_folder, tracker_scalars
from opd_cli.toy.build import toy_model_paths
from opd_cli.toy.world import check_toy_student

TEACHER_CACHE = "teacher_responses.jsonl"
TRAINER_TMP = ".trainer"  # TRL writes checkpoint-N here; each is then committed as checkpoints/step_N
SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup")
SAMPLES = ("first", "random")


@dataclass
class SftConfig:
    """Off-policy SFT of the student on teacher responses."""

    command = "sft-baseline"

    name: str = field("sft", help="Run name (the default output folder is runs/sft-baseline-<name>).")
    student: str | None = field(None, help="Student to fine-tune: hub id or local folder (None = the toy world's student).")
    toy_student: str = field("large", help="Without --student: the toy world's large (student/) or small (student-small/) student.")
    teacher: str | None = field(
        None, help="Teacher for --generate-with-teacher: hub id or folder (None = the toy world's teacher; unused otherwise)."
    )
    prompts: str | None = field(
        None,
        help="Registered problem source with teacher responses: toy-train, openthoughts3 "
        "(None = toy-train on the toy world, openthoughts3 otherwise).",
    )
    data: str | None = field(None, help="Local jsonl/parquet/csv file of problems instead of --prompts (None = off).")
    question_column: str | None = field(None, help="Column of --data holding the question (None = guess).")
    response_column: str = field("response", help="Column of --data files holding the teacher response.")
    limit: int = field(0, help="Use N problems of the source (0 = all): the first N, or N at random with --sample random.")
    sample: str = field("first", help="Which --limit problems: first (the source's first N rows) | random (N rows drawn "
                                      "at random without replacement, fixed by --sample-seed).")
    sample_seed: int = field(0, help="--sample random: seed of the draw (apart from --seed, so the data can stay fixed).")
    generate_with_teacher: bool = field(
        False, help="Have the teacher write the responses (cached in the run folder) instead of reading them."
    )
    teacher_samples: int = field(1, help="Teacher responses per problem with --generate-with-teacher.")
    teacher_max_new_tokens: int = field(16384, help="Teacher response cap in tokens with --generate-with-teacher.")
    teacher_batch_size: int = field(8, help="Sequences per teacher generate call.")
    temperature: float = field(1.0, help="Teacher sampling temperature.")
    top_p: float = field(1.0, help="Teacher nucleus sampling (1.0 = off).")
    correct_only: bool = field(False, help="Keep only teacher responses graded correct (rejection sampling; off = keep all).")
    max_length: int = field(
        0, help="Cap on prompt + completion tokens; the completion is cut (prefix SFT: 2048 in the paper; 0 = off)."
    )
    steps: int = field(300, help="Optimizer steps (paper: 300 and 1500).")
    batch_size: int = field(128, help="Sequences per optimizer step (paper: 128).")
    micro_batch_size: int = field(0, help="Sequences per forward/backward; gradients accumulate to --batch-size (0 = all at once).")
    lr: float = field(1e-4, help="AdamW learning rate (paper: 1e-4).")
    lr_scheduler: str = field("constant", help=f"Learning-rate schedule: {' | '.join(SCHEDULERS)}.")
    warmup_steps: int = field(0, help="Linear warm-up steps (0 = off).")
    weight_decay: float = field(0.0, help="AdamW weight decay (0 = off).")
    max_grad_norm: float = field(1.0, help="Gradient clipping norm (0 = off).")
    gradient_checkpointing: bool = field(False, help="Recompute activations in backward to save memory.")
    save_every: int = field(100, help="Write a checkpoint every N steps (0 = only at the last step).")
    optimizer_states: str = field("all", help="Optimizer states kept in checkpoints: all | last (the newest checkpoint's only, all a resume reads; older checkpoints keep their weights for evaluation, at about a third of the size under Adam).")
    save_only_model: bool = field(False, help="Checkpoints without optimizer state: smaller, but --if-exists resume restarts the optimizer.")
    template: str = field("auto", help="Prompt template: auto | chat | plain (as in opd train).")
    think: bool = field(True, help="Append <think> to the prompt (as in opd train).")
    attn_coef: int = field(12, help="FLOPs attention coefficient c: 12 (verl <= 0.7.0, the paper) or 6.")
    dtype: str = field("auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16.")
    device: str = field("auto", help="auto | cpu | cuda.")
    seed: int = field(0, help="Seed of data order, initialisation of the trainer and teacher sampling.")
    report_to: list[str] = field([], help="Experiment trackers besides metrics.jsonl: tensorboard, wandb, trackio (repeat or comma-separate; none = off). TensorBoard writes into the run folder's tensorboard/.")
    push_to_hub: bool = field(False, help="Upload the last checkpoint's model to the Hub at the end (needs --hub-model-id).")
    hub_model_id: str | None = field(None, help="Hub repository for --push-to-hub, owner/name.")
    output_dir: str | None = field(None, help="Run folder (None = runs/sft-baseline-<name>).")
    if_exists: str = field("raise", help="Existing run folder: raise | resume | overwrite.")

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        from opd_cli.core.tracking import check_hub, parse_report_to

        self.report_to = parse_report_to(self.report_to)
        check_hub(self.push_to_hub, self.hub_model_id)
        check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        check(self.micro_batch_size >= 0, f"--micro-batch-size must be 0 (off) or positive, got {self.micro_batch_size}")
        check(
            self.micro_batch_size == 0 or self.batch_size % self.micro_batch_size == 0,
            f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size {self.micro_batch_size}",
        )
        check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        check(self.lr_scheduler in SCHEDULERS, f"--lr-scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}")
        check(self.warmup_steps >= 0, f"--warmup-steps must be 0 (off) or positive, got {self.warmup_steps}")
        check(self.max_length >= 0, f"--max-length must be 0 (off) or a positive number of tokens, got {self.max_length}")
        check(self.save_every >= 0, f"--save-every must be 0 (last step only) or positive, got {self.save_every}")
        from opd_cli.core.runs import OPTIMIZER_STATES

        check(self.optimizer_states in OPTIMIZER_STATES, f"unknown --optimizer-states {self.optimizer_states!r}: use last or all")
        check(self.limit >= 0, f"--limit must be 0 (all) or positive, got {self.limit}")
        check(self.sample in SAMPLES, f"--sample must be one of {', '.join(SAMPLES)}, got {self.sample!r}")
        check(self.sample == "first" or self.limit > 0, "--sample random draws --limit problems: pass --limit N (N > 0)")
        check(self.teacher_samples >= 1, f"--teacher-samples must be at least 1, got {self.teacher_samples}")
        check(self.teacher_max_new_tokens >= 1, f"--teacher-max-new-tokens must be positive, got {self.teacher_max_new_tokens}")
        check(self.teacher_batch_size >= 1, f"--teacher-batch-size must be positive, got {self.teacher_batch_size}")
        check(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        check(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        check(self.attn_coef in (12, 6), f"--attn-coef must be 12 or 6, got {self.attn_coef}")
        check(self.if_exists in IF_EXISTS, f"--if-exists must be one of {', '.join(IF_EXISTS)}, got {self.if_exists!r}")
        check(not (self.prompts and self.data), "pass either --prompts (a registered source) or --data (a local file), not both")
        check_toy_student(self.toy_student)
        check(self.student is None or self.toy_student == "large", "--toy-student small picks a toy-world student: it cannot be combined with --student")

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size


# ------------------------------------------------------------------------------------------- data
def strip_think(response: str) -> str:
    """Drop a leading ``<think>`` from a teacher response: the prompt already ends with it (build_prompt)."""
    from opd_cli.core.prompts import THINK_OPEN

    text = response.lstrip()
    return text[len(THINK_OPEN) :].lstrip("\n") if text.startswith(THINK_OPEN) else response


def _response_of(problem: Any, column: str) -> str | None:
    meta = getattr(problem, "meta", None) or {}
    for key in (column, "response", "solution"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _source(cfg: SftConfig) -> str:
    return f"--data {cfg.data}" if cfg.data else f"--prompts {cfg.prompts or 'default'}"


def sft_problems(cfg: SftConfig) -> list[Any]:
    """The problems to fine-tune on: all of the source, its first --limit, or --limit drawn at random (the paper
    samples its 192k SFT examples at random; a dataset's first rows are only what its file order puts first)."""
    from opd_cli.data import load_problems, random_sample

    source = cfg.prompts or ("toy-train" if cfg.student is None else "openthoughts3")
    if cfg.sample == "random":
        return random_sample(source, cfg.data, cfg.limit, cfg.sample_seed, source_seed=cfg.seed,
                             question_column=cfg.question_column)
    return load_problems(source, cfg.data, cfg.limit, cfg.seed, question_column=cfg.question_column)


def dataset_responses(cfg: SftConfig, problems: list[Any]) -> list[tuple[Any, str]]:
    """(problem, teacher response) pairs read from the data set itself."""
    pairs = [(p, r) for p in problems if (r := _response_of(p, cfg.response_column)) is not None]
    if not pairs:
        raise OpdError(
            f"{_source(cfg)} has no teacher responses (no {cfg.response_column!r} field): use a data set that has "
            "them (toy-train, openthoughts3) or pass --generate-with-teacher"
        )
    return pairs


def teacher_responses(cfg: SftConfig, problems: list[Any], run_dir: Path, teacher_path: str) -> list[tuple[Any, str]]:
    """(problem, response) pairs the teacher writes; cached in ``run_dir/teacher_responses.jsonl`` and reused."""
    cache = run_dir / TEACHER_CACHE
    by_id = {str(p.id): p for p in problems}
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
        if {r["problem_id"] for r in rows} == set(by_id) and len(rows) == len(by_id) * cfg.teacher_samples:
            logger.info(f"reusing {len(rows)} cached teacher responses from {cache}")
            return [(by_id[r["problem_id"]], r["response"]) for r in rows]

    from opd_cli.core.generation import sample
    from opd_cli.core.models import load_model, load_tokenizer
    from opd_cli.core.prompts import build_prompt

    tok = load_tokenizer(teacher_path, what="teacher")
    model = load_model(teacher_path, dtype=cfg.dtype, device=cfg.device, what="teacher")
    prompts = [build_prompt(tok, p.question, template=cfg.template, think=cfg.think) for p in problems]
    logger.info(f"teacher writes {cfg.teacher_samples} response(s) to each of {len(prompts)} problems")
    outs = sample(
        model, tok, prompts, n=cfg.teacher_samples, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.teacher_max_new_tokens, batch_size=cfg.teacher_batch_size, seed=cfg.seed,
    )
    rows = [
        {"problem_id": str(p.id), "sample": j, "response": s.text, "length": s.length, "truncated": s.truncated}
        for p, samples in zip(problems, outs, strict=True)
        for j, s in enumerate(samples)
    ]
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(cache)
    del model
    return [(by_id[r["problem_id"]], r["response"]) for r in rows]


def keep_correct(pairs: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    from opd_cli.core.grading import grade

    return [(p, r) for p, r in pairs if grade(p, r)[0]]


def build_examples(tokenizer: Any, pairs: list[tuple[Any, str]], template: str, think: bool) -> list[dict[str, str]]:
    """TRL prompt-completion records: the OPD prompt text and the teacher's response (its leading <think> dropped)."""
    from opd_cli.core.prompts import build_prompt

    return [
        {"prompt": build_prompt(tokenizer, p.question, template=template, think=think), "completion": strip_think(r)}
        for p, r in pairs
    ]


# ---------------------------------------------------------------------------------------- metrics
def sample_flops(shape: Any, seq_tokens: int, seq_tokens_sq: int, attn_coef: int) -> float:
    """SFT FLOPs of one step: the paper's ``F`` (appendix B) of the student on the trained sequences (``x`` per sample)."""
    from opd_cli.core.flops_formula import flops_from_sums

    return float(flops_from_sums(shape, seq_tokens, seq_tokens_sq, attn_coef))


def _make_callback(run: Any, model: Any, shape: Any, cfg: SftConfig, start: dict[str, float]) -> Any:
    """A TrainerCallback that logs run-format metrics per optimizer step and commits TRL's checkpoints.

    Sequence lengths come from a forward pre-hook on the model (the attention mask of every training micro-batch),
    so they are the lengths actually trained, after truncation and without padding.
    """
    import torch
    from transformers import TrainerCallback

    class SftMetrics(TrainerCallback):
        def __init__(self) -> None:
            self.lens: list[int] = []
            self.flops_total = start.get("flops_total", 0.0)
            self.wall0 = time.time() - start.get("wall_time", 0.0)
            model.register_forward_pre_hook(self._record, with_kwargs=True)

        def _record(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            mask = kwargs.get("attention_mask")
            if module.training and torch.is_grad_enabled() and mask is not None:
                self.lens.extend(int(n) for n in mask.sum(-1).tolist())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            lens = self.lens
            if args.world_size > 1:  # every process trained its own micro-batches: count them all
                from accelerate.utils import gather_object

                lens = gather_object(lens)
            self.lens = []
            if not state.is_world_process_zero or not lens:
                return
            s, s2 = sum(lens), sum(n * n for n in lens)
            flops_step = sample_flops(shape, s, s2, cfg.attn_coef)
            self.flops_total += flops_step
            rec = {
                "step": state.global_step,
                "loss": float(logs["loss"]),
                "lr": float(logs.get("learning_rate", cfg.lr)),
                "grad_norm": logs.get("grad_norm"),
                "sequences": len(lens),
                "seq_tokens": s,
                "seq_tokens_sq": s2,
                "seq_len_max": max(lens),
                "flops_step": flops_step,
                "flops_total": self.flops_total,
                "wall_time": time.time() - self.wall0,
            }
            run.log(rec)
            logs.update(tracker_scalars(rec))  # the trackers' callbacks run after this one
            logger.info(f"step {state.global_step}/{cfg.steps}  loss {float(logs['loss']):.4f}  tokens {s}  flops {self.flops_total:.3g}")

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and src.is_dir():
                logger.info(f"checkpoint step {state.global_step} -> {run.commit(src, state.global_step, cfg.optimizer_states)}")

    return SftMetrics()


# -------------------------------------------------------------------------------------------- run
def run_sft(cfg: SftConfig) -> Path:
    """Fine-tune the student on teacher responses; returns the run folder."""
    from opd_cli.core.models import load_model, load_tokenizer, resolve_device
    from opd_cli.core.runs import open_run

    toy = cfg.student is None
    problems = sft_problems(cfg)  # before the toy paths are filled in: the default source depends on them
    if toy or (cfg.generate_with_teacher and not cfg.teacher):
        # Resolved paths go into config.yaml so `opd flops` and `opd train --student` can find the models.
        toy_student, toy_teacher = toy_model_paths(cfg.toy_student)  # large when --student is given: only the teacher is used
        cfg.student = cfg.student or toy_student
        if cfg.generate_with_teacher:
            cfg.teacher = cfg.teacher or toy_teacher
    out = Path(cfg.output_dir or f"runs/sft-baseline-{cfg.name}")
    cfg.output_dir = str(out)

    from opd_cli.core.flops_formula import ModelShape

    shape = ModelShape.from_source(cfg.student)  # fails early on a model the FLOPs formula cannot read
    # A finished run may be extended (--steps 1500 over 300) or saved more often; anything else must match.
    run = open_run(out, cfg.if_exists, cfg, compare_ignore=("steps", "save_every", "optimizer_states", *TRACKING_FIELDS))
    last = run.resume_point()
    resume_from, start = (last[1], last[2]) if last else (None, {})
    if last is not None:
        if last[0] >= cfg.steps:
            logger.info(f"{out} is complete ({last[0]} of {cfg.steps} steps): nothing to do")
            return out
        logger.info(f"resuming {out} from step {last[0]}")

    pairs = teacher_responses(cfg, problems, out, cfg.teacher) if cfg.generate_with_teacher else dataset_responses(cfg, problems)
    if cfg.correct_only:
        n = len(pairs)
        pairs = keep_correct(pairs)
        logger.info(f"--correct-only keeps {len(pairs)} of {n} teacher responses")
        check(len(pairs) > 0, "--correct-only left no teacher response: no response was graded correct")

    tok = load_tokenizer(cfg.student, what="student")
    examples = build_examples(tok, pairs, cfg.template, cfg.think)
    device = resolve_device(cfg.device)
    model = load_model(cfg.student, dtype=cfg.dtype, device=device, what="student")
    model.train()
    trainer = _build_trainer(cfg, model, tok, examples, out, device)
    if len(trainer.train_dataset) == 0:
        raise OpdError(f"no training example is left after --max-length {cfg.max_length}: every prompt fills it; raise --max-length")
    # first, so the trackers' callbacks after it see the metrics.jsonl names it adds to each log
    trainer.callback_handler.callbacks.insert(0, _make_callback(run, model, shape, cfg, start))
    point_tensorboard(trainer, out)
    logger.info(
        f"SFT {cfg.student} on {len(trainer.train_dataset)} teacher responses: {cfg.steps} steps x {cfg.batch_size} "
        f"sequences, lr {cfg.lr}, max length {cfg.max_length or 'off'}"
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    shutil.rmtree(out / TRAINER_TMP, ignore_errors=True)  # only TRL's model card is left there
    if cfg.push_to_hub:
        step, folder = run.last_checkpoint()
        logger.info(f"pushed {folder} to {push_folder(folder, cfg.hub_model_id, f'opd sft-baseline {cfg.name}: step {step}')}")
    return out


def _build_trainer(cfg: SftConfig, model: Any, tok: Any, examples: list[dict[str, str]], out: Path, device: str) -> Any:
    import logging

    import datasets
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from opd_cli.core.tracking import training_args

    procs = PartialState().num_processes
    check(
        cfg.batch_size % (cfg.micro * procs) == 0,
        f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch-size {cfg.micro} x {procs} processes",
    )
    args = SFTConfig(
        output_dir=str(out / TRAINER_TMP),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.micro,
        gradient_accumulation_steps=cfg.batch_size // (cfg.micro * procs),
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch",
        **({"activation_checkpointing": True} if cfg.gradient_checkpointing else {}),
        max_length=cfg.max_length or None,  # keep_start: the prompt stays whole, the completion is cut
        completion_only_loss=True,
        packing=False,
        save_strategy="steps",
        save_steps=cfg.save_every or cfg.steps,  # the last step is always saved (transformers' flow callback)
        save_only_model=cfg.save_only_model,
        logging_steps=1,
        logging_strategy="steps",
        **training_args(cfg.report_to, cfg.name),
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=device == "cpu",
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    # TRL tokenizes the dataset here, with progress bars and notes per column: quiet while it does, then the
    # libraries' logging is as it was
    trl_logger, levels = logging.getLogger("trl"), (hf_logging.get_verbosity(), logging.getLogger("trl").level)
    bars = (hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    trl_logger.setLevel(logging.ERROR)
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tok)
    finally:
        hf_logging.set_verbosity(levels[0])
        trl_logger.setLevel(levels[1])
        if bars[0]:
            hf_logging.enable_progress_bar()
        if bars[1]:
            datasets.enable_progress_bars()
    trainer.remove_callback(PrinterCallback)  # our callback prints one line per step
    return trainer
