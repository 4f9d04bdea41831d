"""Trackers (--report-to) and --push-to-hub for `opd train` and `opd sft-baseline`, offline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.cli import app
from opd_cli.core.config import build_config
from opd_cli.core.runs import read_metrics

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard (dev extra) not installed")


def _train_cfg(tiny_model_dirs, prompts_file, out, **over):
    from opd_cli.train.config import TrainConfig

    student, teacher = tiny_model_dirs
    base = dict(student=str(student), teacher=str(teacher), data=str(prompts_file), steps=2, batch_size=4, micro_batch_size=2,
                max_new_tokens=12, kl_bin=4, save_every=1, output_dir=str(out), device="cpu", chunk=8)
    return build_config(TrainConfig, None, {**base, **over})


def _sft_cfg(tiny_model_dirs, tmp_path, **over):
    from opd_cli.sft_baseline import SftConfig

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "question": f"{i}+{i}", "answer": str(2 * i),
                                        "response": "step " * (3 + i) + f"\\boxed{{{2 * i}}}"}) + "\n" for i in range(8)))
    base = dict(student=str(tiny_model_dirs[0]), data=str(data), steps=2, batch_size=4, micro_batch_size=2, save_every=1,
                output_dir=str(tmp_path / "sft"))
    return build_config(SftConfig, None, {**base, **over})


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from the TensorBoard event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    out: dict[str, dict[int, float]] = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


@needs_tensorboard
def test_train_reports_metrics_jsonl_names_to_tensorboard(tiny_model_dirs, prompts_file, tmp_path):
    from opd_cli.train.run import run_train

    out = tmp_path / "run"
    run_train(_train_cfg(tiny_model_dirs, prompts_file, out, report_to=["tensorboard"]))
    rows = read_metrics(out)
    tb = _scalars(out / "tensorboard")
    for key in ("loss", "kl", "flops_total", "rollout_len_mean"):
        assert tb[f"train/{key}"] == pytest.approx({r["step"]: r[key] for r in rows}, rel=1e-5), key
    assert "train/kl_bin_mean" not in tb  # lists stay in metrics.jsonl


@needs_tensorboard
def test_sft_reports_metrics_jsonl_names_to_tensorboard(tiny_model_dirs, tmp_path):
    from opd_cli.sft_baseline import run_sft

    out = run_sft(_sft_cfg(tiny_model_dirs, tmp_path, report_to=["none,tensorboard"]))
    rows = read_metrics(out)
    tb = _scalars(out / "tensorboard")
    for key in ("loss", "flops_total", "seq_tokens"):
        assert tb[f"train/{key}"] == pytest.approx({r["step"]: r[key] for r in rows}, rel=1e-5), key


def test_report_to_parsing():
    from opd_cli.core.tracking import parse_report_to

    assert parse_report_to(None) == [] and parse_report_to(["none"]) == []
    if importlib.util.find_spec("tensorboard") is not None:
        assert parse_report_to(["tensorboard,none", "TensorBoard"]) == ["tensorboard"]


@pytest.mark.parametrize("command", ["train", "sft-baseline"])
@pytest.mark.parametrize("args,needle", [
    (["--report-to", "mlflow"], "unknown --report-to 'mlflow'"),
    (["--push-to-hub"], "--push-to-hub needs --hub-model-id"),
    (["--push-to-hub", "--hub-model-id", "just-a-name"], "--hub-model-id must be owner/name"),
])
def test_bad_tracking_input_is_one_line_before_anything_else(command, args, needle, tmp_path):
    res = CliRunner().invoke(app, [command, "-o", str(tmp_path / "x"), *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_tracker_package_says_how_to_install(tmp_path):
    res = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "x"), "--report-to", "wandb"])
    assert res.exit_code == 2
    assert res.output.strip() == "error: --report-to wandb needs the wandb package: pip install wandb"


class _FakeHub:
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, exist_ok=False):
        self.calls.append(("create_repo", {"repo_id": repo_id, "exist_ok": exist_ok}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(("upload_folder", {"repo_id": repo_id, "folder": folder_path, "files": files, "message": commit_message}))


def test_push_to_hub_uploads_the_final_model(tiny_model_dirs, prompts_file, tmp_path, monkeypatch):
    import huggingface_hub

    from opd_cli.sft_baseline import run_sft
    from opd_cli.train.run import run_train

    _FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    out = run_train(_train_cfg(tiny_model_dirs, prompts_file, tmp_path / "run", push_to_hub=True, hub_model_id="me/toy-opd"))
    sft = run_sft(_sft_cfg(tiny_model_dirs, tmp_path, push_to_hub=True, hub_model_id="me/toy-sft"))
    (c1, a1), (u1, b1), (c2, a2), (u2, b2) = _FakeHub.calls
    assert (c1, a1, u1) == ("create_repo", {"repo_id": "me/toy-opd", "exist_ok": True}, "upload_folder")
    assert b1["repo_id"] == "me/toy-opd" and b1["folder"] == str(out / "final") and "model.safetensors" in b1["files"]
    assert b2["repo_id"] == "me/toy-sft" and Path(b2["folder"]).parent == sft / "checkpoints"
    assert "model.safetensors" in b2["files"] and b2["message"] == "opd sft-baseline sft: step 2"
