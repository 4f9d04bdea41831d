"""Benchmark (a script that prints, not a test): `opd train` against stock `trl.DistillationTrainer` at Qwen3's real
151,936-token vocabulary, peak memory against response length, and the prefix speed-up against its FLOPs ratio.

    .venv/bin/python bench/train_speed.py                       # everything below, random Qwen3 models, CPU
    .venv/bin/python bench/train_speed.py --part trl --batches 16,64
    .venv/bin/python bench/train_speed.py --device cuda --student-shape 28,1024,16 --teacher-shape 28,2048,16

Parts (each measurement runs in its own subprocess, so its peak memory is its own):
  trl     opd vs stock TRL (beta = 1, the reverse KL), one step of `--batches` rollouts at `--micro` per forward,
          `--full` tokens each; the issue's models: student 2 x 64, teacher 2 x 96 (19.5 M / 29.3 M parameters).
  length  opd's and TRL's peak memory at response lengths `--lengths` (batch `--micro` x 2 accumulation steps).
  prefix  one warm-up + `--timed` steps of opd at L = full and L = full/8 on a larger body (`--body-shape`), next to the
          ratio of the two steps' FLOPs (the paper's accounting).
Rollouts are fixed-length everywhere (EOS suppressed: opd --ignore-eos, TRL min_new_tokens), so both sides do the
same work. Peak memory: the process's max RSS on CPU, torch.cuda.max_memory_allocated on a GPU.
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


def shape(text: str) -> tuple[int, int, int]:
    layers, hidden, heads = (int(x) for x in text.split(","))
    return layers, hidden, heads


def make_world(work: Path, student: str, teacher: str, n_prompts: int = 512) -> tuple[str, str, str]:
    """Random Qwen3 models on the real tokenizer (built once per pair of shapes), and toy-task prompts."""
    from opd_cli.toy.task import generate_splits, write_jsonl
    from opd_cli.toy.tiny_qwen import build_qwen_pair

    root = work / f"models-{student.replace(',', 'x')}-{teacher.replace(',', 'x')}"
    if not (root / "prompts.jsonl").exists():
        build_qwen_pair(root, student=shape(student), teacher=shape(teacher), seed=0)
        write_jsonl(root / "prompts.jsonl", generate_splits(seed=0, sizes={"train": n_prompts, "dev": 1, "test": 1, "ood": 1})["train"])
    return str(root / "student"), str(root / "teacher"), str(root / "prompts.jsonl")


def peak_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------- one measurement
def step_timer(device: str, times: list[float]):
    """The same clock for both trainers: from on_step_begin to on_step_end (rollouts, scoring, update, optimizer)."""
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    return Timer()


def one_opd(a: argparse.Namespace) -> dict:
    from opd_cli.core.config import build_config
    from opd_cli.core.runs import read_metrics
    from opd_cli.train.config import TrainConfig
    from opd_cli.train.run import run_train

    out = Path(a.work) / f"opd-b{a.batch}-L{a.L}-T{a.full}"
    cfg = build_config(TrainConfig, None, dict(
        student=a.student, teacher=a.teacher, data=a.data, prefix=str(a.L), max_new_tokens=a.full, steps=a.steps,
        batch_size=a.batch, micro_batch_size=a.micro, save_every=0, device=a.device, dtype=a.dtype, output_dir=str(out),
        if_exists="overwrite", kl_bin=max(a.full // 8, 1), ignore_eos=True, lr=1e-5))
    times: list[float] = []
    run_train(cfg, callbacks=[step_timer(a.device, times)])
    rows = read_metrics(out)
    timed, times = (rows[1:], times[1:]) if len(rows) > 1 else (rows, times)  # drop the warm-up step when there is one
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    return {"time_step": sum(times) / len(times), "time_generate": mean("time_generate"), "time_teacher": mean("time_teacher"),
            "time_update": mean("time_update"), "flops_step": mean("flops_step"), "rollout_len": mean("rollout_len_mean"),
            "peak_mib": peak_mib(a.device)}


def one_trl(a: argparse.Namespace) -> dict:
    """Stock TRL as its docs configure it: on-policy, beta = 1, the same models, batch, micro-batch and lengths."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from opd_cli import data
    from opd_cli.core.models import load_model, load_tokenizer
    from opd_cli.core.prompts import build_prompt

    tok = load_tokenizer(a.student)
    tok.padding_side = "left"
    prompts = [build_prompt(tok, p.question) for p in data.load_file(a.data)]
    times: list[float] = []
    gpu = a.device.startswith("cuda")
    args = DistillationConfig(
        output_dir=str(Path(a.work) / "trl"), per_device_train_batch_size=a.micro, gradient_accumulation_steps=a.batch // a.micro,
        max_steps=a.steps, learning_rate=1e-5, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, temperature=1.0, top_p=1.0, top_k=0, max_completion_length=a.full,
        generation_kwargs={"min_new_tokens": a.full}, beta=1.0, disable_dropout=True, gradient_checkpointing=False,
        use_cpu=not gpu, bf16=gpu, remove_unused_columns=False,
    )
    trainer = DistillationTrainer(
        model=load_model(a.student, "float32", a.device), teacher_model=load_model(a.teacher, "bfloat16" if gpu else "float32", a.device),
        args=args, train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok, callbacks=[step_timer(a.device, times)],
    )
    trainer.train()
    timed = times[1:] or times
    return {"time_step": sum(timed) / len(timed), "peak_mib": peak_mib(a.device)}


