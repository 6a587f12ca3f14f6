"""The TDX module emulator on registers and bytes: every status code it returns, the
request/response page protocol, the TD side, the TDCM buffer, the P-SEAMLDR and the
TD-preserving update.  The device is real (in process, through its DOE mailbox
registers); expected bytes are written out from the cited specification.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest

from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.firmware import CallClass, FirmwareCall
from vfiouser_tdisp.tdisp.messages import TdiState as DeviceTdiState
from vfiouser_tdisp.tsm.platform import in_process_device
from vfiouser_tdisp.tsm.tdx import blob, model
from vfiouser_tdisp.tsm.tdx.abi import (
    NO_PAGE,
    PAGE_SIZE,
    SeamcallLeaf,
    SeamldrLeaf,
    SeamldrParams,
    SeamldrStatus,
    SpdmConfigInfo,
    SpdmMngOp,
    TdcallLeaf,
    TdcmOperation,
    TdTdiState,
    TdxStatus,
    hpa_array,
)
from vfiouser_tdisp.tsm.tdx.host import TdxError, TdxHost, TdxTd
from vfiouser_tdisp.tsm.tdx.model import HostTdiLeaf
from vfiouser_tdisp.tsm.tdx.module import TdxModule

OPERAND_INVALID = 0xC000010000000000       # [ISTG] INVALID_OPERAND 0xc0000100 << 32
OPERAND_BUSY = 0x8000020000000000          # [ISTG] OPERAND_BUSY 0x80000200 << 32
SPDM_REQUEST = 0xC0000F5700000000          # firmware-abi.md B.4
KEY_REFRESH = 0xC0000F4500000000
INTERRUPTED = 0x8000000300000000
TDI_NOT_PRESENT = 0xC0000F4000000000
TDI_INVALID_METADATA = 0xC0000F4100000000
RCX, RDX, R8, R9, R10 = 1, 2, 8, 9, 10


@pytest.fixture(scope="module")
def identity_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tdx-identity")


class Bench:
    def __init__(self, cache: Path, **module_args: Any) -> None:
        self.transport, self.dev = in_process_device("virtio-rng", str(cache))
        self.module = TdxModule(**module_args)
        self.host = TdxHost(self.module, self.transport)
        self.td = TdxTd(self.host)

    def host_call(self, leaf: int, *args: int) -> tuple[int, ...]:
        return self.module.call(FirmwareCall(CallClass.HOST, leaf, args), self.host.mem)

    def td_call(self, leaf: int, *args: int) -> tuple[int, ...]:
        return self.module.call(FirmwareCall(CallClass.GUEST, leaf, args), self.host.mem)

    def device_tdi(self) -> DeviceTdiState:
        return self.dev.tdisp.tdis[0].state

    def running(self) -> None:
        self.host.connect()
        self.host.bind()
        self.td.lock()
        self.td.accept()


@pytest.fixture
def bench(identity_cache: Path) -> Bench:
    return Bench(identity_cache / "identity")


def transitions(rec: Recorder, machine: str) -> list[str]:
    events = rec.of(f"{machine}.transition")
    return ([events[0]["old"]] + [e["new"] for e in events]) if events else []


# -- the request page protocol ---------------------------------------------------------------
def test_connect_first_request_is_get_version_in_a_whole_doe_object(bench: Bench) -> None:
    h = bench.host
    spdm_id = bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, hpa_array(h.spdm_mt))[1]
    h.mem.write(h.conf, SpdmConfigInfo(certificate_slot_mask=0xFF).pack())
    out = bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, spdm_id, h.conf, h.rsp, h.req,
                          hpa_array(h.out_root, 4))
    assert out[0] == SPDM_REQUEST
    assert out[1] == 12       # RCX: request length, DOE header included
    # PCIe r6 §6.30.1: Vendor ID 0001 (PCI-SIG), type 1 (CMA/SPDM), LENGTH 3 DW;
    # DSP0274 GET_VERSION: SPDMVersion 0x10, code 0x84, Param1 0, Param2 0
    assert h.mem.read(h.req, 12) == bytes.fromhex("01000100 03000000 10840000")
    # the response page answers it; the next call resumes and asks for GET_CAPABILITIES
    h._exchange(out[1])
    assert h.mem.read(h.rsp, 8)[:4] == bytes.fromhex("01000100")
    out = bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, spdm_id, h.conf, h.rsp, h.req,
                          hpa_array(h.out_root, 4))
    assert out[0] == SPDM_REQUEST
    assert h.mem.read(h.req + 8, 2)[1] == 0xE1      # DSP0274 GET_CAPABILITIES


def test_unknown_leaves(bench: Bench) -> None:
    assert bench.host_call(0x7F, 0)[0] == OPERAND_INVALID        # operand RAX (0)
    assert bench.td_call(0x7F, 0)[0] == OPERAND_INVALID
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, 0x999, 0, 0, 0, 0)[0] == \
        OPERAND_INVALID | RCX                                     # no such spdm_id


def test_create_operand_errors(bench: Bench) -> None:
    h = bench.host
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 1 << 25, hpa_array(h.spdm_mt))[0] \
        == OPERAND_INVALID | RCX                                  # reserved func_id bits
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, 0x1000)[0] == \
        OPERAND_INVALID | RDX                                     # mt page not in memory
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, hpa_array(h.spdm_mt))[0] == 0
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, hpa_array(h.spdm_mt))[0] == \
        OPERAND_BUSY | RCX                                        # second context, same RID


def test_connect_config_checks(bench: Bench) -> None:
    h = bench.host
    spdm_id = bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, hpa_array(h.spdm_mt))[1]
    h.mem.write(h.conf, SpdmConfigInfo(certificate_slot_mask=0).pack())
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, spdm_id, h.conf, h.rsp, h.req,
                           hpa_array(h.out_root, 4))[0] == OPERAND_INVALID | RDX
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, spdm_id, h.conf, h.rsp + 8, h.req,
                           hpa_array(h.out_root, 4))[0] == OPERAND_INVALID | R8


def test_one_operation_at_a_time(bench: Bench) -> None:
    h = bench.host
    a = bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, hpa_array(h.spdm_mt))[1]
    b = bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 8, hpa_array(h.stream_mt))[1]
    h.mem.write(h.conf, SpdmConfigInfo(certificate_slot_mask=1).pack())
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, a, h.conf, h.rsp, h.req,
                           hpa_array(h.out_root, 4))[0] == SPDM_REQUEST
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, b, h.conf, h.rsp, h.req,
                           hpa_array(h.out_root, 4))[0] == OPERAND_BUSY | RCX
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_DISCONNECT, a, h.rsp, h.req)[0] == \
        OPERAND_BUSY | RCX
    assert bench.host_call(SeamcallLeaf.TDH_SYS_SHUTDOWN, 0)[0] == OPERAND_BUSY


def test_transport_failure_ends_the_operation(bench: Bench, recorder: Recorder) -> None:
    h = bench.host
    spdm_id = bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, hpa_array(h.spdm_mt))[1]
    h.mem.write(h.conf, SpdmConfigInfo(certificate_slot_mask=1).pack())
    args = (spdm_id, h.conf, h.rsp, h.req, hpa_array(h.out_root, 4))
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, *args)[0] == SPDM_REQUEST
    h.mem.write(h.rsp, bytes(8))        # "the DOE transfer failed": no valid object
    out = bench.host_call(SeamcallLeaf.TDH_SPDM_CONNECT, *args)
    assert out[0] == model.TDX_DEVICE_ERROR | model.DeviceErrorKind.TRANSPORT
    assert transitions(recorder, "tdx.spdm") == ["CREATED", "CONNECTING", "ERROR"]
    # ERROR -> disconnect -> DISCONNECTED (no session: nothing sent), then delete
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_DISCONNECT, spdm_id, h.rsp, h.req)[0] == 0
    out = bench.host_call(SeamcallLeaf.TDH_SPDM_DELETE, spdm_id, hpa_array(h.spdm_mt))
    assert out[:2] == (0, hpa_array(h.spdm_mt))       # RCX: the released spdm_mt


def test_preempted_calls_resume(identity_cache: Path) -> None:
    b = Bench(identity_cache / "identity", preempt_every=3)
    b.host.connect()
    statuses = [s for _, s in b.host.calls]
    assert statuses.count(INTERRUPTED) >= 5
    assert b.module.spdm[b.host.link.spdm_id].fsm.state.name == "CONNECTED"


def test_session_key_refresh_required(identity_cache: Path, recorder: Recorder) -> None:
    """Checked when an operation starts (one operation at a time: the refresh cannot run
    in the middle of another).  The connect's secured FINISH / GET_MEASUREMENTS count."""
    b = Bench(identity_cache / "identity", key_refresh_after=2)
    b.host.connect()           # the KM SETUP meets the limit: MNG(KEY_UPDATE), then KM again
    names = [(n, s) for n, s in b.host.calls]
    i = names.index(("TDH.IDE.STREAM.KM", KEY_REFRESH))
    assert names[i + 1][0] == "TDH.SPDM.MNG"      # KEY_UPDATE, exempt from the check
    assert names[i + 1][1] == SPDM_REQUEST
    assert b.module.streams[(b.host.link.spdm_id, 1)].fsm.state.name == "ACTIVE"
    b.host.bind()              # 13 secured IDE_KM objects since: refresh again first
    assert names.count(("TDH.IDE.STREAM.KM", KEY_REFRESH)) == 1
    assert ("TDH.TDI.BIND", KEY_REFRESH) in b.host.calls
    updates = [e for e in recorder.of("tdx.spdm.transition") if e.get("op") == "KEY_UPDATE"]
    assert len(updates) == 2


