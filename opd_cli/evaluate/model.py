"""`opd eval`: sample n answers per problem, grade them, report Mean Acc@n (the prefix-OPD paper §4.1, "Setup").

This module holds the evaluation of one model on one benchmark (:func:`evaluate_model`, reused by other commands);
:mod:`opd_cli.evaluate.config` holds the options (:class:`EvalConfig`), :mod:`opd_cli.evaluate.run` the command
(:func:`~opd_cli.evaluate.run.run_eval`) and the checkpoints of a training run (with the best one on a dev benchmark
recorded in ``run/eval/best.json``; docs/run-format.md). With ``--backend vllm`` one engine serves every checkpoint
of a call, each checkpoint's weights loaded into it in turn (:func:`checkpoint_loader`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError
from opd_cli.core.runs import CKPT_PREFIX, write_json
from opd_cli.data import Problem, load_problems
from opd_cli.evaluate.config import EvalConfig


# ------------------------------------------------------------------------------------------ metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def summarize(correct: Sequence[Sequence[bool]], lengths: Sequence[int], truncated: Sequence[bool]) -> dict[str, Any]:
    """Mean Acc@n (per-problem accuracy averaged over problems) with its standard error over problems, pass@k,
    mean response length (tokens) and the fraction of responses stopped by the length cap."""
    n = len(correct[0]) if correct else 0
    per_problem = [sum(c) / len(c) for c in correct]
    p = len(per_problem)
    mean = sum(per_problem) / p if p else float("nan")
    if p > 1:
        var = sum((a - mean) ** 2 for a in per_problem) / (p - 1)
        stderr = math.sqrt(var / p)
    else:
        stderr = 0.0
    pk = {str(k): sum(pass_at_k(n, sum(c), k) for c in correct) / p for k in pass_ks(n)} if p else {}
    return {
        "n": n,
        "num_problems": p,
        "mean_acc": mean,
        "stderr": stderr,
        "pass_at_k": pk,
        "mean_length": sum(lengths) / len(lengths) if lengths else float("nan"),
        "truncated_frac": sum(truncated) / len(truncated) if truncated else float("nan"),
    }


# ------------------------------------------------------------------------------------------ problems and models
def resolve_benchmarks(cfg: EvalConfig, default: Sequence[str] = ()) -> dict[str, list[Problem]]:
    """Benchmark name -> problems, loaded before any model so bad data fails fast."""
    out: dict[str, list[Problem]] = {}
    for name in cfg.benchmark or ([] if cfg.data else list(default)):
        out[name] = load_problems(name, None, cfg.limit, cfg.seed)
    if cfg.data is not None:
        out[Path(cfg.data).name.split(".")[0]] = load_problems(
            None, cfg.data, cfg.limit, question_column=cfg.question_column, answer_column=cfg.answer_column)
    if not out:
        raise OpdError("nothing to evaluate on: pass --benchmark NAME or --data FILE")
    return out


def toy_label(which: str, student: str = "large") -> str:
    """Name of a toy-world model in run folders: toy-teacher, toy-student (the large one), toy-student-small."""
    return f"toy-{which}" if which == "teacher" or student == "large" else f"toy-{which}-{student}"


def model_label(model: str) -> str:
    p = Path(model)
    name = p.name if not p.name.startswith(CKPT_PREFIX) else f"{p.parent.parent.name}-{p.name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def load_for_eval(model: str, cfg: EvalConfig) -> tuple[Any, Any]:
    """(model, tokenizer) for sampling; the model is a ``vllm.LLM`` with ``--backend vllm``."""
    from opd_cli.core.models import load_model, load_tokenizer

    tok = load_tokenizer(model, what="model")
    if cfg.backend == "vllm":
        from opd_cli.core.generation import load_vllm

        return load_vllm(model, dtype=cfg.dtype if cfg.dtype != "auto" else "auto", seed=cfg.seed), tok
    return load_model(model, dtype=cfg.dtype, device=cfg.device, what="model"), tok


def checkpoint_loader(cfg: EvalConfig) -> Callable[[str], tuple[Any, Any]]:
    """``load(model) -> (model, tokenizer)`` for the checkpoints of one run, evaluated in turn.

    hf: each checkpoint is loaded afresh (the caller drops it before the next). vllm: one engine serves them all,
    created from the first checkpoint; each later one's weights are loaded into it (:func:`load_vllm_weights`).
    The checkpoints of a run share architecture and tokenizer, and a second ``vllm.LLM`` in one process may not
    get back the GPU memory the first one held.
    """
    if cfg.backend != "vllm":
        return lambda model: load_for_eval(model, cfg)
    engine: dict[str, Any] = {}  # "llm", and "model": the checkpoint whose weights it holds

    def load(model: str) -> tuple[Any, Any]:
        from opd_cli.core.generation import load_vllm_weights
        from opd_cli.core.models import load_tokenizer

        if not engine:
            engine["llm"], tok = load_for_eval(model, cfg)
        else:
            tok = load_tokenizer(model, what="model")
            if engine["model"] != model:
                load_vllm_weights(engine["llm"], model)
        engine["model"] = model
        return engine["llm"], tok

    return load


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_model(
    model: str | tuple[Any, Any],
    problems: list[Problem],
    cfg: EvalConfig,
    out_dir: str | Path,
    label: str,
    *,
    model_name: str | None = None,
    step: int | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Evaluate one model on one benchmark; writes ``out_dir/<label>.json`` (summary) and
    ``out_dir/<label>.samples.jsonl`` (one line per sample) and returns the summary.

    ``model``: hub id or folder, or an already loaded ``(model, tokenizer)`` pair (``model_name`` then names it).
    ``cfg``: an :class:`EvalConfig` (or anything with its sampling fields and ``n_for``).
    """
    from rich.console import Console

    from opd_cli.core.generation import sample
    from opd_cli.core.grading import grade
    from opd_cli.core.prompts import build_prompt

    console = console or Console(stderr=True)
    if isinstance(model, tuple):
        lm, tok = model
        name = model_name or "model"
    else:
        lm, tok = load_for_eval(model, cfg)
        name = model_name or model
    n = cfg.n_for(label) if hasattr(cfg, "n_for") else int(cfg.samples)
    prompts = [build_prompt(tok, p.question, template=cfg.template, think=cfg.think) for p in problems]
    t0 = time.time()
    from opd_cli.core.log import progress_bar

    with progress_bar(console) as bar:
        task = bar.add_task(f"{label} ({len(problems)}x{n})", total=len(problems) * n)
        samples = sample(lm, tok, prompts, n, temperature=cfg.temperature, top_p=cfg.top_p,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                         progress=lambda k: bar.advance(task, k), backend=cfg.backend)
    gen_time = time.time() - t0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    correct, lengths, truncated, lines = [], [], [], []
    for prob, row in zip(problems, samples, strict=True):
        marks = []
        for j, s in enumerate(row):
            ok, extracted = grade(prob, s.text)
            marks.append(ok)
            lengths.append(s.length)
            truncated.append(s.truncated)
            lines.append(json.dumps({"problem_id": prob.id, "sample": j, "text": s.text, "extracted": extracted,
                                     "gold": prob.answer, "correct": ok, "length": s.length, "truncated": s.truncated}))
        correct.append(marks)
    tmp = out_dir / f"{label}.samples.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out_dir / f"{label}.samples.jsonl")
    summary = {"benchmark": label, "model": str(name), "step": step, **summarize(correct, lengths, truncated),
               "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
               "backend": cfg.backend, "seed": cfg.seed, "time_generate": gen_time}
    write_json(out_dir / f"{label}.json", summary)
    return summary


def finished_summary(out_dir: Path, label: str) -> dict[str, Any] | None:
    """The saved summary of benchmark ``label`` in ``out_dir`` when both its files are complete, else None."""
    f = out_dir / f"{label}.json"
    if f.is_file() and (out_dir / f"{label}.samples.jsonl").is_file():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return None
    return None


def print_summary(summaries: list[dict[str, Any]], console: Any = None, title: str = "opd eval") -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title)
    # Mean Acc@n ± its standard error over problems; pass@n; mean response tokens; fraction cut by the cap
    for col in ("step", "benchmark", "n", "problems", "Mean Acc@n", "±se", "pass@n", "tokens", "cut"):
        table.add_column(col, justify="left" if col == "benchmark" else "right", no_wrap=col != "benchmark")
    for s in summaries:
        pk = s["pass_at_k"].get(str(s["n"]), float("nan"))
        table.add_row("-" if s.get("step") is None else str(s["step"]), s["benchmark"], str(s["n"]), str(s["num_problems"]),
                      f"{s['mean_acc']:.3f}", f"{s['stderr']:.3f}", f"{pk:.3f}", f"{s['mean_length']:.1f}",
                      f"{s['truncated_frac']:.2f}")
    console.print(table)
