"""Declarative little-endian wire structures: the one codec every protocol layer uses.

Each protocol message is one frozen dataclass whose fields carry their wire
format in ``dataclasses.field(metadata=...)``, made by the helpers below;
:class:`Struct` derives ``pack()`` / ``unpack()`` from that declaration, as
scapy derives building and dissection from a layer's field list, so handlers
never do offset arithmetic on raw bytes.  A malformed message fails in
``unpack`` with :class:`DecodeError`, which each layer turns into its own
protocol error; a message that cannot be encoded fails in ``pack`` with
``ValueError``.

Declaring a message::

    @dataclass(frozen=True)
    class CHALLENGE_AUTH(SpdmMessage):               # header fields come from the base
        CODE: ClassVar[int] = CHALLENGE_AUTH_CODE
        cert_chain_hash: bytes = raw("H")            # negotiated size (context)
        nonce: bytes = raw(32)
        measurement_summary_hash: bytes = raw("MS")
        opaque_length: int = u16()                   # filled from opaque_data
        opaque_data: bytes = counted("opaque_length")
        requester_context: bytes = raw(8, since=0x13)  # only from version 1.3 on
        signature: bytes = raw("S")

Field kinds:

* ``u8()``, ``u16()``, ``u24()``, ``u32()``, ``u64()`` -- unsigned integers;
  ``u16(message_length=True)`` (also ``u8``, ``u32``) holds the byte length of
  the whole message: ``pack`` writes it, ``unpack`` ends the message there (a ``tail()``
  stops at it, bytes after it are not consumed) and fails if the fields do not
  fill it exactly;
* ``raw(n)`` -- exactly ``n`` bytes; ``raw("H")`` -- as many bytes as the size
  context says for the name ``"H"`` (negotiated sizes, see below);
* ``tail()`` -- all remaining bytes of the message;
* ``counted(length_field, unit=1)`` -- bytes whose length is ``unit`` times an
  earlier integer field;
* ``items(SubStruct, count_field)`` -- a list of sub-structures whose number
  is an earlier integer field;
* ``pad(align)`` -- zero bytes up to the next multiple of ``align`` bytes from
  the start of the structure (DSP0274 opaque elements' AlignPadding); left
  empty, ``pack`` writes the zeros, ``unpack`` keeps what it read.

Every helper also takes ``since=`` and ``when=``:

* ``since=V`` -- the field exists only when the message's version field (the
  field the class names in ``VERSION_FIELD``) is at least ``V``;
* ``when=f`` -- the field exists only when ``f(values, ctx)`` is true, where
  ``values`` maps the names of the fields decoded so far (all fields, when
  packing) to their values and ``ctx`` is the size context: a flag in the same
  message (``lambda v, c: v["param1"] & 1``) or a fact of the negotiation
  (``lambda v, c: c.signed``).

Length and count fields are automatic.  A count or length field left at 0
while its data is not empty is filled in when the object is built (so
``msg.opaque_length`` is right at once); a ``message_length`` field left at 0
is filled in by ``pack``.  A non-zero value given by the caller must agree
with the data, or ``pack`` raises ``ValueError``; :meth:`Struct.replace`
recomputes the counts of the data it changes.  ``unpack`` reads the count and
takes exactly that much, so a decoded message always agrees with itself.

The size context (``ctx``, an object with a ``size(name) -> int`` method, e.g.
the SPDM ``Sizes`` of a connection) supplies what only the negotiation fixes:
``raw("H")`` asks ``ctx.size("H")``.  ``pack(ctx)``, ``unpack(data, ctx)`` and
``unpack_partial(data, ctx)`` take it; a class may supply a default context
for its version by overriding :meth:`Struct.default_context`.

``unpack`` decodes a whole buffer (trailing bytes are a :class:`DecodeError`
unless ``exact=False``); ``unpack_partial`` returns the message and exactly
how many bytes it took (what a transcript must hash when a transport pads);
``unpack_from(data, offset)`` decodes in the middle of a buffer.

A class may name its code field (``CODE_FIELD``) and its code (``CODE``): the
code is filled in when the field is left at 0, and ``unpack`` fails on any
other code.  ``unpack`` builds the object without calling ``__init__`` (the
values were already checked against the declaration), so a subclass puts no
validation in ``__post_init__``; one that defines ``__post_init__`` calls
``super().__post_init__()``, which fills the automatic fields.

Compared with scapy: the field list is the dataclass itself (type-checked, no
metaclass), conditions are plain functions of the values decoded so far, and
there is no implicit guessing -- a field's size is a constant, a negotiated
size, a count field, or the rest of the message.

Layout is compiled once per class (and per version range) into runs of
fixed-size fields, each one :class:`struct.Struct`, so the declaration costs
no more than hand-written ``struct.pack`` calls on the hot DOE/SPDM path.
"""

