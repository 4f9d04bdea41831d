"""`opd train` end to end on tiny random models: metrics contract, prefix stop, determinism, resume, bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.config import build_config
from opd_cli.core.runs import list_checkpoints, read_metrics

TIMING = {"time_generate", "time_teacher", "time_update", "time_step", "wall_time"}


def _cfg(tiny_model_dirs, prompts_file, out, **over):
    from opd_cli.train.config import TrainConfig

    student, teacher = tiny_model_dirs
    base = dict(
        student=str(student), teacher=str(teacher), data=str(prompts_file), steps=3, batch_size=4, micro_batch_size=2,
        max_new_tokens=16, kl_bin=4, save_every=1, output_dir=str(out), device="cpu", chunk=8,
    )
    base.update(over)
    return build_config(TrainConfig, None, base)


def _train(tiny_model_dirs, prompts_file, out, **over):
    from opd_cli.train.run import run_train

    run_train(_cfg(tiny_model_dirs, prompts_file, out, **over))
    return read_metrics(out)


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def base_run(tiny_model_dirs, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    return out, _train(tiny_model_dirs, prompts_file, out)


def test_three_step_run_writes_every_metric(base_run):
    from opd_cli.train.config import METRIC_KEYS

    out, rows = base_run
    assert [r["step"] for r in rows] == [1, 2, 3]
    overlap = {"overlap_ratio", "overlap_adv", "overlap_mass_student", "overlap_mass_teacher"}
    for r in rows:
        assert set(r) == set(METRIC_KEYS)
        assert all(r[k] is not None for k in set(METRIC_KEYS) - overlap), r
        # --metrics-every 5 over 3 steps: the full-vocabulary overlap metrics on the first and the last step only
        assert all((r[k] is None) == (r["step"] == 2) for k in overlap), r
        assert r["tokens_generated"] == r["tokens_scored"] == sum(r["kl_bin_count"]) >= r["tokens_trained"] > 0
        assert r["rollout_len_max"] <= r["prefix_len"] == 16
        assert r["overlap_ratio"] is None or 0 <= r["overlap_ratio"] <= 1
        assert r["entropy_gap"] >= 0
        assert r["flops_step"] > 0 and r["seq_tokens_sq"] >= r["seq_tokens"]
    assert rows[-1]["flops_total"] == pytest.approx(sum(r["flops_step"] for r in rows))
    assert [s for s, _ in list_checkpoints(out)] == [1, 2, 3]
    ckpt = out / "checkpoints" / "step_000002"
    for f in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "opd_state.json", "tokenizer.json", "COMPLETE"):
        assert (ckpt / f).exists(), f
    assert json.loads((ckpt / "opd_state.json").read_text())["prefix_len"] == 16
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "final"))  # what `opd eval --model <run>/final` loads


def test_same_seed_gives_identical_metrics_and_resume_reproduces(base_run, tiny_model_dirs, prompts_file, tmp_path):
    out, rows = base_run
    again = _train(tiny_model_dirs, prompts_file, tmp_path / "again")
    assert _strip(again) == _strip(rows)
    # a run killed during step 3's checkpoint: step 3 missing, a half-written temp checkpoint, a metrics line cut
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "checkpoints" / "step_000003")
    shutil.rmtree(killed / "final")
    (killed / "checkpoints" / ".tmp" / "checkpoint-3").mkdir(parents=True)
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')
    resumed = _train(tiny_model_dirs, prompts_file, killed, if_exists="resume")
    assert _strip(resumed) == _strip(rows)
    assert [s for s, _ in list_checkpoints(killed)] == [1, 2, 3] and (killed / "final").is_dir()


def test_generation_stops_at_prefix_and_schedule(tiny_model_dirs, prompts_file, tmp_path):
    rows = _train(tiny_model_dirs, prompts_file, tmp_path / "sched", schedule="linear", prefix_start=1, prefix_delta=3, save_every=0)
    assert [r["prefix_len"] for r in rows] == [1, 4, 7]
    for r in rows:
        assert r["rollout_len_max"] <= r["prefix_len"]
        assert r["tokens_trained"] <= 4 * r["prefix_len"]
    rows = _train(tiny_model_dirs, prompts_file, tmp_path / "p5", prefix="5", steps=1, save_every=0)
    assert rows[0]["rollout_len_max"] <= 5 and len(rows[0]["kl_bin_count"]) <= 2


@pytest.mark.parametrize("over", [{"loss": "full"}, {"loss": "topk", "topk_support": "overlap"}, {"loss_window": "2:6"}, {"loss_tail": 3}])
def test_other_losses_and_windows_run(tiny_model_dirs, prompts_file, tmp_path, over):
    # ignore_eos: all 4 rollouts run to --max-new-tokens 16, so the trained-token counts are exact
    rows = _train(tiny_model_dirs, prompts_file, tmp_path / "r", steps=1, save_every=0, ignore_eos=True, **over)
    r = rows[0]
    assert r["grad_norm"] > 0 and math.isfinite(r["loss"])
    assert r["rollout_len_min"] == r["rollout_len_max"] == 16 and r["tokens_generated"] == 4 * 16
    if over.get("loss") in ("full", "topk"):  # a (renormalised) reverse KL between two different random models
        assert r["loss"] > 0
    if "loss_window" in over:  # positions 2, 3, 4, 5 of each of the 4 rollouts
        assert r["tokens_trained"] == 4 * 4
    elif "loss_tail" in over:  # positions 13, 14, 15 of each of the 4 rollouts
        assert r["tokens_trained"] == 4 * 3
    else:  # no window: every generated token
        assert r["tokens_trained"] == 4 * 16


BAD = [
    (["--prefix", "0"], "--prefix"),
    (["--prefix", "-3"], "--prefix"),
    (["--loss-window", "6:2"], "--loss-window"),
    (["--loss-tail", "99"], "--loss-tail"),
    (["--loss", "forward"], "--loss"),
    (["--topk", "0"], "--topk"),
    (["--vllm-mode", "ray"], "--vllm-mode"),
    (["--vllm-memory", "1.5"], "--vllm-memory"),
    (["--vllm-weight-sync", "nfs"], "--vllm-weight-sync"),
    (["--optimizer-states", "some"], "unknown --optimizer-states 'some': use last or all"),
    (["--teacher-server", "localhost:8001"], "--teacher-server must be a URL"),
    (["--teacher-server", "http://127.0.0.1:1", "--rollout", "pg-opd", "--pg-prefix", "4", "--probe-window", "2",
      "--batch-size", "8"], "probes the teacher"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_is_one_line_exit_2(args, needle, tiny_model_dirs, prompts_file, tmp_path):
    student, teacher = tiny_model_dirs
    base = ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file), "--max-new-tokens", "16",
            "--device", "cpu", "-o", str(tmp_path / "bad")]
    res = CliRunner().invoke(app, base + args)
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_vocab_mismatch_and_config_change_on_resume(tiny_model_dirs, prompts_file, tmp_path, base_run):
    from transformers import AutoTokenizer

    student, teacher = tiny_model_dirs
    other = tmp_path / "other_teacher"
    shutil.copytree(teacher, other)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<extra-token>"])
    tok.save_pretrained(str(other))
    res = CliRunner().invoke(app, ["train", "--student", str(student), "--teacher", str(other), "--data", str(prompts_file),
                                   "--device", "cpu", "-o", str(tmp_path / "v")])
    assert res.exit_code == 2 and "vocabulary" in res.output
    out, _ = base_run
    res = CliRunner().invoke(app, ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
                                   "--max-new-tokens", "16", "--kl-bin", "4", "--steps", "3", "--batch-size", "4",
                                   "--micro-batch-size", "2", "--save-every", "1", "--device", "cpu", "--lr", "1e-3",
                                   "-o", str(out), "--if-exists", "resume"])
    assert res.exit_code == 2 and "differs" in res.output and "lr" in res.output


def test_two_cpu_processes_match_one_process(tiny_model_dirs, prompts_file, tmp_path):
    """torchrun, 2 gloo processes x micro 4 x accumulation 2 vs 1 process x micro 8 x 2: same global batch of 16.

    Each rollout is seeded by its index in the global batch, so both runs sample the same tokens: same loss, KL and
    gradients up to float summation order, and the same final weights. Every rank's RNG state is in the checkpoint.
    """
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    student, teacher = tiny_model_dirs
    args = ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file), "--steps", "2",
            "--batch-size", "16", "--max-new-tokens", "8", "--kl-bin", "4", "--save-every", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "opd_cli.cli"]
    subprocess.run(torchrun + args + ["--micro-batch-size", "4", "-o", str(tmp_path / "two")], check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "opd_cli.cli"] + args + ["--micro-batch-size", "8", "-o", str(tmp_path / "one")],
                   check=True, env=env, capture_output=True)
    two, one = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(two, one, strict=True):
        for key in ("tokens_generated", "tokens_trained", "seq_tokens", "kl_bin_count", "rollout_len_max"):
            assert a[key] == b[key], key  # identical rollouts
        assert a["tokens_generated"] > 16 * 8 // 2  # both ranks' rollouts are counted
        for key in ("loss", "kl", "grad_norm", "entropy_student", "overlap_ratio"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key  # not multiplied by the process count
    w2, w1 = load_file(tmp_path / "two" / "final" / "model.safetensors"), load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert set(w2) == set(w1) and all((w2[k] - w1[k]).abs().max() < 1e-5 for k in w1)
    ckpt = tmp_path / "two" / "checkpoints" / "step_000001"
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists() and (ckpt / "COMPLETE").exists()


def test_resume_after_the_last_checkpoint_trains_no_more(base_run, tmp_path):
    """Killed after step 3's checkpoint but before final/: resuming writes final/ from that checkpoint and stops."""
    from safetensors.torch import load_file

    out, rows = base_run
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "final")
    res = CliRunner().invoke(app, ["train", "--recipe", str(killed / "config.yaml"), "-o", str(killed), "--if-exists", "resume"])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in read_metrics(killed)] == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(killed)] == [1, 2, 3]
    a, b = load_file(killed / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert set(a) == set(b) and all(torch_equal(a[k], b[k]) for k in a)
    assert not (killed / "final" / "optimizer.pt").exists() and (killed / "final" / "tokenizer.json").exists()


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


@pytest.mark.parametrize("pure", [False, True])
def test_bfloat16_is_mixed_precision_unless_pure(tiny_model_dirs, prompts_file, tmp_path, pure):
    """--dtype bfloat16 trains fp32 master weights under bf16 autocast; --pure-dtype keeps bf16 weights."""
    import json as _json

    from safetensors import safe_open

    out = tmp_path / "bf16"
    rows = _train(tiny_model_dirs, prompts_file, out, steps=1, save_every=0, dtype="bfloat16", pure_dtype=pure)
    assert rows[0]["loss"] is not None and rows[0]["grad_norm"] > 0
    with safe_open(str(out / "final" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    import torch

    assert dtypes == ({torch.bfloat16} if pure else {torch.float32})
    assert _json.loads((out / "final" / "config.json").read_text())["dtype"] == ("bfloat16" if pure else "float32")


def test_qwen_vocabulary_two_step_smoke(qwen_model_dirs, prompts_file, tmp_path):
    """Two steps on random models with Qwen3's real tokenizer, chat template and 151,936-row vocabulary."""
    rows = _train(qwen_model_dirs, prompts_file, tmp_path / "q", steps=2, save_every=1, max_new_tokens=12, prefix="6")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 < r["rollout_len_max"] <= 6 and r["tokens_trained"] == r["tokens_generated"]
        assert r["entropy_student"] > 5  # a random model over 151,936 tokens is close to uniform (ln V = 11.9)
        assert r["kl"] is not None and r["grad_norm"] > 0
    assert [s for s, _ in list_checkpoints(tmp_path / "q")] == [1, 2]


def _peak_rss_mib(tiny_dirs, prompts_file, out, **over) -> float:
    """Peak RSS of a fresh process that runs one `opd train` step."""
    import os
    import subprocess
    import sys

    cfg = dict(student=str(tiny_dirs[0]), teacher=str(tiny_dirs[1]), data=str(prompts_file), steps=1, save_every=0,
               max_new_tokens=16, kl_bin=4, device="cpu", output_dir=str(out), ignore_eos=True, **over)
    code = ("import json, resource, sys; from opd_cli.core.config import build_config; from opd_cli.train.config import TrainConfig; from opd_cli.train.run import run_train; "
            "run_train(build_config(TrainConfig, None, json.loads(sys.argv[1]))); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_batch(qwen_model_dirs, prompts_file, tmp_path):
    """At a fixed micro-batch, 4x the rollouts per step adds no scoring memory: both models run one micro-batch at a
    time, and no (rollouts, tokens, V) tensor exists. Holding the step's logits would add 32 rollouts x 16 tokens x
    151,936 x 4 bytes = 311 MiB per tensor. What may grow is generation's per-token (rollouts, V) logits, as in
    TRL's generate: 24 more rollouts x 151,936 x 4 bytes = 14 MiB per copy (a few copies live at once).
    """
    small = _peak_rss_mib(qwen_model_dirs, prompts_file, tmp_path / "b8", batch_size=8, micro_batch_size=2)
    large = _peak_rss_mib(qwen_model_dirs, prompts_file, tmp_path / "b32", batch_size=32, micro_batch_size=2)
    assert large - small < 100, (small, large)


def test_compute_loss_and_gradient_match_the_maths_reference(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """The trainer's chunked, hidden-state loss on the first micro-batch equals maths.sampled_loss on full logits
    of the initial models, in value and in every parameter's gradient."""
    import torch
    from transformers import AutoModelForCausalLM

    import opd_cli.train.trainer as trainer_mod
    from opd_cli.core import maths

    seen: dict = {}
    class Recording(trainer_mod.OpdTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            seen.setdefault("inputs", {k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            seen.setdefault("loss", float(loss.detach()))
            return loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            out = super().training_step(model, inputs, num_items_in_batch)
            seen.setdefault("grads", {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
            return out

    monkeypatch.setattr(trainer_mod, "OpdTrainer", Recording)
    _train(tiny_model_dirs, prompts_file, tmp_path / "run", steps=1, batch_size=4, micro_batch_size=4, loss_window="2:6", metrics_every=0)

    student_dir, teacher_dir = tiny_model_dirs
    student = AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    x = seen["inputs"]
    ids = torch.cat([x["prompt_ids"], x["completion_ids"]], 1)
    attn = torch.cat([x["prompt_mask"], x["completion_mask"]], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    T = x["completion_ids"].shape[1]

    def logp(model):
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -T - 1 : -1].float()
        return maths.token_logprobs_BT(logits, x["completion_ids"])

    with torch.no_grad():
        logq = logp(teacher)
    logp_s = logp(student)
    mask = x["train_mask"].bool() & x["completion_mask"].bool()
    assert 0 < int(mask.sum()) < int(x["completion_mask"].sum())  # the window [2, 6) trains part of each rollout
    ref = maths.sampled_loss(logp_s, logp_s.detach(), logq, mask, 4)
    ref.backward()
    assert seen["loss"] == pytest.approx(float(ref), rel=1e-4, abs=1e-6)
    ref_grads = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert set(seen["grads"]) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(seen["grads"][name], g, rtol=1e-3, atol=1e-5, msg=name)


def test_optimizer_states_last_keeps_only_the_newest_and_resumes(base_run, tiny_model_dirs, prompts_file, tmp_path):
    """--optimizer-states last: after each checkpoint the older ones lose optimizer.pt (weights, scheduler and RNG
    stay, for evaluation); the newest keeps it, so a run killed after step 2's checkpoint resumes to the uninterrupted
    run's step 3."""
    import torch
    from safetensors.torch import load_file

    out, rows = base_run
    last = tmp_path / "last"
    again = _train(tiny_model_dirs, prompts_file, last, optimizer_states="last")
    assert _strip(again) == _strip(rows)
    ckpts = dict(list_checkpoints(last))
    assert [s for s in ckpts] == [1, 2, 3]
    assert [(ckpts[s] / "optimizer.pt").exists() for s in (1, 2, 3)] == [False, False, True]
    for s in (1, 2):
        a, b = load_file(str(ckpts[s] / "model.safetensors")), load_file(str(out / "checkpoints" / f"step_{s:06d}" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in b)
    # killed during step 3: the folder as --optimizer-states last leaves it then, step 2's state the only one
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "checkpoints" / "step_000003")
    shutil.rmtree(killed / "final")
    (killed / "checkpoints" / "step_000001" / "optimizer.pt").unlink()
    (killed / "metrics.jsonl").write_text("".join((killed / "metrics.jsonl").read_text().splitlines(True)[:2]))
    resumed = _train(tiny_model_dirs, prompts_file, killed, optimizer_states="last", if_exists="resume")
    assert _strip(resumed) == _strip(rows)
    assert not (killed / "checkpoints" / "step_000002" / "optimizer.pt").exists()
