"""A DOE requester that drives the mailbox registers the way Linux does.

Mirrors drivers/pci/doe.c: ABORT and wait for !BUSY && !ERROR at start,
refuse while BUSY, write the object DW by DW, GO, poll DATA_OBJECT_READY,
then read each DW and acknowledge it with a write to the Read Data Mailbox,
checking DOR before the last acknowledgement.  The register accessors are
plain callables, so the same code runs over a vfio-user socket, in-process
config space, or anything else with 32-bit config reads and writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .mailbox import (
    PCI_DOE_CTRL,
    PCI_DOE_CTRL_ABORT,
    PCI_DOE_CTRL_GO,
    PCI_DOE_READ,
    PCI_DOE_STATUS,
    PCI_DOE_STATUS_BUSY,
    PCI_DOE_STATUS_DATA_OBJECT_READY,
    PCI_DOE_STATUS_ERROR,
    PCI_DOE_WRITE,
)
from .protocols import (
    PCI_DOE_FEATURE_DISCOVERY,
    PCI_SIG_VENDOR_ID,
    DiscoveryRequest,
    DiscoveryResponse,
    DoeHeader,
    build_object,
)

Read32 = Callable[[int], int]
Write32 = Callable[[int, int], None]


class DoeTransferError(Exception):
    pass


class DoeDriver:
    def __init__(self, read32: Read32, write32: Write32, cap_offset: int,
                 timeout: float = 1.0) -> None:
        self.read32 = read32
        self.write32 = write32
        self.cap = cap_offset
        self.timeout = timeout

    def status(self) -> int:
        return self.read32(self.cap + PCI_DOE_STATUS)

    def abort(self) -> None:
        self.write32(self.cap + PCI_DOE_CTRL, PCI_DOE_CTRL_ABORT)
        deadline = time.monotonic() + self.timeout
        while self.status() & (PCI_DOE_STATUS_BUSY | PCI_DOE_STATUS_ERROR):
            if time.monotonic() > deadline:
                raise DoeTransferError("mailbox stuck after ABORT")
            time.sleep(0.001)

    def exchange(self, request: bytes) -> bytes:
        """Send one whole object; return the whole response object."""
        status = self.status()
        if status & PCI_DOE_STATUS_BUSY:
            raise DoeTransferError("mailbox busy")
        if status & PCI_DOE_STATUS_ERROR:
            raise DoeTransferError("mailbox in error")
        for i in range(0, len(request), 4):
            self.write32(self.cap + PCI_DOE_WRITE, int.from_bytes(request[i : i + 4], "little"))
        self.write32(self.cap + PCI_DOE_CTRL, PCI_DOE_CTRL_GO)
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.status()
            if status & PCI_DOE_STATUS_ERROR:
                self.abort()
                raise DoeTransferError("mailbox signalled ERROR")
            if status & PCI_DOE_STATUS_DATA_OBJECT_READY:
                break
            if time.monotonic() > deadline:
                self.abort()
                raise DoeTransferError("no response in time")
            time.sleep(0.0005)
        dw0 = self.read32(self.cap + PCI_DOE_READ)
        self.write32(self.cap + PCI_DOE_READ, 0)
        dw1 = self.read32(self.cap + PCI_DOE_READ)
        self.write32(self.cap + PCI_DOE_READ, 0)
        header = DoeHeader.unpack(dw0.to_bytes(4, "little") + dw1.to_bytes(4, "little"))
        if request[:3] != dw0.to_bytes(4, "little")[:3]:
            self.abort()
            raise DoeTransferError("response vendor/type differ from the request")
        out = bytearray(dw0.to_bytes(4, "little") + dw1.to_bytes(4, "little"))
        for i in range(header.length_dw - 2):
            if i == header.length_dw - 3 and not (
                    self.status() & PCI_DOE_STATUS_DATA_OBJECT_READY):
                self.abort()
                raise DoeTransferError("DATA_OBJECT_READY dropped before the last DW")
            out += self.read32(self.cap + PCI_DOE_READ).to_bytes(4, "little")
            self.write32(self.cap + PCI_DOE_READ, 0)
        if self.status() & PCI_DOE_STATUS_ERROR:
            self.abort()
            raise DoeTransferError("ERROR after the response")
        return bytes(out)

    def call(self, vendor_id: int, object_type: int, payload: bytes) -> bytes:
        """Exchange a payload; returns the response payload."""
        rsp = self.exchange(build_object(vendor_id, object_type, payload))
        return rsp[8:]

    def discover(self, version: int = 2) -> list[tuple[int, int]]:
        """Walk discovery from index 0 until next_index wraps to 0."""
        found = []
        index = 0
        for _ in range(256):
            rsp = DiscoveryResponse.unpack(self.call(
                PCI_SIG_VENDOR_ID, PCI_DOE_FEATURE_DISCOVERY,
                DiscoveryRequest(index, version).pack()))
            found.append((rsp.vendor_id, rsp.data_object_protocol))
            if rsp.next_index == 0:
                return found
            index = rsp.next_index
        raise DoeTransferError("discovery did not terminate")
