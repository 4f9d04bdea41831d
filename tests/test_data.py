"""Problem sources: local files (column detection, errors), the hub registry (with a stubbed load_dataset), toy."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from opd_cli import data
from opd_cli.core.errors import OpdError
from opd_cli.data import Problem, load_benchmark, load_file, load_hub, register_source

ROWS = [{"id": "a", "problem": "1+1?", "solution": r"so \boxed{2}", "level": 1},
        {"id": "b", "problem": "2+2?", "solution": r"\boxed{4}", "level": 2}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_autodetects_columns(tmp_path: Path) -> None:
    probs = load_file(write_jsonl(tmp_path / "p.jsonl", ROWS))
    assert [(p.id, p.question, p.answer, p.answer_type) for p in probs] == [("a", "1+1?", "2", "math"), ("b", "2+2?", "4", "math")]
    assert probs[0].meta == {"level": 1}


def test_csv_and_parquet(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"prompt": ["q1", "q2"], "answer": ["A", "B"], "answer_type": ["choice", "choice"]})
    df.to_csv(tmp_path / "p.csv", index=False)
    df.to_parquet(tmp_path / "p.parquet")
    for f in ("p.csv", "p.parquet"):
        probs = load_file(tmp_path / f)
        assert [(p.id, p.question, p.answer, p.answer_type) for p in probs] == [("0", "q1", "A", "choice"), ("1", "q2", "B", "choice")]


def test_named_columns_and_missing_column(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", [{"q": "x", "gold_value": "3"}])
    assert load_file(f, question_column="q", answer_column="gold_value")[0].answer == "3"
    with pytest.raises(OpdError, match="no column 'nope'.*columns are: q, gold_value"):
        load_file(f, question_column="nope")
    with pytest.raises(OpdError, match="no question column found.*columns are: q, gold_value"):
        load_file(f)


def test_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answer": "1"}\n{not json\n')
    with pytest.raises(OpdError, match="line 2 is not valid JSON"):
        load_file(bad)
    pq = tmp_path / "bad.parquet"
    pq.write_text("not parquet")
    with pytest.raises(OpdError, match="cannot read"):
        load_file(pq)
    with pytest.raises(OpdError, match="does not exist"):
        load_file(tmp_path / "missing.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(OpdError, match="unsupported file type"):
        load_file(tmp_path / "p.txt")


def test_registry_and_plugins() -> None:
    names = data.benchmark_names()
    for name in ("math500", "aime24", "aime25", "gpqa", "mmlu-pro", "openthoughts3", "toy", "toy-dev", "toy-ood", "toy-train"):
        assert name in names
    with pytest.raises(OpdError, match="unknown benchmark 'nope'"):
        load_benchmark("nope")
    register_source("unit-test-src", lambda limit=None, seed=0: [Problem(str(i), f"q{i}", str(i)) for i in range(5)])
    assert [p.id for p in load_benchmark("unit-test-src", limit=2)] == ["0", "1"]


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """``datasets.load_dataset`` answering from in-memory tables: the hub code path without the network."""
    import datasets

    tables: dict[str, list[dict]] = {}

    def load_dataset(dataset_id, config=None, split=None, streaming=False):
        if dataset_id not in tables:
            raise FileNotFoundError(f"Dataset '{dataset_id}' doesn't exist on the Hub")
        return datasets.Dataset.from_list(tables[dataset_id])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables


def test_hub_benchmarks(fake_hub: dict) -> None:
    fake_hub["HuggingFaceH4/MATH-500"] = [{"problem": "p", "solution": "s", "answer": r"\frac{1}{2}", "unique_id": "u1"}]
    p = load_benchmark("math500")[0]
    assert (p.id, p.answer, p.answer_type) == ("u1", r"\frac{1}{2}", "math") and "\\boxed{}" in p.question
    # aime25: the first mirror is missing, the second (split "test") answers
    fake_hub["math-ai/aime25"] = [{"problem": "a", "answer": "204", "id": "0"}]
    assert load_benchmark("aime25")[0].answer == "204"

    gpqa_row = {"Question": "Which?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
                "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "Record ID": "r1"}
    fake_hub["Idavidrein/gpqa"] = [gpqa_row]
    a, b = load_benchmark("gpqa", seed=0)[0], load_benchmark("gpqa", seed=0)[0]
    assert a == b and a.answer_type == "choice"  # the shuffle is fixed by the seed
    assert a.meta["options"]["ABCD".index(a.answer)] == "right"
    assert f"{a.answer}) right" in a.question

    fake_hub["TIGER-Lab/MMLU-Pro"] = [{"question_id": i, "question": f"q{i}", "options": ["x", "y", "z"], "answer": "B",
                                       "answer_index": 1, "category": "c"} for i in range(600)]
    m1, m2 = load_benchmark("mmlu-pro"), load_benchmark("mmlu-pro")
    assert len(m1) == 500 and [p.id for p in m1] == [p.id for p in m2] and m1[0].answer == "B"

    fake_hub["open-thoughts/OpenThoughts3-1.2M"] = [{"conversations": [{"from": "human", "value": "Q?"},
                                                                     {"from": "gpt", "value": r"think \boxed{5}"}],
                                                    "domain": "math"}]
    ot = load_benchmark("openthoughts3")[0]
    assert (ot.question, ot.answer, ot.meta["response"]) == ("Q?", "5", r"think \boxed{5}")


def test_load_hub_and_its_errors(fake_hub: dict) -> None:
    fake_hub["me/set"] = [{"prompt": "q", "target": "7"}]
    assert load_hub("me/set", split="train")[0].answer == "7"
    with pytest.raises(OpdError, match="cannot load hub dataset nobody/none"):
        load_hub("nobody/none")
    with pytest.raises(OpdError, match="columns are: prompt, target"):
        load_hub("me/set", question_column="question")


def test_toy_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import opd_cli.toy.build as build

    rows = [{"id": "t0", "question": "start 4; apply by tag, mod 10: a+1", "answer": "5", "solution": "plan: a+1\n..."}]
    write_jsonl(tmp_path / "ood.jsonl", rows)
    fake = SimpleNamespace(split_path=lambda name: tmp_path / f"{name}.jsonl")
    monkeypatch.setattr(build, "ensure_world", lambda *a, **k: fake)
    p = load_benchmark("toy-ood")[0]
    assert (p.id, p.answer, p.meta["response"]) == ("t0", "5", "plan: a+1\n...")


@pytest.fixture
def openthoughts_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 10,000-row OpenThoughts-like parquet served by ``datasets.load_dataset`` as the hub would: memory-mapped
    Arrow when not streaming. Returns (set_rows, converted) where ``converted`` lists each row index turned into a
    Problem."""
    import datasets
    import pandas as pd

    real_load = datasets.load_dataset
    state: dict = {}

    def set_rows(n: int) -> None:
        rows = [{"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": rf"\boxed{{{i}}}"}]}
                for i in range(n)]
        state["file"] = tmp_path / f"ot{n}.parquet"
        pd.DataFrame(rows).to_parquet(state["file"])

    def load_dataset(dataset_id, config=None, split=None, streaming=False):
        assert dataset_id == "open-thoughts/OpenThoughts3-1.2M"
        return real_load("parquet", data_files=str(state["file"]), split="train", streaming=streaming,
                         cache_dir=str(tmp_path / "cache"))

    converted: list[int] = []
    real_convert = data.openthoughts_problem
    monkeypatch.setattr(data, "openthoughts_problem", lambda row, i: converted.append(i) or real_convert(row, i))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    set_rows(10_000)
    return set_rows, converted


