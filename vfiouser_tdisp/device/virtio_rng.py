"""``virtio-rng``: a modern virtio-pci entropy device (virtio 1.x §4.1, §5.4).

A stock Linux guest binds ``virtio_pci`` and ``virtio_rng`` to it; the bytes
``/dev/hwrng`` returns are produced here (``os.urandom``) and written into the
guest's buffers by DMA.

The module has three parts: the virtio PCI capabilities (§4.1.4), the device
side of a split virtqueue (§2.7), and :class:`VirtioPciModern`, the generic
modern virtio-pci transport (common config, ISR, notify, MSI-X, status and
feature negotiation, reset).  :class:`VirtioRng` is then a short declaration.

BAR layout::

    BAR0 (64-bit, 16 KiB)   0x0000 common config  (VIRTIO_PCI_CAP_COMMON_CFG, 0x40 bytes)
                            0x1000 ISR status      (VIRTIO_PCI_CAP_ISR_CFG, read clears)
                            0x2000 device config   (VIRTIO_PCI_CAP_DEVICE_CFG, zeros for rng)
                            0x3000 notify          (VIRTIO_PCI_CAP_NOTIFY_CFG, multiplier 4)
    BAR2 (32-bit, 4 KiB)    MSI-X table at 0, PBA at 0x800 (config vector + one per queue)
    BAR4 (64-bit pref, 64 KiB)  device memory (memfd, mmap-able); virtio ignores it

Common configuration (``struct virtio_pci_modern_common_cfg``, offsets in BAR0)::

    0x00 device_feature_select  0x04 device_feature      0x08 driver_feature_select
    0x0C driver_feature         0x10 config_msix_vector  0x12 num_queues
    0x14 device_status          0x15 config_generation   0x16 queue_select
    0x18 queue_size             0x1A queue_msix_vector   0x1C queue_enable
    0x1E queue_notify_off       0x20 queue_desc          0x28 queue_driver
    0x30 queue_device           0x38 queue_notify_data   0x3A queue_reset
    0x3C admin_queue_index      0x3E admin_queue_num

Not implemented: VIRTIO_PCI_CAP_PCI_CFG (the config-space window onto the
BARs; Linux does not use it), indirect descriptors, event index, packed rings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from ..events import emit
from ..pci.caps import PCI_CAP_ID_VNDR
from ..pci.config import Capability, Reg
from ..pci.function import (
    PCI_COMMAND_INTX_DISABLE,
    Bar,
    BarKind,
    DmaError,
    DmaSpace,
    IrqIndex,
    MemoryArea,
    PciFunction,
    RegisterArea,
)
from ..wire import Struct, u16, u32, u64
from .personality import Personality, register

# §4.1.4 cfg_type values
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

# §6 reserved feature bits
VIRTIO_F_VERSION_1 = 1 << 32
FEATURE_WORDS = 4  # Linux reads 128 feature bits (select 0..3)

# §2.1 device status
VIRTIO_CONFIG_S_ACKNOWLEDGE = 0x01
VIRTIO_CONFIG_S_DRIVER = 0x02
VIRTIO_CONFIG_S_DRIVER_OK = 0x04
VIRTIO_CONFIG_S_FEATURES_OK = 0x08
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# §2.7 split virtqueue
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_SIZE_LIMIT = 32768

# §4.1.4.5 ISR bits, §4.1.5.1.2 MSI-X
VIRTIO_PCI_ISR_QUEUE = 0x1
VIRTIO_PCI_ISR_CONFIG = 0x2
VIRTIO_MSI_NO_VECTOR = 0xFFFF

VIRTIO_ID_RNG = 4
VIRTIO_PCI_MODERN_DEVICE_ID_BASE = 0x1040


# -- capabilities (§4.1.4) -------------------------------------------------------------


class VirtioPciCap(Capability):
    """``struct virtio_pci_cap``: where one virtio structure lives in a BAR.

    ::

        31        24 23       16 15        8 7         0
        +-----------+-----------+-----------+-----------+
        | cfg_type  |  cap_len  | cap_next  |   0x09    |  +0x00
        +-----------+-----------+-----------+-----------+
        |  padding (0)          |    id     |    bar    |  +0x04
        +-----------------------+-----------+-----------+
        |            offset (within the BAR)            |  +0x08
        +-----------------------------------------------+
        |            length (bytes)                     |  +0x0C
        +-----------------------------------------------+

    Every field is read-only.
    """

    CAP_ID = PCI_CAP_ID_VNDR
    NAME = "virtio-pci-cap"
    CAP_LEN: ClassVar[int] = 16

    def __init__(self, cfg_type: int, bar: int, bar_offset: int, length: int) -> None:
        super().__init__(self.CAP_LEN)
        self.cfg_type = cfg_type
        self.bar = bar
        self.bar_offset = bar_offset
        self.length = length

    def registers(self) -> Iterable[Reg]:
        return [
            Reg("cap_len", 0x02, 1, self.CAP_LEN),
            Reg("cfg_type", 0x03, 1, self.cfg_type),
            Reg("bar", 0x04, 1, self.bar),
            Reg("id", 0x05, 1, 0),
            Reg("offset", 0x08, 4, self.bar_offset),
            Reg("length", 0x0C, 4, self.length),
        ]


class VirtioPciNotifyCap(VirtioPciCap):
    """``struct virtio_pci_notify_cap``: the notify cap plus its multiplier.

    ::

        +0x00 .. +0x0C  struct virtio_pci_cap (cfg_type 2)
        +0x10           notify_off_multiplier: queue q is notified by a
                        16-bit write at offset + queue_notify_off(q) * multiplier
    """

    CAP_LEN = 20

    def __init__(self, bar: int, bar_offset: int, length: int, multiplier: int) -> None:
        super().__init__(VIRTIO_PCI_CAP_NOTIFY_CFG, bar, bar_offset, length)
        self.multiplier = multiplier

    def registers(self) -> Iterable[Reg]:
        return [*super().registers(), Reg("notify_off_multiplier", 0x10, 4, self.multiplier)]


# -- split virtqueue (§2.7) -------------------------------------------------------------


class VirtqueueError(Exception):
    """The driver's ring is malformed: the device must set DEVICE_NEEDS_RESET."""


