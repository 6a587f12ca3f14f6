"""Guest-less drivers for the PSP emulator: the host kernel + hypervisor, and the SNP guest.

:class:`SevTioHost` runs what Linux's ccp driver does (reference/firmware-abi.md D.5):
TIO_STATUS / TIO_INIT, DEV_CREATE, the DEV_CONNECT loop relaying each object the PSP puts
in the request buffer to the device (spdm-emu socket or a DOE mailbox in process) and
re-issuing the command, buffer expansion on EXPAND_BUFFER_LENGTH_REQUEST, TDI_CREATE /
TDI_BIND, and teardown in reverse.  It also plays the hypervisor for the guest's
SEV_TIO_OP and SEV_TIO_GUEST_REQUEST exits (D.4): BIND / RUN / STOP / UNBIND become PSP
commands, guest messages are relayed untouched with TIO_GUEST_REQUEST, and the evidence
goes back in a GUID table.  :class:`SnpGuest` is the SNP guest kernel's side (D.6): lock
(BIND, TDI_INFO, evidence checked against the PSP's digests), accept (RUN, SDTE_WRITE,
MMIO_VALIDATE per TEE range), unlock -- every message sealed with the guest's VMPCK0.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

from ...events import emit
from ...firmware import CallClass, FirmwareCall
from ...tdisp import messages as t
from ...wire import Struct
from ..core import parse_report
from ..platform import PAGE_SIZE, ByteArrayMemory, DoeTransport
from . import model
from .abi import (
    GUID_CERTIFICATES,
    GUID_MEASUREMENTS,
    GUID_REPORT,
    MMIO_CONFIG_FLAG_NON_TEE_MEM,
    MMIO_VALIDATE_FLAG_VALIDATED,
    SDTE_IR,
    SDTE_IW,
    SDTE_V,
    SLA_BUFFER_HDR_SIZE,
    SLA_EOL,
    SNP_MSG_HDR_SIZE,
    SNP_PAGE_TYPE_SECRETS,
    SPDM_DOBJ_HDR_OUTPUT_SIZE,
    SPDM_DOBJ_HDR_REQ_SIZE,
    SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST,
    SVM_VMGEXIT_SEV_TIO_OP,
    TIO_GUEST_REQUEST_PARAM_REPORT,
    TIO_GUEST_REQUEST_PARAM_STATE,
    TIO_TDI_BIND_FLAG_NO_FW_UPDATE,
    TIO_TDI_BIND_RUN_FORCE,
    DobjDataType,
    MmioValidateStatus,
    SdteWriteStatus,
    SevCmd,
    SevRet,
    SevTioOp,
    SlaBufferHdr,
    SnpAddrCmd,
    SnpLaunchUpdateCmd,
    SnpSecretsPage,
    SpdmCtrl,
    SpdmDobjHdrOutput,
    SpdmDobjHdrReq,
    SpdmDobjId,
    TdiStatus,
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
    TioMsgTdiInfoReq,
    TioMsgTdiInfoRsp,
    TioMsgType,
    TioStatus,
    TioStatusCmd,
    TioTdiBindCmd,
    TioTdiCreateCmd,
    TioTdiReclaimCmd,
    TioTdiStatusCmd,
    TioTdiUnbindCmd,
    make_sla,
)
from .messages import GuestMessageError, open_message, seal
from .psp import Psp


class SevTioError(Exception):
    """A step of the host or guest sequence failed (the message says which and why)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _align32(n: int) -> int:
    return (n + 31) & ~31


@dataclass
class Buffer:
    sla: int
    pages: list[int]
    capacity: int = 0        # what the host allocated (sla_expand's "len")

    @property
    def size(self) -> int:
        return len(self.pages) * PAGE_SIZE


@dataclass
class HostTdi:
    guest_rid: int
    function_id: int
    ctx: Buffer
    evidence: dict[SpdmDobjId, bytes] = field(default_factory=dict)