def sub(a: argparse.Namespace, which: str, **over) -> dict:
    v = {**vars(a), **over}
    cmd = [sys.executable, __file__, "--one", which]
    for k in ("student", "teacher", "data", "full", "batch", "micro", "device", "dtype", "steps", "work", "L"):
        cmd += [f"--{k}", str(v[k])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{which} {over} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- the parts
def part_trl(a: argparse.Namespace) -> None:
    a.student, a.teacher, a.data = make_world(Path(a.work), a.student_shape, a.teacher_shape)
    print(f"\n## opd vs stock TRL: student {a.student_shape}, teacher {a.teacher_shape} (layers,hidden,heads), "
          f"V = 151936, {a.full} tokens, micro-batch {a.micro}, {a.steps} step(s), {a.device}")
    print("| batch | opd step s | TRL step s | opd / TRL time | opd peak MiB | TRL peak MiB | opd / TRL memory | opd generate / teacher / update s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for b in a.batches:
        o = sub(a, "opd", batch=b, L=a.full)
        t = sub(a, "trl", batch=b)
        print(f"| {b} | {o['time_step']:.1f} | {t['time_step']:.1f} | {o['time_step'] / t['time_step']:.2f} | {o['peak_mib']:.0f} | "
              f"{t['peak_mib']:.0f} | {o['peak_mib'] / t['peak_mib']:.2f} | {o['time_generate']:.1f} / {o['time_teacher']:.1f} / {o['time_update']:.1f} |", flush=True)


def part_length(a: argparse.Namespace) -> None:
    a.student, a.teacher, a.data = make_world(Path(a.work), a.student_shape, a.teacher_shape)
    print(f"\n## peak memory against response length: batch {2 * a.micro} (micro-batch {a.micro} x 2), {a.device}")
    print("| response tokens | opd peak MiB | opd MiB per extra token | TRL peak MiB | TRL MiB per extra token |")
    print("|---:|---:|---:|---:|---:|")
    prev = None
    for T in a.lengths:
        o = sub(a, "opd", batch=2 * a.micro, full=T, L=T, steps=1)
        t = sub(a, "trl", batch=2 * a.micro, full=T, steps=1)
        slope = ("", "") if prev is None else tuple(f"{(x - p) / (T - prev[0]):.2f}" for x, p in zip((o["peak_mib"], t["peak_mib"]), prev[1:], strict=True))
        print(f"| {T} | {o['peak_mib']:.0f} | {slope[0]} | {t['peak_mib']:.0f} | {slope[1]} |", flush=True)
        prev = (T, o["peak_mib"], t["peak_mib"])


def part_prefix(a: argparse.Namespace) -> None:
    a.student, a.teacher, a.data = make_world(Path(a.work), a.body_shape, a.body_teacher_shape)
    short_L = max(a.prefix_full // 8, 1)
    steps = 1 + a.timed
    full = sub(a, "opd", batch=a.prefix_batch, full=a.prefix_full, L=a.prefix_full, steps=steps)
    short = sub(a, "opd", batch=a.prefix_batch, full=a.prefix_full, L=short_L, steps=steps)
    ratio, speedup = full["flops_step"] / short["flops_step"], full["time_step"] / short["time_step"]
    print(f"\n## prefix speed-up: student {a.body_shape}, teacher {a.body_teacher_shape}, V = 151936, batch {a.prefix_batch}, "
          f"micro {a.micro}, fixed-length rollouts, mean of {a.timed} step(s) after a warm-up, {a.device}")
    print("| L | rollout tokens | step s | generate / teacher / update s | FLOPs per step |")
    print("|---:|---:|---:|---|---:|")
    for L, r in ((a.prefix_full, full), (short_L, short)):
        print(f"| {L} | {r['rollout_len']:.0f} | {r['time_step']:.2f} | {r['time_generate']:.2f} / {r['time_teacher']:.2f} / "
              f"{r['time_update']:.2f} | {r['flops_step']:.3e} |")
    print(f"FLOPs ratio {ratio:.2f}, wall-time speed-up {speedup:.2f} = {100 * speedup / ratio:.0f} % of the FLOPs ratio")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", action="append", choices=["trl", "length", "prefix"], help="repeatable (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--student-shape", default="2,64,4", help="layers,hidden,heads")
    p.add_argument("--teacher-shape", default="2,96,4")
    p.add_argument("--body-shape", default="4,384,6", help="prefix part: a body where compute dominates")
    p.add_argument("--body-teacher-shape", default="4,512,8")
    p.add_argument("--batches", default="16,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--lengths", default="256,512,1024", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--full", type=int, default=128, help="response tokens (trl part)")
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--prefix-full", type=int, default=256)
    p.add_argument("--prefix-batch", type=int, default=8)
    p.add_argument("--timed", type=int, default=1)
    p.add_argument("--work", default=None)
    p.add_argument("--one", choices=["opd", "trl"], help=argparse.SUPPRESS)
    for k in ("student", "teacher", "data", "L", "batch"):
        p.add_argument(f"--{k}", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        a.batch, a.L = int(a.batch), a.L
        print(json.dumps(one_opd(a) if a.one == "opd" else one_trl(a)))
        return
    a.work = a.work or tempfile.mkdtemp(prefix="opd-bench-")
    for part in a.part or ["trl", "length", "prefix"]:
        {"trl": part_trl, "length": part_length, "prefix": part_prefix}[part](a)


if __name__ == "__main__":
    main()
