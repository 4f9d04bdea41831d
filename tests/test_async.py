"""`opd train --async` without a vLLM server: TRL's AsyncDistillationTrainer subclass fed by an in-process worker
that replays rollouts (TRL's ``rollout_worker=`` hook), a no-op weight transfer. Checks the trainer side: at
staleness 0 the async run's losses are the sync run's, step for step; a rollout sampled by weights k versions old
gets rho = pi_theta / pi_behaviour; the maths of the truncated ratio; the config's bad input.
"""

from __future__ import annotations

import json
import queue

import pytest
import torch
from trl.experimental.async_distillation.async_rollout_worker import AsyncRolloutWorker

from opd_cli.core.errors import OpdError
from opd_cli.core.runs import read_metrics

STEPS, BATCH, MICRO = 3, 4, 2


def base(models, prompts_file, out, **over):
    student, teacher = models
    cfg = dict(student=str(student), teacher=str(teacher), data=str(prompts_file), steps=STEPS, batch_size=BATCH,
               micro_batch_size=MICRO, max_new_tokens=12, prefix="8", kl_bin=4, save_every=0, lr=1e-2, chunk=8,
               output_dir=str(out), dtype="float32", metrics_every=0)
    cfg.update(over)
    return cfg


def train(cfg):
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    run_train(build_config(TrainConfig, None, cfg))
    return read_metrics(cfg["output_dir"])


class ReplayWorker(AsyncRolloutWorker):
    """TRL's rollout worker in process: puts the given samples on its queue when the trainer starts it. A subclass of
    TRL's, so that the trainer saves and restores its prompt position (rollout_state.json); nothing is spawned."""

    def __init__(self, samples, rows=None):  # not TRL's: it starts a child process and wants vLLM
        self.samples, self.rows, self.rollout_buffer, self.metrics_queue = samples, rows, queue.Queue(), queue.Queue()
        self.published = []  # the adaptive schedule's (L, tokens to sample) as the trainer publishes them
        self._loop_kwargs = {"dataset_start_index": 0}

    def publish_lengths(self, prefix, length):
        self.published.append((prefix, length))

    def start(self):
        for s in self.samples + self.samples[-BATCH:]:  # and one step more: accelerate's dispatcher reads a batch ahead
            self.rollout_buffer.put(s)

    def stop(self):
        pass

    def update_model_version(self, version):
        self.version = version

    def check_health(self, stale_after_s):
        raise AssertionError("the trainer ran out of replayed rollouts")


class NoTransfer:
    """Records the names of the weights each sync sends."""

    sent: list[list[str]] = []

    def init_weight_transfer(self): ...
    def pause(self): ...
    def resume(self): ...
    def destroy(self): ...
    def send_weights(self, iterator):
        NoTransfer.sent.append([name for name, _ in iterator])


def sample(prompt, completion, version, behaviour=None, prompt_id=0, reward=None, prefix=None):
    import numpy as np
    from trl.experimental.async_distillation.async_rollout_worker import RolloutSample

    ids = np.asarray(prompt + completion, dtype=np.int64)
    return RolloutSample(prompt=None, completion=None, input_ids=ids,
                         completion_mask=np.asarray([0] * len(prompt) + [1] * len(completion), dtype=np.int64),
                         teacher_topk_ids=np.zeros((len(ids), 0)), teacher_topk_logprobs=np.zeros((len(ids), 0)),
                         model_version=version, teacher_id="default", prompt_id=prompt_id,
                         metrics={"behaviour_logp": behaviour, "teacher_logp": None, "model_version": version,
                                  "prefix_len": prefix, "reward": reward, "graded_len": None if reward is None else len(completion)})


@pytest.fixture
def vllm_here(monkeypatch):
    """--async asks for --backend vllm; these tests replace the server, so they run where vLLM is not installed."""
    from opd_cli.core import generation

    monkeypatch.setattr(generation, "vllm_available", lambda: True)


@pytest.fixture
def replay(monkeypatch, vllm_here):
    """run_train's --async trainer gets a ReplayWorker of the samples put in the returned list, no server."""
    import opd_cli.core.vllm_engine as vllm_engine
    from opd_cli.train import async_trainer, async_worker

    samples = Replay()
    workers: list = []

    def worker(cfg, rows, tok, problems=None):
        workers.append(ReplayWorker(samples, rows))
        return workers[-1]

    monkeypatch.setattr(vllm_engine, "preflight", lambda cfg, student: None)
    monkeypatch.setattr(async_trainer, "rollout_worker", worker)
    monkeypatch.setattr(async_worker, "DiskWeightTransfer", lambda *a: NoTransfer())
    NoTransfer.sent = []
    samples.workers = workers
    return samples


