"""vLLM for real (`make test-vllm`): colocated and served rollouts, `opd eval` on one engine, PG-OPD's two stages,
`--ignore-eos`, a served teacher, and their bad input. They run on vLLM's CPU build (`make install-vllm`) or a GPU
build; without vLLM they are skipped (and `make test-vllm` refuses to run without it).

The models are tiny random Qwen3s on the toy tokenizer, with attention heads of 32 (the smallest head vLLM's CPU
kernels take), and the prompts are toy training problems. Every server is started the way docs/vllm.md tells users.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
if os.environ.get("OPD_REQUIRE_VLLM") == "1":  # make test-vllm: a missing vLLM is a failure, not a skip
    import vllm
else:
    vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from opd_cli.core.runs import list_checkpoints, read_metrics  # noqa: E402

LOGP_TOL = 2e-3  # vLLM's float32 kernels against an HF float32 forward, nats per token (measured: ~1e-5)
MEM = 0.1  # share of the NUMA node (CPU) / GPU each engine reserves in these tests


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def _engine_gone():
    """A colocated engine sets up the process's default process group (vLLM's external launcher) and accelerate's
    state follows it; both go with the engine, before the next run in this process starts its own."""
    yield
    import gc

    from accelerate.state import AcceleratorState, PartialState
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    gc.collect()
    destroy_model_parallel()
    destroy_distributed_environment()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """(student, teacher): random Qwen3s on the toy tokenizer, heads of 32, untied teacher."""
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    root, tok = tmp_path_factory.mktemp("vllm_models"), build_tokenizer()
    student = save_random_model(root / "student", tok, layers=1, hidden=64, heads=2, seed=1)
    teacher = save_random_model(root / "teacher", tok, layers=2, hidden=64, heads=2, seed=2, tie_embeddings=False)
    return student, teacher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: Path, port: int, *extra: str) -> list[str]:
    """The server command for a CPU in docs/vllm.md (vLLM's CPU build has no working `vllm` script, so its module)."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", str(MEM), *extra]


class Server:
    """A `vllm serve` in the background (dev mode: the disk weight sync reloads through /collective_rpc)."""

    def __init__(self, model: Path, log: Path, *extra: str):
        self.model, self.log, self.extra, self.port, self.proc = model, log, extra, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240) -> Server:
        import requests

        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
        self.proc = subprocess.Popen(serve_command(self.model, self.port, *self.extra), env=env, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited: see {self.log}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"the vLLM server did not come up in {timeout} s: see {self.log}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


def hf_logprobs(model_dir, batch) -> torch.Tensor:
    """log p(completion token) under an HF float32 forward of ``model_dir`` on a recorded micro-batch (prompts
    left-padded, positions counted from each row's first real token, as generation numbers them)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
    T = batch["completion_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -T - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)


@pytest.fixture
def recorded(monkeypatch):
    """Every micro-batch `compute_loss` receives, with its optimizer step (1-based) and the loss it returned."""
    import opd_cli.train.trainer as trainer_mod

    seen: list[tuple[int, dict, float]] = []
    class Recording(trainer_mod.OpdTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            batch = {k: v.detach().cpu().clone() for k, v in inputs.items() if torch.is_tensor(v)}
            seen.append((int(self.state.global_step) + 1, batch, float(loss)))
            return loss

    monkeypatch.setattr(trainer_mod, "OpdTrainer", Recording)
    return seen


def train(models, prompts_file, out, **over):
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    student, teacher = models
    base = dict(student=str(student), teacher=str(teacher), data=str(prompts_file), steps=3, batch_size=8,
                micro_batch_size=4, max_new_tokens=24, prefix="12", kl_bin=4, save_every=1, lr=1e-2, chunk=8,
                output_dir=str(out), dtype="float32", vllm_memory=MEM)
    base.update(over)
    run_train(build_config(TrainConfig, None, base))
    return read_metrics(out)


def check_rollouts_came_from_synced_weights(seen, run, student, teacher) -> None:
    """Each step's rollout log-probs (vLLM's, kept as logp_old) equal an HF forward of the weights that sampled
    them: the initial student at step 1, checkpoint k-1 at step k (so the engine got every update); and each
    micro-batch's loss equals the HF path's loss on the same completions (logp_old = the HF log-probs)."""
    from opd_cli.core.maths import sampled_loss

    sampled_by = {1: student, **{k + 1: path for k, path in list_checkpoints(run)}}
    steps = sorted({s for s, _, _ in seen})
    assert steps == [1, 2, 3]
    for step, batch, loss in seen:
        valid = batch["completion_mask"].bool()
        logp = hf_logprobs(sampled_by[step], batch)
        torch.testing.assert_close(batch["old_logp"][valid], logp[valid], rtol=0, atol=LOGP_TOL)
        logq = hf_logprobs(teacher, batch)
        n = float(batch["num_items_in_batch"])
        hf_loss = sampled_loss(logp[valid], logp[valid], logq[valid], batch["train_mask"][valid], n)
        assert loss == pytest.approx(float(hf_loss), abs=1e-4)


# ------------------------------------------------------------------------------------------------ rollouts
def test_colocated_rollouts_follow_the_weights_and_give_the_hf_loss(models, prompts_file, tmp_path, recorded):
    rows = train(models, prompts_file, tmp_path / "run", backend="vllm", vllm_mode="colocate")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["rollout_len_max"] <= 12 for r in rows)  # generation stopped at L
    check_rollouts_came_from_synced_weights(recorded, tmp_path / "run", *models)
    assert len({round(r["loss"], 6) for r in rows}) == 3  # lr 1e-2: every step trains on other rollouts


def test_colocated_lora_rollouts_come_from_the_merged_weights(models, prompts_file, tmp_path, recorded):
    """--lora with --rollouts-per-prompt 2 on a colocated engine: each step's rollout log-probs equal an HF forward of
    the merged weights that sampled them (the student at step 1, then each merged checkpoint), so the engine got the
    adapter's updates; each step samples 4 prompts twice each, two different rollouts per prompt."""
    pytest.importorskip("peft")
    run = tmp_path / "run"
    rows = train(models, prompts_file, run, backend="vllm", vllm_mode="colocate", lora=True, lora_r=4, lora_alpha=32.0,
                 rollouts_per_prompt=2)
    assert [r["step"] for r in rows] == [1, 2, 3]
    check_rollouts_came_from_synced_weights(recorded, run, *models)
    for step in (1, 2, 3):
        groups: dict[tuple, list[tuple]] = {}
        for s, batch, _ in recorded:
            if s == step:
                for p, pm, c, cm in zip(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                        batch["completion_mask"], strict=True):
                    groups.setdefault(tuple(p[pm.bool()].tolist()), []).append(tuple(c[cm.bool()].tolist()))
        assert sorted(len(g) for g in groups.values()) == [2] * 4, step
        assert all(a != b for a, b in groups.values()), step
    # the updates are large enough that the student's own weights would not have passed the check at step 3
    last = [(batch, hf_logprobs(models[0], batch)) for s, batch, _ in recorded if s == 3]
    assert max(float((b["old_logp"] - lp)[b["completion_mask"].bool()].abs().max()) for b, lp in last) > 10 * LOGP_TOL


