"""Benchmark (a script that prints, not a test): `opd train` steps per minute, sync against `--async`, on the toy
world (its large student and its teacher, local) or the real one (SmolLM2-135M-Instruct healing its pruned copy,
recipes/train-real-full.yaml: chat template, its prompts; `opd real build` first), rollouts from one `vllm serve` of
the student on loopback in both (sync: --backend vllm --vllm-mode server, the weights synced through the run folder
after every step; async: the same server, TRL's rollout worker sampling while the trainer trains, --max-staleness 1).

    .venv/bin/python bench/async_vs_sync.py                        # 6 steps each, CPU
    .venv/bin/python bench/async_vs_sync.py --steps 10 --batch-size 16 --max-new-tokens 128
    .venv/bin/python bench/async_vs_sync.py --world real --steps 6 --batch-size 16 --max-new-tokens 48

Steps per minute over the steps after the first (the first carries start-up). The machines are shared and noisy:
read the ratio. Needs vLLM (its CPU build: make install-vllm).
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: str, port: int, log: Path) -> subprocess.Popen:
    import requests

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.1"]
    proc = subprocess.Popen(cmd, env={**os.environ, "VLLM_SERVER_DEV_MODE": "1"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    end = time.time() + 300
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the vLLM server exited: see {log}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"the vLLM server did not come up in 300 s: see {log}")


def steps_per_minute(run: Path) -> tuple[float, list[dict]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    span = recs[-1]["wall_time"] - recs[0]["wall_time"]
    return 60.0 * (len(recs) - 1) / span, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-staleness", type=int, default=1)
    ap.add_argument("--world", choices=("toy", "real"), default="toy")
    a = ap.parse_args()
    if a.world == "real":
        from opd_cli.core.models import resolve_source

        student = resolve_source("real:student")
        world = ["--recipe", str(ROOT / "recipes" / "train-real-full.yaml"), "--prefix", "full", "--save-every", "0"]
    else:
        from opd_cli.toy.build import toy_model_paths

        student, _ = toy_model_paths()
        world = []
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="opd-async-bench-"))
    server = serve(student, port, tmp / "server.log")
    common = [sys.executable, "-m", "opd_cli.cli", "train", *world, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
              "--micro-batch-size", str(a.batch_size), "--max-new-tokens", str(a.max_new_tokens), "--save-every", "0",
              "--metrics-every", "0", "--dtype", "float32", "--backend", "vllm", "--vllm-mode", "server",
              "--vllm-port", str(port)]
    out = {}
    try:
        for name, extra in (("sync", []), ("async", ["--async", "--max-staleness", str(a.max_staleness)])):
            run = tmp / name
            subprocess.run([*common, *extra, "-o", str(run)], check=True, stdout=subprocess.DEVNULL)
            out[name], recs = steps_per_minute(run)
            print(f"{name:5s}: {out[name]:.2f} steps/min over steps 2-{a.steps}; loss {recs[0]['loss']:.4f} -> "
                  f"{recs[-1]['loss']:.4f}" + (f"; staleness_mean {sum(r['staleness_mean'] for r in recs) / len(recs):.2f}"
                                              if name == "async" else ""))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    print(f"async / sync: {out['async'] / out['sync']:.2f}x  ({a.world} world, batch {a.batch_size}, {a.max_new_tokens} new tokens, "
          f"--max-staleness {a.max_staleness}; folders in {tmp})")


if __name__ == "__main__":
    main()