class Replay(list):
    """The samples a ReplayWorker puts on its queue (and the workers built, in ``workers``)."""


def record_sync(tiny_model_dirs, prompts_file, out, **over):
    """A sync run's metrics and the rollouts of each step, micro-batch by micro-batch: (step, prompt, completion,
    reward or None, the step's L). With --reward-weight the grader is a stand-in, right iff the rollout's length is
    odd (the tiny models never answer right)."""
    import opd_cli.train.trainer as trainer_mod
    from opd_cli.train import task_reward

    seen = []

    class Recording(trainer_mod.OpdTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rewards = inputs["reward"].tolist() if "reward" in inputs else [None] * len(inputs["prompt_ids"])
            for ids, pm, cids, cm, r in zip(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                            inputs["completion_mask"], rewards, strict=True):
                step = int(self.state.global_step)
                seen.append((step, ids[pm.bool()].tolist(), cids[cm.bool()].tolist(), r, self.prefix_len(step)))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "OpdTrainer", Recording)
        mp.setattr(task_reward, "verdicts", lambda problems, tok, answers: [float(len(a) % 2) for a in answers])
        metrics = train(base(tiny_model_dirs, prompts_file, out, **over))
    return metrics, seen


@pytest.fixture(scope="module")
def sync_rollouts(tiny_model_dirs, prompts_file, tmp_path_factory):
    metrics, seen = record_sync(tiny_model_dirs, prompts_file, tmp_path_factory.mktemp("sync") / "run")
    return metrics, [(step, p, c) for step, p, c, _, _ in seen]


