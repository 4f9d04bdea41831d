"""`opd probe-teacher-prefix`: how far does a teacher-written prefix carry an untrained student (paper Fig. 3)?

1. The teacher writes ``n`` full solutions per problem (cached in ``teacher_samples.jsonl``, reused on
   ``--if-exists resume``); its own Mean Acc@n is ``teacher_acc``.
2. For each length L, each teacher solution j of length ``L_r`` gives a prefix of ``min(L, L_r - margin)`` of its
   tokens (never negative: the paper's guard so the final answer is not inside the prefix).
3. The student continues once from each prefix (prompt, then the forced prefix, then sampling up to
   ``--max-new-tokens`` new tokens); the completed solution (prefix + continuation) is graded.
4. L = 0 is the student alone (n plain samples per problem).

Outputs (docs/run-format.md, "Analyses"): ``probe.csv`` (length, mean_acc, stderr, n, mean_prefix_tokens),
``summary.json`` (the rows plus teacher_acc), and ``samples.jsonl`` with every graded continuation (also the
resume cache: lengths already complete are not sampled again).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.config import check, field
from opd_cli.toy.world import check_toy_student

COLUMNS = ("length", "mean_acc", "stderr", "n", "mean_prefix_tokens")
TEACHER_FILE = "teacher_samples.jsonl"
SAMPLES_FILE = "samples.jsonl"


@dataclass
class ProbeConfig:
    command = "probe-teacher-prefix"

    lengths: list[int] = field([2048, 4096, 6144, 8192], help="Prefix lengths L in tokens, e.g. 2048,4096 (L = 0, the "
                                                             "student alone, is always added).")
    margin: int = field(512, help="Prefix = min(L, L_r - margin) teacher tokens, L_r = the teacher response's length "
                                  "(0 = no guard).")
    student: str | None = field(None, help="Untrained student: hub id or folder (default: the toy student).")
    toy_student: str = field("large", help="Without --student: the toy world's large (student/) or small (student-small/) student.")
    teacher: str | None = field(None, help="Teacher that writes the solutions (default: the toy teacher).")
    benchmark: str = field("aime24", help="Registered benchmark: aime24, math500, toy-dev, ...")
    data: str | None = field(None, help="Local jsonl/parquet/csv file of problems (instead of --benchmark).")
    question_column: str | None = field(None, help="Column with the problem text for --data.")
    answer_column: str | None = field(None, help="Column with the gold answer for --data.")
    limit: int = field(0, help="Use only the first N problems (0 = all).")
    samples: int = field(16, help="Teacher solutions per problem = continuations per L (n of Mean Acc@n).")
    teacher_max_new_tokens: int = field(32768, help="Length cap of the teacher's solutions in tokens.")
    max_new_tokens: int = field(32768, help="New tokens the student may write after the prompt + prefix.")
    temperature: float = field(1.0, help="Sampling temperature (teacher and student).")
    top_p: float = field(1.0, help="Nucleus sampling (1.0 = off).")
    batch_size: int = field(16, help="Sequences per generate call.")
    template: str = field("auto", help="Prompt template: auto | chat | plain | teacher.")
    think: bool = field(True, help="Append <think> to the prompt.")
    dtype: str = field("auto", help="auto | float32 | bfloat16 | float16.")
    device: str = field("auto", help="auto | cpu | cuda.")
    seed: int = field(0, help="Sampling seed.")
    output_dir: str | None = field(None, help="Run folder (default: runs/probe-teacher-prefix-<benchmark>).")
    if_exists: str = field("raise", help="Existing run folder: raise | resume (reuse teacher solutions and finished "
                                         "lengths) | overwrite.")

    def __post_init__(self) -> None:
        check(len(self.lengths) > 0, "--lengths needs at least one prefix length, e.g. 2048,4096")
        bad = [x for x in self.lengths if x < 0]
        check(not bad, f"--lengths must be non-negative token counts, got {bad}")
        check(self.margin >= 0, f"--margin must be >= 0 tokens (0 = no guard), got {self.margin}")
        check(self.samples >= 1, f"--samples must be at least 1, got {self.samples}")
        check(self.limit >= 0, f"--limit must be >= 0 (0 = all), got {self.limit}")
        check(self.max_new_tokens >= 1 and self.teacher_max_new_tokens >= 1, "--max-new-tokens and "
              "--teacher-max-new-tokens must be positive")
        check(self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}")
        check(self.temperature >= 0, f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        check(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        self.lengths = sorted(set(self.lengths))
        check_toy_student(self.toy_student)
        check(self.student is None or self.toy_student == "large", "--toy-student small picks a toy-world student: it cannot be combined with --student")


# ------------------------------------------------------------------------------------------- pure maths
def prefix_length(L: int, L_r: int, margin: int) -> int:
    """Teacher tokens given to the student for probe length ``L``: ``min(L, L_r - margin)``, never negative.

    Paper §3 (Fig. 3): ``L_p <- min(L_p, L_r - 512)`` so the teacher's final answer is unlikely to be in the prefix.
    """
    return max(0, min(L, L_r - margin))


# ------------------------------------------------------------------------------------------- caches
def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
    return out


def _append_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _complete(records: list[dict], ids: list[str], n: int) -> dict[tuple[str, int], dict] | None:
    """The records keyed by (problem_id, sample) if every problem has all n samples, else None."""
    got = {(r["problem_id"], int(r["sample"])): r for r in records}
    return got if all((pid, j) in got for pid in ids for j in range(n)) else None


# ------------------------------------------------------------------------------------------- command
def run_probe(cfg: ProbeConfig) -> list[dict]:
    """Teacher solutions, then the student from each prefix length; write probe.csv and summary.json."""
    from rich.console import Console

    from opd_cli.config import summary_line
    from opd_cli.data import load_problems
    from opd_cli.evaluate import summarize
    from opd_cli.log import progress_bar
    from opd_cli.runs import open_run, write_json
    from opd_cli.toy.world import toy_model_paths

    console = Console(stderr=True)
    if cfg.student is None or cfg.teacher is None:
        toy_student, toy_teacher = toy_model_paths(cfg.toy_student, console)
    student_path = str(cfg.student or toy_student)
    teacher_path = str(cfg.teacher or toy_teacher)
    problems = load_problems(cfg.benchmark, cfg.data, cfg.limit, cfg.seed,
                             question_column=cfg.question_column, answer_column=cfg.answer_column)
    ids = [p.id for p in problems]
    check(len(set(ids)) == len(ids), "problem ids are not unique: give --data an id column with distinct values")

    out_dir = cfg.output_dir or f"runs/probe-teacher-prefix-{cfg.data and Path(cfg.data).stem or cfg.benchmark}"
    # `lengths` may grow on resume: earlier lengths and the teacher's solutions are reused, new ones are sampled.
    run = open_run(out_dir, cfg.if_exists, cfg, compare_ignore=("lengths",))
    console.print(summary_line(cfg, run.config_file), markup=False, highlight=False)
    if not run.resumed:  # a stale cache from an overwritten run must not leak in
        for name in (TEACHER_FILE, SAMPLES_FILE):
            (run.path / name).unlink(missing_ok=True)

    with progress_bar(console) as progress:
        teacher_recs = _teacher_solutions(cfg, run.path, problems, teacher_path, progress, console)
        rows = _student_rows(cfg, run.path, problems, student_path, teacher_path, teacher_recs, progress, console)

    t = summarize([[teacher_recs[(p.id, j)]["correct"] for j in range(cfg.samples)] for p in problems],
                  [r["length"] for r in teacher_recs.values()], [bool(r["truncated"]) for r in teacher_recs.values()])
    t_acc, t_len = t["mean_acc"], t["mean_length"]
    with (run.path / "probe.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = {"student": student_path, "teacher": teacher_path, "benchmark": cfg.data or cfg.benchmark,
               "num_problems": len(problems), "n": cfg.samples, "margin": cfg.margin, "teacher_acc": t_acc,
               "teacher_stderr": t["stderr"], "teacher_mean_length": t_len, "teacher_truncated_frac": t["truncated_frac"],
               "max_new_tokens": cfg.max_new_tokens, "rows": rows}
    write_json(run.path / "summary.json", summary)
    console.print(f"teacher Mean Acc@{cfg.samples} {t_acc:.3f} (mean length {t_len:.0f} tokens)")
    for r in rows:
        console.print(f"  L={r['length']:>6}: Mean Acc@{r['n']} {r['mean_acc']:.3f} +- {r['stderr']:.3f} "
                      f"(mean prefix {r['mean_prefix_tokens']:.1f} tokens)")
    console.print(f"wrote {run.path / 'probe.csv'}")
    return rows


def _prompts(tokenizer: Any, problems: list[Any], cfg: ProbeConfig, teacher_tok: Any = None) -> list[str]:
    from opd_cli.prompts import build_prompt

    return [build_prompt(tokenizer, p.question, template=cfg.template, think=cfg.think, teacher_tokenizer=teacher_tok)
            for p in problems]


def _teacher_solutions(cfg: ProbeConfig, out: Path, problems: list[Any], teacher_path: str, progress: Any,
                       console: Any) -> dict[tuple[str, int], dict]:
    """n graded teacher solutions per problem, from the cache when it is complete."""
    from opd_cli.generation import sample
    from opd_cli.grading import grade
    from opd_cli.models import load_model, load_tokenizer

    cache = out / TEACHER_FILE
    ids = [p.id for p in problems]
    have = _complete(_read_jsonl(cache), ids, cfg.samples)
    if have is not None:
        console.print(f"reusing {len(have)} teacher solutions from {cache}")
        return have
    tok = load_tokenizer(teacher_path, "teacher")
    model = load_model(teacher_path, cfg.dtype, cfg.device, "teacher")
    task = progress.add_task("teacher solutions", total=len(problems) * cfg.samples)
    groups = sample(model, tok, _prompts(tok, problems, cfg, tok), n=cfg.samples, temperature=cfg.temperature,
                    top_p=cfg.top_p, max_new_tokens=cfg.teacher_max_new_tokens, batch_size=cfg.batch_size,
                    seed=cfg.seed, progress=lambda k: progress.advance(task, k))
    recs = []
    for p, group in zip(problems, groups, strict=False):
        for j, s in enumerate(group):
            ok, extracted = grade(p, s.text)
            recs.append({"problem_id": p.id, "sample": j, "text": s.text, "token_ids": list(s.token_ids),
                         "length": s.length, "truncated": bool(s.truncated), "extracted": extracted, "correct": bool(ok)})
    cache.unlink(missing_ok=True)
    _append_jsonl(cache, recs)
    return {(r["problem_id"], r["sample"]): r for r in recs}


def _student_rows(cfg: ProbeConfig, out: Path, problems: list[Any], student_path: str, teacher_path: str,
                  teacher_recs: dict[tuple[str, int], dict], progress: Any, console: Any) -> list[dict]:
    """One row per length (0 first): the student continues once from each teacher solution's prefix."""
    from opd_cli.evaluate import summarize
    from opd_cli.generation import sample
    from opd_cli.grading import grade
    from opd_cli.models import check_same_vocab, load_model, load_tokenizer

    cache = out / SAMPLES_FILE
    done: dict[int, list[dict]] = {}
    for r in _read_jsonl(cache):
        done.setdefault(int(r["length"]), []).append(r)
    ids = [p.id for p in problems]
    lengths = [0] + [L for L in cfg.lengths if L != 0]
    tok = load_tokenizer(student_path, "student")
    teacher_tok = load_tokenizer(teacher_path, "teacher")
    model = None
    rows = []
    for L in lengths:
        recs = _complete(done.get(L, []), ids, cfg.samples)
        if recs is None:
            if model is None:
                model = load_model(student_path, cfg.dtype, cfg.device, "student")
                check_same_vocab(tok, teacher_tok)
            t0 = time.time()
            recs = _continue(cfg, model, tok, teacher_tok, problems, teacher_recs, L, progress, sample, grade)
            _append_jsonl(cache, list(recs.values()))
            console.print(f"  L={L}: sampled in {time.time() - t0:.1f}s")
        got = [[recs[(pid, j)] for j in range(cfg.samples)] for pid in ids]
        acc = summarize([[r["correct"] for r in g] for g in got], [], [])  # Mean Acc@n as `opd eval` computes it
        pre = [r["prefix_tokens"] for g in got for r in g]
        rows.append({"length": L, "mean_acc": acc["mean_acc"], "stderr": acc["stderr"], "n": cfg.samples,
                     "mean_prefix_tokens": sum(pre) / len(pre)})
    return rows