def test_colocated_rollouts_on_the_toy_world(tmp_path, recorded):
    """The shipped toy world's teacher and larger student, its training prompts and prefix recipe's length (L = 10):
    three colocated vLLM steps whose rollouts come from the synced weights and give the HF path's loss."""
    from opd_cli.core.config import build_config
    from opd_cli.toy.build import toy_model_paths
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    student, teacher = toy_model_paths("large")
    cfg = build_config(TrainConfig, Path(__file__).resolve().parents[1] / "recipes" / "train-toy-prefix.yaml",
                       dict(steps=3, batch_size=8, micro_batch_size=4, save_every=1, lr=1e-3, output_dir=str(tmp_path / "run"),
                            backend="vllm", dtype="float32", limit=64))
    run_train(cfg)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["prefix_len"] == 10 for r in rows)
    assert all(r["rollout_len_max"] <= 10 for r in rows)
    check_rollouts_came_from_synced_weights(recorded, tmp_path / "run", student, teacher)


def test_server_mode_syncs_the_weights_after_every_step(models, prompts_file, tmp_path, recorded):
    server = Server(models[0], tmp_path / "server.log").start()
    try:
        rows = train(models, prompts_file, tmp_path / "run", backend="vllm", vllm_mode="server",
                     vllm_host="127.0.0.1", vllm_port=server.port)
    finally:
        server.stop()
    assert [r["step"] for r in rows] == [1, 2, 3]
    check_rollouts_came_from_synced_weights(recorded, tmp_path / "run", *models)
    assert not (tmp_path / "run" / ".vllm-sync").exists()  # the weights' copy for the server is cleaned up


