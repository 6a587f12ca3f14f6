"""virtio-rng driven the way Linux's virtio_pci modern driver + virtio_rng do,
on a bytearray of "guest memory" (virtio 1.x §3.1.1, §4.1.5, §2.7, §5.4)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.device.personality import get_personality
from vfiouser_tdisp.device.virtio_rng import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VirtioRng,
)
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.pci.function import REGION_CONFIG, DmaError, IrqIndex, PciFunction

# struct virtio_pci_common_cfg offsets (include/uapi/linux/virtio_pci.h)
DFSELECT, DF, GFSELECT, GF = 0x00, 0x04, 0x08, 0x0C
MSIX_CONFIG, NUM_QUEUES, STATUS, CFG_GENERATION = 0x10, 0x12, 0x14, 0x15
Q_SELECT, Q_SIZE, Q_MSIX, Q_ENABLE, Q_NOFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
Q_DESCLO, Q_AVAILLO, Q_USEDLO = 0x20, 0x28, 0x30

DESC, AVAIL, USED, BUF = 0x1000, 0x2000, 0x3000, 0x8000
QSIZE = 8
CONFIG_VECTOR, QUEUE_VECTOR = 0, 1


class GuestMemory:
    """Guest RAM as the DMA layer sees it; anything outside it is unmapped."""

    def __init__(self, size: int = 0x40000) -> None:
        self.mem = bytearray(size)
        self.reads = 0
        self.writes = 0

    def read(self, addr: int, size: int) -> bytes:
        self.reads += 1
        if addr < 0 or addr + size > len(self.mem):
            raise DmaError(f"DMA read of unmapped {addr:#x}+{size}")
        return bytes(self.mem[addr : addr + size])

    def write(self, addr: int, data: bytes) -> None:
        self.writes += 1
        if addr < 0 or addr + len(data) > len(self.mem):
            raise DmaError(f"DMA write to unmapped {addr:#x}+{len(data)}")
        self.mem[addr : addr + len(data)] = data

    def u16(self, addr: int) -> int:
        return int(struct.unpack_from("<H", self.mem, addr)[0])

    def used(self, slot: int) -> tuple[int, int]:
        elem = struct.unpack_from("<II", self.mem, USED + 4 + 8 * slot)
        return int(elem[0]), int(elem[1])


@dataclass
class VirtioCap:
    cfg_type: int
    bar: int
    offset: int
    length: int
    notify_off_multiplier: int = 0


class LinuxModernDriver:
    """The register accesses of drivers/virtio/virtio_pci_modern{,_dev}.c."""

    def __init__(self, fn: PciFunction) -> None:
        self.fn = fn
        self.caps = self.find_caps()
        self.common = self.caps[VIRTIO_PCI_CAP_COMMON_CFG]
        self.isr = self.caps[VIRTIO_PCI_CAP_ISR_CFG]
        self.notify = self.caps[VIRTIO_PCI_CAP_NOTIFY_CFG]

    # config space: virtio_pci_find_capability
    def cfg(self, off: int, size: int) -> int:
        return int.from_bytes(self.fn.region_read(REGION_CONFIG, off, size), "little")

    def find_caps(self) -> dict[int, VirtioCap]:
        found: dict[int, VirtioCap] = {}
        pos = self.cfg(0x34, 1)
        while pos:
            if self.cfg(pos, 1) == 0x09:
                cfg_type, bar = self.cfg(pos + 3, 1), self.cfg(pos + 4, 1)
                cap = VirtioCap(cfg_type, bar, self.cfg(pos + 8, 4), self.cfg(pos + 12, 4))
                if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
                    cap.notify_off_multiplier = self.cfg(pos + 16, 4)
                found.setdefault(cfg_type, cap)  # the first of each type wins
            pos = self.cfg(pos + 1, 1)
        return found

    # vp_ioread*/vp_iowrite* on the common configuration
    def read(self, off: int, size: int) -> int:
        data = self.fn.region_read(self.common.bar, self.common.offset + off, size)
        return int.from_bytes(data, "little")

    def write(self, off: int, value: int, size: int) -> None:
        self.fn.region_write(self.common.bar, self.common.offset + off,
                                      value.to_bytes(size, "little"))

    def write64_twopart(self, off: int, value: int) -> None:
        self.write(off, value & 0xFFFFFFFF, 4)
        self.write(off + 4, value >> 32, 4)

    def status(self) -> int:
        return self.read(STATUS, 1)

    def add_status(self, bits: int) -> None:
        self.write(STATUS, self.status() | bits, 1)

    def reset(self) -> None:
        self.write(STATUS, 0, 1)
        for _ in range(100):  # vp_reset: wait for the device to read back 0
            if self.status() == 0:
                return
        raise AssertionError("device did not complete reset")

    def device_features(self) -> int:
        features = 0
        for word in range(4):  # 128 feature bits, as Linux 7.x reads them
            self.write(DFSELECT, word, 4)
            features |= self.read(DF, 4) << (32 * word)
        return features

    def finalize_features(self, features: int) -> bool:
        for word in range(4):
            self.write(GFSELECT, word, 4)
            self.write(GF, (features >> (32 * word)) & 0xFFFFFFFF, 4)
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK)
        return bool(self.status() & VIRTIO_CONFIG_S_FEATURES_OK)

    def config_vector(self, vector: int) -> int:
        self.write(MSIX_CONFIG, vector, 2)
        return self.read(MSIX_CONFIG, 2)

    def setup_vq(self, index: int, size: int, vector: int) -> int:
        """vp_modern setup_vq + vp_modern_queue_vector; returns the notify offset."""
        self.write(Q_SELECT, index, 2)
        assert self.read(Q_SIZE, 2) >= size and self.read(Q_ENABLE, 2) == 0
        self.write(Q_SIZE, size, 2)
        self.write64_twopart(Q_DESCLO, DESC)
        self.write64_twopart(Q_AVAILLO, AVAIL)
        self.write64_twopart(Q_USEDLO, USED)
        self.write(Q_MSIX, vector, 2)
        assert self.read(Q_MSIX, 2) == vector
        return self.notify.offset + self.read(Q_NOFF, 2) * self.notify.notify_off_multiplier

    def enable_vq(self, index: int) -> None:
        self.write(Q_SELECT, index, 2)
        self.write(Q_ENABLE, 1, 2)

    def kick(self, notify_offset: int, index: int = 0) -> None:
        self.fn.region_write(self.notify.bar, notify_offset,
                                      index.to_bytes(2, "little"))

    def read_isr(self) -> int:
        return self.fn.region_read(self.isr.bar, self.isr.offset, 1)[0]

    def bring_up(self, size: int = QSIZE, vector: int = QUEUE_VECTOR) -> int:
        """virtio_dev_probe + virtio_rng probe: everything up to DRIVER_OK."""
        self.reset()
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE)
        self.add_status(VIRTIO_CONFIG_S_DRIVER)
        assert self.device_features() & (1 << 32)
        assert self.finalize_features(1 << 32)
        assert self.config_vector(CONFIG_VECTOR) == CONFIG_VECTOR
        assert self.read(NUM_QUEUES, 2) == 1
        notify = self.setup_vq(0, size, vector)
        self.enable_vq(0)
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK)
        return notify


class Ring:
    """The driver's half of a split ring in guest memory (virtio_ring.c)."""

    def __init__(self, mem: GuestMemory, size: int = QSIZE) -> None:
        self.mem = mem
        self.size = size
        self.avail_idx = 0
        self.free = 0

    def desc(self, index: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
        struct.pack_into("<QIHH", self.mem.mem, DESC + 16 * index, addr, length, flags, nxt)

    def publish(self, head: int) -> None:
        struct.pack_into("<H", self.mem.mem, AVAIL + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.mem.mem, AVAIL + 2, self.avail_idx)

    def add_inbuf(self, addr: int, length: int) -> int:
        head = self.free
        self.free = (self.free + 1) % self.size
        self.desc(head, addr, length, VIRTQ_DESC_F_WRITE)
        self.publish(head)
        return head

    def set_avail_flags(self, flags: int) -> None:
        struct.pack_into("<H", self.mem.mem, AVAIL, flags)


@dataclass
class Rig:
    dev: Device
    fn: PciFunction
    rng: VirtioRng
    mem: GuestMemory
    drv: LinuxModernDriver
    ring: Ring
    efds: list[int]  # MSI-X vector -> eventfd
    intx: int

    def counter(self, vector: int) -> int:
        try:
            return os.eventfd_read(self.efds[vector])
        except BlockingIOError:
            return 0

    def intx_count(self) -> int:
        try:
            return os.eventfd_read(self.intx)
        except BlockingIOError:
            return 0


@pytest.fixture
def rig() -> Iterator[Rig]:
    dev = Device(get_profile("virtio-rng"))
    fn = dev.dsm
    mem = GuestMemory()
    fn.dma = mem
    efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
    intx = os.eventfd(0, os.EFD_NONBLOCK)
    fn.irqs.set_fds(IrqIndex.MSIX, 0, efds)
    fn.irqs.set_fds(IrqIndex.INTX, 0, [intx])
    # pci_enable_device + pci_set_master + MSI-X enable, as the PCI core does
    fn.config.write(0x04, struct.pack("<H", 0x0006))
    assert fn.msix is not None
    fn.config.write(fn.msix.offset + 2, struct.pack("<H", 0x8000))
    rng = dev.personalities[0]
    assert isinstance(rng, VirtioRng)
    yield Rig(dev, fn, rng, mem, LinuxModernDriver(fn), Ring(mem), efds, intx)
    fn.irqs.close()  # closes the eventfds it was given


# -- identity and layout ----------------------------------------------------------------------


def test_registered_personality_and_ids(rig: Rig) -> None:
    assert get_personality("virtio-rng") is VirtioRng
    ids = struct.unpack_from("<HH", rig.fn.config.read(0, 4))
    assert ids == (0x1AF4, 0x1044)
    assert rig.drv.cfg(0x08, 1) == 1  # revision >= 1: modern only
    assert rig.drv.cfg(0x09, 3) == 0xFF0000
    assert (rig.drv.cfg(0x2C, 2), rig.drv.cfg(0x2E, 2)) == (0x1AF4, 4)
    assert rig.rng.non_tee_ranges() == []


def test_capabilities_point_into_bar0(rig: Rig) -> None:
    caps = rig.drv.caps
    assert set(caps) == {VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_ISR_CFG,
                         VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG}
    assert all(c.bar == 0 for c in caps.values())
    common = caps[VIRTIO_PCI_CAP_COMMON_CFG]
    assert common.offset == 0 and common.length >= 0x38
    assert (caps[VIRTIO_PCI_CAP_ISR_CFG].offset, caps[VIRTIO_PCI_CAP_ISR_CFG].length) == (
        0x1000, 4)
    notify = caps[VIRTIO_PCI_CAP_NOTIFY_CFG]
    assert (notify.offset, notify.notify_off_multiplier) == (0x3000, 4) and notify.length >= 2
    for c in caps.values():  # vp_modern_map_capability: inside the BAR
        assert c.offset + c.length <= rig.fn.region_size(c.bar)


def test_msix_and_device_memory_bars(rig: Rig) -> None:
    msix = rig.fn.msix
    assert msix is not None and msix.vectors == 2
    assert (msix.table_bar, msix.table_offset, msix.pba_bar, msix.pba_offset) == (2, 0, 2, 0x800)
    bar4 = rig.fn.bars[4]
    assert bar4 is not None and bar4.prefetchable and bar4.size == 0x10000
    [(offset, area)] = bar4.mmap_areas()
    assert offset == 0 and area.size == 0x10000 and area.fd >= 0
    rig.fn.region_write(4, 0x100, b"device memory")
    assert rig.fn.region_read(4, 0x100, 13) == b"device memory"


# -- the driver's bring-up -------------------------------------------------------------------


def test_feature_negotiation(rig: Rig) -> None:
    drv = rig.drv
    drv.reset()
    drv.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    assert drv.device_features() == 1 << 32  # VIRTIO_F_VERSION_1 only
    assert drv.finalize_features(1 << 32)
    drv.write(GFSELECT, 1, 4)
    drv.write(GF, 0, 4)  # changing features after FEATURES_OK is ignored
    assert drv.read(GF, 4) == 1


@pytest.mark.parametrize("features", [0, (1 << 32) | (1 << 28), 1 << 64])
def test_features_ok_refused(rig: Rig, features: int, events: Recorder) -> None:
    drv = rig.drv
    drv.reset()
    drv.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    assert not drv.finalize_features(features)  # no VERSION_1, or a bit not offered
    assert drv.status() == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    assert events.of("virtio.features_refused")


def test_vectors_and_queue_registers(rig: Rig) -> None:
    drv = rig.drv
    drv.reset()
    assert drv.config_vector(2) == VIRTIO_MSI_NO_VECTOR  # only vectors 0 and 1 exist
    assert drv.config_vector(0) == 0
    drv.write(Q_SELECT, 0, 2)
    assert drv.read(Q_SIZE, 2) == 256 and drv.read(Q_MSIX, 2) == VIRTIO_MSI_NO_VECTOR
    drv.write(Q_SIZE, 6, 2)  # not a power of two: refused
    drv.write(Q_SIZE, 512, 2)  # larger than the maximum: refused
    assert drv.read(Q_SIZE, 2) == 256
    drv.write(Q_SIZE, 16, 2)
    assert drv.read(Q_SIZE, 2) == 16
    drv.write(Q_MSIX, 7, 2)
    assert drv.read(Q_MSIX, 2) == VIRTIO_MSI_NO_VECTOR
    drv.write(Q_SELECT, 1, 2)  # a queue that does not exist
    assert drv.read(Q_SIZE, 2) == 0 and drv.read(Q_ENABLE, 2) == 0
    drv.write(Q_SIZE, 8, 2)
    drv.write(Q_SELECT, 0, 2)
    assert drv.read(Q_SIZE, 2) == 16


def test_any_access_width_at_any_offset(rig: Rig) -> None:
    drv = rig.drv
    drv.reset()
    drv.write(Q_SELECT, 0, 2)
    for i, b in enumerate(struct.pack("<Q", 0x1122_3344_5566_7780)):
        drv.write(Q_DESCLO + i, b, 1)  # byte by byte
    assert drv.read(Q_DESCLO, 4) == 0x5566_7780 and drv.read(Q_DESCLO + 4, 4) == 0x1122_3344
    assert drv.read(Q_DESCLO + 3, 2) == 0x4455  # unaligned
    drv.write(DFSELECT, 1, 4)
    assert [drv.read(DF + i, 1) for i in range(4)] == [1, 0, 0, 0]
    # one dword over device_status, config_generation and queue_select
    drv.write(STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE, 1)
    assert drv.read(STATUS, 4) == VIRTIO_CONFIG_S_ACKNOWLEDGE
    assert drv.read(0x3C, 4) == 0  # admin queue fields: no admin queue
    assert drv.read(CFG_GENERATION, 1) == 0


def test_queue_is_frozen_once_enabled(rig: Rig) -> None:
    drv = rig.drv
    drv.bring_up()
    drv.write(Q_SELECT, 0, 2)
    drv.write64_twopart(Q_DESCLO, 0xDEAD0000)
    drv.write(Q_SIZE, 4, 2)
    drv.write(Q_ENABLE, 0, 2)
    assert drv.read(Q_DESCLO, 4) == DESC and drv.read(Q_SIZE, 2) == QSIZE
    assert drv.read(Q_ENABLE, 2) == 1


# -- entropy ----------------------------------------------------------------------------------


def test_two_buffers_filled_used_ring_and_msix(rig: Rig, events: Recorder) -> None:
    notify = rig.drv.bring_up()
    assert rig.drv.status() == (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
                                | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)
    a = rig.ring.add_inbuf(BUF, 64)
    b = rig.ring.add_inbuf(BUF + 0x100, 32)
    rig.drv.kick(notify)
    assert rig.mem.u16(USED + 2) == 2
    assert rig.mem.used(0) == (a, 64) and rig.mem.used(1) == (b, 32)
    first = bytes(rig.mem.mem[BUF : BUF + 64])
    second = bytes(rig.mem.mem[BUF + 0x100 : BUF + 0x120])
    assert first != bytes(64) and second != bytes(32) and first[:32] != second
    assert rig.mem.mem[BUF + 64 : BUF + 0x100] == bytes(0x100 - 64)  # nothing past the buffers
    assert rig.counter(QUEUE_VECTOR) == 1 and rig.counter(CONFIG_VECTOR) == 0
    assert rig.drv.read_isr() & 1 and rig.drv.read_isr() == 0  # read clears
    [used] = events.of("virtio.used")
    assert (used["buffers"], used["bytes"]) == (2, 96)


def test_consecutive_requests_wrap_the_ring(rig: Rig) -> None:
    notify = rig.drv.bring_up(size=4)
    rig.ring.size = 4
    seen = set()
    for i in range(11):
        rig.ring.add_inbuf(BUF + 0x40 * (i % 4), 16)
        rig.drv.kick(notify)
        assert rig.mem.u16(USED + 2) == i + 1
        assert rig.mem.used(i % 4) == (i % 4, 16)
        seen.add(bytes(rig.mem.mem[BUF + 0x40 * (i % 4) : BUF + 0x40 * (i % 4) + 16]))
    assert len(seen) == 11
    assert rig.counter(QUEUE_VECTOR) == 11


def test_chained_writable_descriptors(rig: Rig) -> None:
    notify = rig.drv.bring_up()
    ring = rig.ring
    ring.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 5)
    ring.desc(5, BUF + 0x40, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2)
    ring.desc(2, BUF + 0x80, 16, VIRTQ_DESC_F_WRITE)
    ring.publish(0)
    rig.drv.kick(notify)
    assert rig.mem.used(0) == (0, 32)
    for addr, n in ((BUF, 8), (BUF + 0x40, 8), (BUF + 0x80, 16)):
        assert rig.mem.mem[addr : addr + n] != bytes(n)


