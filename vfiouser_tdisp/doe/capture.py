"""pcap capture of DOE data objects (LINKTYPE_PCI_DOE = 292).

The file format is libpcap's classic savefile (pcap-savefile(5); the IETF
draft-ietf-opsawg-pcap): a 24-byte global header (magic 0xA1B2C3D4, version
2.4, SnapLen, LinkType) and per packet a 16-byte record header (ts_sec,
ts_usec, incl_len, orig_len) followed by incl_len bytes.  The link type is
the one the tcpdump.org LINKTYPE registry and DMTF (libspdm
``link_type_ex.h``, spdm-dump) assign: 291 = LINKTYPE_MCTP, 292 =
LINKTYPE_PCI_DOE, whose packets start with DOE data object header 1.

SnapLen is 65536: DMTF spdm-dump refuses a file whose SnapLen is 0 or above
``PCAP_PACKET_MAX_SIZE`` (0x10000) and stops reading at the first record
whose incl_len is 0 or above it.  A DOE object may reach 2^18 dwords (1 MiB,
PCIe r6.x §6.30.1); one longer than SnapLen is written the way pcap-savefile
says a capture limited by its snapshot length is: its first 65536 bytes, with
incl_len = 65536 and orig_len = the object's real length.  Decoders see that
incl_len < orig_len and know the object was cut.  (SPDM messages larger than
the transfer size travel chunked, so the objects an SPDM flow produces stay
far below this; only a deliberately huge object is cut.)

:class:`PcapWriter` subscribes to a :class:`DoeDispatcher` as an observer, so
objects from every transport (config-space mailbox, spdm-emu socket) land in
one file, in both directions, exactly as they crossed the mailbox: secured
SPDM records stay encrypted.  LINKTYPE_PCI_DOE has no direction field; a
reader tells requests from responses by their content (see
``vfiouser_tdisp.inspect``).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..events import emit
from ..wire import DecodeError, Struct, u16, u32

LINKTYPE_MCTP = 291
LINKTYPE_PCI_DOE = 292
PCAP_MAGIC = 0xA1B2C3D4
PCAP_VERSION = (2, 4)
# DMTF spdm-dump's PCAP_PACKET_MAX_SIZE: the largest SnapLen/incl_len it reads.
SNAPLEN = 0x10000
# Captures hold the device's SPDM traffic (certificates, measurements, vendor
# payloads before a session): the owner's only, whatever the umask.
CAPTURE_FILE_MODE = 0o600



@dataclass(frozen=True)
class PcapGlobalHeader(Struct):
    """libpcap file format global header (little-endian, microsecond stamps).
    thiszone is a signed offset; we always write 0 (UTC) and do not read it."""

    magic_number: int = u32(PCAP_MAGIC)
    version_major: int = u16(PCAP_VERSION[0])
    version_minor: int = u16(PCAP_VERSION[1])
    thiszone: int = u32()
    sigfigs: int = u32()
    snaplen: int = u32(SNAPLEN)
    network: int = u32(LINKTYPE_PCI_DOE)


@dataclass(frozen=True)
class PcapRecordHeader(Struct):
    """libpcap per-packet header: timestamp, bytes saved, bytes on the wire."""

    ts_sec: int = u32()
    ts_usec: int = u32()
    incl_len: int = u32()
    orig_len: int = u32()


_RECORD_SIZE = PcapRecordHeader.fixed_size()


def open_private_file(path: str | os.PathLike[str], mode: int, *,
                      append: bool) -> BinaryIO:
    """Open ``path`` for writing with exactly ``mode``, never through a symlink.

    The file is created with ``mode`` (O_CREAT with the mode given at
    creation, so it is never briefly more open than asked), a symlink as the
    last component is refused (O_NOFOLLOW), and anything but a regular file
    (a FIFO, a device) is refused before a byte is written.  An existing file
    is re-moded to ``mode`` through the descriptor (fchmod), so a file left
    world-readable by an older run does not stay so; a file we may not chmod
    (someone else's) is refused.  ``append`` keeps existing content,
    otherwise it is truncated.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if append:
        flags |= os.O_APPEND
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise OSError(exc.errno, "refusing to follow a symlink", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path}: not a regular file")
        os.fchmod(fd, mode)
        if not append:
            os.ftruncate(fd, 0)
        # O_NONBLOCK only guarded the open against a FIFO without a reader.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


class PcapWriter:
    def __init__(self, stream: BinaryIO, linktype: int = LINKTYPE_PCI_DOE) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self.count = 0
        stream.write(PcapGlobalHeader(network=linktype).pack())
        stream.flush()

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> PcapWriter:
        """A new capture file at ``path`` (mode 0600, see :func:`open_private_file`)."""
        return cls(open_private_file(path, CAPTURE_FILE_MODE, append=False))

    def write(self, data: bytes, timestamp: float | None = None) -> None:
        us = time.time_ns() // 1000 if timestamp is None else round(timestamp * 1_000_000)
        sec, usec = divmod(us, 1_000_000)
        incl = data[:SNAPLEN]
        if len(incl) < len(data):
            emit("capture.truncated", size=len(data), kept=len(incl))
        with self._lock:
            self.stream.write(PcapRecordHeader(sec, usec, len(incl), len(data)).pack() + incl)
            self.stream.flush()
            self.count += 1

    def observer(self, _direction: str, data: bytes) -> None:
        """Signature of ``DoeDispatcher.observers``."""
        self.write(data)

    def close(self) -> None:
        self.stream.close()


@dataclass(frozen=True)
class PcapRecord:
    ts_sec: int
    ts_usec: int
    data: bytes      # the incl_len bytes saved
    orig_len: int    # the object's real length; > len(data) when cut at SnapLen

    @property
    def truncated(self) -> bool:
        return self.orig_len > len(self.data)


@dataclass(frozen=True)
class PcapFile:
    linktype: int
    snaplen: int
    records: list[PcapRecord]


def parse_pcap(data: bytes) -> PcapFile:
    """A little-endian, microsecond pcap 2.4 file (what :class:`PcapWriter` writes).

    A record cut off by the end of the file (a capture still being written)
    ends the list; it is not an error.
    """
    try:
        head, pos = PcapGlobalHeader.unpack_partial(data)
    except DecodeError:
        raise ValueError("shorter than a pcap global header") from None
    if head.magic_number != PCAP_MAGIC or \
            (head.version_major, head.version_minor) != PCAP_VERSION:
        raise ValueError("not a little-endian pcap 2.4 file")
    records = []
    while pos + _RECORD_SIZE <= len(data):
        rec, pos = PcapRecordHeader.unpack_from(data, pos)
        if pos + rec.incl_len > len(data):
            break
        records.append(PcapRecord(rec.ts_sec, rec.ts_usec, data[pos:pos + rec.incl_len],
                                  rec.orig_len))
        pos += rec.incl_len
    return PcapFile(head.network, head.snaplen, records)


def read_pcap(data: bytes) -> tuple[int, list[bytes]]:
    """(linktype, packets) of a capture (for tests and tools)."""
    f = parse_pcap(data)
    return f.linktype, [r.data for r in f.records]


def read_pcap_file(path: str | os.PathLike[str]) -> PcapFile:
    return parse_pcap(Path(path).read_bytes())
