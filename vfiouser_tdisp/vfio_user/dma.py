"""Guest memory as the server sees it: the client's DMA_MAP table.

A mapping that came with a file descriptor is mmap'ed and accessed directly;
one without (QEMU's ROM range, or guest RAM that is not shared) is reached by
sending VFIO_USER_DMA_READ / VFIO_USER_DMA_WRITE requests to the client over
the same socket.  Accesses may span adjacent mappings.
"""

from __future__ import annotations

import bisect
import mmap
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..device.function import DmaError
from .messages import VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE


@dataclass
class Mapping:
    address: int
    size: int
    flags: int
    mem: mmap.mmap | None  # None: reach it through DMA_READ/WRITE messages

    @property
    def end(self) -> int:
        return self.address + self.size


MessageDma = Callable[[int, int], Awaitable[bytes]]
MessageDmaWrite = Callable[[int, bytes], Awaitable[None]]


class DmaTable:
    """The client's DMA mappings plus the two ways to reach them."""

    def __init__(self, max_maps: int = 65535) -> None:
        self.max_maps = max_maps
        self._starts: list[int] = []
        self._maps: list[Mapping] = []
        self.message_read: MessageDma | None = None
        self.message_write: MessageDmaWrite | None = None
        self.max_xfer = 1 << 20

    def __len__(self) -> int:
        return len(self._maps)

    def mappings(self) -> list[Mapping]:
        return list(self._maps)

    def add(self, address: int, size: int, flags: int, fd: int | None, offset: int) -> None:
        if size == 0 or address + size > 1 << 64:
            raise ValueError(f"bad DMA range {address:#x}+{size:#x}")
        if len(self._maps) >= self.max_maps:
            raise OverflowError("too many DMA mappings")
        i = bisect.bisect_right(self._starts, address)
        if i > 0 and self._maps[i - 1].end > address:
            raise FileExistsError(f"DMA range {address:#x} overlaps an existing mapping")
        if i < len(self._maps) and self._maps[i].address < address + size:
            raise FileExistsError(f"DMA range {address:#x} overlaps an existing mapping")
        mem = None
        if fd is not None:
            prot = 0
            if flags & VFIO_DMA_MAP_FLAG_READ:
                prot |= mmap.PROT_READ
            if flags & VFIO_DMA_MAP_FLAG_WRITE:
                prot |= mmap.PROT_WRITE | mmap.PROT_READ
            try:
                mem = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot or mmap.PROT_READ,
                                offset=offset)
            finally:
                os.close(fd)
        self._starts.insert(i, address)
        self._maps.insert(i, Mapping(address, size, flags, mem))

    def remove(self, address: int, size: int) -> int:
        """Remove mappings inside [address, address+size); returns how many."""
        removed = 0
        keep_s: list[int] = []
        keep_m: list[Mapping] = []
        for m in self._maps:
            if m.address >= address and m.end <= address + size:
                if m.mem is not None:
                    m.mem.close()
                removed += 1
            else:
                keep_s.append(m.address)
                keep_m.append(m)
        self._starts, self._maps = keep_s, keep_m
        return removed

    def clear(self) -> None:
        for m in self._maps:
            if m.mem is not None:
                m.mem.close()
        self._starts, self._maps = [], []

    def _pieces(self, addr: int, size: int, need: int) -> list[tuple[Mapping, int, int]]:
        """Split [addr, addr+size) over mappings: (mapping, offset, length)."""
        out = []
        pos = addr
        end = addr + size
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            if i < 0 or i >= len(self._maps) or not (
                    self._maps[i].address <= pos < self._maps[i].end):
                raise DmaError(f"DMA to unmapped address {pos:#x}")
            m = self._maps[i]
            if not m.flags & need:
                raise DmaError(f"DMA mapping at {m.address:#x} does not permit this access")
            n = min(end, m.end) - pos
            out.append((m, pos - m.address, n))
            pos += n
            i += 1
        return out

    async def read(self, addr: int, size: int) -> bytes:
        chunks = []
        for m, off, n in self._pieces(addr, size, VFIO_DMA_MAP_FLAG_READ):
            if m.mem is not None:
                chunks.append(m.mem[off : off + n])
            else:
                chunks.append(await self._message_read(m.address + off, n))
        return b"".join(chunks)

    async def write(self, addr: int, data: bytes) -> None:
        pos = 0
        for m, off, n in self._pieces(addr, len(data), VFIO_DMA_MAP_FLAG_WRITE):
            if m.mem is not None:
                m.mem[off : off + n] = data[pos : pos + n]
            else:
                await self._message_write(m.address + off, data[pos : pos + n])
            pos += n

    async def _message_read(self, addr: int, size: int) -> bytes:
        if self.message_read is None:
            raise DmaError("no client to send DMA_READ to")
        out = []
        for start in range(0, size, self.max_xfer):
            n = min(self.max_xfer, size - start)
            out.append(await self.message_read(addr + start, n))
        return b"".join(out)

    async def _message_write(self, addr: int, data: bytes) -> None:
        if self.message_write is None:
            raise DmaError("no client to send DMA_WRITE to")
        for start in range(0, len(data), self.max_xfer):
            await self.message_write(addr + start, data[start : start + self.max_xfer])