def test_ignore_eos_gives_exactly_max_new_tokens(models, prompts_file, tmp_path):
    rows = train(models, prompts_file, tmp_path / "run", backend="vllm", steps=1, prefix="full", max_new_tokens=20,
                 ignore_eos=True)
    assert rows[0]["rollout_len_min"] == rows[0]["rollout_len_max"] == 20
    assert rows[0]["tokens_generated"] == 8 * 20


def test_pg_opd_two_stages_on_vllm(models, prompts_file, tmp_path, recorded):
    """Stage 1 decodes every candidate to --pg-prefix, stage 2 continues the kept ones to --max-new-tokens (EOS
    ignored: exactly those budgets), and the log-probs of both stages are the sampling weights'."""
    rows = train(models, prompts_file, tmp_path / "run", backend="vllm", steps=2, prefix="full", max_new_tokens=16,
                 rollout="pg-opd", candidates=4, pg_prefix=6, probe_window=6, probe_topk=16, ignore_eos=True)
    for r in rows:
        assert r["pg_candidates"] == 8 and 2 <= r["pg_continued"] <= 4
        assert r["tokens_stage1"] == 8 * 6 and r["tokens_stage2"] == r["pg_continued"] * 10
        assert r["tokens_generated"] == r["pg_continued"] * 16 + r["pg_stopped"] * 6
    student = models[0]
    for step, batch, _ in recorded:
        valid = batch["completion_mask"].bool()
        weights = student if step == 1 else dict(list_checkpoints(tmp_path / "run"))[step - 1]
        torch.testing.assert_close(batch["old_logp"][valid], hf_logprobs(weights, batch)[valid], rtol=0, atol=LOGP_TOL)


