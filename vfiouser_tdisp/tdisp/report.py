"""The device interface report and the TDISP configuration digest of a function.

The report (PCIe r6.1+ §11, DEVICE_INTERFACE_REPORT) is built from the
function as software programmed it, not from a declaration: each implemented
memory BAR at ``fn.bar_address(i)`` becomes one or more MMIO ranges, split on
4 KiB page boundaries so that the pages holding the MSI-X table and PBA, and
the ranges the personality declares non-TEE, get ranges of their own with
MSIX_TABLE / MSIX_PBA / IS_NON_TEE_MEM set.  ``range_id`` is the BAR index and
ranges ascend by BAR, then address -- what Linux's proposed report parser
(``pci_tsm_mmio_alloc``, reference §3.1) requires.  A page holding both the
table and the PBA carries both flags.

``first_page`` has two readings in the wild (reference §7): libspdm documents
it as the *byte address* of the first 4 KiB page, Linux [IO2] reads it as a
4 KiB *page number*.  :class:`FirstPageEncoding` selects one; either way the
lock's MMIO_REPORTING_OFFSET is added to the address first.

:func:`configuration_digest` is the SHA-384 of the TDISP-relevant
configuration (BARs, command register, MSI-X state, lock parameters) that the
SPDM measurement block reports, so any such change changes the measurement.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from ..pci.function import PCI_BASE_ADDRESS_0, BarKind, PciFunction
from ..wire import Struct, raw, tail, u8, u16, u32, u64
from .messages import (
    MMIO_RANGE,
    PAGE_SIZE,
    TDI_REPORT_STRUCTURE,
    InterfaceInfo,
    LockInterfaceFlags,
    MmioRangeAttributes,
)

NonTeeRange = tuple[int, int, int]  # (bar, offset, size), as Personality.non_tee_ranges()

_U64 = (1 << 64) - 1


class FirstPageEncoding(enum.Enum):
    PAGE_NUMBER = "page-number"  # (address + offset) >> 12: what Linux [IO2] parses
    BYTE_ADDRESS = "byte-address"  # address + offset of the first 4 KiB page (libspdm)


def _pages(size: int) -> int:
    return max(1, -(-size // PAGE_SIZE))


def _bar_segments(size: int, special: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Split a BAR of ``size`` bytes into (first page, page count, attributes)
    runs; ``special`` holds (start, end, attribute) byte ranges inside it."""
    npages = _pages(size)
    marks = {0, npages}
    page_spans = []
    for start, end, attr in special:
        first = min(max(start // PAGE_SIZE, 0), npages)
        last = min(max(-(-end // PAGE_SIZE), first), npages)
        if first == last:
            continue
        page_spans.append((first, last, attr))
        marks.update((first, last))
    bounds = sorted(marks)
    runs: list[tuple[int, int, int]] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        attrs = 0
        for first, last, attr in page_spans:
            if first <= a and b <= last:
                attrs |= attr
        if runs and runs[-1][2] == attrs:  # merge neighbours with equal attributes
            p, n, _ = runs[-1]
            runs[-1] = (p, n + (b - a), attrs)
        else:
            runs.append((a, b - a, attrs))
    return runs


def mmio_ranges(fn: PciFunction, *, non_tee: Iterable[NonTeeRange] = (),
                updatable: Iterable[NonTeeRange] = (), mmio_reporting_offset: int = 0,
                encoding: FirstPageEncoding = FirstPageEncoding.PAGE_NUMBER) -> list[MMIO_RANGE]:
    """The MMIO ranges of ``fn`` as its memory BARs are programmed now."""
    non_tee = list(non_tee)
    updatable = list(updatable)
    out: list[MMIO_RANGE] = []
    for index, bar in enumerate(fn.bars):
        if bar is None or bar.kind is BarKind.IO:
            continue  # TDISP reports memory ranges only
        special: list[tuple[int, int, int]] = []
        msix = fn.msix
        if msix is not None and msix.table_bar == index:
            special.append((msix.table_offset, msix.table_offset + msix.table_size,
                            MmioRangeAttributes.MSIX_TABLE))
        if msix is not None and msix.pba_bar == index:
            special.append((msix.pba_offset, msix.pba_offset + msix.pba_size,
                            MmioRangeAttributes.MSIX_PBA))
        for bar_index, offset, size in non_tee:
            if bar_index == index:
                special.append((offset, offset + size, MmioRangeAttributes.IS_NON_TEE_MEM))
        for bar_index, offset, size in updatable:
            if bar_index == index:
                special.append((offset, offset + size,
                                MmioRangeAttributes.IS_MEM_ATTR_UPDATABLE))
        base = fn.bar_address(index) & ~(PAGE_SIZE - 1)
        for first, count, attrs in _bar_segments(bar.size, special):
            address = (base + first * PAGE_SIZE + mmio_reporting_offset) & _U64
            first_page = address >> 12 if encoding is FirstPageEncoding.PAGE_NUMBER else address
            out.append(MMIO_RANGE(first_page, count, int(attrs), index))
    return out


def interface_info(lock_flags: int, dma_capable: bool, xt_mode: bool = False) -> InterfaceInfo:
    info = InterfaceInfo(0)
    if xt_mode:
        info |= InterfaceInfo.XT_MODE_SUPPORTED  # the DSM was configured for XT mode
    if lock_flags & LockInterfaceFlags.NO_FW_UPDATE:
        info |= InterfaceInfo.NO_UPDATE_AFTER_LOCK  # we refuse updates (ERROR) once locked
    if dma_capable:
        info |= InterfaceInfo.DMA_WITHOUT_PASID  # no PASID/ATS/PRS capabilities exist
    return info


def build_report(fn: PciFunction, *, lock_flags: int = 0, mmio_reporting_offset: int = 0,
                 encoding: FirstPageEncoding = FirstPageEncoding.PAGE_NUMBER,
                 non_tee: Iterable[NonTeeRange] = (), dma_capable: bool = True,
                 updatable: Iterable[NonTeeRange] = (), xt_mode: bool = False,
                 device_specific_info: bytes = b"") -> TDI_REPORT_STRUCTURE:
    ranges = mmio_ranges(fn, non_tee=non_tee, updatable=updatable,
                         mmio_reporting_offset=mmio_reporting_offset, encoding=encoding)
    msix_control = fn.msix.get(2, 2) if fn.msix is not None else 0
    return TDI_REPORT_STRUCTURE(
        interface_info=int(interface_info(lock_flags, dma_capable, xt_mode)),
        msi_x_message_control=msix_control,
        lnr_control=0,  # no LN requester capability
        tph_control=0,  # no TPH requester capability
        mmio_range=ranges,
        device_specific_info=device_specific_info,
    )


# -- configuration digest ------------------------------------------------------------


@dataclass(frozen=True)
class TdispConfigurationRecord(Struct):
    """What the configuration digest covers, in a fixed byte layout (ours, not
    the spec's): the header registers TDISP locks, MSI-X and the lock request."""

    function_id: int = u32()
    lock_flags: int = u16()
    default_stream_id: int = u8()
    mmio_reporting_offset: int = u64()
    bind_p2p_address_mask: int = u64()
    command: int = u16()
    msix_message_control: int = u16()
    bars: bytes = raw(24)  # BAR0..BAR5 registers as read
    msix_table: bytes = tail()


def msix_table_bytes(fn: PciFunction) -> bytes:
    msix = fn.msix
    if msix is None:
        return b""
    bar = fn.bars[msix.table_bar]
    assert bar is not None
    return bar.read(msix.table_offset, msix.table_size)


def configuration_record(fn: PciFunction, *, function_id: int, lock_flags: int = 0,
                         default_stream_id: int = 0, mmio_reporting_offset: int = 0,
                         bind_p2p_address_mask: int = 0) -> TdispConfigurationRecord:
    return TdispConfigurationRecord(
        function_id=function_id,
        lock_flags=lock_flags,
        default_stream_id=default_stream_id,
        mmio_reporting_offset=mmio_reporting_offset,
        bind_p2p_address_mask=bind_p2p_address_mask,
        command=fn.command,
        msix_message_control=fn.msix.get(2, 2) if fn.msix is not None else 0,
        bars=bytes(fn.config.data[PCI_BASE_ADDRESS_0 : PCI_BASE_ADDRESS_0 + 24]),
        msix_table=msix_table_bytes(fn),
    )


def configuration_digest(records: Iterable[TdispConfigurationRecord]) -> bytes:
    """SHA-384 over the records (one per TDI), in order."""
    h = hashlib.sha384()
    for record in records:
        h.update(record.pack())
    return h.digest()


REPORT_SHIFT_PAGES = 1 << 20  # 4 GiB in 4 KiB pages


def shifted_report(report: TDI_REPORT_STRUCTURE) -> TDI_REPORT_STRUCTURE:
    """The report with its first MMIO range moved REPORT_SHIFT_PAGES up, so it lies
    outside every BAR (serve --tamper report, fault report-range)."""
    if not report.mmio_range:
        return report
    first = report.mmio_range[0]
    moved = dataclasses.replace(first, first_page=first.first_page + REPORT_SHIFT_PAGES)
    return dataclasses.replace(report, mmio_range=[moved, *report.mmio_range[1:]])
