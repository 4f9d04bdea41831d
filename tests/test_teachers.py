"""Several served teachers (`opd train --teacher-server NAME=URL ... --teacher-column COL`): parsing, routing each
prompt's rollout to its teacher, per-teacher metrics, and bad input. The teachers' servers are replaced by fake
clients that score with local models (the real server is tests/test_vllm.py's)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.config import build_config
from opd_cli.core.errors import OpdError
from opd_cli.core.runs import read_metrics
from opd_cli.train.config import TrainConfig, parse_teacher_servers

BIG, SELF = "http://127.0.0.1:8101", "http://127.0.0.1:8102"


@pytest.fixture(autouse=True)
def vllm_here(monkeypatch):
    """These tests stand in for the servers themselves, so they run where vLLM (which TRL's client needs) is not
    installed; the one test of that case sets it back to False."""
    from opd_cli.core import generation

    monkeypatch.setattr(generation, "vllm_available", lambda: True)


def test_parse_teacher_servers():
    assert parse_teacher_servers(["http://h:1/"]) == {"default": "http://h:1"}
    assert list(parse_teacher_servers(["math=http://a:1", "code=https://b:2"]).items()) == [
        ("math", "http://a:1"), ("code", "https://b:2")]
    cfg = build_config(TrainConfig, None, {"teacher_server": "http://h:1"})  # a recipe's single URL, as before
    assert cfg.teacher_server == ["http://h:1"] and cfg.teachers == {"default": "http://h:1"}
    cfg = build_config(TrainConfig, None, {"teacher_server": ["a=http://h:1", "b=http://h:2"], "teacher_column": "t"})
    assert cfg.teachers == {"a": "http://h:1", "b": "http://h:2"}
    for specs, needle in [(["a=http://h:1", "a=http://h:2"], "twice"), (["http://h:1", "http://h:2"], "name each one"),
                          (["a b=http://h:1"], "a teacher's name"), (["a=h:1"], "must be a URL")]:
        with pytest.raises(OpdError, match=needle):
            parse_teacher_servers(specs)


def test_served_teachers_scatter_each_row_from_its_teacher(monkeypatch):
    """ServedTeachers sends teacher i exactly the rows routed to it (one request each) and puts its answers back in
    those rows."""
    import opd_cli.core.served_teacher as st

    calls = []

    class Fake:
        def __init__(self, url, topk, timeout):
            self.url, self.topk = url, topk

        def score(self, prompt_ids, prompt_mask, completion_ids, completion_mask):
            calls.append((self.url, prompt_ids[:, -1].tolist()))
            B, T = completion_ids.shape
            tag = float(self.url[-1])  # teacher i answers i for every token
            return {"teacher_logp": torch.full((B, T), -tag) - prompt_ids[:, -1:].float(),
                    "teacher_top_ids": completion_ids[..., None].repeat(1, 1, self.topk),
                    "teacher_top_logp": torch.full((B, T, self.topk), -tag)}

    monkeypatch.setattr(st, "ServedTeacher", Fake)
    teachers = st.ServedTeachers({"x": "http://h/1", "y": "http://h/2", "z": "http://h/3"}, 2, 1.0)
    prompt = torch.tensor([[0, 10], [0, 11], [7, 12], [0, 13], [0, 14]])
    comp = torch.arange(15).reshape(5, 3)
    route = torch.tensor([1, 0, 1, 1, 0])  # nothing for z: it gets no request
    out = teachers.score(prompt, (prompt > 0).long(), comp, torch.ones_like(comp), route)
    assert sorted(calls) == [("http://h/1", [11, 14]), ("http://h/2", [10, 12, 13])]
    assert out["teacher_logp"][:, 0].tolist() == [-12.0, -12.0, -14.0, -15.0, -15.0]  # -(teacher) - (row's last prompt id)
    assert torch.equal(out["teacher_top_ids"][..., 1], comp) and out["teacher_top_logp"].shape == (5, 3, 2)
    calls.clear()
    one = st.ServedTeachers({"default": "http://h/1"}, 2, 1.0).score(prompt, (prompt > 0).long(), comp, torch.ones_like(comp))
    assert len(calls) == 1 and one["teacher_logp"][0, 0].item() == -11.0


# ------------------------------------------------------------------------------------------------ a routed run
@pytest.fixture
def routed_data(prompts_file, tmp_path):
    """The test prompts with a `teacher` column: even rows `big`, odd rows `self`."""
    rows = [json.loads(x) for x in prompts_file.read_text().splitlines() if x.strip()]
    for i, r in enumerate(rows):
        r["teacher"] = "big" if i % 2 == 0 else "self"
    path = tmp_path / "routed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, {r["question"]: r["teacher"] for r in rows}


@pytest.fixture
def fake_servers(monkeypatch, tiny_model_dirs):
    """No servers: `connect` records the URL it was asked for, and each teacher client scores with a local model,
    BIG with the tiny teacher, SELF with the student's own initial weights (so its KL estimate at step 1 is 0)."""
    from transformers import AutoModelForCausalLM

    import opd_cli.core.served_teacher as st
    import opd_cli.core.vllm_engine as ve
    from opd_cli.core import maths

    connected, scored = [], []
    models = {BIG: tiny_model_dirs[1], SELF: tiny_model_dirs[0]}
    monkeypatch.setattr(ve, "connect", lambda url, *a, **k: connected.append(url))

    class LocalTeacher:
        def __init__(self, url, topk, timeout):
            self.url, self.topk = url, topk
            self.model = AutoModelForCausalLM.from_pretrained(str(models[url]), dtype=torch.float32).eval()

        def score(self, prompt_ids, prompt_mask, completion_ids, completion_mask):
            scored.append((self.url, prompt_ids.clone(), prompt_mask.clone()))
            ids, attn = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
            T = completion_ids.shape[1]
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
            logq = torch.log_softmax(logits[:, -T - 1 : -1].float(), -1)
            top = logq.topk(self.topk, -1)
            valid = completion_mask.bool()
            return {"teacher_logp": maths.token_logprobs_BT(logits[:, -T - 1 : -1], completion_ids) * valid,
                    "teacher_top_ids": top.indices * valid[..., None],
                    "teacher_top_logp": top.values.masked_fill(~valid[..., None], float("-inf"))}

    monkeypatch.setattr(st, "ServedTeacher", LocalTeacher)
    return connected, scored


def test_each_prompt_is_scored_by_its_teacher_with_metrics_per_teacher(tiny_model_dirs, routed_data, fake_servers, tmp_path):
    from transformers import AutoTokenizer

    from opd_cli.train.run import run_train

    data, teacher_of = routed_data
    connected, scored = fake_servers
    student, teacher = tiny_model_dirs
    cfg = build_config(TrainConfig, None, dict(
        student=str(student), teacher=str(teacher), data=str(data), steps=2, batch_size=4, micro_batch_size=2,
        max_new_tokens=12, kl_bin=4, save_every=0, output_dir=str(tmp_path / "run"), device="cpu", chunk=8,
        metrics_every=1, teacher_server=[f"big={BIG}", f"self={SELF}"], teacher_column="teacher"))
    run_train(cfg)
    assert connected == [BIG, SELF]  # both servers checked before the run folder was made

    tok = AutoTokenizer.from_pretrained(str(student))
    sent = {BIG: [], SELF: []}  # per step, the questions each teacher was asked to score
    for url, ids, mask in scored:
        texts = tok.batch_decode([i[m.bool()] for i, m in zip(ids, mask, strict=True)], skip_special_tokens=True)
        sent[url].append([next(q for q in teacher_of if q in t) for t in texts])
    assert len(sent[BIG]) == len(sent[SELF]) == 2  # one request per teacher per step
    assert all(teacher_of[q] == "big" for qs in sent[BIG] for q in qs)
    assert all(teacher_of[q] == "self" for qs in sent[SELF] for q in qs)

    rows = read_metrics(tmp_path / "run")
    for step, r in enumerate(rows):
        assert r["rollouts/big"] == len(sent[BIG][step]) and r["rollouts/self"] == len(sent[SELF][step])
        assert r["rollouts/big"] + r["rollouts/self"] == 4
        assert r["tokens_trained/big"] + r["tokens_trained/self"] == r["tokens_trained"]
        weighted = (r["kl/big"] * r["tokens_trained/big"] + r["kl/self"] * r["tokens_trained/self"]) / r["tokens_trained"]
        assert weighted == pytest.approx(r["kl"], rel=1e-9, abs=1e-12)
        assert r["overlap_ratio"] is not None and 0 <= r["overlap_ratio"] <= 1  # top-k overlap on routed top-k
    # step 1: the `self` teacher is the student as it is, so its rows' KL estimate is 0; the other teacher's is not
    assert rows[0]["kl/self"] == pytest.approx(0.0, abs=1e-5)
    assert abs(rows[0]["kl/big"]) > 1e-3


def _bad(args, tiny_model_dirs, data, tmp_path):
    student, teacher = tiny_model_dirs
    keep = tmp_path / "run"
    keep.mkdir(parents=True)
    (keep / "keep.txt").write_text("mine")
    res = CliRunner().invoke(app, ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(data),
                                   "--max-new-tokens", "12", "--device", "cpu", "-o", str(keep), "--if-exists", "overwrite", *args])
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert res.exit_code == 2, res.output
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in keep.iterdir()) == ["keep.txt"]  # the run folder untouched
    return err


