"""A PCI function behind the vfio-user device interface (vfio_user/device.py).

This is where the device side meets the transport: region accesses, the
mmap-able areas of each BAR, interrupts and guest memory are translated
between the function model (``pci/``) and the interface the vfio-user server
declares.  The server never sees a :class:`PciFunction`.
"""

from __future__ import annotations

import errno

from ..locks import DeviceLock
from ..pci.config import ConfigAccessError
from ..pci.function import (
    DmaError,
    IrqIndex,
    MemoryArea,
    NoDma,
    PciFunction,
    RegionAccessError,
)
from ..vfio_user.device import DeviceError, DmaAccess, DmaFault, IrqInfo, RegionInfo


class _GuestMemory:
    """The client's memory as the function's DMA space: the transport's
    faults become the function's :class:`DmaError`."""

    def __init__(self, access: DmaAccess) -> None:
        self.access = access

    def read(self, addr: int, size: int) -> bytes:
        try:
            return self.access.read(addr, size)
        except DmaFault as exc:
            raise DmaError(str(exc)) from None

    def write(self, addr: int, data: bytes) -> None:
        try:
            self.access.write(addr, data)
        except DmaFault as exc:
            raise DmaError(str(exc)) from None


class FunctionBackend:
    """Implements ``VfioUserDevice`` for one :class:`PciFunction`."""

    def __init__(self, function: PciFunction) -> None:
        self.function = function
        self.name = function.name
        self.lock: DeviceLock = function.lock
        self._attached: _GuestMemory | None = None

    # -- regions ---------------------------------------------------------------------
    def region_info(self, index: int) -> RegionInfo:
        fn = self.function
        size = fn.region_size(index)
        bar = fn.bars[index] if 0 <= index < 6 else None
        if bar is None or bar.backing_fd is None:
            return RegionInfo(size, readable=bool(size), writable=bool(size))
        areas = tuple((off, a.size) for off, a in bar.areas if isinstance(a, MemoryArea))
        return RegionInfo(size, mmap_areas=areas, fd=bar.backing_fd)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        try:
            return self.function.region_read(index, offset, count)
        except (RegionAccessError, ConfigAccessError) as exc:
            raise DeviceError(errno.EINVAL, str(exc)) from None

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        try:
            self.function.region_write(index, offset, data)
        except (RegionAccessError, ConfigAccessError) as exc:
            raise DeviceError(errno.EINVAL, str(exc)) from None

    # -- interrupts --------------------------------------------------------------------
    def _index(self, index: int) -> IrqIndex:
        try:
            return IrqIndex(index)
        except ValueError:
            raise DeviceError(errno.EINVAL, f"no IRQ index {index}") from None

    def irq_info(self, index: int) -> IrqInfo:
        irq = self._index(index)
        count = self.function.irqs.count(irq)
        if irq is IrqIndex.INTX:
            return IrqInfo(count, maskable=True, automasked=True)
        if irq in (IrqIndex.MSI, IrqIndex.MSIX):
            return IrqInfo(count, maskable=True, noresize=True)
        return IrqInfo(count)

    def irq_set_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        self.function.irqs.set_fds(self._index(index), start, fds)

    def irq_clear_eventfds(self, index: int, start: int, count: int) -> None:
        self.function.irqs.clear_fds(self._index(index), start, count)

    def irq_set_action_eventfd(self, action: str, index: int, vector: int,
                               fd: int | None) -> None:
        self.function.irqs.set_action_fd(action, self._index(index), vector, fd)

    def irq_trigger(self, index: int, vector: int) -> None:
        self.function.irqs.trigger(self._index(index), vector)

    def irq_mask(self, index: int, vector: int) -> None:
        self.function.irqs.mask(self._index(index), vector, 1)

    def irq_unmask(self, index: int, vector: int) -> None:
        self.function.irqs.unmask(self._index(index), vector, 1)

    # -- the client's lifetime -----------------------------------------------------------
    def attach(self, dma: DmaAccess) -> None:
        self._attached = _GuestMemory(dma)
        self.function.dma = self._attached

    def detach(self, dma: DmaAccess) -> None:
        if self._attached is None or self._attached.access is not dma:
            return  # a newer client owns the function now
        self._attached = None
        self.function.dma = NoDma()
        self.function.irqs.close()
        self.function.reset("disconnect")

    def reset(self) -> None:
        self.function.reset("device_reset")
