"""Sampling completions: HF ``generate`` on any device, or vLLM (the ``vllm`` extra on a GPU, vLLM's CPU build on a CPU).

``sample`` returns, per prompt, ``n`` :class:`Sample` objects. Text, token ids and length cover only the tokens
the model generated: never the prompt, and never a forced ``prefix`` (teacher-prefix probe), whose token count is
kept separately in ``Sample.prefix_length`` — a full response is ``prefix + text``, ``prefix_length + length``
tokens long.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opd_cli.core.errors import OpdError

BACKENDS = ("hf", "vllm")
WEIGHT_SYNCS = ("auto", "nccl", "disk")  # how `opd train --vllm-mode server` sends the student's weights (vllm_engine)
VLLM_MISSING = ("--backend vllm needs vLLM: pip install 'opd-cli[vllm]' on a GPU machine, make install-vllm on a CPU; "
                "or use --backend hf")
# TRL's VLLMClient, which talks to a served teacher or student, refuses to start where vLLM is not installed
TEACHER_SERVER_NEEDS_VLLM = ("--teacher-server talks to the server through TRL's VLLMClient, which needs vLLM on this machine "
                             "too: pip install 'opd-cli[vllm]' on a GPU machine, make install-vllm on a CPU; or use a local --teacher")


@dataclass
class Sample:
    """One completion. ``length`` = generated tokens (the EOS token included when it was produced);
    ``truncated`` = stopped by ``max_new_tokens`` before an EOS; ``prefix_length`` = tokens of a forced prefix
    placed between prompt and completion (0 when none), not counted in ``length``."""

    text: str
    token_ids: list[int]
    length: int
    truncated: bool
    prefix_length: int = 0


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_backend(backend: str) -> None:
    """Fail early and clearly for an unknown backend, or vLLM not installed (a GPU build or the CPU build)."""
    if backend not in BACKENDS:
        raise OpdError(f"unknown --backend {backend!r}: use hf (transformers) or vllm (the vllm extra, or make install-vllm)")
    if backend == "vllm" and not vllm_available():
        raise OpdError(VLLM_MISSING)


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (tokenizer.eos_token_id, cfg_eos):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return sorted(ids)


def _encode(tokenizer: Any, prompts: Sequence[str], prefixes: Sequence[str] | None) -> tuple[list[list[int]], list[int]]:
    """Prompt (+ prefix) token ids, tokenised separately so the prefix's tokens are exactly its own."""
    ids, pre_lens = [], []
    for i, p in enumerate(prompts):
        x = tokenizer(p, add_special_tokens=False)["input_ids"]
        pre = tokenizer(prefixes[i], add_special_tokens=False)["input_ids"] if prefixes and prefixes[i] else []
        ids.append(list(x) + list(pre))
        pre_lens.append(len(pre))
    return ids, pre_lens


def _finish(tokenizer: Any, new_ids: list[int], eos: set[int], prefix_len: int) -> Sample:
    cut = next((j for j, t in enumerate(new_ids) if t in eos), None)
    kept = new_ids if cut is None else new_ids[: cut + 1]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Sample(text, kept, len(kept), cut is None, prefix_len)


