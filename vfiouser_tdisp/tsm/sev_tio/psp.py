"""The AMD PSP as SEV-TIO firmware: TIO commands 0xD0..0xE4 and the TIO guest messages.

Implements :class:`vfiouser_tdisp.firmware.Firmware`.  Each HOST call is one PSP command:
``fid`` = the command id, ``args[0]`` = the guest-physical address of its command buffer
(reference/firmware-abi.md D.2; layouts in :mod:`.abi`).  The PSP never touches the
device: every SPDM object it wants sent goes into the request buffer of the command's
``spdm_ctrl`` and the command returns SPDM_REQUEST (0x32); the host carries the object
over DOE, puts the answer in the response buffer and re-issues the same command, which
resumes the PSP where it stopped (D.5).  The PSP holds the SPDM session, the IDE keys and
the TDI bindings; the SNP guest talks to it through messages sealed with its VMPCK
(:mod:`.messages`), which the host relays with TIO_GUEST_REQUEST.

A table maps each command to a small handler; device, TDI and guest contexts are state
machines (tables in :mod:`.model`, which also holds every modeled choice).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ...events import emit
from ...faults import ARMED, FaultSet, call_matches
from ...firmware import CallClass, FirmwareCall, GuestMemory, GuestMemoryError
from ...fsm import StateMachine
from ...spdm.messages import CapFlags
from ...spdm.requester import (
    RequesterSession,
    SpdmRequest,
    SpdmRequester,
    SpdmRequesterError,
)
from ...tdisp import messages as t
from ...wire import DecodeError, Struct
from ..core import ALL_SUBSTREAMS, IdeKmRequester, PciSigChannel, TdispRequester, parse_report
from . import model
from .abi import (
    MEAS_DIGEST_INFO_FRESH,
    MEAS_DIGEST_INFO_VALID,
    MMIO_VALIDATE_FLAG_VALIDATED,
    PAGE_SIZE,
    SDTE_V,
    SLA_BUFFER_HDR_SIZE,
    SLA_EOL,
    SLA_NULL,
    SLA_PAGE_SIZE_4K,
    SLA_PAGE_TYPE_SCATTER,
    SNP_MSG_HDR_SIZE,
    SNP_PAGE_TYPE_SECRETS,
    SPDM_DOBJ_HDR_OUTPUT_SIZE,
    SPDM_DOBJ_HDR_REQ_SIZE,
    SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST,
    SVM_VMGEXIT_SEV_TIO_OP,
    TIO_DEV_DISCONNECT_FLAG_FORCE,
    TIO_FENCE_DMA_ERROR_FENCED,
    TIO_FENCE_DMA_NOT_FENCED,
    TIO_FENCE_MMIO_FENCED,
    TIO_FENCE_MMIO_NOT_FENCED,
    TIO_MSG_REQUESTS,
    TIO_STATUS_FLAG_TIO_EN,
    TIO_STATUS_FLAG_TIO_INIT_DONE,
    TIO_TDI_BIND_RUN_FORCE,
    TIO_TDI_UNBIND_FLAG_FORCE,
    DobjDataType,
    MmioValidateStatus,
    SdteWriteStatus,
    SevCmd,
    SevRet,
    SlaBufferHdr,
    SnpAddrCmd,
    SnpGuestMsgHdr,
    SnpLaunchUpdateCmd,
    SnpSecretsPage,
    SpdmCtrl,
    SpdmDobjHdrOutput,
    SpdmDobjHdrReq,
    SpdmDobjId,
    TdiStatus,
    TioAsidFenceClearCmd,
    TioAsidFenceStatusCmd,
    TioDevCertsCmd,
    TioDevConnectCmd,
    TioDevCreateCmd,
    TioDevDisconnectCmd,
    TioDevMeasCmd,
    TioDevReclaimCmd,
    TioDevStatusCmd,
    TioGuestRequestCmd,
    TioInitCmd,
    TioMsgMmioConfigReq,
    TioMsgMmioConfigRsp,
    TioMsgMmioValidateReq,
    TioMsgMmioValidateRsp,
    TioMsgSdteWriteReq,
    TioMsgSdteWriteRsp,
    TioMsgTdiInfoRsp,
    TioMsgType,
    TioStatus,
    TioStatusCmd,
    TioTdiBindCmd,
    TioTdiCreateCmd,
    TioTdiReclaimCmd,
    TioTdiStatusCmd,
    TioTdiUnbindCmd,
)
from .messages import GuestMessageError, open_message, seal
from .model import DevState, GuestState, TdiState

# The PSP's GET_CAPABILITIES Flags, without HBEAT_CAP [MODEL]: the PSP runs only for a
# command and no SEV-TIO command sends HEARTBEAT, so it does not ask for heartbeats; the
# device answers HeartbeatPeriod 0 and an idle session lasts (DSP0274 KEY_EXCHANGE_RSP).
PSP_REQUESTER_FLAGS = SpdmRequester.CAP_FLAGS & ~CapFlags.HBEAT_CAP


class PspError(Exception):
    """A command fails with a SEV status; raised inside handlers, returned as RES0."""

    def __init__(self, status: SevRet, why: str = "") -> None:
        super().__init__(f"{status.name}: {why}" if why else status.name)
        self.status = status


def _align32(n: int) -> int:
    return (n + 31) & ~31


# --------------------------------------------------------------------------------------
# SLA buffers in guest memory


class SlaBuffer:
    """One scatter-list buffer: a data page, or a scatter page listing data pages up to
    SLA_EOL; the 0x40-byte sla_buffer_hdr at offset 0 of the concatenation."""

    def __init__(self, mem: GuestMemory, sla: int) -> None:
        if sla == SLA_NULL:
            raise PspError(SevRet.INVALID_ADDRESS, "NULL SLA")
        if (sla >> 1) & 1 != SLA_PAGE_SIZE_4K:
            raise PspError(SevRet.INVALID_PARAM, "2M SLA pages are not supported")
        self.mem, self.sla = mem, sla
        base = sla & ~(PAGE_SIZE - 1) & ((1 << 52) - 1)
        if sla & 1 == SLA_PAGE_TYPE_SCATTER:
            table = mem.read(base, PAGE_SIZE)
            self.pages: list[int] = []
            for i in range(PAGE_SIZE // 8):
                entry = int.from_bytes(table[8 * i:8 * i + 8], "little")
                if entry == SLA_EOL:
                    break
                if entry & 3:
                    raise PspError(SevRet.INVALID_PARAM,
                                   "scatter entry is not a 4K data page")
                self.pages.append(entry & ((1 << 52) - 1))
            else:
                raise PspError(SevRet.INVALID_PARAM, "scatter list without SLA_EOL")
            if not self.pages:
                raise PspError(SevRet.INVALID_PARAM, "empty scatter list")
        else:
            self.pages = [base]
        self.size = len(self.pages) * PAGE_SIZE
        self.hdr = SlaBufferHdr.unpack(self.read(0, SLA_BUFFER_HDR_SIZE))
        if self.hdr.capacity_sz > self.size or self.hdr.capacity_sz < SLA_BUFFER_HDR_SIZE:
            raise PspError(SevRet.INCORRECT_BUFFER_LENGTH,
                           f"capacity_sz {self.hdr.capacity_sz:#x} vs {self.size:#x} mapped")

    @property
    def capacity(self) -> int:
        return int(self.hdr.capacity_sz)

    def read(self, off: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            page, inner = divmod(off, PAGE_SIZE)
            n = min(size, PAGE_SIZE - inner)
            out += self.mem.read(self.pages[page] + inner, n)
            off, size = off + n, size - n
        return bytes(out)

    def write(self, off: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            page, inner = divmod(off + pos, PAGE_SIZE)
            n = min(len(data) - pos, PAGE_SIZE - inner)
            self.mem.write(self.pages[page] + inner, data[pos:pos + n])
            pos += n

    def set_header(self, **changes: Any) -> None:
        self.hdr = self.hdr.replace(**changes)
        self.write(0, self.hdr.pack())


# --------------------------------------------------------------------------------------
# Contexts


@dataclass
class DevCtx:
    sla: int
    device_id: int
    root_port_id: int
    segment_id: int
    fsm: StateMachine[DevState] = field(init=False)
    spdm: SpdmRequester = field(init=False)
    session: RequesterSession | None = None
    cert_slot: int = 0
    stream_id: int = 0
    key_set: int = 0
    cert_chain: bytes = b""
    first_chain_digest: bytes | None = None
    measurements: bytes = b""
    meas_count: int = 0
    tdis: dict[int, TdiCtx] = field(default_factory=dict)
    pending: Pending | None = None

    def __post_init__(self) -> None:
        self.fsm = StateMachine("psp.dev", model.DEV_TABLE, DevState.CREATED,
                                dev_ctx=f"{self.sla:#x}", device_id=f"{self.device_id:#06x}")
        self.spdm = self.new_requester()

    def new_requester(self) -> SpdmRequester:
        """The PSP's SPDM requester for this device, with no connection yet."""
        return SpdmRequester(name=f"psp.{self.device_id:04x}", cap_flags=PSP_REQUESTER_FLAGS)

    def channel(self) -> PciSigChannel:
        if self.session is None:
            raise SpdmRequesterError("no secured session")
        return PciSigChannel(self.spdm, self.session)


