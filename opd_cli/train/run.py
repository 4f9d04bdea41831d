"""`opd train`: prefix on-policy distillation on top of TRL's DistillationTrainer: the OPD loss of the prefix-OPD
paper §2.1 ("On-policy Distillation"), the prefix and its linear schedule of §3 ("Methodology").

This module holds the command, :func:`run_train` (its options, :class:`TrainConfig`, are in
:mod:`opd_cli.train.config`), which loads the prompts and models, opens or resumes the run folder, and runs the trainer of :mod:`opd_cli.train.trainer`
(the ``trl.DistillationTrainer`` subclass that generates, scores and trains the prefix).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from opd_cli.core.config import check
from opd_cli.core.log import logger
from opd_cli.core.runs import swap_in
from opd_cli.train.config import TrainConfig


# --------------------------------------------------------------------------------------------- run_train
def _flops_fn(student: str, teacher: str, attn_coef: float, lora: bool = False):
    """FLOPs of one step from its sequences' (sum s, sum s^2), plus PG-OPD's probe forwards' (sum, sum^2), plus the
    generation (x/3) of --reward-weight's continuations, from the (sum, sum^2) differences of their sequences; a
    --lora student's update without the base weights' gradients (:func:`opd_flops`)."""
    from opd_cli.core.flops_formula import ModelShape, flops_from_sums, opd_flops, probe_flops

    s, t = ModelShape.from_source(student), ModelShape.from_source(teacher)

    def step_flops(sum_s, sum_s2, probe_s=0.0, probe_s2=0.0, grade_s=0.0, grade_s2=0.0):
        return (opd_flops(s, t, sum_s, sum_s2, attn_coef, lora) + probe_flops(s, t, probe_s, probe_s2, attn_coef)
                + flops_from_sums(s, grade_s, grade_s2, attn_coef) / 3)

    return step_flops


def _problems(cfg: TrainConfig, toy: bool) -> list[Any]:
    from opd_cli import data

    # a 1.2 M-row source is sampled down to the prompts the run can use, never rendered whole
    source = cfg.prompts or ("toy-train" if toy else "openthoughts3")
    problems = data.load_problems(source, cfg.data, cfg.limit, cfg.seed, needed=cfg.steps * cfg.prompts_per_step,
                                  question_column=cfg.question_column)
    if cfg.reward_weight:  # the task reward grades every rollout against its problem's gold answer
        missing = sum(not str(p.answer).strip() for p in problems)
        check(not missing, f"--reward-weight grades against gold answers, and {missing} of the {len(problems)} prompts of "
                           f"{cfg.data or source} have none: give every prompt an answer or drop --reward-weight")
    return problems


def _teacher_rows(cfg: TrainConfig, problems: list[Any]) -> list[int] | None:
    """Each prompt's teacher, an index into --teacher-server's names, from its --teacher-column (None without one).
    A prompt without the column, or naming no --teacher-server, is one line before anything runs."""
    if cfg.teacher_column is None:
        return None
    names, col = list(cfg.teachers), cfg.teacher_column
    where = cfg.data or cfg.prompts
    rows = []
    for i, p in enumerate(problems):
        check(col in p.meta, f"prompt {i + 1} ({p.id}) of {where} has no column {col!r} (--teacher-column) naming its teacher")
        name = str(p.meta[col]).strip()
        check(name in names, f"prompt {i + 1} ({p.id}) of {where} names the teacher {name!r} in column {col!r}, which no "
                             f"--teacher-server gives (known: {', '.join(names)})")
        rows.append(names.index(name))
    return rows


def _progress(total: int, start: int):
    """A rich progress bar with step, L, loss and KL; returns (update_fn, stop_fn)."""
    from rich.progress import TextColumn

    from opd_cli.core.log import progress_bar

    prog = progress_bar(None, TextColumn("{task.fields[info]}"))
    task = prog.add_task("train", total=total, completed=start, info="")
    prog.start()

    def update(rec: dict[str, Any]) -> None:
        kl = rec["kl"]
        prog.update(task, completed=rec["step"], info=f"L={rec['prefix_len']} loss={rec['loss']:.4f} kl={kl if kl is None else round(kl, 4)}")

    return update, prog.stop


def run_train(cfg: TrainConfig, callbacks: list[Any] | None = None) -> Path:
    """Train, writing runs/<name>/{config.yaml, metrics.jsonl, checkpoints/, final/}; returns the run folder.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (loggers, profilers, benchmarks' timers).
    """
    from opd_cli.core.models import check_same_vocab, load_tokenizer

    toy = cfg.student is None
    student_src, teacher_src = _model_sources(cfg)
    if cfg.backend == "vllm" or cfg.teacher_server:
        from opd_cli.core.vllm_engine import preflight

        preflight(cfg, student_src)  # model loadable, servers up: before the run folder is touched
    s_tok = load_tokenizer(student_src, "student")
    t_tok = load_tokenizer(teacher_src, "teacher")
    check_same_vocab(s_tok, t_tok)
    flops_fn = _flops_fn(student_src, teacher_src, cfg.attn_coef, cfg.lora)
    # max_new_tokens caps every response; an L beyond the model's context is a user error worth one line
    problems = _problems(cfg, toy)
    teacher_rows = _teacher_rows(cfg, problems)

    import torch
    from accelerate import PartialState

    # cpu=True lets torchrun / `accelerate launch --cpu` start a gloo process group (accelerate's MULTI_CPU)
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    world_size = state.num_processes
    check(cfg.batch_size % (cfg.micro_batch_size * world_size) == 0,
          f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch-size x processes = {cfg.micro_batch_size * world_size}")
    grad_accum = cfg.batch_size // (cfg.micro_batch_size * world_size)
    check(not cfg.lora or state.distributed_type.value not in ("FSDP", "DEEPSPEED"),
          f"--lora is not supported with {state.distributed_type.value} sharding yet (its merged weights are built from whole "
          "parameters): use several processes without FSDP/ZeRO-3, or full fine-tuning")

    check(not cfg.async_rollouts or world_size == 1,
          f"--async trains in one process (its rollouts come from one worker), got {world_size}: drop --async or launch one process")
    run, last = _open_run_folder(cfg, state)
    resume_from, offsets = (str(last[1]), last[2]) if last else (None, {})
    tmp_root = run.checkpoints / ".tmp"
    if last is not None and last[0] >= cfg.steps:  # killed after its last checkpoint: only final/ is missing
        if state.is_main_process:
            _final_from_checkpoint(last[1], run.path)
        state.wait_for_everyone()
        return run.path

    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    from opd_cli.core.prompts import build_prompt

    prompts = [build_prompt(s_tok, p.question, template=cfg.template, think=cfg.think, teacher_tokenizer=t_tok) for p in problems]
    columns = {"prompt": prompts}
    if cfg.reward_weight:  # each row's problem: the task reward grades a rollout against its gold answer
        columns["problem"] = list(range(len(problems)))
    if teacher_rows is not None:  # each row's teacher (--teacher-column), an index into --teacher-server's names
        columns["teacher"] = teacher_rows
    dataset = Dataset.from_dict(columns)

    device, precision, mixed, name, student, teacher = _load_models(cfg, student_src, teacher_src, s_tok, t_tok, world_size)
    s_tok.padding_side = "left"

    args = _distillation_args(cfg, tmp_root, grad_accum, device, precision, mixed)
    from opd_cli.core.tracking import point_tensorboard
    from opd_cli.train import trainer as trainer_mod

    if cfg.async_rollouts:
        trainer = _async_trainer(cfg, student_src, teacher, dataset, s_tok, run, flops_fn, offsets, callbacks,
                                 (tmp_root, grad_accum, device, precision, mixed), problems)
    else:
        trainer = trainer_mod.OpdTrainer(  # looked up at call time: tests substitute a recording subclass
            model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=s_tok,
            opd=cfg, run=run, flops_fn=flops_fn, offsets=offsets, callbacks=callbacks, engine_dtype=name, problems=problems,
            peft_config=_lora_config(cfg),
        )
    trainer.remove_callback(PrinterCallback)
    point_tensorboard(trainer, run.path)
    stop = None
    if state.is_main_process:
        trainer.progress, stop = _progress(cfg.steps, last[0] if last else 0)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if stop is not None:
            stop()
    _save_final(cfg, trainer, run, s_tok, state.is_main_process)
    state.wait_for_everyone()
    return run.path


def _async_trainer(cfg: TrainConfig, student_src: str, teacher: Any, dataset: Any, s_tok: Any, run: Any, flops_fn: Any,
                   offsets: dict[str, float], callbacks: list[Any] | None, arg_parts: tuple, problems: list[Any]) -> Any:
    """--async: TRL's AsyncDistillationTrainer subclass (train/async_trainer.py) on the rows' token ids, its rollout
    worker on the student's vLLM server, the weights synced to it through the run folder (a LoRA student's merged
    weights: TRL merges the adapter for the transfer and unmerges it after). With --rollouts-per-prompt G each row
    comes G times in a row, each copy its own rollout (its own prompt index, so its own vLLM seed)."""
    from opd_cli.train import async_trainer, async_worker

    url = f"http://{cfg.vllm_host}:{cfg.vllm_port}"
    rows = dataset.add_column("prompt_ids", s_tok(text=list(dataset["prompt"]))["input_ids"])
    G = cfg.rollouts_per_prompt
    if G > 1:
        rows = rows.select([i for i in range(len(rows)) for _ in range(G)])
    if cfg.teacher_column is not None:  # TRL's worker routes a row to the served teacher named by its teacher_id
        rows = rows.add_column("teacher_id", [list(cfg.teachers)[i] for i in list(rows["teacher"])])
    from opd_cli.core.models import resolve_source

    return async_trainer.OpdAsyncTrainer(
        resolve_source(student_src), args=async_trainer.async_args(cfg, *arg_parts), train_dataset=rows, processing_class=s_tok,
        callbacks=callbacks, opd=cfg, run=run, flops_fn=flops_fn, offsets=offsets, teacher_model=teacher,
        rollout_worker=async_trainer.rollout_worker(cfg, rows, s_tok, problems), peft_config=_lora_config(cfg),
        weight_transfer=async_worker.DiskWeightTransfer(url, run.path / ".vllm-sync", cfg.vllm_timeout),
    )


def _lora_config(cfg: TrainConfig) -> Any:
    """--lora: the adapter TRL wraps the student in (its ``peft_config``); None = full fine-tuning."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else list(targets))


