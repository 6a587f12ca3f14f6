"""The device as the vfio-user server sees it: a declared interface.

The transport knows a device only through :class:`VfioUserDevice`, the way
libvfio-user knows it through the callbacks a server registers
(``vfu_setup_region``, ``vfu_setup_device_dma``, ``vfu_setup_irq_state_callback``,
``vfu_setup_device_reset_cb``) and rust-vmm's vfio-user crate through its
``ServerBackend`` trait (region_read/region_write, dma_map/dma_unmap,
set_irqs, reset).  It never reaches into BARs, interrupt tables or DMA
tables; ``device/backend.py`` implements the interface on a PCI function, and
any other device (a firmware port, a test double) can implement it as well.

Contract:

* Region and IRQ numbering are vfio-pci's (regions 0-5 BARs, 6 ROM, 7 config,
  8 VGA; IRQ indexes INTx 0, MSI 1, MSI-X 2, ERR 3, REQ 4).
* A request the device refuses raises :class:`DeviceError` with the errno the
  client gets in its error reply; the connection keeps serving.
* Every request runs on the connection's thread with ``lock`` held.  DMA is
  synchronous: the :class:`DmaAccess` handed to :meth:`VfioUserDevice.attach`
  blocks until the access completes; when it has to wait on the client's
  socket it lets go of ``lock`` for the wait (and that is only possible on
  the connection's own thread, i.e. while handling one of its requests).
  DMA failures raise :class:`DmaFault`.
* File descriptors passed to the device (eventfds) become the device's: it
  closes them when it replaces them, on :meth:`~VfioUserDevice.detach`, or
  when it raises.  Only eventfds are passed.
* :meth:`~VfioUserDevice.region_info` reports mmap-able areas as offsets inside
  the region; the fd it returns holds the region's contents at file offset =
  region offset (so an area at BAR offset 0x1000 is at file offset 0x1000).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

# vfio-pci IRQ indexes (linux/vfio.h VFIO_PCI_*_IRQ_INDEX)
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5
IRQ_INDEX_NAMES = {VFIO_PCI_INTX_IRQ_INDEX: "INTX", VFIO_PCI_MSI_IRQ_INDEX: "MSI",
                   VFIO_PCI_MSIX_IRQ_INDEX: "MSIX", VFIO_PCI_ERR_IRQ_INDEX: "ERR",
                   VFIO_PCI_REQ_IRQ_INDEX: "REQ"}
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_NUM_REGIONS = 9


class DeviceError(Exception):
    """The device refuses a request; the client gets ``errno`` back."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class DmaFault(Exception):
    """A DMA access that cannot complete: unmapped, not permitted, the
    client's memory shrank under the mapping, or the client refused it."""


@dataclass(frozen=True)
class RegionInfo:
    size: int
    readable: bool = True
    writable: bool = True
    # (offset, size) inside the region of each area the client may mmap
    mmap_areas: tuple[tuple[int, int], ...] = ()
    # holds the region at file offset = region offset; borrowed, not to be closed
    fd: int | None = None


@dataclass(frozen=True)
class IrqInfo:
    count: int
    maskable: bool = False
    automasked: bool = False
    noresize: bool = False


class DmaAccess(Protocol):
    """Guest memory, as the transport offers it to the device."""

    def read(self, addr: int, size: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class Lock(Protocol):
    """The device's lock (see ``vfiouser_tdisp.locks.DeviceLock``)."""

    def __enter__(self) -> object: ...

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def released(self) -> AbstractContextManager[None]: ...


class VfioUserDevice(Protocol):
    """What a vfio-user server needs from the device it serves."""

    @property
    def name(self) -> str: ...

    @property
    def lock(self) -> Lock:
        """Held around every request; let go around blocking socket I/O."""

    def region_info(self, index: int) -> RegionInfo: ...

    def region_read(self, index: int, offset: int, count: int) -> bytes: ...

    def region_write(self, index: int, offset: int, data: bytes) -> None: ...

    def irq_info(self, index: int) -> IrqInfo: ...

    def irq_set_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        """Signal ``fds`` for vectors start.. (takes ownership of the fds)."""

    def irq_clear_eventfds(self, index: int, start: int, count: int) -> None: ...

    def irq_set_action_eventfd(self, action: str, index: int, vector: int,
                               fd: int | None) -> None:
        """``action`` "mask"/"unmask" runs each time the client signals ``fd``
        (None drops it); takes ownership of the fd."""

    def irq_trigger(self, index: int, vector: int) -> None: ...

    def irq_mask(self, index: int, vector: int) -> None: ...

    def irq_unmask(self, index: int, vector: int) -> None: ...

    def attach(self, dma: DmaAccess) -> None:
        """A client connected; ``dma`` reaches its memory."""

    def detach(self, dma: DmaAccess) -> None:
        """The client owning ``dma`` left: drop its eventfds and DMA, reset.
        A ``dma`` that is no longer attached (a newer client's is) is ignored."""

    def reset(self) -> None:
        """VFIO_USER_DEVICE_RESET."""

