"""Typed option sections (objective and data-kind options) built from recipe mappings.

A method's options are a dataclass whose fields carry defaults and whose docstring documents them
(an ``Attributes:`` section, the same style the training config uses). :func:`build_options`
turns a recipe mapping into that dataclass with errors a user can act on: an unknown option names
the closest valid one ("did you mean temperature?") and lists them all; a value of the wrong
type names the option, the value and the expected type. :func:`describe` renders the options
with their defaults and docs for ``--help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from contrasent.core.errors import UserError


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, transpositions
    (a typo like 'modle' is one edit from 'model')."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def suggest(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean X?)`` for the closest of ``valid`` (fewest edits, then the most similar
    length and spelling), or an empty string when nothing is close. A shortened name
    (``mlm_prob``) means the options it starts (``mlm_probability``), however many edits away."""
    close = [v for v in valid if len(name) >= 4 and v.startswith(name)]
    close = close or difflib.get_close_matches(name, list(valid), n=5, cutoff=0.6)
    if not close:
        return ""
    best = min(
        close,
        key=lambda v: (
            _edits(name, v),
            abs(len(v) - len(name)),
            -difflib.SequenceMatcher(None, name, v).ratio(),
        ),
    )
    return f" (did you mean {best}?)"


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its one-paragraph description from the class docstring's Attributes."""
    import docstring_parser

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's text wins over its base's
        if klass is object:
            continue
        parsed = docstring_parser.parse_from_object(klass)  # also attribute docstrings
        for param in parsed.params:
            if param.description:
                docs[param.arg_name] = " ".join(param.description.split())
    return docs


def type_words(tp: Any) -> str:
    """What a value of type ``tp`` is, in words ("a number", "true or false", ...)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_words(a) for a in typing.get_args(tp))
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a text",
             type(None): "null", Any: "a value"}  # fmt: skip
    if tp in words:
        return words[tp]
    if origin in (list, tuple) or tp in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value converted to ``tp``) for the types option sections use."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, None
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        if isinstance(value, os.PathLike):  # pathlib.Path where a path is meant (from Python)
            return True, os.fspath(value)
        return isinstance(value, str), value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        out = []
        for v in value:
            ok, item = _coerce(v, arg)
            if not ok:
                return False, value
            out.append(item)
        return True, out
    if origin is dict or tp is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    return isinstance(value, tp) if isinstance(tp, type) else True, value


Locations = dict[str, str]  # dotted key -> "file:line" (or "--key" for command-line values)


def build(
    cls: type,
    data: Mapping[str, Any] | None,
    locations: Locations | None = None,
    prefix: str = "",
    *,
    label: str | None = None,
    key: str | None = None,
) -> Any:
    """The dataclass ``cls`` from the mapping ``data`` (nested dataclasses are sections): the one
    builder behind recipes, command lines and the options of objectives and data kinds.

    A mistake is one :class:`UserError` saying where the value came from: with ``label`` (e.g.
    ``"objective simcse_unsup"``) the options of that named thing, whose recipe section is
    ``key`` (the error's ``key``, so the CLI can name the recipe line); otherwise the recipe
    ``file:line`` recorded in ``locations`` for the dotted option under ``prefix``.
    """
    if label is None and not isinstance(data, Mapping):
        raise UserError(f"{_where(locations, prefix.rstrip('.'))}{prefix or 'the recipe'} "
                        f"must be a mapping of options, got {data!r}")  # fmt: skip
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for name, value in dict(data or {}).items():
        dotted, where = f"{prefix}{name}", f"{key}.{name}" if key else None
        if name not in names:
            if label is not None:
                raise UserError(
                    f"{label}: unknown option {name!r}{suggest(name, names)}; valid options: "
                    f"{', '.join(names) or '(none)'}",
                    where,
                )
            raise UserError(
                f"{_where(locations, dotted)}unknown option {dotted!r}{suggest(str(name), names)}"
                f"; {prefix.rstrip('.') or 'the top level'} has: {', '.join(names)}"
            )
        tp = hints[name]
        if label is None and dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value if value is not None else {}, locations, dotted + ".")
            continue
        ok, kwargs[name] = _coerce(value, tp)
        if not ok and label is not None:
            raise UserError(
                f"{label}: option {name} must be {type_words(tp)}, got {value!r}", where
            )
        if not ok:
            raise UserError(
                f"{_where(locations, dotted)}{dotted} must be {type_words(tp)}, got {value!r}"
            )
    if label is None:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # __post_init__ range checks raise ValueError
        raise UserError(f"{label}: {err}", key) from None


def build_options(
    cls: type, values: Mapping[str, Any] | None, label: str, key: str | None = None
) -> Any:
    """The options dataclass ``cls`` of the thing ``label`` names (an objective, a data kind)."""
    return build(cls, values, label=label, key=key)


def _where(locations: Locations | None, key: str) -> str:
    loc = (locations or {}).get(key)
    return f"{loc}: " if loc and not loc.startswith("--") else ""


def options_dict(options: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (what runs record and ``config_dict`` returns)."""
    return dataclasses.asdict(options)


def documented_fields(cls: type) -> list[tuple[str, Any, Any, str | None]]:
    """``(name, type, default, description)`` of every init field of a dataclass; ``default``
    is ``dataclasses.MISSING`` for a required one, a factory's value otherwise."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append((f.name, hints[f.name], default, docs.get(f.name)))
    return out


def doc_block(text: str, indent: str) -> str:
    """An option's description, wrapped at 100 columns, four spaces under its option line."""
    pad = indent + "    "
    return textwrap.fill(text, 100, initial_indent=pad, subsequent_indent=pad)


def describe(cls: type, indent: str = "  ") -> str:
    """One line per option: ``name: type = default`` and its description underneath."""
    lines = []
    for name, tp, default, doc in documented_fields(cls):
        default = "(required)" if default is dataclasses.MISSING else default
        lines.append(f"{indent}{name}: {type_words(tp)} = {default!r}")
        if doc:
            lines.append(doc_block(doc, indent))
    return "\n".join(lines) if lines else f"{indent}(no options)"


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``--shard I/N`` (0 <= I < N) -> (I, N); None (and a parsed pair) stay as they are. One
    reader for every command that splits its input across jobs (embed, mine, data prepare)."""
    if spec is None or isinstance(spec, tuple):
        return spec
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise UserError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {spec}: need 0 <= I < N (shards are numbered from 0)")
    return i, n
