"""A PCIe function: type-0 header, BARs, MSI-X, interrupts and DMA.

The function is transport-neutral: a transport (``device/backend.py`` adapts
it to the vfio-user device interface) maps its regions (0-5 BARs, 6 ROM, 7
config) onto messages, hands it eventfds for interrupts and a
:class:`DmaSpace` for guest memory.  Personalities (virtio-rng, ...) declare
what sits inside the BARs.  DMA is synchronous: transports run each request on
its own thread, so a DMA access simply blocks that thread until it completes.

Type-0 header register map (PCIe r6.x §7.5.1)::

    0x00  Device ID        | Vendor ID                 RO
    0x04  Status (RW1C)    | Command (RW: IO MEM BM PERR SERR INTxD)
    0x08  Class Code             | Revision ID         RO
    0x0C  BIST | Header Type | Latency | Cache Line   (Cache Line RW)
    0x10..0x24  BAR0..BAR5   (size-aligned RW bits, type bits RO)
    0x2C  Subsystem ID     | Subsystem Vendor ID       RO
    0x30  Expansion ROM BAR  (0: no ROM)
    0x34  Capabilities Pointer                         RO
    0x3C  Max_Lat | Min_Gnt | Interrupt Pin | Interrupt Line (RW)
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import mmap
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..events import emit
from ..locks import DeviceLock
from .caps import MsixCapability, PcieCapability
from .config import ConfigSpace, Reg

PCI_COMMAND = 0x04
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_BASE_ADDRESS_0 = 0x10
PCI_ROM_ADDRESS = 0x30

REGION_CONFIG = 7
REGION_ROM = 6
NUM_REGIONS = 9  # BAR0-5, ROM, config, VGA (as vfio-pci numbers them)


class RegionAccessError(ValueError):
    """Access outside a region or to a region that does not exist."""


class BarKind(enum.Enum):
    MEM32 = "mem32"
    MEM64 = "mem64"
    IO = "io"


class Area(Protocol):
    """Something mapped inside a BAR at a fixed offset."""

    size: int

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


class MemoryArea:
    """Plain memory the client may mmap (sparse mmap).

    The memory lives in its BAR's backing memfd at the area's BAR offset (see
    :meth:`Bar.backing_fd`), so one fd serves every mmap-able area of a BAR
    and the file offset a client maps is the offset inside the BAR.
    """

    mmapable = True

    def __init__(self, size: int, name: str = "bar-memory") -> None:
        if size % mmap.PAGESIZE:
            raise ValueError("memory areas are whole pages")
        self.size = size
        self.name = name
        self.fd = -1  # the BAR's backing memfd, once the area is placed in a BAR
        self.mem: mmap.mmap | None = None

    def place(self, fd: int, offset: int) -> None:
        if offset % mmap.PAGESIZE:
            raise ValueError("memory areas start on a page boundary")
        self.fd = fd
        self.mem = mmap.mmap(fd, self.size, offset=offset)

    def _memory(self) -> mmap.mmap:
        if self.mem is None:
            raise RuntimeError(f"memory area {self.name} is not placed in a BAR")
        return self.mem

    def read(self, offset: int, size: int) -> bytes:
        return self._memory()[offset : offset + size]

    def write(self, offset: int, data: bytes) -> None:
        self._memory()[offset : offset + len(data)] = data

    def clear(self) -> None:
        self._memory()[:] = bytes(self.size)


class RegisterArea:
    """Registers backed by callables; unimplemented bytes read as zero."""

    mmapable = False

    def __init__(self, size: int,
                 read: Callable[[int, int], bytes],
                 write: Callable[[int, bytes], None]) -> None:
        self.size = size
        self._read = read
        self._write = write

    def read(self, offset: int, size: int) -> bytes:
        return self._read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        self._write(offset, data)


@dataclass
class Bar:
    index: int
    size: int
    kind: BarKind = BarKind.MEM32
    prefetchable: bool = False
    areas: list[tuple[int, Area]] = field(default_factory=list)
    # One memfd the size of the BAR holds every mmap-able area at its BAR
    # offset (a sparse file: unused ranges cost nothing).
    backing_fd: int | None = None

    def __post_init__(self) -> None:
        if self.size & (self.size - 1) or self.size < (4 if self.kind is BarKind.IO else 16):
            raise ValueError(f"BAR{self.index} size must be a power of two >= 16")
        if self.kind is BarKind.MEM64 and self.index % 2:
            raise ValueError("a 64-bit BAR must start at an even index")

    def add(self, offset: int, area: Area) -> Area:
        if offset < 0 or offset + area.size > self.size:
            raise ValueError(f"area at {offset:#x} does not fit BAR{self.index}")
        for off, other in self.areas:
            if offset < off + other.size and off < offset + area.size:
                raise ValueError(f"area at {offset:#x} overlaps another in BAR{self.index}")
        if isinstance(area, MemoryArea):
            if self.backing_fd is None:
                fd = os.memfd_create(f"bar{self.index}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                os.ftruncate(fd, self.size)
                # The client gets this fd to mmap the BAR: sealed, it cannot
                # shrink the file under our own mapping (SIGBUS here).
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
                self.backing_fd = fd
            area.place(self.backing_fd, offset)
        self.areas.append((offset, area))
        self.areas.sort(key=lambda a: a[0])
        return area

    def mmap_areas(self) -> list[tuple[int, MemoryArea]]:
        return [(o, a) for o, a in self.areas if isinstance(a, MemoryArea)]

    def type_bits(self) -> int:
        if self.kind is BarKind.IO:
            return 0x1
        bits = 0x4 if self.kind is BarKind.MEM64 else 0x0
        return bits | (0x8 if self.prefetchable else 0)

    def _find(self, offset: int, size: int) -> tuple[int, Area] | None:
        for off, area in self.areas:
            if off <= offset and offset + size <= off + area.size:
                return off, area
        return None

    def read(self, offset: int, size: int) -> bytes:
        hit = self._find(offset, size)
        if hit is None:
            return bytes(size)  # unclaimed BAR space reads as zero
        off, area = hit
        return area.read(offset - off, size)

    def write(self, offset: int, data: bytes) -> None:
        hit = self._find(offset, len(data))
        if hit is None:
            return  # writes to unclaimed space are dropped
        off, area = hit
        area.write(offset - off, data)


class DmaError(Exception):
    """A DMA access the client refused or that hit unmapped memory."""


class DmaSpace(Protocol):
    """Guest memory as the device sees it (provided by the transport).

    Accesses block the calling thread until they complete and raise
    :class:`DmaError` when they cannot.
    """

    def read(self, addr: int, size: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class NoDma:
    """DMA before any client is attached: every access fails."""

    def read(self, addr: int, size: int) -> bytes:
        raise DmaError("no client attached")

    def write(self, addr: int, data: bytes) -> None:
        raise DmaError("no client attached")


DmaGate = Callable[[str, int, int], str | None]
"""(direction "read"/"write", address, size) -> reason to hold the access, or None."""


class GatedDma:
    """The DMA space personalities see while gates are installed: every access
    asks each gate first and fails with :class:`DmaError` if one holds it
    (TDISP: a TDI in CONFIG_LOCKED or ERROR issues no DMA)."""

    def __init__(self, function: PciFunction) -> None:
        self.function = function

    def _check(self, direction: str, addr: int, size: int) -> None:
        for gate in self.function.dma_gates:
            reason = gate(direction, addr, size)
            if reason is not None:
                raise DmaError(f"DMA held: {reason}")

    def read(self, addr: int, size: int) -> bytes:
        self._check("read", addr, size)
        return self.function._dma.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self._check("write", addr, len(data))
        self.function._dma.write(addr, data)


class IrqIndex(enum.IntEnum):
    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


class Interrupts:
    """Eventfds per IRQ index and MSI-X per-vector mask/pending state.

    The client (QEMU) emulates the MSI-X table itself; it masks vectors via
    SET_IRQS ACTION_MASK/UNMASK.  A trigger on a masked vector sets its PBA bit
    and is delivered on unmask (PCIe r6.x §6.1.4.5).
    """

    def __init__(self, function: PciFunction) -> None:
        self.function = function
        self.fds: dict[IrqIndex, dict[int, int]] = {i: {} for i in IrqIndex}
        self.masked: dict[IrqIndex, set[int]] = {i: set() for i in IrqIndex}
        self.pending: dict[IrqIndex, set[int]] = {i: set() for i in IrqIndex}
        # SET_IRQS ACTION_MASK/UNMASK with DATA_EVENTFD: the client signals the
        # eventfd instead of sending a message (QEMU's KVM INTx resampling uses
        # the unmask eventfd).  One watcher thread per registered fd.
        self.action_fds: dict[tuple[str, IrqIndex, int], tuple[int, threading.Event]] = {}

    def count(self, index: IrqIndex) -> int:
        if index is IrqIndex.INTX:
            return 1
        if index is IrqIndex.MSIX:
            msix = self.function.msix
            return msix.vectors if msix else 0
        if index in (IrqIndex.ERR, IrqIndex.REQ):
            return 1
        return 0

    def set_fds(self, index: IrqIndex, start: int, fds: list[int]) -> None:
        for i, fd in enumerate(fds):
            old = self.fds[index].pop(start + i, None)
            if old is not None:
                os.close(old)
            self.fds[index][start + i] = fd

    def clear_fds(self, index: IrqIndex, start: int, count: int) -> None:
        for v in range(start, start + count):
            old = self.fds[index].pop(v, None)
            if old is not None:
                os.close(old)

    def set_action_fd(self, action: str, index: IrqIndex, vector: int, fd: int | None) -> None:
        """Register (or with None drop) the eventfd that performs ``action``
        ("mask" or "unmask") on ``vector`` each time the client signals it."""
        key = (action, index, vector)
        old = self.action_fds.pop(key, None)
        if old is not None:
            old[1].set()  # the watcher closes its fd when it stops
        if fd is None:
            return
        stop = threading.Event()
        self.action_fds[key] = (fd, stop)
        apply = self.mask if action == "mask" else self.unmask
        threading.Thread(target=self._watch,
                         args=(fd, stop, apply, index, vector, self.function.lock),
                         name=f"{self.function.name}.{action}{vector}", daemon=True).start()

    @staticmethod
    def _watch(fd: int, stop: threading.Event, apply: Callable[[IrqIndex, int, int], None],
               index: IrqIndex, vector: int, lock: DeviceLock) -> None:
        try:
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready and not stop.is_set():
                    try:
                        os.read(fd, 8)
                    except BlockingIOError:
                        continue
                    # Mask/pending state is shared with the request threads:
                    # an unlocked unmask can lose a vector raised meanwhile.
                    with lock:
                        apply(index, vector, 1)
        except (OSError, ValueError):
            pass  # the fd went away with the connection
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_action_fds(self) -> None:
        for _fd, stop in self.action_fds.values():
            stop.set()
        self.action_fds.clear()

    def mask(self, index: IrqIndex, start: int, count: int) -> None:
        self.masked[index].update(range(start, start + count))

    def unmask(self, index: IrqIndex, start: int, count: int) -> None:
        for v in range(start, start + count):
            self.masked[index].discard(v)
            if v in self.pending[index]:
                self.pending[index].discard(v)
                self._signal(index, v)

    def deliver_pending(self, index: IrqIndex) -> None:
        """Signal pending vectors that are no longer masked (Function Mask cleared)."""
        for v in sorted(self.pending[index] - self.masked[index]):
            self.pending[index].discard(v)
            self._signal(index, v)

    def trigger(self, index: IrqIndex, vector: int) -> bool:
        """Raise an interrupt; returns True if it was delivered now."""
        msix = self.function.msix
        if index is IrqIndex.MSIX and msix is not None and msix.function_masked:
            self.pending[index].add(vector)
            return False
        if vector in self.masked[index]:
            self.pending[index].add(vector)
            return False
        return self._signal(index, vector)

    def _signal(self, index: IrqIndex, vector: int) -> bool:
        fd = self.fds[index].get(vector)
        if fd is None:
            emit("irq.dropped", function=self.function.name, index=index.name, vector=vector)
            return False
        try:
            os.write(fd, struct.pack("<Q", 1))
        except BlockingIOError:
            pass  # counter full: the client has this interrupt pending already
        return True

    def pba_bytes(self) -> bytes:
        msix = self.function.msix
        if msix is None:
            return b""
        bits = 0
        for v in self.pending[IrqIndex.MSIX]:
            bits |= 1 << v
        return bits.to_bytes(msix.pba_size, "little")

    def reset(self) -> None:
        for index in IrqIndex:
            self.masked[index].clear()
            self.pending[index].clear()

    def close(self) -> None:
        for index in IrqIndex:
            self.clear_fds(index, 0, 1 << 16)
        self.close_action_fds()
        self.reset()


class PciFunction:
    """One PCIe function with a type-0 header."""

    def __init__(self, name: str, vendor_id: int, device_id: int, class_code: int,
                 revision: int = 0, subsystem_vendor_id: int = 0, subsystem_id: int = 0,
                 multifunction: bool = False, interrupt_pin: int = 1,
                 devfn: int = 0, lock: DeviceLock | None = None) -> None:
        self.name = name
        # The device's lock (shared by its functions); held around every request.
        self.lock = lock or DeviceLock()
        self.devfn = devfn
        self.vendor_id = vendor_id
        self.device_id = device_id
        self.class_code = class_code
        self.revision = revision
        self.subsystem_vendor_id = subsystem_vendor_id
        self.subsystem_id = subsystem_id
        self.config = ConfigSpace()
        self.bars: list[Bar | None] = [None] * 6
        self.msix: MsixCapability | None = None
        self.pcie: PcieCapability | None = None
        self.irqs = Interrupts(self)
        self._dma: DmaSpace = NoDma()
        self._gated_dma = GatedDma(self)
        self.dma_gates: list[DmaGate] = []
        self.reset_hooks: list[Callable[[str], None]] = []
        # (offset in table, bytes written) after each MSI-X table write
        self.msix_table_listeners: list[Callable[[int, bytes], None]] = []
        self.config.declare(0, [
            Reg("VendorID", 0x00, 2, vendor_id),
            Reg("DeviceID", 0x02, 2, device_id),
            Reg("Command", 0x04, 2, 0,
                rw=PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
                | PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE),
            # Status: master/signaled/received aborts, SERR, parity error: RW1C
            Reg("Status", 0x06, 2, 0, w1c=0xF900),
            Reg("RevisionID", 0x08, 1, revision),
            Reg("ClassCode", 0x09, 3, class_code),
            Reg("CacheLineSize", 0x0C, 1, 0, rw=0xFF),
            Reg("HeaderType", 0x0E, 1, 0x80 if multifunction else 0x00),
            Reg("SubsystemVendorID", 0x2C, 2, subsystem_vendor_id),
            Reg("SubsystemID", 0x2E, 2, subsystem_id),
            Reg("ExpansionROM", PCI_ROM_ADDRESS, 4, 0),
            Reg("InterruptLine", 0x3C, 1, 0xFF, rw=0xFF),
            Reg("InterruptPin", 0x3D, 1, interrupt_pin),
        ])

    # -- declaration -------------------------------------------------------------
    def add_bar(self, bar: Bar) -> Bar:
        if self.bars[bar.index] is not None:
            raise ValueError(f"BAR{bar.index} already declared")
        if bar.kind is BarKind.MEM64:
            if bar.index == 5 or self.bars[bar.index + 1] is not None:
                raise ValueError(f"BAR{bar.index} is 64-bit and needs BAR{bar.index + 1}")
        self.bars[bar.index] = bar
        off = PCI_BASE_ADDRESS_0 + 4 * bar.index
        if bar.kind is BarKind.IO:
            low_mask = ~(bar.size - 1) & 0xFFFFFFFC
        else:
            low_mask = ~(bar.size - 1) & 0xFFFFFFF0
        self.config.declare(off, [Reg(f"BAR{bar.index}", 0, 4, bar.type_bits(),
                                      rw=low_mask & 0xFFFFFFFF)])
        if bar.kind is BarKind.MEM64:
            high_mask = (~(bar.size - 1) >> 32) & 0xFFFFFFFF
            self.config.declare(off + 4, [Reg(f"BAR{bar.index + 1}", 0, 4, 0, rw=high_mask)])
        return bar

    def add_msix(self, vectors: int, table_bar: int, table_offset: int,
                 pba_bar: int, pba_offset: int) -> MsixCapability:
        cap = MsixCapability(vectors, table_bar, table_offset, pba_bar, pba_offset)
        for bar_index in {table_bar, pba_bar}:
            if self.bars[bar_index] is None:
                raise ValueError(f"MSI-X BAR{bar_index} is not declared")
        self.config.add_capability(cap)
        self.msix = cap
        control_dw = cap.offset  # Message Control is the upper half of the header dword
        mask_bit = MsixCapability.FUNCTION_MASK << 16

        def on_config_write(dw: int, old: int, new: int, byte_mask: int) -> None:
            if dw == control_dw and old & mask_bit and not new & mask_bit:
                self.irqs.deliver_pending(IrqIndex.MSIX)

        self.config.listeners.append(on_config_write)
        table = bytearray(cap.table_size)
        for v in range(vectors):  # each vector starts masked (Vector Control bit0)
            table[v * 16 + 12] = 1

        def table_read(off: int, size: int) -> bytes:
            return bytes(table[off : off + size])

        def table_write(off: int, data: bytes) -> None:
            table[off : off + len(data)] = data
            for listener in self.msix_table_listeners:
                listener(off, data)

        def pba_read(off: int, size: int) -> bytes:
            return self.irqs.pba_bytes()[off : off + size]

        tbar = self.bars[table_bar]
        pbar = self.bars[pba_bar]
        assert tbar is not None and pbar is not None
        tbar.add(table_offset, RegisterArea(cap.table_size, table_read, table_write))
        pbar.add(pba_offset, RegisterArea(cap.pba_size, pba_read, lambda o, d: None))
        self._msix_table = table
        return cap

    # -- DMA -----------------------------------------------------------------------
    @property
    def dma(self) -> DmaSpace:
        """Guest memory; goes through ``dma_gates`` when any are installed."""
        return self._gated_dma if self.dma_gates else self._dma

    @dma.setter
    def dma(self, space: DmaSpace) -> None:
        self._dma = space

    # -- state derived from config space -------------------------------------------
    @property
    def command(self) -> int:
        return self.config.get(PCI_COMMAND, 2)

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & PCI_COMMAND_MEMORY)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & PCI_COMMAND_MASTER)

    def bar_address(self, index: int) -> int:
        """The address software programmed into BAR ``index`` (type bits removed)."""
        bar = self.bars[index]
        if bar is None:
            raise ValueError(f"BAR{index} is not implemented")
        low = self.config.get(PCI_BASE_ADDRESS_0 + 4 * index)
        if bar.kind is BarKind.IO:
            return low & ~0x3
        addr = low & ~0xF
        if bar.kind is BarKind.MEM64:
            addr |= self.config.get(PCI_BASE_ADDRESS_0 + 4 * index + 4) << 32
        return addr

    # -- region accesses (vfio-pci region numbering) --------------------------------
    def region_size(self, index: int) -> int:
        if 0 <= index < 6:
            bar = self.bars[index]
            return bar.size if bar else 0
        if index == REGION_CONFIG:
            return self.config.size
        return 0

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == REGION_CONFIG:
            return self.config.read(offset, size)
        bar = self._bar_for(index, offset, size)
        return bar.read(offset, size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == REGION_CONFIG:
            self.config.write(offset, data)
            return
        bar = self._bar_for(index, offset, len(data))
        bar.write(offset, data)

    def _bar_for(self, index: int, offset: int, size: int) -> Bar:
        if not 0 <= index < 6 or self.bars[index] is None:
            raise RegionAccessError(f"region {index} does not exist")
        bar = self.bars[index]
        assert bar is not None
        if offset < 0 or size <= 0 or offset + size > bar.size:
            raise RegionAccessError(
                f"access {offset:#x}+{size} outside region {index} ({bar.size:#x} bytes)")
        return bar

    # -- reset ---------------------------------------------------------------------
    def reset(self, cause: str) -> None:
        """Function-level reset: registers to reset values, personality reset."""
        self.config.reset()
        self.irqs.reset()
        if self.msix is not None:
            for v in range(self.msix.vectors):
                self._msix_table[v * 16 : v * 16 + 16] = bytes(12) + b"\x01\0\0\0"
        for hook in self.reset_hooks:
            hook(cause)
        emit("function.reset", function=self.name, cause=cause)
