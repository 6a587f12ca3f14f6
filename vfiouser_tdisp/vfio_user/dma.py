"""Guest memory as the server sees it: the client's DMA_MAP table.

A mapping that came with a file descriptor is read and written through that
file; one without (QEMU's ROM range, or guest RAM that is not shared) is
reached by sending VFIO_USER_DMA_READ / VFIO_USER_DMA_WRITE requests to the
client over the same socket.  Accesses may span adjacent mappings.

The client owns the file and can truncate it at any time.  Touching an mmap
beyond the end of a shrunken file raises SIGBUS, which would take down every
device in the process, so a file is only mmap'ed when it is sealed against
shrinking (F_SEAL_SHRINK: QEMU's memory-backend-memfd seals its files by
default); any other file is accessed with pread/pwrite, where a shrunken file
gives a short read (a DMA fault for that device, nothing more).

Every fd handed to :meth:`DmaTable.add` belongs to the table from then on:
kept by the mapping, or closed when the mapping is refused or removed.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import mmap
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from .device import DmaFault
from .messages import VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE


class MapError(Exception):
    """A DMA_MAP the table refuses; carries the errno for the reply."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclass(eq=False)
class Mapping:
    address: int
    size: int
    flags: int
    fd: int | None = None  # None: reach it through DMA_READ/WRITE messages
    file_offset: int = 0
    mem: mmap.mmap | None = None  # only for files sealed against shrinking

    @property
    def end(self) -> int:
        return self.address + self.size

    def release(self) -> None:
        if self.mem is not None:
            self.mem.close()
            self.mem = None
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def read(self, off: int, n: int) -> bytes:
        if self.mem is not None:
            return self.mem[off : off + n]
        assert self.fd is not None
        try:
            data = os.pread(self.fd, n, self.file_offset + off)
        except OSError as exc:
            raise DmaFault(f"DMA read of the client's memory failed: {exc}") from None
        if len(data) != n:
            raise DmaFault(f"client memory at {self.address + off:#x} is gone "
                           f"(its file shrank below the DMA mapping)")
        return data

    def write(self, off: int, data: bytes | memoryview) -> None:
        if self.mem is not None:
            self.mem[off : off + len(data)] = data
            return
        assert self.fd is not None
        pos = self.file_offset + off
        try:
            # pwrite past the end would grow the client's file instead of
            # failing: refuse what is no longer there.
            if os.fstat(self.fd).st_size < pos + len(data):
                raise DmaFault(f"client memory at {self.address + off:#x} is gone "
                               f"(its file shrank below the DMA mapping)")
            done = os.pwrite(self.fd, data, pos)
        except OSError as exc:
            raise DmaFault(f"DMA write to the client's memory failed: {exc}") from None
        if done != len(data):
            raise DmaFault(f"short DMA write at {self.address + off:#x}")


MessageRead = Callable[[int, int], bytes]
MessageWrite = Callable[[int, bytes], None]