@dataclass
class TdiCtx:
    sla: int
    dev: DevCtx
    function_id: int
    fsm: StateMachine[TdiState] = field(init=False)
    gctx: int = 0
    guest_device_id: int = 0
    lock_flags: int = 0
    nonce: bytes = b""
    report: bytes = b""
    ranges: list[t.MMIO_RANGE] = field(default_factory=list)
    report_count: int = 0
    meas_count_at_bind: int = 0
    validated: set[tuple[int, int]] = field(default_factory=set)   # (range_id, page)
    sdte: bytes = bytes(64)
    fenced: bool = False

    def __post_init__(self) -> None:
        self.fsm = StateMachine("psp.tdi", model.TDI_TABLE, TdiState.UNBOUND,
                                tdi_ctx=f"{self.sla:#x}", function_id=f"{self.function_id:#x}")

    @property
    def bound(self) -> bool:
        return self.fsm.state in (TdiState.LOCKED, TdiState.RUN)


@dataclass
class GuestCtx:
    gctx: int
    asid: int
    fsm: StateMachine[GuestState] = field(init=False)
    vmpck: list[bytes] = field(default_factory=list)
    seqno: list[int] = field(default_factory=lambda: [0, 0, 0, 0])

    def __post_init__(self) -> None:
        self.fsm = StateMachine("psp.guest", model.GUEST_TABLE, GuestState.CREATED,
                                gctx=f"{self.gctx:#x}")


DevFlow = Generator[SpdmRequest, bytes, Any]


@dataclass
class Pending:
    """A command whose SPDM_REQUEST loop is under way, or whose output waits for room."""

    cmd: SevCmd
    key: tuple[int, ...]            # the contexts the command names
    flow: DevFlow | None
    request: SpdmRequest | None = None                     # sent, answer awaited
    output: list[tuple[SpdmDobjId, bytes]] | None = None   # done, waiting for room


# --------------------------------------------------------------------------------------
# Device operations as flows (what the PSP says to the device)


def identity_flow(dev: DevCtx) -> DevFlow:
    yield from dev.spdm.init_connection_flow()
    yield from dev.spdm.get_digests_flow()
    chain: bytes = yield from dev.spdm.get_certificate_flow(dev.cert_slot)
    dev.spdm.verify_certificate_chain()
    return chain


def measurements_flow(dev: DevCtx) -> DevFlow:
    if dev.session is None:
        raise SpdmRequesterError("no secured session")
    yield from dev.spdm.get_measurements_flow(signed=True, session=dev.session)
    return bytes(dev.spdm._last_exact)


def connect_flow(dev: DevCtx) -> DevFlow:
    chain = yield from identity_flow(dev)
    digest = hashlib.sha384(chain).digest()
    if dev.first_chain_digest is not None and digest != dev.first_chain_digest:
        raise PspError(SevRet.DEV_CERT_CHANGED, "the device presents another chain")
    dev.session = yield from dev.spdm.start_session_flow()
    meas = yield from measurements_flow(dev)
    km = IdeKmRequester(dev.channel())
    yield from km.query_flow()
    yield from program_keys_flow(km, dev.stream_id, 0)
    return chain, digest, meas


def program_keys_flow(km: IdeKmRequester, stream_id: int, key_set: int) -> DevFlow:
    keys = {(sub, d): (os.urandom(32), os.urandom(8)) for sub, d in ALL_SUBSTREAMS}
    for (sub, d), (key, ifv) in keys.items():
        yield from km.key_prog_flow(stream_id, key_set, d, sub, key, ifv)
    # The root port's key registers get the same keys without DOE traffic ([MODEL]).
    for sub, d in keys:
        yield from km.k_set_flow(True, stream_id, key_set, d, sub)


def disconnect_flow(dev: DevCtx) -> DevFlow:
    km = IdeKmRequester(dev.channel())
    for sub, d in ALL_SUBSTREAMS:
        yield from km.k_set_flow(False, dev.stream_id, dev.key_set, d, sub)
    sess, dev.session = dev.session, None
    if sess is not None:
        yield from dev.spdm.end_session_flow(sess)


def bind_flow(tdi: TdiCtx, run: bool) -> DevFlow:
    tdisp = TdispRequester(tdi.dev.channel())
    fid = tdi.function_id
    yield from tdisp.version_flow(fid)
    yield from tdisp.capabilities_flow(fid)
    nonce: bytes = yield from tdisp.lock_flow(
        fid, flags=tdi.lock_flags, default_stream_id=tdi.dev.stream_id,
        mmio_reporting_offset=model.MMIO_REPORTING_OFFSET)
    report: bytes = yield from tdisp.report_flow(fid)
    state = yield from tdisp.state_flow(fid)
    if state is not t.TdiState.CONFIG_LOCKED:
        raise SpdmRequesterError(f"TDI is {state.name} after LOCK_INTERFACE")
    if run:
        yield from tdisp.start_flow(fid, nonce)
    return nonce, report


def start_flow(tdi: TdiCtx) -> DevFlow:
    yield from TdispRequester(tdi.dev.channel()).start_flow(tdi.function_id, tdi.nonce)
    return None


def unbind_flow(tdi: TdiCtx) -> DevFlow:
    yield from TdispRequester(tdi.dev.channel()).stop_flow(tdi.function_id)


def report_flow(tdi: TdiCtx) -> DevFlow:
    report: bytes = yield from TdispRequester(tdi.dev.channel()).report_flow(tdi.function_id)
    return report