def test_huge_descriptor_is_filled_only_partly(rig: Rig) -> None:
    notify = rig.drv.bring_up()
    rig.ring.desc(0, 0x10000, 0x30000, VIRTQ_DESC_F_WRITE)  # 192 KiB claimed
    rig.ring.publish(0)
    rig.drv.kick(notify)
    assert rig.mem.used(0) == (0, VirtioRng.CHAIN_BYTES_MAX)


def test_no_interrupt_flag_suppresses_the_vector(rig: Rig) -> None:
    notify = rig.drv.bring_up()
    rig.ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.mem.u16(USED + 2) == 1
    assert rig.counter(QUEUE_VECTOR) == 0 and rig.drv.read_isr() == 0


def test_intx_when_msix_is_disabled(rig: Rig) -> None:
    assert rig.fn.msix is not None
    rig.fn.config.write(rig.fn.msix.offset + 2, b"\x00\x00")
    notify = rig.drv.bring_up()
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.intx_count() == 1 and rig.counter(QUEUE_VECTOR) == 0
    assert rig.drv.read_isr() == 1


def test_intx_disable_suppresses_intx(rig: Rig) -> None:
    assert rig.fn.msix is not None
    rig.fn.config.write(rig.fn.msix.offset + 2, b"\x00\x00")
    rig.fn.config.write(0x04, struct.pack("<H", 0x0406))  # MEM | BM | INTx Disable
    notify = rig.drv.bring_up()
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.mem.used(0) == (0, 16)
    assert rig.intx_count() == 0 and rig.drv.read_isr() == 1


