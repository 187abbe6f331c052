"""Command lines and YAML recipes -> typed dataclasses, with errors a person can act on.

Every subcommand's options are a dataclass (nested dataclasses are sections: ``--train.lr``).
Values come from YAML files (``--config FILE``; ``train``'s positional recipe) and then from
``--key value`` / ``--key=value`` overrides, in command-line order. Every mistake is one
:class:`~contrasent.core.errors.UserError` line that says where (``recipe.yaml:12`` or ``--train.lr``),
what was expected, and the closest valid name for a typo; no usage dump, no typing jargon.
Mapping-valued fields (``objective``, ``data.options``) take any keys here; their owners check
them (the objective's options dataclass) and the error names the recipe line through
``UserError.key``.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from contrasent.core.errors import UserError
from contrasent.core.options import doc_block, documented_fields, suggest, type_words

Locations = dict[str, str]  # dotted key -> "file:line" (or "--key" for command-line values)


# ----------------------------------------------------------------------------- YAML


def load_yaml(path: str | Path, locations: Locations) -> dict[str, Any]:
    """A recipe as a mapping, recording the file:line of every key in ``locations``."""
    p = Path(path)
    if not p.is_file():
        where = "" if p.is_absolute() else f" (looked in {p.absolute().parent})"
        raise UserError(f"recipe {path} not found{where}")
    try:
        text = p.read_text(encoding="utf-8")
        node = yaml.compose(text)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}{line}: not valid YAML: {problem}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}:{node.start_mark.line + 1}: a recipe is a mapping of sections")
    _record(node, "", str(path), locations)
    data = yaml.safe_load(text)
    return data


def _record(node: Any, prefix: str, path: str, locations: Locations) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            key = f"{prefix}{key_node.value}"
            locations[key] = f"{path}:{key_node.start_mark.line + 1}"
            _record(value, key + ".", path, locations)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix.rstrip('.')}[{i}]"
            locations[key] = f"{path}:{item.start_mark.line + 1}"
            _record(item, key + ".", path, locations)


# ----------------------------------------------------------------------------- types


def _from_text(text: str, tp: Any) -> tuple[bool, Any]:
    """A command-line string as ``tp`` (numbers, true/false, null, lists and mappings)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, value = _from_text(text, arg)
            if ok:
                return True, value
        return False, text
    if tp is type(None):
        return text.lower() in ("null", "none", "~"), None
    if tp is bool:
        low = text.lower()
        return low in ("true", "false", "yes", "no", "1", "0"), low in ("true", "yes", "1")
    if tp in (int, float):
        try:
            value = tp(text)
        except ValueError:
            return False, text
        return True, value
    if tp is str:
        return True, text
    if origin is Literal:
        for arg in typing.get_args(tp):
            if str(arg) == text or (
                isinstance(arg, bool) and _from_text(text, bool) == (True, arg)
            ):
                return True, arg
        return False, text
    try:  # lists, mappings, Any: YAML flow syntax ([a, b], {k: v}, 3, true)
        return _from_value(yaml.safe_load(text), tp)
    except yaml.YAMLError:
        return False, text


def _from_value(value: Any, tp: Any) -> tuple[bool, Any]:
    """A YAML value as ``tp`` (ints where floats are expected, strings where Any is)."""
    from contrasent.core.options import _coerce

    return _coerce(value, tp)


# ----------------------------------------------------------------------------- building


