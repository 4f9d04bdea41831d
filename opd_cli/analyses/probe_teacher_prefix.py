"""`opd probe-teacher-prefix`: how far does one model's prefix carry the other model?

``--prefix-from teacher`` (default; prefix-OPD paper Fig. 3): the teacher writes, the untrained student continues.
``--prefix-from student`` (Rethinking-OPD §6.1, Fig. 11b): the student writes, the teacher continues.

1. The writer writes ``n`` full solutions per problem (cached in ``<writer>_samples.jsonl``, reused on
   ``--if-exists resume``); its own Mean Acc@n is ``<writer>_acc`` in summary.json.
2. For each length L, each written solution j of length ``L_r`` gives a prefix of its first tokens:
   teacher prefix ``min(L, L_r - margin)`` (:func:`prefix_length`); student prefix the same, also cut before the
   student's first ``</think>`` / ``\\boxed`` (:func:`student_prefix_length`).
3. The other model continues once from each prefix (prompt, then the forced prefix, then sampling up to
   ``--max-new-tokens`` new tokens); the completed solution (prefix + continuation) is graded.
4. L = 0 is the continuing model alone (n plain samples per problem).

Outputs (docs/run-format.md, "Analyses"): ``probe.csv`` (length, mean_acc, stderr, n, mean_prefix_tokens; a
student-prefix run adds gain and prefix_from), ``summary.json`` (the rows, the writer's accuracy, prefix_from) and
``samples.jsonl`` with every graded continuation (also the resume cache: finished lengths are not sampled again).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.config import check, field
from opd_cli.toy.world import check_toy_student

COLUMNS = ("length", "mean_acc", "stderr", "n", "mean_prefix_tokens")
STUDENT_COLUMNS = (*COLUMNS, "gain", "prefix_from")  # --prefix-from student: gain = mean_acc - student_acc
PREFIX_FROM = ("teacher", "student")
TEACHER_FILE = "teacher_samples.jsonl"  # the writer's solutions: <writer>_samples.jsonl
STUDENT_FILE = "student_samples.jsonl"
SAMPLES_FILE = "samples.jsonl"
ANSWER_MARKERS = ("</think>", "\\boxed", "\\fbox")  # what opd_cli.core.grading reads an answer from


@dataclass
class ProbeConfig:
    command = "probe-teacher-prefix"

    lengths: list[int] = field([2048, 4096, 6144, 8192], help="Prefix lengths L in tokens, e.g. 2048,4096 (L = 0, the "
                                                             "continuing model alone, is always added).")
    prefix_from: str = field("teacher", help="Who writes the solutions whose first L tokens are given: teacher (Fig. 3: "
                                             "the student continues) | student (Rethinking-OPD Fig. 11b: the teacher "
                                             "continues).")
    margin: int = field(512, help="Prefix = min(L, L_r - margin) tokens, L_r = the written solution's length (0 = no "
                                  "guard); a student prefix also stops before the student's first </think> or \\boxed.")
    student: str | None = field(None, help="Untrained student: hub id or folder (default: the toy student).")
    toy_student: str = field("large", help="Without --student: the toy world's large (student/) or small (student-small/) student.")
    teacher: str | None = field(None, help="Teacher: hub id or folder (default: the toy teacher).")
    benchmark: str = field("aime24", help="Registered benchmark: aime24, math500, toy-dev, ...")
    data: str | None = field(None, help="Local jsonl/parquet/csv file of problems (instead of --benchmark).")
    question_column: str | None = field(None, help="Column with the problem text for --data.")
    answer_column: str | None = field(None, help="Column with the gold answer for --data.")
    limit: int = field(0, help="Use only the first N problems (0 = all).")
    samples: int = field(16, help="Written solutions per problem = continuations per L (n of Mean Acc@n).")
    teacher_max_new_tokens: int = field(32768, help="Length cap in tokens of the written solutions (the teacher's; the "
                                                    "student's with --prefix-from student).")
    max_new_tokens: int = field(32768, help="New tokens the continuing model (the student; the teacher with "
                                            "--prefix-from student) may write after the prompt + prefix.")
    temperature: float = field(1.0, help="Sampling temperature (teacher and student).")
    top_p: float = field(1.0, help="Nucleus sampling (1.0 = off).")
    batch_size: int = field(16, help="Sequences per generate call.")
    template: str = field("auto", help="Prompt template: auto | chat | plain | teacher.")
    think: bool = field(True, help="Append <think> to the prompt.")
    dtype: str = field("auto", help="auto | float32 | bfloat16 | float16.")
    device: str = field("auto", help="auto | cpu | cuda.")
    seed: int = field(0, help="Sampling seed.")
    output_dir: str | None = field(None, help="Run folder (default: runs/probe-<teacher|student>-prefix-<benchmark>).")
    if_exists: str = field("raise", help="Existing run folder: raise | resume (reuse the written solutions and finished "
                                         "lengths) | overwrite.")

    def __post_init__(self) -> None:
        check(self.prefix_from in PREFIX_FROM, f"--prefix-from must be teacher or student, got {self.prefix_from!r}")
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

    @property
    def writer(self) -> str:
        return self.prefix_from

    @property
    def continuer(self) -> str:
        return "student" if self.prefix_from == "teacher" else "teacher"


# ------------------------------------------------------------------------------------------- pure maths
def prefix_length(L: int, L_r: int, margin: int) -> int:
    """Teacher tokens given to the student for probe length ``L``: ``min(L, L_r - margin)``, never negative.

    Paper §3 (Fig. 3): ``L_p <- min(L_p, L_r - 512)`` so the teacher's final answer is unlikely to be in the prefix.
    """
    return max(0, min(L, L_r - margin))


def answer_free_tokens(token_ids: Sequence[Any], decode: Callable[[Sequence[Any]], str],
                       markers: Sequence[str] = ANSWER_MARKERS) -> int:
    """The longest head of ``token_ids`` whose text (``decode``) holds no marker in full; all of them if none does.

    Binary search: once a marker is in the text of a head it stays in every longer head, so ~log2(len) decodes.
    """
    def has_marker(k: int) -> bool:
        text = decode(token_ids[:k])
        return any(m in text for m in markers)

    if not has_marker(len(token_ids)):
        return len(token_ids)
    lo, hi = 0, len(token_ids)  # invariant: head lo has no marker, head hi has one
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if has_marker(mid) else (mid, hi)
    return lo


def student_prefix_length(L: int, L_r: int, margin: int, answer_free: int) -> int:
    """Student tokens given to the teacher for probe length ``L``: ``min(L, L_r - margin, answer_free)``, never
    negative (``answer_free`` from :func:`answer_free_tokens`).

    The margin alone (Fig. 3's rule) assumes the answer sits at the end. An untrained student often states one and
    keeps writing, or is cut by the length cap; stopping before its first ``</think>`` / ``\\boxed`` keeps its own
    answer out, so the graded answer is the teacher's.
    """
    return max(0, min(L, L_r - margin, answer_free))


def _prefix_tokens(cfg: ProbeConfig, rec: dict, L: int) -> int:
    if cfg.prefix_from == "teacher":
        return prefix_length(L, int(rec["length"]), cfg.margin)
    return student_prefix_length(L, int(rec["length"]), cfg.margin, int(rec["answer_free_tokens"]))


# ------------------------------------------------------------------------------------------- caches
def _read_jsonl(path: Path, prefix_from: str = "teacher") -> list[dict]:
    """The records of ``path`` from a run of this direction (records without ``prefix_from`` predate it: teacher)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if r.get("prefix_from", "teacher") == prefix_from:
                out.append(r)
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
    """Written solutions, then the other model from each prefix length; write probe.csv and summary.json."""
    from rich.console import Console

    from opd_cli.core.config import summary_line
    from opd_cli.core.log import progress_bar
    from opd_cli.core.models import check_same_vocab, load_tokenizer
    from opd_cli.core.runs import open_run, write_json
    from opd_cli.data import load_problems
    from opd_cli.evaluate.model import summarize
    from opd_cli.toy.build import toy_model_paths

    console = Console(stderr=True)
    if cfg.student is None or cfg.teacher is None:
        toy_student, toy_teacher = toy_model_paths(cfg.toy_student, console)
    paths = {"student": str(cfg.student or toy_student), "teacher": str(cfg.teacher or toy_teacher)}
    problems = load_problems(cfg.benchmark, cfg.data, cfg.limit, cfg.seed,
                             question_column=cfg.question_column, answer_column=cfg.answer_column)
    ids = [p.id for p in problems]
    check(len(set(ids)) == len(ids), "problem ids are not unique: give --data an id column with distinct values")

    bench = cfg.data and Path(cfg.data).stem or cfg.benchmark
    out_dir = cfg.output_dir or f"runs/probe-{cfg.prefix_from}-prefix-{bench}"
    # `lengths` may grow on resume: earlier lengths and the written solutions are reused, new ones are sampled.
    # `prefix_from` is compared: a folder of one direction never resumes as the other.
    run = open_run(out_dir, cfg.if_exists, cfg, compare_ignore=("lengths",))
    console.print(summary_line(cfg, run.config_file), markup=False, highlight=False)
    guard = f"min(L, L_r - {cfg.margin})" if cfg.writer == "teacher" else \
        f"min(L, L_r - {cfg.margin}, tokens before its first </think> or \\boxed)"
    console.print(f"the {cfg.writer} writes {cfg.samples} solutions per problem; the {cfg.continuer} continues from "
                  f"the first {guard} tokens of each", markup=False, highlight=False)
    if not run.resumed:  # a stale cache from an overwritten run must not leak in
        for name in (TEACHER_FILE, STUDENT_FILE, SAMPLES_FILE):
            (run.path / name).unlink(missing_ok=True)

    toks = {role: load_tokenizer(paths[role], role) for role in ("student", "teacher")}
    check_same_vocab(toks["student"], toks["teacher"])  # a prefix of one model's tokens is fed to the other
    with progress_bar(console) as progress:
        written = _solutions(cfg, run.path, problems, paths, toks, progress, console)
        rows = _continuation_rows(cfg, run.path, problems, paths, toks, written, progress, console)

    w = summarize([[written[(p.id, j)]["correct"] for j in range(cfg.samples)] for p in problems],
                  [r["length"] for r in written.values()], [bool(r["truncated"]) for r in written.values()])
    columns = COLUMNS
    if cfg.prefix_from == "student":  # Fig. 11b's y axis: the teacher's continuation over the student's own solution
        columns = STUDENT_COLUMNS
        for r in rows:
            r.update(gain=r["mean_acc"] - w["mean_acc"], prefix_from="student")
    with (run.path / "probe.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    me = cfg.writer
    summary = {"student": paths["student"], "teacher": paths["teacher"], "benchmark": cfg.data or cfg.benchmark,
               "num_problems": len(problems), "n": cfg.samples, "margin": cfg.margin, f"{me}_acc": w["mean_acc"],
               f"{me}_stderr": w["stderr"], f"{me}_mean_length": w["mean_length"],
               f"{me}_truncated_frac": w["truncated_frac"], "max_new_tokens": cfg.max_new_tokens,
               "prefix_from": cfg.prefix_from, "rows": rows}
    write_json(run.path / "summary.json", summary)
    console.print(f"{me} Mean Acc@{cfg.samples} {w['mean_acc']:.3f} (mean length {w['mean_length']:.0f} tokens)")
    for r in rows:
        gain = f", gain {r['gain']:+.3f}" if "gain" in r else ""
        console.print(f"  L={r['length']:>6}: Mean Acc@{r['n']} {r['mean_acc']:.3f} +- {r['stderr']:.3f} "
                      f"(mean prefix {r['mean_prefix_tokens']:.1f} tokens{gain})")
    console.print(f"wrote {run.path / 'probe.csv'}")
    return rows


def _prompts(tokenizer: Any, problems: list[Any], cfg: ProbeConfig, teacher_tok: Any = None) -> list[str]:
    from opd_cli.core.prompts import build_prompt

    return [build_prompt(tokenizer, p.question, template=cfg.template, think=cfg.think, teacher_tokenizer=teacher_tok)
            for p in problems]


def _solutions(cfg: ProbeConfig, out: Path, problems: list[Any], paths: dict[str, str], toks: dict[str, Any],
               progress: Any, console: Any) -> dict[tuple[str, int], dict]:
    """n graded solutions per problem by the writer (``--prefix-from``), from the cache when it is complete."""
    from opd_cli.core.generation import sample
    from opd_cli.core.grading import grade
    from opd_cli.core.models import load_model

    me = cfg.writer
    cache = out / f"{me}_samples.jsonl"
    ids = [p.id for p in problems]
    have = _complete(_read_jsonl(cache, cfg.prefix_from), ids, cfg.samples)
    if have is not None:
        console.print(f"reusing {len(have)} {me} solutions from {cache}")
        return have
    tok = toks[me]
    model = load_model(paths[me], cfg.dtype, cfg.device, me)
    task = progress.add_task(f"{me} solutions", total=len(problems) * cfg.samples)
    groups = sample(model, tok, _prompts(tok, problems, cfg, toks["teacher"]), n=cfg.samples,
                    temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.teacher_max_new_tokens,
                    batch_size=cfg.batch_size, seed=cfg.seed, progress=lambda k: progress.advance(task, k))

    def decode(token_ids: Sequence[int]) -> str:  # as the prefix is decoded in _continue
        return tok.decode(token_ids, skip_special_tokens=False)

    recs = []
    for p, group in zip(problems, groups, strict=False):
        for j, s in enumerate(group):
            ok, extracted = grade(p, s.text)
            r = {"problem_id": p.id, "sample": j, "text": s.text, "token_ids": list(s.token_ids), "length": s.length,
                 "truncated": bool(s.truncated), "extracted": extracted, "correct": bool(ok),
                 "prefix_from": cfg.prefix_from}
            if me == "student":
                r["answer_free_tokens"] = answer_free_tokens(list(s.token_ids), decode)
            recs.append(r)
    cache.unlink(missing_ok=True)
    _append_jsonl(cache, recs)
    return {(r["problem_id"], r["sample"]): r for r in recs}


def _continuation_rows(cfg: ProbeConfig, out: Path, problems: list[Any], paths: dict[str, str], toks: dict[str, Any],
                       written: dict[tuple[str, int], dict], progress: Any, console: Any) -> list[dict]:
    """One row per length (0 first): the continuing model goes on once from each written solution's prefix."""
    from opd_cli.core.generation import sample
    from opd_cli.core.grading import grade
    from opd_cli.core.models import load_model
    from opd_cli.evaluate.model import summarize

    cache = out / SAMPLES_FILE
    done: dict[int, list[dict]] = {}
    for r in _read_jsonl(cache, cfg.prefix_from):
        done.setdefault(int(r["length"]), []).append(r)
    ids = [p.id for p in problems]
    lengths = [0] + [L for L in cfg.lengths if L != 0]
    model = None
    rows = []
    for L in lengths:
        recs = _complete(done.get(L, []), ids, cfg.samples)
        if recs is None:
            if model is None:
                model = load_model(paths[cfg.continuer], cfg.dtype, cfg.device, cfg.continuer)
            t0 = time.time()
            recs = _continue(cfg, model, toks, problems, written, L, progress, sample, grade)
            _append_jsonl(cache, list(recs.values()))
            console.print(f"  L={L}: sampled in {time.time() - t0:.1f}s")
        got = [[recs[(pid, j)] for j in range(cfg.samples)] for pid in ids]
        acc = summarize([[r["correct"] for r in g] for g in got], [], [])  # Mean Acc@n as `opd eval` computes it
        pre = [r["prefix_tokens"] for g in got for r in g]
        rows.append({"length": L, "mean_acc": acc["mean_acc"], "stderr": acc["stderr"], "n": cfg.samples,
                     "mean_prefix_tokens": sum(pre) / len(pre)})
    return rows


def _continue(cfg: ProbeConfig, model: Any, toks: dict[str, Any], problems: list[Any],
              written: dict[tuple[str, int], dict], L: int, progress: Any, sample: Any, grade: Any
              ) -> dict[tuple[str, int], dict]:
    """The continuing model's graded continuation of each written solution's first prefix tokens (L=0: alone)."""
    tok, writer_tok = toks[cfg.continuer], toks[cfg.writer]
    prompts = _prompts(tok, problems, cfg, toks["teacher"])
    task = progress.add_task(f"{cfg.continuer}, L={L}", total=len(problems) * cfg.samples)
    advance = lambda k: progress.advance(task, k)  # noqa: E731
    if L == 0:  # the continuing model alone: n independent samples per prompt
        groups = sample(model, tok, prompts, n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed, progress=advance)
        jobs = [(p, j, 0, "", groups[i][j]) for i, p in enumerate(problems) for j in range(cfg.samples)]
    else:
        keys, job_prompts, prefixes, lens = [], [], [], []
        for p, prompt in zip(problems, prompts, strict=False):
            for j in range(cfg.samples):
                w = written[(p.id, j)]
                lp = _prefix_tokens(cfg, w, L)
                keys.append((p, j))
                job_prompts.append(prompt)
                lens.append(lp)
                # decode keeps <think>/</think> (added, not special tokens); one vocabulary (checked in run_probe)
                prefixes.append(writer_tok.decode(w["token_ids"][:lp], skip_special_tokens=False) if lp else "")
        flat = sample(model, tok, job_prompts, n=1, temperature=cfg.temperature, top_p=cfg.top_p,
                      max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed + L,
                      progress=advance, prefixes=prefixes)
        jobs = [(p, j, lp, pre, g[0]) for (p, j), lp, pre, g in zip(keys, lens, prefixes, flat, strict=False)]
    recs = {}
    for p, j, lp, pre, s in jobs:
        ok, extracted = grade(p, pre + s.text)  # the completed solution: prefix + continuation
        recs[(p.id, j)] = {"length": L, "problem_id": p.id, "sample": j, "prefix_tokens": lp, "prefix": pre,
                           "prefix_tokens_encoded": s.prefix_length, "text": s.text, "continuation_tokens": s.length, "truncated": bool(s.truncated),
                           "extracted": extracted, "correct": bool(ok), "prefix_from": cfg.prefix_from}
    return recs