# ------------------------------------------------------------------------------------------------ evaluation
def sharpened(model_dir: Path, scale: float = 4.0) -> Path:
    """The model with every matrix scaled by ``scale``: peaked next-token distributions, so greedy answers depend on
    the weights (a plain random init answers every prompt with the same token)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(scale)
    model.save_pretrained(str(model_dir))
    return model_dir


def test_eval_run_reloads_each_checkpoint_into_one_engine(models, prompts_file, tmp_path, monkeypatch):
    """`opd eval --run --backend vllm`: one engine; per checkpoint the greedy answers equal the HF backend's (so the
    accuracies agree exactly, within any sampling error), another checkpoint's weights give other answers, and
    the student's own weights (step 20, a copy) give the step-0 answers back."""
    import shutil

    import yaml

    from opd_cli.data import load_file
    from opd_cli.evaluate.config import EvalConfig
    from opd_cli.evaluate.run import evaluate_run
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    student = sharpened(Path(shutil.copytree(models[0], tmp_path / "student")))
    runs = {}
    for backend in ("vllm", "hf"):
        run = tmp_path / backend
        sharpened(save_random_model(run / "checkpoints" / "step_000010", build_tokenizer(), layers=1, hidden=64, heads=2, seed=7))
        shutil.copytree(student, run / "checkpoints" / "step_000020")
        for step in (10, 20):
            (run / "checkpoints" / f"step_{step:06d}" / "COMPLETE").write_text("")
        (run / "config.yaml").write_text(yaml.safe_dump({"command": "train", "student": str(student)}))
        runs[backend] = run
    created = []

    class CountingLLM(vllm.LLM):
        def __init__(self, *args, **kwargs):
            created.append(kwargs.get("model"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vllm, "LLM", CountingLLM)
    monkeypatch.setenv("OPD_EVAL_CACHE", "off")
    problems = {"prompts": load_file(prompts_file)}
    for backend, run in runs.items():
        cfg = EvalConfig(backend=backend, run=str(run), initial=True, samples=1, temperature=0.0, max_new_tokens=16,
                         dtype="float32")
        evaluate_run(run, None, problems, "prompts", cfg)
    assert created == [str(student)]  # one engine for the three vLLM evaluations

    def answers(backend, step):
        f = runs[backend] / "eval" / f"step_{step:06d}" / "prompts.samples.jsonl"
        return [json.loads(x)["text"] for x in f.read_text().splitlines() if x]

    def accuracy(backend, step):
        return json.loads((runs[backend] / "eval" / f"step_{step:06d}" / "prompts.json").read_text())["mean_acc"]

    for step in (0, 10, 20):
        assert answers("vllm", step) == answers("hf", step)
        assert accuracy("vllm", step) == accuracy("hf", step)
    assert answers("vllm", 10) != answers("vllm", 0)  # step 10's weights were loaded
    assert answers("vllm", 20) == answers("vllm", 0)  # and the student's came back with step 20


def test_eval_of_one_model_matches_its_sample_file(models, prompts_file, tmp_path):
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "opd_cli.cli", "eval", "--model", str(models[0]), "--data", str(prompts_file),
                        "-n", "2", "--max-new-tokens", "16", "--backend", "vllm", "--dtype", "float32", "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "eval" / "prompts.json").read_text())
    samples = [json.loads(x) for x in (out / "eval" / "prompts.samples.jsonl").read_text().splitlines() if x]
    assert len(samples) == 32 * 2 and summary["backend"] == "vllm"
    assert summary["mean_acc"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples))
    assert all(0 < s["length"] <= 16 for s in samples)


def test_eval_past_one_scheduler_step_of_prompt_tokens_is_seeded(models, tmp_path):
    """More prompt tokens than vLLM's CPU engine schedules at once (4,096): a prompt cut across two steps made the
    seeded requests crash ("CPU Generator does not use offset") until the CPU engine scheduled whole prompts only.
    Twice with one seed: the same samples."""
    data = tmp_path / "long.jsonl"
    tags = "abcdefghij" * 2
    data.write_text("".join(
        json.dumps({"id": f"q{i}", "answer": str(i % 10),
                    "question": f"start {i % 10}; apply by tag, mod 10: " + " ".join(f"{c}+{(i + k) % 9 + 1}" for k, c in enumerate(tags))})
        + "\n" for i in range(80)))  # 80 prompts of ~80 tokens: ~6,400 prompt tokens

    def run(out):
        r = subprocess.run([sys.executable, "-m", "opd_cli.cli", "eval", "--model", str(models[0]), "--data", str(data),
                            "-n", "2", "--max-new-tokens", "8", "--backend", "vllm", "--dtype", "float32", "-o", str(out)],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "OPD_EVAL_CACHE": "off"})
        assert r.returncode == 0, r.stderr[-2000:]
        return [json.loads(x) for x in (out / "eval" / "long.samples.jsonl").read_text().splitlines() if x]

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert len(first) == 80 * 2
    assert [s["text"] for s in first] == [s["text"] for s in second]


# ------------------------------------------------------------------------------------------------ served teacher
@pytest.fixture(scope="module")
def teacher_server(models, tmp_path_factory):
    server = Server(models[1], tmp_path_factory.mktemp("teacher") / "server.log", "--max-logprobs", "16").start()
    yield server
    server.stop()


