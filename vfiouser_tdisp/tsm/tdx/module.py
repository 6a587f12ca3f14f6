"""The Intel TDX module with TDX Connect, and the P-SEAMLDR, as device assignment needs them.

One :class:`TdxModule` implements :class:`vfiouser_tdisp.firmware.Firmware`: host
SEAMCALLs arrive as :attr:`CallClass.HOST` calls (``fid`` = the leaf in RAX, ``args`` =
RCX, RDX, R8, R9, R10, ...), the TD's TDCALLs as :attr:`CallClass.GUEST`; the result is
RAX followed by the same registers.  Two tables map each leaf to a small handler (host,
guest); the P-SEAMLDR leaves (RAX bit 63) are in the host table.  Each firmware object
-- SPDM context, IDE stream, TDI, the module itself -- is an enum plus one transition
table (:mod:`vfiouser_tdisp.fsm`), every transition an event.

The module never touches the device.  A call that needs the device (TDH.SPDM.CONNECT,
.MNG, .DISCONNECT, TDH.IDE.STREAM.KM, the modeled TDH.TDI.*) runs a flow of the
project's steppable SPDM / IDE_KM / TDISP requesters: each time the flow wants an object
sent, the call writes it -- a whole DOE object, header included -- into the request
page and returns TDX_SPDM_REQUEST with its length in RCX; the host carries it to the
device, puts the response object in the response page and calls the same leaf again,
which resumes the flow (firmware-abi.md B.4).  Leaves, structures and status codes:
:mod:`.abi`; what no public source defines: :mod:`.model`.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ...doe.protocols import (
    PCI_DOE_FEATURE_CMA,
    PCI_DOE_FEATURE_SSESSION,
    PCI_SIG_VENDOR_ID,
    DoeError,
    DoeHeader,
    build_object,
    parse_object,
)
from ...events import emit
from ...faults import ARMED, FaultSet, call_matches
from ...firmware import CallClass, FirmwareCall, GuestMemory, GuestMemoryError
from ...fsm import StateMachine
from ...spdm.requester import (
    RequesterSession,
    SpdmFlow,
    SpdmRequest,
    SpdmRequester,
    SpdmRequesterError,
)
from ...wire import DecodeError
from ..core import ALL_SUBSTREAMS, IdeKmRequester, PciSigChannel
from . import model
from .abi import (
    EXIT_REASON_EXTERNAL_INTERRUPT,
    EXIT_REASON_TDCALL,
    FUNC_ID_RESERVED_MASK,
    HPA_ARRAY_PFN_MASK,
    HPA_ARRAY_SIZE_SHIFT,
    NO_PAGE,
    PAGE_SIZE,
    SEAMLDR_INFO_ALIGN,
    SEAMLDR_MAX_NR_MODULE_PAGES,
    TDG_VP_VMCALL_TDCM,
    TDX_FEATURES0_TD_PRESERVING,
    IdeStreamKmOp,
    OperandId,
    SeamcallLeaf,
    SeamldrInfo,
    SeamldrLeaf,
    SeamldrParams,
    SeamldrScenario,
    SeamldrStatus,
    SpdmConfigInfo,
    SpdmMngOp,
    SysMetadataField,
    TdcallLeaf,
    TdiRdField,
    TdTdiState,
    TdxStatus,
    VmcallStatus,
    operand_status,
)
from .model import DeviceErrorKind, HostTdiLeaf, Sigstruct, TdiRdModelField

Result = tuple[int, ...]
Handler = Callable[[GuestMemory, tuple[int, ...]], Result]
NREGS = 10   # RCX, RDX, R8, R9, R10, R11, R12, R13, R14, R15


def regs(status: int, *values: int, args: tuple[int, ...] = ()) -> Result:
    """RAX then the ten registers: ``values`` first, the rest as the caller passed them."""
    out = list(values) + list(args[len(values):NREGS])
    out += [0] * (NREGS - len(out))
    return (status, *out[:NREGS])


ARG_OPERANDS = (OperandId.RCX, OperandId.RDX, OperandId.R8, OperandId.R9, OperandId.R10,
                OperandId.R11, OperandId.R12, OperandId.R13, OperandId.R14, OperandId.R15)


def invalid(op: OperandId) -> int:
    return operand_status(TdxStatus.TDX_OPERAND_INVALID, op)


def busy(op: OperandId) -> int:
    return operand_status(TdxStatus.TDX_OPERAND_BUSY, op)


def wrong_state(op: OperandId) -> int:
    return model.TDX_OBJECT_STATE_INCORRECT | int(op)


# -- state machines ---------------------------------------------------------------------------
class SpdmState(enum.Enum):
    CREATED = "created"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    MANAGING = "managing"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"
    ERROR = "error"


S = SpdmState
SPDM_TRANSITIONS: dict[tuple[SpdmState, str], SpdmState] = {
    (S.CREATED, "connect"): S.CONNECTING,
    (S.DISCONNECTED, "connect"): S.CONNECTING,
    (S.CONNECTING, "connected"): S.CONNECTED,
    (S.CONNECTING, "failed"): S.ERROR,
    (S.CONNECTED, "manage"): S.MANAGING,
    (S.MANAGING, "managed"): S.CONNECTED,
    (S.MANAGING, "failed"): S.ERROR,
    (S.CONNECTED, "disconnect"): S.DISCONNECTING,
    (S.ERROR, "disconnect"): S.DISCONNECTING,
    (S.DISCONNECTING, "disconnected"): S.DISCONNECTED,
}


class StreamState(enum.Enum):
    CREATED = "created"
    KEYING = "keying"
    ACTIVE = "active"
    REFRESHING = "refreshing"
    BLOCKED = "blocked"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


I = StreamState  # noqa: E741
STREAM_TRANSITIONS: dict[tuple[StreamState, str], StreamState] = {
    (I.CREATED, "km_setup"): I.KEYING,
    (I.KEYING, "keyed"): I.ACTIVE,
    (I.KEYING, "failed"): I.ERROR,
    (I.ACTIVE, "km_refresh"): I.REFRESHING,
    (I.REFRESHING, "keyed"): I.ACTIVE,
    (I.REFRESHING, "failed"): I.ERROR,
    (I.ACTIVE, "block"): I.BLOCKED,
    (I.ERROR, "block"): I.BLOCKED,
    (I.BLOCKED, "km_stop"): I.STOPPING,
    (I.STOPPING, "stopped"): I.STOPPED,
}


class TdiState(enum.Enum):
    """The module's TDI context; :data:`TD_VIEW` is what TDG.TDI.RD reports."""

    BINDING = "binding"
    LOCKED = "locked"
    STARTING = "starting"
    RUN = "run"
    STOPPING = "stopping"
    UNLOCKED = "unlocked"
    ERROR = "error"