def _continue(cfg: ProbeConfig, model: Any, tok: Any, teacher_tok: Any, problems: list[Any],
              teacher_recs: dict[tuple[str, int], dict], L: int, progress: Any, sample: Any, grade: Any
              ) -> dict[tuple[str, int], dict]:
    """The student's graded continuation of each teacher solution's first ``prefix_length`` tokens (L=0: alone)."""
    prompts = _prompts(tok, problems, cfg, teacher_tok)
    task = progress.add_task(f"student, L={L}", total=len(problems) * cfg.samples)
    advance = lambda k: progress.advance(task, k)  # noqa: E731
    if L == 0:  # the student alone: n independent samples per prompt
        groups = sample(model, tok, prompts, n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed, progress=advance)
        jobs = [(p, j, 0, "", groups[i][j]) for i, p in enumerate(problems) for j in range(cfg.samples)]
    else:
        keys, job_prompts, prefixes, lens = [], [], [], []
        for p, prompt in zip(problems, prompts, strict=False):
            for j in range(cfg.samples):
                t = teacher_recs[(p.id, j)]
                lp = prefix_length(L, int(t["length"]), cfg.margin)
                keys.append((p, j))
                job_prompts.append(prompt)
                lens.append(lp)
                # decode keeps <think>/</think> (added, not special tokens); same vocabulary as the student
                prefixes.append(teacher_tok.decode(t["token_ids"][:lp], skip_special_tokens=False) if lp else "")
        flat = sample(model, tok, job_prompts, n=1, temperature=cfg.temperature, top_p=cfg.top_p,
                      max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed + L,
                      progress=advance, prefixes=prefixes)
        jobs = [(p, j, lp, pre, g[0]) for (p, j), lp, pre, g in zip(keys, lens, prefixes, flat, strict=False)]
    recs = {}
    for p, j, lp, pre, s in jobs:
        ok, extracted = grade(p, pre + s.text)  # the completed solution: prefix + continuation
        recs[(p.id, j)] = {"length": L, "problem_id": p.id, "sample": j, "prefix_tokens": lp, "prefix": pre,
                           "prefix_tokens_encoded": s.prefix_length, "text": s.text, "continuation_tokens": s.length, "truncated": bool(s.truncated),
                           "extracted": extracted, "correct": bool(ok)}
    return recs
