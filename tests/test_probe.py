"""`opd probe-teacher-prefix`: the prefix-length guard, grading of prefix + continuation, caching, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.analyses.probe_teacher_prefix import answer_free_tokens, prefix_length, student_prefix_length
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


@pytest.mark.parametrize(
    ("tokens", "want"),
    [
        (["a", "b", "c"], 3),  # no answer anywhere: every token is answer-free
        (["a", "b", "</think>", "\\boxed{3}"], 2),  # stop before the closing of the reasoning
        (["x", "\\boxed{", "7}", "y", "</think>"], 1),  # an answer stated mid-way counts, not only the last
        (["\\box", "ed{7}", "more"], 1),  # a marker split over two tokens: its first half may stay
        (["\\fbox{2}"], 0),
        ([], 0),
    ],
)
def test_answer_free_tokens(tokens, want):
    assert answer_free_tokens(tokens, "".join) == want


def test_answer_free_tokens_decodes_log_many_heads():
    """A 32k-token solution must not cost one decode per token: ~log2(n) decodes."""
    tokens = ["w"] * 30000 + ["</think>"] + ["w"] * 2000
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return "".join(ids)

    assert answer_free_tokens(tokens, decode) == 30000
    assert len(calls) <= 2 + len(tokens).bit_length()


@pytest.mark.parametrize(
    ("L", "L_r", "margin", "answer_free", "want"),
    [
        (2048, 15000, 512, 15000, 2048),  # long, no answer early: the whole L (as the teacher rule)
        (2048, 15000, 512, 900, 900),  # the student boxed an answer at token 900 and went on: cut before it
        (4096, 4000, 512, 3990, 3488),  # the margin is the tighter guard
        (4096, 32000, 512, 32000, 4096),  # cut by the length cap without any answer
        (2048, 300, 512, 300, 0),  # never negative
        (100, 40, 0, 40, 40),  # no guard and no answer: at most the whole solution
        (0, 1000, 512, 10, 0),
    ],
)
def test_student_prefix_length(L, L_r, margin, answer_free, want):
    assert student_prefix_length(L, L_r, margin, answer_free) == want
    assert student_prefix_length(L, L_r, margin, L_r) == prefix_length(L, L_r, margin)  # no answer: Fig. 3's rule


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
    import opd_cli.core.generation as generation
    from opd_cli.core.generation import Sample

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


def test_probe_student_prefix_smoke_and_resume(tiny_model_dirs, data_file, tmp_path):
    """--prefix-from student: the student writes, the teacher continues; the run says so in every file."""
    from opd_cli.core.models import load_tokenizer

    student, teacher = map(str, tiny_model_dirs)
    out = tmp_path / "probe"
    base = ["probe-teacher-prefix", "--student", student, "--teacher", teacher, "--data", str(data_file), "-n", "2",
            "--teacher-max-new-tokens", "16", "--max-new-tokens", "6", "--margin", "3", "-o", str(out)]
    res = CliRunner().invoke(app, [*base, "--prefix-from", "student", "--lengths", "4,8,40"])
    assert res.exit_code == 0, _output(res)
    rows = _read_csv(out / "probe.csv")
    assert list(rows[0]) == ["length", "mean_acc", "stderr", "n", "mean_prefix_tokens", "gain", "prefix_from"]
    assert [int(r["length"]) for r in rows] == [0, 4, 8, 40]
    assert all(int(r["n"]) == 2 and r["prefix_from"] == "student" for r in rows)
    assert not (out / "teacher_samples.jsonl").exists()

    tok = load_tokenizer(student)
    written = _jsonl(out / "student_samples.jsonl")
    assert len(written) == 4 and all(r["prefix_from"] == "student" and r["length"] == len(r["token_ids"]) for r in written)
    for r in written:  # the stored cap is the rule's, recomputed here from the token ids
        assert r["answer_free_tokens"] == answer_free_tokens(r["token_ids"], lambda i: tok.decode(i, skip_special_tokens=False))
    by_key = {(r["problem_id"], r["sample"]): r for r in written}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prefix_from"] == "student" and "teacher_acc" not in summary
    assert summary["student_acc"] == pytest.approx(sum(r["correct"] for r in written) / 4)

    samples = _jsonl(out / "samples.jsonl")
    assert {s["prefix_from"] for s in samples} == {"student"}
    for row in rows:
        L = int(row["length"])
        recs = [s for s in samples if s["length"] == L]
        assert len(recs) == 4
        src = [by_key[(s["problem_id"], s["sample"])] for s in recs]
        want = [student_prefix_length(L, w["length"], 3, w["answer_free_tokens"]) for w in src]
        assert [s["prefix_tokens"] for s in recs] == want
        assert [s["prefix"] for s in recs] == [tok.decode(w["token_ids"][:n], skip_special_tokens=False) if n else ""
                                               for w, n in zip(src, want, strict=True)]
        assert float(row["mean_prefix_tokens"]) == pytest.approx(sum(want) / len(want))
        per_problem = [sum(s["correct"] for s in recs if s["problem_id"] == p["id"]) / 2 for p in PROBLEMS]
        assert float(row["mean_acc"]) == pytest.approx(sum(per_problem) / len(per_problem))
        assert float(row["gain"]) == pytest.approx(float(row["mean_acc"]) - summary["student_acc"])
    # L = 0 is the teacher alone: plain samples, no prefix; L = 40 is cut by the 16-token solutions (16 - 3 = 13)
    assert all(s["prefix"] == "" and s["prefix_tokens"] == 0 for s in samples if s["length"] == 0)
    assert float(rows[-1]["mean_prefix_tokens"]) <= 13

    # the other direction never resumes this folder: one line, exit 2, nothing rewritten
    before = {f.name: f.read_text() for f in out.iterdir()}
    res = CliRunner().invoke(app, [*base, "--lengths", "4,8,40", "--if-exists", "resume"])
    assert res.exit_code == 2, _output(res)
    assert "prefix_from" in _output(res) and len(_output(res).strip().splitlines()) == 1
    assert {f.name: f.read_text() for f in out.iterdir()} == before
    # the same direction resumes: the student's solutions and finished lengths are reused, only L=2 is sampled
    res = CliRunner().invoke(app, [*base, "--prefix-from", "student", "--lengths", "2,4,8,40", "--if-exists", "resume"])
    assert res.exit_code == 0, _output(res)
    assert (out / "student_samples.jsonl").read_text() == before["student_samples.jsonl"]
    after = _jsonl(out / "samples.jsonl")
    assert after[: len(samples)] == samples and {s["length"] for s in after[len(samples):]} == {2}


def test_probe_student_prefix_keeps_the_students_answer_out(tiny_model_dirs, data_file, tmp_path, monkeypatch):
    """Scripted: the student boxes the right answer early and writes on; the teacher alone (L=0) answers right and
    otherwise writes nothing. Accuracy at L>0 must then be 0: the prefix stops before the student's </think>, even
    at L beyond the whole solution with no margin, where Fig. 3's rule would hand over the student's answer."""
    import opd_cli.core.generation as generation
    from opd_cli.core.generation import Sample
    from opd_cli.core.models import load_tokenizer

    answers = {p["question"]: p["answer"] for p in PROBLEMS}
    calls = []  # (cap, hidden size of the model that sampled): the student is 32 wide, the teacher 48

    def fake_sample(model, tokenizer, prompts, n, prefixes=None, max_new_tokens=0, **kw):
        calls.append((max_new_tokens, model.config.hidden_size))
        out = []
        for i, prompt in enumerate(prompts):
            answer = answers[next(q for q in answers if q in prompt)]
            if max_new_tokens == 99:  # the student writes (--teacher-max-new-tokens caps the written solutions)
                text = "a+7 b-2\n</think>\n\\boxed{" + answer + "} a+7 a+7 a+7 a+7"
            else:  # the teacher continues: right when alone, silent after a prefix
                text = "" if prefixes and prefixes[i] else "</think>\\boxed{" + answer + "}"
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append([Sample(text, ids, len(ids), False) for _ in range(n)])
        return out

    monkeypatch.setattr(generation, "sample", fake_sample)
    student, teacher = map(str, tiny_model_dirs)
    out = tmp_path / "p"
    res = CliRunner().invoke(app, ["probe-teacher-prefix", "--prefix-from", "student", "--student", student, "--teacher",
                                   teacher, "--data", str(data_file), "-n", "2", "--teacher-max-new-tokens", "99",
                                   "--max-new-tokens", "4", "--margin", "0", "--lengths", "2,100", "-o", str(out)])
    assert res.exit_code == 0, _output(res)
    assert calls == [(99, 32), (4, 48), (4, 48), (4, 48)]  # the student writes; the teacher at L = 0, 2, 100
    rows = {int(r["length"]): r for r in _read_csv(out / "probe.csv")}
    assert {L: float(r["mean_acc"]) for L, r in rows.items()} == {0: 1.0, 2: 0.0, 100: 0.0}
    assert {L: float(r["gain"]) for L, r in rows.items()} == {0: 0.0, 2: -1.0, 100: -1.0}
    assert json.loads((out / "summary.json").read_text())["student_acc"] == 1.0
    close = load_tokenizer(student).convert_tokens_to_ids("</think>")
    for w in _jsonl(out / "student_samples.jsonl"):
        assert w["answer_free_tokens"] == w["token_ids"].index(close) < w["length"]
        at_100 = [s for s in _jsonl(out / "samples.jsonl") if s["length"] == 100 and s["problem_id"] == w["problem_id"]]
        assert all(s["prefix_tokens"] == w["answer_free_tokens"] and "boxed" not in s["prefix"] for s in at_100)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lengths", "8,abc"], "integer"),
        (["--lengths", "8,1.5"], "integer"),
        (["--lengths", "8,-16"], "non-negative"),
        (["--margin", "-1"], "--margin"),
        (["--prefix-from", "nobody"], "--prefix-from"),
        (["--prefix-from", "student", "--lengths", "8,-16"], "non-negative"),
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
    from opd_cli.core.config import build_config

    assert recipe.read_text().startswith(f"# opd probe-teacher-prefix --recipe recipes/{recipe.name}")
    cfg = build_config(ProbeConfig, recipe)
    assert cfg.lengths == sorted(cfg.lengths) and cfg.margin >= 0