D = TdiState
TDI_TRANSITIONS: dict[tuple[TdiState, str], TdiState] = {
    (D.BINDING, "locked"): D.LOCKED,
    (D.BINDING, "failed"): D.ERROR,
    (D.LOCKED, "start"): D.STARTING,
    (D.STARTING, "started"): D.RUN,
    (D.STARTING, "failed"): D.ERROR,
    (D.LOCKED, "stop"): D.STOPPING,
    (D.RUN, "stop"): D.STOPPING,
    (D.ERROR, "stop"): D.STOPPING,
    (D.STOPPING, "stopped"): D.UNLOCKED,
    (D.LOCKED, "device_error"): D.ERROR,
    (D.RUN, "device_error"): D.ERROR,
}
TD_VIEW = {D.BINDING: TdTdiState.UNLOCKED, D.LOCKED: TdTdiState.LOCKED,
           D.STARTING: TdTdiState.LOCKED, D.RUN: TdTdiState.RUN,
           D.STOPPING: TdTdiState.UNLOCKED, D.UNLOCKED: TdTdiState.UNLOCKED,
           D.ERROR: TdTdiState.ERROR}


class ModuleState(enum.Enum):
    READY = "ready"
    SHUT_DOWN = "shut_down"       # TDH.SYS.SHUTDOWN: handoff data packed
    INSTALLED = "installed"       # SEAMLDR.INSTALL loaded a new image


M = ModuleState
MODULE_TRANSITIONS: dict[tuple[ModuleState, str], ModuleState] = {
    (M.READY, "shutdown"): M.SHUT_DOWN,
    (M.SHUT_DOWN, "install"): M.INSTALLED,
    (M.INSTALLED, "update"): M.READY,
    (M.SHUT_DOWN, "update"): M.READY,     # [MODEL] old module resumes after a failed install
}


# -- objects ----------------------------------------------------------------------------------
@dataclass
class SpdmContext:
    spdm_id: int
    func_id: int
    mt: int
    fsm: StateMachine[SpdmState]
    spdm: SpdmRequester
    session: RequesterSession | None = None
    dev_info: bytes = b""
    config: SpdmConfigInfo = field(default_factory=SpdmConfigInfo)
    secured_objects: int = 0


@dataclass
class IdeStream:
    stream_id: int
    spdm_id: int
    mt: int
    fsm: StateMachine[StreamState]
    key_set: int = 0


@dataclass
class Tdi:
    func_id: int
    spdm_id: int
    stream_id: int
    td: int
    fsm: StateMachine[TdiState]
    bind_session_id: int = 0
    nonce: bytes = b""
    report: bytes = b""
    tdisp_version: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)   # [hpa, pages]
    mapped: dict[int, int] = field(default_factory=dict)           # gpa page -> hpa page
    accepted: set[int] = field(default_factory=set)                # hpa pages accepted
    dmar_added: bool = False
    dmar_accepted: bool = False
    td_start: bool = False

    def all_accepted(self) -> bool:
        return all(hpa + i * PAGE_SIZE in self.accepted
                   for hpa, pages in self.ranges for i in range(pages))


@dataclass
class PendingVmcall:
    bitmap: int
    r10: int
    r11: int
    device: int
    gpa: int
    size: int
    vector: int


class DeviceFailure(Exception):
    def __init__(self, kind: DeviceErrorKind, why: str) -> None:
        super().__init__(why)
        self.kind = kind


@dataclass
class Operation:
    """One device-talking call in progress (the extension takes one at a time)."""

    leaf: int
    key: int                       # the object it works on (spdm_id / stream / func_id)
    name: str
    flow: Generator[SpdmRequest, bytes, Any]
    done: Callable[[Any], Result]
    failed: Callable[[DeviceFailure], object]
    ctx: SpdmContext
    protocol: DeviceErrorKind = DeviceErrorKind.SPDM   # what a failed answer is
    started: bool = False
    awaiting_secured: bool | None = None


def _kind(exc: BaseException, op: Operation) -> DeviceErrorKind:
    """Which protocol failed: an SPDM-level failure (ERROR response, signature, session)
    is SPDM whatever the operation; a failed IDE_KM / TDISP answer is the operation's."""
    if isinstance(exc, DeviceFailure):
        return exc.kind
    if isinstance(exc, SpdmRequesterError):
        return DeviceErrorKind.SPDM
    return op.protocol


