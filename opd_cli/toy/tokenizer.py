"""The toy world's tokenizer, built locally with ``tokenizers`` (no hub access).

One id per printable ASCII character and newline, plus added tokens that ``decode(skip_special_tokens=True)``
keeps: ``<think>`` and ``</think>`` (as in Qwen3), ``plan:`` and every tagged operation of the task (``a+7``,
``c*3``: one token each, as a real tokenizer's merges make frequent strings one token); and special pad / eos /
unk tokens. No chat template, so :func:`opd_cli.core.prompts.build_prompt` uses its plain path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAD = "<pad>"
EOS = "<eos>"
UNK = "<unk>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]  # newline + printable ASCII


def _words() -> tuple[str, ...]:
    from opd_cli.toy.task import OPERATIONS, PLAN_HEAD

    return (THINK_OPEN, THINK_CLOSE, PLAN_HEAD, *OPERATIONS)


WORDS = _words()  # added tokens, matched before the characters


def build_tokenizer(out_dir: Path | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` with one id per character; saved with ``save_pretrained`` into ``out_dir`` if given."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    # BPE with no merges = pure character splitting; Fuse joins the characters back without separators.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, EOS, UNK)])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in WORDS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.model_max_length = 4096
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out_dir))
    return tok


def encode_fast(tok: Any, texts: list[str]) -> list[list[int]]:
    """Ids of ``texts`` for the toy tokenizer, without the tokenizers pipeline (one dict lookup per character).

    Equal to ``tok(texts, add_special_tokens=False)["input_ids"]`` for toy text (tests check it), several times
    faster for the build's 20k training sequences.
    """
    import re

    vocab = tok.get_vocab()
    unk = vocab[UNK]
    words = set(WORDS)
    split = re.compile("(" + "|".join(re.escape(w) for w in sorted(WORDS, key=len, reverse=True)) + ")")
    out = []
    for text in texts:
        ids: list[int] = []
        for part in split.split(text):
            if part in words:
                ids.append(vocab[part])
            elif part:
                ids.extend(vocab.get(ch, unk) for ch in part)
        out.append(ids)
    return out