def test_kick_before_driver_ok_is_served_at_driver_ok(rig: Rig) -> None:
    drv = rig.drv
    drv.reset()
    drv.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    assert drv.finalize_features(1 << 32)
    drv.config_vector(CONFIG_VECTOR)
    notify = drv.setup_vq(0, QSIZE, QUEUE_VECTOR)
    drv.enable_vq(0)
    rig.ring.add_inbuf(BUF, 16)
    drv.kick(notify)
    assert rig.mem.u16(USED + 2) == 0  # no buffers used before DRIVER_OK (§3.1.1)
    drv.add_status(VIRTIO_CONFIG_S_DRIVER_OK)
    assert rig.mem.u16(USED + 2) == 1 and rig.counter(QUEUE_VECTOR) == 1


# -- bus mastering, malformed rings, reset ------------------------------------------------------


def test_no_dma_without_bus_master(rig: Rig, events: Recorder) -> None:
    notify = rig.drv.bring_up()
    rig.ring.add_inbuf(BUF, 32)
    rig.fn.config.write(0x04, struct.pack("<H", 0x0002))  # memory only
    reads, writes = rig.mem.reads, rig.mem.writes
    rig.drv.kick(notify)
    assert (rig.mem.reads, rig.mem.writes) == (reads, writes)
    assert rig.mem.mem[BUF : BUF + 32] == bytes(32) and rig.mem.u16(USED + 2) == 0
    assert rig.counter(QUEUE_VECTOR) == 0
    assert events.of("virtio.dma_blocked")
    rig.fn.config.write(0x04, struct.pack("<H", 0x0006))  # bus master back on
    rig.drv.kick(notify)
    assert rig.mem.used(0) == (0, 32)