from __future__ import annotations

import bisect
import dataclasses
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

T = TypeVar("T", bound="Struct")

_INT_FORMATS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}
_INT_SIZES = {"u8": 1, "u16": 2, "u24": 3, "u32": 4, "u64": 8}


class DecodeError(ValueError):
    """Raised when bytes do not decode as the declared message."""


class SizeContext(Protocol):
    """What the negotiation fixed: sizes of fields named by a string."""

    def size(self, name: str) -> int: ...


Cond = Callable[[dict[str, Any], Any], bool]


def _field(kind: str, default: Any = 0, *, factory: Callable[[], Any] | None = None,
           since: int | None = None, when: Cond | None = None, **extra: Any) -> Any:
    meta = {"wire": kind, "since": since, "when": when, **extra}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def u8(default: int = 0, *, since: int | None = None, when: Cond | None = None,
       message_length: bool = False) -> Any:
    return _field("u8", default, since=since, when=when, message_length=message_length)


def u16(default: int = 0, *, since: int | None = None, when: Cond | None = None,
        message_length: bool = False) -> Any:
    return _field("u16", default, since=since, when=when, message_length=message_length)


def u24(default: int = 0, *, since: int | None = None, when: Cond | None = None) -> Any:
    return _field("u24", default, since=since, when=when)


def u32(default: int = 0, *, since: int | None = None, when: Cond | None = None,
        message_length: bool = False) -> Any:
    return _field("u32", default, since=since, when=when, message_length=message_length)


def u64(default: int = 0, *, since: int | None = None, when: Cond | None = None) -> Any:
    return _field("u64", default, since=since, when=when)


def raw(size: int | str, default: bytes | None = None, *, since: int | None = None,
        when: Cond | None = None) -> Any:
    """``size`` bytes, or, for a string, as many as ``ctx.size(size)`` says."""
    if default is None:
        default = bytes(size) if isinstance(size, int) else b""
    return _field("raw", default, since=since, when=when, size=size)


def tail(*, since: int | None = None, when: Cond | None = None) -> Any:
    return _field("tail", b"", since=since, when=when)


def counted(length_field: str, unit: int = 1, *, since: int | None = None,
            when: Cond | None = None) -> Any:
    """Bytes whose length is ``unit * <length_field>``."""
    return _field("counted", b"", since=since, when=when, ref=length_field, unit=unit)


def pad(align: int, *, since: int | None = None, when: Cond | None = None) -> Any:
    """Padding to a multiple of ``align`` bytes, counted from the structure's start."""
    return _field("pad", b"", since=since, when=when, align=align)


def items(item_type: type[Struct], count_field: str, *, since: int | None = None,
          when: Cond | None = None) -> Any:
    """A list of ``item_type`` whose number is ``<count_field>``."""
    return _field("items", factory=list, since=since, when=when, item=item_type,
                  ref=count_field)


# -- compiled layout ------------------------------------------------------------------
# A program is a tuple of steps; each step is a tuple: its opcode, its ``when``
# condition (None: always present), the defaults of its fields when the
# condition is false, then the opcode's operands:
#   _FIXED   struct.Struct, field names, raw-size checks, (offset, Struct, name) of a
#            message_length field in the run or None
#   _U24 / _TAIL                name
#   _SIZED                      name, size name for the context
#   _COUNTED                    name, count field, unit
#   _ITEMS                      name, item class, count field
#   _PAD                        name, alignment
_FIXED, _U24, _SIZED, _COUNTED, _ITEMS, _TAIL, _PAD = range(7)


_EMPTY_RUN: tuple[Any, ...] = (_FIXED, None, {}, struct.Struct("<"), (), (), None)


