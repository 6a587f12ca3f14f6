"""Device profiles as TOML files: a generic loader from a dataclass's declared fields.

A profile file is a TOML table whose keys are the profile dataclass's field
names.  A table ``[spdm]`` is a section: its key ``hash`` sets the field
``spdm_hash`` (section name, underscore, key), so related fields read as a
group without the loader knowing any of them.  A field whose type is itself a
dataclass takes a table (``[msix]``); a tuple of dataclasses takes an array of
tables (``[[bars]]``).  Types come from the dataclass's type hints, so a field
added to the profile is loadable, type-checked and documented-by-error with no
code here.

Every mistake is one :class:`ProfileError` whose message starts with the file
and the key (``dev.toml: spdm.hash[1]: ...``).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ProfileError(ValueError):
    """A profile that cannot be used; ``key`` names the field or TOML key at fault."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


# Checks beyond the type: field name -> callable raising ValueError with a reason.
FieldCheck = Callable[[Any], None]


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({kind})"


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is tuple:
        return f"an array of {_expected(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` (as tomllib returns it) checked against the type hint ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        # TOML has no null: an optional field given a value takes its other type.
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return convert(value, options[0], key)
        errors = []
        for option in options:
            try:
                return convert(value, option, key)
            except ProfileError as exc:
                errors.append(exc.message)
        raise ProfileError("; or ".join(errors), key)
    if tp is Any or tp is object:
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        raise ProfileError(f"expected one of {', '.join(map(repr, choices))}, got "
                           f"{_describe(value)}", key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:  # by value ("page-number") or by name ("PAGE_NUMBER")
            if value == member.value or value == member.name:
                return member
        raise ProfileError(f"expected one of {', '.join(repr(m.value) for m in tp)}, got "
                           f"{_describe(value)}", key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, list):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(convert(v, a, f"{key}[{i}]")
                             for i, (v, a) in enumerate(zip(value, args, strict=True)))
    elif origin is dict:
        _, vt = typing.get_args(tp)
        if isinstance(value, dict):
            return {k: convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, dict):
            return from_table(tp, value, prefix=key, sections=False)
    else:
        raise ProfileError(f"field type {tp} cannot be given in a profile file", key)
    raise ProfileError(f"expected {_expected(tp)}, got {_describe(value)}", key)


def _unknown(key: str, known: list[str]) -> ProfileError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ProfileError(f"unknown key{hint}", key)


def from_table(cls: type[T], table: Mapping[str, Any], *, prefix: str = "",
               sections: bool = True,
               checks: Mapping[str, FieldCheck] | None = None) -> T:
    """Build dataclass ``cls`` from a TOML table.

    With ``sections``, a table under a key that is no field is a section whose
    keys name the fields ``<section>_<key>``.  ``checks`` are run on the
    values given (by field name) after their types are checked; the
    dataclass's own ``__post_init__`` may raise :class:`ProfileError` with a
    field name as ``key``, which is translated into the key the file used.
    """
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}

    def where(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    values: dict[str, Any] = {}
    shown: dict[str, str] = {}  # field name -> the key the file used for it

    def take(name: str, key: str, value: Any) -> None:
        if name in values:
            raise ProfileError(f"given twice (also as {shown[name]})", key)
        values[name] = convert(value, hints[name], key)
        shown[name] = key

    for key, value in table.items():
        if key in fields:
            take(key, where(key), value)
        elif sections and isinstance(value, dict) and any(
                n.startswith(f"{key}_") for n in fields):
            for sub, v in value.items():
                name = f"{key}_{sub}"
                if name not in fields:
                    raise _unknown(where(f"{key}.{sub}"), [n[len(key) + 1:] for n in fields
                                                           if n.startswith(f"{key}_")])
                take(name, where(f"{key}.{sub}"), v)
        else:
            raise _unknown(where(key), list(fields))
    missing = [n for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ProfileError(f"missing required key {missing[0]!r}", prefix)
    for name, check in (checks or {}).items():
        if name in values:
            try:
                check(values[name])
            except ValueError as exc:
                raise ProfileError(str(exc), shown[name]) from None
    try:
        return cls(**values)
    except ProfileError as exc:
        key = shown.get(exc.key) or where(exc.key) if exc.key else prefix
        raise ProfileError(exc.message, key) from None
    except (ValueError, TypeError) as exc:
        raise ProfileError(str(exc), prefix) from None


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML table in ``path``; unreadable or malformed files are one ProfileError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ProfileError(f"{path}: {exc.strerror or exc}") from None


def toml_keys(cls: type, *, prefix: str = "", sections: tuple[str, ...] = ()) -> list[str]:
    """Every key a file may set for ``cls``: fields, ``section.key`` for the
    sections named, and nested dataclass keys (for documentation and tests)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        section = next((s for s in sections if f.name.startswith(f"{s}_")), None)
        key = f"{section}.{f.name[len(section) + 1:]}" if section else f.name
        key = f"{prefix}{key}"
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        inner = next((a for a in typing.get_args(inner) if a is not type(None)), inner) \
            if typing.get_origin(inner) in (typing.Union, types.UnionType) else inner
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            sep = "[]." if typing.get_origin(tp) is tuple else "."
            out += toml_keys(inner, prefix=f"{key}{sep}")
        else:
            out.append(key)
    return out