def _shrink_sealed(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:
        return False  # not a memfd: no seals


class DmaTable:
    """The client's DMA mappings plus the two ways to reach them."""

    def __init__(self, max_maps: int = 65535) -> None:
        self.max_maps = max_maps
        self._starts: list[int] = []
        self._maps: list[Mapping] = []
        self.message_read: MessageRead | None = None
        self.message_write: MessageWrite | None = None
        self.max_xfer = 1 << 20
        # False: never mmap, even sealed files (benchmarks compare the two)
        self.mmap_sealed = True

    def __len__(self) -> int:
        return len(self._maps)

    def mappings(self) -> list[Mapping]:
        return list(self._maps)

    def add(self, address: int, size: int, flags: int, fd: int | None, offset: int) -> None:
        """Add a mapping; takes ownership of ``fd`` whatever happens."""
        try:
            mapping = self._make(address, size, flags, fd, offset)
        except BaseException:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        i = bisect.bisect_right(self._starts, address)
        self._starts.insert(i, address)
        self._maps.insert(i, mapping)

    def _make(self, address: int, size: int, flags: int, fd: int | None,
              offset: int) -> Mapping:
        if size == 0 or address + size > 1 << 64:
            raise MapError(errno.EINVAL, f"bad DMA range {address:#x}+{size:#x}")
        if len(self._maps) >= self.max_maps:
            raise MapError(errno.ENOSPC, "too many DMA mappings")
        i = bisect.bisect_right(self._starts, address)
        if (i > 0 and self._maps[i - 1].end > address) or (
                i < len(self._maps) and self._maps[i].address < address + size):
            raise MapError(errno.EEXIST, f"DMA range {address:#x} overlaps an existing mapping")
        if fd is None:
            return Mapping(address, size, flags)
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise MapError(errno.EINVAL, f"DMA_MAP fd: {exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise MapError(errno.EINVAL, "DMA_MAP fd is not a regular file")
        if offset + size > st.st_size:
            raise MapError(errno.EINVAL, f"DMA_MAP offset {offset:#x}+{size:#x} beyond "
                                         f"the file's {st.st_size:#x} bytes")
        mem = None
        if self.mmap_sealed and _shrink_sealed(fd) and offset % mmap.ALLOCATIONGRANULARITY == 0:
            prot = mmap.PROT_READ
            if flags & VFIO_DMA_MAP_FLAG_WRITE:
                prot |= mmap.PROT_WRITE
            try:
                mem = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot, offset=offset)
            except (OSError, ValueError, OverflowError) as exc:
                raise MapError(errno.EINVAL, f"DMA_MAP cannot map the file: {exc}") from None
            # The mapping keeps the file; the fd is not needed any more.
            os.close(fd)
            return Mapping(address, size, flags, None, offset, mem)
        return Mapping(address, size, flags, fd, offset)

    def remove(self, address: int, size: int) -> int:
        """Remove mappings inside [address, address+size); returns how many."""
        removed = 0
        keep_s: list[int] = []
        keep_m: list[Mapping] = []
        for m in self._maps:
            if m.address >= address and m.end <= address + size:
                m.release()
                removed += 1
            else:
                keep_s.append(m.address)
                keep_m.append(m)
        self._starts, self._maps = keep_s, keep_m
        return removed

    def clear(self) -> None:
        for m in self._maps:
            m.release()
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
                raise DmaFault(f"DMA to unmapped address {pos:#x}")
            m = self._maps[i]
            if not m.flags & need:
                raise DmaFault(f"DMA mapping at {m.address:#x} does not permit this access")
            n = min(end, m.end) - pos
            out.append((m, pos - m.address, n))
            pos += n
            i += 1
        return out

    def read(self, addr: int, size: int) -> bytes:
        chunks = []
        for m, off, n in self._pieces(addr, size, VFIO_DMA_MAP_FLAG_READ):
            if m.fd is None and m.mem is None:
                chunks.append(self._message_read(m.address + off, n))
            else:
                chunks.append(m.read(off, n))
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, addr: int, data: bytes) -> None:
        pos = 0
        view = memoryview(data)
        for m, off, n in self._pieces(addr, len(data), VFIO_DMA_MAP_FLAG_WRITE):
            if m.fd is None and m.mem is None:
                self._message_write(m.address + off, bytes(view[pos : pos + n]))
            else:
                m.write(off, view[pos : pos + n])
            pos += n

    def _message_read(self, addr: int, size: int) -> bytes:
        if self.message_read is None:
            raise DmaFault("no client to send DMA_READ to")
        out = []
        for start in range(0, size, self.max_xfer):
            n = min(self.max_xfer, size - start)
            out.append(self.message_read(addr + start, n))
        return b"".join(out)

    def _message_write(self, addr: int, data: bytes) -> None:
        if self.message_write is None:
            raise DmaFault("no client to send DMA_WRITE to")
        for start in range(0, len(data), self.max_xfer):
            self.message_write(addr + start, data[start : start + self.max_xfer])