# --------------------------------------------------------------------------------------
# The PSP


Handler = Callable[["Psp", Any, GuestMemory], SevRet]
COMMANDS: dict[SevCmd, tuple[type[Struct], Handler]] = {}


def command(cmd: SevCmd, struct: type[Struct]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[cmd] = (struct, fn)
        return fn
    return register


class Psp:
    """The PSP: TIO platform state, device / TDI / guest contexts, one lock."""

    abi_id = model.ABI_ID
    abi_version = model.ABI_VERSION

    def __init__(self) -> None:
        self.tio_en = True      # [MODEL] SNP_INIT_EX(tio_en) happened before us
        self.platform = StateMachine("psp.platform", model.PLATFORM_TABLE,
                                     model.PlatformState.UNINIT)
        self.devs: dict[int, DevCtx] = {}
        self.tdis: dict[int, TdiCtx] = {}
        self.guests: dict[int, GuestCtx] = {}
        # What SEV_TIO_OP / SEV_TIO_GUEST_REQUEST exits reach: (exit code, args) -> regs.
        self.hypervisor: Callable[[int, tuple[int, ...]], tuple[int, ...]] | None = None
        # Fault injection (faults.py): fw-busy.
        self.faults: FaultSet = ARMED
        self._lock = threading.RLock()

    # -- Firmware ------------------------------------------------------------------------
    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        if call.cls == CallClass.GUEST:
            return self._guest_exit(call)
        with self._lock:
            status = self.command(call.fid, call.args[0] if call.args else 0, mem)
        return (int(status),)

    def _guest_exit(self, call: FirmwareCall) -> tuple[int, ...]:
        if call.fid not in (SVM_VMGEXIT_SEV_TIO_OP, SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST) \
                or self.hypervisor is None:
            return (int(SevRet.UNSUPPORTED),)
        return self.hypervisor(call.fid, call.args)

    def command(self, cmd_id: int, paddr: int, mem: GuestMemory) -> SevRet:
        try:
            cmd = SevCmd(cmd_id)
            struct, handler = COMMANDS[cmd]
        except (ValueError, KeyError):
            emit("psp.command", cmd=f"{cmd_id:#x}", status=SevRet.INVALID_COMMAND.name)
            return SevRet.INVALID_COMMAND
        try:
            size = struct.fixed_size()
            if cmd not in (SevCmd.SNP_GCTX_CREATE, SevCmd.SNP_LAUNCH_UPDATE):
                length = int.from_bytes(mem.read(paddr, 4), "little")
                if length != size:
                    raise PspError(SevRet.INVALID_LEN, f"length {length:#x}, expected {size:#x}")
            buf = struct.unpack(mem.read(paddr, size))
            if cmd not in (SevCmd.TIO_STATUS, SevCmd.TIO_INIT, SevCmd.SNP_GCTX_CREATE,
                           SevCmd.SNP_LAUNCH_UPDATE) and \
                    self.platform.state is not model.PlatformState.INIT:
                raise PspError(SevRet.INVALID_PLATFORM_STATE, "TIO_INIT first")
            status = handler(self, buf, mem)
        except PspError as exc:
            status = exc.status
            emit("psp.refused", cmd=cmd.name, status=status.name, why=str(exc))
        except GuestMemoryError as exc:
            status = SevRet.INVALID_ADDRESS
            emit("psp.refused", cmd=cmd.name, status=status.name, why=str(exc))
        except DecodeError as exc:
            status = SevRet.INVALID_PARAM
            emit("psp.refused", cmd=cmd.name, status=status.name, why=str(exc))
        emit("psp.command", cmd=cmd.name, status=status.name)
        return status

    # -- lookups -------------------------------------------------------------------------
    def dev(self, sla: int) -> DevCtx:
        dev = self.devs.get(sla)
        if dev is None:
            raise PspError(SevRet.INVALID_DEV_CTX, f"no device context at SLA {sla:#x}")
        return dev

    def tdi(self, dev: DevCtx, sla: int) -> TdiCtx:
        tdi = self.tdis.get(sla)
        if tdi is None or tdi.dev is not dev:
            raise PspError(SevRet.INVALID_TDI_CTX, f"no TDI context at SLA {sla:#x}")
        return tdi

    def guest(self, gctx: int) -> GuestCtx:
        g = self.guests.get(gctx)
        if g is None:
            raise PspError(SevRet.INVALID_GUEST, f"no guest context at {gctx:#x}")
        return g

    # -- the SPDM_REQUEST loop -------------------------------------------------------------
    def run(self, dev: DevCtx, cmd: SevCmd, key: tuple[int, ...], ctrl: SpdmCtrl,
            mem: GuestMemory, start: Callable[[], DevFlow] | None,
            finish: Callable[[Any], list[tuple[SpdmDobjId, bytes]]],
            fail: Callable[[BaseException], None]) -> SevRet:
        """Start or resume ``cmd`` on ``dev``: run its flow to the next object to send
        (SPDM_REQUEST) or to its end (output written, SUCCESS).  ``start`` moves the
        contexts' state machines and returns the flow; it runs only once the buffers
        passed their checks, so an EXPAND_BUFFER_LENGTH_REQUEST leaves every state alone."""
        for sla in (ctrl.req, ctrl.resp, ctrl.output):
            SlaBuffer(mem, sla)       # reachable and well-formed before anything moves
        if self.faults.take("fw-busy", f"psp:{cmd.name}",
                            lambda a: call_matches(a["call"], cmd.name)):
            # fw-busy: one EXPAND_BUFFER_LENGTH_REQUEST more than the command needs,
            # asking a page more of output buffer; nothing else done (the host grows
            # the buffer and issues the command again)
            grow = SlaBuffer(mem, ctrl.output)
            grow.set_header(capacity_sz=grow.capacity + PAGE_SIZE)
            return SevRet.EXPAND_BUFFER_LENGTH_REQUEST
        scratch = SlaBuffer(mem, ctrl.scratch)
        if scratch.capacity < model.SPDM_SCRATCH_SIZE_MIN:
            scratch.set_header(capacity_sz=model.SPDM_SCRATCH_SIZE_MIN)
            return SevRet.EXPAND_BUFFER_LENGTH_REQUEST
        pending = dev.pending
        if pending is not None and (pending.cmd, pending.key) != (cmd, key):
            raise PspError(SevRet.INVALID_DEV_STATE,
                           f"{pending.cmd.name} is waiting for its SPDM response")
        value: bytes | None = None
        if pending is None:
            if start is None:
                raise PspError(SevRet.INVALID_DEV_STATE, "nothing to resume")
            pending = dev.pending = Pending(cmd, key, start())
        try:
            if pending.request is not None:
                # a malformed RESP object (INVALID_PARAM) or none at all (the host could
                # not reach the device: ERR_IN_DEV_CONN) abandons the loop like a bad answer
                value = self._response(mem, ctrl, pending.request)
            if pending.output is None:
                assert pending.flow is not None
                try:
                    req = pending.flow.send(value) if value is not None \
                        else next(pending.flow)
                except StopIteration as done:
                    pending.request = None
                    pending.output = finish(done.value)
                else:
                    pending.request = req
                    self._request(mem, ctrl, req)
                    return SevRet.SPDM_REQUEST
            need = self._output_size(pending.output)
            out = SlaBuffer(mem, ctrl.output) if pending.output else None
            if out is not None and out.capacity < need:
                out.set_header(capacity_sz=(need + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
                return SevRet.EXPAND_BUFFER_LENGTH_REQUEST
            if out is not None:
                self._write_output(out, dev, pending.output)
            dev.pending = None
            return SevRet.SUCCESS
        except PspError as exc:
            dev.pending = None
            fail(exc)
            raise
        except Exception as exc:  # the device, the requester or the host failed
            dev.pending = None
            emit("psp.device_failed", cmd=cmd.name, error=repr(exc))
            fail(exc)
            code = getattr(exc, "error_code", None)
            return SevRet.SPDM_ERROR if code is not None else SevRet.ERR_IN_DEV_CONN

    def _request(self, mem: GuestMemory, ctrl: SpdmCtrl, req: SpdmRequest) -> None:
        buf = SlaBuffer(mem, ctrl.req)
        total = SPDM_DOBJ_HDR_REQ_SIZE + len(req.payload)
        if SLA_BUFFER_HDR_SIZE + total > buf.capacity:
            raise PspError(SevRet.RESPONSE_TOO_LARGE, "request does not fit the buffer")
        hdr = SpdmDobjHdrReq(id=SpdmDobjId.REQ, length=total,
                             data_type=DobjDataType.SECURE_SPDM if req.secured
                             else DobjDataType.SPDM, reserved2=bytes(5))
        buf.write(SLA_BUFFER_HDR_SIZE, hdr.pack() + req.payload)
        buf.set_header(payload_sz=_align32(total))

    def _response(self, mem: GuestMemory, ctrl: SpdmCtrl, req: SpdmRequest) -> bytes:
        buf = SlaBuffer(mem, ctrl.resp)
        hdr = SpdmDobjHdrReq.unpack(buf.read(SLA_BUFFER_HDR_SIZE, SPDM_DOBJ_HDR_REQ_SIZE))
        want = DobjDataType.SECURE_SPDM if req.secured else DobjDataType.SPDM
        if hdr.id != SpdmDobjId.RESP or hdr.data_type != want:
            raise PspError(SevRet.INVALID_PARAM, f"response object id {hdr.id}, "
                           f"data_type {hdr.data_type}")
        if hdr.length > buf.capacity - SLA_BUFFER_HDR_SIZE:
            raise PspError(SevRet.RESPONSE_TOO_LARGE, f"response length {hdr.length:#x}")
        if hdr.length <= SPDM_DOBJ_HDR_REQ_SIZE:
            raise SpdmRequesterError("the host brought no response")
        return buf.read(SLA_BUFFER_HDR_SIZE + SPDM_DOBJ_HDR_REQ_SIZE,
                        hdr.length - SPDM_DOBJ_HDR_REQ_SIZE)

    @staticmethod
    def _output_size(objs: list[tuple[SpdmDobjId, bytes]]) -> int:
        return SLA_BUFFER_HDR_SIZE + sum(SPDM_DOBJ_HDR_OUTPUT_SIZE + _align32(len(d))
                                         for _, d in objs)

    @staticmethod
    def _write_output(out: SlaBuffer, dev: DevCtx, objs: list[tuple[SpdmDobjId, bytes]]) -> None:
        off = SLA_BUFFER_HDR_SIZE
        for obj_id, data in objs:
            # [MODEL] length = header + data exactly; the next object starts 32-aligned
            length = SPDM_DOBJ_HDR_OUTPUT_SIZE + len(data)
            hdr = SpdmDobjHdrOutput(id=obj_id, length=length, reserved1=bytes(6),
                                    device_id=dev.device_id, segment_id=dev.segment_id,
                                    type=model.OUTPUT_TYPE_SPDM, reserved2=bytes(12))
            out.write(off, hdr.pack() + data.ljust(_align32(len(data)), b"\0"))
            off += _align32(length)
        out.set_header(payload_sz=off - SLA_BUFFER_HDR_SIZE)


# -- platform --------------------------------------------------------------------------


@command(SevCmd.TIO_STATUS, TioStatusCmd)
def tio_status(psp: Psp, cmd: TioStatusCmd, mem: GuestMemory) -> SevRet:
    flags = (TIO_STATUS_FLAG_TIO_EN if psp.tio_en else 0) | \
        (TIO_STATUS_FLAG_TIO_INIT_DONE
         if psp.platform.state is model.PlatformState.INIT else 0)
    out = TioStatus(length=TioStatus.fixed_size(), flags=flags,
                    spdm_req_size_min=model.SPDM_REQ_SIZE_MIN,
                    spdm_req_size_max=model.SPDM_REQ_SIZE_MAX,
                    spdm_scratch_size_min=model.SPDM_SCRATCH_SIZE_MIN,
                    spdm_scratch_size_max=model.SPDM_SCRATCH_SIZE_MAX,
                    spdm_out_size_min=model.SPDM_OUT_SIZE_MIN,
                    spdm_out_size_max=model.SPDM_OUT_SIZE_MAX,
                    spdm_rsp_size_min=model.SPDM_RSP_SIZE_MIN,
                    spdm_rsp_size_max=model.SPDM_RSP_SIZE_MAX,
                    devctx_size=model.DEVCTX_SIZE, tdictx_size=model.TDICTX_SIZE,
                    tio_crypto_alg=model.TIO_CRYPTO_ALG, reserved2=bytes(12))
    mem.write(cmd.status_paddr, out.pack())
    return SevRet.SUCCESS


@command(SevCmd.TIO_INIT, TioInitCmd)
def tio_init(psp: Psp, cmd: TioInitCmd, mem: GuestMemory) -> SevRet:
    if not psp.tio_en or not psp.platform.can("tio_init"):
        raise PspError(SevRet.INVALID_PLATFORM_STATE, "TIO already initialised")
    psp.platform.fire("tio_init")
    return SevRet.SUCCESS


@command(SevCmd.SNP_GCTX_CREATE, SnpAddrCmd)
def snp_gctx_create(psp: Psp, cmd: SnpAddrCmd, mem: GuestMemory) -> SevRet:
    if cmd.address & (PAGE_SIZE - 1):
        raise PspError(SevRet.INVALID_ADDRESS, "guest context page not 4K aligned")
    if cmd.address in psp.guests:
        raise PspError(SevRet.IN_USE, "guest context exists")
    mem.read(cmd.address, PAGE_SIZE)
    psp.guests[cmd.address] = GuestCtx(cmd.address, asid=len(psp.guests) + 1)
    emit("psp.guest_created", gctx=f"{cmd.address:#x}")
    return SevRet.SUCCESS


@command(SevCmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdateCmd)
def snp_launch_update(psp: Psp, cmd: SnpLaunchUpdateCmd, mem: GuestMemory) -> SevRet:
    g = psp.guest(cmd.gctx_paddr)
    if (cmd.page_info >> 1) & 0x7 != SNP_PAGE_TYPE_SECRETS:
        raise PspError(SevRet.UNSUPPORTED, "only the SECRETS page type is modeled")
    if not g.fsm.can("secrets"):
        raise PspError(SevRet.INVALID_GUEST_STATE, "secrets page already written")
    g.vmpck = [os.urandom(32) for _ in range(4)]
    page = SnpSecretsPage(version=model.SECRETS_PAGE_VERSION, reserved1=bytes(4),
                          gosvw=bytes(16), vmpck0=g.vmpck[0], vmpck1=g.vmpck[1],
                          vmpck2=g.vmpck[2], vmpck3=g.vmpck[3]).pack()
    mem.write(cmd.address, page.ljust(PAGE_SIZE, b"\0"))
    g.fsm.fire("secrets")
    return SevRet.SUCCESS


# -- device context --------------------------------------------------------------------


def _ctx_buffer(mem: GuestMemory, sla: int, size: int) -> None:
    if SlaBuffer(mem, sla).capacity < size:
        raise PspError(SevRet.INCORRECT_BUFFER_LENGTH, f"context buffer below {size:#x}")


@command(SevCmd.TIO_DEV_CREATE, TioDevCreateCmd)
def dev_create(psp: Psp, cmd: TioDevCreateCmd, mem: GuestMemory) -> SevRet:
    if cmd.dev_ctx_sla in psp.devs or cmd.dev_ctx_sla in psp.tdis:
        raise PspError(SevRet.IN_USE, "context buffer in use")
    if any(d.device_id == cmd.device_id and d.segment_id == cmd.segment_id
           for d in psp.devs.values()):
        raise PspError(SevRet.IN_USE, f"device {cmd.device_id:#06x} has a context")
    _ctx_buffer(mem, cmd.dev_ctx_sla, model.DEVCTX_SIZE)
    psp.devs[cmd.dev_ctx_sla] = DevCtx(cmd.dev_ctx_sla, cmd.device_id, cmd.root_port_id,
                                       cmd.segment_id)
    emit("psp.dev_created", dev_ctx=f"{cmd.dev_ctx_sla:#x}", device_id=f"{cmd.device_id:#06x}")
    return SevRet.SUCCESS


@command(SevCmd.TIO_DEV_CONNECT, TioDevConnectCmd)
def dev_connect(psp: Psp, cmd: TioDevConnectCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    ctrl = SpdmCtrl.unpack(cmd.spdm_ctrl)
    start = None
    if dev.pending is None:
        if dev.fsm.state is DevState.ERROR:
            raise PspError(SevRet.RECLAIM_REQUIRED, "device context in ERROR")
        if dev.fsm.state is not DevState.CREATED:
            raise PspError(SevRet.INVALID_DEV_STATE, f"device is {dev.fsm.state.name}")
        if not cmd.tc_mask & 1:
            raise PspError(SevRet.INVALID_PARAM, "tc_mask bit 0 (TC0) is required")
        dev.cert_slot, dev.stream_id = cmd.cert_slot, cmd.ide_stream_id[0]
        dev.spdm = dev.new_requester()
        def start() -> DevFlow:
            dev.fsm.fire("connect", cert_slot=cmd.cert_slot, stream_id=dev.stream_id)
            return connect_flow(dev)

    def finish(result: Any) -> list[tuple[SpdmDobjId, bytes]]:
        chain, digest, meas = result
        dev.cert_chain, dev.measurements = chain, meas
        dev.meas_count += 1
        if dev.first_chain_digest is None:
            dev.first_chain_digest = digest
        dev.fsm.fire("connected")
        return [(SpdmDobjId.CERTIFICATE, chain), (SpdmDobjId.MEASUREMENT, meas)]

    def fail(exc: BaseException) -> None:
        dev.session = None
        dev.fsm.fire("failed", error=repr(exc))

    return psp.run(dev, SevCmd.TIO_DEV_CONNECT, (dev.sla,), ctrl, mem, start, finish, fail)


@command(SevCmd.TIO_DEV_DISCONNECT, TioDevDisconnectCmd)
def dev_disconnect(psp: Psp, cmd: TioDevDisconnectCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    if cmd.flags & TIO_DEV_DISCONNECT_FLAG_FORCE:
        if dev.pending is not None and dev.pending.flow is not None:
            dev.pending.flow.close()
        dev.pending = None
        for tdi in dev.tdis.values():
            if tdi.fsm.can("force_unbind"):
                tdi.fenced = tdi.fenced or tdi.fsm.state is TdiState.RUN
                tdi.fsm.fire("force_unbind", why="device force-disconnected")
        dev.session = None
        if dev.fsm.state is not DevState.CREATED:
            dev.fsm.fire("force_disconnect")
        return SevRet.SUCCESS
    ctrl = SpdmCtrl.unpack(cmd.spdm_ctrl)
    start = None
    if dev.pending is None:
        if any(tdi.fsm.state is not TdiState.UNBOUND for tdi in dev.tdis.values()):
            raise PspError(SevRet.IN_USE, "a TDI of the device is bound")
        if dev.fsm.state is not DevState.CONNECTED:
            raise PspError(SevRet.INVALID_DEV_STATE, f"device is {dev.fsm.state.name}")
        def start() -> DevFlow:
            dev.fsm.fire("disconnect")
            return disconnect_flow(dev)

    def finish(_: Any) -> list[tuple[SpdmDobjId, bytes]]:
        dev.fsm.fire("disconnected")
        return []

    def fail(exc: BaseException) -> None:
        dev.session = None
        dev.fsm.fire("failed", error=repr(exc))

    return psp.run(dev, SevCmd.TIO_DEV_DISCONNECT, (dev.sla,), ctrl, mem, start, finish, fail)


@command(SevCmd.TIO_DEV_RECLAIM, TioDevReclaimCmd)
def dev_reclaim(psp: Psp, cmd: TioDevReclaimCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    if dev.tdis:
        raise PspError(SevRet.IN_USE, f"{len(dev.tdis)} TDI context(s) of the device exist")
    if dev.fsm.state not in (DevState.CREATED, DevState.ERROR):
        raise PspError(SevRet.INVALID_DEV_STATE, f"device is {dev.fsm.state.name}")
    del psp.devs[dev.sla]
    emit("psp.dev_reclaimed", dev_ctx=f"{dev.sla:#x}")
    return SevRet.SUCCESS


def _connected(dev: DevCtx) -> None:
    if dev.fsm.state is not DevState.CONNECTED:
        raise PspError(SevRet.INVALID_DEV_STATE, f"device is {dev.fsm.state.name}")


@command(SevCmd.TIO_DEV_CERTIFICATES, TioDevCertsCmd)
def dev_certificates(psp: Psp, cmd: TioDevCertsCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    start = None
    if dev.pending is None:
        _connected(dev)

        def start() -> DevFlow:
            chain: bytes = yield from dev.spdm.get_certificate_flow(dev.cert_slot)
            return chain

    def finish(chain: bytes) -> list[tuple[SpdmDobjId, bytes]]:
        if hashlib.sha384(chain).digest() != dev.first_chain_digest:
            dev.fsm.fire("failed", why="certificate chain changed")
            raise PspError(SevRet.DEV_CERT_CHANGED, "the device presents another chain")
        dev.cert_chain = chain
        return [(SpdmDobjId.CERTIFICATE, chain)]

    return psp.run(dev, SevCmd.TIO_DEV_CERTIFICATES, (dev.sla,), SpdmCtrl.unpack(cmd.spdm_ctrl),
                   mem, start, finish, lambda exc: None)


@command(SevCmd.TIO_DEV_MEASUREMENTS, TioDevMeasCmd)
def dev_measurements(psp: Psp, cmd: TioDevMeasCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    start = None
    if dev.pending is None:
        _connected(dev)
        emit("psp.measurements", dev_ctx=f"{dev.sla:#x}", meas_nonce=cmd.meas_nonce.hex(),
             raw=bool(cmd.flags & 1))

        def start() -> DevFlow:
            return measurements_flow(dev)

    def finish(meas: bytes) -> list[tuple[SpdmDobjId, bytes]]:
        dev.measurements = meas
        dev.meas_count += 1
        return [(SpdmDobjId.MEASUREMENT, meas)]

    return psp.run(dev, SevCmd.TIO_DEV_MEASUREMENTS, (dev.sla,), SpdmCtrl.unpack(cmd.spdm_ctrl),
                   mem, start, finish, lambda exc: None)


@command(SevCmd.TIO_ROLL_KEY, TioDevCertsCmd)
def roll_key(psp: Psp, cmd: TioDevCertsCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    start = None
    if dev.pending is None:
        _connected(dev)

        def start() -> DevFlow:
            return program_keys_flow(IdeKmRequester(dev.channel()), dev.stream_id,
                                     1 - dev.key_set)

    def finish(_: Any) -> list[tuple[SpdmDobjId, bytes]]:
        dev.key_set = 1 - dev.key_set
        emit("psp.key_rolled", dev_ctx=f"{dev.sla:#x}", key_set=dev.key_set)
        return []

    return psp.run(dev, SevCmd.TIO_ROLL_KEY, (dev.sla,), SpdmCtrl.unpack(cmd.spdm_ctrl), mem,
                   start, finish, lambda exc: None)


DEV_STATES = list(DevState)
TDI_STATES = list(TdiState)


@command(SevCmd.TIO_DEV_STATUS, TioDevStatusCmd)
def dev_status(psp: Psp, cmd: TioDevStatusCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    out = model.DevStatusOut(length=model.DevStatusOut.fixed_size(),
                             state=DEV_STATES.index(dev.fsm.state),
                             tdi_count=len(dev.tdis), stream_id=dev.stream_id,
                             key_set=dev.key_set, cert_slot=dev.cert_slot, reserved=bytes(1),
                             certs_digest=dev.first_chain_digest or bytes(48))
    mem.write(cmd.status_paddr, out.pack())
    return SevRet.SUCCESS


# -- TDI context -----------------------------------------------------------------------


@command(SevCmd.TIO_TDI_CREATE, TioTdiCreateCmd)
def tdi_create(psp: Psp, cmd: TioTdiCreateCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    if dev.pending is not None:
        raise PspError(SevRet.INVALID_DEV_STATE, "a command is waiting for SPDM")
    _connected(dev)
    if cmd.tdi_ctx_sla in psp.tdis or cmd.tdi_ctx_sla in psp.devs:
        raise PspError(SevRet.IN_USE, "context buffer in use")
    if any(tdi.function_id == cmd.function_id for tdi in dev.tdis.values()):
        raise PspError(SevRet.IN_USE, f"TDI {cmd.function_id:#x} has a context")
    _ctx_buffer(mem, cmd.tdi_ctx_sla, model.TDICTX_SIZE)
    tdi = TdiCtx(cmd.tdi_ctx_sla, dev, cmd.function_id)
    psp.tdis[tdi.sla] = dev.tdis[tdi.sla] = tdi
    emit("psp.tdi_created", tdi_ctx=f"{tdi.sla:#x}", function_id=f"{cmd.function_id:#x}")
    return SevRet.SUCCESS


@command(SevCmd.TIO_TDI_RECLAIM, TioTdiReclaimCmd)
def tdi_reclaim(psp: Psp, cmd: TioTdiReclaimCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    tdi = psp.tdi(dev, cmd.tdi_ctx_sla)
    if tdi.fsm.state not in (TdiState.UNBOUND, TdiState.ERROR):
        raise PspError(SevRet.INVALID_TDI_STATE, f"TDI is {tdi.fsm.state.name}")
    del psp.tdis[tdi.sla], dev.tdis[tdi.sla]
    emit("psp.tdi_reclaimed", tdi_ctx=f"{tdi.sla:#x}")
    return SevRet.SUCCESS


@command(SevCmd.TIO_TDI_BIND, TioTdiBindCmd)
def tdi_bind(psp: Psp, cmd: TioTdiBindCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    tdi = psp.tdi(dev, cmd.tdi_ctx_sla)
    run = bool(cmd.run_flags & TIO_TDI_BIND_RUN_FORCE)
    start = None
    if dev.pending is None:
        _connected(dev)
        psp.guest(cmd.gctx_paddr)
        if tdi.fsm.state is TdiState.ERROR:
            raise PspError(SevRet.RECLAIM_REQUIRED, "TDI context in ERROR")
        if cmd.tdisp_lock_if_flags & ~model.LOCK_FLAGS_ALLOWED:
            raise PspError(SevRet.INVALID_PARAM, "reserved lock flags set")
        if tdi.fsm.state is TdiState.LOCKED and run:
            # SEV_TIO_OP RUN: the hypervisor re-issues the bind with RUN_FORCE
            if (cmd.gctx_paddr, cmd.guest_device_id) != (tdi.gctx, tdi.guest_device_id):
                raise PspError(SevRet.INVALID_TDI, "bound to another guest or RID")
            def start() -> DevFlow:
                tdi.fsm.fire("start")
                return start_flow(tdi)
        elif tdi.fsm.state is TdiState.UNBOUND:
            if any(o.guest_device_id == cmd.guest_device_id and o.gctx == cmd.gctx_paddr
                   and o.bound for o in psp.tdis.values()):
                raise PspError(SevRet.IN_USE, "guest_device_id used by another TDI")
            def start() -> DevFlow:
                tdi.gctx, tdi.guest_device_id = cmd.gctx_paddr, cmd.guest_device_id
                tdi.lock_flags, tdi.validated = cmd.tdisp_lock_if_flags, set()
                tdi.sdte = bytes(64)
                tdi.fsm.fire("bind", gctx=f"{cmd.gctx_paddr:#x}",
                             guest_device_id=f"{cmd.guest_device_id:#06x}", run=run)
                return bind_flow(tdi, run)
        else:
            raise PspError(SevRet.INVALID_TDI_STATE, f"TDI is {tdi.fsm.state.name}")

    def finish(result: Any) -> list[tuple[SpdmDobjId, bytes]]:
        if tdi.fsm.state is TdiState.STARTING:
            tdi.fsm.fire("started")
            return []
        tdi.nonce, report = result
        _new_report(tdi, report)
        tdi.meas_count_at_bind = dev.meas_count
        if run:
            tdi.fsm.fire("start")
            tdi.fsm.fire("started")
        else:
            tdi.fsm.fire("locked")
        return [(SpdmDobjId.REPORT, report)]

    def fail(exc: BaseException) -> None:
        tdi.fsm.fire("failed", error=repr(exc))

    return psp.run(dev, SevCmd.TIO_TDI_BIND, (dev.sla, tdi.sla), SpdmCtrl.unpack(cmd.spdm_ctrl),
                   mem, start, finish, fail)


def _new_report(tdi: TdiCtx, report: bytes) -> None:
    tdi.report, tdi.ranges = report, list(parse_report(report).mmio_range)
    tdi.report_count += 1


@command(SevCmd.TIO_TDI_UNBIND, TioTdiUnbindCmd)
def tdi_unbind(psp: Psp, cmd: TioTdiUnbindCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    tdi = psp.tdi(dev, cmd.tdi_ctx_sla)
    if cmd.flags & TIO_TDI_UNBIND_FLAG_FORCE:
        if dev.pending is not None and dev.pending.key == (dev.sla, tdi.sla):
            if dev.pending.flow is not None:
                dev.pending.flow.close()
            dev.pending = None
        if not tdi.fsm.can("force_unbind"):
            raise PspError(SevRet.INVALID_TDI_STATE, f"TDI is {tdi.fsm.state.name}")
        tdi.fenced = tdi.fenced or tdi.fsm.state is TdiState.RUN
        tdi.fsm.fire("force_unbind")
        return SevRet.SUCCESS
    start = None
    if dev.pending is None:
        if not tdi.fsm.can("unbind"):
            raise PspError(SevRet.INVALID_TDI_STATE, f"TDI is {tdi.fsm.state.name}")
        if cmd.gctx_paddr != tdi.gctx:
            raise PspError(SevRet.INVALID_GUEST, "TDI is bound to another guest")
        _connected(dev)
        def start() -> DevFlow:
            tdi.fsm.fire("unbind")
            return unbind_flow(tdi)

    def finish(_: Any) -> list[tuple[SpdmDobjId, bytes]]:
        tdi.fsm.fire("unbound")
        return []

    def fail(exc: BaseException) -> None:
        tdi.fsm.fire("failed", error=repr(exc))

    return psp.run(dev, SevCmd.TIO_TDI_UNBIND, (dev.sla, tdi.sla),
                   SpdmCtrl.unpack(cmd.spdm_ctrl), mem, start, finish, fail)


@command(SevCmd.TIO_TDI_REPORT, TioTdiUnbindCmd)
def tdi_report(psp: Psp, cmd: TioTdiUnbindCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    tdi = psp.tdi(dev, cmd.tdi_ctx_sla)
    start = None
    if dev.pending is None:
        _connected(dev)
        if not tdi.bound:
            raise PspError(SevRet.INVALID_TDI_STATE, f"TDI is {tdi.fsm.state.name}")
        if cmd.gctx_paddr != tdi.gctx:
            raise PspError(SevRet.INVALID_GUEST, "TDI is bound to another guest")

        def start() -> DevFlow:
            return report_flow(tdi)

    def finish(report: bytes) -> list[tuple[SpdmDobjId, bytes]]:
        _new_report(tdi, report)
        return [(SpdmDobjId.REPORT, report)]

    def fail(exc: BaseException) -> None:
        # [MODEL] the device would not report the TDI (TDISP ERROR): it is no longer
        # the interface the guest accepted
        if tdi.fsm.can("failed"):
            tdi.fsm.fire("failed", error=repr(exc))

    return psp.run(dev, SevCmd.TIO_TDI_REPORT, (dev.sla, tdi.sla),
                   SpdmCtrl.unpack(cmd.spdm_ctrl), mem, start, finish, fail)


def guest_status(tdi: TdiCtx | None) -> TdiStatus:
    if tdi is None or tdi.fsm.state is TdiState.ERROR:
        return TdiStatus.INVALID
    return TdiStatus.BOUND if tdi.bound else TdiStatus.UNBOUND


@command(SevCmd.TIO_TDI_STATUS, TioTdiStatusCmd)
def tdi_status(psp: Psp, cmd: TioTdiStatusCmd, mem: GuestMemory) -> SevRet:
    tdi = psp.tdi(psp.dev(cmd.dev_ctx_sla), cmd.tdi_ctx_sla)
    out = model.TdiStatusOut(length=model.TdiStatusOut.fixed_size(),
                             state=TDI_STATES.index(tdi.fsm.state),
                             guest_status=guest_status(tdi),
                             guest_device_id=tdi.guest_device_id,
                             report_count=tdi.report_count, gctx_paddr=tdi.gctx,
                             reserved=bytes(8))
    mem.write(cmd.status_paddr, out.pack())
    return SevRet.SUCCESS


@command(SevCmd.TIO_TDI_INFO, TioTdiStatusCmd)
def tdi_info(psp: Psp, cmd: TioTdiStatusCmd, mem: GuestMemory) -> SevRet:
    tdi = psp.tdi(psp.dev(cmd.dev_ctx_sla), cmd.tdi_ctx_sla)
    mem.write(cmd.status_paddr, tdi_info_rsp(tdi, tdi.guest_device_id).pack())
    return SevRet.SUCCESS


@command(SevCmd.TIO_ASID_FENCE_CLEAR, TioAsidFenceClearCmd)
def asid_fence_clear(psp: Psp, cmd: TioAsidFenceClearCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    psp.guest(cmd.gctx_paddr)
    for tdi in dev.tdis.values():
        if tdi.gctx == cmd.gctx_paddr:
            tdi.fenced = False
    return SevRet.SUCCESS


@command(SevCmd.TIO_ASID_FENCE_STATUS, TioAsidFenceStatusCmd)
def asid_fence_status(psp: Psp, cmd: TioAsidFenceStatusCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    guests = [g for g in psp.guests.values() if g.asid == cmd.asid]
    if not guests:
        raise PspError(SevRet.INVALID_PARAM, f"no guest with ASID {cmd.asid}")
    fenced = any(tdi.fenced for tdi in dev.tdis.values() if tdi.gctx == guests[0].gctx)
    status = (TIO_FENCE_DMA_ERROR_FENCED | TIO_FENCE_MMIO_FENCED << 2) if fenced else \
        (TIO_FENCE_DMA_NOT_FENCED | TIO_FENCE_MMIO_NOT_FENCED << 2)
    mem.write(cmd.status_pa, status.to_bytes(8, "little"))
    return SevRet.SUCCESS


# -- guest messages --------------------------------------------------------------------


def tdi_info_rsp(tdi: TdiCtx | None, gdid: int) -> TioMsgTdiInfoRsp:
    if tdi is None or not tdi.report:
        return TioMsgTdiInfoRsp(guest_device_id=gdid, tdi_status=guest_status(tdi),
                                reserved1=bytes(12), certs_digest=bytes(48),
                                meas_digest=bytes(48), interface_report_digest=bytes(48),
                                reserved2=bytes(8))
    dev = tdi.dev
    conn = dev.spdm.conn
    algos = (conn.asym.bit if conn.asym else 0) | ((conn.hash.bit if conn.hash else 0) << 32)
    info = meas_digest_info(tdi)
    return TioMsgTdiInfoRsp(
        guest_device_id=gdid, tdi_status=guest_status(tdi), reserved1=bytes(12),
        meas_digest_info=info, lock_flags=tdi.lock_flags, spdm_algos=algos,
        certs_digest=hashlib.sha384(dev.cert_chain).digest(),
        meas_digest=hashlib.sha384(dev.measurements).digest(),
        interface_report_digest=hashlib.sha384(tdi.report).digest(),
        tdi_report_count=tdi.report_count, reserved2=bytes(8))


def meas_digest_info(tdi: TdiCtx) -> int:
    if not tdi.dev.measurements:
        return 0
    fresh = tdi.dev.meas_count > tdi.meas_count_at_bind
    return MEAS_DIGEST_INFO_VALID | (MEAS_DIGEST_INFO_FRESH if fresh else 0)


def _range(tdi: TdiCtx, range_id: int) -> t.MMIO_RANGE | None:
    return next((r for r in tdi.ranges if r.range_id == range_id), None)


def mmio_validate(tdi: TdiCtx | None, req: TioMsgMmioValidateReq) -> TioMsgMmioValidateRsp:
    def answer(status: MmioValidateStatus, changed: bool = False) -> TioMsgMmioValidateRsp:
        return TioMsgMmioValidateRsp(
            guest_device_id=req.guest_device_id, status=status, reserved1=bytes(12),
            subrange_base=req.subrange_base, subrange_page_count=req.subrange_page_count,
            range_offset=req.range_offset, flags=1 if changed else 0,
            range_id=req.range_id, reserved2=bytes(12))

    validate = bool(req.flags & MMIO_VALIDATE_FLAG_VALIDATED)
    if tdi is None or tdi.fsm.state is TdiState.ERROR:
        return answer(MmioValidateStatus.INVALID_TDI)
    if validate and not tdi.bound:
        return answer(MmioValidateStatus.TDI_UNBOUND)
    if req.subrange_base & (PAGE_SIZE - 1):
        return answer(MmioValidateStatus.NOT_4K)
    rng = _range(tdi, req.range_id)
    if rng is None:
        return answer(MmioValidateStatus.NOT_REPORTED)
    attrs = t.MmioRangeAttributes(rng.range_attributes)
    if attrs & (t.MmioRangeAttributes.MSIX_TABLE | t.MmioRangeAttributes.MSIX_PBA
                | t.MmioRangeAttributes.IS_NON_TEE_MEM):
        return answer(MmioValidateStatus.NOT_ASSIGNED)
    if req.subrange_page_count == 0 or \
            req.range_offset + req.subrange_page_count > rng.number_of_pages:
        return answer(MmioValidateStatus.OUT_OF_RANGE)
    if req.subrange_base != (rng.first_page + req.range_offset) * PAGE_SIZE:
        return answer(MmioValidateStatus.NOT_MAPPED)
    pages = {(req.range_id, req.range_offset + i) for i in range(req.subrange_page_count)}
    before = set(tdi.validated)
    if validate:
        tdi.validated |= pages
    else:
        tdi.validated -= pages
    return answer(MmioValidateStatus.SUCCESS, changed=before != tdi.validated)


def mmio_config(tdi: TdiCtx | None, req: TioMsgMmioConfigReq) -> TioMsgMmioConfigRsp:
    def answer(status: MmioValidateStatus, flags: int = 0) -> TioMsgMmioConfigRsp:
        return TioMsgMmioConfigRsp(guest_device_id=req.guest_device_id, status=status,
                                   flags=flags, range_id=req.range_id, write=req.write,
                                   reserved=bytes(4))
    if tdi is None or tdi.fsm.state is TdiState.ERROR:
        return answer(MmioValidateStatus.INVALID_TDI)
    if not tdi.bound:
        return answer(MmioValidateStatus.TDI_UNBOUND)
    rng = _range(tdi, req.range_id)
    if rng is None:
        return answer(MmioValidateStatus.NOT_REPORTED)
    flags = rng.range_attributes & 0xF   # the report's bits match the message's b0..b3
    if req.write:
        if not flags & t.MmioRangeAttributes.IS_MEM_ATTR_UPDATABLE:
            return answer(MmioValidateStatus.NOT_IMMUTABLE, flags)
        flags = (flags & ~0x4) | (req.flags & 0x4)
    return answer(MmioValidateStatus.SUCCESS, flags)


def sdte_write(tdi: TdiCtx | None, req: TioMsgSdteWriteReq) -> TioMsgSdteWriteRsp:
    def answer(status: SdteWriteStatus) -> TioMsgSdteWriteRsp:
        return TioMsgSdteWriteRsp(guest_device_id=req.guest_device_id, status=status,
                                  reserved=bytes(12))
    if tdi is None or tdi.fsm.state is TdiState.ERROR:
        return answer(SdteWriteStatus.INVALID_TDI)
    valid = int.from_bytes(req.sdte[:8], "little") & SDTE_V
    if valid and not tdi.bound:
        return answer(SdteWriteStatus.TDI_NOT_BOUND)
    tdi.sdte = req.sdte
    return answer(SdteWriteStatus.SUCCESS)


# Each guest message type to its handler: (the guest's TDI or None, request) -> response.
GUEST_MESSAGES: dict[TioMsgType, Callable[[TdiCtx | None, Any], Struct]] = {
    TioMsgType.TIO_MSG_TDI_INFO_REQ:
        lambda tdi, req: tdi_info_rsp(tdi, req.guest_device_id),
    TioMsgType.TIO_MSG_MMIO_VALIDATE_REQ: mmio_validate,
    TioMsgType.TIO_MSG_MMIO_CONFIG_REQ: mmio_config,
    TioMsgType.TIO_MSG_SDTE_WRITE_REQ: sdte_write,
}


@command(SevCmd.TIO_GUEST_REQUEST, TioGuestRequestCmd)
def guest_request(psp: Psp, cmd: TioGuestRequestCmd, mem: GuestMemory) -> SevRet:
    dev = psp.dev(cmd.dev_ctx_sla)
    tdi_ctx = psp.tdi(dev, cmd.tdi_ctx_sla)
    g = psp.guest(cmd.gctx_paddr)
    if g.fsm.state is not GuestState.LAUNCHED:
        raise PspError(SevRet.INVALID_GUEST_STATE, "the guest has no VMPCK yet")
    raw_msg = mem.read(cmd.req_paddr, PAGE_SIZE)
    vmpck = SnpGuestMsgHdr.unpack(raw_msg[:SNP_MSG_HDR_SIZE]).msg_vmpck   # which key
    if vmpck > 3:
        raise PspError(SevRet.INVALID_PARAM, f"msg_vmpck {vmpck}")
    try:
        msg = open_message(g.vmpck[vmpck], raw_msg)
    except GuestMessageError as exc:
        raise PspError(SevRet.INVALID_PARAM, f"guest message: {exc}") from None
    if msg.seqno != g.seqno[vmpck] + 1:
        raise PspError(SevRet.INVALID_PARAM, f"sequence number {msg.seqno}, expected "
                       f"{g.seqno[vmpck] + 1} (replayed or out of order)")
    try:
        mtype = TioMsgType(msg.msg_type)
        req = TIO_MSG_REQUESTS[mtype].unpack(msg.payload)
    except (ValueError, KeyError, DecodeError):
        raise PspError(SevRet.INVALID_PARAM, f"message type {msg.msg_type}") from None
    gdid = int(req.guest_device_id)  # type: ignore[attr-defined]
    # The TDI the command names must be this guest's, at this RID, and bound at least
    # once (its context keeps the report until it is reclaimed).
    tdi = tdi_ctx if (tdi_ctx.gctx, tdi_ctx.guest_device_id) == (g.gctx, gdid) \
        and tdi_ctx.report else None
    rsp = GUEST_MESSAGES[mtype](tdi, req)
    g.seqno[vmpck] += 2
    sealed = seal(g.vmpck[vmpck], mtype + 1, msg.seqno + 1, rsp.pack(), vmpck)
    mem.write(cmd.res_paddr, sealed.ljust(SNP_MSG_HDR_SIZE, b"\0"))
    emit("psp.guest_message", type=mtype.name, seqno=msg.seqno,
         status=int(getattr(rsp, "status", 0)))
    return SevRet.SUCCESS