def test_staleness_0_async_losses_equal_the_sync_runs(tiny_model_dirs, prompts_file, tmp_path, sync_rollouts, replay):
    sync, seen = sync_rollouts
    assert len(seen) == STEPS * BATCH and max(len(c) for _, _, c in seen) <= 8  # prefix L = 8 of 12
    # step s's rollouts stamped with the policy version the async trainer holds at step s (TRL's cold sync = 1)
    replay.extend(sample(p, c, step + 1, prompt_id=i) for i, (step, p, c) in enumerate(seen))
    cfg = base(tiny_model_dirs, prompts_file, tmp_path / "run", async_rollouts=True, backend="vllm", vllm_mode="server",
               max_staleness=0)
    metrics = train(cfg)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for a, s in zip(metrics, sync, strict=True):
        assert a["loss"] == pytest.approx(s["loss"], rel=1e-5, abs=1e-6)
        assert a["kl"] == pytest.approx(s["kl"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4)
        for key in ("tokens_trained", "rollout_len_max", "prefix_len", "seq_tokens"):
            assert a[key] == s[key], key
        assert a["staleness_mean"] == 0 and a["staleness_max"] == 0 and a["dropped_stale"] == 0
        assert a["is_ratio_mean"] == pytest.approx(1.0)
    assert sync[1]["loss"] != pytest.approx(sync[0]["loss"], rel=1e-3)  # the steps do differ: the updates matched
    assert (tmp_path / "run" / "final" / "config.json").exists()


FEATURES = {
    "lora": dict(lora=True, lora_r=4, lora_alpha=8.0),
    "reward": dict(reward_weight=0.5, prefix="full"),  # full-length rollouts: graded as they are, no continuation
    "adaptive": dict(schedule="adaptive", prefix_start=4, prefix_delta=4, adaptive_floor=10.0),  # grows every step
    "groups": dict(rollouts_per_prompt=2),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_async_features_at_staleness_0_equal_the_sync_run(feature, tiny_model_dirs, prompts_file, tmp_path, replay):
    """--lora, --reward-weight, --schedule adaptive and --rollouts-per-prompt under --async: fed the sync run's
    rollouts (and verdicts, and Ls), the async run's losses, KLs, grad norms and metrics are the sync run's."""
    over = FEATURES[feature]
    sync, seen = record_sync(tiny_model_dirs, prompts_file, tmp_path / "sync", **over)
    replay.extend(sample(p, c, step + 1, prompt_id=i, reward=r, prefix=L if feature == "adaptive" else None)
                  for i, (step, p, c, r, L) in enumerate(seen))
    metrics = train(base(tiny_model_dirs, prompts_file, tmp_path / "run", async_rollouts=True, backend="vllm",
                         vllm_mode="server", max_staleness=0, **over))
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for a, s in zip(metrics, sync, strict=True):
        assert a["loss"] == pytest.approx(s["loss"], rel=1e-5, abs=1e-6)
        assert a["kl"] == pytest.approx(s["kl"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4)
        for key in ("tokens_trained", "rollout_len_max", "prefix_len", "seq_tokens", "reward_mean", "tokens_graded"):
            assert a.get(key) == s.get(key), key
    assert sync[1]["loss"] != pytest.approx(sync[0]["loss"], rel=1e-3)
    worker = replay.workers[0]
    if feature == "lora":  # the server gets merged weights under the base model's names, once per step and at the start
        from transformers import AutoModelForCausalLM

        names = [n for n, _ in AutoModelForCausalLM.from_pretrained(str(tiny_model_dirs[0])).named_parameters()]
        assert len(NoTransfer.sent) == 4 and all(sorted(sent) == sorted(names) for sent in NoTransfer.sent)
        final = tmp_path / "run" / "final"  # as a sync LoRA run's: the merged weights, the adapter in adapter/
        assert (final / "model.safetensors").exists() and (final / "adapter" / "adapter_model.safetensors").exists()
    if feature == "reward":
        assert [m["reward_mean"] for m in metrics] == [sum(r for st, *_, r, _ in seen if st == k) / BATCH for k in range(3)]
    if feature == "adaptive":  # L grows by 4 each step; each step's L reached the worker after the step before
        assert [m["prefix_len"] for m in metrics] == [4, 8, 12]
        assert worker.published == [(4, 4), (8, 8), (12, 12), (12, 12)]
    if feature == "groups":  # the worker gets each prompt twice in a row, as its own rollout
        prompts = list(worker.rows["prompt"])
        assert prompts[0::2] == prompts[1::2] and len(prompts) == 64


def test_a_killed_async_run_resumes_where_it_stopped(tiny_model_dirs, prompts_file, tmp_path, sync_rollouts, replay):
    """Killed during step 3 (its checkpoint, final/ and metrics line gone) and resumed: the worker restarts at the
    first prompt step 3 had not trained (8), its policy version one past the checkpoint's, and fed the rollouts the
    uninterrupted run trained at step 3, the resumed step 3 is that run's (loss, KL, grad norm, final weights)."""
    import shutil

    from safetensors.torch import load_file

    from opd_cli.core.runs import list_checkpoints

    _, seen = sync_rollouts
    replay.extend(sample(p, c, step + 1, prompt_id=i) for i, (step, p, c) in enumerate(seen))
    # a linear schedule (L = 2, 4, 6): the resumed step 3 must mask its rollouts at 6, not at the next step's 8
    over = dict(async_rollouts=True, backend="vllm", vllm_mode="server", max_staleness=0, save_every=1,
                schedule="linear", prefix_start=2, prefix_delta=2)
    out = tmp_path / "run"
    rows = train(base(tiny_model_dirs, prompts_file, out, **over))
    assert [m["prefix_len"] for m in rows] == [2, 4, 6] and rows[2]["tokens_trained"] < 4 * 8
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "checkpoints" / "step_000003")
    shutil.rmtree(killed / "final")
    (killed / "metrics.jsonl").write_text("".join((killed / "metrics.jsonl").read_text().splitlines(True)[:2]))
    assert json.loads((killed / "checkpoints" / "step_000002" / "rollout_state.json").read_text()) == {
        "prompt_index": 8, "model_version": 3}
    # step 3's rollouts, numbered from the resumed worker's first prompt and sampled at its version (3 + the cold sync)
    replay[:] = [sample(p, c, 4, prompt_id=i) for i, (step, p, c) in enumerate(s for s in seen if s[0] == 2)]
    resumed = train(base(tiny_model_dirs, prompts_file, killed, if_exists="resume", **over))
    assert replay.workers[-1]._loop_kwargs["dataset_start_index"] == 8
    assert [m["step"] for m in resumed] == [1, 2, 3]
    a, b = resumed[2], rows[2]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6) and a["kl"] == pytest.approx(b["kl"], rel=1e-5, abs=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4) and a["staleness_max"] == 0
    assert [s for s, _ in list_checkpoints(killed)] == [1, 2, 3]
    x, y = load_file(str(killed / "final" / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.allclose(x[k], y[k], rtol=1e-5, atol=1e-7) for k in y)


def test_async_trains_a_real_world_name(tiny_model_dirs, prompts_file, tmp_path, sync_rollouts, replay, monkeypatch):
    """--student real:student reaches TRL's trainer as the world's folder (TRL loads the student from a path)."""
    import shutil

    world = tmp_path / "world"
    shutil.copytree(tiny_model_dirs[0], world / "student")
    monkeypatch.setenv("OPD_REAL_DIR", str(world))
    _, seen = sync_rollouts
    replay.extend(sample(p, c, 1, prompt_id=i) for i, (step, p, c) in enumerate(seen) if step == 0)
    (m,) = train(base(tiny_model_dirs, prompts_file, tmp_path / "run", student="real:student", steps=1,
                      async_rollouts=True, backend="vllm", vllm_mode="server", max_staleness=0))
    assert m["loss"] == pytest.approx(sync_rollouts[0][0]["loss"], rel=1e-5, abs=1e-6)


def hf_token_logp(model_dir, prompt, completion) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_a_rollout_k_versions_old_gets_the_importance_weight_of_its_weights(tiny_model_dirs, prompts_file, tmp_path,
                                                                             sync_rollouts, replay):
    """Behaviour log-probs from other weights (the 'old' student: its weights perturbed), stamped k = 2 versions
    before the trainer's: the step's is_ratio_mean is the mean of exp(logp_theta - logp_old) over the trained tokens,
    its loss -sum rho A / B with A = -(logp_old - log q), and staleness 2."""
    from transformers import AutoModelForCausalLM

    student, teacher = tiny_model_dirs
    old_dir = tmp_path / "old"
    old = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    old.save_pretrained(str(old_dir))
    _, seen = sync_rollouts
    rows = [(p, c) for step, p, c in seen if step == 0]
    k = 2
    rhos, loss = [], 0.0
    for i, (p, c) in enumerate(rows):
        lp_old = hf_token_logp(old_dir, p, c)
        lp = hf_token_logp(student, p, c)
        lq = hf_token_logp(teacher, p, c)
        replay.append(sample(p, c, 1 - k, behaviour=lp_old.numpy(), prompt_id=i))
        rho = torch.exp(lp - lp_old)
        rhos.append(rho)
        loss += float((rho * (lp_old - lq)).sum()) / BATCH
    cfg = base(tiny_model_dirs, prompts_file, tmp_path / "run", async_rollouts=True, backend="vllm", vllm_mode="server",
               max_staleness=k, steps=1)
    (m,) = train(cfg)
    rho_all = torch.cat(rhos)
    assert (rho_all - 1).abs().max() > 0.05  # the weights differ: the correction is not 1
    assert m["staleness_mean"] == k and m["staleness_max"] == k and m["dropped_stale"] == 0
    assert m["is_ratio_mean"] == pytest.approx(float(rho_all.mean()), rel=1e-4)
    assert m["loss"] == pytest.approx(loss, rel=1e-4)


def test_truncated_importance_ratio_value_and_gradient():
    from opd_cli.core import maths

    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, -0.5]])
    rho = maths.is_ratio_BT(logp, old)
    assert torch.allclose(rho, torch.exp(torch.tensor([[0.5, -1.0, 0.0]])))
    assert torch.allclose(maths.is_ratio_BT(logp, old, cap=1.2), torch.tensor([[1.2, float(torch.exp(torch.tensor(-1.0))), 1.0]]))
    q = torch.tensor([[-1.0, -1.0, -1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss = maths.sampled_loss(logp, old, q, mask, 1.0, is_cap=1.2)
    adv = -(old - q)
    assert float(loss) == pytest.approx(float(-(torch.tensor([[1.2, torch.exp(torch.tensor(-1.0)), 1.0]]) * adv).sum()))
    loss.backward()  # gradient min(rho, C) * (-A) per token: the cap scales, never zeroes, a token's gradient
    expect = -(torch.tensor([[1.2, float(torch.exp(torch.tensor(-1.0))), 1.0]]) * adv)
    assert torch.allclose(logp.grad, expect)


@pytest.mark.parametrize(("over", "needle"), [
    ({"async_rollouts": True}, "--async samples from the student's vLLM server: add --backend vllm --vllm-mode server"),
    ({"async_rollouts": True, "backend": "vllm", "vllm_mode": "server", "loss": "full"}, "--async does not support --loss full/topk"),
    ({"async_rollouts": True, "backend": "vllm", "vllm_mode": "server", "rollout": "pg-opd", "prefix": "full"},
     "--async does not support --rollout pg-opd"),
    ({"max_staleness": -1}, "--max-staleness must be >= 0"),
    ({"is_cap": -1.0}, "--is-cap must be >= 0"),
])
def test_bad_async_config_is_one_line(over, needle, vllm_here):
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig

    with pytest.raises(OpdError, match=needle.replace("(", r"\(").replace("/", "/")):
        build_config(TrainConfig, None, over)
