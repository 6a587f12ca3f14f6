"""virtio-rng driven like Linux's virtio_pci modern driver, on bytes."""

from __future__ import annotations

import os
import struct

import pytest

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.device.function import DmaError, IrqIndex
from vfiouser_tdisp.device.virtio_rng import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VirtioRng,
)
from vfiouser_tdisp.vfio_user.server import run_sync

DESC, AVAIL, USED, BUF = 0x1000, 0x2000, 0x3000, 0x4000


class Memory:
    def __init__(self, size: int = 0x10000) -> None:
        self.mem = bytearray(size)

    async def read(self, addr: int, size: int) -> bytes:
        if addr + size > len(self.mem):
            raise DmaError(f"unmapped {addr:#x}")
        return bytes(self.mem[addr : addr + size])

    async def write(self, addr: int, data: bytes) -> None:
        if addr + len(data) > len(self.mem):
            raise DmaError(f"unmapped {addr:#x}")
        self.mem[addr : addr + len(data)] = data


@pytest.fixture
def rng() -> tuple[Device, VirtioRng, Memory, int]:
    dev = Device(get_profile("virtio-rng"))
    fn = dev.dsm
    mem = Memory()
    fn.dma = mem
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    fn.irqs.set_fds(IrqIndex.MSIX, 1, [efd])
    fn.config.write(0x04, b"\x06\x00")  # memory + bus master
    msix_ctl = fn.msix.offset + 2  # type: ignore[union-attr]
    fn.config.write(msix_ctl, struct.pack("<H", 0x8001))  # enable MSI-X
    pers = dev.personalities[0]
    assert isinstance(pers, VirtioRng)
    yield dev, pers, mem, efd
    fn.irqs.close()  # closes the eventfd it owns


def common(dev: Device, off: int, data: bytes) -> None:
    dev.dsm.region_write(0, off, data)


def status(dev: Device) -> int:
    return dev.dsm.region_read(0, 0x14, 1)[0]


def bring_up(dev: Device) -> None:
    common(dev, 0x14, b"\0")  # reset
    common(dev, 0x14, bytes([VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER]))
    common(dev, 0x00, struct.pack("<I", 1))
    assert struct.unpack("<I", dev.dsm.region_read(0, 0x04, 4))[0] == 1  # VERSION_1 (bit 32)
    common(dev, 0x08, struct.pack("<I", 1))
    common(dev, 0x0C, struct.pack("<I", 1))
    common(dev, 0x14, bytes([0x03 | VIRTIO_CONFIG_S_FEATURES_OK]))
    assert status(dev) & VIRTIO_CONFIG_S_FEATURES_OK
    common(dev, 0x16, b"\0\0")
    common(dev, 0x18, struct.pack("<H", 8))
    common(dev, 0x1A, struct.pack("<H", 1))
    assert dev.dsm.region_read(0, 0x1A, 2) == struct.pack("<H", 1)
    for off, addr in ((0x20, DESC), (0x28, AVAIL), (0x30, USED)):  # as two 32-bit halves
        common(dev, off, struct.pack("<I", addr))
        common(dev, off + 4, struct.pack("<I", 0))
    common(dev, 0x1C, struct.pack("<H", 1))
    common(dev, 0x14, bytes([0x03 | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK]))


def post(mem: Memory, bufs: list[tuple[int, int]], chain: bool = False) -> None:
    for i, (addr, length) in enumerate(bufs):
        nxt = i + 1 if chain and i + 1 < len(bufs) else 0
        flags = 2 | (1 if chain and i + 1 < len(bufs) else 0)
        mem.mem[DESC + 16 * i : DESC + 16 * i + 16] = struct.pack("<QIHH", addr, length, flags, nxt)
    heads = [0] if chain else list(range(len(bufs)))
    for slot, h in enumerate(heads):
        mem.mem[AVAIL + 4 + 2 * slot : AVAIL + 6 + 2 * slot] = struct.pack("<H", h)
    mem.mem[AVAIL + 2 : AVAIL + 4] = struct.pack("<H", len(heads))


