"""Benchmark (a script, not a test): wall time of one `opd train` step at L = full/8 and L = full next to their
FLOPs ratio, and a full-length step of opd's trainer against stock `trl.DistillationTrainer` (beta=1, reverse KL).

    .venv/bin/python bench/train_speed.py                      # random Qwen3 models on the toy vocabulary, CPU
    .venv/bin/python bench/train_speed.py --student S --teacher T --full 2048 --batch 16 --device cuda

Each measurement runs in its own subprocess (so peak memory is per run): 1 warm-up step, then the timed step(s).
Peak memory is torch.cuda.max_memory_allocated on a GPU, the process's max RSS on CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_models(root: Path) -> tuple[Path, Path, Path]:
    from opd_cli.toy.models import save_random_model
    from opd_cli.toy.task import generate_splits, write_jsonl
    from opd_cli.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    student = save_random_model(root / "student", tok, layers=4, hidden=256, heads=4, seed=1)
    teacher = save_random_model(root / "teacher", tok, layers=4, hidden=384, heads=4, seed=2)
    prompts = root / "prompts.jsonl"
    write_jsonl(prompts, generate_splits(seed=0, sizes={"train": 256, "dev": 2, "test": 2, "ood": 2})["train"])
    return student, teacher, prompts


def peak_memory(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)


def one_opd(a: argparse.Namespace) -> dict:
    from opd_cli.config import build_config
    from opd_cli.runs import read_metrics
    from opd_cli.train import TrainConfig, run_train

    out = Path(a.work) / f"opd-L{a.L}"
    cfg = build_config(TrainConfig, None, dict(
        student=a.student, teacher=a.teacher, data=a.data, prefix=str(a.L), max_new_tokens=a.full, steps=1 + a.timed,
        batch_size=a.batch, micro_batch_size=a.batch, save_every=0, device=a.device, output_dir=str(out),
        if_exists="overwrite", kl_bin=max(a.full // 8, 1)))
    run_train(cfg)
    rows = read_metrics(out)[1:]  # drop the warm-up step
    return {"time_step": sum(r["time_step"] for r in rows) / len(rows), "flops_step": sum(r["flops_step"] for r in rows) / len(rows),
            "rollout_len_mean": sum(r["rollout_len_mean"] for r in rows) / len(rows), "peak_mem_mib": peak_memory(a.device)}


def one_trl(a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from opd_cli import data
    from opd_cli.models import load_model, load_tokenizer
    from opd_cli.prompts import build_prompt

    tok = load_tokenizer(a.student)
    tok.padding_side = "left"
    prompts = [build_prompt(tok, p.question) for p in data.load_file(a.data)]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    args = DistillationConfig(
        output_dir=str(Path(a.work) / "trl"), per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=1 + a.timed, learning_rate=5e-5, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, temperature=1.0, top_p=1.0, top_k=0, max_completion_length=a.full,
        beta=1.0, disable_dropout=True, gradient_checkpointing=False, use_cpu=a.device == "cpu",
        bf16=a.device.startswith("cuda"), remove_unused_columns=False,
    )
    dtype = "bfloat16" if a.device.startswith("cuda") else "float32"
    trainer = DistillationTrainer(
        model=load_model(a.student, dtype, a.device), teacher_model=load_model(a.teacher, dtype, a.device), args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok, callbacks=[Timer()],
    )
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = times[1:]
    return {"time_step": sum(timed) / len(timed), "peak_mem_mib": peak_memory(a.device)}


def sub(a: argparse.Namespace, which: str, L: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--one", which, "--student", a.student, "--teacher", a.teacher, "--data", a.data,
           "--full", str(a.full), "--batch", str(a.batch), "--device", a.device, "--timed", str(a.timed), "--work", a.work]
    if L is not None:
        cmd += ["--L", str(L)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{which} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student")
    p.add_argument("--teacher")
    p.add_argument("--data")
    p.add_argument("--full", type=int, default=256, help="full response length (tokens)")
    p.add_argument("--batch", type=int, default=8, help="rollouts per step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timed", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--work", default=None)
    p.add_argument("--one", choices=["opd", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--L", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one_opd(a) if a.one == "opd" else one_trl(a)))
        return
    a.work = a.work or tempfile.mkdtemp(prefix="opd-bench-")
    if not a.student:
        a.student, a.teacher, a.data = (str(x) for x in make_models(Path(a.work) / "models"))
    short = sub(a, "opd", max(a.full // 8, 1))
    full = sub(a, "opd", a.full)
    trl = sub(a, "trl")
    flops_ratio = full["flops_step"] / short["flops_step"]
    speedup = full["time_step"] / short["time_step"]
    print(f"models: {a.student} <- {a.teacher}; batch {a.batch}; full length {a.full}; device {a.device}")
    print(f"{'run':<22}{'L':>6}{'rollout len':>13}{'step s':>10}{'FLOPs':>12}{'peak MiB':>10}")
    for name, r, L in (("opd train L=full/8", short, a.full // 8), ("opd train L=full", full, a.full)):
        print(f"{name:<22}{L:>6}{r['rollout_len_mean']:>13.1f}{r['time_step']:>10.3f}{r['flops_step']:>12.3e}{r['peak_mem_mib']:>10.0f}")
    print(f"{'trl DistillationTrainer':<22}{a.full:>6}{'':>13}{trl['time_step']:>10.3f}{'':>12}{trl['peak_mem_mib']:>10.0f}")
    print(f"FLOPs ratio full/(full/8) = {flops_ratio:.2f}; wall-time speed-up = {speedup:.2f} ({100 * speedup / flops_ratio:.0f} % of the FLOPs ratio)")
    print(f"opd vs stock TRL at full length: time {full['time_step'] / trl['time_step']:.2f}x, peak memory {full['peak_mem_mib'] / trl['peak_mem_mib']:.2f}x")


if __name__ == "__main__":
    main()
