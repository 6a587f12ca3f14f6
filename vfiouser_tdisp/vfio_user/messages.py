"""vfio-user wire messages (QEMU docs/interop/vfio-user.rst, hw/vfio-user/protocol.h).

Every message starts with a 16-byte header; the command-specific payload
follows.  Structures imported from linux/vfio.h keep their VFIO names.
Layouts are the ones QEMU 10.1+ puts on the wire (e.g. DMA_READ/WRITE carry
a 32-bit count and the data start at offset 28 of the message).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..wire import Struct, raw, tail, u16, u32, u64


class Command(enum.IntEnum):
    VFIO_USER_VERSION = 1
    VFIO_USER_DMA_MAP = 2
    VFIO_USER_DMA_UNMAP = 3
    VFIO_USER_DEVICE_GET_INFO = 4
    VFIO_USER_DEVICE_GET_REGION_INFO = 5
    VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6
    VFIO_USER_DEVICE_GET_IRQ_INFO = 7
    VFIO_USER_DEVICE_SET_IRQS = 8
    VFIO_USER_REGION_READ = 9
    VFIO_USER_REGION_WRITE = 10
    VFIO_USER_DMA_READ = 11
    VFIO_USER_DMA_WRITE = 12
    VFIO_USER_DEVICE_RESET = 13
    VFIO_USER_DIRTY_PAGES = 14
    VFIO_USER_REGION_WRITE_MULTI = 15


VFIO_USER_REQUEST = 0x0
VFIO_USER_REPLY = 0x1
VFIO_USER_TYPE = 0xF
VFIO_USER_NO_REPLY = 0x10
VFIO_USER_ERROR = 0x20

HEADER_SIZE = 16

# linux/vfio.h flags
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3
VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1

VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = 0x7
VFIO_IRQ_SET_ACTION_TYPE_MASK = 0x38

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1

VFIO_USER_MULTI_DATA = 8
VFIO_USER_MULTI_MAX = 200


@dataclass(frozen=True)
class VfioUserHeader(Struct):
    msg_id: int = u16()
    command: int = u16()
    msg_size: int = u32()
    flags: int = u32()
    error_reply: int = u32()


@dataclass(frozen=True)
class VfioUserVersion(Struct):
    major: int = u16()
    minor: int = u16()
    capabilities: bytes = tail()  # NUL-terminated JSON


@dataclass(frozen=True)
class VfioUserDmaMap(Struct):
    argsz: int = u32()
    flags: int = u32()
    offset: int = u64()
    address: int = u64()
    size: int = u64()


@dataclass(frozen=True)
class VfioUserDmaUnmap(Struct):
    argsz: int = u32()
    flags: int = u32()
    address: int = u64()
    size: int = u64()
    bitmap: bytes = tail()


@dataclass(frozen=True)
class VfioDeviceInfo(Struct):
    argsz: int = u32()
    flags: int = u32()
    num_regions: int = u32()
    num_irqs: int = u32()


@dataclass(frozen=True)
class VfioRegionInfo(Struct):
    argsz: int = u32()
    flags: int = u32()
    index: int = u32()
    cap_offset: int = u32()
    size: int = u64()
    offset: int = u64()
    caps: bytes = tail()


@dataclass(frozen=True)
class VfioInfoCapHeader(Struct):
    id: int = u16()
    version: int = u16()
    next: int = u32()


@dataclass(frozen=True)
class VfioRegionSparseMmapArea(Struct):
    offset: int = u64()
    size: int = u64()


@dataclass(frozen=True)
class VfioRegionInfoCapSparseMmap(Struct):
    header: bytes = raw(8)  # VfioInfoCapHeader
    nr_areas: int = u32()
    reserved: int = u32()
    areas: bytes = tail()  # nr_areas x VfioRegionSparseMmapArea


@dataclass(frozen=True)
class VfioIrqInfo(Struct):
    argsz: int = u32()
    flags: int = u32()
    index: int = u32()
    count: int = u32()


@dataclass(frozen=True)
class VfioIrqSet(Struct):
    argsz: int = u32()
    flags: int = u32()
    index: int = u32()
    start: int = u32()
    count: int = u32()
    data: bytes = tail()


@dataclass(frozen=True)
class VfioUserRegionAccess(Struct):
    offset: int = u64()
    region: int = u32()
    count: int = u32()
    data: bytes = tail()


@dataclass(frozen=True)
class VfioUserDmaRw(Struct):
    """QEMU's VFIOUserDMARW: data at message offset 28; 4 bytes of tail
    padding make the fixed part 32 bytes (sizeof in C)."""

    offset: int = u64()
    count: int = u32()
    data: bytes = tail()


@dataclass(frozen=True)
class VfioUserWriteOne(Struct):
    offset: int = u64()
    region: int = u32()
    count: int = u32()
    data: bytes = raw(VFIO_USER_MULTI_DATA)


@dataclass(frozen=True)
class VfioUserWriteMulti(Struct):
    wr_cnt: int = u64()
    writes: bytes = tail()  # wr_cnt x VfioUserWriteOne


def header(msg_id: int, command: int, size: int, flags: int, error: int = 0) -> bytes:
    return VfioUserHeader(msg_id, command, size, flags, error).pack()


def reply(req: VfioUserHeader, payload: bytes = b"") -> bytes:
    return header(req.msg_id, req.command, HEADER_SIZE + len(payload), VFIO_USER_REPLY) + payload


def error_reply(req: VfioUserHeader, errno_: int) -> bytes:
    return header(req.msg_id, req.command, HEADER_SIZE, VFIO_USER_REPLY | VFIO_USER_ERROR, errno_)
