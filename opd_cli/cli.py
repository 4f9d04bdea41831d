"""The `opd` command line. Each command parses options, builds its typed config and calls one ``run_*()``.

Nothing heavy is imported here (torch, transformers, trl, vllm load inside the ``run_*`` functions), so
``opd --help`` is instant; tests/test_cli.py guards that.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

import typer

from opd_cli.errors import OpdError

app = typer.Typer(
    name="opd",
    help="Prefix on-policy distillation of reasoning LMs: train, analyse, evaluate, plot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
toy_app = typer.Typer(help="The built-in toy world: a synthetic planning task with a tiny teacher and student.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")

_STATE = {"debug": False}

RecipeOpt = typer.Option(None, "--recipe", help="YAML file of config fields (recipes/*.yaml); flags override it.")
IfExistsOpt = typer.Option(None, "--if-exists", help="Existing run folder: raise (default) | resume | overwrite.")
OutOpt = typer.Option(None, "--output-dir", "-o", help="Run folder (default: runs/<command>-<name>).")
DtypeOpt = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 | float16.")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda.")
ThinkOpt = typer.Option(None, "--think/--no-think", help="Append <think> to the prompt.")
ReportToOpt = typer.Option(None, "--report-to", help="Trackers besides metrics.jsonl: none | tensorboard | wandb | trackio (repeatable or comma-separated).")
PushToHubOpt = typer.Option(None, "--push-to-hub", help="Upload the final model to the Hub at the end (needs --hub-model-id).")
HubModelIdOpt = typer.Option(None, "--hub-model-id", help="Hub repository owner/name for --push-to-hub.")
ToyStudentOpt = typer.Option(None, "--toy-student", help="The toy world's student when no --student is given: large (default) | small.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    _STATE["debug"] = debug


def dispatch(module: str, config_cls: str, run_fn: str, recipe: Optional[Path], options: dict[str, Any]) -> Any:
    """Build ``config_cls`` from defaults < recipe < options, print it, and call ``module.run_fn(cfg)``.

    An :class:`OpdError` becomes one red line on stderr and exit code 2 (``opd --debug`` shows the traceback).
    """
    try:
        from opd_cli.config import build_config

        mod = importlib.import_module(module)
        overrides = {k: v for k, v in options.items() if k != "recipe"}
        cfg = build_config(getattr(mod, config_cls), recipe, overrides)
        return getattr(mod, run_fn)(cfg)
    except OpdError as err:
        if _STATE["debug"]:
            raise
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


# -------------------------------------------------------------------------------------------- train
@app.command("train")
def train_cmd(
    recipe: Optional[Path] = RecipeOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default output folder runs/train-<name>)."),
    student: Optional[str] = typer.Option(None, "--student", help="Student hub id or local folder (default: the toy world's)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher hub id or local folder, same vocabulary (default: toy)."),
    toy_student: Optional[str] = ToyStudentOpt,
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompt source: toy-train, openthoughts3, ... (default by world)."),
    data: Optional[str] = typer.Option(None, "--data", help="Local jsonl/parquet/csv file of prompts instead of --prompts."),
    question_column: Optional[str] = typer.Option(None, "--question-column", help="Column with the question for --data."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N prompts (0 = all)."),
    prefix: Optional[str] = typer.Option(None, "--prefix", help="Prefix length L in tokens, or 'full' (= --max-new-tokens)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="none | linear (L = start + delta*step, capped)."),
    prefix_start: Optional[int] = typer.Option(None, "--prefix-start", help="Linear schedule: first L (tokens)."),
    prefix_delta: Optional[int] = typer.Option(None, "--prefix-delta", help="Linear schedule: L growth per step (tokens)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Response cap in tokens (full OPD length)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="sampled (default) | full | topk."),
    topk: Optional[int] = typer.Option(None, "--topk", help="k of --loss topk."),
    topk_support: Optional[str] = typer.Option(None, "--topk-support", help="student | overlap | nonoverlap."),
    loss_window: Optional[str] = typer.Option(None, "--loss-window", help="A:B: only positions A <= t < B carry gradient."),
    loss_tail: Optional[int] = typer.Option(None, "--loss-tail", help="Only the last N tokens of full rollouts carry gradient (0 = off)."),
    kl_bin: Optional[int] = typer.Option(None, "--kl-bin", help="Position-bin width of the logged KL profile (tokens)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rollouts per optimizer step (all processes)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Rollouts per forward/backward per process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps (0 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (0 = final only)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="hf (any device) | vllm (GPU + the vllm extra)."),
    vllm_mode: Optional[str] = typer.Option(None, "--vllm-mode", help="colocate | server."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 | float16 (half = fp32 master weights + autocast)."),
    pure_dtype: Optional[bool] = typer.Option(None, "--pure-dtype", help="With --dtype bfloat16/float16: half-precision weights too, no fp32 master copy."),
    device: Optional[str] = DeviceOpt,
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template: auto | chat | plain | teacher."),
    think: Optional[bool] = ThinkOpt,
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Response positions per logits chunk (bounds micro-batch x chunk x V memory)."),
    metrics_every: Optional[int] = typer.Option(None, "--metrics-every", help="Overlap metrics on the first, every N-th and last step (0 = never)."),
    ignore_eos: Optional[bool] = typer.Option(None, "--ignore-eos", help="Fixed-length rollouts: never stop at EOS (benchmarks)."),
    report_to: Optional[list[str]] = ReportToOpt,
    push_to_hub: Optional[bool] = PushToHubOpt,
    hub_model_id: Optional[str] = HubModelIdOpt,
    output_dir: Optional[Path] = OutOpt,
    if_exists: Optional[str] = IfExistsOpt,
) -> None:
    """Prefix on-policy distillation: the student samples L tokens, the teacher scores them, reverse KL is minimised."""
    dispatch("opd_cli.train", "TrainConfig", "run_train", recipe, locals())


# --------------------------------------------------------------------------------------------- eval
@app.command("eval")
def eval_cmd(
    recipe: Optional[Path] = RecipeOpt,
    model: Optional[str] = typer.Option(None, "--model", help="Hub id or local folder (default: the toy world's student, see --toy-model)."),
    toy_model: Optional[str] = typer.Option(None, "--toy-model", help="With no --model: toy world 'teacher' or 'student' (default student)."),
    toy_student: Optional[str] = typer.Option(None, "--toy-student", help="With --toy-model student: large (default) | small (--run: its config says)."),
    run: Optional[Path] = typer.Option(None, "--run", help="A training run folder: evaluate its checkpoints (see --steps)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Checkpoint steps of --run to evaluate, e.g. 0,10,20 (0 = the initial student; default: every checkpoint)."),
    initial: Optional[bool] = typer.Option(None, "--initial", help="With --run and no --steps: evaluate step 0 (the initial student) too."),
    benchmark: Optional[list[str]] = typer.Option(None, "--benchmark", "-b", help="Registered benchmark (repeatable): toy, toy-ood, math500, aime24, ..."),
    data: Optional[Path] = typer.Option(None, "--data", help="Local jsonl/parquet/csv file of problems (instead of --benchmark)."),
    question_column: Optional[str] = typer.Option(None, "--question-column", help="Column with the problem text for --data."),
    answer_column: Optional[str] = typer.Option(None, "--answer-column", help="Column with the gold answer for --data."),
    dev_benchmark: Optional[str] = typer.Option(None, "--dev-benchmark", help="Benchmark that picks the best checkpoint of --run."),
    best_benchmark: Optional[list[str]] = typer.Option(None, "--best-benchmark", help="With --run: benchmarks run only at the best dev checkpoint (repeatable)."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", help="Completions per problem (n of Mean Acc@n)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N problems (0 = all)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling (1.0 = off)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Response cap in tokens."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per generate call."),
    backend: Optional[str] = typer.Option(None, "--backend", help="hf (any device) | vllm (GPU + the vllm extra)."),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template: auto | chat | plain."),
    think: Optional[bool] = ThinkOpt,
    dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    output_dir: Optional[Path] = OutOpt,
    if_exists: Optional[str] = IfExistsOpt,
) -> None:
    """Sample n answers per problem and grade them: Mean Acc@n, pass@k, lengths, truncation."""
    dispatch("opd_cli.evaluate", "EvalConfig", "run_eval", recipe, locals())


# -------------------------------------------------------------------------------------------- flops
@app.command("flops")
def flops_cmd(
    runs: Optional[list[str]] = typer.Argument(None, help="Run folders (or folders of runs) to total from logged lengths."),
    recipe: Optional[Path] = RecipeOpt,
    model: Optional[str] = typer.Option(None, "--model", help="Model config: shipped name (qwen3-8b), folder, config.json or hub id."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher config, for OPD per-rollout and --paper numbers."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Sequence lengths in tokens, e.g. 1024,4096."),
    attn_coef: Optional[int] = typer.Option(None, "--attn-coef", help="Attention coefficient: 12 (verl <= 0.7.0, default) or 6."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs per run: GPU-hours from logged wall time (0 = off)."),
    paper: Optional[bool] = typer.Option(None, "--paper", help="Paper accounting: --steps x --rollouts rollouts at each --lengths."),
    steps: Optional[int] = typer.Option(None, "--steps", help="--paper: optimizer steps (default 60)."),
    rollouts: Optional[int] = typer.Option(None, "--rollouts", help="--paper: rollouts per step (default 512)."),
    output: Optional[str] = typer.Option(None, "--output", help="Also write the table as CSV here."),
) -> None:
    """Training FLOPs (paper appendix B): per sequence of a model config, or totals and ratios of run folders."""
    dispatch("opd_cli.flops", "FlopsConfig", "run_flops", recipe, locals())


# ----------------------------------------------------------------------------------- kl-by-position
@app.command("kl-by-position")
def kl_by_position_cmd(
    recipe: Optional[Path] = RecipeOpt,
    models: Optional[list[str]] = typer.Option(None, "--model", help="Model folder or hub id to roll out (repeatable; default: --run, else the toy student)."),
    toy_student: Optional[str] = typer.Option(None, "--toy-student", help="With no --model/--run: the toy world's large (default) | small student."),
    run: Optional[str] = typer.Option(None, "--run", help="Training run folder: its checkpoints and its logged per-bin KL."),
    checkpoint_steps: Optional[str] = typer.Option(None, "--checkpoint-steps", help="Checkpoints of --run to roll out, e.g. 0,10,20,30 (0 = initial student)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Steps of --run whose logged per-bin KL to include, e.g. 10,20,30."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Scoring teacher (default: --run's teacher, else the toy teacher)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Benchmark whose questions are the prompts (default toy-dev)."),
    data: Optional[str] = typer.Option(None, "--data", help="Local jsonl/parquet/csv file of prompts (instead of --benchmark)."),
    question_column: Optional[str] = typer.Option(None, "--question-column", help="Column with the problem text for --data."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Prompts to roll out (0 = all; default 32)."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", help="Rollouts per prompt (default 1)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Rollout length cap in tokens (default 16384)."),
    bin: Optional[int] = typer.Option(None, "--bin", help="Position-bin width in tokens (default 256)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (default 1.0)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling (1.0 = off)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per generate / scoring call."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Positions per log-softmax chunk (0 = no chunking)."),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template: auto | chat | plain | teacher."),
    think: Optional[bool] = ThinkOpt,
    dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    output_dir: Optional[str] = OutOpt,
    if_exists: Optional[str] = IfExistsOpt,
) -> None:
    """Reverse KL per output-position bin (Fig. 2/5): rollouts of checkpoints scored by the teacher, and logged KL."""
    dispatch("opd_cli.analyses.kl_by_position", "KlByPositionConfig", "run_kl_by_position", recipe, locals())


# ----------------------------------------------------------------------------- probe-teacher-prefix
@app.command("probe-teacher-prefix")
def probe_teacher_prefix_cmd(
    recipe: Optional[Path] = RecipeOpt,
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Prefix lengths in tokens, e.g. 2048,4096 (L=0, the student alone, is added)."),
    margin: Optional[int] = typer.Option(None, "--margin", help="Prefix = min(L, L_r - margin) tokens of the teacher's response (default 512; 0 = no guard)."),
    student: Optional[str] = typer.Option(None, "--student", help="Untrained student (default: the toy student)."),
    toy_student: Optional[str] = ToyStudentOpt,
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher that writes the solutions (default: the toy teacher)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Benchmark (default aime24)."),
    data: Optional[str] = typer.Option(None, "--data", help="Local jsonl/parquet/csv file of problems (instead of --benchmark)."),
    question_column: Optional[str] = typer.Option(None, "--question-column", help="Column with the problem text for --data."),
    answer_column: Optional[str] = typer.Option(None, "--answer-column", help="Column with the gold answer for --data."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N problems only (0 = all)."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", help="Teacher solutions per problem = n of Mean Acc@n (default 16)."),
    teacher_max_new_tokens: Optional[int] = typer.Option(None, "--teacher-max-new-tokens", help="Teacher solution cap in tokens (default 32768)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Student tokens after the prefix (default 32768)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (default 1.0)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling (1.0 = off)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per generate call."),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template: auto | chat | plain | teacher."),
    think: Optional[bool] = ThinkOpt,
    dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    output_dir: Optional[str] = OutOpt,
    if_exists: Optional[str] = IfExistsOpt,
) -> None:
    """Teacher-prefix probe (Fig. 3): the untrained student continues from the first L tokens of teacher solutions."""
    dispatch("opd_cli.analyses.probe", "ProbeConfig", "run_probe", recipe, locals())


# --------------------------------------------------------------------------------------------- plot
@app.command("plot")
def plot_cmd(
    kind: Optional[str] = typer.Argument(None, help="kl-position | teacher-prefix | compute-vs-acc | sft-prefix | lr-sweep | window-ablation | main-table | overlap"),
    runs: Optional[list[str]] = typer.Argument(None, help="Run folders, or folders of run folders."),
    recipe: Optional[Path] = RecipeOpt,
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Folder for PNG/PDF/CSV/markdown (default plots)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="kl-position: training steps to draw, e.g. 10,20,30 (default: 3 evenly spaced)."),
    dev_benchmark: Optional[str] = typer.Option(None, "--dev-benchmark", help="Dev benchmark (default: each run's eval/best.json)."),
    in_domain: Optional[str] = typer.Option(None, "--in-domain", help="In-domain benchmarks, e.g. math500,aime24,aime25."),
    ood: Optional[str] = typer.Option(None, "--ood", help="Out-of-domain benchmarks, e.g. gpqa,mmlu-pro."),
    x_axis: Optional[str] = typer.Option(None, "--x-axis", help="sft-prefix: flops (default) | step."),
    match_acc: Optional[float] = typer.Option(None, "--match-acc", help="lr-sweep: dev accuracy to match for OOD (-1 = highest level all runs reach)."),
) -> None:
    """Figures and tables of the paper from run folders: PNG + PDF, and CSV/markdown for tables."""
    dispatch("opd_cli.plot", "PlotConfig", "run_plot", recipe, locals())


# ------------------------------------------------------------------------------------- sft-baseline
@app.command("sft-baseline")
def sft_baseline_cmd(
    recipe: Optional[Path] = RecipeOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default folder runs/sft-baseline-<name>)."),
    student: Optional[str] = typer.Option(None, "--student", help="Student to fine-tune (default: the toy student)."),
    toy_student: Optional[str] = ToyStudentOpt,
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher for --generate-with-teacher (default: the toy teacher)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Problems with teacher responses: toy-train | openthoughts3."),
    data: Optional[str] = typer.Option(None, "--data", help="Local jsonl/parquet/csv file of problems (instead of --prompts)."),
    question_column: Optional[str] = typer.Option(None, "--question-column", help="Column with the problem text for --data."),
    response_column: Optional[str] = typer.Option(None, "--response-column", help="Column with the teacher response for --data (default response)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N problems only (0 = all)."),
    generate_with_teacher: Optional[bool] = typer.Option(None, "--generate-with-teacher/--dataset-responses", help="Teacher writes the responses (cached in the run folder)."),
    teacher_samples: Optional[int] = typer.Option(None, "--teacher-samples", help="Teacher responses per problem (default 1)."),
    teacher_max_new_tokens: Optional[int] = typer.Option(None, "--teacher-max-new-tokens", help="Teacher response cap in tokens (default 16384)."),
    correct_only: Optional[bool] = typer.Option(None, "--correct-only/--all-responses", help="Keep only responses graded correct."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Prompt + completion cap in tokens: prefix SFT (paper 2048; 0 = off)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (paper 300 / 1500)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per optimizer step (paper 128)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Sequences per forward/backward (0 = --batch-size)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (paper 1e-4)."),
    lr_scheduler: Optional[str] = typer.Option(None, "--lr-scheduler", help="constant | linear | cosine | constant_with_warmup."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Warm-up steps (0 = off)."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations to save memory."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (0 = last step only)."),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template: auto | chat | plain."),
    think: Optional[bool] = ThinkOpt,
    attn_coef: Optional[int] = typer.Option(None, "--attn-coef", help="FLOPs attention coefficient: 12 (paper) | 6."),
    dtype: Optional[str] = DtypeOpt,
    device: Optional[str] = DeviceOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed."),
    output_dir: Optional[str] = OutOpt,
    report_to: Optional[list[str]] = ReportToOpt,
    push_to_hub: Optional[bool] = PushToHubOpt,
    hub_model_id: Optional[str] = HubModelIdOpt,
    if_exists: Optional[str] = IfExistsOpt,
) -> None:
    """Off-policy SFT on teacher responses (Tables 1-2 SFT rows, Fig. 6 with --max-length); a valid opd train --student."""
    dispatch("opd_cli.sft", "SftConfig", "run_sft", recipe, locals())


# ---------------------------------------------------------------------------------- window-ablation
@app.command("window-ablation")
def window_ablation_cmd(
    recipe: Optional[Path] = RecipeOpt,
    train_recipe: Optional[str] = typer.Option(None, "--train-recipe", help="Base opd train recipe (recipes/train-*.yaml)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a base training field, key=value (repeatable)."),
    toy_student: Optional[str] = typer.Option(None, "--toy-student", help="The toy world's student of every run: large | small (default: the base config's)."),
    windows: Optional[str] = typer.Option(None, "--windows", help="Loss windows, e.g. 1024:2048,2048:3072,3072:4096,tail:1024."),
    prefix_ref: Optional[int] = typer.Option(None, "--prefix-ref", help="Prefix-OPD reference length in tokens (0 = none; default 1024)."),
    full_ref: Optional[bool] = typer.Option(None, "--full-ref/--no-full-ref", help="Include the full-OPD reference."),
    reference_runs: Optional[str] = typer.Option(None, "--reference-runs", help="Finished train runs that stand in for the references when trained alike, e.g. runs/train-toy-full,runs/train-toy-prefix32."),
    eval_steps: Optional[str] = typer.Option(None, "--eval-steps", help="Checkpoint steps to evaluate, e.g. 10,20,30."),
    dev_benchmark: Optional[str] = typer.Option(None, "--dev-benchmark", help="Benchmark of the table (paper aime24; default toy-dev)."),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help="Samples per dev problem (paper 16)."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="First N dev problems only (0 = all)."),
    eval_max_new_tokens: Optional[int] = typer.Option(None, "--eval-max-new-tokens", help="Evaluation response cap (0 = eval default)."),
    skip_eval: Optional[bool] = typer.Option(None, "--skip-eval/--eval", help="Train only; tabulate the evaluations on disk."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Ablation folder (default runs/window-ablation)."),
    if_exists: Optional[str] = typer.Option(None, "--if-exists", help="Existing ablation: resume (default; complete runs reused) | overwrite | raise."),
) -> None:
    """Loss-window ablation (Table 3): one opd train run per window plus full and prefix references, then the table."""
    dispatch("opd_cli.ablation", "WindowAblationConfig", "run_window_ablation", recipe, locals())


# --------------------------------------------------------------------------------------------- toy build
@toy_app.command("build")
def toy_build_cmd(
    recipe: Optional[Path] = RecipeOpt,
    root: Optional[str] = typer.Option(None, "--root", help="Cache folder of the world (default $OPD_TOY_DIR or ~/.cache/opd/toy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the splits and models (a failed teacher retries with a new one)."),
    rebuild: Optional[bool] = typer.Option(None, "--rebuild/--reuse", help="Build even when a valid cached world exists."),
    teacher_steps: Optional[int] = typer.Option(None, "--teacher-steps", help="Most teacher SFT steps."),
    student_steps: Optional[int] = typer.Option(None, "--student-steps", help="Larger student's SFT steps."),
    small_steps: Optional[int] = typer.Option(None, "--small-steps", help="Compact student's SFT steps."),
    min_teacher_acc: Optional[float] = typer.Option(None, "--min-teacher-acc", help="Teacher test accuracy required (0 = off)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads, fixed so a seed gives one world (default 2; 0 = every core)."),
) -> None:
    """Build the toy world (tokenizer, splits, teacher, two plan-weak students) and report test accuracies."""
    dispatch("opd_cli.toy.build", "ToyBuildConfig", "run_toy_build", recipe, locals())


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