def test_delete_and_disconnect_in_wrong_state(bench: Bench) -> None:
    h = bench.host
    h.connect()
    sid, stream = h.link.spdm_id, h.link.stream_id
    state_incorrect = model.TDX_OBJECT_STATE_INCORRECT
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_DELETE, sid, 0)[0] == state_incorrect | RCX
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_DISCONNECT, sid, h.rsp, h.req)[0] == \
        state_incorrect | RCX                                    # a stream is still there
    assert bench.host_call(SeamcallLeaf.TDH_IDE_STREAM_DELETE, sid, stream, 0)[0] == \
        state_incorrect | RDX                                    # ACTIVE: block it first
    assert bench.host_call(SeamcallLeaf.TDH_IDE_STREAM_KM, sid, stream, 7, h.rsp, h.req)[0] \
        == OPERAND_INVALID | R8                                  # no KM operation 7
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_MNG, sid, 3, NO_PAGE, h.rsp, h.req,
                           NO_PAGE)[0] == OPERAND_INVALID | RDX
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_MNG, sid, SpdmMngOp.RECOLLECT, NO_PAGE,
                           h.rsp, h.req, NO_PAGE)[0] == OPERAND_INVALID | 11   # R11: no out
    # a page that is not page-aligned: the register that holds it ([TDXC1] tdx.c order)
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_MNG, sid, 0, NO_PAGE, h.rsp + 4, h.req,
                           NO_PAGE)[0] == OPERAND_INVALID | R9
    assert bench.host_call(SeamcallLeaf.TDH_IDE_STREAM_KM, sid, stream, 1, h.rsp,
                           h.req + 4)[0] == OPERAND_INVALID | R10
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_DISCONNECT, sid, h.rsp + 4, h.req)[0] == \
        OPERAND_INVALID | RDX
    h.disconnect()
    assert not bench.module.spdm and not bench.module.streams