def test_served_teacher_log_probs_equal_the_local_teachers(models, teacher_server):
    from opd_cli.core.served_teacher import ServedTeacher

    prompt = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])
    pmask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    comp = torch.tensor([[20, 21, 22, 23], [30, 31, 0, 0]])
    cmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = ServedTeacher(teacher_server.url, 16, 10).score(prompt, pmask, comp, cmask)
    batch = {"prompt_ids": prompt, "prompt_mask": pmask, "completion_ids": comp, "completion_mask": cmask}
    want = hf_logprobs(models[1], batch)
    valid = cmask.bool()
    torch.testing.assert_close(got["teacher_logp"][valid], want[valid], rtol=0, atol=LOGP_TOL)
    assert got["teacher_top_ids"].shape == (2, 4, 16)
    # the top-1 token and its log-prob are the local teacher's argmax and max
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(models[1]), dtype=torch.float32).eval()
    ids, attn = torch.cat([prompt, comp], 1), torch.cat([pmask, cmask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    top = torch.log_softmax(logits[:, -5:-1].float(), -1).max(-1)
    assert torch.equal(got["teacher_top_ids"][..., 0][valid], top.indices[valid])
    torch.testing.assert_close(got["teacher_top_logp"][..., 0][valid], top.values[valid], rtol=0, atol=LOGP_TOL)


def test_served_teacher_trains_like_the_local_one(models, prompts_file, tmp_path, teacher_server):
    """Three steps on HF rollouts (the same tokens for both: the sampler is seeded per step): the losses and KLs
    with the teacher behind a server equal those with the teacher loaded locally; the overlap metrics too."""
    local = train(models, prompts_file, tmp_path / "local", metrics_every=1)
    served = train(models, prompts_file, tmp_path / "served", metrics_every=1, teacher_server=teacher_server.url)
    for a, b in zip(local, served, strict=True):
        assert a["tokens_generated"] == b["tokens_generated"]
        for key in ("loss", "kl", "overlap_ratio", "overlap_adv", "overlap_mass_student", "overlap_mass_teacher"):
            assert b[key] == pytest.approx(a[key], abs=1e-3), key
        assert b["entropy_teacher"] is None and a["entropy_teacher"] is not None


def test_a_teacher_server_that_dies_is_one_line_and_the_run_resumes(models, prompts_file, tmp_path):
    """The teacher's server is killed right after step 1's checkpoint: step 2 fails with one line that says what to
    do; with the server back, --if-exists resume finishes the run from that checkpoint."""
    from transformers import TrainerCallback

    from opd_cli.core.errors import OpdError

    server = Server(models[1], tmp_path / "server.log", "--max-logprobs", "16").start()

    class KillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            server.stop(signal.SIGKILL)

    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    cfg = dict(student=str(models[0]), teacher=str(models[1]), data=str(prompts_file), steps=3, batch_size=4,
               micro_batch_size=4, max_new_tokens=12, save_every=1, teacher_server=server.url, output_dir=str(tmp_path / "run"))
    try:
        with pytest.raises(OpdError, match=f"the teacher server at {server.url} stopped answering") as err:
            run_train(build_config(TrainConfig, None, cfg), callbacks=[KillAfterFirstCheckpoint()])
        assert "\n" not in str(err.value) and "--if-exists resume" in str(err.value)
        assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]
        assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1]
        server.start()
        run_train(build_config(TrainConfig, None, {**cfg, "if_exists": "resume"}))
    finally:
        server.stop()
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ bad input
def one_line_exit_2(args, tmp_path) -> str:
    """`opd ...` in a subprocess: exit 2, exactly one line on stderr, no traceback, and the run folder intact."""
    keep = tmp_path / "out"
    keep.mkdir(exist_ok=True)
    (keep / "keep.txt").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "opd_cli.cli", *args, "-o", str(keep), "--if-exists", "overwrite"],
                       capture_output=True, text=True, timeout=300)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert (keep / "keep.txt").read_text() == "mine" and not (keep / "config.yaml").exists()
    return lines[0]