def test_training_questions_sample_only_what_a_run_uses(openthoughts_hub) -> None:
    from opd_cli.data import load_training_questions

    set_rows, converted = openthoughts_hub
    a = load_training_questions("openthoughts3", needed=64, limit=None, seed=0)
    assert len(a) == 64 and len(converted) == 64  # only the sampled rows became Problems
    idx = [int(p.id) for p in a]
    assert all(p.question == f"Q{p.id}" and p.answer == p.id for p in a)  # each problem is its own row
    assert len(set(idx)) == 64 and min(idx) < 1_000 and max(idx) > 9_000  # drawn from across the set
    assert [p.id for p in load_training_questions("openthoughts3", needed=64, seed=0)] == [p.id for p in a]
    assert load_training_questions("openthoughts3", needed=16, seed=0) == a[:16]  # a shorter run: a's first prompts
    assert {p.id for p in load_training_questions("openthoughts3", needed=64, seed=1)} != set(p.id for p in a)

    # --limit keeps its meaning, "only the first N prompts": a sample from within them, or all of them in order
    converted.clear()
    within = load_training_questions("openthoughts3", needed=64, limit=300, seed=0)
    assert len(within) == 64 and max(int(p.id) for p in within) < 300 and len(converted) == 64
    first = load_training_questions("openthoughts3", needed=64, limit=40, seed=0)
    assert [p.id for p in first] == [str(i) for i in range(40)]
    assert first == load_benchmark("openthoughts3", limit=40)

    # a source with no more rows than the run needs: exactly what load_benchmark gives, in its order
    set_rows(50)
    assert load_training_questions("openthoughts3", needed=64, seed=3) == load_benchmark("openthoughts3")
    assert load_training_questions("openthoughts3", needed=64, limit=1_000, seed=3) == load_benchmark("openthoughts3")


def test_training_questions_of_small_sources_are_unchanged() -> None:
    from opd_cli.data import load_training_questions

    register_source("unit-test-train", lambda limit=None, seed=0: [Problem(str(i), f"q{i}", str(i)) for i in range(500)])
    assert load_training_questions("unit-test-train", needed=8, limit=None, seed=5) == load_benchmark("unit-test-train")
    assert load_training_questions("unit-test-train", needed=8, limit=20, seed=5) == load_benchmark("unit-test-train", limit=20)
    with pytest.raises(OpdError, match="unknown benchmark 'nope'"):
        load_training_questions("nope", needed=8)
    with pytest.raises(OpdError, match="at least one prompt"):
        load_training_questions("unit-test-train", needed=0)