# -- the module -------------------------------------------------------------------------------
class TdxModule:
    """TDX module (TDX Connect extension) + P-SEAMLDR behind the firmware port."""

    abi_id = model.ABI_ID
    abi_version = model.ABI_VERSION

    def __init__(self, *, num_updates: int = model.NUM_UPDATES, preempt_every: int = 0,
                 key_refresh_after: int = model.KEY_REFRESH_AFTER, name: str = "tdx") -> None:
        self.name = name
        self.lock = threading.RLock()
        # Fault injection (faults.py): fw-busy answers TDX_INTERRUPTED_RESUMABLE.
        self.faults: FaultSet = ARMED
        self.fsm = StateMachine("tdx.module", MODULE_TRANSITIONS, ModuleState.READY)
        self.version = model.BOOT_MODULE_VERSION
        boot = model.boot_module_pages()
        self.mrseam = hashlib.sha384(boot).digest()
        self.num_remaining_updates = num_updates
        self.seamldr_update_version = model.SEAMLDR_VERSION[2]
        self.installed_params: bytes | None = None
        self._staged: tuple[tuple[int, int, int], bytes] | None = None
        self.preempt_every, self.key_refresh_after = preempt_every, key_refresh_after
        self._ext_calls = 0
        self.spdm: dict[int, SpdmContext] = {}
        self.streams: dict[tuple[int, int], IdeStream] = {}
        self.tdis: dict[int, Tdi] = {}
        self.iommus: dict[int, tuple[int, int]] = {}
        self.pending: Operation | None = None
        self.vmcall: PendingVmcall | None = None
        self._ids = itertools.count(0x100)
        self._bind_sessions = itertools.count(1)
        from . import tdi as tdi_calls  # [MODEL] host TDI calls, one module
        self.host: dict[int, Handler] = {
            SeamcallLeaf.TDH_VP_ENTER: self.tdh_vp_enter,
            SeamcallLeaf.TDH_SYS_RD: self.tdh_sys_rd,
            SeamcallLeaf.TDH_SYS_LP_INIT: self.tdh_sys_lp_init,
            SeamcallLeaf.TDH_SYS_SHUTDOWN: self.tdh_sys_shutdown,
            SeamcallLeaf.TDH_SYS_UPDATE: self.tdh_sys_update,
            SeamcallLeaf.TDH_IOMMU_SETUP: self.tdh_iommu_setup,
            SeamcallLeaf.TDH_IOMMU_CLEAR: self.tdh_iommu_clear,
            SeamcallLeaf.TDH_SPDM_CREATE: self.tdh_spdm_create,
            SeamcallLeaf.TDH_SPDM_DELETE: self.tdh_spdm_delete,
            SeamcallLeaf.TDH_SPDM_CONNECT: self.tdh_spdm_connect,
            SeamcallLeaf.TDH_SPDM_DISCONNECT: self.tdh_spdm_disconnect,
            SeamcallLeaf.TDH_SPDM_MNG: self.tdh_spdm_mng,
            SeamcallLeaf.TDH_IDE_STREAM_CREATE: self.tdh_ide_stream_create,
            SeamcallLeaf.TDH_IDE_STREAM_BLOCK: self.tdh_ide_stream_block,
            SeamcallLeaf.TDH_IDE_STREAM_DELETE: self.tdh_ide_stream_delete,
            SeamcallLeaf.TDH_IDE_STREAM_KM: self.tdh_ide_stream_km,
            HostTdiLeaf.TDH_TDI_BIND: partial(tdi_calls.tdh_tdi_bind, self),
            HostTdiLeaf.TDH_TDI_START: partial(tdi_calls.tdh_tdi_start, self),
            HostTdiLeaf.TDH_TDI_STOP: partial(tdi_calls.tdh_tdi_stop, self),
            HostTdiLeaf.TDH_TDI_UNBIND: partial(tdi_calls.tdh_tdi_unbind, self),
            HostTdiLeaf.TDH_TDI_STATE: partial(tdi_calls.tdh_tdi_state, self),
            HostTdiLeaf.TDH_TDI_REPORT: partial(tdi_calls.tdh_tdi_report, self),
            HostTdiLeaf.TDH_MMIO_MAP: partial(tdi_calls.tdh_mmio_map, self),
            HostTdiLeaf.TDH_MMIO_UNMAP: partial(tdi_calls.tdh_mmio_unmap, self),
            HostTdiLeaf.TDH_DMAR_ADD: partial(tdi_calls.tdh_dmar_add, self),
            HostTdiLeaf.TDH_DMAR_REMOVE: partial(tdi_calls.tdh_dmar_remove, self),
            SeamldrLeaf.SEAMLDR_INFO: self.seamldr_info,
            SeamldrLeaf.SEAMLDR_INSTALL: self.seamldr_install,
        }
        self.guest: dict[int, Handler] = {
            TdcallLeaf.TDG_VP_VMCALL: self.tdg_vp_vmcall,
            TdcallLeaf.TDG_TDI_RD: self.tdg_tdi_rd,
            TdcallLeaf.TDG_TDI_START: self.tdg_tdi_start,
            TdcallLeaf.TDG_DMAR_ACCEPT: self.tdg_dmar_accept,
            TdcallLeaf.TDG_MMIO_ACCEPT: self.tdg_mmio_accept,
        }

    # -- entry ------------------------------------------------------------------------------
    def call(self, call: FirmwareCall, mem: GuestMemory) -> Result:
        args = tuple(a & 0xFFFF_FFFF_FFFF_FFFF for a in call.args[:NREGS])
        args += (0,) * (NREGS - len(args))
        table = self.host if call.cls is CallClass.HOST else self.guest
        handler = table.get(call.fid)
        with self.lock:
            if handler is None:
                out = regs(invalid(OperandId.RAX), args=args)
            elif (call.cls is CallClass.HOST and self.fsm.state is not ModuleState.READY
                  and call.fid not in self._update_leaves):
                out = regs(model.TDX_MODULE_SHUT_DOWN, args=args)
            elif call.cls is CallClass.HOST and self.faults.take(
                    "fw-busy", f"{self.name}:{self._name(call.cls, call.fid)}",
                    lambda a: call_matches(a["call"], self._name(call.cls, call.fid))):
                # No progress; the host calls the same leaf again (as preempt_every).
                out = regs(TdxStatus.TDX_INTERRUPTED_RESUMABLE, args=args)
            else:
                try:
                    out = handler(mem, args)
                except GuestMemoryError as exc:
                    emit("tdx.memory_error", leaf=call.fid, error=str(exc))
                    out = regs(SeamldrStatus.EBADPARAM if call.fid & (1 << 63)
                               else invalid(OperandId.RCX), args=args)
        emit("tdx.call", cls=call.cls.name, leaf=self._name(call.cls, call.fid),
             status=f"{out[0]:#018x}")
        return out

    _update_leaves = frozenset({SeamcallLeaf.TDH_SYS_LP_INIT, SeamcallLeaf.TDH_SYS_UPDATE,
                                SeamcallLeaf.TDH_SYS_RD, SeamldrLeaf.SEAMLDR_INFO,
                                SeamldrLeaf.SEAMLDR_INSTALL})

    @staticmethod
    def _name(cls: CallClass, fid: int) -> str:
        for enum_type in ((SeamcallLeaf, HostTdiLeaf, SeamldrLeaf) if cls is CallClass.HOST
                          else (TdcallLeaf,)):
            try:
                return enum_type(fid).name.replace("_", ".")  # type: ignore[attr-defined]
            except ValueError:
                continue
        return f"{fid:#x}"

    # -- memory helpers ---------------------------------------------------------------------
    @staticmethod
    def _pages(mem: GuestMemory, hpa_array: int) -> list[int]:
        """The pages an hpa_array_t names (Linux tdx.c hpa_array_t)."""
        first = hpa_array & HPA_ARRAY_PFN_MASK
        entries = (hpa_array >> HPA_ARRAY_SIZE_SHIFT) + 1
        if entries == 1:
            mem.read(first, 8)
            return [first]
        root = mem.read(first, 8 * entries)
        return [int.from_bytes(root[8 * i:8 * i + 8], "little") & HPA_ARRAY_PFN_MASK
                for i in range(entries)]

    @staticmethod
    def _write_pages(mem: GuestMemory, pages: list[int], data: bytes) -> None:
        for i, page in enumerate(pages):
            chunk = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            if not chunk:
                break
            mem.write(page, chunk)

    # -- the extension's device-talking calls ----------------------------------------------
    def _extension(self, mem: GuestMemory, args: tuple[int, ...], leaf: int, key: int,
                   rsp_at: int, req_at: int, start: Callable[[], Operation | int],
                   ctx: SpdmContext | None, refresh_exempt: bool = False) -> Result:
        """Start or resume the one device-talking operation (firmware-abi.md B.4 loop).
        ``rsp_at`` / ``req_at``: which argument register holds the response / request page."""
        op = self.pending
        if op is not None and (op.leaf, op.key) != (leaf, key):
            return regs(busy(OperandId.RCX), args=args)
        rsp, req = args[rsp_at], args[req_at]
        for at in (rsp_at, req_at):
            if args[at] & (PAGE_SIZE - 1):
                return regs(invalid(ARG_OPERANDS[at]), args=args)
        if op is None:
            if ctx is not None and ctx.session is not None and not refresh_exempt and \
                    ctx.secured_objects >= self.key_refresh_after:
                return regs(TdxStatus.TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH, args=args)
            started = start()
            if isinstance(started, int):
                return regs(started, args=args)
            op = self.pending = started
        self._ext_calls += 1
        if self.preempt_every and self._ext_calls % self.preempt_every == 0:
            return regs(TdxStatus.TDX_INTERRUPTED_RESUMABLE, args=args)
        try:
            if not op.started:
                op.started = True
                request = next(op.flow)
            else:
                request = op.flow.send(self._response(mem, rsp, op))
        except StopIteration as stop:
            self.pending = None
            return op.done(stop.value)
        except Exception as exc:  # the device failed; the object says how (its FSM)
            self.pending = None
            failure = exc if isinstance(exc, DeviceFailure) else \
                DeviceFailure(_kind(exc, op), repr(exc))
            emit("tdx.device_error", operation=op.name, failure=failure.kind.name,
                 error=str(failure))
            op.failed(failure)
            return regs(model.TDX_DEVICE_ERROR | int(failure.kind), args=args)
        obj = build_object(PCI_SIG_VENDOR_ID,
                           PCI_DOE_FEATURE_SSESSION if request.secured else PCI_DOE_FEATURE_CMA,
                           request.payload)
        if len(obj) > PAGE_SIZE:
            self.pending = None
            op.flow.close()
            op.failed(DeviceFailure(DeviceErrorKind.SPDM, "request larger than a page"))
            return regs(model.TDX_DEVICE_ERROR | DeviceErrorKind.SPDM, args=args)
        mem.write(req, obj)
        op.awaiting_secured = request.secured
        if request.secured:
            op.ctx.secured_objects += 1
        return regs(TdxStatus.TDX_SPDM_REQUEST, len(obj), args=args)

    @staticmethod
    def _response(mem: GuestMemory, rsp: int, op: Operation) -> bytes:
        """The response object in the rsp page; an invalid one = transfer failed."""
        head = mem.read(rsp, 8)
        try:
            hdr = DoeHeader.unpack(head)
            size = hdr.length_dw * 4
            if size > PAGE_SIZE:
                raise DoeError("response larger than the page")
            got, payload = parse_object(mem.read(rsp, size))
        except (DoeError, DecodeError) as exc:
            raise DeviceFailure(DeviceErrorKind.TRANSPORT, f"no valid response: {exc}") from None
        want = PCI_DOE_FEATURE_SSESSION if op.awaiting_secured else PCI_DOE_FEATURE_CMA
        if got.vendor_id != PCI_SIG_VENDOR_ID or got.data_object_type != want:
            raise DeviceFailure(DeviceErrorKind.TRANSPORT,
                                f"response object type {got.data_object_type}, expected {want}")
        return payload

    # -- TDH.SPDM.* ---------------------------------------------------------------------------
    def tdh_spdm_create(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        func_id, mt = a[0], a[1]
        if func_id & FUNC_ID_RESERVED_MASK:
            return regs(invalid(OperandId.RCX), args=a)
        if any(c.func_id == func_id for c in self.spdm.values()):
            return regs(busy(OperandId.RCX), args=a)
        try:
            self._pages(mem, mt)
        except GuestMemoryError:
            return regs(invalid(OperandId.RDX), args=a)
        spdm_id = next(self._ids)
        self.spdm[spdm_id] = SpdmContext(
            spdm_id, func_id, mt,
            StateMachine("tdx.spdm", SPDM_TRANSITIONS, SpdmState.CREATED, spdm_id=spdm_id),
            # DOE objects travel in single pages: ask for responses that fit one.
            SpdmRequester(name=f"tdx.spdm{spdm_id:#x}", data_transfer_size=2048))
        emit("tdx.spdm.created", spdm_id=spdm_id, func_id=f"{func_id:#x}")
        return regs(TdxStatus.TDX_SUCCESS, spdm_id, args=a)

    def _ctx(self, spdm_id: int) -> SpdmContext | None:
        return self.spdm.get(spdm_id)

    def tdh_spdm_delete(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        ctx = self._ctx(a[0])
        if ctx is None:
            return regs(invalid(OperandId.RCX), args=a)
        if ctx.fsm.state not in (S.CREATED, S.DISCONNECTED, S.ERROR) or \
                any(s.spdm_id == ctx.spdm_id for s in self.streams.values()) or \
                any(d.spdm_id == ctx.spdm_id for d in self.tdis.values()):
            return regs(wrong_state(OperandId.RCX), args=a)
        del self.spdm[ctx.spdm_id]
        emit("tdx.spdm.deleted", spdm_id=ctx.spdm_id)
        return regs(TdxStatus.TDX_SUCCESS, ctx.mt, args=a)

    def tdh_spdm_connect(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        spdm_id, conf_pa, out = a[0], a[1], a[4]   # R8 rsp, R9 req page
        ctx = self._ctx(spdm_id)
        if ctx is None:
            return regs(invalid(OperandId.RCX), args=a)

        def start() -> Operation | int:
            if not ctx.fsm.can("connect"):
                return wrong_state(OperandId.RCX)
            try:
                conf = SpdmConfigInfo.unpack(mem.read(conf_pa, SpdmConfigInfo.fixed_size()))
                self._pages(mem, out)
            except GuestMemoryError:
                return invalid(OperandId.RDX)
            if conf.certificate_slot_mask == 0:
                return invalid(OperandId.RDX)
            ctx.config = conf
            ctx.fsm.fire("connect")
            return Operation(SeamcallLeaf.TDH_SPDM_CONNECT, spdm_id, "connect",
                             self._connect_flow(ctx), lambda info: finish(info),
                             lambda f: ctx.fsm.fire("failed", error=str(f)), ctx)

        def finish(info: bytes) -> Result:
            ctx.dev_info = info
            ctx.fsm.fire("connected")
            return self._write_out(mem, out, info, a)

        return self._extension(mem, a, SeamcallLeaf.TDH_SPDM_CONNECT, spdm_id, 2, 3, start,
                               ctx)

    def _write_out(self, mem: GuestMemory, out: int, data: bytes,
                   a: tuple[int, ...]) -> Result:
        pages = self._pages(mem, out)
        if len(data) > len(pages) * PAGE_SIZE:
            return regs(invalid(OperandId.R10), len(data), args=a)
        self._write_pages(mem, pages, data)
        return regs(TdxStatus.TDX_SUCCESS, len(data), args=a)

    def _connect_flow(self, ctx: SpdmContext) -> SpdmFlow[bytes]:
        spdm = ctx.spdm
        yield from spdm.init_connection_flow()
        yield from spdm.get_digests_flow()
        slot = (ctx.config.certificate_slot_mask & -ctx.config.certificate_slot_mask
                ).bit_length() - 1
        yield from spdm.get_certificate_flow(slot)
        spdm.verify_certificate_chain()
        ctx.session = yield from spdm.start_session_flow()
        return (yield from self._collect_flow(ctx, slot))

    def _collect_flow(self, ctx: SpdmContext, slot: int) -> SpdmFlow[bytes]:
        """Signed measurements in the session, then dev_info ([MODEL] DevInfoHeader)."""
        spdm = ctx.spdm
        assert ctx.session is not None
        yield from spdm.get_measurements_flow(signed=True,
                                              raw=bool(ctx.config.raw_bitstream_requested),
                                              session=ctx.session)
        meas = bytes(spdm._last_exact)
        vca, chain = bytes(spdm.message_a), spdm.conn.cert_chain
        head = model.DevInfoHeader(
            version=model.DEV_INFO_VERSION,
            hash_algo=spdm.conn.hash.bit if spdm.conn.hash else 0, cert_slot=slot,
            cert_chain_len=len(chain), vca_len=len(vca), meas_len=len(meas))
        return head.pack() + chain + vca + meas

    def tdh_spdm_disconnect(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        spdm_id = a[0]            # RDX rsp, R8 req page
        ctx = self._ctx(spdm_id)
        if ctx is None:
            return regs(invalid(OperandId.RCX), args=a)

        def start() -> Operation | int:
            if not ctx.fsm.can("disconnect") or \
                    any(s.spdm_id == spdm_id for s in self.streams.values()) or \
                    any(d.spdm_id == spdm_id for d in self.tdis.values()):
                return wrong_state(OperandId.RCX)
            ctx.fsm.fire("disconnect")
            return Operation(SeamcallLeaf.TDH_SPDM_DISCONNECT, spdm_id, "disconnect",
                             self._end_flow(ctx), lambda _: finish(),
                             lambda f: finish(), ctx)

        def finish() -> Result:
            # Always ends DISCONNECTED: the session keys are dropped whatever the device says.
            if ctx.fsm.state is S.DISCONNECTING:
                ctx.fsm.fire("disconnected")
            ctx.session, ctx.dev_info, ctx.secured_objects = None, b"", 0
            return regs(TdxStatus.TDX_SUCCESS, 0, args=a)

        result = self._extension(mem, a, SeamcallLeaf.TDH_SPDM_DISCONNECT, spdm_id, 1, 2,
                                 start, ctx, refresh_exempt=True)
        if result[0] >> 32 == model.TDX_DEVICE_ERROR >> 32:
            return regs(TdxStatus.TDX_SUCCESS, 0, args=a)   # keys dropped all the same
        return result

    def _end_flow(self, ctx: SpdmContext) -> SpdmFlow[None]:
        if ctx.session is not None:
            session, ctx.session = ctx.session, None
            yield from ctx.spdm.end_session_flow(session)

    def tdh_spdm_mng(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        spdm_id, op, param, out = a[0], a[1], a[2], a[5]   # R9 rsp, R10 req page
        ctx = self._ctx(spdm_id)
        if ctx is None:
            return regs(invalid(OperandId.RCX), args=a)
        del param  # no operation takes a parameter page ([MODEL])

        def start() -> Operation | int:
            if op not in {int(o) for o in SpdmMngOp}:
                return invalid(OperandId.RDX)
            if not ctx.fsm.can("manage") or ctx.session is None:
                return wrong_state(OperandId.RCX)
            if op == SpdmMngOp.RECOLLECT and out == NO_PAGE:
                return invalid(OperandId.R11)
            session = ctx.session
            flow: SpdmFlow[Any]
            if op == SpdmMngOp.HEARTBEAT:
                flow = ctx.spdm.heartbeat_flow(session)
            elif op == SpdmMngOp.KEY_UPDATE:
                flow = self._key_update_flow(ctx, session)
            else:
                flow = self._recollect_flow(ctx)
            ctx.fsm.fire("manage", op=SpdmMngOp(op).name)
            return Operation(SeamcallLeaf.TDH_SPDM_MNG, spdm_id, SpdmMngOp(op).name.lower(),
                             flow, lambda v: finish(v),
                             lambda f: ctx.fsm.fire("failed", error=str(f)), ctx)

        def finish(value: Any) -> Result:
            ctx.fsm.fire("managed")
            if op == SpdmMngOp.RECOLLECT:
                ctx.dev_info = value
                return self._write_out(mem, out, value, a)
            return regs(TdxStatus.TDX_SUCCESS, 0, args=a)

        return self._extension(mem, a, SeamcallLeaf.TDH_SPDM_MNG, spdm_id, 3, 4, start, ctx,
                               refresh_exempt=op == SpdmMngOp.KEY_UPDATE)

    def _key_update_flow(self, ctx: SpdmContext, session: RequesterSession) -> SpdmFlow[None]:
        yield from ctx.spdm.key_update_flow(session, all_keys=True)
        ctx.secured_objects = 0

    def _recollect_flow(self, ctx: SpdmContext) -> SpdmFlow[bytes]:
        spdm = ctx.spdm
        assert ctx.session is not None
        slot = (ctx.config.certificate_slot_mask & -ctx.config.certificate_slot_mask
                ).bit_length() - 1
        yield from spdm.get_digests_flow()
        chain = spdm.conn.cert_chain
        if spdm.conn.digests and slot < len(spdm.conn.digests) and spdm.conn.hash and \
                spdm.conn.hash.digest(chain) != spdm.conn.digests[slot]:
            yield from spdm.get_certificate_flow(slot)
            spdm.verify_certificate_chain()
        return (yield from self._collect_flow(ctx, slot))

    # -- TDH.IDE.STREAM.* -----------------------------------------------------------------------
    def tdh_ide_stream_create(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        stream_info, spdm_id, mt, stream_ctrl = a[0], a[1], a[2], a[3]
        ctx = self._ctx(spdm_id)
        if ctx is None:
            return regs(invalid(OperandId.RDX), args=a)
        if stream_info & ~0x1FF:
            return regs(invalid(OperandId.RCX), args=a)
        if ctx.fsm.state is not S.CONNECTED:
            return regs(wrong_state(OperandId.RDX), args=a)
        if any(s.spdm_id == spdm_id for s in self.streams.values()):
            return regs(busy(OperandId.RDX), args=a)
        try:
            self._pages(mem, mt)
        except GuestMemoryError:
            return regs(invalid(OperandId.R8), args=a)
        # The Stream ID is bits 31:24 of the IDE Stream Control register value (PCIe r6
        # §7.9.26.5.2), which Linux passes in R9.
        stream_id = (stream_ctrl >> 24) & 0xFF
        self.streams[(spdm_id, stream_id)] = IdeStream(
            stream_id, spdm_id, mt,
            StateMachine("tdx.ide_stream", STREAM_TRANSITIONS, StreamState.CREATED,
                         spdm_id=spdm_id, stream_id=stream_id))
        return regs(TdxStatus.TDX_SUCCESS, stream_id, 0, args=a)

    def _stream(self, spdm_id: int, stream_id: int) -> IdeStream | None:
        return self.streams.get((spdm_id, stream_id))

    def tdh_ide_stream_km(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        spdm_id, stream_id, op = a[0], a[1], a[2]   # R9 rsp, R10 req page
        ctx = self._ctx(spdm_id)
        if ctx is None:
            return regs(invalid(OperandId.RCX), args=a)
        stream = self._stream(spdm_id, stream_id)
        if stream is None:
            return regs(invalid(OperandId.RDX), args=a)
        trigger = {IdeStreamKmOp.SETUP: "km_setup", IdeStreamKmOp.REFRESH: "km_refresh",
                   IdeStreamKmOp.STOP: "km_stop"}

        def start() -> Operation | int:
            if op not in {int(o) for o in IdeStreamKmOp}:
                return invalid(OperandId.R8)
            if not stream.fsm.can(trigger[IdeStreamKmOp(op)]) or ctx.session is None:
                return wrong_state(OperandId.RDX)
            stream.fsm.fire(trigger[IdeStreamKmOp(op)])
            km = IdeKmRequester(PciSigChannel(ctx.spdm, ctx.session))
            if op == IdeStreamKmOp.STOP:
                flow: SpdmFlow[Any] = km.stop_stream_flow(stream_id, stream.key_set)
            else:
                if op == IdeStreamKmOp.REFRESH:
                    stream.key_set ^= 1
                flow = self._program_flow(km, stream)
            return Operation(SeamcallLeaf.TDH_IDE_STREAM_KM, stream_id,
                             f"ide_km_{IdeStreamKmOp(op).name.lower()}", flow,
                             lambda _: finish(), lambda f: failed(f), ctx,
                             protocol=DeviceErrorKind.IDE_KM)

        def finish() -> Result:
            stream.fsm.fire("stopped" if op == IdeStreamKmOp.STOP else "keyed",
                            key_set=stream.key_set)
            return regs(TdxStatus.TDX_SUCCESS, 0, args=a)

        def failed(f: DeviceFailure) -> None:
            if stream.fsm.state is I.STOPPING:
                stream.fsm.fire("stopped", device_confirmed=False)
            else:
                stream.fsm.fire("failed", error=str(f))

        result = self._extension(mem, a, SeamcallLeaf.TDH_IDE_STREAM_KM, stream_id, 3, 4,
                                 start, ctx, refresh_exempt=op == IdeStreamKmOp.STOP)
        if op == IdeStreamKmOp.STOP and result[0] >> 32 == model.TDX_DEVICE_ERROR >> 32:
            return regs(TdxStatus.TDX_SUCCESS, 0, args=a)   # stopped: the keys are dropped
        return result

    @staticmethod
    def _program_flow(km: IdeKmRequester, stream: IdeStream) -> SpdmFlow[None]:
        """QUERY, KEY_PROG of the six sub-streams, then K_SET_GO for each ([MODEL] the root
        port's half is keyed without traffic)."""
        import os
        yield from km.query_flow()
        for sub, direction in ALL_SUBSTREAMS:
            yield from km.key_prog_flow(stream.stream_id, stream.key_set, direction, sub,
                                        os.urandom(32), os.urandom(8))
        for sub, direction in ALL_SUBSTREAMS:
            yield from km.k_set_flow(True, stream.stream_id, stream.key_set, direction, sub)

    def tdh_ide_stream_block(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        stream = self._stream(a[0], a[1])
        if self._ctx(a[0]) is None:
            return regs(invalid(OperandId.RCX), args=a)
        if stream is None:
            return regs(invalid(OperandId.RDX), args=a)
        if self.pending is not None and self.pending.key == stream.stream_id:
            return regs(busy(OperandId.RDX), args=a)
        if not stream.fsm.can("block") or \
                any(d.stream_id == stream.stream_id and d.spdm_id == stream.spdm_id
                    for d in self.tdis.values()):
            return regs(wrong_state(OperandId.RDX), args=a)
        stream.fsm.fire("block")
        return regs(TdxStatus.TDX_SUCCESS, args=a)

    def tdh_ide_stream_delete(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        stream = self._stream(a[0], a[1])
        if self._ctx(a[0]) is None:
            return regs(invalid(OperandId.RCX), args=a)
        if stream is None:
            return regs(invalid(OperandId.RDX), args=a)
        if stream.fsm.state not in (I.CREATED, I.BLOCKED, I.STOPPED):
            return regs(wrong_state(OperandId.RDX), args=a)
        del self.streams[(stream.spdm_id, stream.stream_id)]
        emit("tdx.ide_stream.deleted", spdm_id=stream.spdm_id, stream_id=stream.stream_id)
        return regs(TdxStatus.TDX_SUCCESS, stream.mt, args=a)

    # -- TDH.IOMMU.* ----------------------------------------------------------------------------
    def tdh_iommu_setup(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vtbar, mt = a[0], a[1]
        if vtbar == 0 or vtbar & (PAGE_SIZE - 1):
            return regs(invalid(OperandId.RCX), args=a)
        if any(v == vtbar for v, _ in self.iommus.values()):
            return regs(busy(OperandId.RCX), args=a)
        try:
            self._pages(mem, mt)
        except GuestMemoryError:
            return regs(invalid(OperandId.RDX), args=a)
        iommu_id = len(self.iommus) + 1
        while iommu_id in self.iommus:
            iommu_id += 1
        self.iommus[iommu_id] = (vtbar, mt)
        return regs(TdxStatus.TDX_SUCCESS, iommu_id, args=a)

    def tdh_iommu_clear(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        if a[0] not in self.iommus:
            return regs(invalid(OperandId.RCX), args=a)
        if any(d.dmar_added for d in self.tdis.values()) and len(self.iommus) == 1:
            return regs(wrong_state(OperandId.RCX), args=a)
        _, mt = self.iommus.pop(a[0])
        return regs(TdxStatus.TDX_SUCCESS, mt, args=a)

    def _tdi(self, func_id: int) -> Tdi | None:
        tdi = self.tdis.get(func_id)
        return None if tdi is None or tdi.fsm.state is D.BINDING else tdi

    # -- TDH.VP.ENTER: the TD's VMCALL reaches the host ([MODEL]) -------------------------------
    def tdh_vp_enter(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        v, self.vmcall = self.vmcall, None
        if v is None:
            return regs(EXIT_REASON_EXTERNAL_INTERRUPT, args=a)
        return (EXIT_REASON_TDCALL, v.bitmap, 0, 0, 0, v.r10, v.r11, v.device, v.gpa, v.size,
                v.vector)

    # -- TDH.SYS.* and the P-SEAMLDR ------------------------------------------------------------
    def tdh_sys_rd(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        field_id = a[1]
        values = {SysMetadataField.MAJOR_VERSION: self.version[0],
                  SysMetadataField.MINOR_VERSION: self.version[1],
                  SysMetadataField.UPDATE_VERSION: self.version[2],
                  SysMetadataField.TDX_FEATURES0: TDX_FEATURES0_TD_PRESERVING}
        if field_id not in values:
            return regs(invalid(OperandId.RDX), args=a)
        return regs(TdxStatus.TDX_SUCCESS, a[0], field_id, values[SysMetadataField(field_id)],
                    args=a)

    def tdh_sys_lp_init(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        return regs(TdxStatus.TDX_SUCCESS, args=a)

    def tdh_sys_shutdown(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        if self.pending is not None:
            return regs(busy(OperandId.RAX), args=a)
        self.fsm.fire("shutdown", spdm_contexts=len(self.spdm), tdis=len(self.tdis))
        return regs(TdxStatus.TDX_SUCCESS, args=a)

    def tdh_sys_update(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        if not self.fsm.can("update"):
            return regs(wrong_state(OperandId.RAX), args=a)
        old = self.version
        if self._staged is not None:
            self.version, self.mrseam = self._staged
            self._staged = None
        # Handoff data: every SPDM context, IDE stream and TDI is kept as it was.
        self.fsm.fire("update", from_version=".".join(map(str, old)),
                      to_version=".".join(map(str, self.version)), spdm_contexts=len(self.spdm),
                      tdis=len(self.tdis))
        return regs(TdxStatus.TDX_SUCCESS, args=a)

    def seamldr_info_struct(self) -> SeamldrInfo:
        key = model.signer_key().public_key()
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        major, minor, _ = model.SEAMLDR_VERSION
        return SeamldrInfo(
            version=0, attributes=0, vendor_id=model.SEAMLDR_VENDOR_ID,
            build_date=model.SEAMLDR_BUILD_DATE, build_num=model.SEAMLDR_BUILD_NUM,
            minor=minor, major=major, reserved_0=self.seamldr_update_version,
            num_remaining_updates=self.num_remaining_updates, valid=1,
            minor_svn=self.version[1] & 0xFF, major_svn=self.version[0] & 0xFF,
            mrseam=self.mrseam,
            mrsigner=hashlib.sha384(key.public_bytes(Encoding.X962,
                                                     PublicFormat.UncompressedPoint)).digest(),
            seam_ready=1, p_seamldr_ready=1)

    def seamldr_info(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        if a[0] % SEAMLDR_INFO_ALIGN:
            return regs(SeamldrStatus.EBADPARAM, args=a)
        mem.write(a[0], self.seamldr_info_struct().pack())
        return regs(SeamldrStatus.SEAMLDR_SUCCESS, args=a)

    def seamldr_install(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        status = self._install(mem, a[0])
        emit("tdx.seamldr.install", status=SeamldrStatus(status).name,
             remaining=self.num_remaining_updates, version=".".join(map(str, self.version)))
        return regs(status, args=a)

    def _install(self, mem: GuestMemory, params_pa: int) -> int:
        if params_pa & (PAGE_SIZE - 1):
            return SeamldrStatus.EBADPARAM
        raw_params = mem.read(params_pa, PAGE_SIZE)
        params = SeamldrParams.unpack(raw_params)
        if self.fsm.state is ModuleState.INSTALLED and raw_params == self.installed_params:
            return SeamldrStatus.SEAMLDR_SUCCESS       # the same INSTALL on another CPU
        if params.version != 0 or params.scenario != SeamldrScenario.UPDATE or \
                not 1 <= params.num_module_pages <= SEAMLDR_MAX_NR_MODULE_PAGES or \
                params.sigstruct_pa == 0 or params.sigstruct_pa & (PAGE_SIZE - 1) or \
                any(p == 0 or p & (PAGE_SIZE - 1) for p in params.module_pages()):
            return SeamldrStatus.EBADPARAM
        if self.fsm.state is not ModuleState.SHUT_DOWN:
            return SeamldrStatus.EBADHANDOFF
        if self.num_remaining_updates == 0:
            return model.UPDATES_EXHAUSTED
        sig_page = mem.read(params.sigstruct_pa, PAGE_SIZE)
        module = b"".join(mem.read(p, PAGE_SIZE) for p in params.module_pages())
        sig = Sigstruct.unpack(sig_page)
        if sig.magic != model.SIGSTRUCT_MAGIC or not self._signature_ok(sig, sig_page):
            return SeamldrStatus.EBADSIG
        if sig.module_nr_pages != params.num_module_pages or \
                hashlib.sha384(module).digest() != sig.module_hash:
            return SeamldrStatus.EBADHASH
        if sig.major_version != self.version[0]:
            return SeamldrStatus.EUNSUPPORTED
        self.fsm.fire("install", image_version=f"{sig.major_version}.{sig.minor_version}."
                                     f"{sig.update_version}")
        self._staged = ((sig.major_version, sig.minor_version, sig.update_version),
                        sig.module_hash)
        self.installed_params = raw_params
        self.num_remaining_updates -= 1
        return SeamldrStatus.SEAMLDR_SUCCESS

    @staticmethod
    def _signature_ok(sig: Sigstruct, page: bytes) -> bool:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        trusted = model.signer_key().public_key()
        if sig.signer_key != trusted.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint):
            return False
        r = int.from_bytes(sig.signature[:48], "big")
        s = int.from_bytes(sig.signature[48:], "big")
        try:
            trusted.verify(encode_dss_signature(r, s), page[:model.SIGNED_SIZE],
                           ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            return False
        return True

    # -- TDCALLs (the TD) ---------------------------------------------------------------------
    def tdg_vp_vmcall(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        bitmap, r10, r11, r12, r13, r14, r15 = a[0], a[4], a[5], a[6], a[7], a[8], a[9]
        if r10 != 0 or r11 != TDG_VP_VMCALL_TDCM:
            status = VmcallStatus.TDG_VP_VMCALL_INVALID_OPERAND
        elif self.vmcall is not None:
            status = VmcallStatus.TDG_VP_VMCALL_RETRY
        else:
            self.vmcall = PendingVmcall(bitmap, r10, r11, r12, r13, r14, r15)
            status = VmcallStatus.TDG_VP_VMCALL_SUCCESS
        out = list(a)
        out[4] = int(status)
        return (TdxStatus.TDX_SUCCESS, *out)

    def _td_tdi(self, func_id: int) -> Tdi | int:
        tdi = self._tdi(func_id)
        if tdi is None:
            return TdxStatus.TDX_TDI_NOT_PRESENT
        return tdi

    def tdg_tdi_rd(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        func_id, field_id, out_gpa = a[0], a[1], a[2]
        tdi = self._td_tdi(func_id)
        if isinstance(tdi, int):
            return regs(tdi, args=a)
        ctx = self.spdm[tdi.spdm_id]
        if field_id == TdiRdField.TDISP_STATE:
            return regs(TdxStatus.TDX_SUCCESS, int(TD_VIEW[tdi.fsm.state]), args=a)
        if field_id == TdiRdField.BIND_SESSION_ID:
            return regs(TdxStatus.TDX_SUCCESS, tdi.bind_session_id, args=a)
        if field_id == TdiRdModelField.TDISP_VERSION:
            return regs(TdxStatus.TDX_SUCCESS, tdi.tdisp_version, args=a)
        if field_id in (TdiRdModelField.REPORT_HASH, TdiRdModelField.DEVICE_INFO_HASH):
            data = tdi.report if field_id == TdiRdModelField.REPORT_HASH else ctx.dev_info
            try:
                mem.write(out_gpa, hashlib.new(model.HASH, data).digest())
            except GuestMemoryError:
                return regs(invalid(OperandId.R8), args=a)
            return regs(TdxStatus.TDX_SUCCESS, model.HASH_SIZE, args=a)
        return regs(TdxStatus.TDX_TDI_INVALID_METADATA, args=a)

    def tdg_tdi_start(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        func_id, session = a[0], a[1]
        tdi = self._td_tdi(func_id)
        if isinstance(tdi, int):
            return regs(tdi, args=a)
        if session != tdi.bind_session_id:
            return regs(invalid(OperandId.RDX), args=a)
        if tdi.fsm.state is not D.LOCKED or not tdi.all_accepted() or not tdi.dmar_accepted:
            return regs(wrong_state(OperandId.RCX), args=a)
        tdi.td_start = True
        emit("tdx.tdi.td_start", func_id=f"{func_id:#x}")
        return regs(TdxStatus.TDX_SUCCESS, args=a)

    def tdg_dmar_accept(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        func_id, target = a[0], a[1]
        tdi = self._td_tdi(func_id)
        if isinstance(tdi, int):
            return regs(tdi, args=a)
        if target != 0:            # no L2 VMs in this TD
            return regs(invalid(OperandId.RDX), args=a)
        if tdi.fsm.state is not D.LOCKED or not tdi.dmar_added:
            return regs(wrong_state(OperandId.RCX), args=a)
        tdi.dmar_accepted = True
        return regs(TdxStatus.TDX_SUCCESS, args=a)

    def tdg_mmio_accept(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        gpa_level, index, func_id, span = a[0], a[1], a[2], a[3]
        tdi = self._td_tdi(func_id)
        if isinstance(tdi, int):
            return regs(tdi, args=a)
        if gpa_level & 0x7:        # 4 KiB mappings only
            return regs(invalid(OperandId.RCX), args=a)
        if tdi.fsm.state is not D.LOCKED:
            return regs(wrong_state(OperandId.R8), args=a)
        if index >= len(tdi.ranges):
            return regs(invalid(OperandId.RDX), args=a)
        offset, count = span >> 32, span & 0xFFFF_FFFF
        base, pages = tdi.ranges[index]
        if count == 0 or offset + count > pages:
            return regs(invalid(OperandId.R9), args=a)
        gpa = gpa_level & ~(PAGE_SIZE - 1)
        want = [(gpa + i * PAGE_SIZE, base + (offset + i) * PAGE_SIZE) for i in range(count)]
        if any(tdi.mapped.get(g) != h for g, h in want):
            return regs(invalid(OperandId.RCX), args=a)
        tdi.accepted.update(h for _, h in want)
        return regs(TdxStatus.TDX_SUCCESS, args=a)

    # -- introspection for drivers and tests --------------------------------------------------
    def td_view(self, func_id: int) -> TdTdiState | None:
        tdi = self._tdi(func_id)
        return None if tdi is None else TD_VIEW[tdi.fsm.state]


__all__ = ["ModuleState", "SpdmState", "StreamState", "TdiState", "TdxModule", "TD_VIEW",
           "MODULE_TRANSITIONS", "SPDM_TRANSITIONS", "STREAM_TRANSITIONS", "TDI_TRANSITIONS"]