def test_a_teacher_name_no_server_gives_is_one_line_exit_2(tiny_model_dirs, routed_data, fake_servers, tmp_path):
    data, _ = routed_data
    rows = data.read_text().splitlines()
    rows[2] = json.dumps({**json.loads(rows[2]), "teacher": "huge"})
    data.write_text("\n".join(rows) + "\n")
    err = _bad(["--teacher-server", f"big={BIG}", "--teacher-server", f"self={SELF}", "--teacher-column", "teacher"],
               tiny_model_dirs, data, tmp_path)
    assert "prompt 3" in err and "'huge'" in err and "known: big, self" in err
    err = _bad(["--teacher-server", f"big={BIG}", "--teacher-server", f"self={SELF}", "--teacher-column", "route"],
               tiny_model_dirs, data, tmp_path / "2")
    assert "no column 'route'" in err


@pytest.mark.parametrize("args,needle", [
    (["--teacher-server", f"a={BIG}", "--teacher-server", f"b={SELF}"], "need --teacher-column"),
    (["--teacher-column", "teacher"], "--teacher-column routes prompts among --teacher-server teachers"),
    (["--teacher-server", f"a={BIG}", "--teacher-server", f"a={SELF}", "--teacher-column", "t"], "twice"),
    (["--teacher-server", BIG, "--teacher-server", SELF, "--teacher-column", "t"], "name each one"),
    (["--teacher-server", f"a={BIG}", "--teacher-server", f"b={SELF}", "--teacher-column", "t", "--loss", "full"],
     "--loss full needs the teacher's whole distribution"),
])
def test_bad_teacher_options_are_one_line_exit_2(args, needle, tiny_model_dirs, prompts_file, tmp_path):
    assert needle in _bad(args, tiny_model_dirs, prompts_file, tmp_path)


