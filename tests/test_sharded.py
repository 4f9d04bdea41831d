"""Sharded training on CPU: FSDP2 on a 2-process gloo mesh against one process, and a ZeRO-3 stand-in for the heads.

accelerate will not select FSDP on CPU, so tests/sharded_launch.py puts its state into FSDP2 mode and runs `opd
train` under torchrun; accelerate and transformers then shard the student, clip, checkpoint and resume with their
own FSDP2 code. DeepSpeed cannot run here: the ZeRO-3 test partitions the two LM heads the way ZeRO-3 leaves a
parameter between module forwards (an empty tensor) and stands in for DeepSpeed's gather.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from opd_cli.core.runs import list_checkpoints, read_metrics

LAUNCH = Path(__file__).with_name("sharded_launch.py")
# what must agree with one process: rollouts exactly, every loss and metric to float summation order
SAME = ("tokens_generated", "tokens_trained", "kl_bin_count", "rollout_len_max")
CLOSE = ("loss", "kl", "grad_norm", "entropy_student", "entropy_teacher", "entropy_gap", "overlap_ratio", "overlap_adv",
         "overlap_mass_student", "overlap_mass_teacher")
PG = ("pg_continued", "pg_stopped", "pg_overlap_kept", "pg_overlap_dropped", "tokens_stage2")


@pytest.fixture(scope="module")
def untied_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Random Qwen3 pair with untied heads (as Qwen3-8B): 2 x 32 student, 2 x 48 teacher."""
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    root, tok = tmp_path_factory.mktemp("untied"), build_tokenizer()
    return (save_random_model(root / "student", tok, layers=2, hidden=32, heads=2, seed=1, tie_embeddings=False),
            save_random_model(root / "teacher", tok, layers=2, hidden=48, heads=2, seed=2, tie_embeddings=False))


def _cfg(dirs, prompts_file, out, **over) -> dict:
    base = dict(student=str(dirs[0]), teacher=str(dirs[1]), data=str(prompts_file), steps=2, batch_size=8,
                micro_batch_size=2, max_new_tokens=8, kl_bin=4, save_every=1, output_dir=str(out), device="cpu",
                chunk=4, metrics_every=1)
    return {**base, **over}


def _launch(*items: dict, **env: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(LAUNCH), *map(json.dumps, items)]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]


def _one_process(cfg: dict) -> list[dict]:
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    run_train(build_config(TrainConfig, None, {**cfg, "micro_batch_size": 2 * cfg["micro_batch_size"]}))
    return read_metrics(cfg["output_dir"])


