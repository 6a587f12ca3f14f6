"""``virtio-rng``: a modern virtio-pci entropy device (virtio 1.x §4.1, §5.4).

A stock Linux guest binds ``virtio_pci`` and ``virtio_rng`` to it; the bytes
``/dev/hwrng`` returns are produced here (``os.urandom``) and written into the
guest's buffers by DMA.

Layout::

    BAR0 (64-bit, 16 KiB)   0x0000 common config   (VIRTIO_PCI_CAP_COMMON_CFG)
                            0x1000 ISR status       (VIRTIO_PCI_CAP_ISR_CFG, read clears)
                            0x2000 device config    (VIRTIO_PCI_CAP_DEVICE_CFG, empty for rng)
                            0x3000 notify           (VIRTIO_PCI_CAP_NOTIFY_CFG, multiplier 4)
    BAR2 (32-bit, 4 KiB)    MSI-X table at 0, PBA at 0x800 (2 vectors: config, queue 0)
    BAR4 (64-bit pref, 64 KiB)  device memory (memfd, mmap-able); virtio ignores it

Common configuration (offsets in BAR0)::

    0x00 device_feature_select  0x04 device_feature   0x08 driver_feature_select
    0x0C driver_feature         0x10 config_msix_vector  0x12 num_queues
    0x14 device_status          0x15 config_generation   0x16 queue_select
    0x18 queue_size             0x1A queue_msix_vector   0x1C queue_enable
    0x1E queue_notify_off       0x20 queue_desc          0x28 queue_driver
    0x30 queue_device           0x38 queue_notify_data   0x3A queue_reset
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..events import emit
from ..pci.caps import VendorCapability
from .function import (
    Bar,
    BarKind,
    DmaError,
    IrqIndex,
    MemoryArea,
    PciFunction,
    RegisterArea,
)
from .personality import Personality, register

VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4

VIRTIO_F_VERSION_1 = 1 << 32

VIRTIO_CONFIG_S_ACKNOWLEDGE = 0x01
VIRTIO_CONFIG_S_DRIVER = 0x02
VIRTIO_CONFIG_S_DRIVER_OK = 0x04
VIRTIO_CONFIG_S_FEATURES_OK = 0x08
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTIO_MSI_NO_VECTOR = 0xFFFF

QUEUE_SIZE_MAX = 256
MSIX_VECTORS = 2
COMMON_LEN = 0x40
ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x1000, 0x2000, 0x3000
NOTIFY_MULTIPLIER = 4

_DESC = struct.Struct("<QIHH")

# name -> (offset, size) of the common configuration fields
COMMON_FIELDS = {
    "device_feature_select": (0x00, 4), "device_feature": (0x04, 4),
    "driver_feature_select": (0x08, 4), "driver_feature": (0x0C, 4),
    "config_msix_vector": (0x10, 2), "num_queues": (0x12, 2),
    "device_status": (0x14, 1), "config_generation": (0x15, 1),
    "queue_select": (0x16, 2), "queue_size": (0x18, 2),
    "queue_msix_vector": (0x1A, 2), "queue_enable": (0x1C, 2),
    "queue_notify_off": (0x1E, 2), "queue_desc": (0x20, 8),
    "queue_driver": (0x28, 8), "queue_device": (0x30, 8),
    "queue_notify_data": (0x38, 2), "queue_reset": (0x3A, 2),
}


def virtio_cap(cfg_type: int, bar: int, offset: int, length: int,
               extra: bytes = b"") -> VendorCapability:
    """struct virtio_pci_cap: cap_len, cfg_type, bar, id, padding[2], offset, length."""
    body = struct.pack("<BBBBxxII", 16 + len(extra), cfg_type, bar, 0, offset, length) + extra
    return VendorCapability(body, name=f"virtio-cap{cfg_type}")


@dataclass
class Virtqueue:
    size: int = QUEUE_SIZE_MAX
    msix_vector: int = VIRTIO_MSI_NO_VECTOR
    enable: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    last_avail: int = 0
    used_idx: int = 0


@register
class VirtioRng(Personality):
    NAME = "virtio-rng"
    DESCRIPTION = "modern virtio-pci entropy device; the guest's virtio_rng binds to it"
    VENDOR_ID = 0x1AF4
    DEVICE_ID = 0x1044  # 0x1040 + virtio device id 4 (entropy)
    CLASS_CODE = 0xFF0000
    REVISION = 1  # modern-only devices have revision >= 1
    SUBSYSTEM_VENDOR_ID = 0x1AF4
    SUBSYSTEM_ID = 0x0004
    DEVICE_FEATURES = VIRTIO_F_VERSION_1
    GUEST_CHECKS = ("device", "ids", "tee_io", "doe_features", "doe_dmesg", "ide_cap",
                    "virtio_rng", "hwrng", "msix")

    def __init__(self) -> None:
        super().__init__()
        self._power_on()

    def _power_on(self) -> None:
        self.regs = {"device_feature_select": 0, "driver_feature_select": 0,
                     "config_msix_vector": VIRTIO_MSI_NO_VECTOR, "device_status": 0,
                     "config_generation": 0, "queue_select": 0}
        self.driver_features = 0
        self.queue = Virtqueue()
        self.isr = 0

    # -- declaration ---------------------------------------------------------------
    def build(self, fn: PciFunction) -> None:
        bar0 = fn.add_bar(Bar(0, 0x4000, BarKind.MEM64))
        bar0.add(0, RegisterArea(COMMON_LEN, self.common_read, self.common_write))
        bar0.add(ISR_OFFSET, RegisterArea(4, self.isr_read, lambda o, d: None))
        bar0.add(NOTIFY_OFFSET, RegisterArea(4, lambda o, n: bytes(n), self.notify_write))
        fn.add_bar(Bar(2, 0x1000, BarKind.MEM32))
        fn.add_msix(MSIX_VECTORS, 2, 0, 2, 0x800)
        bar4 = fn.add_bar(Bar(4, 0x10000, BarKind.MEM64, prefetchable=True))
        self.device_memory = MemoryArea(0x10000, "virtio-rng-devmem")
        bar4.add(0, self.device_memory)
        for cap in (virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, 0, 0, COMMON_LEN),
                    virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, 0, ISR_OFFSET, 4),
                    virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, 0, DEVICE_OFFSET, 4),
                    virtio_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, 0, NOTIFY_OFFSET, 4,
                               struct.pack("<I", NOTIFY_MULTIPLIER))):
            fn.config.add_capability(cap)

    # -- common configuration ----------------------------------------------------------
    def _field(self, name: str) -> int:
        q = self.queue
        sel = self.regs["queue_select"]
        if name == "device_feature":
            return (self.DEVICE_FEATURES >> (32 * self.regs["device_feature_select"])) \
                & 0xFFFFFFFF if self.regs["device_feature_select"] < 2 else 0
        if name == "driver_feature":
            return (self.driver_features >> (32 * self.regs["driver_feature_select"])) \
                & 0xFFFFFFFF if self.regs["driver_feature_select"] < 2 else 0
        if name == "num_queues":
            return 1
        if name in ("queue_notify_off", "queue_notify_data", "queue_reset"):
            return 0
        if name.startswith("queue_") and name != "queue_select":
            if sel != 0:
                return 0  # a queue that does not exist reads as zeros (size 0)
            return int(getattr(q, name[len("queue_"):]))
        return self.regs[name]

    def _set_field(self, name: str, value: int) -> None:
        q = self.queue
        if name == "driver_feature":
            shift = 32 * self.regs["driver_feature_select"]
            if shift < 64:
                mask = 0xFFFFFFFF << shift
                self.driver_features = (self.driver_features & ~mask) | (value << shift)
        elif name == "device_status":
            self._write_status(value)
        elif name in ("device_feature", "num_queues", "config_generation", "queue_notify_off",
                      "queue_notify_data"):
            return  # read-only
        elif name == "config_msix_vector":
            self.regs[name] = value if value < MSIX_VECTORS else VIRTIO_MSI_NO_VECTOR
        elif name == "queue_msix_vector":
            if self.regs["queue_select"] == 0:
                q.msix_vector = value if value < MSIX_VECTORS else VIRTIO_MSI_NO_VECTOR
        elif name == "queue_size":
            if self.regs["queue_select"] == 0 and 0 < value <= QUEUE_SIZE_MAX \
                    and value & (value - 1) == 0:
                q.size = value
        elif name in ("queue_enable", "queue_desc", "queue_driver", "queue_device"):
            if self.regs["queue_select"] == 0:
                setattr(q, name[len("queue_"):], value)
        elif name == "queue_reset":
            if value == 1 and self.regs["queue_select"] == 0:
                self.queue = Virtqueue()
        else:
            self.regs[name] = value

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._power_on()
            emit("virtio.reset", function=self._fname())
            return
        if value & VIRTIO_CONFIG_S_FEATURES_OK and not (
                self.regs["device_status"] & VIRTIO_CONFIG_S_FEATURES_OK):
            if not self.driver_features & VIRTIO_F_VERSION_1 or \
                    self.driver_features & ~self.DEVICE_FEATURES:
                value &= ~VIRTIO_CONFIG_S_FEATURES_OK  # refuse: driver reads it back
        self.regs["device_status"] = value
        emit("virtio.status", function=self._fname(), status=value)

    def _image(self) -> bytearray:
        img = bytearray(COMMON_LEN)
        for name, (off, size) in COMMON_FIELDS.items():
            img[off : off + size] = (self._field(name) & ((1 << (8 * size)) - 1)).to_bytes(
                size, "little")
        return img

    def common_read(self, offset: int, size: int) -> bytes:
        return bytes(self._image()[offset : offset + size])

    def common_write(self, offset: int, data: bytes) -> None:
        img = self._image()
        img[offset : offset + len(data)] = data
        # Apply every field the write touched, in layout order (64-bit queue
        # addresses may arrive as two 32-bit halves).
        for name, (off, size) in COMMON_FIELDS.items():
            if off < offset + len(data) and offset < off + size:
                self._set_field(name, int.from_bytes(img[off : off + size], "little"))

    def isr_read(self, offset: int, size: int) -> bytes:
        value, self.isr = self.isr, 0  # reading the ISR clears it
        return value.to_bytes(4, "little")[offset : offset + size]

    # -- the queue -------------------------------------------------------------------------
    def notify_write(self, offset: int, data: bytes):  # type: ignore[no-untyped-def]
        index = int.from_bytes(data[:2], "little")
        if index != 0 or not self.queue.enable:
            return None
        if not self.regs["device_status"] & VIRTIO_CONFIG_S_DRIVER_OK:
            return None
        return self._process()

    async def _process(self) -> None:
        fn = self.function
        assert fn is not None
        if not fn.bus_master:
            emit("virtio.dma_held", function=fn.name, reason="bus mastering disabled")
            return
        q = self.queue
        try:
            avail_flags, avail_idx = struct.unpack("<HH", await fn.dma.read(q.driver, 4))
            completed = 0
            while q.last_avail != avail_idx:
                slot = q.last_avail % q.size
                head = struct.unpack("<H", await fn.dma.read(q.driver + 4 + 2 * slot, 2))[0]
                written = await self._fill_chain(head)
                used = q.device + 4 + 8 * (q.used_idx % q.size)
                await fn.dma.write(used, struct.pack("<II", head, written))
                q.used_idx = (q.used_idx + 1) & 0xFFFF
                q.last_avail = (q.last_avail + 1) & 0xFFFF
                completed += 1
            if completed:
                await fn.dma.write(q.device + 2, struct.pack("<H", q.used_idx))
                if not avail_flags & VIRTQ_AVAIL_F_NO_INTERRUPT:
                    self._interrupt(q.msix_vector, isr_bit=1)
        except (DmaError, ValueError) as exc:
            self.regs["device_status"] |= VIRTIO_CONFIG_S_NEEDS_RESET
            emit("virtio.needs_reset", function=fn.name, error=str(exc))
            self._interrupt(self.regs["config_msix_vector"], isr_bit=2)

    async def _fill_chain(self, head: int) -> int:
        fn = self.function
        assert fn is not None
        q = self.queue
        written = 0
        index = head
        for _ in range(q.size):  # a chain longer than the ring is a loop
            if index >= q.size:
                raise ValueError(f"descriptor index {index} beyond queue size {q.size}")
            addr, length, flags, nxt = _DESC.unpack(
                await fn.dma.read(q.desc + 16 * index, 16))
            if flags & VIRTQ_DESC_F_WRITE and length:
                await fn.dma.write(addr, os.urandom(length))
                written += length
            if not flags & VIRTQ_DESC_F_NEXT:
                return written
            index = nxt
        raise ValueError("descriptor chain loops")

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        fn = self.function
        assert fn is not None
        self.isr |= isr_bit
        if fn.msix is not None and fn.msix.enabled:
            if vector != VIRTIO_MSI_NO_VECTOR:
                fn.irqs.trigger(IrqIndex.MSIX, vector)
        else:
            fn.irqs.trigger(IrqIndex.INTX, 0)

    def _fname(self) -> str:
        return self.function.name if self.function else self.NAME

    def reset(self, cause: str) -> None:
        self._power_on()
        self.device_memory.clear()