class _Program:
    """The layout of one class for one version range."""

    __slots__ = ("steps", "absent", "factories", "needs_ctx", "simple", "fixed",
                 "tail_name", "has_length")

    def __init__(self, steps: list[tuple[Any, ...]], absent: dict[str, Any],
                 factories: list[tuple[str, Callable[[], Any]]], has_length: bool) -> None:
        self.steps = tuple(steps)
        self.absent = absent          # defaults of the fields this version lacks
        self.factories = factories
        self.has_length = has_length
        self.needs_ctx = any(s[1] is not None or s[0] == _SIZED for s in steps)
        # The common shapes (only fixed fields, maybe then a tail) take a short path.
        lead = bool(steps) and steps[0][0] == _FIXED
        self.fixed: tuple[Any, ...] = steps[0] if lead else _EMPTY_RUN
        rest = steps[1:] if lead else steps
        self.tail_name: str | None = None
        self.simple = False
        if not has_length and not factories and all(s[1] is None for s in steps):
            if not rest:
                self.simple = True
            elif len(rest) == 1 and rest[0][0] == _TAIL:
                self.simple = True
                self.tail_name = rest[0][3]


class _Info:
    """Everything compiled for one class."""

    __slots__ = ("programs", "thresholds", "version_field", "version_at", "auto",
                 "code", "length_fields")

    def __init__(self) -> None:
        self.programs: list[_Program] = []
        self.thresholds: list[int] = []
        self.version_field: str | None = None
        self.version_at: tuple[int, struct.Struct] | None = None
        self.auto: tuple[tuple[str, str, int], ...] = ()   # (count field, data field, unit)
        self.code: tuple[str, int] | None = None
        self.length_fields: tuple[str, ...] = ()


def _program(cls: type, metas: list[tuple[dataclasses.Field[Any], str, Any]],
             allowed: set[int], has_length: bool) -> _Program:
    """The layout of ``cls`` when the versions in ``allowed`` are reached."""
    steps: list[tuple[Any, ...]] = []
    absent: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    run_fmt = "<"
    run_names: list[str] = []
    run_checks: list[tuple[str, int]] = []
    run_len: tuple[int, struct.Struct, str] | None = None

    def flush() -> None:
        nonlocal run_fmt, run_names, run_checks, run_len
        if run_names:
            steps.append((_FIXED, None, {}, struct.Struct(run_fmt), tuple(run_names),
                          tuple(run_checks), run_len))
        run_fmt, run_names, run_checks, run_len = "<", [], [], None

    for f, kind, meta in metas:
        since, when = meta.get("since"), meta.get("when")
        if since is not None and since not in allowed:
            if f.default_factory is not dataclasses.MISSING:
                factories.append((f.name, f.default_factory))
            else:
                absent[f.name] = f.default
            continue
        if when is None and (kind in _INT_FORMATS or
                             (kind == "raw" and isinstance(meta["size"], int))):
            if meta.get("message_length"):
                run_len = (struct.calcsize(run_fmt),
                           struct.Struct("<" + _INT_FORMATS[kind]), f.name)
                run_fmt += _INT_FORMATS[kind]
            elif kind in _INT_FORMATS:
                run_fmt += _INT_FORMATS[kind]
            else:
                run_fmt += f"{meta['size']}s"
                run_checks.append((f.name, meta["size"]))
            run_names.append(f.name)
            continue
        if meta.get("message_length"):
            raise TypeError(f"{cls.__name__}.{f.name}: a message_length field "
                            "cannot depend on a condition")
        flush()
        skip = {f.name: f.default_factory() if f.default_factory  # type: ignore[misc]
                is not dataclasses.MISSING else f.default} if when is not None else {}
        if kind in _INT_FORMATS or kind == "raw" and isinstance(meta["size"], int):
            fmt = "<" + (_INT_FORMATS[kind] if kind in _INT_FORMATS
                         else f"{meta['size']}s")
            checks = ((f.name, meta["size"]),) if kind == "raw" else ()
            steps.append((_FIXED, when, skip, struct.Struct(fmt), (f.name,), checks, None))
        elif kind == "u24":
            steps.append((_U24, when, skip, f.name))
        elif kind == "raw":
            steps.append((_SIZED, when, skip, f.name, meta["size"]))
        elif kind == "counted":
            steps.append((_COUNTED, when, skip, f.name, meta["ref"], meta["unit"]))
        elif kind == "items":
            steps.append((_ITEMS, when, skip, f.name, meta["item"], meta["ref"]))
        elif kind == "tail":
            steps.append((_TAIL, when, skip, f.name))
        elif kind == "pad":
            steps.append((_PAD, when, skip, f.name, meta["align"]))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unknown wire kind {kind!r}")
    flush()
    return _Program(steps, absent, factories, has_length)


