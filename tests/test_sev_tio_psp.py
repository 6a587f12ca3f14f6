"""The PSP emulator's behaviour: the SPDM_REQUEST loop on bytes, state rules and status
codes (reference/firmware-abi.md D.2, D.3 and the [MODEL] rules of tsm/sev_tio/model.py),
the guest messages (D.4: MMIO_VALIDATE rejects, replay and forgery refused), whole host +
guest sequences in process and over the spdm-emu socket against `serve --spdm-port`, and
the `tsm --platform sev-tio` command.

SPDM bytes expected here come from DSP0274 (GET_VERSION = 10 84 00 00, GET_CAPABILITIES
code 0xE1); status values from psp-sev.h as listed in firmware-abi.md D.2.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.platform_support import attached_guest, dmtf_responder_emu, over_spdm_emu
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.firmware import CallClass, FirmwareCall
from vfiouser_tdisp.server import start_devices
from vfiouser_tdisp.tsm.platform import in_process_device
from vfiouser_tdisp.tsm.sev_tio import abi
from vfiouser_tdisp.tsm.sev_tio.abi import MmioValidateStatus as MV
from vfiouser_tdisp.tsm.sev_tio.abi import SevCmd
from vfiouser_tdisp.tsm.sev_tio.abi import SevRet as R
from vfiouser_tdisp.tsm.sev_tio.host import SevTioError, SevTioHost, SnpGuest, tee_ranges
from vfiouser_tdisp.tsm.sev_tio.messages import seal
from vfiouser_tdisp.tsm.sev_tio.psp import Psp

RID = 0x0100


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sev-identity")


class Bench:
    def __init__(self, cache: Path, **host: Any) -> None:
        self.transport, self.device = in_process_device(identity_dir=str(cache))
        self.psp = Psp()
        self.host = SevTioHost(self.psp, self.transport, **host)
        self.host.init()
        self.secrets = self.host.create_guest()
        self.guest = SnpGuest(self.psp, self.host.mem, self.secrets)
        self.host.assign(RID, 0)

    def raw(self, cmd: int, buf: bytes) -> R:
        self.host.mem.write(self.host.cmdbuf, buf)
        return R(self.psp.call(FirmwareCall(CallClass.HOST, cmd, (self.host.cmdbuf,)),
                               self.host.mem)[0])


def transitions(rec: Recorder, machine: str) -> list[str]:
    return [e["new"] for e in rec.of(f"{machine}.transition")]


# -- platform ---------------------------------------------------------------------------


def test_tio_status_init_and_platform_state(cache: Path) -> None:
    psp = Psp()
    b = Bench.__new__(Bench)
    b.psp = psp
    b.host = SevTioHost(psp, lambda t, p: b"")
    page = b.host.mem.alloc()
    assert b.raw(SevCmd.TIO_STATUS, struct.pack("<IIQ", 0x10, 0, page)) == R.SUCCESS
    st = struct.unpack_from("<13I", b.host.mem.read(page, 0x34))
    assert st[0] == 0x40 and st[1] == 0b01              # length, tio_en=1 tio_init_done=0
    assert st[3] >= st[2] and st[10] > 0 and st[11] > 0  # req max >= min, ctx sizes
    dev_create = struct.pack("<IIQHHB11s", 0x20, 0, 0x8010_0000, RID, 8, 0, bytes(11))
    assert b.raw(SevCmd.TIO_DEV_CREATE, dev_create) == R.INVALID_PLATFORM_STATE
    assert b.raw(SevCmd.TIO_INIT, struct.pack("<I12s", 0x10, bytes(12))) == R.SUCCESS
    assert b.raw(SevCmd.TIO_INIT, struct.pack("<I12s", 0x10, bytes(12))) == \
        R.INVALID_PLATFORM_STATE
    b.raw(SevCmd.TIO_STATUS, struct.pack("<IIQ", 0x10, 0, page))
    assert struct.unpack_from("<I", b.host.mem.read(page + 4, 4))[0] == 0b11


def test_command_buffer_checks(cache: Path) -> None:
    b = Bench(cache)
    assert b.raw(0xD9, bytes(16)) == R.INVALID_COMMAND              # no command 0xD9
    assert b.raw(SevCmd.TIO_DEV_RECLAIM, struct.pack("<IIQ", 0x18, 0, 0)) == R.INVALID_LEN
    assert R(b.psp.call(FirmwareCall(CallClass.HOST, SevCmd.TIO_STATUS, (0x10,)),
                        b.host.mem)[0]) == R.INVALID_ADDRESS       # buffer outside memory
    assert b.raw(SevCmd.TIO_DEV_RECLAIM, struct.pack("<IIQ", 0x10, 0, 0x8040_0000)) == \
        R.INVALID_DEV_CTX
    # a guest exit without a hypervisor attached
    assert Psp().call(FirmwareCall(CallClass.GUEST, abi.SVM_VMGEXIT_SEV_TIO_OP, (RID,)),
                      b.host.mem) == (R.UNSUPPORTED,)


# -- the SPDM_REQUEST loop on bytes ----------------------------------------------------------


def test_dev_connect_spdm_request_loop_on_bytes(cache: Path, recorder: Recorder) -> None:
    """DEV_CONNECT answers 0x32 with a REQ data object (id 1, data_type 1 = SPDM) after the
    0x40-byte buffer header: first GET_VERSION, then, once the response object is in the
    response buffer and the same command is re-issued, GET_CAPABILITIES."""
    b = Bench(cache)
    h = b.host
    h.dev_ctx = h.alloc_sla(0x1000)
    assert b.raw(SevCmd.TIO_DEV_CREATE, abi.TioDevCreateCmd(
        length=0x20, dev_ctx_sla=h.dev_ctx.sla, device_id=RID).pack()) == R.SUCCESS
    h.req, h.resp = h.alloc_sla(0x4000), h.alloc_sla(0x4000)
    h.scratch, h.output = h.alloc_sla(0x4000), h.alloc_sla(0x1000)
    assert h.req.sla & 1 and h.resp.sla & 1       # 4 pages: scatter lists
    connect = abi.TioDevConnectCmd(length=0x50, spdm_ctrl=h.ctrl(), dev_ctx_sla=h.dev_ctx.sla,
                                   tc_mask=1, ide_stream_id=bytes([1]) + bytes(7)).pack()
    assert b.raw(SevCmd.TIO_DEV_CONNECT, connect) == R.SPDM_REQUEST
    head = h.read_buf(h.req, 0, 0x40 + 0x10 + 4)
    capacity, payload_sz = struct.unpack_from("<II", head)
    obj_id, length, version, data_type = struct.unpack_from("<IIHB", head, 0x40)
    assert (capacity, obj_id, length, version, data_type) == (0x4000, 1, 0x14, 0x0100, 1)
    assert payload_sz == 0x20                      # 0x14 rounded up to 32
    assert head[0x50:0x54] == bytes.fromhex("10840000")     # GET_VERSION (DSP0274)
    version_rsp = b.transport(1, head[0x50:0x54])
    assert version_rsp[1] == 0x04                            # VERSION
    length = (0x10 + len(version_rsp) + 31) & ~31
    h.write_buf(h.resp, 0x40, struct.pack("<IIHB5s", 2, length, 0x0100, 1, bytes(5))
                + version_rsp)
    # a different command on the device while its loop is pending
    assert b.raw(SevCmd.TIO_DEV_CERTIFICATES, abi.TioDevCertsCmd(
        length=0x30, spdm_ctrl=h.ctrl(), dev_ctx_sla=h.dev_ctx.sla).pack()) == \
        R.INVALID_DEV_STATE
    assert b.raw(SevCmd.TIO_DEV_CONNECT, connect) == R.SPDM_REQUEST
    assert h.read_buf(h.req, 0x51, 1) == b"\xe1"             # GET_CAPABILITIES
    # the host's loop finishes it
    h.carry()
    assert h.spdm_command(SevCmd.TIO_DEV_CONNECT, lambda c: abi.TioDevConnectCmd(
        length=0x50, spdm_ctrl=c, dev_ctx_sla=h.dev_ctx.sla, tc_mask=1,  # type: ignore
        ide_stream_id=bytes([1]) + bytes(7))) == R.SUCCESS
    out = h.outputs()
    chain = out[abi.SpdmDobjId.CERTIFICATE]
    assert struct.unpack_from("<H", chain)[0] == len(chain)  # SPDM cert chain Length field
    assert out[abi.SpdmDobjId.MEASUREMENT][1] == 0x60        # MEASUREMENTS response code
    hdr = h.read_buf(h.output, 0x40, 0x20)
    assert struct.unpack_from("<IIH6xHBB", hdr) == (4, 0x20 + len(chain), 0x0100, RID, 0, 1)
    assert transitions(recorder, "psp.dev") == ["CONNECTING", "CONNECTED"]
    # the device's IDE_KM responder saw the PSP key stream 1: 6 KEY_PROG, 6 K_SET_GO
    assert [e["stream_id"] for e in recorder.of("ide_km.key_prog")] == [1] * 6
    assert len(recorder.of("ide_km.k_set_go")) == 6


def test_expand_buffer_length_request(cache: Path) -> None:
    """A scratch buffer below its minimum and an output buffer too small for the objects:
    EXPAND_BUFFER_LENGTH_REQUEST with the needed capacity written into capacity_sz (what
    Linux's sla_expand reads); after expansion the re-issued command completes and the
    output is written without talking to the device again."""
    b = Bench(cache)
    h = b.host
    h.dev_ctx = h.alloc_sla(0x1000)
    b.raw(SevCmd.TIO_DEV_CREATE, abi.TioDevCreateCmd(length=0x20, dev_ctx_sla=h.dev_ctx.sla,
                                                     device_id=RID).pack())
    h.req, h.resp = h.alloc_sla(0x4000), h.alloc_sla(0x4000)
    h.scratch, h.output = h.alloc_sla(0x1000), h.alloc_sla(0x1000)
    h.write_buf(h.output, 0, struct.pack("<I", 0x200))   # a 0x200-byte buffer
    h.output.capacity = 0x200
    connect = abi.TioDevConnectCmd(length=0x50, spdm_ctrl=h.ctrl(), dev_ctx_sla=h.dev_ctx.sla,
                                   tc_mask=1, ide_stream_id=bytes([1]) + bytes(7)).pack()
    assert b.raw(SevCmd.TIO_DEV_CONNECT, connect) == R.EXPAND_BUFFER_LENGTH_REQUEST
    assert struct.unpack_from("<I", h.read_buf(h.scratch, 0, 4))[0] == 0x2000
    h.scratch = h.expand(h.scratch)
    sent: list[int] = []
    transport = h.transport
    h.transport = lambda t, p: (sent.append(t), transport(t, p))[1]   # type: ignore
    status = h.spdm_command(SevCmd.TIO_DEV_CONNECT, lambda c: abi.TioDevConnectCmd(
        length=0x50, spdm_ctrl=c, dev_ctx_sla=h.dev_ctx.sla, tc_mask=1,  # type: ignore
        ide_stream_id=bytes([1]) + bytes(7)))
    assert status == R.SUCCESS and len(h.output.pages) == 1 and h.header(h.output).capacity_sz \
        == 0x1000                                        # expanded from 0x200 to one page
    assert len(sent) == 21 and set(sent) == {1, 2}       # SPDM and secured SPDM objects
    assert abi.SpdmDobjId.CERTIFICATE in h.outputs()


# -- state rules ----------------------------------------------------------------------------


def test_state_rules_and_status_codes(cache: Path, recorder: Recorder) -> None:
    b = Bench(cache)
    h = b.host
    h.connect()
    dev = h.dev_ctx
    assert dev is not None
    # DEV_CONNECT again on a connected device; DEV_CREATE on a context in use
    with pytest.raises(SevTioError) as err:
        h.reconnect()
    assert err.value.status == R.INVALID_DEV_STATE
    assert b.raw(SevCmd.TIO_DEV_CREATE, abi.TioDevCreateCmd(
        length=0x20, dev_ctx_sla=dev.sla, device_id=0x0200).pack()) == R.IN_USE
    # a context buffer smaller than devctx_size
    small = h.alloc_sla(0x1000)
    h.write_buf(small, 0, struct.pack("<I", 0x100))
    assert b.raw(SevCmd.TIO_DEV_CREATE, abi.TioDevCreateCmd(
        length=0x20, dev_ctx_sla=small.sla, device_id=0x0200).pack()) == \
        R.INCORRECT_BUFFER_LENGTH
    # TDI contexts
    tdi_ctx = h.alloc_sla(0x1000)
    create = abi.TioTdiCreateCmd(length=0x30, dev_ctx_sla=dev.sla, tdi_ctx_sla=tdi_ctx.sla,
                                 function_id=0).pack()
    assert b.raw(SevCmd.TIO_TDI_CREATE, create) == R.SUCCESS
    assert b.raw(SevCmd.TIO_TDI_CREATE, create) == R.IN_USE
    reclaim_dev = abi.TioDevReclaimCmd(length=0x10, dev_ctx_sla=dev.sla).pack()
    assert b.raw(SevCmd.TIO_DEV_RECLAIM, reclaim_dev) == R.IN_USE
    unbind = abi.TioTdiUnbindCmd(length=0x40, spdm_ctrl=h.ctrl(), dev_ctx_sla=dev.sla,
                                 tdi_ctx_sla=tdi_ctx.sla, gctx_paddr=h.gctx).pack()
    assert b.raw(SevCmd.TIO_TDI_UNBIND, unbind) == R.INVALID_TDI_STATE   # not bound
    assert b.raw(SevCmd.TIO_TDI_REPORT, unbind) == R.INVALID_TDI_STATE
    assert b.raw(SevCmd.TIO_TDI_RECLAIM, abi.TioTdiReclaimCmd(
        length=0x20, dev_ctx_sla=dev.sla, tdi_ctx_sla=0x8FFF_F000).pack()) == R.INVALID_TDI_CTX
    bind = abi.TioTdiBindCmd(length=0x50, spdm_ctrl=h.ctrl(), dev_ctx_sla=dev.sla,
                             tdi_ctx_sla=tdi_ctx.sla, gctx_paddr=0x4000_0000,
                             guest_device_id=RID, tdisp_lock_if_flags=1).pack()
    assert b.raw(SevCmd.TIO_TDI_BIND, bind) == R.INVALID_GUEST    # no such guest context
    bind_flags = abi.TioTdiBindCmd(length=0x50, spdm_ctrl=h.ctrl(), dev_ctx_sla=dev.sla,
                                   tdi_ctx_sla=tdi_ctx.sla, gctx_paddr=h.gctx,
                                   guest_device_id=RID, tdisp_lock_if_flags=0x2).pack()
    assert b.raw(SevCmd.TIO_TDI_BIND, bind_flags) == R.INVALID_PARAM  # bit 1: reserved here
    assert b.raw(SevCmd.TIO_TDI_RECLAIM, abi.TioTdiReclaimCmd(
        length=0x20, dev_ctx_sla=dev.sla, tdi_ctx_sla=tdi_ctx.sla).pack()) == R.SUCCESS
    # bind through the guest; then the device cannot be disconnected or the TDI reclaimed
    b.guest.lock(RID)
    tdi = h.tdis[RID]
    with pytest.raises(SevTioError) as err:
        h.spdm_ok(SevCmd.TIO_DEV_DISCONNECT, lambda c: abi.TioDevDisconnectCmd(
            length=0x30, spdm_ctrl=c, dev_ctx_sla=dev.sla))
    assert err.value.status == R.IN_USE
    assert b.raw(SevCmd.TIO_TDI_RECLAIM, abi.TioTdiReclaimCmd(
        length=0x20, dev_ctx_sla=dev.sla, tdi_ctx_sla=tdi.ctx.sla).pack()) == \
        R.INVALID_TDI_STATE
    assert b.raw(SevCmd.TIO_DEV_RECLAIM, reclaim_dev) == R.IN_USE
    # status outputs
    st = h.tdi_status(RID)
    assert (st.guest_status, st.guest_device_id, st.report_count) == (0, RID, 1)
    assert h.dev_status().tdi_count == 1
    # force disconnect unbinds the TDI; the guest sees it unbound
    h.spdm_ok(SevCmd.TIO_DEV_DISCONNECT, lambda c: abi.TioDevDisconnectCmd(
        length=0x30, flags=abi.TIO_DEV_DISCONNECT_FLAG_FORCE, spdm_ctrl=c, dev_ctx_sla=dev.sla))
    info, _ = b.guest.tdi_info(RID)
    assert info.tdi_status == abi.TdiStatus.UNBOUND
    assert transitions(recorder, "psp.tdi")[-3:] == ["BINDING", "LOCKED", "UNBOUND"]
    h.unbind(RID)
    assert b.raw(SevCmd.TIO_DEV_RECLAIM, reclaim_dev) == R.SUCCESS
    assert b.raw(SevCmd.TIO_DEV_RECLAIM, reclaim_dev) == R.INVALID_DEV_CTX


def test_failed_connect_needs_reclaim(cache: Path, recorder: Recorder) -> None:
    """The host brings garbage instead of the device's answer: ERR_IN_DEV_CONN, the device
    context goes to ERROR and a new DEV_CONNECT answers RECLAIM_REQUIRED."""
    b = Bench(cache)
    h = b.host
    h.transport = lambda t, p: b"\x12\x34"     # not an SPDM message
    with pytest.raises(SevTioError) as err:
        h.connect()
    assert err.value.status == R.ERR_IN_DEV_CONN
    with pytest.raises(SevTioError) as err:
        h.reconnect()
    assert err.value.status == R.RECLAIM_REQUIRED
    assert transitions(recorder, "psp.dev") == ["CONNECTING", "ERROR"]


def test_dev_cert_changed(cache: Path, tmp_path: Path) -> None:
    """Reconnecting the same device context to a device with another certificate chain:
    DEV_CERT_CHANGED."""
    b = Bench(cache)
    h = b.host
    h.connect()
    h.spdm_ok(SevCmd.TIO_DEV_DISCONNECT, lambda c: abi.TioDevDisconnectCmd(
        length=0x30, spdm_ctrl=c, dev_ctx_sla=h.dev_ctx.sla))   # type: ignore[union-attr]
    other, _ = in_process_device(identity_dir=str(tmp_path / "other"))
    h.transport = other
    with pytest.raises(SevTioError) as err:
        h.reconnect()
    assert err.value.status == R.DEV_CERT_CHANGED


def test_roll_key_and_fence(cache: Path, recorder: Recorder) -> None:
    b = Bench(cache)
    h = b.host
    h.connect()
    h.roll_key()
    assert [e["key_set"] for e in recorder.of("psp.key_rolled")] == [1]
    ev = b.guest.lock(RID)
    b.guest.accept(RID, ev)
    assert ev  # RUN now; a forced unbind fences the guest's DMA and MMIO
    h.stop(RID, force=True)
    page = h.mem.alloc()
    status_cmd = abi.TioAsidFenceStatusCmd(length=0x20, dev_ctx_sla=h.dev_ctx.sla,  # type: ignore
                                           asid=1, status_pa=page).pack()
    assert b.raw(SevCmd.TIO_ASID_FENCE_STATUS, status_cmd) == R.SUCCESS
    assert struct.unpack("<Q", h.mem.read(page, 8))[0] == 0b1101    # DMA 1, MMIO 3
    assert b.raw(SevCmd.TIO_ASID_FENCE_CLEAR, abi.TioAsidFenceClearCmd(
        length=0x20, dev_ctx_sla=h.dev_ctx.sla, gctx_paddr=h.gctx).pack()) == R.SUCCESS  # type: ignore
    b.raw(SevCmd.TIO_ASID_FENCE_STATUS, status_cmd)
    assert struct.unpack("<Q", h.mem.read(page, 8))[0] == 0


# -- guest messages ------------------------------------------------------------------------


@pytest.fixture
def locked(cache: Path) -> Bench:
    b = Bench(cache)
    b.host.connect()
    b.ev = b.guest.lock(RID)   # type: ignore[attr-defined]
    return b


def test_tdi_info_and_evidence(locked: Bench) -> None:
    b, ev = locked, locked.ev   # type: ignore[attr-defined]
    info = ev.info
    assert (info.guest_device_id, info.tdi_status, info.lock_flags) == (RID, 0, 1)
    assert info.meas_digest_info & abi.MEAS_DIGEST_INFO_VALID
    assert info.certs_digest == hashlib.sha384(ev.certificates).digest()
    assert info.interface_report_digest == hashlib.sha384(ev.report).digest()
    assert info.tdi_report_count == 1 and info.spdm_algos != 0
    # the report the guest got is the device's (TDISP report: MMIO ranges = BARs)
    assert [r.range_id for r in ev.ranges] == [0, 2, 4]
    # a fresh TDI_REPORT from the host bumps the count
    b.host.report(RID)
    info2, regs = b.guest.tdi_info(RID, abi.TIO_GUEST_REQUEST_PARAM_STATE)
    assert info2.tdi_report_count == 2 and regs[2] == 1     # RDX: CONFIG_LOCKED
    # a message naming another guest RID than the TDI the hypervisor's command names
    other, _ = b.guest.send(RID, abi.TioMsgType.TIO_MSG_TDI_INFO_REQ,
                            abi.TioMsgTdiInfoReq(guest_device_id=0x0200), abi.TioMsgTdiInfoRsp)
    assert (other.guest_device_id, other.tdi_status) == (0x0200, abi.TdiStatus.INVALID)
    # no TDI at that RID on the hypervisor's side: the exit fails before the PSP
    with pytest.raises(SevTioError, match="INVALID_TDI"):
        b.guest.tdi_info(0x0200)


def test_host_cannot_swap_evidence(cache: Path) -> None:
    """The host hands over another report in the GUID table: the guest's digest check
    (against the PSP's sealed TDI_INFO) refuses it."""
    b = Bench(cache)
    b.host.connect()
    bind = b.host.bind

    def tampering_bind(rid: int, run: bool = False) -> Any:
        tdi = bind(rid, run)
        report = bytearray(tdi.evidence[abi.SpdmDobjId.REPORT])
        report[-1] ^= 1
        tdi.evidence[abi.SpdmDobjId.REPORT] = bytes(report)
        return tdi

    b.host.bind = tampering_bind   # type: ignore[method-assign]
    with pytest.raises(SevTioError, match="report"):
        b.guest.lock(RID)


def test_mmio_validate_rejects(locked: Bench) -> None:
    """issue 12 item 4: a range the report does not cover, a wrong range_id, a non-4K
    range: each refused with its MMIO_VALIDATE status; then the other checks."""
    b, ev = locked, locked.ev   # type: ignore[attr-defined]
    g = b.guest
    r = tee_ranges(ev)[0]
    base = r.first_page * 0x1000
    assert g.mmio_validate(RID, base, r.number_of_pages + 1, r.range_id).status == \
        MV.OUT_OF_RANGE
    assert g.mmio_validate(RID, base + 0x1000, r.number_of_pages, r.range_id,
                           offset=1).status == MV.OUT_OF_RANGE
    assert g.mmio_validate(RID, base, 0, r.range_id).status == MV.OUT_OF_RANGE
    assert g.mmio_validate(RID, base, 1, 0x7F).status == MV.NOT_REPORTED
    assert g.mmio_validate(RID, base + 0x800, 1, r.range_id).status == MV.NOT_4K
    assert g.mmio_validate(RID, base + 0x1000, 1, r.range_id).status == MV.NOT_MAPPED
    msix = next(x for x in ev.ranges if x.range_attributes & 0x3)
    assert g.mmio_validate(RID, msix.first_page * 0x1000, 1, msix.range_id).status == \
        MV.NOT_ASSIGNED
    wrong_rid, _ = g.send(RID, abi.TioMsgType.TIO_MSG_MMIO_VALIDATE_REQ,
                          abi.TioMsgMmioValidateReq(guest_device_id=0x0200, subrange_base=base,
                                                    subrange_page_count=1, flags=1,
                                                    range_id=r.range_id),
                          abi.TioMsgMmioValidateRsp)
    assert wrong_rid.status == MV.INVALID_TDI
    rsp = g.mmio_validate(RID, base, r.number_of_pages, r.range_id)
    assert (rsp.status, rsp.flags & 1) == (MV.SUCCESS, 1)           # changed
    rsp = g.mmio_validate(RID, base, r.number_of_pages, r.range_id)
    assert (rsp.status, rsp.flags & 1) == (MV.SUCCESS, 0)           # already validated
    # after STOP (the TDI is unbound) validating is refused, invalidating still works
    g.tio_op(abi.SevTioOp.STOP, RID)
    assert g.mmio_validate(RID, base, 1, r.range_id).status == MV.TDI_UNBOUND
    assert g.mmio_validate(RID, base, 1, r.range_id, validated=False).status == MV.SUCCESS
    assert g.sdte_write(RID, True).status == abi.SdteWriteStatus.TDI_NOT_BOUND
    assert g.sdte_write(RID, False).status == abi.SdteWriteStatus.SUCCESS


def test_guest_message_replay_and_forgery_refused(locked: Bench, recorder: Recorder) -> None:
    """issue 12 item 4 guest_msg_replay: the relay resends a sealed message, or alters one,
    or seals its own with a guessed key: TIO_GUEST_REQUEST refuses (INVALID_PARAM), writes
    no response, and the guest's next message still goes through."""
    b = locked
    g = b.guest
    r = tee_ranges(b.ev)[0]   # type: ignore[attr-defined]
    g.mmio_validate(RID, r.first_page * 0x1000, 1, r.range_id)
    replay = g.last_sealed
    assert g.relay(replay, RID)[0] == R.INVALID_PARAM
    assert b.host.mem.read(g.res_page, 0x60) == bytes(0x60)     # nothing written
    forged = bytearray(replay)
    forged[0x60] ^= 0x80
    assert g.relay(bytes(forged), RID)[0] == R.INVALID_PARAM
    own = seal(os.urandom(32), abi.TioMsgType.TIO_MSG_MMIO_VALIDATE_REQ, g.seqno + 1,
               bytes(48))
    assert g.relay(own, RID)[0] == R.INVALID_PARAM
    skipped = seal(g.vmpck, abi.TioMsgType.TIO_MSG_TDI_INFO_REQ, g.seqno + 3,
                   abi.TioMsgTdiInfoReq(guest_device_id=RID).pack())
    assert g.relay(skipped, RID)[0] == R.INVALID_PARAM           # skipping ahead
    assert g.mmio_validate(RID, r.first_page * 0x1000, 1, r.range_id,
                           validated=False).status == MV.SUCCESS
    refused = [e for e in recorder.of("psp.refused") if e["cmd"] == "TIO_GUEST_REQUEST"]
    assert len(refused) == 4


def test_guest_request_response_is_sealed_for_the_guest(locked: Bench) -> None:
    """The response page holds msg_type request+1 and sequence number request+1, sealed
    with VMPCK0 (decrypted here with AESGCM directly)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    b = locked
    g = b.guest
    seq = g.seqno + 1
    g.tdi_info(RID)
    page = b.host.mem.read(g.res_page, 0x60 + 192)
    seqno, = struct.unpack_from("<Q", page, 0x20)
    algo, hver, hsz, mtype, mver, msz = struct.unpack_from("<BBHBBH", page, 0x30)
    assert (seqno, algo, hver, hsz, mtype, mver, msz) == (seq + 1, 1, 1, 0x60, 20, 1, 192)
    plain = AESGCM(g.vmpck).decrypt(struct.pack("<Q4x", seqno), page[0x60:] + page[:16],
                                    page[0x30:0x60])
    assert struct.unpack_from("<HH", plain) == (RID, 0)


# -- whole sequences ---------------------------------------------------------------------


def whole_flow(b: Bench) -> None:
    h, g = b.host, b.guest
    h.connect()
    ev = g.lock(RID)
    assert g.accept(RID, ev) == 2
    assert h.tdi_status(RID).state == 4                    # RUN
    g.unlock(RID, ev)
    assert RID not in h.tdis
    h.disconnect()


def test_whole_flow_in_process(cache: Path, recorder: Recorder) -> None:
    b = Bench(cache)
    whole_flow(b)
    assert transitions(recorder, "psp.tdi") == ["BINDING", "LOCKED", "STARTING", "RUN",
                                                "UNBINDING", "UNBOUND"]
    assert transitions(recorder, "psp.dev") == ["CONNECTING", "CONNECTED", "DISCONNECTING",
                                                "CREATED"]
    # the device's own TDI state machine went the same way
    assert transitions(recorder, "tdi") == ["CONFIG_LOCKED", "RUN", "CONFIG_UNLOCKED"]


def test_whole_flow_over_spdm_emu_socket(cache: Path, sock_dir: Path,
                                         recorder: Recorder) -> None:
    """`serve --spdm-port`: every object the PSP asks for crosses DMTF's socket protocol;
    the BARs are assigned over vfio-user first, as a guest's firmware would."""
    with over_spdm_emu(sock_dir, cache) as (transport, _running):
        b = Bench(cache)
        b.host.transport = transport
        whole_flow(b)
        assert b.host.objects_sent > 30
    locked = recorder.of("tdisp.locked")
    assert locked and locked[0]["default_stream_id"] == 1


def test_cli_over_spdm_emu_socket(cache: Path, sock_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`vfiouser-tdisp tsm --platform sev-tio --spdm HOST:PORT` against `serve
    --spdm-port`: without assigned BARs the device refuses LOCK and the command exits 1;
    once they are assigned every step passes, the negative steps included."""
    from vfiouser_tdisp.cli import main
    path = str(sock_dir / "cli.sock")
    running = start_devices([path], "virtio-rng", spdm_port=0,
                            identity_options={"identity_dir": str(cache)})
    try:
        spdm = f"127.0.0.1:{running.spdm_servers[0].port}"
        assert main(["tsm", "--platform", "sev-tio", "--spdm", spdm]) == 1
        out = capsys.readouterr().out.splitlines()
        assert [ln.split()[:2] for ln in out] == [["connect", "PASS"], ["lock", "FAIL"]]
        assert "INVALID_DEVICE_CONFIGURATION" in out[-1]
        with attached_guest(path):
            steps = ["connect", "lock", "status", "accept", "mmio_validate_rejects",
                     "guest_msg_replay", "report", "measurements", "certificates",
                     "roll_key", "unlock", "disconnect"]
            root = sock_dir / "root.der"
            root.write_bytes(running.devices[0].identity.root.public_bytes(Encoding.DER))
            assert main(["tsm", "--platform", "sev-tio", "--spdm", spdm, "--root", str(root),
                         *steps]) == 0
        out = capsys.readouterr().out.splitlines()
        assert [ln.split()[:2] for ln in out] == [[s, "PASS"] for s in steps]
        assert "chain anchored" in out[1]
        assert "OUT_OF_RANGE (9)" in out[4] and "NOT_REPORTED (8)" in out[4] \
            and "NOT_4K (10)" in out[4]
    finally:
        running.close()


def test_random_command_buffers_get_a_status_and_leave_the_psp_serving(cache: Path) -> None:
    """Bad input: every command with random contents (right length, random SLAs and
    addresses, some pointing at the host's real buffers) answers a sev_ret_code, never
    raises, and the connected device and bound TDI still complete the whole sequence."""
    import random
    b = Bench(cache)
    h = b.host
    h.connect()
    ev = b.guest.lock(RID)
    rng = random.Random(12)
    # the contexts' SLAs and the guest context (not the host's I/O buffers: a status
    # written over the host's own scatter table is the host's doing, there is no RMP here)
    real = [h.dev_ctx.sla, h.tdis[RID].ctx.sla, h.gctx,  # type: ignore[union-attr]
            abi.SLA_EOL, 0, 1, 2**64 - 1]
    from vfiouser_tdisp.tsm.sev_tio.psp import COMMANDS
    for cmd, (struct_cls, _) in sorted(COMMANDS.items()):
        size = struct_cls.fixed_size()  # type: ignore[attr-defined]
        for _ in range(40):
            buf = bytearray(rng.randbytes(size))
            for off in range(8, size - 7, 8):
                if rng.random() < 0.5:
                    struct.pack_into("<Q", buf, off, rng.choice(real))
            if cmd not in (SevCmd.SNP_GCTX_CREATE, SevCmd.SNP_LAUNCH_UPDATE,
                           SevCmd.TIO_DEV_DISCONNECT, SevCmd.TIO_TDI_UNBIND) \
                    and rng.random() < 0.8:
                struct.pack_into("<I", buf, 0, size)
            if cmd in (SevCmd.TIO_DEV_DISCONNECT, SevCmd.TIO_TDI_UNBIND,
                       SevCmd.TIO_DEV_RECLAIM, SevCmd.TIO_TDI_RECLAIM):
                struct.pack_into("<I", buf, 0, size + 1)   # keep the device: bad length
            status = b.raw(cmd, bytes(buf))
            assert status in set(R), (cmd, status)
            if status == R.SPDM_REQUEST:   # a loop it started: let the host finish it
                h.carry()
    # random guest message pages through the hypervisor
    for _ in range(50):
        regs = b.guest.relay(rng.randbytes(rng.choice((0x60, 0x100, 0x1000))), RID)
        assert regs[0] == R.INVALID_PARAM
    assert b.guest.accept(RID, ev) == 2
    b.guest.unlock(RID, ev)
    h.disconnect()


def test_guest_refuses_a_chain_from_another_root(cache: Path, tmp_path: Path) -> None:
    b = Bench(cache)
    b.host.connect()
    _, other = in_process_device(identity_dir=str(tmp_path / "other"))
    with pytest.raises(SevTioError, match="trusted root"):
        b.guest.lock(RID, root=other.identity.root)


def test_unreachable_spdm_buffers_change_nothing(cache: Path, recorder: Recorder) -> None:
    """A request buffer outside guest memory: INVALID_ADDRESS before the device context
    moves, and the same command with good buffers then connects."""
    from vfiouser_tdisp.firmware import Firmware
    b = Bench(cache)
    fw: Firmware = b.psp          # the PSP is what the firmware port calls
    assert fw.abi_id == 0x54564553      # "SEVT"
    h = b.host
    h.dev_ctx = h.alloc_sla(0x1000)
    b.raw(SevCmd.TIO_DEV_CREATE, abi.TioDevCreateCmd(length=0x20, dev_ctx_sla=h.dev_ctx.sla,
                                                     device_id=RID).pack())
    bad = abi.SpdmCtrl(0x7000_0000, 0x7000_1000, 0x7000_2000, 0x7000_3000).pack()
    assert b.raw(SevCmd.TIO_DEV_CONNECT, abi.TioDevConnectCmd(
        length=0x50, spdm_ctrl=bad, dev_ctx_sla=h.dev_ctx.sla, tc_mask=1).pack()) == \
        R.INVALID_ADDRESS
    assert transitions(recorder, "psp.dev") == []
    h.req, h.resp = h.alloc_sla(0x4000), h.alloc_sla(0x4000)
    h.scratch, h.output = h.alloc_sla(0x4000), h.alloc_sla(0x1000)
    h.reconnect()
    assert transitions(recorder, "psp.dev") == ["CONNECTING", "CONNECTED"]


@pytest.mark.parametrize("rsp,status", [
    (struct.pack("<IIHB5s", 2, 0x10, 0x0100, 1, bytes(5)), R.ERR_IN_DEV_CONN),   # no data
    (struct.pack("<IIHB5s", 1, 0x20, 0x0100, 1, bytes(5)), R.INVALID_PARAM),     # REQ id
    (struct.pack("<IIHB5s", 2, 0x20, 0x0100, 2, bytes(5)), R.INVALID_PARAM),     # type 2
    (struct.pack("<IIHB5s", 2, 0x10_0000, 0x0100, 1, bytes(5)), R.RESPONSE_TOO_LARGE),
])
def test_bad_response_object_ends_the_loop(cache: Path, recorder: Recorder, rsp: bytes,
                                           status: R) -> None:
    """The host re-issues DEV_CONNECT with a RESP object that is empty, of the wrong id or
    data type (GET_VERSION went as type 1) or longer than its buffer: the loop ends with
    that status and the device context needs reclaiming."""
    b = Bench(cache)
    h = b.host
    h.dev_ctx = h.alloc_sla(0x1000)
    b.raw(SevCmd.TIO_DEV_CREATE, abi.TioDevCreateCmd(length=0x20, dev_ctx_sla=h.dev_ctx.sla,
                                                     device_id=RID).pack())
    h.req, h.resp = h.alloc_sla(0x4000), h.alloc_sla(0x4000)
    h.scratch, h.output = h.alloc_sla(0x4000), h.alloc_sla(0x1000)
    connect = abi.TioDevConnectCmd(length=0x50, spdm_ctrl=h.ctrl(), dev_ctx_sla=h.dev_ctx.sla,
                                   tc_mask=1).pack()
    assert b.raw(SevCmd.TIO_DEV_CONNECT, connect) == R.SPDM_REQUEST
    h.write_buf(h.resp, 0x40, rsp)
    assert b.raw(SevCmd.TIO_DEV_CONNECT, connect) == status
    assert b.raw(SevCmd.TIO_DEV_CONNECT, connect) == R.RECLAIM_REQUIRED
    assert transitions(recorder, "psp.dev") == ["CONNECTING", "ERROR"]


def test_cli_against_dmtf_spdm_responder_emu(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Interop with an independent responder: DMTF spdm-emu's ``spdm_responder_emu``
    (libspdm, its own IDE_KM and TDISP samples) behind the PSP.  Built outside the
    repository; set SPDM_RESPONDER_EMU to the binary (its sample keys are looked up in
    ../../libspdm/unit_test/sample_key next to it, or SPDM_EMU_KEYS)."""
    from vfiouser_tdisp.cli import main
    steps = ["connect", "lock", "accept", "mmio_validate_rejects", "guest_msg_replay",
             "unlock", "disconnect"]
    with dmtf_responder_emu(tmp_path) as port:
        rc = main(["tsm", "--platform", "sev-tio", "--spdm", f"127.0.0.1:{port}", *steps])
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in out] == [[step, "PASS"] for step in steps], out
    assert rc == 0


def test_mmio_config(locked: Bench) -> None:
    """MMIO_CONFIG: a range's attributes as the report gives them (msix_table b0, msix_pba
    b1, non_tee_mem b2, mem_attr_updatable b3); non_tee_mem written only where updatable."""
    g = locked.guest
    ranges = {r.range_id: r.range_attributes for r in locked.ev.ranges}   # type: ignore
    for range_id, attrs in ranges.items():
        rsp = g.mmio_config(RID, range_id)
        assert (rsp.status, rsp.flags, rsp.range_id) == (MV.SUCCESS, attrs & 0xF, range_id)
    fixed = next(i for i, a in ranges.items() if not a & 0x8)
    assert g.mmio_config(RID, fixed, write=True, non_tee_mem=True).status == MV.NOT_IMMUTABLE
    updatable = next((i for i, a in ranges.items() if a & 0x8), None)
    if updatable is not None:
        rsp = g.mmio_config(RID, updatable, write=True, non_tee_mem=True)
        assert (rsp.status, rsp.flags & 0x4, rsp.write) == (MV.SUCCESS, 0x4, 1)
    assert g.mmio_config(RID, 0x7F).status == MV.NOT_REPORTED


def test_evidence_needs_enough_data_pages(locked: Bench) -> None:
    """SEV_TIO_GUEST_REQUEST with param REPORT and too few shared pages: INVALID_LEN with
    the pages needed in RBX, before the message reaches the PSP; the guest re-sends the
    same sealed message with enough pages and it is accepted."""
    g = locked.guest
    sealed = seal(g.vmpck, abi.TioMsgType.TIO_MSG_TDI_INFO_REQ, g.seqno + 1,
                  abi.TioMsgTdiInfoReq(guest_device_id=RID).pack())
    g.mem.write(g.req_page, sealed.ljust(0x1000, b"\0"))
    regs = g.exit(abi.SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST, g.req_page, g.res_page, g.data, 0,
                  RID, abi.TIO_GUEST_REQUEST_PARAM_REPORT)
    assert regs[0] == R.INVALID_LEN and regs[1] == 1      # 3 blobs of < 4 KiB: one page
    regs = g.exit(abi.SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST, g.req_page, g.res_page, g.data,
                  regs[1], RID, abi.TIO_GUEST_REQUEST_PARAM_REPORT)
    assert regs[0] == R.SUCCESS


def test_bind_with_run_force_starts_at_once(cache: Path, recorder: Recorder) -> None:
    """TIO_TDI_BIND with RUN_FORCE on an unbound TDI: LOCK_INTERFACE then START_INTERFACE
    in one command; TIO_TDI_INFO writes the 192-byte TDI_INFO answer (tdi_status @2,
    report count @0xB0)."""
    b = Bench(cache)
    b.host.connect()
    b.host.bind(RID, run=True)
    assert transitions(recorder, "psp.tdi") == ["BINDING", "STARTING", "RUN"]
    # the device's TDI state machine: CONFIG_UNLOCKED -> CONFIG_LOCKED -> RUN
    assert transitions(recorder, "tdi")[-2:] == ["CONFIG_LOCKED", "RUN"]
    page = b.host.mem.alloc()
    h = b.host
    assert b.raw(SevCmd.TIO_TDI_INFO, abi.TioTdiStatusCmd(
        length=0x20, dev_ctx_sla=h.dev_ctx.sla, tdi_ctx_sla=h.tdis[RID].ctx.sla,  # type: ignore
        status_paddr=page).pack()) == R.SUCCESS
    raw = h.mem.read(page, 192)
    assert struct.unpack_from("<HH", raw) == (RID, 0)
    assert struct.unpack_from("<Q", raw, 0xB0) == (1,)
    assert raw[0x80:0xB0] == hashlib.sha384(h.tdis[RID].evidence[abi.SpdmDobjId.REPORT]).digest()


def test_refused_report_puts_a_bound_tdi_in_error(locked: Bench, recorder: Recorder) -> None:
    """The device moves its TDI to ERROR (a BAR rewritten while RUN, TDISP 11.2.4); the
    next TIO_TDI_REPORT gets a TDISP error: the PSP's TDI context goes to ERROR, the guest's
    TDI_INFO says INVALID, and only a FORCE unbind + RECLAIM clear it."""
    b = locked
    b.guest.accept(RID, b.ev)   # type: ignore[attr-defined]
    bar0 = b.device.dsm.config.read(0x10, 4)
    b.device.dsm.config.write(0x10, bytes(4))
    b.device.dsm.config.write(0x10, bar0)
    assert transitions(recorder, "tdi")[-1] == "ERROR"           # the device's TDI
    with pytest.raises(SevTioError) as err:
        b.host.report(RID)
    assert err.value.status in (R.SPDM_ERROR, R.ERR_IN_DEV_CONN)
    assert transitions(recorder, "psp.tdi")[-1] == "ERROR"
    info, _ = b.guest.tdi_info(RID)
    assert info.tdi_status == abi.TdiStatus.INVALID
    with pytest.raises(SevTioError) as err:
        b.host.run(RID)
    assert err.value.status == R.RECLAIM_REQUIRED
    b.host.stop(RID, force=True)
    b.host.unbind(RID)
    b.host.disconnect()
