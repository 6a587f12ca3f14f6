"""PCI configuration space with declared register semantics (PCIe r6.x §7.5).

A :class:`ConfigSpace` is 4 KiB of bytes plus two masks: which bits software
may write (``wmask``) and which are write-1-to-clear (``w1cmask``).  Every
other bit is read-only.  Capabilities declare their registers once with
:class:`Reg` and the masks follow from that declaration; capabilities whose
registers have side effects (DOE, MSI-X control, FLR) override
:meth:`Capability.read_dword` / :meth:`Capability.write_dword` for just those
dwords.

Accesses may be any length at any offset (QEMU reads the whole space in one
message); they are split into dwords with byte enables.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

CONFIG_SPACE_SIZE = 4096
PCI_STD_HEADER_END = 0x40
PCI_EXT_CAP_START = 0x100

PCI_CAPABILITY_LIST = 0x34
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10


@dataclass(frozen=True)
class Reg:
    """One register: offset relative to its block, size in bytes, reset value,
    writable bits and write-1-to-clear bits.  Bits in neither mask are RO."""

    name: str
    offset: int
    size: int
    reset: int = 0
    rw: int = 0
    w1c: int = 0


class ConfigAccessError(ValueError):
    """Access outside config space."""


WriteListener = Callable[[int, int, int, int], None]  # (dword_offset, old, new, byte_mask)


class Capability:
    """A capability occupying ``size`` bytes at ``offset`` (assigned on install).

    Subclasses set ``CAP_ID`` and ``EXTENDED`` (plus ``VERSION`` for extended
    capabilities), declare ``registers()`` relative to the capability start
    (excluding the header dword's ID/next fields), and may override
    ``read_dword``/``write_dword`` for registers with side effects, listing
    their relative dword offsets in ``dynamic_dwords``.
    """

    CAP_ID: ClassVar[int]
    EXTENDED: ClassVar[bool] = False
    VERSION: ClassVar[int] = 1
    NAME: ClassVar[str] = "capability"

    def __init__(self, size: int) -> None:
        if size % 4:
            raise ValueError("capability size must be whole dwords")
        self.size = size
        self.offset = -1
        self.space: ConfigSpace | None = None
        self.dynamic_dwords: set[int] = set()

    def registers(self) -> Iterable[Reg]:
        return ()

    # Hooks for registers with side effects; ``rel`` is relative to self.offset.
    def read_dword(self, rel: int, stored: int) -> int:
        return stored

    def write_dword(self, rel: int, old: int, new: int, value: int, byte_mask: int) -> int:
        """Called after masking (``new``) with the raw written ``value``;
        returns the value to store."""
        return new

    def reset(self) -> None:
        """Re-apply register reset values (called by ConfigSpace.reset)."""

    # helpers for subclasses
    def get(self, rel: int, size: int = 4) -> int:
        assert self.space is not None
        return self.space.get(self.offset + rel, size)

    def set(self, rel: int, value: int, size: int = 4) -> None:
        assert self.space is not None
        self.space.set(self.offset + rel, value, size)


class ConfigSpace:
    def __init__(self, size: int = CONFIG_SPACE_SIZE) -> None:
        self.size = size
        self.data = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)
        self._reset_image = bytearray(size)
        self.capabilities: list[Capability] = []
        self._dynamic: dict[int, Capability] = {}  # absolute dword offset -> cap
        self._std_tail = 0  # offset of last standard capability (for chaining)
        self._ext_tail = 0
        self._std_next_free = PCI_STD_HEADER_END
        self._ext_next_free = PCI_EXT_CAP_START
        self.listeners: list[WriteListener] = []

    # -- raw storage -----------------------------------------------------------
    def get(self, offset: int, size: int = 4) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, value: int, size: int = 4) -> None:
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little"
        )

    def declare(self, base: int, regs: Iterable[Reg]) -> None:
        """Apply register declarations at absolute ``base``."""
        for r in regs:
            off = base + r.offset
            if off + r.size > self.size:
                raise ValueError(f"register {r.name} beyond config space")
            mask = (1 << (8 * r.size)) - 1
            self.set(off, r.reset, r.size)
            self._reset_image[off : off + r.size] = self.data[off : off + r.size]
            self.wmask[off : off + r.size] = (r.rw & mask).to_bytes(r.size, "little")
            self.w1cmask[off : off + r.size] = (r.w1c & mask).to_bytes(r.size, "little")

    # -- capabilities ------------------------------------------------------------
    def add_capability(self, cap: Capability, offset: int | None = None) -> Capability:
        if cap.EXTENDED:
            off = self._ext_next_free if offset is None else offset
            if off < PCI_EXT_CAP_START or off + cap.size > self.size or off % 4:
                raise ValueError(f"bad extended capability offset {off:#x}")
        else:
            off = self._std_next_free if offset is None else offset
            if off < PCI_STD_HEADER_END or off + cap.size > 0x100 or off % 4:
                raise ValueError(f"bad capability offset {off:#x}")
        for other in self.capabilities:
            if off < other.offset + other.size and other.offset < off + cap.size:
                raise ValueError(f"{cap.NAME} at {off:#x} overlaps {other.NAME}")
        cap.offset = off
        cap.space = self
        self.capabilities.append(cap)
        if cap.EXTENDED:
            header = cap.CAP_ID | (cap.VERSION << 16)
            self.declare(off, [Reg("ext_cap_header", 0, 4, header)])
            if self._ext_tail:
                prev = self.get(self._ext_tail)
                self.set(self._ext_tail, (prev & 0x000FFFFF) | (off << 20))
                self._reset_image[self._ext_tail : self._ext_tail + 4] = self.data[
                    self._ext_tail : self._ext_tail + 4
                ]
            self._ext_tail = off
            self._ext_next_free = max(self._ext_next_free, off + cap.size)
        else:
            self.declare(off, [Reg("cap_header", 0, 2, cap.CAP_ID)])
            if self._std_tail:
                self.data[self._std_tail + 1] = off
                self._reset_image[self._std_tail + 1] = off
            else:
                self.data[PCI_CAPABILITY_LIST] = off
                self._reset_image[PCI_CAPABILITY_LIST] = off
                self.data[PCI_STATUS] |= PCI_STATUS_CAP_LIST
                self._reset_image[PCI_STATUS] |= PCI_STATUS_CAP_LIST
            self._std_tail = off
            self._std_next_free = max(self._std_next_free, off + cap.size)
        self.declare(off, cap.registers())
        for rel in cap.dynamic_dwords:
            self._dynamic[off + rel] = cap
        return cap

    def find(self, cap_type: type[Capability]) -> Capability | None:
        for cap in self.capabilities:
            if isinstance(cap, cap_type):
                return cap
        return None

    def reset(self) -> None:
        """Return every register to its reset value (FLR, device reset)."""
        self.data[:] = self._reset_image
        for cap in self.capabilities:
            cap.reset()

    # -- accesses ------------------------------------------------------------------
    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ConfigAccessError(
                f"config access {offset:#x}+{length} outside {self.size:#x} bytes"
            )

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        if not self._dynamic:
            return bytes(self.data[offset : offset + length])
        out = bytearray(self.data[offset : offset + length])
        first = offset & ~3
        for dw in range(first, offset + length, 4):
            cap = self._dynamic.get(dw)
            if cap is None:
                continue
            value = cap.read_dword(dw - cap.offset, self.get(dw))
            raw = value.to_bytes(4, "little")
            for i in range(4):
                pos = dw + i - offset
                if 0 <= pos < length:
                    out[pos] = raw[i]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        end = offset + len(data)
        dw = offset & ~3
        while dw < end:
            byte_mask = 0
            value = 0
            for i in range(4):
                pos = dw + i
                if offset <= pos < end:
                    byte_mask |= 0xFF << (8 * i)
                    value |= data[pos - offset] << (8 * i)
            self._write_dword(dw, value, byte_mask)
            dw += 4

    def _write_dword(self, dw: int, value: int, byte_mask: int) -> None:
        old = self.get(dw)
        wmask = struct.unpack_from("<I", self.wmask, dw)[0] & byte_mask
        w1c = struct.unpack_from("<I", self.w1cmask, dw)[0] & byte_mask
        new = (old & ~wmask) | (value & wmask)
        new &= ~(value & w1c)
        cap = self._dynamic.get(dw)
        if cap is not None:
            new = cap.write_dword(dw - cap.offset, old, new, value & byte_mask, byte_mask)
            new &= 0xFFFFFFFF
        self.set(dw, new)
        for listener in self.listeners:
            listener(dw, old, new, byte_mask)