def corrupt_head_out_of_range(ring: Ring) -> None:
    ring.publish(QSIZE)


def corrupt_next_out_of_range(ring: Ring) -> None:
    ring.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 200)
    ring.publish(0)


def corrupt_loop(ring: Ring) -> None:
    ring.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    ring.desc(1, BUF + 8, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0)
    ring.publish(0)


def corrupt_unmapped_buffer(ring: Ring) -> None:
    ring.desc(0, 0x7FFF_0000_0000, 32, VIRTQ_DESC_F_WRITE)
    ring.publish(0)


def corrupt_buffer_past_2_64(ring: Ring) -> None:
    ring.desc(0, 0xFFFF_FFFF_FFFF_FFF0, 32, VIRTQ_DESC_F_WRITE)
    ring.publish(0)


def corrupt_avail_idx_jump(ring: Ring) -> None:
    struct.pack_into("<H", ring.mem.mem, AVAIL + 2, QSIZE + 1)


def corrupt_indirect(ring: Ring) -> None:
    ring.desc(0, BUF, 16, VIRTQ_DESC_F_INDIRECT)
    ring.publish(0)


def corrupt_readable_buffer(ring: Ring) -> None:
    ring.desc(0, BUF, 16, 0)
    ring.publish(0)


@pytest.mark.parametrize("corrupt", [
    corrupt_head_out_of_range, corrupt_next_out_of_range, corrupt_loop,
    corrupt_unmapped_buffer, corrupt_buffer_past_2_64, corrupt_avail_idx_jump,
    corrupt_indirect, corrupt_readable_buffer,
])
def test_malformed_ring_sets_needs_reset(rig: Rig, events: Recorder, corrupt) -> None:  # type: ignore[no-untyped-def]
    notify = rig.drv.bring_up()
    corrupt(rig.ring)
    rig.drv.kick(notify)  # must not raise
    assert rig.drv.status() & VIRTIO_CONFIG_S_NEEDS_RESET
    assert rig.counter(CONFIG_VECTOR) == 1 and rig.counter(QUEUE_VECTOR) == 0
    assert rig.drv.read_isr() == 2  # configuration change
    [ev] = events.of("virtio.needs_reset")
    assert ev["queue"] == 0 and ev["error"]
    # Further kicks are ignored until the driver resets the device.
    reads = rig.mem.reads
    rig.drv.kick(notify)
    assert rig.mem.reads == reads
    # A status write that omits NEEDS_RESET does not clear it; a reset does.
    rig.drv.write(STATUS, 0x0F, 1)
    assert rig.drv.status() & VIRTIO_CONFIG_S_NEEDS_RESET
    rig.mem.mem[:] = bytes(len(rig.mem.mem))
    rig.ring = Ring(rig.mem)
    notify = rig.drv.bring_up()
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.mem.used(0) == (0, 16)