def _model_sources(cfg: TrainConfig) -> tuple[str, str]:
    """(student, teacher) as given, or the toy world's (built on first use) without --student/--teacher."""
    if cfg.student is None:
        from opd_cli.toy.build import toy_model_paths

        return toy_model_paths(cfg.toy_student)
    return str(cfg.student), str(cfg.teacher)


def _load_models(cfg: TrainConfig, student_src: str, teacher_src: str, s_tok: Any, t_tok: Any, world_size: int) -> tuple:
    """(device, precision, mixed, dtype name, student, teacher): the device and precision of the run and both models
    loaded in them (teacher None with --teacher-server)."""
    import torch

    from opd_cli.core.models import check_same_vocab, load_model, resolve_device, resolve_dtype

    device = "cpu" if world_size > 1 and not torch.cuda.is_available() else resolve_device(cfg.device)
    precision = resolve_dtype(cfg.dtype, device)
    mixed = precision in (torch.bfloat16, torch.float16) and not cfg.pure_dtype
    check(not (mixed and precision == torch.float16 and device == "cpu"),
          "--dtype float16 mixed precision needs a CUDA GPU: use --dtype bfloat16 or float32 on CPU")
    name = str(precision).removeprefix("torch.")
    load_on = "cpu" if world_size > 1 else device
    # mixed precision: fp32 master weights for the student (the optimizer updates them), the frozen teacher in half
    student = load_model(student_src, "float32" if mixed else name, load_on, "student")
    # a served teacher is asked over HTTP; --teacher then only names its tokenizer and shape (FLOPs)
    teacher = None if cfg.teacher_server else load_model(teacher_src, name, load_on, "teacher")
    if teacher is not None:
        check_same_vocab(s_tok, t_tok, student, teacher)
    return device, precision, mixed, name, student, teacher