def test_whole_sequence_state_tables(bench: Bench, recorder: Recorder) -> None:
    """The order of firmware-abi.md B.4 (connect, disconnect) and B.6 (bind, start, unbind),
    seen in each object's transition events, and the device's own TDISP state."""
    bench.running()
    assert bench.device_tdi() is DeviceTdiState.RUN
    bench.td.unlock()
    assert bench.device_tdi() is DeviceTdiState.CONFIG_UNLOCKED
    bench.host.disconnect()
    assert transitions(recorder, "tdx.spdm") == ["CREATED", "CONNECTING", "CONNECTED",
                                                 "DISCONNECTING", "DISCONNECTED"]
    assert transitions(recorder, "tdx.ide_stream") == ["CREATED", "KEYING", "ACTIVE",
                                                       "BLOCKED", "STOPPING", "STOPPED"]
    assert transitions(recorder, "tdx.tdi") == ["BINDING", "LOCKED", "STARTING", "RUN",
                                                "STOPPING", "UNLOCKED"]
    locked = recorder.of("tdisp.locked")
    assert locked and locked[0]["default_stream_id"] == 1


# -- host TDI calls ([MODEL]) -------------------------------------------------------------------
def test_host_tdi_call_errors(bench: Bench) -> None:
    h = bench.host
    h.connect()
    sid = h.link.spdm_id
    assert bench.host_call(HostTdiLeaf.TDH_TDI_BIND, sid, 0, 0, h.rsp, h.req, 1)[0] == \
        OPERAND_INVALID | R8                                     # TD handle 0
    assert bench.host_call(HostTdiLeaf.TDH_TDI_BIND, sid, 0, 1, h.rsp, h.req, 9)[0] == \
        OPERAND_INVALID | 11                                     # no stream 9
    assert bench.host_call(HostTdiLeaf.TDH_TDI_START, sid, 0, h.rsp, h.req)[0] == \
        OPERAND_INVALID | RDX                                    # not bound
    h.bind()
    assert bench.host_call(HostTdiLeaf.TDH_TDI_START, sid, 0, h.rsp, h.req)[0] == \
        model.TDX_OBJECT_STATE_INCORRECT | RDX                   # the TD has not consented
    assert bench.host_call(HostTdiLeaf.TDH_TDI_UNBIND, sid, 0)[0] == \
        model.TDX_OBJECT_STATE_INCORRECT | RDX                   # still LOCKED
    assert bench.host_call(HostTdiLeaf.TDH_MMIO_MAP, 0, 0x1000, 0x1000, 1)[0] == \
        OPERAND_INVALID | R8                                     # not a report range
    assert bench.host_call(HostTdiLeaf.TDH_MMIO_MAP, 0x99, 0, 0, 1)[0] == OPERAND_INVALID | RCX


# -- the TD side ------------------------------------------------------------------------------
def test_td_calls_without_a_binding(bench: Bench) -> None:
    for leaf, args in ((TdcallLeaf.TDG_TDI_RD, (0, 2, 0)), (TdcallLeaf.TDG_TDI_START, (0, 1)),
                       (TdcallLeaf.TDG_DMAR_ACCEPT, (0, 0)),
                       (TdcallLeaf.TDG_MMIO_ACCEPT, (0, 0, 0, 1))):
        assert bench.td_call(leaf, *args)[0] == TDI_NOT_PRESENT


def test_td_lock_accept_codes(bench: Bench) -> None:
    h, td = bench.host, bench.td
    h.connect()
    h.bind()
    td.lock()
    tdi = bench.module.tdis[0]
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[:2] == (0, TdTdiState.LOCKED)
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 5, 0)[:2] == (0, tdi.bind_session_id)
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 0x77, 0)[0] == TDI_INVALID_METADATA
    # report hash: SHA-384 of the report the TD got through the untrusted host
    out = bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 3, td.hash_page)
    assert out[:2] == (0, 48)
    assert h.mem.read(td.hash_page, 48) == hashlib.sha384(td.report).digest()
    # TDG.TDI.START before the accepts; with the wrong session
    assert bench.td_call(TdcallLeaf.TDG_TDI_START, 0, tdi.bind_session_id)[0] == \
        model.TDX_OBJECT_STATE_INCORRECT | RCX
    assert bench.td_call(TdcallLeaf.TDG_TDI_START, 0, tdi.bind_session_id + 1)[0] == \
        OPERAND_INVALID | RDX
    base, pages = tdi.ranges[0]
    assert bench.td_call(TdcallLeaf.TDG_MMIO_ACCEPT, base | 1, 0, 0, pages)[0] == \
        OPERAND_INVALID | RCX                                    # 2 MiB level: 4 KiB only
    assert bench.td_call(TdcallLeaf.TDG_MMIO_ACCEPT, base, 9, 0, 1)[0] == \
        OPERAND_INVALID | RDX                                    # no range 9
    assert bench.td_call(TdcallLeaf.TDG_MMIO_ACCEPT, base, 0, 0, pages + 1)[0] == \
        OPERAND_INVALID | R9                                     # beyond the range
    assert bench.td_call(TdcallLeaf.TDG_MMIO_ACCEPT, base + PAGE_SIZE * 64, 0, 0, 1)[0] == \
        OPERAND_INVALID | RCX                                    # GPA the host did not map
    assert bench.td_call(TdcallLeaf.TDG_DMAR_ACCEPT, 0, 1)[0] == OPERAND_INVALID | RDX  # L2
    td.accept()
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[:2] == (0, TdTdiState.RUN)
    assert bench.device_tdi() is DeviceTdiState.RUN


