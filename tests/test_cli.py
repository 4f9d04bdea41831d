"""The CLI frame through Typer's runner: help, --if-exists, ten kinds of bad input (one line, exit 2), lazy imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opd_cli.cli import COMMANDS, app

runner = CliRunner()


def bad(args: list[str], expect: str) -> str:
    """Run ``opd args``: it must fail with exit code 2 and exactly one error line on stderr mentioning ``expect``."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [x for x in r.stderr.splitlines() if x.strip() and "Loading weights" not in x]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]
    assert "Traceback" not in r.output
    return lines[0]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("cli") / "probs.jsonl"
    f.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(2)))
    return f


def test_help_lists_working_commands() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "eval" in r.stdout and "toy" in r.stdout
    r = runner.invoke(app, ["eval", "--help"])
    assert r.exit_code == 0
    for opt in ("--model", "--benchmark", "--data", "--samples", "--recipe", "--if-exists", "--backend", "--run"):
        assert opt in r.stdout


def test_import_does_not_load_torch() -> None:
    code = "import sys, opd_cli.cli; bad = [m for m in ('torch', 'transformers', 'trl', 'vllm', 'datasets') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


HEAVY = ("torch", "transformers", "trl", "vllm", "datasets")
# the fields a command's config cannot do without; every other field keeps its default
REQUIRED = {"flops": {"paper": True}, "plot": {"kind": "overlap", "runs": ["runs/a"]}}


@pytest.mark.parametrize("command", [c[1] for c in COMMANDS])
def test_building_a_config_does_not_load_torch(command: str) -> None:
    """Each command's config is built (``__post_init__`` checks included) in a fresh interpreter without importing
    torch & co.: `opd CMD --bad-value` fails before anything heavy loads."""
    code = (
        "import importlib, sys\n"
        "from opd_cli.cli import COMMANDS\n"
        f"_, _, module, cls, _, _ = next(c for c in COMMANDS if c[1] == {command!r})\n"
        f"cfg = getattr(importlib.import_module(module), cls)(**{REQUIRED.get(command, {})!r})\n"
        f"print(type(cfg).__name__, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith("Config") and out[1:] == ["[]"], out


def test_missing_model_path(data_file: Path, tmp_path: Path) -> None:
    bad(["eval", "--model", str(tmp_path / "no-such-model"), "--data", str(data_file), "-o", str(tmp_path / "o")],
        "is not a folder")
    assert not (tmp_path / "o").exists()  # nothing written before the model loaded


def test_unknown_benchmark(tiny_model_dirs) -> None:
    bad(["eval", "--model", str(tiny_model_dirs[0]), "--benchmark", "nope"], "unknown benchmark 'nope'")


def test_malformed_data_file(tiny_model_dirs, tmp_path: Path) -> None:
    f = tmp_path / "broken.jsonl"
    f.write_text('{"question": "q", "answer": "1"}\n{oops\n')
    bad(["eval", "--model", str(tiny_model_dirs[0]), "--data", str(f)], "is not valid JSON")


def test_missing_column(tiny_model_dirs, data_file: Path) -> None:
    line = bad(["eval", "--model", str(tiny_model_dirs[0]), "--data", str(data_file), "--question-column", "prob"],
               "no column 'prob'")
    assert "question, answer" in line  # names the columns there are


def test_vocab_mismatch(tiny_model_dirs, tmp_path: Path) -> None:
    from opd_cli.core.errors import OpdError
    from opd_cli.core.models import check_same_vocab, load_tokenizer

    student, teacher = tiny_model_dirs
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher, other)
    tok = load_tokenizer(str(teacher))
    tok.add_tokens(["<extra_a>", "<extra_b>"])  # a different vocabulary
    tok.save_pretrained(str(other))
    with pytest.raises(OpdError, match="do not share one vocabulary"):
        check_same_vocab(load_tokenizer(str(student)), load_tokenizer(str(other)))
    check_same_vocab(load_tokenizer(str(student)), load_tokenizer(str(teacher)))  # same family passes
    bad(["train", "--student", str(student), "--teacher", str(other), "-o", str(tmp_path / "run")], "vocabulary")