def build(cls: type, data: Mapping[str, Any], locations: Locations, prefix: str = "") -> Any:
    """The dataclass ``cls`` from ``data``; UserError naming the file:line or option."""
    if not isinstance(data, Mapping):
        raise UserError(f"{_where(locations, prefix.rstrip('.'))}{prefix or 'the recipe'} "
                        f"must be a mapping of options, got {data!r}")  # fmt: skip
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise UserError(
                f"{_where(locations, dotted)}unknown option {dotted!r}{suggest(str(key), names)}"
                f"; {prefix.rstrip('.') or 'the top level'} has: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value if value is not None else {}, locations, dotted + ".")
            continue
        ok, converted = _from_value(value, tp)
        if not ok:
            raise UserError(
                f"{_where(locations, dotted)}{dotted} must be {type_words(tp)}, got {value!r}"
            )
        kwargs[key] = converted
    return cls(**kwargs)


def _where(locations: Locations, key: str) -> str:
    loc = locations.get(key)
    return f"{loc}: " if loc and not loc.startswith("--") else ""


def locate(err: UserError, locations: Locations) -> str:
    """The error's message, prefixed with the recipe line of its key when it has one."""
    key = getattr(err, "key", None)
    message = str(err)
    if key and key in locations and not locations[key].startswith("--"):
        return f"{locations[key]}: {message}"
    return message


def _field_type(cls: type, keys: list[str]) -> Any:
    """The declared type of a dotted option (Any inside mapping-valued fields)."""
    tp: Any = cls
    for key in keys:
        if not dataclasses.is_dataclass(tp):
            return Any
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        if key not in names:
            where = ".".join(keys[: keys.index(key)]) or "the top level"
            raise UserError(
                f"unknown option --{'.'.join(keys)}{suggest(key, names)}; {where} has: "
                f"{', '.join(names)}"
            )
        tp = hints[key]
    return tp


def _set(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        current = data.get(key)
        if not isinstance(current, dict):
            current = {}
            data[key] = current
        data = current
    data[keys[-1]] = value


def option_name(arg: str) -> str:
    """``--data-dir`` -> ``data_dir`` (dashes inside names are accepted as underscores)."""
    return arg[2:].replace("-", "_")


def parse_args(
    cls: type,
    argv: list[str],
    *,
    positional: tuple[str, ...] = (),
    aliases: Mapping[str, str] | None = None,
    recipe_first: bool = False,
) -> tuple[Any, Locations]:
    """``argv`` -> ``cls`` instance and the locations of every value.

    ``positional`` names the fields filled by bare arguments in order (the last may be a list:
    it takes the rest); ``recipe_first``: a first bare argument is a YAML recipe (``train``).
    ``aliases`` maps option names to dotted keys (``data_dir`` -> ``eval.data_dir``).
    """
    data: dict[str, Any] = {}
    locations: Locations = {}
    bare: list[str] = []
    i = 0
    if recipe_first and argv and not argv[0].startswith("--"):
        _merge(data, load_yaml(argv[0], locations))
        i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            bare.append(arg)
            i += 1
            continue
        name, has_value, text = option_name(arg).partition("=")
        dotted = (aliases or {}).get(name, name)
        keys = dotted.split(".")
        if name == "config":
            if not has_value:
                if i + 1 >= len(argv):
                    raise UserError("--config needs a YAML file")
                text, i = argv[i + 1], i + 1
            _merge(data, load_yaml(text, locations))
            i += 1
            continue
        tp = _field_type(cls, keys)
        if not has_value:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or (nxt.startswith("--") and nxt != "--"):
                if tp is not bool and tp != (bool | None):
                    raise UserError(f"--{dotted} needs a value ({type_words(tp)})")
                text = "true"
            else:
                text, i = nxt, i + 1
        ok, value = _from_text(text, tp)
        if not ok:
            raise UserError(f"--{dotted} must be {type_words(tp)}, got {text!r}")
        _switch_name(data, keys, value, locations)
        _set(data, keys, value)
        locations[dotted] = f"--{dotted}"
        i += 1
    _fill_positional(cls, data, bare, positional, locations)
    return build(cls, data, locations), locations


def _switch_name(data: dict[str, Any], keys: list[str], value: Any, locations: Locations) -> None:
    """``--objective.name X`` over a recipe whose objective is another one: the recipe's options
    belong to ITS objective, so they are dropped (said on stderr), not handed to X. Options
    given on the command line stay."""
    if len(keys) != 2 or keys[1] != "name" or not isinstance(data.get(keys[0]), dict):
        return
    section = data[keys[0]]
    if section.get("name") in (None, value):
        return
    dropped = [
        k
        for k in section
        if k != "name" and not locations.get(f"{keys[0]}.{k}", "").startswith("--")
    ]
    if dropped:
        old = section["name"]
        for k in dropped:
            section.pop(k)
            locations.pop(f"{keys[0]}.{k}", None)
        print(
            f"note: --{keys[0]}.name {value} replaces the recipe's {old}: dropped its options "
            f"{', '.join(dropped)}",
            file=sys.stderr,
        )


def _fill_positional(cls, data, bare, positional, locations) -> None:
    if len(bare) > len(positional) and not (
        positional and typing.get_origin(typing.get_type_hints(cls)[positional[-1]]) is list
    ):
        extra = bare[len(positional)]
        raise UserError(f"unexpected argument {extra!r} (options are written --name value)")
    hints = typing.get_type_hints(cls)
    for j, name in enumerate(positional):
        if j >= len(bare):
            break
        is_list = typing.get_origin(hints[name]) is list
        data[name] = bare[j:] if is_list and j == len(positional) - 1 else bare[j]
        locations[name] = name


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# ----------------------------------------------------------------------------- help


def describe_fields(cls: type, prefix: str = "", indent: str = "  ") -> str:
    """``--prefix.name (type, default X)`` and its description, for every field."""
    lines = []
    for name, tp, default, doc in documented_fields(cls):
        if dataclasses.is_dataclass(tp):  # a section: described on its own
            continue
        default = " (required)" if default is dataclasses.MISSING else f" = {default!r}"
        lines.append(f"{indent}--{prefix}{name}: {type_words(tp)}{default}")
        if doc:
            lines.append(doc_block(doc, indent))
    return "\n".join(lines)


def sections(cls: type) -> dict[str, type]:
    """Nested dataclass fields of ``cls`` by name (the recipe sections)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(hints[f.name])
    }
