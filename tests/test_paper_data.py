"""Data for the paper-scale recipes, without the network: AMC-23 and DAPO-Math-17K in the registry, loaded from local
parquet files through ``datasets.load_dataset`` as the hub would serve them; the seeded random subsample of
`opd sft-baseline --sample random`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli import data
from opd_cli.core.config import build_config
from opd_cli.core.errors import OpdError
from opd_cli.data import HUB_BENCHMARKS, MATH_INSTRUCTION, Problem, load_benchmark, random_sample, register_source


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``datasets.load_dataset(id, config, split=...)`` answered from a local parquet file per hub id; records each
    call's (id, config, split)."""
    import datasets
    import pandas as pd

    real_load = datasets.load_dataset
    files: dict[str, Path] = {}
    calls: list[tuple] = []

    def serve(dataset_id: str, rows: list[dict]) -> None:
        files[dataset_id] = tmp_path / f"{dataset_id.replace('/', '_')}.parquet"
        pd.DataFrame(rows).to_parquet(files[dataset_id])

    def load_dataset(dataset_id, config=None, split=None, streaming=False):
        calls.append((dataset_id, config, split))
        if dataset_id not in files:
            raise FileNotFoundError(f"Dataset '{dataset_id}' doesn't exist on the Hub")
        return real_load("parquet", data_files=str(files[dataset_id]), split="train", cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return serve, calls


# ------------------------------------------------------------------------------------------------ registry
def test_amc23_is_registered_like_the_other_benchmarks(local_hub) -> None:
    spec = HUB_BENCHMARKS["amc23"]
    assert (spec.dataset_ids, spec.config, spec.split, spec.question, spec.answer, spec.id_column, spec.answer_type) == (
        ("math-ai/amc23",), None, "test", "question", "answer", "id", "math")
    assert "amc23" in data.benchmark_names()
    serve, calls = local_hub
    serve("math-ai/amc23", [{"id": 0, "question": "What is $3^3$?", "answer": 27.0, "url": "u0"},
                            {"id": 1, "question": "Half of 5?", "answer": 2.5, "url": "u1"}])
    a, b = load_benchmark("amc23")
    assert calls == [("math-ai/amc23", None, "test")]
    assert (a.id, a.question, a.answer, a.answer_type) == ("0", "What is $3^3$?\n\n" + MATH_INSTRUCTION, "27", "math")
    assert (b.id, b.answer) == ("1", "2.5")  # a float answer column: integers lose their ".0", others stay
    from opd_cli.core.grading import grade

    assert grade(a, r"so \boxed{27}")[0] and not grade(a, r"\boxed{28}")[0]


def test_eval_takes_amc23() -> None:
    from opd_cli.evaluate.config import EvalConfig

    assert build_config(EvalConfig, None, {"benchmark": ["aime24", "amc23"]}).benchmark == ["aime24", "amc23"]
    with pytest.raises(OpdError, match="unknown benchmark 'amc24'"):
        build_config(EvalConfig, None, {"benchmark": ["amc24"]})


DAPO_ROWS = [
    {"prompt": f"Find x{i}.", "solution": str(10 + i), "data_source": "math_dapo",
     "source_prompt": [{"role": "user", "content": f"Solve the following math problem step by step. Find x{i}. Answer:"}],
     "extra_info": {"index": f"idx-{i}"}}
    for i in range(3)
]


def test_dapo_sources_keep_dapos_template_or_add_the_boxed_one(local_hub) -> None:
    serve, calls = local_hub
    serve("open-r1/DAPO-Math-17k-Processed", DAPO_ROWS)
    own, boxed = load_benchmark("dapo-math-17k"), load_benchmark("dapo-math-17k-boxed")
    assert calls == [("open-r1/DAPO-Math-17k-Processed", "all", "train")] * 2
    assert [p.question for p in own] == [r["source_prompt"][0]["content"] for r in DAPO_ROWS]  # verbatim
    assert [p.question for p in boxed] == [f"Find x{i}.\n\n{MATH_INSTRUCTION}" for i in range(3)]
    assert [(p.id, p.answer) for p in own] == [(p.id, p.answer) for p in boxed] == [(f"idx-{i}", str(10 + i)) for i in range(3)]


def test_a_missing_dataset_is_one_line(local_hub) -> None:
    with pytest.raises(OpdError, match=r"cannot load hub dataset math-ai/amc23 split test .*--data FILE"):
        load_benchmark("amc23")


# ------------------------------------------------------------------------------------- random subsample
def write_rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "question": f"q{i}", "answer": str(i), "response": f"r {i}"}) + "\n"
                            for i in range(n)))
    return path