def test_vmcall_and_vp_enter_registers(bench: Bench) -> None:
    # RCX bitmap, R10 = 0 (GHCI), R11 = 0x10007, R12 device, R13 GPA, R14 size, R15 vector
    args = (0xFC00, 0, 0, 0, 0, 0x10007, 0x0008, 0x8000_1000, 0x2000, 0x30)
    out = bench.td_call(TdcallLeaf.TDG_VP_VMCALL, *args)
    assert out[0] == 0 and out[5] == 0                           # RAX TDX_SUCCESS, R10 SUCCESS
    assert bench.td_call(TdcallLeaf.TDG_VP_VMCALL, *args)[5] == 1   # RETRY: one pending
    enter = bench.host_call(SeamcallLeaf.TDH_VP_ENTER, 0x1000)
    assert enter[0] == 77                                        # EXIT_REASON_TDCALL
    assert enter[1] == 0xFC00 and enter[5:] == (0, 0x10007, 0x0008, 0x8000_1000, 0x2000, 0x30)
    assert bench.host_call(SeamcallLeaf.TDH_VP_ENTER, 0x1000)[0] == 1   # nothing pending
    bad = (0xFC00, 0, 0, 0, 0, 0x10001, 0, 0, 0, 0)             # not TDCM
    assert bench.td_call(TdcallLeaf.TDG_VP_VMCALL, *bad)[5] == 0x8000000000000000


def test_tdcm_buffer_bytes(bench: Bench) -> None:
    h, td = bench.host, bench.td
    h.connect()
    h.bind()
    # GET_TDI_STATE: the host answers in the shared buffer: status COMPLETED (1) at byte 8,
    # error 0 at 9, data_length 4 at 16, data = u32 1 (LOCKED) at 20
    data = td.tdcm(TdcmOperation.GET_TDI_STATE)
    raw = h.mem.read(td.buffer, 24)
    assert raw == struct.pack("<HBBIBBHII", 6, 0, 0, 0, 1, 0, 0, 0, 4) + struct.pack("<I", 1)
    assert data == struct.pack("<I", 1)
    # an operation for a device that is not bound: status ERROR (2), error INVALID_STATE (15)
    td2 = TdxTd(h, func_id=0x0100)
    with pytest.raises(TdxError, match="ERROR, error INVALID_STATE"):
        td2.tdcm(TdcmOperation.GET_TDI_REPORT)
    assert h.mem.read(td2.buffer + 8, 2) == bytes([2, 15])
    # an unknown operation
    h.mem.write(td.buffer, struct.pack("<HBBIBBHII", 9, 0, 0, 0, 0, 0, 0, 0, 0))
    td.tdcall(TdcallLeaf.TDG_VP_VMCALL, 0, 0, 0, 0, 0, 0x10007, 0, td.buffer, td.size, 0)
    h.serve_vmcall()
    assert h.mem.read(td.buffer + 8, 2) == bytes([2, 15])


def test_lock_detects_a_tampered_report(bench: Bench) -> None:
    h, td = bench.host, bench.td
    h.connect()
    h.bind()
    orig = h._tdcm     # the module's copy stays; the (untrusted) host hands over another

    def lying(op: TdcmOperation, device: int, data: bytes) -> Any:
        status, error, payload = orig(op, device, data)
        if op is TdcmOperation.GET_TDI_REPORT:
            payload = payload[:-1] + bytes([payload[-1] ^ 1])
        return status, error, payload
    h._tdcm = lying  # type: ignore[method-assign]
    with pytest.raises(TdxError, match="REPORT_HASH"):
        td.lock()


# -- P-SEAMLDR and the TD-preserving update ---------------------------------------------------
def test_seamldr_info_bytes(bench: Bench) -> None:
    h = bench.host
    buf = h.mem.alloc(256, 256)
    assert bench.host_call(SeamldrLeaf.SEAMLDR_INFO, buf + 16)[0] == SeamldrStatus.EBADPARAM
    assert bench.host_call(SeamldrLeaf.SEAMLDR_INFO, buf)[0] == 0
    raw = h.mem.read(buf, 256)
    assert struct.unpack_from("<I", raw, 0x08)[0] == 0x8086            # vendor_id
    assert struct.unpack_from("<HH", raw, 0x12) == (0, 2)             # minor, major
    assert struct.unpack_from("<I", raw, 0x1C)[0] == model.NUM_UPDATES  # num_remaining_updates
    assert raw[0xA0] == 1 and raw[0xA2] == 1                          # seam_ready, p_seam_ready
    assert raw[0x38:0x68] == bench.module.mrseam