def _assert_same_run(sharded: Path, one: Path, keys=CLOSE) -> None:
    from safetensors.torch import load_file

    a, b = read_metrics(sharded), read_metrics(one)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        for k in SAME:
            assert x[k] == y[k], k
        for k in keys:
            assert x[k] is not None and x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k
    wa, wb = load_file(sharded / "final" / "model.safetensors"), load_file(one / "final" / "model.safetensors")
    assert set(wa) == set(wb) and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def _assert_sharded_on_device(run: Path) -> None:
    """Every student and teacher parameter is an FSDP shard (Shard(0) over the 2-process mesh, half the elements
    or fewer) on the process's training device. On CPU every tensor shares one device, so a teacher that was
    neither sharded nor moved shows only as unsharded."""
    for rank in (0, 1):
        rec = json.loads((run / f"placement_{rank}.json").read_text())
        for model in ("student", "teacher"):
            for name, p in rec[model].items():
                assert p["dtensor"] and p["placements"] == ["S(0)"] and p["mesh_size"] == 2, (model, name, p)
                assert p["local_numel"] <= -(-p["numel"] // 2) and p["device"] == rec["device"].split(":")[0], (model, name, p)


def test_fsdp2_matches_one_process_and_resumes_from_sharded_checkpoints(untied_dirs, prompts_file, tmp_path):
    """FSDP2 (one unit per decoder layer, sharded checkpoints), 2 processes x micro 2 vs 1 process x micro 4 on the
    same global batch: every loss kind, the overlap metrics of every step, the gradient norm and the final weights
    agree; a run killed after its sharded step-1 checkpoint resumes to the same step 2 and weights."""
    from safetensors.torch import load_file

    f, o = tmp_path / "fsdp", tmp_path / "one"
    runs = {"sampled": {}, "full": {"loss": "full", "steps": 1}, "topk": {"loss": "topk", "topk": 4, "steps": 1}}
    _launch(*[_cfg(untied_dirs, prompts_file, f / k, **v) for k, v in runs.items()],
            {"kill_after": [str(f / "sampled"), str(f / "resumed"), 1]},
            _cfg(untied_dirs, prompts_file, f / "resumed", if_exists="resume"))
    for k, v in runs.items():
        _one_process(_cfg(untied_dirs, prompts_file, o / k, **v))
        _assert_same_run(f / k, o / k)
    _assert_sharded_on_device(f / "sampled")
    ckpt = f / "sampled" / "checkpoints" / "step_000001"
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and not (ckpt / "model.safetensors").exists()  # saved sharded
    assert [s for s, _ in list_checkpoints(f / "resumed")] == [1, 2]
    full, resumed = read_metrics(f / "sampled"), read_metrics(f / "resumed")
    assert [r["step"] for r in resumed] == [1, 2]
    for k in CLOSE:
        assert resumed[1][k] == pytest.approx(full[1][k], rel=1e-6, abs=1e-9), k
    wa, wb = load_file(f / "resumed" / "final" / "model.safetensors"), load_file(f / "sampled" / "final" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-7


def test_fsdp2_pg_opd_probe_runs_inside_the_forward(untied_dirs, prompts_file, tmp_path):
    """PG-OPD's probe under FSDP2 with the decoder layers in the root unit (fsdp_auto_wrap_policy NO_WRAP) and the
    student resharded after every rollout (as vLLM leaves it): the probe's overlaps, the selection and the training
    equal one process's. Calling the backbone outside the root forward fails here on DTensor weights. Both models
    load as the FSDP2 recipe has it (fsdp_cpu_ram_efficient_loading: rank 1 receives its shards from rank 0)."""
    pg = dict(rollout="pg-opd", candidates=2, pg_prefix=4, probe_window=4)
    _launch(_cfg(untied_dirs, prompts_file, tmp_path / "fsdp", **pg), FSDP_AUTO_WRAP_POLICY="NO_WRAP",
            FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    _one_process(_cfg(untied_dirs, prompts_file, tmp_path / "one", **pg))
    _assert_same_run(tmp_path / "fsdp", tmp_path / "one", CLOSE + PG)
    assert all(r["pg_stopped"] > 0 and r["pg_continued"] > 0 for r in read_metrics(tmp_path / "one"))


# ------------------------------------------------------------------------------------------ ZeRO-3 stand-in
class Zero3Heads:
    """The student's and teacher's LM heads as ZeRO-3 holds them: between gathers each weight is an empty tensor; a
    module's own forward and backward gather it (ZeRO-3's module hooks); anything else must gather explicitly with
    TRL's ``maybe_gather_lm_head_ctx``, which :meth:`gather` stands in for."""

    def __init__(self, *heads):
        import torch

        self.full = {id(h.weight): (h.weight, h.weight.data) for h in heads}
        self.depth = dict.fromkeys(self.full, 0)
        self.handles = []
        for h in heads:
            hook = (lambda w: lambda *_: self._enter([w]))(h.weight)
            unhook = (lambda w: lambda *_: self._exit([w]))(h.weight)
            self.handles += [h.register_forward_pre_hook(hook), h.register_forward_hook(unhook),
                             h.register_full_backward_pre_hook(hook), h.register_full_backward_hook(unhook)]
            h.weight.data = torch.empty(0, dtype=h.weight.dtype)

    def _enter(self, params) -> None:
        for p in params:
            if p is not None and id(p) in self.full:
                self.depth[id(p)] += 1
                p.data = self.full[id(p)][1]

    def _exit(self, params) -> None:
        import torch

        for p in params:
            if p is not None and id(p) in self.full:
                self.depth[id(p)] -= 1
                if self.depth[id(p)] == 0:
                    p.data = torch.empty(0, dtype=p.dtype)

    @contextmanager
    def gather(self, *params):
        self._enter(params)
        try:
            yield
        finally:
            self._exit(params)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for p, data in self.full.values():
            p.data = data


def _loss_grads_metrics(trainer, model, inputs, during_backward=nullcontext):
    """compute_loss + backward on one micro-batch: (loss, gradients, what it added to the step's accumulators).
    ``during_backward``: the stand-in keeps the heads gathered there, where ZeRO-3's own hooks (and the kernels'
    backward, which gathers itself) take over: only the gradient's shape needs the whole weight."""
    import torch

    before = {k: v.clone() for k, v in trainer.metrics.acc.items() if torch.is_tensor(v)}
    model.zero_grad()
    loss = trainer.compute_loss(model, inputs)
    with during_backward():
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    added = {k: trainer.metrics.acc[k] - v for k, v in before.items()}
    trainer.metrics.acc.update(before)
    model.zero_grad()
    return float(loss), grads, added


@pytest.mark.parametrize("loss", ["sampled", "full", "topk"])
def test_zero3_heads_are_gathered_wherever_they_are_read(untied_dirs, prompts_file, tmp_path, monkeypatch, loss):
    """With both LM heads partitioned as under ZeRO-3, one micro-batch's loss, every gradient, the step's KL,
    entropy and overlap sums, and PG-OPD's probe equal the unpartitioned ones. A head weight read without a gather
    (the teacher's log-prob kernel, the overlap metrics, the probe) is an empty tensor here."""
    import torch
    import trl.kernels.chunked_divergence as chunked_divergence
    import trl.trainer.utils as trl_utils

    import opd_cli.train.trainer as trainer_mod
    from opd_cli.train import pg_opd

    seen: dict = {}
    class Checked(trainer_mod.OpdTrainer):
        def _prepare_inputs(self, generation_batch):
            inputs, model = super()._prepare_inputs(generation_batch), self.model_wrapped
            if not seen:
                prompts = [r[m.bool()].tolist() for r, m in zip(inputs["prompt_ids"], inputs["prompt_mask"], strict=True)]
                comps = [r[m.bool()].tolist() for r, m in zip(inputs["completion_ids"], inputs["completion_mask"], strict=True)]
                heads = (model.get_output_embeddings(), self.teacher_model.get_output_embeddings())
                seen["plain"] = (*_loss_grads_metrics(self, model, inputs), pg_opd.probe_overlap(self, prompts, comps))
                z3 = Zero3Heads(*heads)
                try:
                    with pytest.MonkeyPatch.context() as mp:
                        mp.setattr(trl_utils, "maybe_gather_lm_head_ctx", z3.gather)
                        mp.setattr(chunked_divergence, "maybe_gather_lm_head_ctx", z3.gather)
                        every = lambda: z3.gather(*(h.weight for h in heads))  # noqa: E731
                        seen["zero3"] = (*_loss_grads_metrics(self, model, inputs, every),
                                         pg_opd.probe_overlap(self, prompts, comps))
                        seen["empty"] = heads[1].weight.numel() == 0
                finally:
                    z3.close()
            return inputs

    monkeypatch.setattr(trainer_mod, "OpdTrainer", Checked)
    from opd_cli.core.config import build_config
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    run_train(build_config(TrainConfig, None, _cfg(untied_dirs, prompts_file, tmp_path / "run", steps=1, save_every=0,
                                                     micro_batch_size=4, loss=loss, topk=4)))
    (l0, g0, m0, p0), (l1, g1, m1, p1) = seen["plain"], seen["zero3"]
    assert seen["empty"]  # the teacher's head really was partitioned outside the gathers
    assert l1 == pytest.approx(l0, rel=1e-6, abs=1e-8)
    assert set(g1) == set(g0) and "lm_head.weight" in g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)
    for k in ("sums", "metrics", "bin_sum"):
        torch.testing.assert_close(m1[k], m0[k], rtol=1e-6, atol=1e-9, msg=k)
    assert m0["metrics"].abs().sum() > 0 and p1[0] == pytest.approx(p0[0], abs=1e-7) and p0[1] == p1[1]


# ------------------------------------------------------------------------------------------ accelerate configs
def _launch_env(config: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file <config>` gives each process (accelerate's own code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config, "-m", "opd_cli.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if not args.use_deepspeed:
        return prepare_multi_gpu_env(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command sets it
    return prepare_deepspeed_cmd_env(args)[1]


def _recipe(name: str) -> str:
    path = Path(__file__).resolve().parents[1] / "recipes" / name
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# accelerate launch --config_file recipes/{name} -m opd_cli.cli train --recipe recipes/")
    assert (path.parents[0] / first.split("--recipe recipes/")[1].split()[0]).exists()  # the recipe it launches
    return str(path)


def test_fsdp2_recipe_shards_each_decoder_layer_on_8_processes(monkeypatch, toy_tokenizer_dir):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import AutoTokenizer

    from opd_cli.toy.tiny_qwen import random_model

    env = _launch_env(_recipe("accelerate-fsdp2.yaml"))
    assert (env["ACCELERATE_USE_FSDP"], env["FSDP_VERSION"], env["ACCELERATE_MIXED_PRECISION"]) == ("true", "2", "bf16")
    for k, v in env.items():
        if k.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(k, v)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True and plugin.cpu_ram_efficient_loading
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # checkpoints hold a whole model
    model = random_model(AutoTokenizer.from_pretrained(str(toy_tokenizer_dir)), layers=3, hidden=16, heads=2)
    plugin.set_auto_wrap_policy(model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [n for n, m in model.named_modules() if policy(m)]
    assert units == ["model.layers.0", "model.layers.1", "model.layers.2"]


def test_zero3_recipe_is_stage_3_with_whole_saved_weights():
    env = _launch_env(_recipe("accelerate-zero3.yaml"))
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"  # checkpoints and final/ are loadable models
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "false" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