@dataclass(frozen=True)
class VirtqDesc(Struct):
    addr: int = u64()
    len: int = u32()
    flags: int = u16()
    next: int = u16()


@dataclass(frozen=True)
class VirtqAvailHeader(Struct):
    flags: int = u16()
    idx: int = u16()


@dataclass(frozen=True)
class VirtqUsedElem(Struct):
    id: int = u32()
    len: int = u32()


@dataclass(frozen=True)
class VirtqIdx(Struct):
    idx: int = u16()


DESC_SIZE = VirtqDesc.fixed_size()
USED_ELEM_SIZE = VirtqUsedElem.fixed_size()
RING_HEADER_SIZE = VirtqAvailHeader.fixed_size()  # flags + idx, both rings


def _dma_read(dma: DmaSpace, addr: int, size: int) -> bytes:
    if addr < 0 or addr + size > 1 << 64:
        raise VirtqueueError(f"ring address {addr:#x}+{size} outside the 64-bit space")
    data = dma.read(addr, size)
    if len(data) != size:
        raise VirtqueueError(f"DMA read at {addr:#x} returned {len(data)} of {size} bytes")
    return data


@dataclass
class SplitVirtqueue:
    """Device side of one split virtqueue.

    The first fields are what the driver programs through the common config;
    ``last_avail`` and ``used_idx`` are the device's private ring positions.
    All ring accesses go through the function's DMA space.
    """

    index: int
    size: int
    msix_vector: int = VIRTIO_MSI_NO_VECTOR
    enable: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    last_avail: int = 0
    used_idx: int = 0

    def check_layout(self) -> None:
        """§2.7 alignment: descriptor table 16, available ring 2, used ring 4."""
        if self.desc % 16 or self.driver % 2 or self.device % 4:
            raise VirtqueueError(
                f"misaligned rings desc={self.desc:#x} driver={self.driver:#x} "
                f"device={self.device:#x}")

    def available(self, dma: DmaSpace) -> list[int]:
        """Head indices the driver has made available since the last call."""
        self.check_layout()
        hdr = VirtqAvailHeader.unpack(_dma_read(dma, self.driver, RING_HEADER_SIZE))
        pending = (hdr.idx - self.last_avail) & 0xFFFF
        if pending > self.size:
            raise VirtqueueError(
                f"avail idx {hdr.idx} is {pending} ahead of {self.last_avail} (size {self.size})")
        if not pending:
            return []
        ring = _dma_read(dma, self.driver + RING_HEADER_SIZE, 2 * self.size)
        slots = ((self.last_avail + i) % self.size for i in range(pending))
        return [int.from_bytes(ring[2 * s : 2 * s + 2], "little") for s in slots]

    def chain(self, dma: DmaSpace, head: int) -> list[VirtqDesc]:
        """The descriptors of one chain, checked: in range, no loop, no
        indirect, device-readable before device-writable (§2.7.4.2)."""
        out: list[VirtqDesc] = []
        index = head
        while True:
            if index >= self.size:
                raise VirtqueueError(f"descriptor index {index} outside queue of {self.size}")
            if len(out) == self.size:
                raise VirtqueueError(f"descriptor chain from {head} loops")
            d = VirtqDesc.unpack(_dma_read(dma, self.desc + DESC_SIZE * index, DESC_SIZE))
            if d.flags & VIRTQ_DESC_F_INDIRECT:
                raise VirtqueueError("indirect descriptor (VIRTIO_F_INDIRECT_DESC not offered)")
            if out and out[-1].flags & VIRTQ_DESC_F_WRITE and not d.flags & VIRTQ_DESC_F_WRITE:
                raise VirtqueueError("device-readable descriptor after a device-writable one")
            out.append(d)
            if not d.flags & VIRTQ_DESC_F_NEXT:
                return out
            index = d.next

    def push_used(self, dma: DmaSpace, head: int, written: int) -> None:
        slot = self.used_idx % self.size
        addr = self.device + RING_HEADER_SIZE + USED_ELEM_SIZE * slot
        dma.write(addr, VirtqUsedElem(head, written).pack())
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.last_avail = (self.last_avail + 1) & 0xFFFF

    def publish(self, dma: DmaSpace) -> bool:
        """Expose the used elements (used->idx); True if the driver wants an
        interrupt (flags read after the index, §2.7.7)."""
        dma.write(self.device + 2, VirtqIdx(self.used_idx).pack())
        flags = VirtqAvailHeader.unpack(_dma_read(dma, self.driver, RING_HEADER_SIZE))
        return not flags.flags & VIRTQ_AVAIL_F_NO_INTERRUPT