def test_misaligned_ring_sets_needs_reset(rig: Rig) -> None:
    drv = rig.drv
    drv.reset()
    drv.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER)
    assert drv.finalize_features(1 << 32)
    notify = drv.setup_vq(0, QSIZE, QUEUE_VECTOR)
    drv.write64_twopart(Q_DESCLO, DESC + 8)  # descriptor tables are 16-byte aligned
    drv.enable_vq(0)
    drv.add_status(VIRTIO_CONFIG_S_DRIVER_OK)
    rig.drv.kick(notify)
    assert drv.status() & VIRTIO_CONFIG_S_NEEDS_RESET


def test_driver_reset_clears_queue_state(rig: Rig, events: Recorder) -> None:
    notify = rig.drv.bring_up()
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.rng.queue.last_avail == 1
    rig.drv.reset()
    q = rig.rng.queue
    assert (q.last_avail, q.used_idx, q.enable, q.desc, q.driver, q.device) == (0, 0, 0, 0, 0, 0)
    drv = rig.drv
    drv.write(Q_SELECT, 0, 2)
    assert drv.read(Q_SIZE, 2) == 256 and drv.read(Q_MSIX, 2) == VIRTIO_MSI_NO_VECTOR
    assert drv.read(MSIX_CONFIG, 2) == VIRTIO_MSI_NO_VECTOR
    drv.write(GFSELECT, 1, 4)
    assert drv.read(GF, 4) == 0
    assert events.of("virtio.reset")[-1]["cause"] == "driver"