def _compile(cls: type[Struct]) -> _Info:
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    info = _Info()
    metas = []
    for f in fields:
        kind = f.metadata.get("wire")
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no wire format")
        metas.append((f, kind, f.metadata))
    version_field = getattr(cls, "VERSION_FIELD", None)
    info.version_field = version_field
    info.thresholds = sorted({m["since"] for _f, _k, m in metas if m.get("since") is not None})
    if info.thresholds and version_field is None:
        raise TypeError(f"{cls.__name__}: since= needs a VERSION_FIELD")
    code_field = getattr(cls, "CODE_FIELD", None)
    code = getattr(cls, "CODE", 0)
    if code_field and code:
        info.code = (code_field, code)
    info.auto = tuple((m["ref"], f.name, m.get("unit", 1)) for f, k, m in metas
                      if k in ("counted", "items"))
    info.length_fields = tuple(f.name for f, _k, m in metas if m.get("message_length"))
    if len(info.length_fields) > 1:
        raise TypeError(f"{cls.__name__}: more than one message_length field")

    for key in range(len(info.thresholds) + 1):
        info.programs.append(_program(cls, metas, set(info.thresholds[:key]),
                                      bool(info.length_fields)))

    if version_field is not None:
        offset = 0
        for f, kind, meta in metas:
            if meta.get("since") is not None or meta.get("when") is not None or \
                    kind not in _INT_FORMATS and not (kind == "raw" and
                                                      isinstance(meta["size"], int)):
                break
            if f.name == version_field:
                info.version_at = (offset, struct.Struct("<" + _INT_FORMATS[kind]))
                break
            offset += _INT_SIZES[kind] if kind in _INT_SIZES else meta["size"]
        if info.version_at is None:
            raise TypeError(f"{cls.__name__}: VERSION_FIELD {version_field!r} must be an "
                            "integer among the leading fixed fields")
    return info


