"""Models, tokenizers and prompts through the same from_pretrained path real runs use (tiny local models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opd_cli.core.errors import OpdError
from opd_cli.core.models import (
    _check_source,
    check_same_vocab,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from opd_cli.core.prompts import THINK_OPEN, build_prompt


def test_load_local_model_and_tokenizer(tiny_model_dirs) -> None:
    import torch

    student, _ = tiny_model_dirs
    tok = load_tokenizer(str(student))
    model = load_model(str(student), dtype="float32", device="cpu")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert tok.pad_token is not None
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)


def test_sources_hub_ids_and_paths(tmp_path: Path) -> None:
    _check_source("Qwen/Qwen3-8B", "model")  # a hub id takes the same path (not loadable offline, so not loaded)
    with pytest.raises(OpdError, match="is not a folder"):
        _check_source(str(tmp_path / "missing"), "--model")
    with pytest.raises(OpdError, match="is not a folder"):
        load_model("./no/such/dir")


def test_device_and_dtype() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(OpdError, match="unknown --dtype"):
        resolve_dtype("float8")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(OpdError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_same_vocab(tiny_model_dirs) -> None:
    s, t = (load_tokenizer(str(d)) for d in tiny_model_dirs)
    check_same_vocab(s, t, load_model(str(tiny_model_dirs[0])), load_model(str(tiny_model_dirs[1])))
    t.add_tokens(["<new>"])
    with pytest.raises(OpdError, match="sizes"):
        check_same_vocab(s, t)


def test_prompts(tiny_model_dirs) -> None:
    tok = load_tokenizer(str(tiny_model_dirs[0]))  # no chat template: the plain path
    assert build_prompt(tok, "What is 2+2?") == "What is 2+2?\n" + THINK_OPEN + "\n"
    assert build_prompt(tok, "What is 2+2?", think=False) == "What is 2+2?\n"
    with pytest.raises(OpdError, match="needs a tokenizer with a chat template"):
        build_prompt(tok, "q", template="chat")
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert build_prompt(tok, "q") == "<user>q<assistant>" + THINK_OPEN + "\n"
    assert build_prompt(tok, "q", template="plain") == "q\n" + THINK_OPEN + "\n"
    with pytest.raises(OpdError, match="needs a teacher"):
        build_prompt(tok, "q", template="teacher")
    assert build_prompt(None, "q", template="teacher", teacher_tokenizer=tok).startswith("<user>q")


def test_sampling_shapes_and_prefix(tiny_model_dirs) -> None:
    from opd_cli.core.generation import sample

    tok = load_tokenizer(str(tiny_model_dirs[0]))
    model = load_model(str(tiny_model_dirs[0]))
    done = []
    out = sample(model, tok, ["ab\n", "a longer prompt\n"], n=3, max_new_tokens=5, batch_size=4, progress=done.append,
                 prefixes=["", "xyz"])
    assert [len(r) for r in out] == [3, 3] and sum(done) == 6
    for row, pre in zip(out, (0, 3), strict=True):
        for s in row:
            assert s.length == len(s.token_ids) <= 5 and s.prefix_length == pre
            assert s.truncated == (s.length == 5 and s.token_ids[-1] != tok.eos_token_id)
    again = sample(model, tok, ["ab\n", "a longer prompt\n"], n=3, max_new_tokens=5, batch_size=4, prefixes=["", "xyz"])
    assert [[s.token_ids for s in r] for r in again] == [[s.token_ids for s in r] for r in out]  # seeded
