"""`opd train --lora`: a peft LoRA adapter on the student, through TRL's ``peft_config``, on tiny random models
(colocated vLLM with --lora is in tests/test_vllm.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.config import build_config
from opd_cli.core.runs import list_checkpoints, read_metrics

pytest.importorskip("peft")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

TIMING = {"time_generate", "time_teacher", "time_update", "time_step", "wall_time"}
R, ALPHA = 4, 8.0  # the runs' adapter: B A x * ALPHA / R


def _cfg(tiny_model_dirs, prompts_file, out, **over):
    from opd_cli.train.config import TrainConfig

    student, teacher = tiny_model_dirs
    base = dict(student=str(student), teacher=str(teacher), data=str(prompts_file), steps=3, batch_size=4,
                micro_batch_size=2, max_new_tokens=12, kl_bin=4, save_every=1, lr=1e-2, output_dir=str(out), device="cpu",
                chunk=8, lora=True, lora_r=R, lora_alpha=ALPHA)
    return build_config(TrainConfig, None, {**base, **over})


def _train(tiny_model_dirs, prompts_file, out, **over):
    from opd_cli.train.run import run_train

    run_train(_cfg(tiny_model_dirs, prompts_file, out, **over))
    return read_metrics(out)


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dirs, prompts_file, tmp_path_factory):
    """3 LoRA steps at lr 1e-2, a checkpoint each: (run folder, metrics, the trainer after training, the
    requires_grad of every parameter when training started)."""
    import opd_cli.train.trainer as trainer_mod

    kept = {}

    class Keeping(trainer_mod.OpdTrainer):
        def train(self, *args, **kwargs):
            kept["trainer"] = self
            kept["trainable"] = {n for n, p in self.model.named_parameters() if p.requires_grad}
            return super().train(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_mod, "OpdTrainer", Keeping)
    try:
        out = tmp_path_factory.mktemp("runs") / "lora"
        rows = _train(tiny_model_dirs, prompts_file, out)
    finally:
        mp.undo()
    return out, rows, kept["trainer"], kept["trainable"]


def _by_hand_merged(student_dir, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's weights with W + B A * alpha / r added by hand for every adapted linear layer."""
    weights = load_file(str(student_dir / "model.safetensors"))
    merged = dict(weights)
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        layer = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        merged[f"{layer}.weight"] = weights[f"{layer}.weight"] + (b @ a) * (ALPHA / R)
    return merged


def test_only_the_adapter_trains_and_the_checkpoint_is_the_merged_model(lora_run, tiny_model_dirs):
    out, rows, trainer, trainable = lora_run
    student_dir = tiny_model_dirs[0]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["grad_norm"] > 0 for r in rows)
    params = dict(trainer.model.named_parameters())
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # all-linear: the 7 linear layers of the student's one decoder layer, not the LM head
    assert len(trainable) == 2 * 7 and not any("lm_head" in n for n in trainable)
    base = load_file(str(student_dir / "model.safetensors"))
    for name, p in params.items():
        if name in trainable:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(p.detach(), base[plain]), name  # base weights bitwise untouched (3 merged saves included)
    init_b = [n for n in trainable if ".lora_B." in n]
    assert all(params[n].abs().max() > 0 for n in init_b)  # B starts at 0 and trained

    ckpt = out / "checkpoints" / "step_000003"
    adapter = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    assert len(adapter) == len(trainable)
    for key, v in adapter.items():  # peft saves "…q_proj.lora_A.weight" for the adapter "default"
        live = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        assert torch.equal(v, params[live].detach()), key
    merged = load_file(str(ckpt / "model.safetensors"))
    want = _by_hand_merged(student_dir, adapter)
    assert set(merged) == set(want)
    for key in want:
        torch.testing.assert_close(merged[key], want[key], rtol=0, atol=1e-6, msg=key)
    changed = [k for k in want if not torch.equal(want[k], base[k])]
    assert len(changed) == 7  # exactly the adapted weights differ from the student's
    assert not (ckpt / "adapter_config.json").exists() and (ckpt / "adapter" / "adapter_config.json").exists()
    final = load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], merged[k]) for k in merged)
    assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()


