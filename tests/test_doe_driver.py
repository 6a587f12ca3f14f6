"""The Linux-style DOE requester (doe/driver.py) against the mailbox registers.

Expected behaviour is Linux drivers/pci/doe.c: pci_doe_send_req() returns
-EBUSY / -EIO when Status shows BUSY / ERROR before the request, and
doe_statemachine_work() sends every failure through signal_task_abort(), which
writes ABORT (PCI_DOE_CTRL bit 0) and waits for !BUSY && !ERROR; an ABORT that
times out marks the mailbox dead (PCI_DOE_FLAG_DEAD): later tasks fail with
-EIO at once.
"""

from __future__ import annotations

import errno
import struct

import pytest

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.doe.driver import DoeDriver, DoeTransferError

DOE = 0x100
CTRL, WRITE, STATUS, READ = 0x08, 0x10, 0x0C, 0x14  # PCIe r6.0 sec 7.9.24
ABORT, GO = 0x1, 0x80000000
BUSY, ERROR, DOR = 0x1, 0x4, 0x80000000


class Traced:
    """32-bit config accessors over the device's real config space, recording
    every access as (op, register offset in the capability, value)."""

    def __init__(self, dev: Device) -> None:
        self.cfg = dev.dsm.config
        self.log: list[tuple[str, int, int]] = []

    def read32(self, off: int) -> int:
        value = int(struct.unpack("<I", self.cfg.read(off, 4))[0])
        self.log.append(("r", off - DOE, value))
        return value

    def write32(self, off: int, value: int) -> None:
        self.log.append(("w", off - DOE, value))
        self.cfg.write(off, struct.pack("<I", value))


@pytest.fixture
def dev() -> Device:
    d = Device(get_profile("virtio-rng"))
    d.doe.register(1, 1, lambda p: p[::-1])
    return d


def put_mailbox_in_error(io: Traced) -> None:
    """Another requester sends an object of an unsupported type: ERROR."""
    io.write32(DOE + WRITE, 0x00770001)  # vendor 1, type 0x77
    io.write32(DOE + WRITE, 3)
    io.write32(DOE + WRITE, 0)
    io.write32(DOE + CTRL, GO)
    assert io.read32(DOE + STATUS) & ERROR


def test_mailbox_already_in_error_is_aborted_and_the_next_two_exchanges_work(
        dev: Device) -> None:
    io = Traced(dev)
    drv = DoeDriver(io.read32, io.write32, DOE, poll_interval=0)
    put_mailbox_in_error(io)
    io.log.clear()
    with pytest.raises(DoeTransferError) as exc:
        drv.call(1, 1, b"abcd")
    assert exc.value.errno == errno.EIO  # pci_doe_send_req: ERROR -> -EIO
    # Status read, then (nothing written to the mailbox) ABORT, then polls.
    assert io.log[0] == ("r", STATUS, io.log[0][2]) and io.log[0][2] & ERROR
    assert io.log[1] == ("w", CTRL, ABORT)
    assert not any(op == "w" and reg == WRITE for op, reg, _v in io.log)
    assert not drv.status() & (ERROR | BUSY)
    assert drv.call(1, 1, b"abcdefgh") == b"hgfedcba"
    assert drv.call(1, 1, b"1234") == b"4321"


def test_error_during_an_exchange_then_two_exchanges_work(dev: Device) -> None:
    io = Traced(dev)
    drv = DoeDriver(io.read32, io.write32, DOE, poll_interval=0)
    with pytest.raises(DoeTransferError):
        drv.call(1, 0x55, b"\0" * 4)  # unsupported type: the mailbox sets ERROR
    assert ("w", CTRL, ABORT) in io.log
    assert drv.call(1, 1, b"wxyz") == b"zyxw"
    assert drv.call(1, 1, b"wxyz") == b"zyxw"


class StuckRegisters:
    """A mailbox whose Status always reads ``status`` (ABORT never helps)."""

    def __init__(self, status: int) -> None:
        self.value = status
        self.log: list[tuple[str, int, int]] = []

    def read32(self, off: int) -> int:
        self.log.append(("r", off - DOE, self.value))
        return self.value if off - DOE == STATUS else 0

    def write32(self, off: int, value: int) -> None:
        self.log.append(("w", off - DOE, value))


@pytest.mark.parametrize("status,err", [(BUSY, errno.EBUSY), (ERROR, errno.EIO)])
def test_busy_or_error_abort_that_times_out_marks_the_mailbox_dead(
        status: int, err: int) -> None:
    regs = StuckRegisters(status)
    drv = DoeDriver(regs.read32, regs.write32, DOE, timeout=0.05, poll_interval=0.001)
    with pytest.raises(DoeTransferError) as exc:
        drv.call(1, 1, b"abcd")
    assert exc.value.errno == err
    assert regs.log[1] == ("w", CTRL, ABORT)
    assert not any(reg == WRITE for _op, reg, _v in regs.log)
    assert drv.dead
    regs.log.clear()
    with pytest.raises(DoeTransferError) as exc:
        drv.call(1, 1, b"abcd")
    assert exc.value.errno == errno.EIO and regs.log == []  # dead: no register access