def test_a_teacher_server_that_does_not_answer_is_one_line_exit_2(tiny_model_dirs, routed_data, tmp_path, monkeypatch):
    """The second of two teachers has no server: named in one line, before the run folder is touched."""
    import socket

    from opd_cli.core import vllm_engine

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    real, answered = vllm_engine.connect, []

    def first_answers(url, *a, **k):  # the first teacher "answers"; the second is asked for real
        if url == BIG:
            answered.append(url)
            return None
        return real(url, *a, **k)

    monkeypatch.setattr(vllm_engine, "connect", first_answers)
    monkeypatch.setattr("trl.generation.vllm_client.is_vllm_available", lambda **k: True)  # its HTTP side needs none
    data, _ = routed_data
    err = _bad(["--teacher-server", f"big={BIG}", "--teacher-server", f"self={dead}", "--teacher-column", "teacher",
                "--vllm-timeout", "1"], tiny_model_dirs, data, tmp_path)
    assert answered == [BIG] and f"no vLLM server answers at {dead}" in err and "teacher 'self'" in err


def test_a_teacher_server_without_vllm_installed_is_one_line_exit_2(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """TRL's VLLMClient will not start without vLLM: said before anything runs, with the install command."""
    from opd_cli.core import generation

    monkeypatch.setattr(generation, "vllm_available", lambda: False)
    err = _bad(["--teacher-server", BIG], tiny_model_dirs, prompts_file, tmp_path)
    assert "--teacher-server talks to the server through TRL's VLLMClient, which needs vLLM" in err
    assert "make install-vllm" in err


def test_runs_saved_before_several_teachers_still_resume():
    """config.yaml of older runs holds `teacher_server: null`, `[]` or one URL: each compares equal to today's config
    (a real-paper run saved with `[]` was not adopted by window-ablation as a stand-in before `[]` read as None)."""
    from opd_cli.core.config import differing_keys, to_dict, with_defaults

    for value in (None, [], "http://h:1"):
        cfg = build_config(TrainConfig, None, {"teacher_server": value} if value else {})
        saved = {**to_dict(cfg), "teacher_server": value}
        saved.pop("teacher_column")  # a field the old run did not have
        assert differing_keys(with_defaults(saved, cfg), to_dict(cfg)) == [], value
    two = build_config(TrainConfig, None, {"teacher_server": ["a=http://h:1", "b=http://h:2"], "teacher_column": "t"})
    assert differing_keys(with_defaults({**to_dict(two), "teacher_server": "http://h:1"}, two), to_dict(two)) == ["teacher_server"]
    assert differing_keys(with_defaults({**to_dict(two), "teacher_server": []}, two), to_dict(two)) == ["teacher_server"]
