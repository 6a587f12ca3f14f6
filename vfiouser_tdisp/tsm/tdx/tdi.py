"""[MODEL] The TDX Connect host TDI calls: bind, start, stop, unbind, MMIO and DMAR mapping.

No public code names these SEAMCALLs or their registers (firmware-abi.md B.5, F.1).  They
live here, and only here, with their leaves in :class:`.model.HostTdiLeaf` and their
register layout documented in :mod:`.model`, so a published ABI replaces this module and
that enum and nothing else.  Each handler is ``f(module, mem, args) -> registers``, called
from :class:`.module.TdxModule`'s host table.  The TDI context (:class:`.module.Tdi`, its
state table, the TD's view of it) is shared with the public TD-side calls.
"""

from __future__ import annotations

from ...events import emit
from ...firmware import GuestMemory, GuestMemoryError
from ...fsm import StateMachine
from ...spdm.requester import SpdmFlow
from ...tdisp import messages as t
from ..core import PciSigChannel, TdispRequester, TsmProtocolError, parse_report
from . import model
from .abi import FUNC_ID_RESERVED_MASK, NO_PAGE, PAGE_SIZE, OperandId, TdxStatus
from .model import DeviceErrorKind, HostTdiLeaf
from .module import (
    TD_VIEW,
    TDI_TRANSITIONS,
    D,
    DeviceFailure,
    I,
    Operation,
    Result,
    S,
    SpdmContext,
    Tdi,
    TdiState,
    TdxModule,
    busy,
    invalid,
    regs,
    wrong_state,
)


def _operands(m: TdxModule, spdm_id: int, func_id: int) -> tuple[SpdmContext, Tdi] | int:
    """RCX an SPDM context and RDX a TDI bound through it, or the TDX_OPERAND_INVALID
    status naming the one that is not."""
    ctx = m._ctx(spdm_id)
    if ctx is None:
        return invalid(OperandId.RCX)
    tdi = m._tdi(func_id)
    if tdi is None or tdi.spdm_id != spdm_id:
        return invalid(OperandId.RDX)
    return ctx, tdi


