"""A DOE requester that drives the mailbox registers the way Linux does.

Follows drivers/pci/doe.c (PCIe r6.0 sec 6.30), step by step:

- ``pci_doe_send_req``: read Status; BUSY -> -EBUSY, ERROR -> -EIO (another
  entity, or an earlier failed exchange, left the mailbox unusable); write the
  object DW by DW; GO.
- ``doe_statemachine_work``: poll for DATA_OBJECT_READY (ERROR -> -EIO, 1 s
  timeout -> -EIO); **every failure, including the two send-time checks above,
  goes through ``signal_task_abort``**, which issues ABORT.  So a mailbox found
  in ERROR fails that one exchange and is reset for the next.
- ``pci_doe_abort``: ABORT, then poll until !BUSY && !ERROR for up to 1 s; an
  abort that times out marks the mailbox dead: every later exchange fails with
  -EIO without touching the registers.
- ``pci_doe_recv_resp``: check VID/type of the first DW before acknowledging
  it; LENGTH 0 means 2^18 DW, LENGTH < 2 is -EIO; check DATA_OBJECT_READY
  before the last acknowledgement; a final ERROR check.

The register accessors are plain callables, so the same code runs over a
vfio-user socket, in-process config space, or anything else with 32-bit config
reads and writes.
"""

from __future__ import annotations

import errno
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

PCI_DOE_MAX_LENGTH = 1 << 18  # DW; a LENGTH field of 0 means this
PCI_DOE_TIMEOUT = 1.0  # PCIe r6.0 sec 6.30.2: 1 second
PCI_DOE_POLL_INTERVAL = PCI_DOE_TIMEOUT / 128  # doe.c polls at HZ/128


class DoeTransferError(Exception):
    """A failed exchange; ``errno`` is what Linux's pci_doe() would return."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class DoeDriver:
    def __init__(self, read32: Read32, write32: Write32, cap_offset: int,
                 timeout: float = PCI_DOE_TIMEOUT,
                 poll_interval: float = PCI_DOE_POLL_INTERVAL) -> None:
        self.read32 = read32
        self.write32 = write32
        self.cap = cap_offset
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.dead = False  # PCI_DOE_FLAG_DEAD: an ABORT timed out

    def status(self) -> int:
        return self.read32(self.cap + PCI_DOE_STATUS)

    def abort(self) -> None:
        """pci_doe_abort: ABORT, wait for !BUSY && !ERROR; a timeout is fatal."""
        self.write32(self.cap + PCI_DOE_CTRL, PCI_DOE_CTRL_ABORT)
        deadline = time.monotonic() + self.timeout
        while True:
            time.sleep(self.poll_interval)
            if not self.status() & (PCI_DOE_STATUS_BUSY | PCI_DOE_STATUS_ERROR):
                return
            if time.monotonic() > deadline:
                self.dead = True
                raise DoeTransferError("ABORT timed out; mailbox dead")

    def _fail(self, message: str, err: int = errno.EIO) -> DoeTransferError:
        """signal_task_abort: reset the mailbox, then report the failure."""
        try:
            self.abort()
        except DoeTransferError:
            message += "; ABORT timed out, mailbox dead"
        return DoeTransferError(message, err)

    def exchange(self, request: bytes) -> bytes:
        """Send one whole object; return the whole response object."""
        if self.dead:
            raise DoeTransferError("mailbox dead (an earlier ABORT timed out)")
        if len(request) < 8 or len(request) % 4:
            raise DoeTransferError("a DOE object is whole DWs, header included",
                                   errno.EINVAL)
        self._send(request)
        self._wait_ready()
        return self._receive(request)

    def _send(self, request: bytes) -> None:
        status = self.status()
        if status & PCI_DOE_STATUS_BUSY:
            raise self._fail("mailbox busy", errno.EBUSY)
        if status & PCI_DOE_STATUS_ERROR:
            raise self._fail("mailbox showed ERROR before the request")
        if len(request) // 4 > PCI_DOE_MAX_LENGTH:
            raise self._fail("request longer than 2^18 DW")
        for i in range(0, len(request), 4):
            self.write32(self.cap + PCI_DOE_WRITE, int.from_bytes(request[i : i + 4], "little"))
        self.write32(self.cap + PCI_DOE_CTRL, PCI_DOE_CTRL_GO)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.status()
            if status & PCI_DOE_STATUS_ERROR:
                raise self._fail("mailbox signalled ERROR")
            if status & PCI_DOE_STATUS_DATA_OBJECT_READY:
                return
            if time.monotonic() > deadline:
                raise self._fail("no response in time")
            time.sleep(self.poll_interval)

    def _receive(self, request: bytes) -> bytes:
        read = self.cap + PCI_DOE_READ
        want, _ = DoeHeader.unpack_partial(request)
        dw0 = self.read32(read)
        # The header's first DW (Vendor ID 15:0, Data Object Type 23:16) is checked
        # before it is acknowledged: a stray object is left for the error path.
        if (dw0 & 0xFFFF, dw0 >> 16 & 0xFF) != (want.vendor_id, want.data_object_type):
            raise self._fail("response vendor/type differ from the request")
        self.write32(read, 0)
        dw1 = self.read32(read)
        self.write32(read, 0)
        head = DoeHeader.unpack(dw0.to_bytes(4, "little") + dw1.to_bytes(4, "little"))
        length = head.length_dw
        if length < 2:
            raise self._fail(f"response LENGTH {length} < 2")
        out = bytearray(head.pack())
        remaining = length - 2
        for i in range(remaining):
            out += self.read32(read).to_bytes(4, "little")
            if i == remaining - 1 and not self.status() & PCI_DOE_STATUS_DATA_OBJECT_READY:
                raise self._fail("DATA_OBJECT_READY dropped before the last DW")
            self.write32(read, 0)
        if self.status() & PCI_DOE_STATUS_ERROR:
            raise self._fail("ERROR after the response")
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
