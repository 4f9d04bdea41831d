"""Problems and prompt sources: the benchmark registry (the prefix-OPD paper §4.1), local files, hub datasets and the
toy world, all as one :class:`Problem` list. No torch here; ``datasets`` is imported only when a hub source loads.

Other modules plug in sources with :func:`register_source`; ``load_benchmark(name)`` finds them by name, and
``load_training_questions(name, needed)`` samples only what a training run uses from a large one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opd_cli.core.errors import OpdError

ANSWER_TYPES = ("math", "choice", "short")
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Answer with the letter of the correct option only, within \\boxed{}, e.g. \\boxed{A}."
QUESTION_COLUMNS = ("question", "problem", "prompt", "Question", "Problem", "input", "query")
ANSWER_COLUMNS = ("answer", "final_answer", "gold", "Answer", "target", "label", "solution", "output")
ID_COLUMNS = ("id", "unique_id", "problem_id", "question_id", "ID", "idx")
LETTERS = "ABCDEFGHIJ"


@dataclass
class Problem:
    """One question with its gold answer. ``answer_type``: ``math`` (graded by math-verify), ``choice`` (a letter) or
    ``short`` (a one-word answer named in the first sentence)."""

    id: str
    question: str
    answer: str
    answer_type: str = "math"
    meta: dict[str, Any] = field(default_factory=dict)


Loader = Callable[..., list[Problem]]  # loader(limit: int | None = None, seed: int = 0) -> list[Problem]
Sampler = Callable[..., list[Problem]]  # sampler(needed: int, limit: int | None = None, seed: int = 0) -> list[Problem]


@dataclass(frozen=True)
class HubBenchmark:
    """Where a hub benchmark lives and how its rows become problems."""

    name: str
    dataset_ids: tuple[str, ...]  # tried in order (mirrors)
    config: str | None
    split: str
    question: str
    answer: str
    answer_type: str = "math"
    id_column: str | None = None
    description: str = ""


HUB_BENCHMARKS: dict[str, HubBenchmark] = {
    "math500": HubBenchmark("math500", ("HuggingFaceH4/MATH-500",), None, "test", "problem", "answer", id_column="unique_id",
                            description="MATH-500, 500 competition problems (4 samples in the paper)"),
    "aime24": HubBenchmark("aime24", ("HuggingFaceH4/aime_2024",), None, "train", "problem", "answer", id_column="id",
                           description="AIME 2024, 30 problems; the paper's dev set (16 samples)"),
    "aime25": HubBenchmark("aime25", ("yentinglin/aime_2025", "math-ai/aime25"), None, "train", "problem", "answer",
                           id_column="id", description="AIME 2025, 30 problems (16 samples)"),
    "gpqa": HubBenchmark("gpqa", ("Idavidrein/gpqa",), "gpqa_diamond", "train", "Question", "Correct Answer", "choice",
                         id_column="Record ID", description="GPQA Diamond, 198 questions, gated; options shuffled by seed (4 samples)"),
    "mmlu-pro": HubBenchmark("mmlu-pro", ("TIGER-Lab/MMLU-Pro",), None, "test", "question", "answer", "choice",
                             id_column="question_id", description="MMLU-Pro, a fixed seeded 500-question sample (4 samples)"),
    "openthoughts3": HubBenchmark("openthoughts3", ("open-thoughts/OpenThoughts3-1.2M",), None, "train", "conversations",
                                  "conversations", description="OpenThoughts3 training prompts; meta['response'] = teacher response"),
    # Rethinking OPD's third benchmark and its training prompts
    "amc23": HubBenchmark("amc23", ("math-ai/amc23",), None, "test", "question", "answer", id_column="id",
                          description="AMC 2023, 40 problems (Rethinking OPD: avg@16)"),
    "dapo-math-17k": HubBenchmark("dapo-math-17k", ("open-r1/DAPO-Math-17k-Processed",), "all", "train", "source_prompt",
                                  "solution", description="DAPO-Math-17K prompts in DAPO's own template (Rethinking OPD's default)"),
    "dapo-math-17k-boxed": HubBenchmark("dapo-math-17k-boxed", ("open-r1/DAPO-Math-17k-Processed",), "all", "train",
                                        "prompt", "solution", description="DAPO-Math-17K questions with the \\boxed{} "
                                        "instruction (Rethinking OPD's teacher-aligned template)"),
}
DAPO_SOURCES = ("dapo-math-17k", "dapo-math-17k-boxed")
MMLU_PRO_SAMPLE = 500
TOY_SPLITS = {"toy": "test", "toy-dev": "dev", "toy-ood": "ood", "toy-train": "train"}

_SOURCES: dict[str, Loader] = {}
_SAMPLERS: dict[str, Sampler] = {}


def register_source(name: str, loader: Loader, sampler: Sampler | None = None) -> None:
    """Make ``load_benchmark(name)`` call ``loader(limit=..., seed=...)`` (returns a list of :class:`Problem`).

    ``sampler`` (optional, for sources too large to load whole): ``sampler(needed, limit=..., seed=...)`` returns
    ``needed`` problems drawn at random from the source's first ``limit`` rows (all when None), converting only
    those; :func:`load_training_questions` uses it.
    """
    _SOURCES[name] = loader
    if sampler is None:
        _SAMPLERS.pop(name, None)
    else:
        _SAMPLERS[name] = sampler


def benchmark_names() -> list[str]:
    return sorted(_SOURCES)


def load_benchmark(name: str, limit: int | None = None, seed: int = 0) -> list[Problem]:
    """The problems of a registered benchmark or source; ``limit`` keeps the first N (None or 0 = all)."""
    if name not in _SOURCES:
        raise OpdError(f"unknown benchmark {name!r}: use one of {', '.join(benchmark_names())}, or --data FILE for a local file")
    problems = _SOURCES[name](limit=limit or None, seed=seed)
    return problems[:limit] if limit else problems


def load_training_questions(name: str, needed: int, limit: int | None = None, seed: int = 0) -> list[Problem]:
    """The training prompts of source ``name`` for a run that draws at most ``needed`` (= steps x batch size) of them.

    A source registered with a sampler (openthoughts3, 1.2 M rows) gives a random sample of ``needed`` problems,
    fixed by ``seed``, from its first ``limit`` rows (all rows when None or 0), and converts only those. The sample
    is the first ``needed`` rows of one seeded permutation, in that order: a shorter run's prompts are the first
    ones of a longer run's. Any other source, and one whose first ``limit`` rows (or all rows) number at most
    ``needed``, gives exactly ``load_benchmark(name, limit, seed)``: the same problems in the same order.
    """
    if needed < 1:
        raise OpdError(f"a training run needs at least one prompt, got needed={needed}")
    sampler = _SAMPLERS.get(name)
    if sampler is None or (limit and limit <= needed):
        return load_benchmark(name, limit=limit or None, seed=seed)
    return sampler(needed, limit=limit or None, seed=seed)


def random_sample(
    source: str | None,
    data_file: str | Path | None,
    k: int,
    seed: int = 0,
    *,
    source_seed: int = 0,
    question_column: str | None = None,
) -> list[Problem]:
    """``k`` problems of a registered source or a local file drawn at random without replacement, fixed by ``seed``
    (the first ``k`` of one seeded permutation of all rows), not its first ``k`` rows. A source with a sampler
    (openthoughts3) draws them without loading every row; a source or file of at most ``k`` problems gives all of them
    in order. ``source_seed`` is what the source itself takes as its seed (GPQA's option order)."""
    if k < 1:
        raise OpdError(f"a random sample needs at least one problem, got {k}")
    if not data_file and source in _SAMPLERS:
        return _SAMPLERS[source](k, seed=seed)
    problems = load_problems(source, data_file, seed=source_seed, question_column=question_column)
    if len(problems) <= k:
        return problems
    import numpy as np

    return [problems[i] for i in np.random.default_rng(seed).permutation(len(problems))[:k].tolist()]


def load_problems(
    source: str | None,
    data_file: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    needed: int | None = None,
    question_column: str | None = None,
    answer_column: str | None = None,
) -> list[Problem]:
    """The problems a command works on: a local ``data_file`` (``--data``) when given, else the registered source
    ``source`` (``--benchmark`` / ``--prompts``). ``limit`` keeps the first N (None or 0 = all). ``needed`` marks a
    training run, which samples only the prompts it draws (:func:`load_training_questions`)."""
    if data_file:
        problems = load_file(data_file, question_column=question_column, answer_column=answer_column)[: limit or None]
    elif needed is not None:
        problems = load_training_questions(source, needed, limit=limit or None, seed=seed)
    else:
        problems = load_benchmark(source, limit=limit or None, seed=seed)
    if not problems:
        raise OpdError(f"no problems loaded from {data_file or source}: check --benchmark / --prompts / --data / --limit")
    return problems


# ------------------------------------------------------------------------------------------ local files
def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
            import gzip

            opener = gzip.open if suffix.endswith(".gz") else open
            rows = []
            with opener(path, "rt") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as err:
                            raise OpdError(f"{path} line {i} is not valid JSON ({err.msg}): fix the file (one JSON object per line)") from None
                        if not isinstance(row, dict):
                            raise OpdError(f"{path} line {i} is not a JSON object: each line must be {{\"question\": ..., \"answer\": ...}}")
                        rows.append(row)
            return rows
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise OpdError(f"{path} must hold a JSON list of objects")
            return data
        if suffix in (".parquet", ".csv", ".tsv"):
            import pandas as pd

            if suffix == ".parquet":
                df = pd.read_parquet(path)
            else:
                df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
            return df.to_dict(orient="records")
    except OpdError:
        raise
    except Exception as err:  # pandas/pyarrow/json raise many types for a broken file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise OpdError(f"cannot read {path} ({first}): is it a valid {suffix.lstrip('.')} file?") from None
    raise OpdError(f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl, .json, .parquet or .csv")


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Any, flag: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise OpdError(f"{path} has no column {wanted!r} for the {what}; its columns are: {', '.join(columns)}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise OpdError(
        f"{path}: no {what} column found (looked for {', '.join(candidates[:4])}, ...); its columns are: "
        f"{', '.join(columns)}; name one with {flag}"
    )


def _answer_from(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric answer column (27.0) is graded as the integer it holds
    text = str(value if value is not None else "").strip()
    if "\\boxed" in text:  # a full solution as the answer column: grade against its final boxed answer
        from opd_cli.core.grading import boxed_content

        return boxed_content(text) or text
    return text


def load_file(
    path: str | Path, question_column: str | None = None, answer_column: str | None = None, id_column: str | None = None
) -> list[Problem]:
    """Problems from a local .jsonl / .json / .parquet / .csv file.

    Columns are found by common names (question/problem/prompt, answer/solution/...) unless named. An optional
    ``answer_type`` column (``math`` | ``choice``) sets how each row is graded (default math). Other columns go to
    ``meta``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise OpdError(f"data file {path} does not exist: pass an existing .jsonl/.parquet/.csv file to --data")
    rows = _read_rows(path)
    if not rows:
        raise OpdError(f"{path} has no rows: it must contain at least one problem")
    columns = list(rows[0].keys())
    q_col = _pick_column(columns, question_column, QUESTION_COLUMNS, "question", path, "--question-column")
    a_col = _pick_column(columns, answer_column, ANSWER_COLUMNS, "answer", path, "--answer-column")
    id_col = id_column if id_column is not None else next((c for c in ID_COLUMNS if c in columns), None)
    if id_col is not None and id_col not in columns:
        raise OpdError(f"{path} has no column {id_col!r} for the problem id; its columns are: {', '.join(columns)}")
    problems = []
    for i, row in enumerate(rows):
        missing = [c for c in (q_col, a_col) if c not in row]
        if missing:
            raise OpdError(f"{path} row {i + 1} lacks column(s) {', '.join(missing)}: every row needs a question and an answer")
        kind = str(row.get("answer_type") or "math")
        if kind not in ANSWER_TYPES:
            raise OpdError(f"{path} row {i + 1}: answer_type {kind!r} is not one of {', '.join(ANSWER_TYPES)}")
        meta = {k: v for k, v in row.items() if k not in (q_col, a_col, id_col, "answer_type")}
        pid = str(row[id_col]) if id_col is not None else str(i)
        problems.append(Problem(pid, str(row[q_col]), _answer_from(row[a_col]), kind, meta))
    return problems


# ------------------------------------------------------------------------------------------ hub
def _hub_rows(dataset_id: str, config: str | None, split: str, limit: int | None = None, streaming: bool = False) -> Any:
    try:
        import datasets
    except ImportError:
        raise OpdError("hub datasets need the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split, streaming=streaming)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise OpdError(
            f"cannot load hub dataset {dataset_id}{'/' + config if config else ''} split {split} ({first}): "
            f"check the id, your network and `huggingface-cli login` for gated sets, or use --data FILE"
        ) from None
    if streaming and limit:
        return list(ds.take(limit))
    return ds


def load_hub(
    dataset_id: str,
    config: str | None = None,
    split: str = "test",
    question_column: str | None = None,
    answer_column: str | None = None,
    id_column: str | None = None,
    answer_type: str = "math",
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a hub dataset through ``datasets.load_dataset`` (columns found as in :func:`load_file`)."""
    ds = _hub_rows(dataset_id, config, split)
    columns = list(ds.column_names)
    where = f"hub dataset {dataset_id}"
    q_col = _pick_column(columns, question_column, QUESTION_COLUMNS, "question", where, "--question-column")
    a_col = _pick_column(columns, answer_column, ANSWER_COLUMNS, "answer", where, "--answer-column")
    id_col = id_column or next((c for c in ID_COLUMNS if c in columns), None)
    out = []
    for i, row in enumerate(ds):
        if limit and i >= limit:
            break
        meta = {k: v for k, v in row.items() if k not in (q_col, a_col, id_col)}
        out.append(Problem(str(row[id_col]) if id_col else str(i), str(row[q_col]), _answer_from(row[a_col]), answer_type, meta))
    return out


def _load_first_mirror(spec: HubBenchmark, **kw: Any) -> Any:
    errors = []
    for dataset_id in spec.dataset_ids:
        try:
            return dataset_id, _hub_rows(dataset_id, spec.config, spec.split, **kw)
        except OpdError as err:
            errors.append(str(err))
            # mirrors can name their split differently (math-ai/aime25 has only "test")
            try:
                return dataset_id, _hub_rows(dataset_id, spec.config, "test", **kw)
            except OpdError:
                continue
    raise OpdError(errors[0])


def with_instruction(question: str, answer_type: str) -> str:
    return question.rstrip() + "\n\n" + (CHOICE_INSTRUCTION if answer_type == "choice" else MATH_INSTRUCTION)


def format_choices(question: str, options: list[str]) -> str:
    lines = [f"{LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options)]
    return question.strip() + "\n\n" + "\n".join(lines)


def gpqa_problem(row: dict[str, Any], index: int, seed: int = 0) -> Problem:
    """A GPQA row with its four options shuffled by a fixed per-question seed; the answer is the correct letter."""
    correct = str(row["Correct Answer"]).strip()
    options = [correct] + [str(row[f"Incorrect Answer {k}"]).strip() for k in (1, 2, 3)]
    pid = str(row.get("Record ID") or index)
    rng = random.Random(f"{seed}-{pid}")
    rng.shuffle(options)
    letter = LETTERS[options.index(correct)]
    q = with_instruction(format_choices(str(row["Question"]), options), "choice")
    return Problem(pid, q, letter, "choice", {"options": options, "source": "gpqa_diamond"})


def mmlu_pro_problem(row: dict[str, Any]) -> Problem:
    options = [o for o in row["options"] if str(o).strip() not in ("", "N/A")]
    q = with_instruction(format_choices(str(row["question"]), options), "choice")
    return Problem(str(row["question_id"]), q, str(row["answer"]).strip().upper(), "choice",
                   {"options": options, "category": row.get("category")})


def openthoughts_problem(row: dict[str, Any], index: int) -> Problem:
    turns = row["conversations"]
    user = next((t["value"] for t in turns if t.get("from") in ("human", "user")), "")
    response = next((t["value"] for t in turns if t.get("from") in ("gpt", "assistant")), "")
    from opd_cli.core.grading import boxed_content

    meta = {"response": response, **{k: row[k] for k in ("domain", "source", "difficulty") if k in row}}
    return Problem(str(row.get("id", index)), user, boxed_content(response) or "", "math", meta)


def dapo_problem(row: dict[str, Any], index: int, spec: HubBenchmark) -> Problem:
    """A DAPO-Math-17K row (open-r1's processed copy). ``source_prompt`` holds the prompt as DAPO wrote it (its own
    instruction around the question, a chat message list): used verbatim. ``prompt`` holds the bare question: the
    usual \\boxed{} instruction is added, the template JustRL was trained with (Rethinking OPD §5.2)."""
    value = row[spec.question]
    if isinstance(value, list):  # [{"role": "user", "content": ...}]
        value = next((m.get("content", "") for m in value if isinstance(m, dict) and m.get("role", "user") == "user"), "")
    question = str(value) if spec.question == "source_prompt" else with_instruction(str(value), "math")
    extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    return Problem(str(extra.get("index") or index), question, _answer_from(row[spec.answer]), "math",
                   {"dataset": spec.dataset_ids[0]})


def _hub_benchmark_loader(spec: HubBenchmark) -> Loader:
    def load(limit: int | None = None, seed: int = 0) -> list[Problem]:
        if spec.name == "openthoughts3":  # 1.2M rows: stream only what is asked for
            _, rows = _load_first_mirror(spec, limit=limit, streaming=bool(limit))
            return [openthoughts_problem(r, i) for i, r in enumerate(rows) if not limit or i < limit]
        dataset_id, ds = _load_first_mirror(spec)
        if spec.name in DAPO_SOURCES:
            return [dapo_problem(r, i, spec) for i, r in enumerate(ds)]
        if spec.name == "gpqa":
            return [gpqa_problem(r, i, seed) for i, r in enumerate(ds)]
        if spec.name == "mmlu-pro":
            # fixed sample: seed 0 unless asked, so every run of the paper recipe sees the same 500 questions
            idx = sorted(random.Random(seed).sample(range(len(ds)), min(MMLU_PRO_SAMPLE, len(ds))))
            return [mmlu_pro_problem(ds[i]) for i in idx]
        id_col = spec.id_column if spec.id_column in ds.column_names else None
        return [
            Problem(str(r[id_col]) if id_col else str(i), with_instruction(str(r[spec.question]), spec.answer_type),
                    _answer_from(r[spec.answer]), spec.answer_type, {"dataset": dataset_id})
            for i, r in enumerate(ds)
        ]

    return load


def _openthoughts_sampler(spec: HubBenchmark) -> Sampler:
    def sample(needed: int, limit: int | None = None, seed: int = 0) -> list[Problem]:
        # Not streamed: a non-streaming dataset is memory-mapped Arrow in the local cache (downloaded once, shared
        # by every run), so a uniform sample over all 1.2M rows costs reading `needed` rows, and the same seed
        # draws the same rows whatever the hub's shard layout. A streamed shuffle buffer would see only the few
        # shards it starts from, and download them again for every run.
        _, ds = _load_first_mirror(spec)
        pool = min(len(ds), limit) if limit else len(ds)
        if pool <= needed:  # the run can use every row: all of them in order, as load_benchmark gives them
            idx = list(range(pool))
        else:  # a permutation that does not depend on `needed`, so that smaller samples are its first rows
            import numpy as np

            idx = np.random.default_rng(seed).permutation(pool)[:needed].tolist()
        return [openthoughts_problem(row, i) for i, row in zip(idx, ds.select(idx), strict=True)]

    return sample


for _spec in HUB_BENCHMARKS.values():
    register_source(_spec.name, _hub_benchmark_loader(_spec),
                    _openthoughts_sampler(_spec) if _spec.name == "openthoughts3" else None)


# ------------------------------------------------------------------------------------------ toy world
def _toy_loader(split: str) -> Loader:
    def load(limit: int | None = None, seed: int = 0) -> list[Problem]:
        from opd_cli.toy.build import ensure_world  # builds the toy world on first use

        world = ensure_world()  # one fixed world; `seed` only orders sampling elsewhere
        rows = _read_rows(Path(world.split_path(split)))
        out = []
        for i, r in enumerate(rows):
            if limit and i >= limit:
                break
            meta = {k: v for k, v in r.items() if k not in ("id", "question", "answer")}
            if "solution" in r:
                meta["response"] = r["solution"]
            out.append(Problem(str(r.get("id", i)), str(r["question"]), str(r["answer"]), "math", meta))
        return out

    return load


for _name, _split in TOY_SPLITS.items():
    register_source(_name, _toy_loader(_split))


# ------------------------------------------------------------------------------------------ real-model world
def _real_loader(split: str) -> Loader:
    def load(limit: int | None = None, seed: int = 0) -> list[Problem]:
        from opd_cli.real.world import read_split  # the world `opd real build` made; one line when it is missing

        rows = read_split(split)[: limit or None]
        keep = ("id", "question", "answer", "answer_type")
        return [Problem(str(r["id"]), str(r["question"]), str(r["answer"]), str(r.get("answer_type") or "short"),
                        {k: v for k, v in r.items() if k not in keep}) for r in rows]

    return load


REAL_SPLITS = {"real": "test", "real-dev": "dev", "real-ood": "ood", "real-train": "train"}
for _name, _split in REAL_SPLITS.items():
    register_source(_name, _real_loader(_split))
