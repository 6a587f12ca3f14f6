"""``dma-test``: a minimal personality for exercising the transport.

No stock driver binds to it; tests and benchmarks drive it directly.

BAR0 (32-bit, 4 KiB) registers::

    0x00  SCRATCH     RW
    0x04  DMA_ADDR_LO RW
    0x08  DMA_ADDR_HI RW
    0x0C  DMA_LEN     RW   (bytes, <= BAR2 size)
    0x10  DMA_CMD     WO   1 = guest memory -> BAR2, 2 = BAR2 -> guest memory;
                           on completion STATUS is set and MSI-X vector 0 fires
    0x14  STATUS      RO   bit0 done, bit1 error (cleared by the next command)

BAR2 (64-bit prefetchable, 64 KiB): memory, mmap-able by the client.
BAR4 (32-bit, 4 KiB): MSI-X table (2 vectors) at 0, PBA at 0x800.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..events import emit
from ..pci.function import Bar, BarKind, DmaError, IrqIndex, MemoryArea, PciFunction, RegisterArea
from ..wire import Struct, u32
from .personality import Personality, register

DMA_CMD_TO_DEVICE = 1
DMA_CMD_FROM_DEVICE = 2
STATUS_DONE = 1
STATUS_ERROR = 2


@dataclass(frozen=True)
class DmaTestRegisters(Struct):
    """BAR0 as laid out above."""

    scratch: int = u32()
    dma_addr_lo: int = u32()
    dma_addr_hi: int = u32()
    dma_len: int = u32()
    dma_cmd: int = u32()
    status: int = u32()


@register
class DmaTest(Personality):
    NAME = "dma-test"
    DESCRIPTION = "transport test device: scratch register, DMA engine, mmap-able memory BAR"
    VENDOR_ID = 0x1B36  # Red Hat / QEMU test IDs
    DEVICE_ID = 0x10F0
    CLASS_CODE = 0xFF0000
    REVISION = 1

    def __init__(self) -> None:
        super().__init__()
        self.regs = [0] * 6

    def build(self, fn: PciFunction) -> None:
        bar0 = fn.add_bar(Bar(0, 0x1000, BarKind.MEM32))
        bar0.add(0, RegisterArea(0x18, self._read, self._write))
        bar2 = fn.add_bar(Bar(2, 0x10000, BarKind.MEM64, prefetchable=True))
        self.memory = MemoryArea(0x10000, "dma-test-bar2")
        bar2.add(0, self.memory)
        fn.add_bar(Bar(4, 0x1000, BarKind.MEM32))
        fn.add_msix(2, 4, 0, 4, 0x800)

    def _read(self, offset: int, size: int) -> bytes:
        return DmaTestRegisters(*self.regs).pack()[offset : offset + size]

    def _write(self, offset: int, data: bytes) -> None:
        raw = bytearray(DmaTestRegisters(*self.regs).pack())
        raw[offset : offset + len(data)] = data
        regs = list(dataclasses.astuple(DmaTestRegisters.unpack(raw)))
        regs[5] = self.regs[5]  # STATUS is read-only
        cmd = regs[4]
        regs[4] = 0
        self.regs = regs
        if offset <= 0x10 < offset + len(data) and cmd:
            self._run(cmd)

    def _run(self, cmd: int) -> None:
        fn = self.function
        assert fn is not None
        addr = self.regs[1] | (self.regs[2] << 32)
        length = self.regs[3]
        self.regs[5] = 0
        try:
            if length > self.memory.size:
                raise DmaError(f"length {length} exceeds BAR2")
            if not fn.bus_master:
                raise DmaError("bus mastering is disabled")
            if cmd == DMA_CMD_TO_DEVICE:
                self.memory.write(0, fn.dma.read(addr, length))
            elif cmd == DMA_CMD_FROM_DEVICE:
                fn.dma.write(addr, self.memory.read(0, length))
            else:
                raise DmaError(f"unknown command {cmd}")
            self.regs[5] = STATUS_DONE
        except DmaError as exc:
            self.regs[5] = STATUS_DONE | STATUS_ERROR
            emit("dma_test.error", function=fn.name, error=str(exc))
        fn.irqs.trigger(IrqIndex.MSIX, 0)

    def reset(self, cause: str) -> None:
        self.regs = [0] * 6
        self.memory.clear()
