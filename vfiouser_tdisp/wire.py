"""Declarative little-endian wire structures shared by every protocol layer.

Each protocol message is one frozen dataclass whose fields carry their wire
format in ``dataclasses.field(metadata=...)``; :class:`Struct` derives
``pack()`` / ``unpack()`` from that declaration so handlers never do offset
arithmetic on raw bytes.  A malformed message fails in ``unpack`` with
:class:`DecodeError`, which each layer turns into its own protocol error.

Field kinds (helpers below):

* ``u8()``, ``u16()``, ``u32()``, ``u64()`` -- fixed-width unsigned integers;
* ``raw(n)`` -- exactly ``n`` bytes;
* ``tail()`` -- all remaining bytes (only as the last field);
* ``counted(length_field)`` -- bytes whose length is given by an earlier
  integer field (``pack`` checks that the two agree);
* ``items(SubStruct, count_field)`` -- a list of fixed-size sub-structures
  whose count is given by an earlier integer field.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, TypeVar

T = TypeVar("T", bound="Struct")

_INT_FORMATS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}


class DecodeError(ValueError):
    """Raised when bytes do not decode as the declared message."""


def _meta(kind: str, **extra: Any) -> dict[str, Any]:
    return {"wire": kind, **extra}


def u8(default: int = 0) -> Any:
    return dataclasses.field(default=default, metadata=_meta("u8"))


def u16(default: int = 0) -> Any:
    return dataclasses.field(default=default, metadata=_meta("u16"))


def u32(default: int = 0) -> Any:
    return dataclasses.field(default=default, metadata=_meta("u32"))


def u64(default: int = 0) -> Any:
    return dataclasses.field(default=default, metadata=_meta("u64"))


def raw(size: int, default: bytes | None = None) -> Any:
    return dataclasses.field(
        default=bytes(size) if default is None else default,
        metadata=_meta("raw", size=size),
    )


def tail() -> Any:
    return dataclasses.field(default=b"", metadata=_meta("tail"))


def counted(length_field: str, unit: int = 1) -> Any:
    """Bytes whose length is ``unit * <length_field>``."""
    return dataclasses.field(
        default=b"", metadata=_meta("counted", ref=length_field, unit=unit)
    )


def items(item_type: type[Struct], count_field: str) -> Any:
    return dataclasses.field(
        default_factory=list,
        metadata=_meta("items", item=item_type, ref=count_field),
    )


class Struct:
    """Mixin for frozen dataclasses declared with the field helpers above."""

    @classmethod
    def _fields_plan(cls) -> list[tuple[str, str, dict[str, Any]]]:
        plan = cls.__dict__.get("_plan_cache")
        if plan is None:
            plan = []
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                kind = f.metadata.get("wire")
                if kind is None:
                    raise TypeError(f"{cls.__name__}.{f.name} has no wire format")
                plan.append((f.name, kind, dict(f.metadata)))
            cls._plan_cache = plan  # type: ignore[attr-defined]
        return plan

    @classmethod
    def fixed_size(cls) -> int:
        """Size of the message when it has no variable-length fields."""
        total = 0
        for _name, kind, meta in cls._fields_plan():
            if kind in _INT_FORMATS:
                total += struct.calcsize("<" + _INT_FORMATS[kind])
            elif kind == "raw":
                total += meta["size"]
            else:
                raise TypeError(f"{cls.__name__} has variable-length fields")
        return total

    @classmethod
    def _fast(cls) -> tuple[struct.Struct, int, str | None]:
        """Compiled format of the leading fixed fields, how many there are, and
        the name of a trailing ``tail()`` field if it is the only other one."""
        fast = cls.__dict__.get("_fast_cache")
        if fast is None:
            fmt = "<"
            n = 0
            plan = cls._fields_plan()
            for _name, kind, meta in plan:
                if kind in _INT_FORMATS:
                    fmt += _INT_FORMATS[kind]
                elif kind == "raw":
                    fmt += f"{meta['size']}s"
                else:
                    break
                n += 1
            rest = plan[n:]
            tail_name = rest[0][0] if len(rest) == 1 and rest[0][1] == "tail" else None
            fast = (struct.Struct(fmt), n, tail_name)
            cls._fast_cache = fast  # type: ignore[attr-defined]
        return fast

    def pack(self) -> bytes:
        compiled, n, tail_name = self._fast()
        plan = self._fields_plan()
        if n == len(plan) or tail_name is not None:
            try:
                head = compiled.pack(*(getattr(self, name) for name, _k, _m in plan[:n]))
            except struct.error as exc:
                raise ValueError(f"{type(self).__name__}: {exc}") from None
            return head + getattr(self, tail_name) if tail_name else head
        out = bytearray()
        values = {name: getattr(self, name) for name, _k, _m in self._fields_plan()}
        for name, kind, meta in self._fields_plan():
            value = values[name]
            if kind in _INT_FORMATS:
                try:
                    out += struct.pack("<" + _INT_FORMATS[kind], value)
                except struct.error as exc:
                    raise ValueError(f"{type(self).__name__}.{name}={value!r}: {exc}") from None
            elif kind == "raw":
                if len(value) != meta["size"]:
                    raise ValueError(
                        f"{type(self).__name__}.{name} must be {meta['size']} bytes, "
                        f"got {len(value)}"
                    )
                out += value
            elif kind == "tail":
                out += value
            elif kind == "counted":
                want = values[meta["ref"]] * meta["unit"]
                if len(value) != want:
                    raise ValueError(
                        f"{type(self).__name__}.{name} is {len(value)} bytes but "
                        f"{meta['ref']} says {want}"
                    )
                out += value
            elif kind == "items":
                if len(value) != values[meta["ref"]]:
                    raise ValueError(
                        f"{type(self).__name__}.{name} has {len(value)} items but "
                        f"{meta['ref']} says {values[meta['ref']]}"
                    )
                for item in value:
                    out += item.pack()
        return bytes(out)

    @classmethod
    def unpack(cls: type[T], data: bytes | bytearray | memoryview, *, exact: bool = True) -> T:
        """Decode ``data``; with ``exact`` trailing bytes are an error."""
        obj, used = cls.unpack_from(data, 0)
        if exact and used != len(data):
            raise DecodeError(
                f"{cls.__name__}: {len(data) - used} unexpected trailing byte(s)"
            )
        return obj

    @classmethod
    def unpack_from(
        cls: type[T], data: bytes | bytearray | memoryview, offset: int = 0
    ) -> tuple[T, int]:
        """Decode at ``offset``; returns the message and the offset after it."""
        compiled, n, tail_name = cls._fast()
        plan = cls._fields_plan()
        if n == len(plan) or tail_name is not None:
            if len(data) - offset < compiled.size:
                raise DecodeError(
                    f"{cls.__name__}: {len(data) - offset} bytes, need {compiled.size}")
            fixed = compiled.unpack_from(data, offset)
            kwargs = {name: v for (name, _k, _m), v in zip(plan, fixed, strict=False)}
            if tail_name is None:
                return cls(**kwargs), offset + compiled.size
            kwargs[tail_name] = bytes(data[offset + compiled.size :])
            return cls(**kwargs), len(data)
        buf = bytes(data)
        pos = offset
        values: dict[str, Any] = {}
        for name, kind, meta in cls._fields_plan():
            if kind in _INT_FORMATS:
                fmt = "<" + _INT_FORMATS[kind]
                size = struct.calcsize(fmt)
                if pos + size > len(buf):
                    raise DecodeError(f"{cls.__name__}: truncated at field {name}")
                values[name] = struct.unpack_from(fmt, buf, pos)[0]
                pos += size
            elif kind == "raw":
                size = meta["size"]
                if pos + size > len(buf):
                    raise DecodeError(f"{cls.__name__}: truncated at field {name}")
                values[name] = buf[pos : pos + size]
                pos += size
            elif kind == "tail":
                values[name] = buf[pos:]
                pos = len(buf)
            elif kind == "counted":
                size = values[meta["ref"]] * meta["unit"]
                if pos + size > len(buf):
                    raise DecodeError(
                        f"{cls.__name__}: {name} needs {size} bytes, {len(buf) - pos} left"
                    )
                values[name] = buf[pos : pos + size]
                pos += size
            elif kind == "items":
                item_type: type[Struct] = meta["item"]
                lst = []
                for _ in range(values[meta["ref"]]):
                    item, pos = item_type.unpack_from(buf, pos)
                    lst.append(item)
                values[name] = lst
        return cls(**values), pos

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