def test_function_reset_returns_to_power_on(rig: Rig) -> None:
    notify = rig.drv.bring_up()
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.counter(QUEUE_VECTOR) == 1
    rig.fn.region_write(4, 0, b"secret")
    rig.fn.reset("device_reset")  # vfio-user DEVICE_RESET / FLR
    assert rig.drv.status() == 0
    assert rig.rng.queue.enable == 0 and rig.rng.queue.last_avail == 0
    assert rig.fn.region_read(4, 0, 6) == bytes(6)  # device memory cleared
    assert not rig.fn.bus_master  # Command register back to 0
    rig.fn.config.write(0x04, struct.pack("<H", 0x0006))
    assert rig.fn.msix is not None
    rig.fn.config.write(rig.fn.msix.offset + 2, struct.pack("<H", 0x8000))
    rig.mem.mem[:] = bytes(len(rig.mem.mem))
    rig.ring = Ring(rig.mem)
    notify = rig.drv.bring_up()
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.mem.used(0) == (0, 16) and rig.counter(QUEUE_VECTOR) == 1


def test_interrupt_raised_under_function_mask_is_delivered_on_unmask(rig: Rig) -> None:
    assert rig.fn.msix is not None
    ctl = rig.fn.msix.offset + 2
    notify = rig.drv.bring_up()
    rig.fn.config.write(ctl, struct.pack("<H", 0xC000))  # MSI-X enable + Function Mask
    rig.ring.add_inbuf(BUF, 16)
    rig.drv.kick(notify)
    assert rig.counter(QUEUE_VECTOR) == 0
    assert rig.fn.region_read(2, 0x800, 8)[0] == 1 << QUEUE_VECTOR  # pending in the PBA
    rig.fn.config.write(ctl, struct.pack("<H", 0x8000))  # Function Mask cleared
    assert rig.counter(QUEUE_VECTOR) == 1
    assert rig.fn.region_read(2, 0x800, 8) == bytes(8)