def tdh_tdi_bind(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    spdm_id, func_id, td, stream_id = a[0], a[1], a[2], a[5]   # R9 rsp, R10 req
    ctx = m._ctx(spdm_id)
    if ctx is None:
        return regs(invalid(OperandId.RCX), args=a)

    def start() -> Operation | int:
        if func_id & FUNC_ID_RESERVED_MASK:
            return invalid(OperandId.RDX)
        if td == 0:
            return invalid(OperandId.R8)
        if func_id in m.tdis:
            return busy(OperandId.RDX)
        stream = m._stream(spdm_id, stream_id)
        if stream is None:
            return invalid(OperandId.R11)
        if ctx.fsm.state is not S.CONNECTED or ctx.session is None or \
                stream.fsm.state is not I.ACTIVE:
            return wrong_state(OperandId.RCX)
        tdi = Tdi(func_id, spdm_id, stream_id, td,
                  StateMachine("tdx.tdi", TDI_TRANSITIONS, TdiState.BINDING,
                               func_id=f"{func_id:#x}"))
        m.tdis[func_id] = tdi
        return Operation(HostTdiLeaf.TDH_TDI_BIND, func_id, "tdi_bind",
                         _bind_flow(m, ctx, tdi), lambda _: finish(tdi),
                         lambda f: failed(tdi, f), ctx, protocol=DeviceErrorKind.TDISP)

    def finish(tdi: Tdi) -> Result:
        tdi.bind_session_id = next(m._bind_sessions)
        tdi.fsm.fire("locked", bind_session_id=tdi.bind_session_id)
        # [MODEL] R12: optional hpa_array_t for the interface report (0 or -1: none), so a
        # host can map the report's MMIO ranges and serve TDCM GET_TDI_REPORT without
        # reading the module's memory; RDX returns the report's length.
        out = a[6] if len(a) > 6 else 0
        if out not in (0, NO_PAGE):
            pages = m._pages(mem, out)
            if len(tdi.report) <= len(pages) * PAGE_SIZE:
                m._write_pages(mem, pages, tdi.report)
        return regs(TdxStatus.TDX_SUCCESS, tdi.bind_session_id, len(tdi.report), args=a)

    def failed(tdi: Tdi, f: DeviceFailure) -> None:
        tdi.fsm.fire("failed", error=str(f))

    return m._extension(mem, a, HostTdiLeaf.TDH_TDI_BIND, func_id, 3, 4, start, ctx)

def _bind_flow(m: TdxModule, ctx: SpdmContext, tdi: Tdi) -> SpdmFlow[None]:
    tdisp = TdispRequester(PciSigChannel(ctx.spdm, ctx.session))
    version = yield from tdisp.version_flow(tdi.func_id)
    tdi.tdisp_version = max(version.version_num_entry, default=0)
    yield from tdisp.capabilities_flow(tdi.func_id)
    state = yield from tdisp.state_flow(tdi.func_id)
    if state is not t.TdiState.CONFIG_UNLOCKED:
        yield from tdisp.stop_flow(tdi.func_id)
    tdi.nonce = yield from tdisp.lock_flow(
        tdi.func_id, flags=model.LOCK_FLAGS, default_stream_id=tdi.stream_id,
        mmio_reporting_offset=model.MMIO_REPORTING_OFFSET)
    report = yield from tdisp.report_flow(tdi.func_id)
    parsed = parse_report(report)
    tdi.report = report
    tdi.ranges = [(r.first_page << model.REPORT_PAGE_SHIFT, r.number_of_pages)
                  for r in parsed.mmio_range]
    if (yield from tdisp.state_flow(tdi.func_id)) is not t.TdiState.CONFIG_LOCKED:
        raise DeviceFailure(DeviceErrorKind.TDISP, "TDI not CONFIG_LOCKED after LOCK")

def tdh_tdi_start(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    spdm_id, func_id = a[0], a[1]   # R8 rsp, R9 req page
    found = _operands(m, spdm_id, func_id)
    if isinstance(found, int):
        return regs(found, args=a)
    ctx, tdi = found

    def start() -> Operation | int:
        if tdi.fsm.state is not D.LOCKED or not tdi.td_start:
            return wrong_state(OperandId.RDX)
        tdi.fsm.fire("start")
        tdisp = TdispRequester(PciSigChannel(ctx.spdm, ctx.session))
        return Operation(HostTdiLeaf.TDH_TDI_START, func_id, "tdi_start",
                         _start_flow(tdisp, tdi), lambda _: finish(),
                         lambda f: tdi.fsm.fire("failed", error=str(f)), ctx,
                         protocol=DeviceErrorKind.TDISP)

    def finish() -> Result:
        tdi.fsm.fire("started")
        return regs(TdxStatus.TDX_SUCCESS, 0, args=a)

    return m._extension(mem, a, HostTdiLeaf.TDH_TDI_START, func_id, 2, 3, start, ctx)

def _start_flow(tdisp: TdispRequester, tdi: Tdi) -> SpdmFlow[None]:
    yield from tdisp.start_flow(tdi.func_id, tdi.nonce)
    if (yield from tdisp.state_flow(tdi.func_id)) is not t.TdiState.RUN:
        raise DeviceFailure(DeviceErrorKind.TDISP, "TDI not RUN after START_INTERFACE")

def tdh_tdi_stop(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    spdm_id, func_id = a[0], a[1]   # R8 rsp, R9 req page
    found = _operands(m, spdm_id, func_id)
    if isinstance(found, int):
        return regs(found, args=a)
    ctx, tdi = found

    def start() -> Operation | int:
        if not tdi.fsm.can("stop"):
            return wrong_state(OperandId.RDX)
        tdi.fsm.fire("stop")
        _withdraw(tdi)
        return Operation(HostTdiLeaf.TDH_TDI_STOP, func_id, "tdi_stop",
                         _stop_flow(ctx, tdi), lambda ok: finish(bool(ok)),
                         lambda f: tdi.fsm.fire("stopped", device_confirmed=False), ctx,
                         protocol=DeviceErrorKind.TDISP)

    def finish(confirmed: bool) -> Result:
        tdi.fsm.fire("stopped", device_confirmed=confirmed)
        return regs(TdxStatus.TDX_SUCCESS, 0, args=a)

    result = m._extension(mem, a, HostTdiLeaf.TDH_TDI_STOP, func_id, 2, 3, start, ctx,
                             refresh_exempt=True)
    if result[0] >> 32 == model.TDX_DEVICE_ERROR >> 32:
        return regs(TdxStatus.TDX_SUCCESS, 0, args=a)   # withdrawn all the same
    return result

def _withdraw(tdi: Tdi) -> None:
    tdi.mapped.clear()
    tdi.accepted.clear()
    tdi.dmar_accepted = tdi.td_start = False
    tdi.dmar_added = False

def _stop_flow(ctx: SpdmContext, tdi: Tdi) -> SpdmFlow[bool]:
    if ctx.session is None:
        return False
    tdisp = TdispRequester(PciSigChannel(ctx.spdm, ctx.session))
    try:
        yield from tdisp.stop_flow(tdi.func_id)
    except Exception:
        return False
    return True

def tdh_tdi_unbind(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    spdm_id, func_id = a[0], a[1]
    if m._ctx(spdm_id) is None:
        return regs(invalid(OperandId.RCX), args=a)
    tdi = m.tdis.get(func_id)
    if tdi is None or tdi.spdm_id != spdm_id:
        return regs(invalid(OperandId.RDX), args=a)
    if tdi.fsm.state not in (D.UNLOCKED, D.ERROR) or \
            (m.pending is not None and m.pending.key == func_id):
        return regs(wrong_state(OperandId.RDX), args=a)
    del m.tdis[func_id]
    emit("tdx.tdi.unbound", func_id=f"{func_id:#x}")
    return regs(TdxStatus.TDX_SUCCESS, args=a)

def tdh_tdi_state(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    """The device's TDISP state, as the module then shows it to the TD (RCX, 0-3)."""
    spdm_id, func_id = a[0], a[1]   # R8 rsp, R9 req page
    found = _operands(m, spdm_id, func_id)
    if isinstance(found, int):
        return regs(found, args=a)
    ctx, tdi = found

    def start() -> Operation | int:
        if tdi.fsm.state not in (D.LOCKED, D.RUN, D.ERROR) or ctx.session is None:
            return wrong_state(OperandId.RDX)
        return Operation(HostTdiLeaf.TDH_TDI_STATE, func_id, "tdi_get_state",
                         _get_state_flow(ctx, tdi), lambda _: finish(), lambda f: None, ctx,
                         protocol=DeviceErrorKind.TDISP)

    def finish() -> Result:
        return regs(TdxStatus.TDX_SUCCESS, int(TD_VIEW[tdi.fsm.state]), args=a)

    return m._extension(mem, a, HostTdiLeaf.TDH_TDI_STATE, func_id, 2, 3, start, ctx)

def _get_state_flow(ctx: SpdmContext, tdi: Tdi) -> SpdmFlow[t.TdiState]:
    tdisp = TdispRequester(PciSigChannel(ctx.spdm, ctx.session))
    state = yield from tdisp.state_flow(tdi.func_id)
    _compare(tdi, state)
    return state

def _compare(tdi: Tdi, device: t.TdiState) -> None:
    """A TDI the module holds LOCKED or RUN must be in that state at the device; any other
    answer (ERROR after a locked BAR moved, PCIe r7.0 §11 Figure 11-5; UNLOCKED after a
    reset) is the device leaving the binding: the module's TDI goes to ERROR."""
    want = {D.LOCKED: t.TdiState.CONFIG_LOCKED, D.RUN: t.TdiState.RUN}.get(tdi.fsm.state)
    if want is not None and device is not want:
        tdi.fsm.fire("device_error", device_state=device.name)

def tdh_tdi_report(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    """The interface report read from the device again (TDCM GET_TDI_REPORT), RCX length."""
    spdm_id, func_id, out = a[0], a[1], a[4]   # R8 rsp, R9 req page, R10 report out
    found = _operands(m, spdm_id, func_id)
    if isinstance(found, int):
        return regs(found, args=a)
    ctx, tdi = found

    def start() -> Operation | int:
        if tdi.fsm.state not in (D.LOCKED, D.RUN) or ctx.session is None:
            return wrong_state(OperandId.RDX)
        try:
            pages = m._pages(mem, out)
        except GuestMemoryError:
            return invalid(OperandId.R10)
        if len(tdi.report) > len(pages) * PAGE_SIZE:
            return invalid(OperandId.R10)
        return Operation(HostTdiLeaf.TDH_TDI_REPORT, func_id, "tdi_get_report",
                         _get_report_flow(ctx, tdi), finish, lambda f: None, ctx,
                         protocol=DeviceErrorKind.TDISP)

    def finish(report: bytes) -> Result:
        m._write_pages(mem, m._pages(mem, out), report)
        return regs(TdxStatus.TDX_SUCCESS, len(report), args=a)

    return m._extension(mem, a, HostTdiLeaf.TDH_TDI_REPORT, func_id, 2, 3, start, ctx)

def _get_report_flow(ctx: SpdmContext, tdi: Tdi) -> SpdmFlow[bytes]:
    tdisp = TdispRequester(PciSigChannel(ctx.spdm, ctx.session))
    try:
        report: bytes | None = yield from tdisp.report_flow(tdi.func_id)
        refused = ""
    except TsmProtocolError as exc:   # TDISP_ERROR: e.g. INVALID_INTERFACE_STATE in ERROR
        report, refused = None, str(exc)
    # the report alone does not say the TDI is still bound as locked: ask its state too
    state = yield from _get_state_flow(ctx, tdi)
    if tdi.fsm.state is D.ERROR:
        raise DeviceFailure(DeviceErrorKind.TDISP, f"TDI {state.name} at the device"
                            + (f" ({refused})" if refused else ""))
    if report is None:
        raise DeviceFailure(DeviceErrorKind.TDISP, refused)
    if report != tdi.report:
        tdi.fsm.fire("device_error", device_state=state.name, report="changed")
        raise DeviceFailure(DeviceErrorKind.TDISP, "interface report changed since the lock")
    return report

def tdh_mmio_map(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    func_id, gpa, hpa, count = a[0], a[1], a[2], a[3]
    tdi = m._tdi(func_id)
    if tdi is None:
        return regs(invalid(OperandId.RCX), args=a)
    if tdi.fsm.state is not D.LOCKED:
        return regs(wrong_state(OperandId.RCX), args=a)
    if gpa & (PAGE_SIZE - 1):
        return regs(invalid(OperandId.RDX), args=a)
    if hpa & (PAGE_SIZE - 1) or count == 0 or not any(
            base <= hpa and hpa + count * PAGE_SIZE <= base + pages * PAGE_SIZE
            for base, pages in tdi.ranges):
        return regs(invalid(OperandId.R8 if count else OperandId.R9), args=a)
    for i in range(count):
        tdi.mapped[gpa + i * PAGE_SIZE] = hpa + i * PAGE_SIZE
    return regs(TdxStatus.TDX_SUCCESS, args=a)

def tdh_mmio_unmap(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    func_id, gpa, count = a[0], a[1], a[2]
    tdi = m._tdi(func_id)
    if tdi is None:
        return regs(invalid(OperandId.RCX), args=a)
    pages = [gpa + i * PAGE_SIZE for i in range(count)]
    if not pages or any(p not in tdi.mapped for p in pages):
        return regs(invalid(OperandId.RDX), args=a)
    for p in pages:
        tdi.accepted.discard(tdi.mapped.pop(p))
    return regs(TdxStatus.TDX_SUCCESS, args=a)

def tdh_dmar_add(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    tdi = m._tdi(a[0])
    if tdi is None:
        return regs(invalid(OperandId.RCX), args=a)
    if tdi.fsm.state is not D.LOCKED or not m.iommus:
        return regs(wrong_state(OperandId.RCX), args=a)
    tdi.dmar_added = True
    return regs(TdxStatus.TDX_SUCCESS, args=a)

def tdh_dmar_remove(m: TdxModule, mem: GuestMemory, a: tuple[int, ...]) -> Result:
    tdi = m._tdi(a[0])
    if tdi is None:
        return regs(invalid(OperandId.RCX), args=a)
    tdi.dmar_added = tdi.dmar_accepted = False
    return regs(TdxStatus.TDX_SUCCESS, args=a)
