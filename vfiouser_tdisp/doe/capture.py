"""pcap capture of DOE data objects (LINKTYPE 291, LINKTYPE_PCI_DOE).

Subscribes to a :class:`DoeDispatcher` as an observer, so objects from every
transport (config-space mailbox, spdm-emu socket) land in one file, in both
directions, exactly as they crossed the mailbox: secured SPDM records stay
encrypted.  DMTF spdm-dump reads this link type.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import BinaryIO

LINKTYPE_PCI_DOE = 291
PCAP_MAGIC = 0xA1B2C3D4
SNAPLEN = (1 << 18) * 4 + 8

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    def __init__(self, stream: BinaryIO, linktype: int = LINKTYPE_PCI_DOE) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self.count = 0
        stream.write(_GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, linktype))
        stream.flush()

    def write(self, data: bytes, timestamp: float | None = None) -> None:
        ts = time.time() if timestamp is None else timestamp
        sec = int(ts)
        usec = int((ts - sec) * 1_000_000)
        with self._lock:
            self.stream.write(_RECORD.pack(sec, usec, len(data), len(data)) + data)
            self.stream.flush()
            self.count += 1

    def observer(self, _direction: str, data: bytes) -> None:
        """Signature of ``DoeDispatcher.observers``."""
        self.write(data)


def read_pcap(data: bytes) -> tuple[int, list[bytes]]:
    """(linktype, packets) of a little-endian pcap file (for tests and tools)."""
    magic, major, minor, _tz, _sig, _snap, linktype = _GLOBAL.unpack_from(data)
    if magic != PCAP_MAGIC or (major, minor) != (2, 4):
        raise ValueError("not a little-endian pcap 2.4 file")
    pos = _GLOBAL.size
    packets = []
    while pos < len(data):
        _s, _us, incl, _orig = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        packets.append(data[pos : pos + incl])
        pos += incl
    return linktype, packets