def sample(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    n: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    batch_size: int = 16,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    prefixes: list[str] | None = None,
    backend: str = "hf",
) -> list[list[Sample]]:
    """``n`` completions of each prompt (temperature 0 = greedy; top-k is always off, as in the paper).

    hf: ``model`` is a transformers causal LM; prompts are left-padded and generated ``batch_size`` sequences at a
    time. vllm: ``model`` is a ``vllm.LLM`` (see :func:`load_vllm`). ``progress(k)`` is called as k more
    sequences finish. ``prefixes[i]`` (optional) is forced after prompt i; see :class:`Sample` for how it counts.
    """
    if n < 1:
        raise OpdError(f"the number of samples must be at least 1, got {n}")
    if prefixes is not None and len(prefixes) != len(prompts):
        raise ValueError("prefixes must have one entry per prompt")
    check_backend(backend)
    if backend == "vllm":
        return _sample_vllm(model, tokenizer, prompts, n, temperature, top_p, max_new_tokens, seed, progress, prefixes)
    import torch
    from trl.trainer.utils import pad as trl_pad

    torch.manual_seed(seed)
    ids, pre_lens = _encode(tokenizer, prompts, prefixes)
    eos = set(eos_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    # every (prompt, sample) pair is one sequence; copies of one prompt sit together for better batching
    jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    out: list[list[Sample | None]] = [[None] * n for _ in prompts]
    device = next(model.parameters()).device
    gen_kwargs: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        gen_kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    for start in range(0, len(jobs), max(1, batch_size)):
        chunk = jobs[start : start + batch_size]
        seqs = [ids[i] for i, _ in chunk]
        input_ids = trl_pad([torch.tensor(s) for s in seqs], padding_value=pad, padding_side="left").to(device)
        attn = trl_pad([torch.ones(len(s), dtype=torch.long) for s in seqs], padding_side="left").to(device)
        with torch.no_grad():
            gen = model.generate(
                input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens, pad_token_id=pad,
                eos_token_id=sorted(eos), **gen_kwargs,
            )
        for row, (i, j) in enumerate(chunk):
            out[i][j] = _finish(tokenizer, gen[row, input_ids.shape[1] :].tolist(), eos, pre_lens[i])
        if progress is not None:
            progress(len(chunk))
    return out  # type: ignore[return-value]


def load_vllm(model: str, dtype: str = "auto", seed: int = 0, max_model_len: int | None = None,
              gpu_memory_utilization: float | None = None) -> Any:
    """A ``vllm.LLM`` for ``model`` (hub id or folder); one line (:class:`OpdError`) without vLLM or when vLLM
    cannot load the model. On a CPU (vLLM's CPU build) the engine runs eagerly with a 1 GiB KV cache
    (VLLM_CPU_KVCACHE_SPACE); on a GPU it takes ``gpu_memory_utilization`` of its memory (default 0.9)."""
    check_backend("vllm")
    quiet_vllm()
    from opd_cli.core.models import resolve_source

    model = resolve_source(model)
    check_vllm_model(model)
    cpu_kv_cache()
    import os

    # load_vllm_weights sends a function of ours to the engine's worker processes, which vLLM pickles only when
    # this is set; they are this process's own children
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    import torch
    import vllm

    on_cpu = not torch.cuda.is_available()
    kwargs: dict[str, Any] = {"model": model, "dtype": dtype, "seed": seed, "enforce_eager": on_cpu,
                              "gpu_memory_utilization": gpu_memory_utilization or 0.9}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if on_cpu:
        # a prompt cut across two scheduler steps (chunked prefill) makes vLLM rewind its seeded request's generator,
        # which a CPU generator cannot do ("CPU Generator does not use offset"): schedule whole prompts only
        kwargs["enable_chunked_prefill"] = False
    try:
        return vllm.LLM(**kwargs)
    except Exception as err:  # vLLM reports an unloadable model as many types, after its own log lines
        raise OpdError(f"vLLM cannot load {model} ({_vllm_cause(err)}): check the model, or use --backend hf") from None


def quiet_vllm() -> None:
    """vLLM logs errors only (its INFO and WARNING lines would bury opd's progress and its one-line errors), unless
    the user set VLLM_LOGGING_LEVEL."""
    import logging
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if os.environ["VLLM_LOGGING_LEVEL"] == "ERROR":  # what vLLM logs while importing, before its handlers exist
        logging.getLogger("vllm").setLevel(logging.ERROR)


def cpu_kv_cache(gib: int = 1) -> None:
    """On a CPU, size vLLM's KV cache in GiB (VLLM_CPU_KVCACHE_SPACE, unless the user set it) rather than as a share
    of the NUMA node: an engine inside a training or test process would count that process's memory against it."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gib))


def check_vllm_model(model: str) -> None:
    """One line (:class:`OpdError`) for a model folder that this vLLM cannot serve, before any engine starts: an
    architecture outside vLLM's registry, or (vLLM's CPU build) an attention head size its CPU kernels lack."""
    import json
    from pathlib import Path

    from opd_cli.core.models import resolve_source

    config_file = Path(resolve_source(model)).expanduser() / "config.json"
    if not config_file.is_file():
        return  # a hub id: vLLM itself fetches and checks it
    cfg = json.loads(config_file.read_text())
    from vllm import ModelRegistry

    archs = cfg.get("architectures") or []
    if archs and not set(archs) & set(ModelRegistry.get_supported_archs()):
        raise OpdError(f"vLLM cannot load {model}: its architecture {', '.join(archs)} is not one vLLM supports; use --backend hf")
    import torch

    if torch.cuda.is_available() or not cfg.get("num_attention_heads"):
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head not in sizes:
        raise OpdError(f"vLLM's CPU build cannot load {model}: attention head size {head} is not one of "
                       f"{', '.join(map(str, sizes))}; use --backend hf")


def _vllm_cause(err: BaseException) -> str:
    """The root cause of a failed engine start in one line (vLLM's own error names only the dead engine)."""
    from opd_cli.core.models import _first_line

    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return _first_line(err)


def weight_files(model: str) -> list[str]:
    """The ``.safetensors`` files of a model folder, a ``real:`` model, or a hub id (fetched into the local hub
    cache)."""
    import json
    from pathlib import Path

    from opd_cli.core.models import resolve_source

    folder = Path(resolve_source(model)).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model, allow_patterns=["*.safetensors", "*.safetensors.index.json"]))
        except Exception as err:  # the hub client raises many types (offline, gated, not found)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise OpdError(f"cannot fetch the weights of {model} ({first}): check the id or pass a local folder") from None
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: the shards the index names, not any other .safetensors beside them
        files = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise OpdError(f"{folder} has no model*.safetensors weights: save the model with safetensors (the default)")
    return [str(f) for f in files]