def _save_final(cfg: TrainConfig, trainer: Any, run: Any, tokenizer: Any, main: bool) -> None:
    """final/ = the trained student and its tokenizer (whole even when FSDP checkpoints are sharded), swapped in at
    once; pushed to the Hub with --push-to-hub. Every process takes part in the save."""
    from opd_cli.core.sharding import full_state_dict
    from opd_cli.core.tracking import push_folder

    if main:
        shutil.rmtree(run.path / ".vllm-sync", ignore_errors=True)  # the disk weight sync's copy for the server
    final = run.path / "final"
    tmp_final = run.path / ".final.tmp"
    with full_state_dict(trainer):
        trainer.save_model(str(tmp_final))
    if main:
        tokenizer.save_pretrained(str(tmp_final))
        swap_in(tmp_final, final)
        if cfg.push_to_hub:
            logger.info(f"pushed {final} to {push_folder(final, cfg.hub_model_id, f'opd train {cfg.name}: {cfg.steps} steps')}")


def _open_run_folder(cfg: TrainConfig, state: Any) -> tuple[Any, Any]:
    """(the run folder, its last complete checkpoint or None): opened (or refused) on the main process, where an
    existing folder is resumed or kept unless asked; half-written checkpoints of a killed run are dropped."""
    from opd_cli.core.runs import RunDir, open_run
    from opd_cli.core.tracking import TRACKING_FIELDS

    out = cfg.resolved_output_dir()
    if state.is_main_process:
        run = open_run(out, cfg.if_exists, cfg, compare_ignore=("output_dir", "optimizer_states", *TRACKING_FIELDS))  # a moved run folder still resumes
    state.wait_for_everyone()
    if not state.is_main_process:
        run = RunDir(out, resumed=cfg.if_exists == "resume")
    state.wait_for_everyone()
    last = run.resume_point(write=state.is_main_process)
    tmp_root = run.checkpoints / ".tmp"
    if state.is_main_process and tmp_root.exists():
        shutil.rmtree(tmp_root, ignore_errors=True)
    state.wait_for_everyone()
    return run, last


