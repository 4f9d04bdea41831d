"""`opd probe-teacher-prefix`: the prefix-length guard, grading of prefix + continuation, caching, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.analyses.probe_teacher_prefix import prefix_length
from opd_cli.cli import app

PROBLEMS = [
    {"id": "p0", "question": "start 4; apply by tag, mod 10: b-2 a+7", "answer": "9"},
    {"id": "p1", "question": "start 1; apply by tag, mod 10: a*3 b+1", "answer": "4"},
]


def _output(result) -> str:
    """stdout and stderr once each (click >= 8.2 already mixes stderr into ``output``)."""
    try:
        err = result.stderr or ""
    except ValueError:  # older click: stderr not captured separately
        err = ""
    return result.output if err in result.output else result.output + err


def _read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("probe_data") / "problems.jsonl"
    f.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return f


# ------------------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize(
    ("L", "L_r", "margin", "want"),
    [
        (2048, 15000, 512, 2048),  # a long teacher response: the whole L
        (4096, 4000, 512, 3488),  # cut so the last 512 tokens (the answer) stay out
        (2048, 300, 512, 0),  # shorter than the margin: never negative
        (8, 8, 0, 8),  # no guard: at most the whole response
        (100, 40, 0, 40),
        (0, 1000, 512, 0),
    ],
)
def test_prefix_length(L, L_r, margin, want):
    assert prefix_length(L, L_r, margin) == want


# ------------------------------------------------------------------------------------------- end to end
def test_probe_smoke_and_resume(tiny_model_dirs, data_file, tmp_path):
    student, teacher = map(str, tiny_model_dirs)
    out = tmp_path / "probe"
    base = ["probe-teacher-prefix", "--student", student, "--teacher", teacher, "--data", str(data_file), "-n", "2",
            "--teacher-max-new-tokens", "16", "--max-new-tokens", "6", "--margin", "3", "-o", str(out)]
    res = CliRunner().invoke(app, [*base, "--lengths", "4,8"])
    assert res.exit_code == 0, _output(res)
    rows = _read_csv(out / "probe.csv")
    assert list(rows[0]) == ["length", "mean_acc", "stderr", "n", "mean_prefix_tokens"]
    assert [int(r["length"]) for r in rows] == [0, 4, 8]
    assert all(int(r["n"]) == 2 for r in rows)

    teacher_recs = _jsonl(out / "teacher_samples.jsonl")
    assert len(teacher_recs) == 4 and all(r["length"] == len(r["token_ids"]) for r in teacher_recs)
    by_key = {(r["problem_id"], r["sample"]): r for r in teacher_recs}
    samples = _jsonl(out / "samples.jsonl")
    for row in rows:
        L = int(row["length"])
        recs = [s for s in samples if s["length"] == L]
        assert len(recs) == 4
        # each continuation starts from min(L, L_r - margin) tokens of *its* teacher solution (L=0: nothing)
        want = [prefix_length(L, by_key[(s["problem_id"], s["sample"])]["length"], 3) for s in recs]
        assert [s["prefix_tokens"] for s in recs] == want
        assert float(row["mean_prefix_tokens"]) == pytest.approx(sum(want) / len(want))
        per_problem = [sum(s["correct"] for s in recs if s["problem_id"] == p["id"]) / 2 for p in PROBLEMS]
        assert float(row["mean_acc"]) == pytest.approx(sum(per_problem) / len(per_problem))
    assert all(s["prefix"] == "" for s in samples if s["length"] == 0)  # L = 0 is the student alone

    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_acc"] == pytest.approx(sum(r["correct"] for r in teacher_recs) / 4)
    assert [r["length"] for r in summary["rows"]] == [0, 4, 8]

    # resume with one more length: the teacher's solutions and finished lengths are reused, only L=12 is sampled
    before_teacher = (out / "teacher_samples.jsonl").read_text()
    res = CliRunner().invoke(app, [*base, "--lengths", "4,8,12", "--if-exists", "resume"])
    assert res.exit_code == 0, _output(res)
    assert (out / "teacher_samples.jsonl").read_text() == before_teacher
    after = _jsonl(out / "samples.jsonl")
    assert after[: len(samples)] == samples and {s["length"] for s in after[len(samples):]} == {12}
    rows2 = _read_csv(out / "probe.csv")
    assert [int(r["length"]) for r in rows2] == [0, 4, 8, 12]
    assert rows2[:3] == rows


def test_probe_grades_prefix_plus_continuation(tiny_model_dirs, data_file, tmp_path, monkeypatch):
    """With scripted generations: the teacher always writes the right answer, the student writes nothing. The
    student is then right exactly when the prefix holds the teacher's whole solution (margin 0, L >= L_r)."""
    import opd_cli.generation as generation
    from opd_cli.generation import Sample

    answers = {p["question"]: p["answer"] for p in PROBLEMS}

    def fake_sample(model, tokenizer, prompts, n, prefixes=None, max_new_tokens=0, **kw):
        out = []
        for i, prompt in enumerate(prompts):
            if max_new_tokens == 99:  # the teacher (see --teacher-max-new-tokens below)
                q = next(q for q in answers if q in prompt)
                text = "x\n</think>\n\\boxed{" + answers[q] + "}"
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                out.append([Sample(text, ids, len(ids), False) for _ in range(n)])
            else:
                pre = tokenizer(prefixes[i], add_special_tokens=False)["input_ids"] if prefixes else []
                out.append([Sample("", [], 0, False, len(pre)) for _ in range(n)])
        return out

    monkeypatch.setattr(generation, "sample", fake_sample)
    student, teacher = map(str, tiny_model_dirs)
    res = CliRunner().invoke(app, ["probe-teacher-prefix", "--student", student, "--teacher", teacher, "--data",
                                   str(data_file), "-n", "2", "--teacher-max-new-tokens", "99", "--max-new-tokens", "4",
                                   "--margin", "0", "--lengths", "5,100", "-o", str(tmp_path / "p")])
    assert res.exit_code == 0, _output(res)
    acc = {int(r["length"]): float(r["mean_acc"]) for r in _read_csv(tmp_path / "p" / "probe.csv")}
    assert acc == {0: 0.0, 5: 0.0, 100: 1.0}
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["teacher_acc"] == 1.0


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lengths", "8,abc"], "integer"),
        (["--lengths", "8,1.5"], "integer"),
        (["--lengths", "8,-16"], "non-negative"),
        (["--margin", "-1"], "--margin"),
    ],
)
def test_probe_bad_input(tmp_path, extra, message):
    res = CliRunner().invoke(app, ["probe-teacher-prefix", *extra, "-o", str(tmp_path / "x")])
    assert res.exit_code == 2, _output(res)
    assert message in _output(res) and len(_output(res).strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("recipe", sorted((Path(__file__).parent.parent / "recipes").glob("probe-*.yaml")), ids=lambda p: p.name)
def test_probe_recipes_load(recipe):
    from opd_cli.analyses.probe_teacher_prefix import ProbeConfig
    from opd_cli.config import build_config

    assert recipe.read_text().startswith(f"# opd probe-teacher-prefix --recipe recipes/{recipe.name}")
    cfg = build_config(ProbeConfig, recipe)
    assert cfg.lengths == sorted(cfg.lengths) and cfg.margin >= 0