def notify(dev: Device) -> None:
    work = dev.dsm.region_write(0, 0x3000, b"\0\0")
    if work is not None:
        run_sync(work)


def test_features_ok_refused_without_version_1(rng) -> None:  # type: ignore[no-untyped-def]
    dev, _p, _m, _e = rng
    common(dev, 0x14, b"\x03")
    common(dev, 0x14, bytes([0x03 | VIRTIO_CONFIG_S_FEATURES_OK]))  # no features accepted
    assert not status(dev) & VIRTIO_CONFIG_S_FEATURES_OK


def test_buffers_filled_used_ring_and_interrupt(rng) -> None:  # type: ignore[no-untyped-def]
    dev, _p, mem, efd = rng
    bring_up(dev)
    post(mem, [(BUF, 32), (BUF + 0x100, 16)])
    notify(dev)
    used_idx = struct.unpack_from("<H", mem.mem, USED + 2)[0]
    assert used_idx == 2
    assert struct.unpack_from("<II", mem.mem, USED + 4) == (0, 32)
    assert struct.unpack_from("<II", mem.mem, USED + 12) == (1, 16)
    a, b = bytes(mem.mem[BUF : BUF + 32]), bytes(mem.mem[BUF + 0x100 : BUF + 0x110])
    assert a != bytes(32) and b != bytes(16) and a[:16] != b
    assert os.eventfd_read(efd) == 1
    assert dev.dsm.region_read(0, 0x1000, 4)[0] & 1  # ISR bit, then cleared by the read
    assert dev.dsm.region_read(0, 0x1000, 4)[0] == 0


def test_chained_descriptors(rng) -> None:  # type: ignore[no-untyped-def]
    dev, _p, mem, _e = rng
    bring_up(dev)
    post(mem, [(BUF, 8), (BUF + 8, 8), (BUF + 16, 8)], chain=True)
    notify(dev)
    assert struct.unpack_from("<II", mem.mem, USED + 4) == (0, 24)


def test_looping_chain_sets_needs_reset(rng, events) -> None:  # type: ignore[no-untyped-def]
    dev, _p, mem, _e = rng
    bring_up(dev)
    mem.mem[DESC : DESC + 16] = struct.pack("<QIHH", BUF, 8, 3, 0)  # NEXT to itself
    mem.mem[AVAIL + 2 : AVAIL + 4] = struct.pack("<H", 1)
    notify(dev)
    assert status(dev) & VIRTIO_CONFIG_S_NEEDS_RESET
    assert any(e["event"] == "virtio.needs_reset" for e in events.events)


def test_unmapped_buffer_sets_needs_reset(rng) -> None:  # type: ignore[no-untyped-def]
    dev, _p, mem, _e = rng
    bring_up(dev)
    post(mem, [(0x7FFF_0000, 32)])
    notify(dev)
    assert status(dev) & VIRTIO_CONFIG_S_NEEDS_RESET


def test_no_dma_without_bus_master(rng) -> None:  # type: ignore[no-untyped-def]
    dev, _p, mem, _e = rng
    bring_up(dev)
    dev.dsm.config.write(0x04, b"\x02\x00")
    post(mem, [(BUF, 32)])
    notify(dev)
    assert bytes(mem.mem[BUF : BUF + 32]) == bytes(32)
    assert struct.unpack_from("<H", mem.mem, USED + 2)[0] == 0


def test_reset_clears_queue_state(rng) -> None:  # type: ignore[no-untyped-def]
    dev, pers, mem, _e = rng
    bring_up(dev)
    post(mem, [(BUF, 4)])
    notify(dev)
    common(dev, 0x14, b"\0")
    assert status(dev) == 0 and pers.queue.last_avail == 0 and pers.queue.desc == 0
    assert dev.dsm.region_read(0, 0x1A, 2) == b"\xff\xff"  # queue vector back to NO_VECTOR