# -- the modern virtio-pci transport (§4.1) -----------------------------------------------


@dataclass(frozen=True)
class CfgField:
    name: str
    offset: int
    size: int


# The handler for field ``x`` is ``_get_x`` / ``_set_x``; no setter means read-only.
COMMON_CFG: tuple[CfgField, ...] = tuple(CfgField(*f) for f in (
    ("device_feature_select", 0x00, 4), ("device_feature", 0x04, 4),
    ("driver_feature_select", 0x08, 4), ("driver_feature", 0x0C, 4),
    ("config_msix_vector", 0x10, 2), ("num_queues", 0x12, 2),
    ("device_status", 0x14, 1), ("config_generation", 0x15, 1),
    ("queue_select", 0x16, 2), ("queue_size", 0x18, 2),
    ("queue_msix_vector", 0x1A, 2), ("queue_enable", 0x1C, 2),
    ("queue_notify_off", 0x1E, 2), ("queue_desc", 0x20, 8),
    ("queue_driver", 0x28, 8), ("queue_device", 0x30, 8),
    ("queue_notify_data", 0x38, 2), ("queue_reset", 0x3A, 2),
    ("admin_queue_index", 0x3C, 2), ("admin_queue_num", 0x3E, 2),
))
COMMON_CFG_LEN = 0x40


def _in_order(works: list[Callable[[], None]]) -> None:
    for work in works:
        work()