def install_params(bench: Bench, image: bytes, **changes: Any) -> int:
    pieces = blob.parse_image(image)
    h = bench.host
    sig = h.mem.alloc()
    h.mem.write(sig, pieces.sigstruct)
    pages = []
    for i in range(pieces.header.module_nr_pages):
        pages.append(h.mem.alloc())
        h.mem.write(pages[-1], pieces.module[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
    params = SeamldrParams(version=0, scenario=1, sigstruct_pa=sig,
                           num_module_pages=len(pages),
                           mod_pages_pa_list=SeamldrParams.page_list(pages)).replace(**changes)
    pa = h.mem.alloc()
    h.mem.write(pa, params.pack())
    return pa


def test_seamldr_install_statuses(bench: Bench) -> None:
    good = blob.build_image((1, 5, 21))
    pa = install_params(bench, good)
    install = SeamldrLeaf.SEAMLDR_INSTALL
    assert bench.host_call(install, pa)[0] == SeamldrStatus.EBADHANDOFF   # not shut down
    assert bench.host_call(SeamcallLeaf.TDH_SYS_SHUTDOWN, 0)[0] == 0
    # while shut down, TDX Connect calls are refused
    assert bench.host_call(SeamcallLeaf.TDH_SPDM_CREATE, 0, 0)[0] == model.TDX_MODULE_SHUT_DOWN
    assert bench.host_call(install, pa + 8)[0] == SeamldrStatus.EBADPARAM   # misaligned
    for change in ({"version": 1}, {"scenario": 0}, {"num_module_pages": 0},
                   {"num_module_pages": 497}, {"sigstruct_pa": 0}):
        assert bench.host_call(install, install_params(bench, good, **change))[0] == \
            SeamldrStatus.EBADPARAM, change
    for name in ("bad-signature", "foreign-signer", "sigstruct-magic", "module-hash",
                 "other-major"):
        breakage = blob.BREAKAGES[name]
        assert bench.host_call(install, install_params(bench, breakage.make(good)))[0] == \
            breakage.refused_by, name
    assert bench.module.num_remaining_updates == model.NUM_UPDATES      # nothing consumed
    assert bench.host_call(install, pa)[0] == 0
    assert bench.host_call(install, pa)[0] == 0       # the same INSTALL on another CPU
    assert bench.module.num_remaining_updates == model.NUM_UPDATES - 1
    assert bench.host_call(SeamcallLeaf.TDH_SYS_LP_INIT)[0] == 0
    assert bench.host_call(SeamcallLeaf.TDH_SYS_UPDATE)[0] == 0
    rd = [bench.host_call(SeamcallLeaf.TDH_SYS_RD, 0, f)[3]
          for f in (0x0800000100000004, 0x0800000100000003, 0x0800000100000005)]
    assert rd == [1, 5, 21]                                           # major minor update
    assert bench.host_call(SeamcallLeaf.TDH_SYS_RD, 0, 0x0A00000300000008)[3] & 2  # TD_PRESERVING
    assert bench.host_call(SeamcallLeaf.TDH_SYS_RD, 0, 0x1234)[0] == OPERAND_INVALID | RDX
    assert bench.host_call(SeamcallLeaf.TDH_SYS_UPDATE)[0] == \
        model.TDX_OBJECT_STATE_INCORRECT                              # nothing to update


def test_updates_exhausted(identity_cache: Path) -> None:
    b = Bench(identity_cache / "identity", num_updates=1)
    b.host.install(blob.build_image((1, 5, 21)))
    assert b.host.seamldr_info().num_remaining_updates == 0
    with pytest.raises(TdxError) as refused:
        b.host.install(blob.build_image((1, 5, 22)))
    assert refused.value.status == SeamldrStatus.EBADCALL == model.UPDATES_EXHAUSTED
    assert b.host.module_version() == (1, 5, 21)
    assert b.module.fsm.state.name == "READY"         # the old module resumed


def test_td_preserving_update_keeps_the_tdi_running(bench: Bench, recorder: Recorder) -> None:
    bench.running()
    tdi = bench.module.tdis[0]
    session = tdi.bind_session_id
    bench.host.install(blob.build_image((1, 5, 21)))
    assert bench.host.module_version() == (1, 5, 21)
    assert bench.td.state() is TdTdiState.RUN
    assert bench.td.rd(5) == session
    assert bench.device_tdi() is DeviceTdiState.RUN
    bench.host.mng(SpdmMngOp.HEARTBEAT)              # the SPDM session survived the update
    bench.host.mng(SpdmMngOp.KEY_UPDATE)
    assert transitions(recorder, "tdx.module") == ["READY", "SHUT_DOWN", "INSTALLED", "READY"]
    bench.td.unlock()
    bench.host.disconnect()


def test_kernel_refuses_broken_images() -> None:
    good = blob.build_image((1, 5, 21))
    assert blob.checksum_ok(good)
    for b in blob.BREAKAGES.values():
        image = b.make(good)
        if b.refused_by == "kernel":
            with pytest.raises(blob.ImageError):
                blob.parse_image(image)
        else:
            blob.parse_image(image)
    assert not blob.checksum_ok(blob.BREAKAGES["checksum"].make(good))
    # header fields of a valid image, from Linux seamldr.c: version 0x200, "TDX-BLOB",
    # 1 sigstruct page, then the module pages; total = (1 + 1 + n) pages
    assert good[:2] == b"\x00\x02" and good[4:12] == b"TDX-BLOB"
    assert struct.unpack_from("<II", good, 12) == (1, 2) and len(good) == 4 * PAGE_SIZE
    # the checksum rule [MODEL]: the 16-bit words of the whole image sum to 0
    assert sum(struct.unpack(f"<{len(good) // 2}H", good)) & 0xFFFF == 0


def test_bad_image_keeps_the_platform_working(bench: Bench) -> None:
    bench.running()
    good = blob.build_image((1, 5, 21))
    with pytest.raises(TdxError, match="EBADSIG"):
        bench.host.install(blob.BREAKAGES["bad-signature"].make(good))
    assert bench.td.state() is TdTdiState.RUN and bench.host.module_version() == (1, 5, 20)
    bench.host.mng(SpdmMngOp.HEARTBEAT)


def test_bad_device_answer_is_a_device_error(bench: Bench) -> None:
    """A device that answers the LOCK with TDISP_ERROR (BARs unassigned): TDH.TDI.BIND ends
    with TDX_DEVICE_ERROR | TDISP and the TDI is in ERROR for the TD."""
    fn = bench.dev.dsm
    fn.config.write(0x04, (int.from_bytes(fn.config.read(0x04, 4), "little") & ~0x2)
                    .to_bytes(4, "little"))               # memory decode off
    bench.host.connect()
    with pytest.raises(TdxError) as failed:
        bench.host.bind()
    assert failed.value.status == model.TDX_DEVICE_ERROR | model.DeviceErrorKind.TDISP
    assert bench.module.td_view(0) is None or bench.module.td_view(0) is TdTdiState.ERROR
    bench.host.unbind()
    bench.host.disconnect()


# -- TDCM errors: the host maps each failure to the GHCI error code -------------------------
def test_tdcm_error_codes(identity_cache: Path) -> None:
    """status ERROR (2) with error TDX_MODULE 10, TDXIO_DEVICE 11, SPDM_MESSAGE 12,
    TDISP_MESSAGE 14, INVALID_STATE 15 ([ISTG] tdx_connect.c), each from its cause."""
    def error_of(td: TdxTd, op: TdcmOperation) -> tuple[int, int]:
        with pytest.raises(TdxError):
            td.tdcm(op)
        raw = td.mem.read(td.buffer + 8, 2)
        return raw[0], raw[1]

    b = Bench(identity_cache / "identity")
    b.host.connect()
    # INVALID_STATE: START_TDI before the TD's TDG.TDI.START (the module refuses TDH.TDI.START)
    b.host.bind()
    assert error_of(b.td, TdcmOperation.START_TDI) == (2, 15)
    b.td.unlock()
    # TDX_MODULE: the module refuses the host's call (a func_id with reserved bits)
    bad = TdxTd(b.host, func_id=1 << 25)
    assert error_of(bad, TdcmOperation.BIND) == (2, 10)
    # TDXIO_DEVICE: the DOE transfer fails during BIND
    real = b.host.transport

    def unreachable(object_type: int, payload: bytes) -> bytes:
        raise OSError("device gone")
    b.host.transport = unreachable
    assert error_of(b.td, TdcmOperation.BIND) == (2, 11)
    b.host.transport = real
    b.host.unbind()
    # SPDM_MESSAGE: inside the session the device answers a plain SPDM ERROR
    b.host.transport = lambda t, p: bytes.fromhex("127f0100") if t == 2 else real(t, p)
    assert error_of(b.td, TdcmOperation.BIND) == (2, 12)
    b.host.transport = real
    b.host.unbind()
    b.host.disconnect()
    # TDISP_MESSAGE: the device refuses LOCK_INTERFACE (memory decode off)
    c = Bench(identity_cache / "identity")
    fn = c.dev.dsm
    fn.config.write(0x04, (int.from_bytes(fn.config.read(0x04, 4), "little") & ~0x2)
                    .to_bytes(4, "little"))
    c.host.connect()
    assert error_of(c.td, TdcmOperation.BIND) == (2, 14)


def test_ide_km_failure_is_an_ide_km_device_error(identity_cache: Path,
                                                  recorder: Recorder) -> None:
    """KEY_PROG for a port the device does not have: KP_ACK UNSUPPORTED_PORT_INDEX (status
    2, PCIe r6 §6.99 IDE_KM) fails the KM operation as an IDE_KM device error; the stream
    is in ERROR."""
    from vfiouser_tdisp.ide.capability import KeyDirection, KeySubstream

    def program(km: Any, stream: Any) -> Any:
        yield from km.key_prog_flow(stream.stream_id, 0, KeyDirection.RX, KeySubstream.PR,
                                    bytes(32), bytes(8), port_index=5)
    b = Bench(identity_cache / "identity")
    b.module._program_flow = program  # type: ignore[method-assign]
    with pytest.raises(TdxError) as failed:
        b.host.connect()
    assert failed.value.status == model.TDX_DEVICE_ERROR | model.DeviceErrorKind.IDE_KM
    assert transitions(recorder, "tdx.ide_stream") == ["CREATED", "KEYING", "ERROR"]


def test_random_registers_get_statuses_and_leave_the_module_serving(bench: Bench) -> None:
    """Bad input from a RUN state: random registers for every leaf (except the ones that
    take no operand and would legitimately change the platform) get a status of the ABI,
    never an exception; the TDI stays RUN and the sequence finishes normally."""
    import random
    rng = random.Random(1234)
    bench.running()
    mem = bench.host.mem
    pages = [mem.base + rng.randrange(0, len(mem.data) // PAGE_SIZE) * PAGE_SIZE
             for _ in range(16)]
    skip = {SeamcallLeaf.TDH_SYS_SHUTDOWN, SeamcallLeaf.TDH_SYS_UPDATE,
            SeamcallLeaf.TDH_VP_ENTER, SeamcallLeaf.TDH_SYS_LP_INIT}
    host_leaves = [int(x) for x in (*SeamcallLeaf, *HostTdiLeaf, *SeamldrLeaf) if x not in skip]
    known = {int(s) for s in TdxStatus} | {int(s) for s in SeamldrStatus}
    classes = {int(s) >> 32 for s in TdxStatus} | {model.TDX_DEVICE_ERROR >> 32,
                                                   model.TDX_OBJECT_STATE_INCORRECT >> 32}

    def value() -> int:
        pick = rng.random()
        if pick < 0.3:
            return rng.choice(pages) + rng.choice((0, 0, 8, 0x100))
        if pick < 0.5:
            return rng.randrange(0, 300)
        return rng.getrandbits(64)
    for i in range(3000):
        cls = CallClass.HOST if i % 3 else CallClass.GUEST
        leaf = rng.choice(host_leaves) if cls is CallClass.HOST else \
            rng.choice([int(x) for x in TdcallLeaf] + [0x7F])
        if cls is CallClass.GUEST and leaf == TdcallLeaf.TDG_VP_VMCALL:
            continue              # its status is in R10; covered by its own test
        args = tuple(value() for _ in range(rng.randrange(0, 11)))
        out = bench.module.call(FirmwareCall(cls, leaf, args), mem)
        assert len(out) == 11 and all(0 <= r < 1 << 64 for r in out)
        assert out[0] in known or out[0] >> 32 in classes, (hex(leaf), hex(out[0]))
    assert bench.module.pending is None
    assert bench.td.state() is TdTdiState.RUN
    assert bench.device_tdi() is DeviceTdiState.RUN
    bench.host.mng(SpdmMngOp.HEARTBEAT)
    bench.td.unlock()
    bench.host.disconnect()


def test_iommu_setup_and_clear(bench: Bench) -> None:
    """TDH.IOMMU.SETUP(RCX vtbar, RDX iommu_mt) -> RCX iommu_id; TDH.IOMMU.CLEAR(RCX id)
    -> RCX the released mt (firmware-abi.md B.4, Linux tdx.c tdh_iommu_setup/clear)."""
    h = bench.host
    mt = hpa_array(h.iommu_mt)
    assert bench.host_call(SeamcallLeaf.TDH_IOMMU_SETUP, 0xFED9_0010, mt)[0] == \
        OPERAND_INVALID | RCX                              # VT-d register base not a page
    assert bench.host_call(SeamcallLeaf.TDH_IOMMU_SETUP, 0xFED9_0000, 0x1000)[0] == \
        OPERAND_INVALID | RDX                              # mt not in memory
    out = bench.host_call(SeamcallLeaf.TDH_IOMMU_SETUP, 0xFED9_0000, mt)
    assert out[0] == 0 and out[1] >= 1
    assert bench.host_call(SeamcallLeaf.TDH_IOMMU_SETUP, 0xFED9_0000, mt)[0] == \
        OPERAND_BUSY | RCX                                 # that unit is set up already
    assert bench.host_call(SeamcallLeaf.TDH_IOMMU_CLEAR, out[1] + 7)[0] == OPERAND_INVALID | RCX
    assert bench.host_call(SeamcallLeaf.TDH_IOMMU_CLEAR, out[1])[:2] == (0, mt)
    # without an IOMMU the module cannot let a TDI DMA: TDH.DMAR.ADD is refused
    h.iommu_id = 1         # pretend, so connect() does not set one up
    h.connect()
    with pytest.raises(TdxError) as refused:
        h.bind()
    assert refused.value.status == model.TDX_OBJECT_STATE_INCORRECT | RCX


def test_tdcm_bad_buffers_are_not_served(bench: Bench) -> None:
    """A TDCM VMCALL naming a buffer smaller than the 20-byte header, or outside guest
    memory, is dropped by the host (nothing written, the host keeps serving)."""
    h, td = bench.host, bench.td
    h.connect()
    for gpa, size in ((td.buffer, 8), (0x10, 0x1000)):
        out = td.tdcall(TdcallLeaf.TDG_VP_VMCALL, 0, 0, 0, 0, 0, 0x10007, 0, gpa, size, 0)
        assert out[5] == 0
        assert h.serve_vmcall() is None
    assert struct.unpack("<I", td.tdcm(TdcmOperation.CHECK_TEEIO_SUPP))[0] == 1


# -- the device's TDISP ERROR reaching the TD ([MODEL] TDH.TDI.STATE / GET_REPORT) ---------
TDCM_HEAD = "<HBBIBBHII"    # struct tdvmcall_tdcm ([ISTG] tdx_connect.c), data at 0x14


def _move_bar0(bench: Bench) -> None:
    """PCIe r7.0 §11 Figure 11-5: a BAR of a CONFIG_LOCKED / RUN TDI reprogrammed -> ERROR."""
    cfg = bench.dev.dsm.config
    bar0 = int.from_bytes(cfg.read(0x10, 4), "little")
    cfg.write(0x10, (bar0 + 0x10_0000).to_bytes(4, "little"))
    assert bench.device_tdi() is DeviceTdiState.ERROR


def _device_answers(rec: Recorder, message: str) -> list[str]:
    return [str(e["result"]) for e in rec.of("tdisp.request") if e["message"] == message]


def test_refresh_reads_the_report_from_the_device_again(bench: Bench, recorder: Recorder) -> None:
    bench.running()
    before = len(_device_answers(recorder, "GET_DEVICE_INTERFACE_REPORT"))
    bench.td.refresh()
    # the TD asking again is the module asking the device again (TDISP 1.0: a locked
    # TDI's report is answered in CONFIG_LOCKED and RUN), not the host's copy
    assert _device_answers(recorder, "GET_DEVICE_INTERFACE_REPORT")[before:] == \
        ["DEVICE_INTERFACE_REPORT"]
    assert _device_answers(recorder, "GET_DEVICE_INTERFACE_STATE")[-2:] == \
        ["DEVICE_INTERFACE_STATE", "DEVICE_INTERFACE_STATE"]
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[:2] == (0, TdTdiState.RUN)


def test_device_error_reaches_the_td_through_get_tdi_report(bench: Bench,
                                                            recorder: Recorder) -> None:
    """The device in ERROR refuses the report (PCIe r7.0 §11: GET_DEVICE_INTERFACE_REPORT
    is legal in CONFIG_LOCKED and RUN only -> TDISP_ERROR INVALID_INTERFACE_STATE) and
    answers GET_DEVICE_INTERFACE_STATE with ERROR; the TD then reads state 3 (ERROR,
    firmware-abi.md B.6) and unlock (TDCM UNBIND: STOP_INTERFACE) recovers."""
    h, td = bench.host, bench.td
    bench.running()
    _move_bar0(bench)
    # nobody asked the device yet: the module still shows RUN (2)
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[:2] == (0, TdTdiState.RUN)
    with pytest.raises(TdxError, match="status ERROR, error TDISP_MESSAGE"):
        td.tdcm(TdcmOperation.GET_TDI_REPORT)
    # the shared buffer: operation 4, status ERROR (2) @8, error TDISP_MESSAGE (14) @9,
    # data_length 0 @16
    assert h.mem.read(td.buffer, 20) == struct.pack(TDCM_HEAD, 4, 0, 0, 0, 2, 14, 0, 0, 0)
    assert _device_answers(recorder, "GET_DEVICE_INTERFACE_REPORT")[-1] == \
        "INVALID_INTERFACE_STATE"
    assert _device_answers(recorder, "GET_DEVICE_INTERFACE_STATE")[-1] == \
        "DEVICE_INTERFACE_STATE"
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[:2] == (0, TdTdiState.ERROR)
    assert transitions(recorder, "tdx.tdi")[-2:] == ["RUN", "ERROR"]
    assert [e["trigger"] for e in recorder.of("tdx.tdi.transition")][-1] == "device_error"
    # the host's SEAMCALL: TDX_DEVICE_ERROR | TDISP ([MODEL]); a second one finds the TDI
    # in ERROR: TDX_OBJECT_STATE_INCORRECT on RDX, the device not asked
    calls = [(n, s) for n, s in h.calls if n == "TDH.TDI.REPORT"]
    assert calls[-1][1] == model.TDX_DEVICE_ERROR | 4
    assert h.seamcall(HostTdiLeaf.TDH_TDI_REPORT, h.link.spdm_id, 0, h.rsp, h.req,
                      hpa_array(h.out_root, 4))[0] == model.TDX_OBJECT_STATE_INCORRECT | RDX
    with pytest.raises(TdxError, match="TDI ERROR"):
        td.refresh()
    # unlock: STOP_INTERFACE takes the device's TDI from ERROR to CONFIG_UNLOCKED
    td.unlock()
    assert bench.device_tdi() is DeviceTdiState.CONFIG_UNLOCKED
    assert transitions(recorder, "tdx.tdi")[-3:] == ["ERROR", "STOPPING", "UNLOCKED"]
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[0] == TDI_NOT_PRESENT
    h.disconnect()
    assert not bench.module.spdm


def test_device_error_reaches_the_td_through_get_tdi_state(bench: Bench,
                                                           recorder: Recorder) -> None:
    h, td = bench.host, bench.td
    bench.running()
    _move_bar0(bench)
    # TDCM GET_TDI_STATE: COMPLETED (1), data_length 4, data u32 3 = ERROR (B.6 TD states)
    assert td.tdcm(TdcmOperation.GET_TDI_STATE) == struct.pack("<I", 3)
    assert h.mem.read(td.buffer, 24) == struct.pack(TDCM_HEAD, 6, 0, 0, 0, 1, 0, 0, 0, 4) + \
        struct.pack("<I", 3)
    out = h.seamcall(HostTdiLeaf.TDH_TDI_STATE, h.link.spdm_id, 0, h.rsp, h.req)
    while out[0] == SPDM_REQUEST:                  # asked again: still ERROR
        h._exchange(out[1])
        out = h.seamcall(HostTdiLeaf.TDH_TDI_STATE, h.link.spdm_id, 0, h.rsp, h.req)
    assert out[:2] == (0, TdTdiState.ERROR)
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[:2] == (0, TdTdiState.ERROR)
    # a report is not served for a TDI in ERROR: INVALID_STATE (15)
    with pytest.raises(TdxError, match="error INVALID_STATE"):
        td.tdcm(TdcmOperation.GET_TDI_REPORT)
    td.unlock()
    assert bench.device_tdi() is DeviceTdiState.CONFIG_UNLOCKED
    # recovered: the BAR back, the same TDI locks and runs again
    cfg = bench.dev.dsm.config
    bar0 = int.from_bytes(cfg.read(0x10, 4), "little")
    cfg.write(0x10, (bar0 - 0x10_0000).to_bytes(4, "little"))
    td.lock()
    td.accept()
    assert bench.td_call(TdcallLeaf.TDG_TDI_RD, 0, 2, 0)[:2] == (0, TdTdiState.RUN)


def test_get_state_and_report_operand_errors(bench: Bench) -> None:
    h = bench.host
    h.connect()
    sid = h.link.spdm_id
    out = hpa_array(h.out_root, 4)
    assert bench.host_call(HostTdiLeaf.TDH_TDI_STATE, 0x7777, 0, h.rsp, h.req)[0] == \
        OPERAND_INVALID | RCX
    assert bench.host_call(HostTdiLeaf.TDH_TDI_STATE, sid, 0, h.rsp, h.req)[0] == \
        OPERAND_INVALID | RDX                                    # not bound
    h.bind()
    assert bench.host_call(HostTdiLeaf.TDH_TDI_REPORT, sid, 0, h.rsp + 8, h.req, out)[0] \
        == OPERAND_INVALID | R8                                  # rsp not page-aligned
    assert bench.host_call(HostTdiLeaf.TDH_TDI_REPORT, sid, 0, h.rsp, h.req,
                           0x4000_0000)[0] == OPERAND_INVALID | R10   # out beyond memory
    assert bench.host_call(HostTdiLeaf.TDH_TDI_REPORT, sid, 0, h.rsp, h.req, out)[0] == \
        SPDM_REQUEST                                             # LOCKED: asks the device
