"""Several served teachers against a real vLLM server (`make test-vllm`): one teacher server under two names, the
prompts routed between them by a column, trains as the same server named once (skipped without vLLM)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.vllm

from test_vllm import Server, _engine_gone, models, train  # noqa: E402, F401  (the vLLM tests' fixtures and helpers)


def test_two_names_for_one_teacher_server_train_as_one(models, prompts_file, tmp_path):  # noqa: F811
    rows = [json.loads(x) for x in prompts_file.read_text().splitlines() if x.strip()]
    routed = tmp_path / "routed.jsonl"
    routed.write_text("".join(json.dumps({**r, "teacher": "ab"[i % 2]}) + "\n" for i, r in enumerate(rows)))
    server = Server(models[1], tmp_path / "server.log", "--max-logprobs", "16").start()
    try:
        one = train(models, routed, tmp_path / "one", steps=2, save_every=0, teacher_server=server.url)
        two = train(models, routed, tmp_path / "two", steps=2, save_every=0,
                    teacher_server=[f"a={server.url}", f"b={server.url}"], teacher_column="teacher")
    finally:
        server.stop()
    for a, b in zip(one, two, strict=True):
        assert a["tokens_generated"] == b["tokens_generated"]
        for key in ("loss", "kl"):
            assert b[key] == pytest.approx(a[key], abs=1e-3), key
        assert b["rollouts/a"] + b["rollouts/b"] == 8 and min(b["rollouts/a"], b["rollouts/b"]) > 0
        assert b["tokens_trained/a"] + b["tokens_trained/b"] == b["tokens_trained"]
        assert "kl/a" not in a