def test_existing_run_folder(tiny_model_dirs, data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    bad(["eval", "--model", str(tiny_model_dirs[0]), "--data", str(data_file), "-o", str(out)], "already exists")
    assert (out / "keep.txt").read_text() == "mine" and not (out / "config.yaml").exists()


def test_negative_sample_count() -> None:
    bad(["eval", "--samples", "-1"], "--samples must be at least 1")


def test_unknown_backend() -> None:
    bad(["eval", "--backend", "tpu"], "unknown --backend 'tpu'")


@pytest.mark.parametrize("command", ["eval", "train"])
def test_vllm_requested_but_absent(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without vLLM (installed or not here), --backend vllm is one line that says how to install it."""
    monkeypatch.setattr("opd_cli.core.generation.vllm_available", lambda: False)
    line = bad([command, "--backend", "vllm"], "--backend vllm needs vLLM")
    assert "make install-vllm" in line and "opd-cli[vllm]" in line


def test_unreadable_recipe(tmp_path: Path) -> None:
    bad(["eval", "--recipe", str(tmp_path / "missing.yaml")], "does not exist")
    broken = tmp_path / "broken.yaml"
    broken.write_text("samples: [4\n")
    bad(["eval", "--recipe", str(broken)], "is not valid YAML")
    typo = tmp_path / "typo.yaml"
    typo.write_text("command: eval\nsampels: 4\n")
    bad(["eval", "--recipe", str(typo)], "unknown field(s) sampels")


def test_if_exists_values(tiny_model_dirs, data_file: Path, tmp_path: Path) -> None:
    bad(["eval", "--if-exists", "sometimes"], "--if-exists must be one of raise, resume, overwrite")
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("x")
    args = ["eval", "--model", str(tiny_model_dirs[0]), "--data", str(data_file), "-n", "1", "--max-new-tokens", "2", "-o", str(out)]
    assert runner.invoke(app, args + ["--if-exists", "overwrite"]).exit_code == 0
    assert not (out / "old.txt").exists() and (out / "eval" / "probs.json").is_file()


def test_debug_shows_the_traceback() -> None:
    r = runner.invoke(app, ["--debug", "eval", "--samples", "0"])
    assert r.exit_code != 0 and r.exception is not None and "at least 1" in str(r.exception)


def test_every_config_field_has_its_flag_with_the_fields_help() -> None:
    """Options are generated from the config dataclasses: every field is reachable from the command line, under
    its own name (or the few historical flags), with the field's help text and a matching type."""
    import dataclasses
    import importlib

    import typer.main

    from opd_cli import cli

    groups = {cli.app: typer.main.get_command(cli.app)}
    groups[cli.toy_app] = groups[cli.app].commands["toy"]
    groups[cli.real_app] = groups[cli.app].commands["real"]
    checked = 0
    for group, command, module, cls_name, _, _ in cli.COMMANDS:
        cls = getattr(importlib.import_module(module), cls_name)
        params = {p.name: p for p in groups[group].commands[command].params}
        for f in dataclasses.fields(cls):
            assert f.name in params, f"opd {command}: no flag for {cls_name}.{f.name}"
            p = params[f.name]
            if p.param_type_name == "option":
                flag = cli.FLAGS.get((command, f.name), "--" + f.name.replace("_", "-")).split("/")[0]
                assert flag in p.opts, (command, f.name, p.opts)
                assert f.metadata["help"] in p.help, (command, f.name)
            checked += 1
        assert set(params) - {"recipe"} == {f.name for f in dataclasses.fields(cls)}, command
    assert {c for g, c, *_ in cli.COMMANDS if g is cli.real_app} == {"build"}
    assert checked > 150
    # the type follows the field: attn_coef is a number everywhere, not an int on one command
    from typer.testing import CliRunner

    res = CliRunner().invoke(cli.app, ["flops", "--model", "qwen3-8b", "--lengths", "1024", "--attn-coef", "6.0"])
    assert res.exit_code == 0 and "Invalid value" not in res.output, res.output


def test_train_help_groups_every_flag_in_its_panel() -> None:
    """`opd train --help` lists its ~70 flags in panels (Typer's rich_help_panel, from each field's ``panel``):
    every TrainConfig field names one of train.PANELS, the panels are shown in that order, and each field's flag is
    printed inside its own panel's box, not another's."""
    import dataclasses
    import re

    from opd_cli.train import config as train

    fields = dataclasses.fields(train.TrainConfig)
    unpanelled = [f.name for f in fields if f.metadata.get("panel") not in train.PANELS]
    assert not unpanelled, f"TrainConfig fields in no panel of train.PANELS: {unpanelled}"
    assert {f.metadata["panel"] for f in fields} == set(train.PANELS)  # no panel is left empty

    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    # each box opens with a line '╭─ Title ───╮'; the flags of a panel are the '--x' words up to the next box
    boxes = re.split(r"^╭─ (.+?) ─+╮$", r.stdout, flags=re.MULTILINE)
    shown = dict(zip(boxes[1::2], boxes[2::2], strict=True))
    assert list(shown) == ["Options", *train.PANELS], list(shown)
    flags = {title: set(re.findall(r"│ (--[a-z0-9-]+)", body)) for title, body in shown.items()}
    assert flags["Options"] == {"--recipe", "--help"}
    from opd_cli.cli import FLAGS

    for f in fields:
        flag = FLAGS.get(("train", f.name), "--" + f.name.replace("_", "-")).split("/")[0]  # --async/--no-async
        where = [title for title, fl in flags.items() if flag in fl]
        assert where == [f.metadata["panel"]], (f.name, where)
    assert sum(len(fl) for fl in flags.values()) == len(fields) + 2


def test_help_shows_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--help` prints each option's default (Typer's rich markup would swallow an unescaped [default: x])."""
    monkeypatch.setenv("COLUMNS", "200")
    r = runner.invoke(app, ["eval", "--help"])
    assert r.exit_code == 0
    line = next(x for x in r.output.splitlines() if "--samples " in x)
    assert "[default: 4]" in line, line
    line = next(x for x in runner.invoke(app, ["train", "--help"]).output.splitlines() if "--vllm-port" in x)
    assert "[default: 8000]" in line, line