class VirtioPciModern(Personality):
    """A modern-only virtio-pci device; subclasses declare the device type,
    features, queues and :meth:`process` (what one buffer chain does)."""

    VENDOR_ID = 0x1AF4
    SUBSYSTEM_VENDOR_ID = 0x1AF4
    REVISION = 1  # modern-only devices have revision >= 1 (§4.1.2.1)
    VIRTIO_DEVICE_ID: ClassVar[int]
    DEVICE_FEATURES: ClassVar[int] = VIRTIO_F_VERSION_1
    QUEUES: ClassVar[tuple[str, ...]] = ()
    QUEUE_SIZE_MAX: ClassVar[int] = 256

    BAR0_SIZE = 0x4000
    COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
    DEVICE_CFG_LEN: ClassVar[int] = 4
    NOTIFY_OFF_MULTIPLIER = 4
    MSIX_BAR, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET = 2, 0x000, 0x800

    def __init__(self) -> None:
        super().__init__()
        self.power_on()

    @property
    def fn(self) -> PciFunction:
        assert self.function is not None, "personality not built"
        return self.function

    @property
    def msix_vectors(self) -> int:
        return 1 + len(self.QUEUES)  # config change + one per queue

    # -- declaration -------------------------------------------------------------------
    def build(self, fn: PciFunction) -> None:
        notify_len = self.NOTIFY_OFF_MULTIPLIER * len(self.QUEUES)
        bar0 = fn.add_bar(Bar(0, self.BAR0_SIZE, BarKind.MEM64))
        bar0.add(self.COMMON_OFFSET,
                 RegisterArea(COMMON_CFG_LEN, self.common_read, self.common_write))
        bar0.add(self.ISR_OFFSET, RegisterArea(4, self.isr_read, _ignore_write))
        bar0.add(self.DEVICE_OFFSET,
                 RegisterArea(self.DEVICE_CFG_LEN, self.device_cfg_read, _ignore_write))
        bar0.add(self.NOTIFY_OFFSET, RegisterArea(notify_len, _zeros, self.notify_write))
        fn.add_bar(Bar(self.MSIX_BAR, 0x1000, BarKind.MEM32))
        fn.add_msix(self.msix_vectors, self.MSIX_BAR, self.MSIX_TABLE_OFFSET,
                    self.MSIX_BAR, self.MSIX_PBA_OFFSET)
        for cap in (
            VirtioPciCap(VIRTIO_PCI_CAP_COMMON_CFG, 0, self.COMMON_OFFSET, COMMON_CFG_LEN),
            VirtioPciCap(VIRTIO_PCI_CAP_ISR_CFG, 0, self.ISR_OFFSET, 4),
            VirtioPciCap(VIRTIO_PCI_CAP_DEVICE_CFG, 0, self.DEVICE_OFFSET, self.DEVICE_CFG_LEN),
            VirtioPciNotifyCap(0, self.NOTIFY_OFFSET, notify_len, self.NOTIFY_OFF_MULTIPLIER),
        ):
            fn.config.add_capability(cap)

    # -- state -------------------------------------------------------------------------
    def power_on(self) -> None:
        """Virtio reset (§2.4): everything the driver can see returns to its
        initial value and the rings are forgotten."""
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.config_msix_vector = VIRTIO_MSI_NO_VECTOR
        self.config_generation = 0
        self.queue_select = 0
        self.queues = [SplitVirtqueue(i, self.QUEUE_SIZE_MAX) for i in range(len(self.QUEUES))]
        self.isr = 0
        self.early_kicks: set[int] = set()  # notified before DRIVER_OK

    @property
    def queue(self) -> SplitVirtqueue:
        """Queue 0 (the only one for most small devices)."""
        return self.queues[0]

    def reset(self, cause: str) -> None:
        self.power_on()
        emit("virtio.reset", function=self.fn.name, cause=cause)

    # -- common configuration: access plumbing ------------------------------------------
    def common_read(self, offset: int, size: int) -> bytes:
        image = bytearray(COMMON_CFG_LEN)
        for f in self._touched(offset, size):
            value: int = getattr(self, f"_get_{f.name}")()
            image[f.offset : f.offset + f.size] = (value & _mask(f.size)).to_bytes(f.size, "little")
        return bytes(image[offset : offset + size])

    def common_write(self, offset: int, data: bytes) -> None:
        # Merge partial writes with the current value, then hand each touched
        # field its whole new value (queue addresses arrive as 32-bit halves).
        image = bytearray(self.common_read(0, COMMON_CFG_LEN))
        image[offset : offset + len(data)] = data
        # Setters that start queue service return it as work, done once every
        # touched field has its new value.
        works: list[Callable[[], None]] = []
        for f in self._touched(offset, len(data)):
            setter = getattr(self, f"_set_{f.name}", None)
            if setter is not None:
                work = setter(int.from_bytes(image[f.offset : f.offset + f.size], "little"))
                if work is not None:
                    works.append(work)
        _in_order(works)

    @staticmethod
    def _touched(offset: int, size: int) -> list[CfgField]:
        return [f for f in COMMON_CFG if f.offset < offset + size and offset < f.offset + f.size]

    def _selected(self) -> SplitVirtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _configurable(self) -> SplitVirtqueue | None:
        """The selected queue while the driver may still program it."""
        q = self._selected()
        return q if q is not None and not q.enable else None

    def _vector(self, value: int) -> int:
        """A vector the device cannot use reads back as NO_VECTOR (§4.1.5.1.2)."""
        return value if value < self.msix_vectors else VIRTIO_MSI_NO_VECTOR

    # -- common configuration: the fields ----------------------------------------------
    def _get_device_feature_select(self) -> int:
        return self.device_feature_select

    def _set_device_feature_select(self, value: int) -> None:
        self.device_feature_select = value

    def _get_device_feature(self) -> int:
        sel = self.device_feature_select
        return (self.DEVICE_FEATURES >> (32 * sel)) & 0xFFFFFFFF if sel < FEATURE_WORDS else 0

    def _get_driver_feature_select(self) -> int:
        return self.driver_feature_select

    def _set_driver_feature_select(self, value: int) -> None:
        self.driver_feature_select = value

    def _get_driver_feature(self) -> int:
        sel = self.driver_feature_select
        return (self.driver_features >> (32 * sel)) & 0xFFFFFFFF if sel < FEATURE_WORDS else 0

    def _set_driver_feature(self, value: int) -> None:
        sel = self.driver_feature_select
        if sel < FEATURE_WORDS and not self.status & VIRTIO_CONFIG_S_FEATURES_OK:
            shift = 32 * sel
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (
                value << shift)

    def _get_config_msix_vector(self) -> int:
        return self.config_msix_vector

    def _set_config_msix_vector(self, value: int) -> None:
        self.config_msix_vector = self._vector(value)

    def _get_num_queues(self) -> int:
        return len(self.queues)

    def _get_device_status(self) -> int:
        return self.status

    def _set_device_status(self, value: int) -> Callable[[], None] | None:
        if value == 0:
            self.power_on()
            emit("virtio.reset", function=self.fn.name, cause="driver")
            return None
        old = self.status
        value |= old & VIRTIO_CONFIG_S_NEEDS_RESET  # only a reset clears it
        if value & ~old & VIRTIO_CONFIG_S_FEATURES_OK and not self._features_acceptable():
            value &= ~VIRTIO_CONFIG_S_FEATURES_OK  # refused: the driver reads it back
        self.status = value
        emit("virtio.status", function=self.fn.name, status=value,
             driver_features=self.driver_features)
        if value & ~old & VIRTIO_CONFIG_S_DRIVER_OK and self.early_kicks:
            kicked, self.early_kicks = self.early_kicks, set()
            queues = [self.queues[i] for i in sorted(kicked)]
            return lambda: self._service_all(queues)
        return None

    def _features_acceptable(self) -> bool:
        ok = bool(self.driver_features & VIRTIO_F_VERSION_1) and not (
            self.driver_features & ~self.DEVICE_FEATURES)
        if not ok:
            emit("virtio.features_refused", function=self.fn.name,
                 driver_features=self.driver_features, device_features=self.DEVICE_FEATURES)
        return ok

    def _get_config_generation(self) -> int:
        return self.config_generation

    def _get_queue_select(self) -> int:
        return self.queue_select

    def _set_queue_select(self, value: int) -> None:
        self.queue_select = value

    def _get_queue_size(self) -> int:
        q = self._selected()
        return q.size if q else 0  # 0: the queue does not exist

    def _set_queue_size(self, value: int) -> None:
        q = self._configurable()
        # Split rings are a power of two in size; the driver may only shrink.
        if q is not None and 0 < value <= self.QUEUE_SIZE_MAX and not value & (value - 1):
            q.size = value

    def _get_queue_msix_vector(self) -> int:
        q = self._selected()
        return q.msix_vector if q else VIRTIO_MSI_NO_VECTOR

    def _set_queue_msix_vector(self, value: int) -> None:
        q = self._selected()
        if q is not None:
            q.msix_vector = self._vector(value)

    def _get_queue_enable(self) -> int:
        q = self._selected()
        return q.enable if q else 0

    def _set_queue_enable(self, value: int) -> None:
        q = self._configurable()
        if q is not None and value == 1:  # writing 0 is not allowed (§4.1.4.3.2)
            q.enable = 1
            emit("virtio.queue_enabled", function=self.fn.name, queue=q.index, size=q.size,
                 desc=q.desc, driver=q.driver, device=q.device, vector=q.msix_vector)

    def _get_queue_notify_off(self) -> int:
        q = self._selected()
        return q.index if q else 0

    def _get_queue_desc(self) -> int:
        q = self._selected()
        return q.desc if q else 0

    def _set_queue_desc(self, value: int) -> None:
        if (q := self._configurable()) is not None:
            q.desc = value

    def _get_queue_driver(self) -> int:
        q = self._selected()
        return q.driver if q else 0

    def _set_queue_driver(self, value: int) -> None:
        if (q := self._configurable()) is not None:
            q.driver = value

    def _get_queue_device(self) -> int:
        q = self._selected()
        return q.device if q else 0

    def _set_queue_device(self, value: int) -> None:
        if (q := self._configurable()) is not None:
            q.device = value

    # Only meaningful with features this device does not offer.
    def _get_queue_notify_data(self) -> int:
        return 0

    def _get_queue_reset(self) -> int:
        return 0

    def _get_admin_queue_index(self) -> int:
        return 0

    def _get_admin_queue_num(self) -> int:
        return 0

    # -- ISR, device config, notify -------------------------------------------------------
    def isr_read(self, offset: int, size: int) -> bytes:
        value = 0
        if offset == 0:
            value, self.isr = self.isr, 0  # reading clears it (§4.1.4.5)
        return value.to_bytes(4, "little")[offset : offset + size]

    def device_cfg_read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def notify_write(self, offset: int, data: bytes) -> None:
        index = offset // self.NOTIFY_OFF_MULTIPLIER
        if index >= len(self.queues) or self.status & (
                VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED):
            return
        q = self.queues[index]
        if not q.enable or not self.status & VIRTIO_CONFIG_S_DRIVER_OK:
            self.early_kicks.add(index)  # served once the driver says DRIVER_OK
            return
        self._service(q)

    # -- queue service -------------------------------------------------------------------
    def process(self, queue: int, chain: list[VirtqDesc]) -> int:
        """Do what the device does with one buffer chain; return the number
        of bytes written into its device-writable part."""
        raise NotImplementedError

    def _service_all(self, queues: list[SplitVirtqueue]) -> None:
        for q in queues:
            self._service(q)

    def _service(self, q: SplitVirtqueue) -> None:
        fn = self.fn
        if not fn.bus_master:
            emit("virtio.dma_blocked", function=fn.name, queue=q.index,
                 reason="Bus Master Enable is clear")
            return
        try:
            heads = q.available(fn.dma)
            written = 0
            for head in heads:
                n = self.process(q.index, q.chain(fn.dma, head))
                q.push_used(fn.dma, head, n)
                written += n
            if not heads:
                return
            wants_interrupt = q.publish(fn.dma)
        except (DmaError, VirtqueueError) as exc:
            self._needs_reset(q, exc)
            return
        emit("virtio.used", function=fn.name, queue=q.index, buffers=len(heads), bytes=written,
             used_idx=q.used_idx)
        if wants_interrupt:
            self._interrupt(q.msix_vector, VIRTIO_PCI_ISR_QUEUE)

    def _needs_reset(self, q: SplitVirtqueue, exc: Exception) -> None:
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET
        emit("virtio.needs_reset", function=self.fn.name, queue=q.index,
             error=f"{type(exc).__name__}: {exc}")
        self._interrupt(self.config_msix_vector, VIRTIO_PCI_ISR_CONFIG)

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        """MSI-X when enabled (none if the driver chose NO_VECTOR), else INTx
        with the ISR telling the driver why."""
        fn = self.fn
        self.isr |= isr_bit
        if fn.msix is not None and fn.msix.enabled:
            if vector != VIRTIO_MSI_NO_VECTOR:
                fn.irqs.trigger(IrqIndex.MSIX, vector)
        elif not fn.command & PCI_COMMAND_INTX_DISABLE:
            fn.irqs.trigger(IrqIndex.INTX, 0)


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def _zeros(offset: int, size: int) -> bytes:
    return bytes(size)


