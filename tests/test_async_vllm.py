"""`opd train --async` for real: TRL's rollout worker (a spawned child) sampling from a `vllm serve` of the student
on loopback, the weights synced to it through the run folder after every step, a local teacher. Prefix L (and its
linear schedule) caps every rollout; a student server that does not answer is one line. vLLM's CPU build or a GPU
build; skipped without vLLM.
"""

from __future__ import annotations

import pytest
from test_vllm import MEM, Server, _engine_gone, free_port, one_line_exit_2  # noqa: F401  (its helpers and fixture)

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

from opd_cli.core.runs import list_checkpoints, read_metrics  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(student, teacher): random Qwen3s on the toy tokenizer, heads of 32 (vLLM's CPU kernels' smallest)."""
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    root, tok = tmp_path_factory.mktemp("async_models"), build_tokenizer()
    student = save_random_model(root / "student", tok, layers=1, hidden=64, heads=2, seed=1)
    teacher = save_random_model(root / "teacher", tok, layers=2, hidden=64, heads=2, seed=2, tie_embeddings=False)
    return student, teacher


def train_async(models, data, out, port, **over):
    """`opd train --async` of the tiny student against the student server on ``port``: 3 steps of 4 rollouts."""
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    student, teacher = models
    cfg = dict(student=str(student), teacher=str(teacher), data=str(data), steps=3, batch_size=4, micro_batch_size=2,
               kl_bin=4, lr=1e-2, chunk=8, output_dir=str(out), dtype="float32", vllm_memory=MEM, async_rollouts=True,
               backend="vllm", vllm_mode="server", vllm_port=port, max_staleness=1)
    run_train(build_config(TrainConfig, None, {**cfg, **over}))
    return read_metrics(out)


def test_async_rollouts_from_a_server_keep_the_prefix_schedule(models, prompts_file, tmp_path):
    """Linear schedule L = 4, 8, 12 of --max-new-tokens 24: every step's rollouts are at most its L (a stale rollout
    was cut at an older, shorter L), no rollout is older than --max-staleness 1, and the run's files are the sync
    run's."""
    server = Server(models[0], tmp_path / "server.log").start()
    try:
        metrics = train_async(models, prompts_file, tmp_path / "run", server.port, max_new_tokens=24, schedule="linear",
                              prefix_start=4, prefix_delta=4, save_every=1)
    finally:
        server.stop()
    assert [m["prefix_len"] for m in metrics] == [4, 8, 12]
    for m in metrics:
        assert 1 <= m["rollout_len_max"] <= m["prefix_len"]
        assert m["tokens_trained"] <= 4 * m["prefix_len"]
        # TRL drops a rollout older than --max-staleness when the dataloader draws it, and accelerate's dispatcher draws
        # one micro-batch ahead of training: a trained rollout can be one version older than that (docs/async.md)
        assert m["staleness_max"] <= 1 + 1 and m["is_ratio_mean"] > 0 and m["loss"] == m["loss"]
    assert metrics[0]["staleness_max"] == 0  # the first step's rollouts come from the weights of the cold sync
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1, 2, 3]
    assert (tmp_path / "run" / "final" / "config.json").exists() and not (tmp_path / "run" / ".vllm-sync").exists()


def test_async_student_server_that_does_not_answer_is_one_line(models, prompts_file, tmp_path):
    student, teacher = models
    port = free_port()
    line = one_line_exit_2(["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
                            "--async", "--backend", "vllm", "--vllm-mode", "server", "--vllm-port", str(port),
                            "--vllm-timeout", "1"], tmp_path)
    assert f"no vLLM server answers at http://127.0.0.1:{port}" in line


def test_async_lora_reward_groups_and_adaptive_schedule_on_a_server(models, prompts_file, tmp_path):
    """The four together through TRL's worker: a LoRA student (the server reloads its merged weights), two rollouts
    of each prompt, the adaptive schedule's L published by the trainer after each step (floor 10 nats: it grows every
    step), and each rollout graded in the worker, those cut at L continued to --max-new-tokens first."""
    server = Server(models[0], tmp_path / "server.log").start()
    try:
        metrics = train_async(models, prompts_file, tmp_path / "run", server.port, max_new_tokens=24, schedule="adaptive",
                              prefix_start=4, prefix_delta=4, adaptive_floor=10.0, save_every=0, lora=True, lora_r=4,
                              reward_weight=0.5, rollouts_per_prompt=2, ignore_eos=True)
    finally:
        server.stop()
    assert [m["prefix_len"] for m in metrics] == [4, 8, 12]
    for m in metrics:
        assert 1 <= m["rollout_len_max"] <= m["prefix_len"]  # a rollout dispatched before the publish has an older L
        assert m["reward_mean"] is not None and 0 <= m["reward_mean"] <= 1
        # --ignore-eos: every rollout runs to its L and is continued to 24 tokens for grading
        assert m["tokens_graded"] >= 4 * (24 - m["prefix_len"])
    assert max(m["rollout_len_max"] for m in metrics) > 4  # an L the trainer published reached the worker
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_model.safetensors").exists()


def test_async_served_teachers_routed_by_a_column(models, prompts_file, tmp_path):
    """Two teacher names on one `vllm serve` of the teacher, prompts routed between them by a column: TRL's worker
    scores each rollout with its prompt's teacher as it finishes, and the per-teacher metrics add up to the step's."""
    import json

    student, teacher = models
    rows = [json.loads(x) for x in prompts_file.read_text().splitlines() if x.strip()]
    routed = tmp_path / "routed.jsonl"
    routed.write_text("".join(json.dumps({**r, "teacher": "ab"[i % 2]}) + "\n" for i, r in enumerate(rows)))
    s_server, t_server = Server(student, tmp_path / "student.log"), Server(teacher, tmp_path / "teacher.log", "--max-logprobs", "16")
    try:
        s_server.start(), t_server.start()
        metrics = train_async(models, routed, tmp_path / "run", s_server.port, max_new_tokens=12, prefix="8", save_every=0,
                              teacher_server=[f"a={t_server.url}", f"b={t_server.url}"], teacher_column="teacher")
    finally:
        s_server.stop()
        t_server.stop()
    assert len(metrics) == 3
    for m in metrics:
        assert m["rollouts/a"] + m["rollouts/b"] == 4
        assert m["tokens_trained/a"] + m["tokens_trained/b"] == m["tokens_trained"]
        assert m["kl"] == m["kl"] and abs(m["kl"]) < 50
    assert sum(m["rollouts/a"] for m in metrics) > 0 and sum(m["rollouts/b"] for m in metrics) > 0