def test_adapter_A_moves_from_step_two(lora_run, tiny_model_dirs):
    """At step 1 B = 0, so A gets no gradient; both move once B is not 0: every adapter weight has changed after 3
    steps, compared with its value in the step-1 checkpoint."""
    out, _, trainer, trainable = lora_run
    step1 = load_file(str(out / "checkpoints" / "step_000001" / "adapter" / "adapter_model.safetensors"))
    step3 = load_file(str(out / "checkpoints" / "step_000003" / "adapter" / "adapter_model.safetensors"))
    assert set(step1) == set(step3) and len(step1) == 14
    assert all(not torch.equal(step1[k], step3[k]) for k in step1)
    assert all(step1[k].abs().max() > 0 for k in step1 if ".lora_B." in k)


@pytest.mark.parametrize("loss", ["sampled", "full", "topk"])
def test_first_step_loss_equals_full_fine_tuning(tiny_model_dirs, prompts_file, tmp_path, loss):
    """LoRA's B starts at 0, so at step 0 the adapted student is the student: the same rollouts, loss and KL as full
    fine-tuning, for every loss (the full-vocabulary and top-k losses run on a local teacher with --lora)."""
    over = dict(steps=1, save_every=0, loss=loss, topk=4, metrics_every=0)
    lora = _train(tiny_model_dirs, prompts_file, tmp_path / "lora", **over)[0]
    full = _train(tiny_model_dirs, prompts_file, tmp_path / "full", lora=False, **over)[0]
    for key in ("seq_tokens", "tokens_generated", "tokens_trained", "kl_bin_count"):
        assert lora[key] == full[key], key
    assert lora["loss"] == pytest.approx(full["loss"], rel=1e-6, abs=1e-9)
    assert lora["kl"] == pytest.approx(full["kl"], rel=1e-6, abs=1e-9)
    assert lora["grad_norm"] != pytest.approx(full["grad_norm"], rel=1e-3)  # only the adapter's gradient