def _ignore_write(offset: int, data: bytes) -> None:
    return None


# -- the entropy device (§5.4) -------------------------------------------------------------


@register
class VirtioRng(VirtioPciModern):
    """One request queue; every device-writable buffer is filled with random bytes."""

    NAME = "virtio-rng"
    DESCRIPTION = "modern virtio-pci entropy device; the guest's virtio_rng binds to it"
    VIRTIO_DEVICE_ID = VIRTIO_ID_RNG
    DEVICE_ID = VIRTIO_PCI_MODERN_DEVICE_ID_BASE + VIRTIO_ID_RNG  # 0x1044
    SUBSYSTEM_ID = VIRTIO_ID_RNG
    CLASS_CODE = 0xFF0000  # PCI_CLASS_OTHERS, as QEMU's virtio-rng-pci
    QUEUES = ("requestq",)
    GUEST_CHECKS = ("device", "ids", "tee_io", "doe_features", "doe_dmesg", "doe_spdm",
                    "ide_cap", "virtio_rng", "hwrng", "msix")

    DEVICE_MEMORY_BAR, DEVICE_MEMORY_SIZE = 4, 0x10000
    # The device may fill less than a buffer (§5.4.6.2); this bounds what one
    # chain costs however large the driver's descriptors claim to be.
    CHAIN_BYTES_MAX = 0x10000

    def build(self, fn: PciFunction) -> None:
        super().build(fn)
        bar4 = fn.add_bar(Bar(self.DEVICE_MEMORY_BAR, self.DEVICE_MEMORY_SIZE, BarKind.MEM64,
                              prefetchable=True))
        self.device_memory = MemoryArea(self.DEVICE_MEMORY_SIZE, f"{fn.name}-devmem")
        bar4.add(0, self.device_memory)

    def process(self, queue: int, chain: list[VirtqDesc]) -> int:
        if any(not d.flags & VIRTQ_DESC_F_WRITE for d in chain):
            raise VirtqueueError("driver-readable buffer in the entropy queue (§5.4.6.1)")
        written = 0
        for d in chain:
            n = min(d.len, self.CHAIN_BYTES_MAX - written)
            if n:
                self.fn.dma.write(d.addr, self.entropy(n))
                written += n
        return written

    @staticmethod
    def entropy(n: int) -> bytes:
        return os.urandom(n)

    def reset(self, cause: str) -> None:
        super().reset(cause)
        self.device_memory.clear()

    def non_tee_ranges(self) -> list[tuple[int, int, int]]:
        return []

    def updatable_ranges(self) -> list[tuple[int, int, int]]:
        # The device-memory BAR may be shared with the host (non-TEE) or kept private.
        return [(self.DEVICE_MEMORY_BAR, 0, self.DEVICE_MEMORY_SIZE)]
