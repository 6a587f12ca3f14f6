"""Config space semantics and the DOE mailbox, on bytes (no sockets, no QEMU)."""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.device.device import Device, DeviceProfile, get_profile
from vfiouser_tdisp.doe.driver import DoeDriver, DoeTransferError
from vfiouser_tdisp.doe.mailbox import (
    PCI_DOE_CTRL,
    PCI_DOE_READ,
    PCI_DOE_STATUS,
    PCI_DOE_STATUS_DATA_OBJECT_READY,
    PCI_DOE_STATUS_ERROR,
    PCI_DOE_WRITE,
    DoeCapability,
    DoeState,
)
from vfiouser_tdisp.doe.protocols import build_object
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.pci.config import ConfigAccessError

DOE = 0x100


@pytest.fixture
def dev() -> Device:
    d = Device(get_profile("virtio-rng"))
    d.doe.register(1, 1, lambda p: p)
    d.doe.register(1, 2, lambda p: bytes(reversed(p)))
    return d


def r32(dev: Device, off: int) -> int:
    return int(struct.unpack("<I", dev.dsm.config.read(off, 4))[0])


def w32(dev: Device, off: int, value: int) -> None:
    dev.dsm.config.write(off, struct.pack("<I", value))


def driver(dev: Device) -> DoeDriver:
    return DoeDriver(lambda o: r32(dev, o), lambda o, v: w32(dev, o, v), DOE)


def walk_caps(dev: Device) -> list[int]:
    ids, pos = [], dev.dsm.config.read(0x34, 1)[0]
    while pos:
        ids.append(dev.dsm.config.read(pos, 1)[0])
        pos = dev.dsm.config.read(pos + 1, 1)[0]
    return ids


def walk_ext_caps(dev: Device) -> list[tuple[int, int, int]]:
    out, pos = [], 0x100
    while pos:
        hdr = r32(dev, pos)
        out.append((pos, hdr & 0xFFFF, (hdr >> 16) & 0xF))
        pos = hdr >> 20
    return out


def test_capability_chains(dev: Device) -> None:
    assert walk_caps(dev) == [0x01, 0x10, 0x11, 0x09, 0x09, 0x09, 0x09]
    assert walk_ext_caps(dev) == [(0x100, 0x2E, 2), (0x118, 0x30, 1), (0x164, 0x03, 1)]
    assert dev.dsm.config.read(0x06, 2)[0] & 0x10  # status: capability list


def test_read_only_rw_and_rw1c_bits(dev: Device) -> None:
    w32(dev, 0x00, 0xFFFFFFFF)
    assert r32(dev, 0x00) == 0x10441AF4
    dev.dsm.config.write(0x04, b"\xff\xff")  # command: only the defined bits stick
    assert dev.dsm.config.read(0x04, 2) == struct.pack("<H", 0x0547)
    dev.dsm.config.data[0x07] = 0xF9  # pretend errors were latched
    dev.dsm.config.write(0x06, struct.pack("<H", 0x0100))  # RW1C: clears bit 8 only
    assert dev.dsm.config.read(0x06, 2)[1] == 0xF8
    pcie = 0x48
    dev.dsm.config.write(pcie + 0x0A, b"\x0f\x00")  # DEVSTA RW1C
    assert dev.dsm.config.read(pcie + 0x0A, 2) == b"\0\0"


def test_byte_enables_and_unaligned_access(dev: Device) -> None:
    dev.dsm.config.write(0x3C, b"\x0b")  # interrupt line, one byte
    assert dev.dsm.config.read(0x3C, 2) == b"\x0b\x01"  # pin untouched
    dev.dsm.config.write(0x0D, b"\x20\x80")  # latency (RO 0) + header type (RO)
    assert dev.dsm.config.read(0x0C, 4) == b"\x00\x00\x00\x00"
    whole = dev.dsm.config.read(0, 4096)
    assert len(whole) == 4096 and whole[0x100:0x104] == dev.dsm.config.read(0x100, 4)
    with pytest.raises(ConfigAccessError):
        dev.dsm.config.read(4094, 4)
    with pytest.raises(ConfigAccessError):
        dev.dsm.config.write(4096, b"\0")


def test_bar_sizing(dev: Device) -> None:
    for off in range(0x10, 0x28, 4):
        w32(dev, off, 0xFFFFFFFF)
    bars = [r32(dev, 0x10 + 4 * i) for i in range(6)]
    assert bars[0] == 0xFFFFC004 and bars[1] == 0xFFFFFFFF  # 16 KiB, 64-bit
    assert bars[2] == 0xFFFFF000  # 4 KiB, 32-bit
    assert bars[4] == 0xFFFF000C and bars[5] == 0xFFFFFFFF  # 64 KiB, 64-bit prefetchable
    assert bars[3] == 0
    w32(dev, 0x10, 0xFE004000)
    w32(dev, 0x14, 0x1)
    assert dev.dsm.bar_address(0) == 0x1_FE00_4000


def test_devcap_flr_tee_and_flr_resets(dev: Device, events: Recorder) -> None:
    devcap = r32(dev, 0x48 + 4)
    assert devcap & (1 << 28) and devcap & (1 << 30)
    w32(dev, 0x10, 0xFE000000)
    dev.dsm.config.write(0x04, b"\x06\x00")
    dev.dsm.config.write(0x48 + 8, struct.pack("<H", 0x8000))  # Initiate FLR
    assert r32(dev, 0x10) == 0x4 and dev.dsm.config.read(0x04, 2) == b"\0\0"
    assert dev.dsm.config.read(0x48 + 8, 2)[1] & 0x80 == 0  # FLR bit reads 0
    assert any(e["event"] == "function.reset" and e["cause"] == "flr" for e in events.events)