def test_resume_from_a_lora_checkpoint_continues_exactly(lora_run, tiny_model_dirs, prompts_file, tmp_path):
    out, rows, _, _ = lora_run
    killed = tmp_path / "killed"  # killed during step 3: its checkpoint, final/ and metrics line missing
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "checkpoints" / "step_000003")
    shutil.rmtree(killed / "final")
    (killed / "metrics.jsonl").write_text("".join((killed / "metrics.jsonl").read_text().splitlines(True)[:2]))
    resumed = _train(tiny_model_dirs, prompts_file, killed, if_exists="resume")
    assert _strip(resumed) == _strip(rows)  # step 3's loss, KL, grad norm: the uninterrupted run's
    assert [s for s, _ in list_checkpoints(killed)] == [1, 2, 3]
    a, b = load_file(str(killed / "final" / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_killed_after_the_last_checkpoint_final_gets_the_adapter_too(lora_run, tiny_model_dirs, prompts_file, tmp_path):
    out, _, _, _ = lora_run
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    shutil.rmtree(killed / "final")
    _train(tiny_model_dirs, prompts_file, killed, if_exists="resume")
    for f in ("model.safetensors", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (killed / "final" / f).read_bytes() == (out / "checkpoints" / "step_000003" / f).read_bytes(), f
    assert not (killed / "final" / "optimizer.pt").exists()


def test_opd_eval_run_reads_the_merged_checkpoint(lora_run, tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """`opd eval --run` on the LoRA run samples, at step 3, what evaluating a merged copy made by peft itself
    (adapter/ on the student, merge_and_unload) samples; the initial student samples something else."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _, _ = lora_run
    student_dir = tiny_model_dirs[0]
    run = tmp_path / "run"
    shutil.copytree(out, run)
    merged_dir = tmp_path / "merged"
    model = AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32)
    PeftModel.from_pretrained(model, str(run / "checkpoints" / "step_000003" / "adapter")).merge_and_unload().save_pretrained(str(merged_dir))
    AutoTokenizer.from_pretrained(str(student_dir)).save_pretrained(str(merged_dir))
    monkeypatch.setenv("OPD_EVAL_CACHE", "off")
    common = ["--data", str(prompts_file), "--limit", "6", "-n", "2", "--max-new-tokens", "10", "--device", "cpu",
              "--dtype", "float32"]
    for args in (["--run", str(run), "--steps", "3"], ["--model", str(merged_dir), "-o", str(tmp_path / "m")],
                 ["--model", str(student_dir), "-o", str(tmp_path / "s")]):
        res = CliRunner().invoke(app, ["eval", *args, *common])
        assert res.exit_code == 0, res.output

    def texts(folder):
        return [json.loads(x)["text"] for x in (folder / "prompts.samples.jsonl").read_text().splitlines() if x]

    at_step_3 = texts(run / "eval" / "step_000003")
    assert len(at_step_3) == 12
    assert at_step_3 == texts(tmp_path / "m" / "eval")
    assert at_step_3 != texts(tmp_path / "s" / "eval")


def test_lora_dropout_trains_but_never_samples(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    """TRL turns every dropout off; --lora-dropout puts the adapters' back (and only theirs). The adapters' dropout
    runs in training mode in the loss's forwards and in eval mode (no dropout) in every rollout's."""
    import opd_cli.train.trainer as trainer_mod

    seen = {"p": {}, "calls": []}

    class Keeping(trainer_mod.OpdTrainer):
        def train(self, *args, **kwargs):
            for n, m in self.model.named_modules():
                if isinstance(m, torch.nn.Dropout):
                    seen["p"][n] = m.p
                    if ".lora_dropout." in n + ".":
                        m.register_forward_hook(lambda mod, i, o: seen["calls"].append((seen.get("phase"), mod.training)))
            return super().train(*args, **kwargs)

        def _generate_single_turn(self, *args, **kwargs):
            seen["phase"] = "rollout"
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                seen["phase"] = "loss"

    monkeypatch.setattr(trainer_mod, "OpdTrainer", Keeping)
    rows = _train(tiny_model_dirs, prompts_file, tmp_path / "d", steps=2, save_every=0, lora_dropout=0.5)
    assert [r["step"] for r in rows] == [1, 2]
    lora_p = {n: p for n, p in seen["p"].items() if ".lora_dropout." in n + "."}
    assert len(lora_p) == 7 and set(lora_p.values()) == {0.5}
    assert all(p == 0 for n, p in seen["p"].items() if n not in lora_p)
    modes = {phase: {t for ph, t in seen["calls"] if ph == phase} for phase in ("rollout", "loss")}
    assert modes == {"rollout": {False}, "loss": {True}}, modes


@pytest.mark.parametrize("args,needle", [
    (["--lora-target-modules", "q_proj,lm_head"], "--lora-target-modules lm_head: opd's losses read the LM head's weight"),
    (["--lora-r", "0"], "--lora-r must be at least 1, got 0"),
    (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
])
def test_bad_lora_input_is_one_line_exit_2(args, needle, tiny_model_dirs, prompts_file, tmp_path):
    student, teacher = tiny_model_dirs
    out = tmp_path / "bad"
    res = CliRunner().invoke(app, ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
                                   "--device", "cpu", "-o", str(out), "--lora", *args])
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_lora_without_peft_is_one_line(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    student, teacher = tiny_model_dirs
    res = CliRunner().invoke(app, ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts_file),
                                   "--device", "cpu", "-o", str(tmp_path / "bad"), "--lora"])
    assert res.exit_code == 2 and "--lora needs peft: pip install 'opd-cli[lora]'" in res.output, res.output
    assert not (tmp_path / "bad").exists()


def test_a_lora_steps_flops_count_no_base_weight_gradients(lora_run, tiny_model_dirs):
    """flops_step of a LoRA run: the sync formula with the update 2x/3 instead of x (no gradients of the frozen base
    weights), x the student's forward + backward over the step's sequences."""
    from opd_cli.core.flops_formula import ModelShape, flops_from_sums, opd_flops

    _, rows, _, _ = lora_run
    s, t = (ModelShape.from_source(str(d)) for d in tiny_model_dirs)
    coef = 12.0  # --attn-coef's default
    for r in rows:
        x = flops_from_sums(s, r["seq_tokens"], r["seq_tokens_sq"], coef)
        assert r["flops_step"] == pytest.approx(opd_flops(s, t, r["seq_tokens"], r["seq_tokens_sq"], coef, lora=True), rel=1e-9)
        assert opd_flops(s, t, r["seq_tokens"], r["seq_tokens_sq"], coef) - r["flops_step"] == pytest.approx(x / 3, rel=1e-9)