def test_unreachable_server_is_one_line(models, prompts_file, tmp_path):
    student, teacher = models
    common = ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
              "--vllm-timeout", "1"]
    port = str(free_port())
    line = one_line_exit_2([*common, "--backend", "vllm", "--vllm-mode", "server", "--vllm-port", port], tmp_path)
    assert f"no vLLM server answers at http://127.0.0.1:{port}" in line and "VLLM_SERVER_DEV_MODE=1" in line
    line = one_line_exit_2([*common, "--teacher-server", f"http://127.0.0.1:{port}"], tmp_path)
    assert "for the teacher (--teacher-server)" in line


def test_a_model_vllm_cannot_load_is_one_line(prompts_file, tmp_path):
    """Heads of 16 (the toy world's miniature models): vLLM's CPU kernels have no such size; on a GPU, an
    architecture outside vLLM's registry."""
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    bad = save_random_model(tmp_path / "bad", build_tokenizer(), layers=1, hidden=32, heads=2, seed=3)
    if torch.cuda.is_available():
        cfg = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchForCausalLM"]}))
    want = "is not one vLLM supports" if torch.cuda.is_available() else "attention head size 16 is not one of"
    for cmd in (["eval", "--model", str(bad), "--data", str(prompts_file), "--backend", "vllm"],
                ["train", "--student", str(bad), "--teacher", str(bad), "--data", str(prompts_file), "--backend", "vllm"]):
        line = one_line_exit_2(cmd, tmp_path)
        assert want in line and "--backend hf" in line


def test_losses_that_need_the_whole_teacher_are_refused_with_a_server(models, prompts_file, tmp_path):
    student, teacher = models
    for loss in ("full", "topk"):
        line = one_line_exit_2(["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
                                "--teacher-server", "http://127.0.0.1:1", "--loss", loss], tmp_path)
        assert f"--loss {loss} needs the teacher's whole distribution" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="--vllm-sleep is valid on a GPU")
def test_sleep_mode_without_a_gpu_is_one_line(models, prompts_file, tmp_path):
    student, teacher = models
    line = one_line_exit_2(["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
                            "--backend", "vllm", "--vllm-sleep"], tmp_path)
    assert "--vllm-sleep offloads a colocated engine's GPU memory" in line


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every process below ``pid``."""
    children: dict[int, list[tuple[int, str]]] = {}
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True, text=True).stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            children.setdefault(int(parts[1]), []).append((int(parts[0]), parts[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_stopped_evaluation_stops_its_engine(models, prompts_file, tmp_path):
    """SIGTERM (a stopped make) to `opd eval` with vLLM: it exits 143 and its engine core and worker processes go with
    it (Python's default for SIGTERM skips vLLM's shutdown hooks and left them running, a core each)."""
    # a shell's environment: the colocated tests before this one set vLLM's in-process engine and a process group in
    # os.environ (TRL's colocate mode), under which the engine would spawn no processes
    leaked = {"VLLM_ENABLE_V1_MULTIPROCESSING", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in leaked}
    proc = subprocess.Popen([sys.executable, "-m", "opd_cli.cli", "eval", "--model", str(models[0]), "--data", str(prompts_file),
                             "-n", "2000", "--max-new-tokens", "256", "--backend", "vllm", "--dtype", "float32",
                             "-o", str(tmp_path / "eval")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    engine: list[int] = []
    try:
        end = time.time() + 400
        while time.time() < end and not any("VLLM::Worker" in name for _, name in _descendants(proc.pid)):
            assert proc.poll() is None, "the evaluation ended before its engine was seen"
            time.sleep(0.5)
        engine = [p for p, name in _descendants(proc.pid) if name.startswith("VLLM::")]
        assert engine, "no vLLM engine process started"
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM
        end = time.time() + 30
        while time.time() < end and any(_running(p) for p in engine):
            time.sleep(0.5)
        assert not [p for p in engine if _running(p)]
    finally:  # orphans belong to init once the parent is gone: kill what was seen
        for p in engine + [p for p, _ in _descendants(proc.pid)]:
            if _running(p):
                os.kill(p, signal.SIGKILL)
        proc.kill()