def test_dsn_and_multifunction() -> None:
    d = Device(DeviceProfile("t", "dma-test", functions=2, serial=0x1122334455667788))
    assert d.dsm.config.read(0x0E, 1)[0] & 0x80  # multi-function header
    dsn = [p for p, i, _v in walk_ext_caps(d) if i == 0x03][0]
    assert d.dsm.config.read(dsn + 4, 8) == struct.pack("<Q", 0x1122334455667788)
    fn1 = d.functions[1]
    assert fn1.devfn == 1 and fn1.config.find(DoeCapability) is None  # DOE only on the DSM


def test_discovery_chain(dev: Device) -> None:
    drv = driver(dev)
    drv.abort()
    assert drv.discover(version=2) == [(1, 0), (1, 1), (1, 2)]
    assert drv.discover(version=0) == [(1, 0), (1, 1), (1, 2)]


def test_exchange_and_read_has_no_side_effect(dev: Device) -> None:
    w32(dev, DOE + PCI_DOE_WRITE, 0x00010001)
    w32(dev, DOE + PCI_DOE_WRITE, 3)
    w32(dev, DOE + PCI_DOE_WRITE, 0xAABBCCDD)
    w32(dev, DOE + PCI_DOE_CTRL, 0x80000000)
    assert r32(dev, DOE + PCI_DOE_STATUS) & PCI_DOE_STATUS_DATA_OBJECT_READY
    assert r32(dev, DOE + PCI_DOE_READ) == r32(dev, DOE + PCI_DOE_READ) == 0x00010001
    got = []
    while r32(dev, DOE + PCI_DOE_STATUS) & PCI_DOE_STATUS_DATA_OBJECT_READY:
        got.append(r32(dev, DOE + PCI_DOE_READ))
        w32(dev, DOE + PCI_DOE_READ, 0)
    assert got == [0x00010001, 3, 0xAABBCCDD]
    assert r32(dev, DOE + PCI_DOE_READ) == 0  # nothing left


def test_unknown_type_sets_error_until_abort(dev: Device, events: Recorder) -> None:
    drv = driver(dev)
    with pytest.raises(DoeTransferError):
        drv.exchange(build_object(1, 0x55, b"\0" * 4))
    # the driver aborted; do it by hand to see the ERROR bit and that GO is ignored
    w32(dev, DOE + PCI_DOE_WRITE, 0x00550001)
    w32(dev, DOE + PCI_DOE_WRITE, 2)
    w32(dev, DOE + PCI_DOE_CTRL, 0x80000000)
    assert r32(dev, DOE + PCI_DOE_STATUS) & PCI_DOE_STATUS_ERROR
    w32(dev, DOE + PCI_DOE_WRITE, 0x00010001)
    w32(dev, DOE + PCI_DOE_CTRL, 0x80000000)
    assert r32(dev, DOE + PCI_DOE_STATUS) == PCI_DOE_STATUS_ERROR
    drv.abort()
    assert r32(dev, DOE + PCI_DOE_STATUS) == 0
    assert drv.call(1, 2, b"abcd") == b"dcba"
    assert any(e["event"] == "doe.error" for e in events.events)


@pytest.mark.parametrize("request_dws", [
    [0x00010001, 4, 0],  # LENGTH says 4, 3 written
    [0x00010001, 2, 0],  # LENGTH says 2, 3 written
    [0x00010001, 0x40000 | 3, 0],  # reserved LENGTH bits
    [0x00010001],  # no length at all
])
def test_length_rules(dev: Device, request_dws: list[int]) -> None:
    for dw in request_dws:
        w32(dev, DOE + PCI_DOE_WRITE, dw)
    w32(dev, DOE + PCI_DOE_CTRL, 0x80000000)
    assert r32(dev, DOE + PCI_DOE_STATUS) & PCI_DOE_STATUS_ERROR


def test_length_zero_means_2_pow_18(dev: Device) -> None:
    cap = dev.dsm.config.find(DoeCapability)
    assert isinstance(cap, DoeCapability)
    cap.max_request_dw = 1 << 18
    obj = struct.pack("<II", 0x00010001, 0) + bytes(4 * ((1 << 18) - 2))
    assert dev.doe.exchange(obj)[:4] == struct.pack("<I", 0x00010001)


def test_oversized_request_sets_error(dev: Device) -> None:
    cap = dev.dsm.config.find(DoeCapability)
    assert isinstance(cap, DoeCapability)
    cap.max_request_dw = 8
    for _ in range(9):
        w32(dev, DOE + PCI_DOE_WRITE, 0)
    assert cap.fsm.state is DoeState.ERROR


def test_new_request_discards_pending_response(dev: Device) -> None:
    drv = driver(dev)
    w32(dev, DOE + PCI_DOE_WRITE, 0x00010001)
    w32(dev, DOE + PCI_DOE_WRITE, 3)
    w32(dev, DOE + PCI_DOE_WRITE, 7)
    w32(dev, DOE + PCI_DOE_CTRL, 0x80000000)  # response pending, never read
    assert drv.call(1, 2, b"wxyz") == b"zyxw"


def test_handler_exception_is_contained(dev: Device) -> None:
    def boom(_p: bytes) -> bytes:
        raise RuntimeError("protocol bug")

    dev.doe.register(1, 2, boom)
    drv = driver(dev)
    with pytest.raises(DoeTransferError):
        drv.call(1, 2, b"1234")
    dev.doe.register(1, 2, lambda p: p)
    assert drv.call(1, 2, b"1234") == b"1234"
    with pytest.raises(ValueError):
        dev.doe.register(1, 0, lambda p: p)  # discovery is built in