def load_vllm_weights(llm: Any, model: str) -> None:
    """Load ``model``'s weights (a folder or hub id of the engine's architecture) into a running ``vllm.LLM``.

    vLLM's in-place ``model_runner.reload_weights`` (the colocated weight sync's call too), run in each vLLM worker
    through ``collective_rpc`` so that it works whether the engine runs in this process or in its own; each
    worker reads the files itself, so no tensor crosses processes. The prefix cache is reset afterwards: its KV
    blocks were computed with the old weights.
    """
    files = weight_files(model)
    counts = llm.collective_rpc(_load_weights_in_worker, args=(files,))
    if not counts or not all(counts):
        raise OpdError(f"no weights of {model} reached the vLLM engine (read {counts} tensors from {', '.join(files)})")
    llm.reset_prefix_cache()


def _load_weights_in_worker(worker: Any, files: list[str]) -> int:
    """Runs inside a vLLM worker: streams the tensors of ``files`` into its model; returns how many it read."""
    from safetensors import safe_open

    count = 0

    def tensors() -> Any:
        nonlocal count
        for f in files:
            with safe_open(f, framework="pt", device="cpu") as st:
                for name in st.keys():
                    count += 1
                    yield name, st.get_tensor(name)

    # one layerwise reload: vLLM's CPU build repacks layers after loading, which a bare load_weights cannot refill
    worker.model_runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
    return count


def _sample_vllm(llm: Any, tokenizer: Any, prompts: list[str], n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, progress: Callable[[int], None] | None,
                 prefixes: list[str] | None) -> list[list[Sample]]:
    from vllm import SamplingParams

    ids, pre_lens = _encode(tokenizer, prompts, prefixes)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=-1 if temperature > 0 else 1,
                            max_tokens=max_new_tokens, seed=seed, skip_special_tokens=True)
    results = llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
    out = []
    for i, res in enumerate(results):
        row = []
        for c in res.outputs:
            tok_ids = list(c.token_ids)
            row.append(Sample(c.text, tok_ids, len(tok_ids), c.finish_reason == "length", pre_lens[i]))
        out.append(row)
        if progress is not None:
            progress(n)
    return out


# ------------------------------------------------------------------------------------------ training rollouts
def rollout_seed(seed: int, step: int, stage: int = 0) -> int:
    """Seed of step ``step``'s sampling noise, a function of the run seed and the optimizer step only.

    At every decode step the generator draws the noise of the whole *global* batch and each process keeps its own
    rows, so rollout i of a step gets the same noise whatever process draws it and whatever else is in its batch: one
    process and N processes sample the same tokens, and a resumed run samples what the uninterrupted run sampled.
    ``stage`` 1 seeds PG-OPD's second generation stage (its continuations).
    """
    return (seed * 1_000_003 + step * 7919 + stage * 104_729 + 1) % (2**63 - 1)


def global_batch_sampling(seed: int, rows: slice | list[int], global_rows: int, device: Any) -> Any:
    """A transformers ``LogitsProcessor`` that samples ``opd train``'s HF rollouts (see :func:`rollout_seed`)."""
    import torch
    from transformers import LogitsProcessor

    class GlobalBatchSampling(LogitsProcessor):
        """Exact sampling from softmax(logits) (temperature 1, no top-p/top-k) by the Gumbel-max trick,
        argmax(logits - log(-log U)) with U ~ Uniform[0, 1): this process's rows of one draw for the global batch."""

        def __init__(self, seed: int, rows: slice | list[int], global_rows: int, device: torch.device):
            self.gen = torch.Generator(device=device).manual_seed(seed)
            self.rows = rows if isinstance(rows, slice) else torch.tensor(rows, device=device)
            self.global_rows = global_rows

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            u = torch.rand(self.global_rows, scores.shape[-1], device=scores.device, generator=self.gen)[self.rows]
            gumbel_neg = u.log_().neg_().log_()  # in place: one (rows, V) buffer; u = 0 gives +inf, never sampled
            return scores.float() - gumbel_neg

    return GlobalBatchSampling(seed, rows, global_rows, device)
