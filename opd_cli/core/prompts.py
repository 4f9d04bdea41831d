"""Prompt building (paper §3: chat template, then ``<think>`` appended so the student answers in the teacher's format).

No torch import here: tokenizers are duck-typed (``chat_template``, ``apply_chat_template``).
"""

from __future__ import annotations

from typing import Any

from opd_cli.core.errors import OpdError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TEMPLATES = ("auto", "chat", "plain", "teacher")


def build_prompt(
    tokenizer: Any,
    question: str,
    *,
    template: str = "auto",
    think: bool = True,
    teacher_tokenizer: Any = None,
    system: str | None = None,
) -> str:
    """The text a model continues for ``question``.

    template: ``auto`` uses the tokenizer's chat template when it has one, plain text otherwise; ``chat`` requires
    one; ``plain`` never uses one; ``teacher`` renders the prompt with the *teacher's* chat template (teacher-aligned
    prompting, Rethinking OPD §5.2) — valid because student and teacher share one vocabulary.
    think: append ``<think>`` and a newline at the end, so generation starts inside the reasoning block.
    """
    if template not in TEMPLATES:
        raise OpdError(f"unknown prompt template {template!r}: use one of {', '.join(TEMPLATES)}")
    source = teacher_tokenizer if template == "teacher" else tokenizer
    if template == "teacher" and teacher_tokenizer is None:
        raise OpdError("--template teacher needs a teacher model (pass --teacher)")
    has_chat = getattr(source, "chat_template", None) is not None
    if template in ("chat", "teacher") and not has_chat:
        raise OpdError(f"--template {template} needs a tokenizer with a chat template; use --template plain")
    if has_chat and template != "plain":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        try:
            text = source.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
        except TypeError:
            text = source.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # Some templates (Qwen3 with enable_thinking) already open the block; never open it twice.
        if think and not text.rstrip().endswith(THINK_OPEN):
            text = text + THINK_OPEN + "\n"
        return text
    text = (system + "\n\n" if system else "") + question.rstrip() + "\n"
    return text + (THINK_OPEN + "\n" if think else "")
