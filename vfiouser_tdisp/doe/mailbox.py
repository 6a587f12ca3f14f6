"""DOE extended capability: the mailbox registers (PCIe r6.x §7.9.24, §6.30.2).

::

    31                20 19   16 15                 0
    +-------------------+-------+--------------------+
    |     next          | ver 2 |   ID 0x002E        |  +0x00
    +-------------------+-------+--------------------+
    |        DOE Capabilities (INT_SUP=0: polled)    |  +0x04  RO
    +--+---------------------------------------+-----+
    |GO|                                  INT_EN|ABORT|  +0x08  DOE Control
    +--+---------------------------------------+-----+
    |DOR|                       ERROR|INT_STS| BUSY  |  +0x0C  DOE Status
    +------------------------------------------------+
    |        Write Data Mailbox                      |  +0x10  write appends a DW
    +------------------------------------------------+
    |        Read Data Mailbox                       |  +0x14  read = current DW,
    +------------------------------------------------+         write = advance

Behaviour matches what Linux drivers/pci/doe.c relies on: ABORT clears
everything (including ERROR); GO processes the written object synchronously,
so BUSY is never observed; the response is read one DW at a time, each read
acknowledged by a write to the Read Data Mailbox; DATA_OBJECT_READY stays set
until the last DW is acknowledged.  Objects the dispatcher cannot handle set
ERROR, which only ABORT clears.  Reads have no side effects.  Injected faults
(faults.py) are the exception to "never BUSY": doe-busy keeps BUSY set after GO
until ABORT, doe-delay keeps it set until the response is ready, doe-error sets
ERROR at GO.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..events import emit
from ..faults import ARMED, FaultSet
from ..fsm import StateMachine
from ..pci.config import Capability, Reg
from .protocols import DOE_MAX_LENGTH_DW, DoeDispatcher, DoeError

PCI_EXT_CAP_ID_DOE = 0x2E
PCI_DOE_CAP = 0x04
PCI_DOE_CTRL = 0x08
PCI_DOE_STATUS = 0x0C
PCI_DOE_WRITE = 0x10
PCI_DOE_READ = 0x14
PCI_DOE_CAP_SIZEOF = 0x18

PCI_DOE_CTRL_ABORT = 0x00000001
PCI_DOE_CTRL_INT_EN = 0x00000002
PCI_DOE_CTRL_GO = 0x80000000
PCI_DOE_STATUS_BUSY = 0x00000001
PCI_DOE_STATUS_INT_STATUS = 0x00000002
PCI_DOE_STATUS_ERROR = 0x00000004
PCI_DOE_STATUS_DATA_OBJECT_READY = 0x80000000

# Largest request object the mailbox buffers (the spec allows 2^18 DW; a
# device may be smaller -- larger requests set ERROR).
DEFAULT_MAX_REQUEST_DW = 1 << 16


class DoeState(enum.Enum):
    IDLE = "IDLE"  # nothing written or written DWs collecting
    RESPONSE_READY = "RESPONSE_READY"  # DATA_OBJECT_READY
    ERROR = "ERROR"


DOE_TRANSITIONS: dict[tuple[DoeState, str], DoeState] = {
    (DoeState.IDLE, "go_ok"): DoeState.RESPONSE_READY,
    (DoeState.IDLE, "go_error"): DoeState.ERROR,
    (DoeState.IDLE, "overflow"): DoeState.ERROR,
    (DoeState.IDLE, "abort"): DoeState.IDLE,
    (DoeState.RESPONSE_READY, "read_done"): DoeState.IDLE,
    (DoeState.RESPONSE_READY, "abort"): DoeState.IDLE,
    # Writing a new request while a response is pending discards the response.
    (DoeState.RESPONSE_READY, "write"): DoeState.IDLE,
    (DoeState.RESPONSE_READY, "go_error"): DoeState.ERROR,
    (DoeState.ERROR, "abort"): DoeState.IDLE,
}


class DoeCapability(Capability):
    CAP_ID = PCI_EXT_CAP_ID_DOE
    EXTENDED = True
    VERSION = 2
    NAME = "doe"

    def __init__(self, dispatcher: DoeDispatcher, name: str = "doe",
                 max_request_dw: int = DEFAULT_MAX_REQUEST_DW) -> None:
        super().__init__(PCI_DOE_CAP_SIZEOF)
        self.dispatcher = dispatcher
        self.mailbox_name = name
        self.max_request_dw = min(max_request_dw, DOE_MAX_LENGTH_DW)
        self.dynamic_dwords = {PCI_DOE_CTRL, PCI_DOE_STATUS, PCI_DOE_WRITE, PCI_DOE_READ}
        self.fsm: StateMachine[DoeState] = StateMachine(
            "doe", DOE_TRANSITIONS, DoeState.IDLE, mailbox=name)
        self._write_buf: list[int] = []
        self._read_buf: list[int] = []
        self._read_pos = 0
        # Fault injection (faults.py): doe-busy, doe-error, doe-delay.
        self.faults: FaultSet = ARMED
        self._stuck_busy = False      # doe-busy: BUSY until ABORT, no response
        self._ready_at = 0.0          # doe-delay: monotonic time the response is ready

    def _delayed(self) -> bool:
        return self._ready_at > time.monotonic()

    def registers(self) -> Iterable[Reg]:
        return [
            Reg("DOECapabilities", PCI_DOE_CAP, 4, 0),
            Reg("DOEControl", PCI_DOE_CTRL, 4, 0),
            Reg("DOEStatus", PCI_DOE_STATUS, 4, 0),
            Reg("DOEWriteDataMailbox", PCI_DOE_WRITE, 4, 0),
            Reg("DOEReadDataMailbox", PCI_DOE_READ, 4, 0),
        ]

    # -- register reads --------------------------------------------------------
    def read_dword(self, rel: int, stored: int) -> int:
        if rel == PCI_DOE_CTRL:
            return 0  # ABORT and GO read as 0; INT_EN is hardwired 0 (no INT_SUP)
        if rel == PCI_DOE_STATUS:
            status = 0
            if self._stuck_busy or self._delayed():
                return PCI_DOE_STATUS_BUSY  # still working: no response yet
            if self.fsm.state is DoeState.ERROR:
                status |= PCI_DOE_STATUS_ERROR
            if self.fsm.state is DoeState.RESPONSE_READY:
                status |= PCI_DOE_STATUS_DATA_OBJECT_READY
            return status
        if rel == PCI_DOE_READ:
            if self.fsm.state is DoeState.RESPONSE_READY and self._read_pos < len(self._read_buf) \
                    and not self._delayed():
                return self._read_buf[self._read_pos]
            return 0
        return 0  # WRITE mailbox reads as zero

    # -- register writes ---------------------------------------------------------
    def write_dword(self, rel: int, old: int, new: int, value: int, byte_mask: int) -> int:
        # These registers keep no stored state (all read-only in the masks);
        # the raw written value drives the mailbox.
        if rel == PCI_DOE_CTRL:
            if value & PCI_DOE_CTRL_ABORT:
                self.abort("ctrl")
            elif value & PCI_DOE_CTRL_GO and byte_mask & 0xFF000000:
                self.go()
        elif rel == PCI_DOE_WRITE:
            self._write(value)
        elif rel == PCI_DOE_READ:
            self._ack_read()
        return 0

    def _write(self, dw: int) -> None:
        state = self.fsm.state
        if state is DoeState.ERROR:
            return  # ignored until ABORT
        if state is DoeState.RESPONSE_READY:
            self._read_buf = []
            self.fsm.fire("write")
        if len(self._write_buf) >= self.max_request_dw:
            self._write_buf = []
            emit("doe.overflow", mailbox=self.mailbox_name, max_dw=self.max_request_dw)
            self.fsm.fire("overflow")
            return
        self._write_buf.append(dw)

    def _ack_read(self) -> None:
        if self.fsm.state is not DoeState.RESPONSE_READY or self._delayed():
            return
        self._read_pos += 1
        if self._read_pos >= len(self._read_buf):
            self._read_buf = []
            self._read_pos = 0
            self.fsm.fire("read_done")

    def abort(self, cause: str) -> None:
        self._stuck_busy = False
        self._ready_at = 0.0
        self._write_buf = []
        self._read_buf = []
        self._read_pos = 0
        self.fsm.fire("abort", cause=cause)

    def go(self) -> None:
        if self.fsm.state is DoeState.ERROR or self._stuck_busy or self._delayed():
            return
        request = b"".join(dw.to_bytes(4, "little") for dw in self._write_buf)
        obj_type = (self._write_buf[0] >> 16) & 0xFF if self._write_buf else -1
        self._write_buf = []

        def of_type(args: Mapping[str, Any]) -> bool:
            return args.get("type", -1) in (-1, obj_type)

        if request and self.faults.take("doe-busy", self.mailbox_name, of_type):
            # The request is swallowed; BUSY stays set until ABORT (PCIe §6.30.2).
            self._stuck_busy = True
            return
        try:
            if not request:
                raise DoeError("GO with an empty write mailbox")
            if self.faults.take("doe-error", self.mailbox_name, of_type):
                raise DoeError("injected fault doe-error")
            response = self.dispatcher.exchange(request)
        except DoeError as exc:
            emit("doe.error", mailbox=self.mailbox_name, reason=str(exc),
                 request_dw=len(request) // 4)
            self.fsm.fire("go_error", reason=str(exc))
            return
        self._read_buf = [int.from_bytes(response[i : i + 4], "little")
                          for i in range(0, len(response), 4)]
        self._read_pos = 0
        delay = self.faults.take("doe-delay", self.mailbox_name, of_type)
        if delay is not None:
            self._ready_at = time.monotonic() + delay.args["seconds"]
        self.fsm.fire("go_ok", request_dw=len(request) // 4, response_dw=len(self._read_buf))

    def reset(self) -> None:
        self._stuck_busy = False
        self._ready_at = 0.0
        self._write_buf = []
        self._read_buf = []
        self._read_pos = 0
        if self.fsm.state is not DoeState.IDLE:
            self.fsm.force(DoeState.IDLE, "reset")