class Struct:
    """Mixin for frozen dataclasses declared with the field helpers above."""

    #: Name of the field ``since=`` compares against (None: no versioned fields).
    VERSION_FIELD: ClassVar[str | None] = None
    #: Name of the field that must hold ``CODE`` (None: not checked).
    CODE_FIELD: ClassVar[str | None] = None

    @classmethod
    def _wire(cls) -> _Info:
        info = cls.__dict__.get("_wire_info")
        if info is None:
            info = _compile(cls)
            cls._wire_info = info  # type: ignore[attr-defined]
        return info

    @classmethod
    def default_context(cls, version: int | None) -> Any:
        """The size context used when the caller gives none."""
        return None

    def __post_init__(self) -> None:
        info = type(self).__dict__.get("_wire_info") or type(self)._wire()
        if info.auto:
            d = self.__dict__
            for ref, name, unit in info.auto:
                if d[ref] == 0 and d[name]:
                    d[ref] = len(d[name]) // unit if unit > 1 else len(d[name])
        if info.code is not None and self.__dict__[info.code[0]] == 0:
            self.__dict__[info.code[0]] = info.code[1]

    @classmethod
    def fixed_size(cls) -> int:
        """Size of the message when it has no variable-length fields."""
        info = cls._wire()
        if len(info.programs) != 1:
            raise TypeError(f"{cls.__name__} has version-dependent fields")
        steps = info.programs[0].steps
        if any(s[0] not in (_FIXED, _U24) or s[1] is not None for s in steps):
            raise TypeError(f"{cls.__name__} has variable-length fields")
        return sum(s[3].size if s[0] == _FIXED else 3 for s in steps)

    # -- encoding ---------------------------------------------------------------------
    def pack(self, ctx: Any = None) -> bytes:
        cls = type(self)
        info = cls.__dict__.get("_wire_info") or cls._wire()
        vals = self.__dict__
        if info.version_field is None:
            prog = info.programs[0]
        else:
            prog = info.programs[bisect.bisect_right(info.thresholds,
                                                     vals[info.version_field])]
        try:
            if prog.simple:
                _, _, _, st, names, checks, _ = prog.fixed
                for name, size in checks:
                    if len(vals[name]) != size:
                        raise ValueError(f"{cls.__name__}.{name} must be {size} bytes, "
                                         f"got {len(vals[name])}")
                head = st.pack(*[vals[n] for n in names])
                return head + vals[prog.tail_name] if prog.tail_name else head
            if ctx is None and prog.needs_ctx:
                ctx = cls.default_context(vals[info.version_field]
                                          if info.version_field else None)
            return self._pack_steps(prog, vals, ctx)
        except (struct.error, OverflowError) as exc:
            raise ValueError(f"{cls.__name__}: {exc}") from None
        except TypeError as exc:  # a None or str where the declaration wants int/bytes
            raise ValueError(f"{cls.__name__}: {exc}") from None

    def _pack_steps(self, prog: _Program, vals: dict[str, Any], ctx: Any) -> bytes:
        cls = type(self)
        out = bytearray()
        length_at: tuple[int, struct.Struct, str] | None = None
        for step in prog.steps:
            op, when = step[0], step[1]
            if when is not None and not when(vals, ctx):
                continue
            if op == _FIXED:
                _, _, _, st, names, checks, len_info = step
                for name, size in checks:
                    if len(vals[name]) != size:
                        raise ValueError(f"{cls.__name__}.{name} must be {size} bytes, "
                                         f"got {len(vals[name])}")
                if len_info is not None:
                    length_at = (len(out) + len_info[0], len_info[1], len_info[2])
                out += st.pack(*[vals[n] for n in names])
            elif op == _U24:
                out += vals[step[3]].to_bytes(3, "little")
            elif op == _SIZED:
                name, size_name = step[3], step[4]
                size = _ctx_size(cls, ctx, size_name)
                value = vals[name]
                if len(value) != size:
                    raise ValueError(f"{cls.__name__}.{name}: {len(value)} bytes, "
                                     f"expected {size} ({size_name})")
                out += value
            elif op == _COUNTED:
                name, ref, unit = step[3], step[4], step[5]
                value = vals[name]
                if len(value) != vals[ref] * unit:
                    raise ValueError(f"{cls.__name__}.{name} is {len(value)} bytes but "
                                     f"{ref} says {vals[ref] * unit}")
                out += value
            elif op == _ITEMS:
                name, ref = step[3], step[5]
                value = vals[name]
                if len(value) != vals[ref]:
                    raise ValueError(f"{cls.__name__}.{name} has {len(value)} items but "
                                     f"{ref} says {vals[ref]}")
                for item in value:
                    out += item.pack(ctx)
            elif op == _PAD:
                name, size = step[3], -len(out) % step[4]
                value = vals[name]
                if value and len(value) != size:
                    raise ValueError(f"{cls.__name__}.{name}: {len(value)} bytes of "
                                     f"padding where {size} are due")
                out += value or bytes(size)
            else:
                out += vals[step[3]]
        if length_at is not None:
            pos, st, name = length_at
            given = vals[name]
            if given == 0:
                st.pack_into(out, pos, len(out))
            elif given != len(out):
                raise ValueError(f"{cls.__name__}.{name} is {given} but the message is "
                                 f"{len(out)} bytes")
        return bytes(out)

    # -- decoding ---------------------------------------------------------------------
    @classmethod
    def unpack(cls: type[T], data: bytes | bytearray | memoryview, ctx: Any = None, *,
               exact: bool = True) -> T:
        """Decode ``data``; with ``exact`` trailing bytes are an error."""
        obj, used = cls.unpack_from(data, 0, ctx)
        if exact and used != len(data):
            raise DecodeError(
                f"{cls.__name__}: {len(data) - used} unexpected trailing byte(s)")
        return obj

    @classmethod
    def unpack_partial(cls: type[T], data: bytes | bytearray | memoryview,
                       ctx: Any = None) -> tuple[T, int]:
        """The message at the start of ``data`` and exactly how many bytes it took."""
        return cls.unpack_from(data, 0, ctx)

    @classmethod
    def unpack_from(cls: type[T], data: bytes | bytearray | memoryview, offset: int = 0,
                    ctx: Any = None) -> tuple[T, int]:
        """Decode at ``offset``; returns the message and the offset after it."""
        info = cls.__dict__.get("_wire_info") or cls._wire()
        end = len(data)
        if info.version_at is None:
            prog = info.programs[0]
            version = None
        else:
            at, vst = info.version_at
            if end - offset < at + vst.size:
                raise DecodeError(f"{cls.__name__}: {end - offset} bytes, too short for "
                                  "the header")
            version = vst.unpack_from(data, offset + at)[0]
            prog = info.programs[bisect.bisect_right(info.thresholds, version)]
        obj = object.__new__(cls)
        if prog.simple:
            st = prog.fixed[3]
            pos = offset + st.size
            if pos > end:
                raise DecodeError(f"{cls.__name__}: {end - offset} bytes, need {st.size}")
            values = dict(zip(prog.fixed[4], st.unpack_from(data, offset), strict=True))
            if prog.tail_name is not None:
                values[prog.tail_name] = bytes(data[pos:])
                pos = end
            if prog.absent:
                values.update(prog.absent)
        else:
            if ctx is None and prog.needs_ctx:
                ctx = cls.default_context(version)
            values, pos = cls._unpack_steps(prog, data, offset, ctx)
        if info.code is not None and values[info.code[0]] != info.code[1]:
            raise DecodeError(f"{cls.__name__}: code {values[info.code[0]]:#x}, "
                              f"expected {info.code[1]:#x}")
        obj.__dict__.update(values)
        return obj, pos

    @classmethod
    def _unpack_steps(cls, prog: _Program, data: bytes | bytearray | memoryview,
                      offset: int, ctx: Any) -> tuple[dict[str, Any], int]:
        values: dict[str, Any] = dict(prog.absent)
        for name, factory in prog.factories:
            values[name] = factory()
        pos = offset
        end = len(data)
        for step in prog.steps:
            op, when = step[0], step[1]
            if when is not None and not when(values, ctx):
                values.update(step[2])
                continue
            if op == _FIXED:
                st, names, len_info = step[3], step[4], step[6]
                if pos + st.size > end:
                    raise DecodeError(f"{cls.__name__}: truncated at {names[0]} "
                                      f"(needs {pos + st.size - offset} bytes, has "
                                      f"{end - offset})")
                values.update(zip(names, st.unpack_from(data, pos), strict=True))
                if len_info is not None:
                    length = values[len_info[2]]
                    if offset + length > end:
                        raise DecodeError(f"{cls.__name__}: length {length}, only "
                                          f"{end - offset} bytes")
                    if length < pos + st.size - offset:
                        raise DecodeError(f"{cls.__name__}: length {length} shorter than "
                                          "its fixed fields")
                    end = offset + length
                pos += st.size
            elif op == _TAIL:
                values[step[3]] = bytes(data[pos:end])
                pos = end
            elif op == _ITEMS:
                name, item_type, ref = step[3], step[4], step[5]
                lst = []
                view = data if end == len(data) else memoryview(data)[:end]
                for _ in range(values[ref]):
                    item, pos = item_type.unpack_from(view, pos, ctx)
                    lst.append(item)
                values[name] = lst
            else:
                name = step[3]
                if op == _U24:
                    size = 3
                elif op == _SIZED:
                    size = _ctx_size(cls, ctx, step[4])
                elif op == _PAD:
                    size = -(pos - offset) % step[4]
                else:
                    size = values[step[4]] * step[5]
                if pos + size > end:
                    raise DecodeError(f"{cls.__name__}: truncated at {name} "
                                      f"(needs {pos + size - offset} bytes, has "
                                      f"{end - offset})")
                chunk = bytes(data[pos:pos + size])
                values[name] = int.from_bytes(chunk, "little") if op == _U24 else chunk
                pos += size
        if prog.has_length and pos != end:
            raise DecodeError(f"{cls.__name__}: length {end - offset} but the fields take "
                              f"{pos - offset} bytes")
        return values, pos

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes``; counts of changed data are recomputed unless given."""
        info = type(self)._wire()
        for ref, name, _unit in info.auto:
            if name in changes and ref not in changes:
                changes[ref] = 0
        for name in info.length_fields:
            if name not in changes:
                changes[name] = 0
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _ctx_size(cls: type, ctx: Any, name: str) -> int:
    if ctx is None:
        raise ValueError(f"{cls.__name__}: field size {name!r} needs a size context")
    return int(ctx.size(name))