class SevTioHost:
    """The host kernel's ccp TIO sequence and the hypervisor's SEV-TIO exit handling."""

    def __init__(self, psp: Psp, transport: DoeTransport, mem: ByteArrayMemory | None = None,
                 *, device_id: int = 0x0100, root_port_id: int = 0x0008, segment_id: int = 0,
                 stream_id: int = 1, cert_slot: int = 0,
                 lock_flags: int = TIO_TDI_BIND_FLAG_NO_FW_UPDATE) -> None:
        self.psp, self.transport = psp, transport
        self.mem = mem or ByteArrayMemory(16 << 20)
        self.device_id, self.root_port_id, self.segment_id = device_id, root_port_id, segment_id
        self.stream_id, self.cert_slot, self.lock_flags = stream_id, cert_slot, lock_flags
        self.cmdbuf = self.mem.alloc()
        self.status: TioStatus | None = None
        self.dev_ctx: Buffer | None = None
        self.req = self.resp = self.scratch = self.output = None  # type: Buffer | None
        self.evidence: dict[SpdmDobjId, bytes] = {}
        self.tdis: dict[int, HostTdi] = {}        # guest RID -> TDI
        self.functions: dict[int, int] = {}       # guest RID -> host function id (RID)
        self.gctx = 0
        self.objects_sent = 0
        psp.hypervisor = self.vmgexit

    # -- buffers ------------------------------------------------------------------------
    def alloc_sla(self, size: int) -> Buffer:
        """sla_alloc: one data page, or a scatter page listing the data pages + SLA_EOL;
        capacity_sz set in the buffer header."""
        npages = max(1, (size + PAGE_SIZE - 1) // PAGE_SIZE)
        pages = [self.mem.alloc() for _ in range(npages)]
        if npages == 1:
            sla = make_sla(pages[0])
        else:
            table = self.mem.alloc()
            entries = b"".join(make_sla(p).to_bytes(8, "little") for p in pages)
            self.mem.write(table, entries + SLA_EOL.to_bytes(8, "little"))
            sla = make_sla(table, scatter=True)
        buf = Buffer(sla, pages, npages * PAGE_SIZE)
        self.write_buf(buf, 0, SlaBufferHdr(capacity_sz=buf.capacity).pack())
        return buf

    def read_buf(self, buf: Buffer, off: int, size: int) -> bytes:
        data = b"".join(self.mem.read(p, PAGE_SIZE) for p in buf.pages)
        return data[off:off + size]

    def write_buf(self, buf: Buffer, off: int, data: bytes) -> None:
        whole = bytearray(b"".join(self.mem.read(p, PAGE_SIZE) for p in buf.pages))
        whole[off:off + len(data)] = data
        for i, p in enumerate(buf.pages):
            self.mem.write(p, bytes(whole[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))

    def header(self, buf: Buffer) -> SlaBufferHdr:
        return SlaBufferHdr.unpack(self.read_buf(buf, 0, SLA_BUFFER_HDR_SIZE))

    def expand(self, buf: Buffer) -> Buffer:
        """sla_expand: a new buffer of the capacity the PSP wrote, the old contents copied."""
        want = self.header(buf).capacity_sz
        if want == buf.capacity:
            return buf
        new = self.alloc_sla(want)
        self.write_buf(new, 0, self.read_buf(buf, 0, buf.size))
        return new

    def ctrl(self) -> bytes:
        assert self.req and self.resp and self.scratch and self.output
        return SpdmCtrl(self.req.sla, self.resp.sla, self.scratch.sla, self.output.sla).pack()

    # -- commands -----------------------------------------------------------------------
    def call(self, cmd: SevCmd, buf: Struct) -> SevRet:
        self.mem.write(self.cmdbuf, buf.pack())
        status = self.psp.call(FirmwareCall(CallClass.HOST, cmd, (self.cmdbuf,)), self.mem)[0]
        return SevRet(status)

    def ok(self, cmd: SevCmd, buf: Struct) -> None:
        status = self.call(cmd, buf)
        if status != SevRet.SUCCESS:
            raise SevTioError(f"{cmd.name}: {status.name}", status)

    def spdm_command(self, cmd: SevCmd, build: Any) -> SevRet:
        """Issue ``build(ctrl)``; while the PSP answers SPDM_REQUEST, carry the request
        object to the device and re-issue; on EXPAND_BUFFER_LENGTH_REQUEST grow the
        output / scratch buffer and re-issue."""
        assert self.req and self.resp
        for _ in range(10_000):
            status = self.call(cmd, build(self.ctrl()))
            if status == SevRet.EXPAND_BUFFER_LENGTH_REQUEST:
                assert self.output and self.scratch
                out, scratch = self.expand(self.output), self.expand(self.scratch)
                if (out, scratch) == (self.output, self.scratch):
                    raise SevTioError(f"{cmd.name}: expand request, nothing to expand")
                emit("sev_host.expand", cmd=cmd.name, output=out.size, scratch=scratch.size)
                self.output, self.scratch = out, scratch
                continue
            if status != SevRet.SPDM_REQUEST:
                return status
            self.carry()
        raise SevTioError(f"{cmd.name}: too many SPDM requests")

    def carry(self) -> None:
        """Take the REQ object out of the request buffer, exchange it with the device
        (DOE type = its data_type) and put the answer as the RESP object."""
        assert self.req and self.resp
        hdr = SpdmDobjHdrReq.unpack(self.read_buf(self.req, SLA_BUFFER_HDR_SIZE,
                                                  SPDM_DOBJ_HDR_REQ_SIZE))
        if hdr.id != SpdmDobjId.REQ or hdr.data_type not in (1, 2):
            raise SevTioError(f"bad request object {hdr}")
        payload = self.read_buf(self.req, SLA_BUFFER_HDR_SIZE + SPDM_DOBJ_HDR_REQ_SIZE,
                                hdr.length - SPDM_DOBJ_HDR_REQ_SIZE)
        answer = self.transport(hdr.data_type, payload)
        self.objects_sent += 1
        length = _align32(SPDM_DOBJ_HDR_REQ_SIZE + len(answer))
        rsp = SpdmDobjHdrReq(id=SpdmDobjId.RESP, length=length, data_type=hdr.data_type,
                             reserved2=bytes(5)).pack()
        self.write_buf(self.resp, SLA_BUFFER_HDR_SIZE, (rsp + answer).ljust(length, b"\0"))
        self.write_buf(self.resp, 0, self.header(self.resp).replace(payload_sz=length).pack())

    def spdm_ok(self, cmd: SevCmd, build: Any) -> None:
        status = self.spdm_command(cmd, build)
        if status != SevRet.SUCCESS:
            raise SevTioError(f"{cmd.name}: {status.name}", status)

    def outputs(self) -> dict[SpdmDobjId, bytes]:
        """The data objects the last command left in the output buffer."""
        assert self.output
        hdr = self.header(self.output)
        data = self.read_buf(self.output, SLA_BUFFER_HDR_SIZE, hdr.payload_sz)
        out: dict[SpdmDobjId, bytes] = {}
        off = 0
        while off + SPDM_DOBJ_HDR_OUTPUT_SIZE <= len(data):
            obj = SpdmDobjHdrOutput.unpack(data[off:off + SPDM_DOBJ_HDR_OUTPUT_SIZE])
            if obj.length < SPDM_DOBJ_HDR_OUTPUT_SIZE:
                break
            out[SpdmDobjId(obj.id)] = data[off + SPDM_DOBJ_HDR_OUTPUT_SIZE:off + obj.length]
            off += _align32(obj.length)
        return out

    # -- platform and device --------------------------------------------------------------
    def init(self) -> TioStatus:
        page = self.mem.alloc()
        self.ok(SevCmd.TIO_STATUS, TioStatusCmd(length=0x10, status_paddr=page))
        status = TioStatus.unpack(self.mem.read(page, TioStatus.fixed_size()))
        if not status.flags & 2:
            self.ok(SevCmd.TIO_INIT, TioInitCmd(length=0x10))
            self.ok(SevCmd.TIO_STATUS, TioStatusCmd(length=0x10, status_paddr=page))
            status = TioStatus.unpack(self.mem.read(page, TioStatus.fixed_size()))
        self.status = status
        return status

    def create_guest(self) -> int:
        """SNP_GCTX_CREATE and the secrets page: what launching the SNP guest gives it."""
        self.gctx = self.mem.alloc()
        self.ok(SevCmd.SNP_GCTX_CREATE, SnpAddrCmd(address=self.gctx))
        secrets = self.mem.alloc()
        self.ok(SevCmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdateCmd(
            gctx_paddr=self.gctx, page_info=SNP_PAGE_TYPE_SECRETS << 1, address=secrets))
        return secrets

    def connect(self, output_size: int | None = None) -> None:
        st = self.status or self.init()
        self.dev_ctx = self.alloc_sla(st.devctx_size)
        self.ok(SevCmd.TIO_DEV_CREATE, TioDevCreateCmd(
            length=0x20, dev_ctx_sla=self.dev_ctx.sla, device_id=self.device_id,
            root_port_id=self.root_port_id, segment_id=self.segment_id))
        self.req = self.alloc_sla(st.spdm_req_size_max)
        self.resp = self.alloc_sla(st.spdm_req_size_max)
        self.scratch = self.alloc_sla(st.spdm_scratch_size_max)
        self.output = self.alloc_sla(output_size or st.spdm_out_size_min)
        self.write_buf(self.resp, SLA_BUFFER_HDR_SIZE, SpdmDobjHdrReq(
            id=SpdmDobjId.RESP, data_type=DobjDataType.SPDM).pack())
        self.reconnect()

    def reconnect(self) -> None:
        assert self.dev_ctx
        ids = bytes([self.stream_id]) + bytes(7)
        dev_sla = self.dev_ctx.sla
        self.spdm_ok(SevCmd.TIO_DEV_CONNECT, lambda ctrl: TioDevConnectCmd(
            length=0x50, spdm_ctrl=ctrl, dev_ctx_sla=dev_sla, tc_mask=1,
            cert_slot=self.cert_slot, ide_stream_id=ids))
        self.evidence.update(self.outputs())

    def certificates(self) -> bytes:
        assert self.dev_ctx
        sla = self.dev_ctx.sla
        self.spdm_ok(SevCmd.TIO_DEV_CERTIFICATES, lambda ctrl: TioDevCertsCmd(
            length=0x30, spdm_ctrl=ctrl, dev_ctx_sla=sla))
        self.evidence.update(self.outputs())
        return self.evidence[SpdmDobjId.CERTIFICATE]

    def measurements(self, nonce: bytes = bytes(32)) -> bytes:
        assert self.dev_ctx
        sla = self.dev_ctx.sla
        self.spdm_ok(SevCmd.TIO_DEV_MEASUREMENTS, lambda ctrl: TioDevMeasCmd(
            length=0x50, spdm_ctrl=ctrl, dev_ctx_sla=sla, meas_nonce=nonce))
        self.evidence.update(self.outputs())
        return self.evidence[SpdmDobjId.MEASUREMENT]

    def roll_key(self) -> None:
        assert self.dev_ctx
        sla = self.dev_ctx.sla
        self.spdm_ok(SevCmd.TIO_ROLL_KEY, lambda ctrl: TioDevCertsCmd(
            length=0x30, spdm_ctrl=ctrl, dev_ctx_sla=sla))

    def dev_status(self) -> model.DevStatusOut:
        assert self.dev_ctx
        page = self.mem.alloc()
        self.ok(SevCmd.TIO_DEV_STATUS, TioDevStatusCmd(length=0x20, dev_ctx_sla=self.dev_ctx.sla,
                                                       status_paddr=page))
        return model.DevStatusOut.unpack(self.mem.read(page, model.DevStatusOut.fixed_size()))

    def disconnect(self, force: bool = False) -> None:
        if self.dev_ctx is None:
            return
        sla = self.dev_ctx.sla
        for rid in list(self.tdis):
            self.unbind(rid, force=force)
        self.spdm_ok(SevCmd.TIO_DEV_DISCONNECT, lambda ctrl: TioDevDisconnectCmd(
            length=0x30, flags=1 if force else 0, spdm_ctrl=ctrl, dev_ctx_sla=sla))
        self.ok(SevCmd.TIO_DEV_RECLAIM, TioDevReclaimCmd(length=0x10, dev_ctx_sla=sla))
        self.dev_ctx = None

    # -- TDIs -----------------------------------------------------------------------------
    def assign(self, guest_rid: int, function_id: int) -> None:
        """What the VMM decides: guest RID ``guest_rid`` is host function ``function_id``."""
        self.functions[guest_rid] = function_id

    def bind(self, guest_rid: int, run: bool = False) -> HostTdi:
        assert self.dev_ctx and self.status
        tdi = self.tdis.get(guest_rid)
        if tdi is None:
            if guest_rid not in self.functions:
                raise SevTioError(f"guest RID {guest_rid:#06x} is not assigned")
            tdi = HostTdi(guest_rid, self.functions[guest_rid],
                          self.alloc_sla(self.status.tdictx_size))
            self.ok(SevCmd.TIO_TDI_CREATE, TioTdiCreateCmd(
                length=0x30, dev_ctx_sla=self.dev_ctx.sla, tdi_ctx_sla=tdi.ctx.sla,
                function_id=tdi.function_id))
            self.tdis[guest_rid] = tdi
        self._bind(tdi, TIO_TDI_BIND_RUN_FORCE if run else 0)
        tdi.evidence = {**self.evidence, **self.outputs()}
        return tdi

    def _bind(self, tdi: HostTdi, run_flags: int) -> None:
        assert self.dev_ctx
        dev_sla = self.dev_ctx.sla
        self.spdm_ok(SevCmd.TIO_TDI_BIND, lambda ctrl: TioTdiBindCmd(
            length=0x50, spdm_ctrl=ctrl, dev_ctx_sla=dev_sla, tdi_ctx_sla=tdi.ctx.sla,
            gctx_paddr=self.gctx, guest_device_id=tdi.guest_rid,
            tdisp_lock_if_flags=self.lock_flags, run_flags=run_flags))

    def run(self, guest_rid: int) -> None:
        self._bind(self.tdis[guest_rid], TIO_TDI_BIND_RUN_FORCE)

    def report(self, guest_rid: int) -> bytes:
        assert self.dev_ctx
        tdi, dev_sla = self.tdis[guest_rid], self.dev_ctx.sla
        self.spdm_ok(SevCmd.TIO_TDI_REPORT, lambda ctrl: TioTdiUnbindCmd(
            length=0x40, spdm_ctrl=ctrl, dev_ctx_sla=dev_sla, tdi_ctx_sla=tdi.ctx.sla,
            gctx_paddr=self.gctx))
        tdi.evidence.update(self.outputs())
        return tdi.evidence[SpdmDobjId.REPORT]

    def stop(self, guest_rid: int, force: bool = False) -> None:
        assert self.dev_ctx
        tdi, dev_sla = self.tdis[guest_rid], self.dev_ctx.sla
        self.spdm_ok(SevCmd.TIO_TDI_UNBIND, lambda ctrl: TioTdiUnbindCmd(
            length=0x40, flags=1 if force else 0, spdm_ctrl=ctrl, dev_ctx_sla=dev_sla,
            tdi_ctx_sla=tdi.ctx.sla, gctx_paddr=self.gctx))

    def unbind(self, guest_rid: int, force: bool = False) -> None:
        assert self.dev_ctx
        tdi = self.tdis[guest_rid]
        if self.tdi_status(guest_rid).guest_status == TdiStatus.BOUND:
            self.stop(guest_rid, force)
        self.ok(SevCmd.TIO_TDI_RECLAIM, TioTdiReclaimCmd(
            length=0x20, dev_ctx_sla=self.dev_ctx.sla, tdi_ctx_sla=tdi.ctx.sla))
        del self.tdis[guest_rid]

    def tdi_status(self, guest_rid: int) -> model.TdiStatusOut:
        assert self.dev_ctx
        page = self.mem.alloc()
        self.ok(SevCmd.TIO_TDI_STATUS, TioTdiStatusCmd(
            length=0x20, dev_ctx_sla=self.dev_ctx.sla,
            tdi_ctx_sla=self.tdis[guest_rid].ctx.sla, status_paddr=page))
        return model.TdiStatusOut.unpack(self.mem.read(page, model.TdiStatusOut.fixed_size()))

    # -- the hypervisor: SEV-TIO VMGEXITs -------------------------------------------------
    def vmgexit(self, exit_code: int, args: tuple[int, ...]) -> tuple[int, ...]:
        """[MODEL] port registers: SEV_TIO_OP: ARG0 = exitinfo1 (action << 32 | RID) ->
        (status, RCX = tdi_id).  SEV_TIO_GUEST_REQUEST: ARG0 = request page, ARG1 =
        response page (exitinfo1/2), ARG2 = RAX data GPA, ARG3 = RBX npages, ARG4 = RCX
        guest RID, ARG5 = RDX param -> (status, RBX pages needed, RDX TDI state)."""
        regs = tuple(args) + (0,) * (6 - len(args))
        try:
            if exit_code == SVM_VMGEXIT_SEV_TIO_OP:
                return self._tio_op(SevTioOp(regs[0] >> 32), regs[0] & 0xFFFF)
            return self._guest_request(*regs[:6])
        except SevTioError as exc:
            emit("sev_host.exit_failed", exit=f"{exit_code:#x}", error=str(exc))
            return (exc.status if exc.status is not None else int(SevRet.INVALID_PARAM),)
        except (ValueError, KeyError) as exc:
            emit("sev_host.exit_failed", exit=f"{exit_code:#x}", error=repr(exc))
            return (int(SevRet.INVALID_PARAM), 0, 0) if not isinstance(exc, KeyError) \
                else (int(SevRet.INVALID_TDI), 0, 0)

    def _tio_op(self, op: SevTioOp, rid: int) -> tuple[int, ...]:
        emit("sev_host.tio_op", op=op.name, rid=f"{rid:#06x}")
        if op is SevTioOp.BIND:
            tdi = self.bind(rid)
            return (int(SevRet.SUCCESS), tdi.function_id)
        if op is SevTioOp.RUN:
            self.run(rid)
        elif op is SevTioOp.STOP:
            self.stop(rid)
        else:
            self.unbind(rid)
        return (int(SevRet.SUCCESS), 0)

    def _guest_request(self, req: int, res: int, data: int, npages: int, rid: int,
                       param: int) -> tuple[int, ...]:
        assert self.dev_ctx
        tdi, dev_sla = self.tdis[rid], self.dev_ctx.sla
        table = b""
        if param & TIO_GUEST_REQUEST_PARAM_REPORT:
            # checked before the message reaches the PSP, so a guest told to bring more
            # pages re-sends the same sealed message (as with SNP extended reports)
            table = guid_table([(GUID_CERTIFICATES, tdi.evidence[SpdmDobjId.CERTIFICATE]),
                                (GUID_MEASUREMENTS, tdi.evidence[SpdmDobjId.MEASUREMENT]),
                                (GUID_REPORT, tdi.evidence[SpdmDobjId.REPORT])])
            need = (len(table) + PAGE_SIZE - 1) // PAGE_SIZE
            if need > npages:
                return (int(SevRet.INVALID_LEN), need, 0)
        status = self.spdm_command(SevCmd.TIO_GUEST_REQUEST, lambda ctrl: TioGuestRequestCmd(
            length=0x50, spdm_ctrl=ctrl, dev_ctx_sla=dev_sla, tdi_ctx_sla=tdi.ctx.sla,
            gctx_paddr=self.gctx, req_paddr=req, res_paddr=res))
        if status != SevRet.SUCCESS:
            return (int(status), 0, 0)
        state = 0
        if param & TIO_GUEST_REQUEST_PARAM_STATE:
            tdi_state = list(model.TdiState)[self.tdi_status(rid).state]
            state = model.TDISP_STATE_OF[tdi_state]
        if table:
            self.mem.write(data, table)
        return (int(SevRet.SUCCESS), 0, state)


def guid_table(blobs: list[tuple[Any, bytes]]) -> bytes:
    """{guid[16], u32 offset, u32 length} entries, a zero entry, then the blobs."""
    head = (len(blobs) + 1) * model.GUID_ENTRY_SIZE
    entries, body, off = b"", b"", head
    for guid, blob in blobs:
        entries += guid.bytes_le + struct.pack("<II", off, len(blob))
        body += blob
        off += len(blob)
    return entries + bytes(model.GUID_ENTRY_SIZE) + body


def parse_guid_table(data: bytes) -> dict[Any, bytes]:
    import uuid
    out: dict[Any, bytes] = {}
    pos = 0
    while pos + model.GUID_ENTRY_SIZE <= len(data):
        entry = data[pos:pos + model.GUID_ENTRY_SIZE]
        if entry == bytes(model.GUID_ENTRY_SIZE):
            return out
        off, length = struct.unpack_from("<II", entry, 16)
        out[uuid.UUID(bytes_le=entry[:16])] = data[off:off + length]
        pos += model.GUID_ENTRY_SIZE
    raise SevTioError("GUID table without its terminating entry")


# --------------------------------------------------------------------------------------
# The SNP guest


@dataclass
class Evidence:
    info: TioMsgTdiInfoRsp
    certificates: bytes
    measurements: bytes
    report: bytes

    @property
    def ranges(self) -> list[t.MMIO_RANGE]:
        return list(parse_report(self.report).mmio_range)


class SnpGuest:
    """The SNP guest kernel's TIO side, reaching the hypervisor through VMGEXITs (here:
    GUEST-class calls of the firmware port) and the PSP through sealed messages."""

    DATA_PAGES = 4

    def __init__(self, psp: Psp, mem: ByteArrayMemory, secrets: int) -> None:
        self.psp, self.mem = psp, mem
        page = SnpSecretsPage.unpack(mem.read(secrets, SnpSecretsPage.fixed_size()))
        self.vmpck = page.vmpck0
        self.seqno = 0
        self.req_page, self.res_page = mem.alloc(), mem.alloc()
        self.data = mem.alloc(self.DATA_PAGES * PAGE_SIZE)
        self.last_sealed = b""

    def exit(self, code: int, *args: int) -> tuple[int, ...]:
        return self.psp.call(FirmwareCall(CallClass.GUEST, code, args), self.mem)

    def tio_op(self, op: SevTioOp, rid: int) -> tuple[int, ...]:
        regs = self.exit(SVM_VMGEXIT_SEV_TIO_OP, (int(op) << 32) | rid)
        if regs[0] != SevRet.SUCCESS:
            raise SevTioError(f"SEV_TIO_OP {op.name}: {SevRet(regs[0]).name}", regs[0])
        return regs

    def send(self, rid: int, msg_type: TioMsgType, req: Struct, rsp_type: type[Struct],
             param: int = 0) -> tuple[Any, tuple[int, ...]]:
        """Seal ``req`` with the next sequence number, exit, open and check the answer."""
        seqno = self.seqno + 1
        sealed = seal(self.vmpck, msg_type, seqno, req.pack())
        self.last_sealed = sealed
        regs = self.relay(sealed, rid, param)
        if regs[0] != SevRet.SUCCESS:
            raise SevTioError(f"{msg_type.name}: {SevRet(regs[0]).name}", regs[0])
        page = self.mem.read(self.res_page, PAGE_SIZE)
        try:
            msg = open_message(self.vmpck, page)
        except GuestMessageError as exc:
            raise SevTioError(f"{msg_type.name} response: {exc}") from None
        if msg.seqno != seqno + 1 or msg.msg_type != msg_type + 1:
            raise SevTioError(f"{msg_type.name}: response #{msg.seqno} type {msg.msg_type}")
        self.seqno += 2
        return rsp_type.unpack(msg.payload), regs

    def relay(self, sealed: bytes, rid: int, param: int = 0) -> tuple[int, ...]:
        self.mem.write(self.req_page, sealed.ljust(PAGE_SIZE, b"\0"))
        self.mem.write(self.res_page, bytes(SNP_MSG_HDR_SIZE))
        return self.exit(SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST, self.req_page, self.res_page,
                         self.data, self.DATA_PAGES, rid, param)

    def tdi_info(self, rid: int, param: int = 0) -> tuple[TioMsgTdiInfoRsp, tuple[int, ...]]:
        rsp, regs = self.send(rid, TioMsgType.TIO_MSG_TDI_INFO_REQ,
                              TioMsgTdiInfoReq(guest_device_id=rid), TioMsgTdiInfoRsp, param)
        return rsp, regs

    def mmio_validate(self, rid: int, base: int, pages: int, range_id: int, offset: int = 0,
                      validated: bool = True) -> TioMsgMmioValidateRsp:
        rsp, _ = self.send(rid, TioMsgType.TIO_MSG_MMIO_VALIDATE_REQ, TioMsgMmioValidateReq(
            guest_device_id=rid, subrange_base=base, subrange_page_count=pages,
            range_offset=offset, flags=MMIO_VALIDATE_FLAG_VALIDATED if validated else 0,
            range_id=range_id), TioMsgMmioValidateRsp)
        return rsp  # type: ignore[no-any-return]

    def mmio_config(self, rid: int, range_id: int, write: bool = False,
                    non_tee_mem: bool = False) -> TioMsgMmioConfigRsp:
        rsp, _ = self.send(rid, TioMsgType.TIO_MSG_MMIO_CONFIG_REQ, TioMsgMmioConfigReq(
            guest_device_id=rid, flags=MMIO_CONFIG_FLAG_NON_TEE_MEM if non_tee_mem else 0,
            range_id=range_id, write=int(write)), TioMsgMmioConfigRsp)
        return rsp  # type: ignore[no-any-return]

    def sdte_write(self, rid: int, valid: bool) -> TioMsgSdteWriteRsp:
        qw0 = (SDTE_V | SDTE_IR | SDTE_IW) if valid else 0
        sdte = qw0.to_bytes(8, "little") + bytes(56)
        rsp, _ = self.send(rid, TioMsgType.TIO_MSG_SDTE_WRITE_REQ,
                           TioMsgSdteWriteReq(guest_device_id=rid, sdte=sdte),
                           TioMsgSdteWriteRsp)
        return rsp  # type: ignore[no-any-return]

    # -- lock / accept / unlock -----------------------------------------------------------
    def lock(self, rid: int, root: Any = None) -> Evidence:
        self.tio_op(SevTioOp.BIND, rid)
        info, regs = self.tdi_info(rid, TIO_GUEST_REQUEST_PARAM_REPORT
                                   | TIO_GUEST_REQUEST_PARAM_STATE)
        if info.tdi_status != TdiStatus.BOUND:
            raise SevTioError(f"TDI_INFO: tdi_status {info.tdi_status}")
        blobs = parse_guid_table(self.mem.read(self.data, self.DATA_PAGES * PAGE_SIZE))
        ev = Evidence(info, blobs[GUID_CERTIFICATES], blobs[GUID_MEASUREMENTS],
                      blobs[GUID_REPORT])
        for name, blob, digest in (("certificates", ev.certificates, info.certs_digest),
                                   ("measurements", ev.measurements, info.meas_digest),
                                   ("report", ev.report, info.interface_report_digest)):
            if hashlib.sha384(blob).digest() != digest:
                raise SevTioError(f"evidence: the {name} the host handed over do not match "
                                  "the PSP's digest")
        if root is not None:
            check_chain(ev.certificates, root)
        emit("snp_guest.locked", rid=f"{rid:#06x}", tdi_state=regs[2])
        return ev

    def accept(self, rid: int, ev: Evidence) -> int:
        self.tio_op(SevTioOp.RUN, rid)
        rsp = self.sdte_write(rid, True)
        if rsp.status != SdteWriteStatus.SUCCESS:
            raise SevTioError(f"SDTE_WRITE: status {rsp.status}")
        validated = 0
        for r in tee_ranges(ev):
            v = self.mmio_validate(rid, r.first_page * PAGE_SIZE, r.number_of_pages, r.range_id)
            if v.status != MmioValidateStatus.SUCCESS:
                raise SevTioError(f"MMIO_VALIDATE range {r.range_id}: "
                                  f"{MmioValidateStatus(v.status).name}")
            validated += 1
        return validated

    def unlock(self, rid: int, ev: Evidence) -> None:
        self.tio_op(SevTioOp.STOP, rid)
        self.sdte_write(rid, False)
        for r in tee_ranges(ev):
            self.mmio_validate(rid, r.first_page * PAGE_SIZE, r.number_of_pages, r.range_id,
                               validated=False)
        self.tio_op(SevTioOp.UNBIND, rid)


def check_chain(chain: bytes, root: Any) -> None:
    """The relying party's check: the SPDM certificate chain (DSP0274: Length, reserved,
    RootHash, DER certificates) starts at ``root`` and every link verifies."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from ...spdm.der import split_der_certificates
    for size, algo in ((48, "sha384"), (32, "sha256"), (64, "sha512")):
        try:
            certs = split_der_certificates(chain[4 + size:])
        except ValueError:
            continue
        if certs and hashlib.new(algo, certs[0].public_bytes(Encoding.DER)).digest() == \
                chain[4:4 + size]:
            break
    else:
        raise SevTioError("evidence: not an SPDM certificate chain")
    if certs[0] != root:
        raise SevTioError("evidence: the device chain does not start at the trusted root")
    for parent, child in zip(certs, certs[1:], strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except Exception as exc:
            raise SevTioError(f"evidence: chain link broken at {child.subject}: {exc}") \
                from None


def tee_ranges(ev: Evidence) -> list[t.MMIO_RANGE]:
    """The report's ranges the guest validates: TEE memory, not the MSI-X table or PBA."""
    skip = t.MmioRangeAttributes.MSIX_TABLE | t.MmioRangeAttributes.MSIX_PBA | \
        t.MmioRangeAttributes.IS_NON_TEE_MEM
    return [r for r in ev.ranges if not r.range_attributes & skip]