def test_random_sample_of_a_file_is_seeded_and_the_right_size(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "rows.jsonl", 200)
    a = random_sample(None, f, 20, seed=0)
    assert len(a) == 20 and len({p.id for p in a}) == 20  # without replacement
    assert [p.id for p in random_sample(None, f, 20, seed=0)] == [p.id for p in a]  # the same seed, the same rows
    b = random_sample(None, f, 20, seed=1)
    assert {p.id for p in b} != {p.id for p in a}
    assert [p.id for p in a] != [f"r{i}" for i in range(20)]  # not the first rows
    assert max(int(p.id[1:]) for p in a) >= 100  # drawn from the whole file
    assert [p.id for p in random_sample(None, f, 500, seed=0)] == [f"r{i}" for i in range(200)]  # k >= rows: all, in order
    with pytest.raises(OpdError, match="at least one problem"):
        random_sample(None, f, 0)


def test_random_sample_of_a_registered_source() -> None:
    register_source("unit-test-sample", lambda limit=None, seed=0: [Problem(str(i), f"q{i}", str(i)) for i in range(300)])
    a, b = random_sample("unit-test-sample", None, 30, seed=4), random_sample("unit-test-sample", None, 30, seed=4)
    assert a == b and len(a) == 30 and len({p.id for p in a}) == 30
    assert {p.id for p in a} != {p.id for p in random_sample("unit-test-sample", None, 30, seed=5)}


def test_sft_sample_random_draws_limit_rows_by_sample_seed(tmp_path: Path) -> None:
    from opd_cli.sft_baseline import SftConfig, sft_problems

    f = write_rows(tmp_path / "rows.jsonl", 200)

    def ids(**kw) -> list[str]:
        return [p.id for p in sft_problems(build_config(SftConfig, None, {"data": str(f), "limit": 25, **kw}))]

    assert ids() == [f"r{i}" for i in range(25)]  # --sample first: the first --limit rows
    first_draw = ids(sample="random", sample_seed=0)
    assert len(first_draw) == 25 and len(set(first_draw)) == 25 and first_draw != ids()
    assert ids(sample="random", sample_seed=0) == first_draw
    assert ids(sample="random", sample_seed=0, seed=3) == first_draw  # the training seed leaves the data alone
    assert set(ids(sample="random", sample_seed=1)) != set(first_draw)


def test_sft_trains_on_the_sample(tmp_path: Path, tiny_model_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_sft hands the drawn problems, and only them, to the teacher-response step."""
    import opd_cli.sft_baseline as sft

    f = write_rows(tmp_path / "rows.jsonl", 200)
    seen: list[str] = []

    def stop(cfg, problems):
        seen.extend(p.id for p in problems)
        raise OpdError("stop here")

    monkeypatch.setattr(sft, "dataset_responses", stop)
    cfg = build_config(sft.SftConfig, None, {"data": str(f), "limit": 12, "sample": "random", "sample_seed": 7,
                                             "student": str(tiny_model_dirs[0]), "output_dir": str(tmp_path / "run")})
    with pytest.raises(OpdError, match="stop here"):
        sft.run_sft(cfg)
    assert seen == [p.id for p in random_sample(None, f, 12, seed=7)]


def test_sft_sample_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from opd_cli.cli import app

    runner = CliRunner()
    for args, message in ((["--sample", "random"], "--sample random draws --limit problems: pass --limit N"),
                          (["--sample", "shuffled", "--limit", "3"], "--sample must be one of first, random, got 'shuffled'")):
        res = runner.invoke(app, ["sft-baseline", *args, "-o", str(tmp_path / "x")])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


@pytest.mark.parametrize("name", ["sft-paper-1.7b.yaml", "sft-paper-8b.yaml", "sft-paper-8b-prefix.yaml",
                                  "sft-paper-rethink-coldstart.yaml"])
def test_paper_sft_recipes_sample_at_random(name: str) -> None:
    from opd_cli.sft_baseline import SftConfig

    cfg = build_config(SftConfig, Path(__file__).resolve().parents[1] / "recipes" / name, {})
    assert cfg.sample == "random" and cfg.limit == {"sft-paper-8b-prefix.yaml": 300 * 128,
                                                    "sft-paper-rethink-coldstart.yaml": 200_000}.get(name, 192_000)
    # the cold start's SFT draws apart from the OPD runs' prompts (their seed 0), the others with seed 0
    assert cfg.sample_seed == (1 if "rethink" in name else 0)
