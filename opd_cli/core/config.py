"""Typed configs: defaults < recipe YAML < command-line flags, checked on construction.

Every command has one dataclass. Each field carries ``metadata={"help": ...}`` that states its unit and its
"off" value (and, where a command groups its options, ``"panel"``: the ``--help`` panel it is listed in);
``__post_init__`` raises :class:`OpdError` for values that cannot work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from opd_cli.core.errors import OpdError

C = TypeVar("C")


def field(default: Any = dataclasses.MISSING, help: str = "", panel: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field with a help string (unit and off value) and, optionally, the ``--help`` panel that lists
    its flag (``metadata["panel"]``, Typer's ``rich_help_panel``; None = the command's plain Options panel)."""
    metadata = {"help": help} if panel is None else {"help": help, "panel": panel}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Load a recipe YAML file as a flat mapping of config fields."""
    path = Path(path)
    if not path.is_file():
        raise OpdError(f"recipe {path} does not exist: pass an existing YAML file to --recipe (see recipes/)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OpdError(f"recipe {path} is not valid YAML ({first}): fix the file or pass another --recipe") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OpdError(f"recipe {path} must be a mapping of config fields, got {type(data).__name__}")
    return data


def _coerce(cls_name: str, name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type where that is unambiguous."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if len(args) == 1:
            return _coerce(cls_name, name, args[0], value)
        for a in args:  # first type that accepts the value as it is
            if a in (int, float, str, bool) and isinstance(value, a) and not (a is int and isinstance(value, bool)):
                return value
        for a in args:
            try:
                return _coerce(cls_name, name, a, value)
            except OpdError:
                continue
        raise OpdError(f"{name}: cannot read {value!r} as {tp}")
    if origin is list or tp is list:
        item = args[0] if args else Any
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        # a flag given as `--x a,b` or repeated (`--x a --x b`) or both
        value = [v for item in value for v in (item.split(",") if isinstance(item, str) else [item]) if v != ""]
        return [_coerce(cls_name, name, item, v) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str):  # from the command line: a YAML mapping, '{aime24: 16, math500: 4}'
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if not isinstance(value, dict):
            raise OpdError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise OpdError(f"{name}: expected true or false, got {value!r}")
        return bool(value)
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise OpdError(f"{name}: expected {'an integer' if tp is int else 'a number'}, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def build_config(cls: type[C], recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Resolve a config: dataclass defaults, then the recipe's fields, then non-None ``overrides`` (CLI flags).

    Unknown recipe keys are an error (a typo must not silently fall back to a default).
    """
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(read_recipe(recipe))
        # Recipes name their command; it must be the one being run (a train recipe passed to `opd eval` is a mistake).
        named = values.pop("command", None)
        own = getattr(cls, "command", None)
        if named is not None and own is not None and str(named) != own:
            raise OpdError(f"recipe {recipe} is for `opd {named}`, not `opd {own}`: pass it to that command")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"recipe {recipe}" if recipe else "options"
        raise OpdError(
            f"{where} sets unknown field(s) {', '.join(unknown)} for `{getattr(cls, 'command', cls.__name__)}`; "
            f"known fields: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(cls.__name__, k, hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe mapping of a config (paths as strings)."""

    out = {"command": cfg.command} if isinstance(getattr(cfg, "command", None), str) else {}
    out.update({f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
    return out


def with_defaults(saved: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """A saved config mapping with every field of ``cfg``'s class that it lacks set to that field's default.

    A field added after a run was saved (e.g. ``toy_student``) then compares equal when it is at its default,
    so older runs stay resumable and reusable; an empty mapping (no config.yaml) stays empty. A saved single value
    of a field that has since become a list (``teacher_server: URL``) is read as that one-item list, and an empty list
    saved for a list field whose default is now None (``teacher_server: []``) as None.
    """
    if not saved:
        return {}
    missing = {}
    hints = typing.get_type_hints(type(cfg))
    saved = dict(saved)
    for f in dataclasses.fields(cfg):
        if f.name in saved:
            tp = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            if isinstance(saved[f.name], str) and typing.get_origin(tp[0]) is list:
                saved[f.name] = [saved[f.name]]
            elif saved[f.name] == [] and f.default is None and typing.get_origin(tp[0]) is list:
                saved[f.name] = None  # an empty list saved before the field's "none" became None
            continue
        if f.default is not dataclasses.MISSING:
            missing[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            missing[f.name] = f.default_factory()
    return {**{k: _plain(v) for k, v in missing.items()}, **saved}


def _plain(v: Any) -> Any:
    """A YAML-safe value (paths as strings)."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def dump_yaml(cfg: Any) -> str:
    header = f"# resolved config of `opd {getattr(cfg, 'command', '')}`\n"
    return header + yaml.safe_dump(to_dict(cfg), sort_keys=False)


def differing_keys(saved: dict[str, Any], now: dict[str, Any], ignore: Any = (), only_now: bool = False) -> list[str]:
    """Keys whose values differ between two config mappings (a saved config.yaml and the current config), sorted;
    ``ignore``: keys never compared; ``only_now``: keys the current config lacks are not compared either."""
    keys = set(now) if only_now else set(saved) | set(now)
    return sorted(k for k in keys if k not in set(ignore) and saved.get(k) != now.get(k))


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default (a fresh one for list/dict fields; ``dataclasses.MISSING`` when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def changed_fields(cfg: Any) -> dict[str, Any]:
    """The fields of ``cfg`` that differ from their class defaults (YAML-safe values)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != field_default(f)}


def summary_line(cfg: Any, saved: str | Path | None = None) -> str:
    """One line: the command and what differs from its defaults, then where the whole resolved config was saved."""
    changed = " ".join(f"{k}={v}" for k, v in changed_fields(cfg).items()) or "defaults"
    where = f"  (full config: {saved})" if saved else ""
    return f"opd {getattr(cfg, 'command', '')}: {changed}{where}"


def check(cond: bool, message: str) -> None:
    """Raise a one-line :class:`OpdError` when ``cond`` is false (for ``__post_init__`` checks)."""
    if not cond:
        raise OpdError(message)
