"""Benchmark (a script that prints, not a test): vLLM against HF ``generate`` for rollouts, and a training step with
the teacher local against the teacher behind a vLLM server. Runs on vLLM's CPU build (`make install-vllm`) or a GPU.

    .venv/bin/python bench/vllm_speed.py                           # both parts, CPU
    .venv/bin/python bench/vllm_speed.py --part generate --batches 16,64 --tokens 128
    .venv/bin/python bench/vllm_speed.py --part teacher --steps 4

Parts:
  generate  tokens/s of HF ``generate`` and of a ``vllm.LLM`` on the same prompts, fixed-length rollouts (EOS
            ignored on both sides: min_new_tokens / ignore_eos), temperature 1, at each of ``--batches``; two model
            pairs: the toy world's shapes on the toy tokenizer (198 tokens) and random Qwen3s on the real 151,936-token
            vocabulary. Each side is timed on its second call (the first warms up).
  teacher   ``opd train`` for ``--steps`` steps with the teacher loaded locally, then with the same teacher served by
            ``vllm serve`` (--teacher-server), same rollouts (HF, seeded): mean time per step and in the teacher, over
            the steps after the first.
Both sides run on a CUDA GPU where there is one (float32 everywhere), else on the CPU.
Every side runs in its own subprocess. The machines are shared and noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = {  # name: (tokenizer, student shape, teacher shape): (layers, hidden, heads), heads of 32 for vLLM's CPU kernels
    "toy": ("toy", (3, 128, 4), (4, 128, 4)),
    "qwen3-vocab": ("qwen", (2, 256, 8), (4, 256, 8)),
}


def build(work: Path, pair: str) -> tuple[Path, Path]:
    from opd_cli.toy.tiny_qwen import build_qwen_pair, save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    tok_kind, s, t = PAIRS[pair]
    root = work / pair
    if (root / "teacher" / "config.json").exists():
        return root / "student", root / "teacher"
    if tok_kind == "qwen":
        return build_qwen_pair(root, student=s, teacher=t, seed=0)
    tok = build_tokenizer()
    return save_random_model(root / "student", tok, *s, seed=0), save_random_model(root / "teacher", tok, *t, seed=1)


def prompt_ids(model: Path, n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from opd_cli.toy.task import generate_splits

    tok = AutoTokenizer.from_pretrained(str(model))
    problems = generate_splits(seed=0, sizes={"train": n, "dev": 1, "test": 1, "ood": 1})["train"]
    return [tok(p["question"], add_special_tokens=False)["input_ids"] for p in problems]


# ----------------------------------------------------------------------------------------------- generation
def time_hf(model: Path, batch: int, tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # where vLLM runs too
    lm = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval().to(dev)
    prompts = prompt_ids(model, batch)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=dev)
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = lm.generate(input_ids=ids, attention_mask=attn, max_new_tokens=tokens, min_new_tokens=tokens,
                              do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0)
        times.append(time.perf_counter() - t0)
    n = int((out.shape[1] - width) * batch)
    return {"tokens": n, "seconds": times[-1], "tokens_per_s": n / times[-1]}


def time_vllm(model: Path, batch: int, tokens: int) -> dict:
    from opd_cli.core.generation import load_vllm

    t0 = time.perf_counter()
    llm = load_vllm(str(model), dtype="float32")
    startup = time.perf_counter() - t0
    from vllm import SamplingParams

    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=tokens, ignore_eos=True, seed=0)
    inputs = [{"prompt_token_ids": p} for p in prompt_ids(model, batch)]
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = llm.generate(inputs, params, use_tqdm=False)
        times.append(time.perf_counter() - t0)
    n = sum(len(o.outputs[0].token_ids) for o in out)
    return {"tokens": n, "seconds": times[-1], "tokens_per_s": n / times[-1], "startup_s": startup}


# ----------------------------------------------------------------------------------------------- teacher
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, port: int, log: Path) -> subprocess.Popen:
    """The CPU command for a served teacher in docs/vllm.md."""
    import requests

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-logprobs", "16"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(1)
    raise RuntimeError(f"the teacher server did not start: see {log}")


def time_train(student: Path, teacher: Path, out: Path, steps: int, tokens: int, batch: int, server: str | None) -> dict:
    from opd_cli.toy.task import generate_splits, write_jsonl

    data = out.parent / "prompts.jsonl"
    if not data.exists():
        write_jsonl(data, generate_splits(seed=0, sizes={"train": 256, "dev": 1, "test": 1, "ood": 1})["train"])
    cmd = [sys.executable, "-m", "opd_cli.cli", "train", "--student", str(student), "--teacher", str(teacher),
           "--data", str(data), "--steps", str(steps), "--batch-size", str(batch), "--micro-batch-size", str(batch),
           "--max-new-tokens", str(tokens), "--ignore-eos", "--save-every", "0", "--metrics-every", "0",
           "--dtype", "float32", "-o", str(out), "--if-exists", "overwrite"]
    if server:
        cmd += ["--teacher-server", server]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]  # the first warms up
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {"time_step": mean("time_step"), "time_teacher": mean("time_teacher"), "loss": [r["loss"] for r in rows]}


# ----------------------------------------------------------------------------------------------- main
def child(args: argparse.Namespace) -> None:
    fn = {"hf": time_hf, "vllm": time_vllm}[args.child]
    print(json.dumps(fn(Path(args.model), args.batch, args.tokens)))


def run_child(side: str, model: Path, batch: int, tokens: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", side, "--model", str(model), "--batch", str(batch),
                        "--tokens", str(tokens)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["generate", "teacher", "all"], default="all")
    p.add_argument("--batches", default="16,64", help="rollouts per generate call")
    p.add_argument("--tokens", type=int, default=128, help="tokens per rollout")
    p.add_argument("--steps", type=int, default=4, help="teacher part: training steps (the first is not timed)")
    p.add_argument("--work", default=None, help="folder for the models (default: a temporary one)")
    p.add_argument("--out", default=None, help="write the results as JSON here too")
    p.add_argument("--child", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="opd-vllm-bench-"))
    results: dict = {"generate": [], "teacher": []}
    if args.part in ("generate", "all"):
        print(f"{'models':<12} {'batch':>5} {'HF tok/s':>10} {'vLLM tok/s':>11} {'vLLM/HF':>8} {'vLLM start s':>13}")
        for pair in PAIRS:
            student, _ = build(work, pair)
            for batch in (int(b) for b in args.batches.split(",")):
                hf, vl = run_child("hf", student, batch, args.tokens), run_child("vllm", student, batch, args.tokens)
                assert hf["tokens"] == vl["tokens"] == batch * args.tokens, (hf, vl)
                ratio = vl["tokens_per_s"] / hf["tokens_per_s"]
                print(f"{pair:<12} {batch:>5} {hf['tokens_per_s']:>10.0f} {vl['tokens_per_s']:>11.0f} {ratio:>8.2f} "
                      f"{vl['startup_s']:>13.1f}", flush=True)
                results["generate"].append({"models": pair, "batch": batch, "tokens": args.tokens, "hf": hf, "vllm": vl})
    if args.part in ("teacher", "all"):
        print(f"\n{'models':<12} {'teacher':<8} {'s/step':>8} {'teacher s':>10}")
        for pair in PAIRS:
            student, teacher = build(work, pair)
            local = time_train(student, teacher, work / f"{pair}-local", args.steps, 64, 16, None)
            port = free_port()
            proc = serve(teacher, port, work / f"{pair}-server.log")
            try:
                served = time_train(student, teacher, work / f"{pair}-served", args.steps, 64, 16, f"http://127.0.0.1:{port}")
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
            for name, r in (("local", local), ("served", served)):
                print(f"{pair:<12} {name:<8} {r['time_step']:>8.2f} {r['time_teacher']:>10.2f}", flush=True)
            results["teacher"].append({"models": pair, "local": local, "served": served})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