def _distillation_args(cfg: TrainConfig, tmp_root: Path, grad_accum: int, device: str, precision: Any, mixed: bool) -> Any:
    """TRL's ``DistillationConfig`` for opd's trainer: opd's optimizer, schedule, checkpointing and sampling settings
    (temperature 1, top-p 1, top-k off: the model's own distribution); checkpoints go to ``tmp_root`` first."""
    import torch
    from trl import DistillationConfig

    from opd_cli.core.tracking import training_args

    return DistillationConfig(
        output_dir=str(tmp_root),
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        max_steps=cfg.steps,
        warmup_steps=cfg.warmup,
        lr_scheduler_type="constant_with_warmup",
        optim="adamw_torch",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps" if cfg.save_every else "no",
        save_steps=cfg.save_every or 1,
        **training_args(cfg.report_to, cfg.name),
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_completion_length=cfg.max_gen_len(),
        beta=1.0,
        disable_dropout=True,
        gradient_checkpointing=False,
        bf16=mixed and precision == torch.bfloat16,
        fp16=mixed and precision == torch.float16,
        use_cpu=device == "cpu",
        use_vllm=False,  # opd builds the rollout engine itself (opd_cli.core.vllm_engine), with TRL's generation class
        vllm_mode=cfg.vllm_mode,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        save_only_model=False,
    )


def _final_from_checkpoint(ckpt: Path, run_path: Path) -> None:
    """final/ = the model and tokenizer files of a complete checkpoint (not its optimizer, scheduler or RNG state)."""
    training_state = {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "opd_state.json", "COMPLETE"}
    tmp = run_path / ".final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for f in ckpt.iterdir():
        if f.is_file() and f.name not in training_state and not f.name.startswith("rng_state"):
            shutil.copy2(f, tmp / f.name)
        elif f.is_dir() and f.name == "adapter":  # --lora: the adapter beside the merged weights
            shutil.copytree(f, tmp / f.name)
    swap_in(tmp, run_path / "final")
