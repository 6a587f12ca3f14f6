"""Fault injection on bytes (docs/faults.md): each fault makes its layer produce exactly
the specification's error or registers, fires as `fault.fired`, and after it is spent
or cleared the layer works again (bad input loses nothing).

Every test hands its own :class:`FaultSet` to the layer under test, as `serve` hands
the process-wide one, so tests never leak armed faults into each other.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.spdm_helpers import vca
from tests.spdm_support import responder
from tests.test_doe_mailbox import DoeIOError, LinuxDoe, echo_handlers, mailbox
from tests.test_ide import program_all_keys, r32, sel_ctl, w32
from tests.test_tdisp import E, L, R, U, ask, drive, make, report, state
from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.device.measurements import FIRMWARE_IDENTITY
from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.faults import SPECS, FaultError, FaultSet, parse_fault
from vfiouser_tdisp.firmware import CallClass, FirmwareCall
from vfiouser_tdisp.ide.capability import IdeCapability, IdeStreamState
from vfiouser_tdisp.ide.km import KEY_PROG, IdeKmObject, IdeKmResponder
from vfiouser_tdisp.pci.config import ConfigSpace
from vfiouser_tdisp.spdm.algorithms import HASHES
from vfiouser_tdisp.tdisp import messages as m
from vfiouser_tdisp.tsm.cca.abi import RmiFid
from vfiouser_tdisp.tsm.cca.rmm import Rmm

V12 = 0x12


@pytest.fixture
def events() -> Iterator[Recorder]:
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    yield rec
    unsubscribe()


def fired(rec: Recorder, name: str) -> list[dict[str, object]]:
    return [e for e in rec.events if e["event"] == "fault.fired" and e["name"] == name]


# -- the registry --------------------------------------------------------------------------


def test_every_fault_is_declared_with_effect_expectation_and_layer() -> None:
    required = {"spdm-busy", "spdm-not-ready", "doe-busy", "doe-error", "doe-delay",
                "measurements-change", "cert-change", "report-range", "tdi-error",
                "ide-fail", "kp-ack", "dma-locked", "fw-busy"}
    assert required <= set(SPECS)
    for spec in SPECS.values():
        assert spec.effect and spec.expect and spec.layer


def test_docs_describe_every_fault() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "faults.md").read_text()
    for name, spec in SPECS.items():
        assert f"### `{name}`" in doc, name
        # the declared effect, expectation and arguments, word for word
        assert f"- effect: {spec.effect}\n" in doc, name
        assert f"- expected of the kernel/guest: {spec.expect}\n" in doc, name
        for arg in spec.args:
            assert f"`{arg.name}` ({arg.kind.__name__}, default {arg.default}): {arg.help}" \
                in doc, (name, arg.name)


def test_parse_positional_keyword_and_errors() -> None:
    spec, args = parse_fault("spdm-not-ready:GET_DIGESTS,rdtm=7")
    assert spec.name == "spdm-not-ready"
    assert args == {"request": "GET_DIGESTS", "rdt_exponent": 10, "rdtm": 7, "count": 1}
    with pytest.raises(FaultError, match="unknown fault"):
        parse_fault("nope")
    with pytest.raises(FaultError, match="not int"):
        parse_fault("doe-busy:many")
    with pytest.raises(FaultError, match="no argument"):
        parse_fault("doe-busy:color=red")
    with pytest.raises(FaultError, match="request required"):
        parse_fault("spdm-busy")


def test_arm_fire_and_clear_events(events: Recorder) -> None:
    fs = FaultSet()
    fs.arm("doe-error:2")
    assert fs.take("doe-error", "mb") and fs.active("doe-error")
    assert fs.take("doe-error", "mb") and not fs.active("doe-error")  # count spent
    assert fs.take("doe-error", "mb") is None
    fs.arm("report-range")  # no count: until cleared
    assert fs.clear() == 1 and fs.armed() == []
    kinds = [(e["event"], e["name"]) for e in events.events if e["event"].startswith("fault.")]
    assert kinds == [("fault.armed", "doe-error"), ("fault.fired", "doe-error"),
                     ("fault.fired", "doe-error"), ("fault.armed", "report-range"),
                     ("fault.cleared", "report-range")]
    first = next(e for e in events.events if e["event"] == "fault.fired")
    assert first["target"] == "mb" and first["args"] == {"count": 2, "type": -1}


# -- SPDM ------------------------------------------------------------------------------


def get_digests() -> bytes:
    return bytes([V12, 0x81, 0, 0])  # DSP0274 GET_DIGESTS, Param1/2 reserved


def test_spdm_busy_on_a_chosen_request(events: Recorder) -> None:
    r = responder()
    fs = r.faults = FaultSet()
    vca(r)
    fs.arm("spdm-busy:GET_DIGESTS,count=2")
    # DSP0274 ERROR: SPDMVersion, 0x7F, Param1 ErrorCode Busy (0x03), Param2 ErrorData 0
    assert r.handle_cma(get_digests()) == bytes([V12, 0x7F, 0x03, 0x00])
    assert r.handle_cma(get_digests()) == bytes([V12, 0x7F, 0x03, 0x00])
    rsp = r.handle_cma(get_digests())  # spent: the real DIGESTS, nothing lost
    assert rsp[:4] == bytes([V12, 0x01, 0x00, 0x01]) and len(rsp) == 4 + 48
    assert [e["target"] for e in fired(events, "spdm-busy")] == \
        ["test.spdm:GET_DIGESTS"] * 2


def test_spdm_busy_on_get_version_answers_in_1_0() -> None:
    r = responder()
    r.faults = FaultSet()
    r.faults.arm("spdm-busy:0x84")
    assert r.handle_cma(bytes([0x10, 0x84, 0, 0])) == bytes([0x10, 0x7F, 0x03, 0x00])
    assert r.handle_cma(bytes([0x10, 0x84, 0, 0]))[1] == 0x04  # VERSION next time


def test_spdm_response_not_ready_then_respond_if_ready() -> None:
    r = responder()
    fs = r.faults = FaultSet()
    vca(r)
    fs.arm("spdm-not-ready:GET_DIGESTS,rdt_exponent=12,rdtm=3")
    rsp = r.handle_cma(get_digests())
    # ERROR ResponseNotReady (0x42), ErrorData 0; ExtendedErrorData (DSP0274 Table
    # "ResponseNotReady extended error data"): RDTExponent 12, RequestCode 0x81,
    # Token, RDTM 3.
    assert rsp[:4] == bytes([V12, 0x7F, 0x42, 0x00])
    assert len(rsp) == 8 and rsp[4] == 12 and rsp[5] == 0x81 and rsp[7] == 3
    token = rsp[6]
    # RESPOND_IF_READY (0xFF): Param1 = the original RequestCode, Param2 = Token.
    wrong = r.handle_cma(bytes([V12, 0xFF, 0x81, (token + 1) & 0xFF]))
    assert wrong[:3] == bytes([V12, 0x7F, 0x04])  # UnexpectedRequest; the parked one stays
    ready = r.handle_cma(bytes([V12, 0xFF, 0x81, token]))
    assert ready[:4] == bytes([V12, 0x01, 0x00, 0x01]) and len(ready) == 52
    assert ready == r.handle_cma(get_digests())  # the same DIGESTS as without the fault
    again = r.handle_cma(bytes([V12, 0xFF, 0x81, token]))  # consumed: nothing waits
    assert again[:3] == bytes([V12, 0x7F, 0x04])


def test_cert_change_alters_digest_and_chain_after_n_reads(events: Recorder) -> None:
    r = responder()
    fs = r.faults = FaultSet()
    vca(r)
    first = r.handle_cma(get_digests())[4:]
    fs.arm("cert-change:after=1")
    assert r.handle_cma(get_digests())[4:] == first  # read 1: unchanged (connect)
    changed = r.handle_cma(get_digests())[4:]  # read 2: another chain
    assert changed != first
    chain = b""
    while True:  # GET_CERTIFICATE slot 0 (1.2: Param1 slot, offset u16, length u16)
        rsp = r.handle_cma(bytes([V12, 0x82, 0, 0]) + struct.pack("<HH", len(chain), 0x400))
        assert rsp[1] == 0x02, rsp[:4].hex()
        portion, remainder = struct.unpack_from("<HH", rsp, 4)
        chain += rsp[8:8 + portion]
        if remainder == 0:
            break
    assert hashlib.sha384(chain).digest() == changed  # DIGESTS = hash of the served chain
    assert hashlib.sha384(chain[:-1] + bytes([chain[-1] ^ 0xFF])).digest() == first
    assert len(fired(events, "cert-change")) == 1
    fs.clear()
    assert r.handle_cma(get_digests())[4:] == first


# -- DOE mailbox -------------------------------------------------------------------------


@pytest.fixture
def dev_doe() -> tuple[Device, LinuxDoe, FaultSet]:
    dev = Device(get_profile("virtio-rng"))
    echo_handlers(dev)
    fs = FaultSet()
    mailbox(dev).faults = fs
    drv = LinuxDoe(dev.dsm.config)
    drv.trace = False
    drv.abort()
    return dev, drv, fs


def test_doe_busy_holds_busy_until_abort(dev_doe: tuple[Device, LinuxDoe, FaultSet]) -> None:
    _dev, drv, fs = dev_doe
    fs.arm("doe-busy:1")
    drv.send_req(1, 1, b"ping")
    # PCIe r6.x §7.9.24.4 DOE Status: BUSY (bit 0) set, no Data Object Ready (bit 31)
    assert drv.rd(0x0C) == 0x00000001
    with pytest.raises(DoeIOError, match="EBUSY"):  # a second request is refused
        drv.send_req(1, 1, b"more")
    with pytest.raises(DoeIOError, match="ETIMEDOUT"):
        drv.wait_ready()
    drv.abort()  # what the kernel does on the timeout: ABORT clears BUSY
    assert drv.rd(0x0C) == 0
    assert drv.task(1, 1, b"pong") == b"pong"  # spent: the mailbox works again


def test_doe_error_sets_error_until_abort(dev_doe: tuple[Device, LinuxDoe, FaultSet]) -> None:
    _dev, drv, fs = dev_doe
    fs.arm("doe-error:2")
    for _ in range(2):
        with pytest.raises(DoeIOError, match="ERROR while waiting"):
            drv.task(1, 1, b"ping")  # task() aborts on failure, as the kernel does
    assert drv.rd(0x0C) == 0
    assert drv.task(1, 1, b"ping") == b"ping"


def test_doe_error_register_value(dev_doe: tuple[Device, LinuxDoe, FaultSet]) -> None:
    _dev, drv, fs = dev_doe
    fs.arm("doe-error")
    drv.send_req(1, 1, b"ping")
    assert drv.rd(0x0C) == 0x00000004  # DOE Status: ERROR (bit 2) only


def test_doe_delay_beyond_the_kernels_poll(dev_doe: tuple[Device, LinuxDoe, FaultSet]) -> None:
    _dev, drv, fs = dev_doe
    fs.arm("doe-delay:0.3")
    drv.send_req(1, 1, b"late")
    assert drv.rd(0x0C) == 0x00000001  # BUSY while the response is not ready
    assert drv.rd(0x14) == 0  # Read Data Mailbox: nothing yet
    time.sleep(0.35)
    assert drv.rd(0x0C) == 0x80000000  # Data Object Ready
    assert drv.recv_resp(1, 1, 64) == b"late"
    fs.arm("doe-delay:5")
    with pytest.raises(DoeIOError, match="ETIMEDOUT"):
        drv.task(1, 1, b"too late")  # the poll gives up; task() aborts
    assert drv.task(1, 1, b"okay") == b"okay"


# -- device measurements -----------------------------------------------------------------


def test_measurements_change_after_connect(events: Recorder) -> None:
    dev = Device(get_profile("virtio-rng"))
    fs = dev.measurements.faults = FaultSet()
    sha384 = HASHES["sha384"]
    before = dev.measurements.measurement_blocks(sha384, False)
    fs.arm("measurements-change:1")
    connect = dev.measurements.measurement_blocks(sha384, False)
    lock = dev.measurements.measurement_blocks(sha384, False)
    assert connect == before
    p = dev.profile
    other = b"|".join([FIRMWARE_IDENTITY, p.personality.encode(), p.firmware_version.encode(),
                       b"tampered"])
    assert lock[0].index == 1 and lock[0].value == hashlib.sha384(other).digest()
    assert lock[1:] == before[1:]  # only index 1 (the firmware) changed
    assert len(fired(events, "measurements-change")) == 1
    fs.clear()
    assert dev.measurements.measurement_blocks(sha384, False) == before


# -- TDISP --------------------------------------------------------------------------------


def test_report_range_disagrees_with_the_bars() -> None:
    dev, r = make()
    fs = r.faults = FaultSet()
    drive(r, dev.dsm, L)
    honest = report(r)
    ask(r, m.STOP_INTERFACE_REQUEST)
    fs.arm("report-range")
    drive(r, dev.dsm, L)
    shifted = report(r)
    # the first range moved 2^20 pages (4 GiB) up, the rest unchanged
    assert shifted.mmio_range[0].first_page == honest.mmio_range[0].first_page + (1 << 20)
    assert shifted.mmio_range[1:] == honest.mmio_range[1:]
    fs.clear()
    ask(r, m.STOP_INTERFACE_REQUEST)
    drive(r, dev.dsm, L)
    assert report(r) == honest


def test_tdi_error_while_run() -> None:
    dev, r = make()
    fs = r.faults = FaultSet()
    fs.arm("tdi-error")
    drive(r, dev.dsm, L)
    assert state(r) is L  # only a TDI in RUN is hit
    ask(r, m.START_INTERFACE_REQUEST, start_interface_nonce=r.tdis[0].lock.nonce)  # type: ignore[union-attr]
    # GET_DEVICE_INTERFACE_STATE: TDI_STATE 3 = ERROR (PCIe r7.0 §11 Table TDI states)
    rsp = ask(r, m.GET_DEVICE_INTERFACE_STATE)
    assert rsp.tdi_state == 3
    assert state(r) is E
    ask(r, m.STOP_INTERFACE_REQUEST)  # the TSM's way out
    assert state(r) is U
    drive(r, dev.dsm, R)  # spent: the TDI runs again


def test_dma_attempted_while_locked_is_held(events: Recorder) -> None:
    dev, r = make()
    fs = r.faults = FaultSet()

    class Memory:  # guest memory as the transport gives it: records what arrived
        def __init__(self) -> None:
            self.accesses: list[tuple[int, int]] = []

        def read(self, addr: int, size: int) -> bytes:
            self.accesses.append((addr, size))
            return bytes(size)

        def write(self, addr: int, data: bytes) -> None:
            self.accesses.append((addr, len(data)))

    memory = Memory()
    dev.dsm.dma = memory
    fs.arm("dma-locked:addr=0x2000,size=16")
    drive(r, dev.dsm, L)
    assert memory.accesses == []  # nothing left the device
    held = [e for e in events.events if e["event"] == "tdisp.dma_held"]
    assert held and held[-1]["address"] == 0x2000 and held[-1]["state"] == "CONFIG_LOCKED"
    assert any(e["event"] == "tdisp.dma_refused" for e in events.events)
    assert not any(e["event"] == "tdisp.dma_leaked" for e in events.events)


# -- IDE and IDE_KM ------------------------------------------------------------------------


@pytest.fixture
def ide() -> tuple[ConfigSpace, IdeCapability, IdeKmResponder, FaultSet]:
    space = ConfigSpace()
    cap = IdeCapability(link_streams=1, selective_streams=2, assoc_blocks=1,
                        function_name="t.fn0")
    space.add_capability(cap, offset=0x200)
    km = IdeKmResponder([cap], bus=1, devfn=0)
    fs = FaultSet()
    cap.faults = km.faults = fs
    return space, cap, km, fs


def test_ide_fail_leaves_secure_with_ide_fail_bit(ide) -> None:  # type: ignore[no-untyped-def]
    space, cap, km, fs = ide
    lost: list[int] = []
    cap.insecure_listeners.append(lost.append)
    ctl = sel_ctl(cap, 0)
    w32(space, ctl, 5 << 24)
    program_all_keys(km, 5)
    w32(space, ctl, (5 << 24) | 1)
    assert r32(space, ctl + 4) == 2  # SECURE
    fs.arm("ide-fail:stream=5")
    # Selective IDE Stream Status: state 0 (Insecure) with bit 31 (IDE Fail) set
    assert r32(space, ctl + 4) == 0x80000000
    assert lost == [5] and cap.stream_state(5) is not IdeStreamState.SECURE
    w32(space, ctl, 5 << 24)  # re-key and re-enable: SECURE again, IDE_FAIL clear
    program_all_keys(km, 5)
    w32(space, ctl, (5 << 24) | 1)
    assert r32(space, ctl + 4) == 2


@pytest.mark.parametrize("status", [1, 2, 3, 4])
def test_kp_ack_with_each_failure_status(ide, status: int) -> None:  # type: ignore[no-untyped-def]
    _space, cap, km, fs = ide
    fs.arm(f"kp-ack:status={status}")
    kss = 0x12  # key set 0, TX, CPL
    msg = KEY_PROG(IdeKmObject.KEY_PROG, 0, 5, 0, kss, 0, bytes(32), bytes(8)).pack()
    # PCIe r6.x §6.33.3 KP_ACK: Object ID 03h, Reserved (2), Stream ID, Status,
    # Key Set/RxTx/Sub-stream, Port Index
    assert km.handle(msg) == bytes([0x03, 0, 0, 5, status, kss, 0])
    assert 5 not in cap.keys  # the key was not taken
    assert km.handle(msg) == bytes([0x03, 0, 0, 5, 0, kss, 0])  # spent: SUCCESS


# -- platform firmware ---------------------------------------------------------------------


class NoMemory:
    def read(self, addr: int, size: int) -> bytes:
        raise AssertionError("no memory access expected")

    def write(self, addr: int, data: bytes) -> None:
        raise AssertionError("no memory access expected")


def test_fw_busy_cca_rmi_busy_then_the_real_answer(events: Recorder) -> None:
    rmm = Rmm()
    rmm.faults = FaultSet()
    call = FirmwareCall(CallClass.HOST, RmiFid.RMI_VERSION, (0x10000,))
    real = rmm.call(call, NoMemory())
    rmm.faults.arm("fw-busy:VERSION,count=2")
    # RMM spec: RmiStatusCode RMI_BUSY = 10, nothing else returned
    assert rmm.call(call, NoMemory()) == (10,)
    assert rmm.call(call, NoMemory()) == (10,)
    assert rmm.call(call, NoMemory()) == real
    assert [e["target"] for e in fired(events, "fw-busy")] == ["rmm:RMI_VERSION"] * 2


@pytest.mark.parametrize("platform", ["tdx", "sev-tio"])
def test_fw_busy_extra_answers_then_connect_completes(tmp_path: Path, events: Recorder,
                                                     platform: str) -> None:
    """The host calls again on each extra busy answer and still connects: TDX module ABI
    TDX_INTERRUPTED_RESUMABLE = 0x8000000300000000; AMD SEV-TIO EXPAND_BUFFER_LENGTH_REQUEST
    (0x31) with a larger capacity_sz, after which the host grows the output buffer."""
    if platform == "tdx":
        from tests.test_tdx_module import Bench as TdxBench
        tdx = TdxBench(tmp_path / "identity")
        fs = tdx.module.faults = FaultSet()
        call, event, key, target = "TDH_SPDM_CONNECT", "tdx.call", "leaf", "tdx:TDH.SPDM.CONNECT"
        busy, connect = "0x8000000300000000", tdx.host.connect
        ok, status = "0x0000000000000000", "status"
    else:
        from tests.test_sev_tio_psp import Bench as SevBench
        sev = SevBench(tmp_path / "identity")
        fs = sev.psp.faults = FaultSet()
        call, event, key, target = "TIO_DEV_CONNECT", "psp.command", "cmd", "psp:TIO_DEV_CONNECT"
        busy, connect = "EXPAND_BUFFER_LENGTH_REQUEST", sev.host.connect
        ok, status = "SUCCESS", "status"
    fs.arm(f"fw-busy:{call},count=3")
    connect()
    assert [e["target"] for e in fired(events, "fw-busy")] == [target] * 3
    name = target.split(":")[1]
    statuses = [e[status] for e in events.events if e["event"] == event and e[key] == name]
    assert statuses[:3] == [busy] * 3 and busy not in statuses[3:] and statuses[-1] == ok
    if platform == "sev-tio":
        assert sev.host.output.capacity >= 4 * 0x1000  # three pages more than one


def test_doe_fault_targets_one_object_type(dev_doe: tuple[Device, LinuxDoe, FaultSet]) -> None:
    _dev, drv, fs = dev_doe
    fs.arm("doe-error:type=2")
    assert drv.task(1, 1, b"type") == b"type"  # type 1 passes
    assert drv.discovery(0)[:2] == (1, 0)  # discovery (type 0) passes
    with pytest.raises(DoeIOError, match="ERROR"):
        drv.task(1, 2, b"secured")  # type 2 is hit
    assert drv.task(1, 2, b"agai") == b"iaga"


def test_ide_fail_while_run_errors_the_tdi_bound_to_the_stream() -> None:
    from tests.test_tdisp import program_secure_stream

    dev, r = make()
    fs = dev.ide.faults = r.faults = FaultSet()
    ctl = program_secure_stream(dev, 3)
    drive(r, dev.dsm, R, default_stream_id=3)
    fs.arm("ide-fail")
    # the next TDISP request while RUN: the stream has failed, the TDI is in ERROR
    assert state(r) is E
    sts = int.from_bytes(dev.dsm.config.read(ctl + 4, 4), "little")
    assert sts == 0x80000000  # Selective IDE Stream Status: Insecure, IDE_FAIL set
    ask(r, m.STOP_INTERFACE_REQUEST)
    assert state(r) is U


def test_ide_fail_when_run_waits_for_the_tdi_bound_to_the_stream_to_run() -> None:
    from tests.test_tdisp import lock, program_secure_stream, start

    dev, r = make()
    fs = dev.ide.faults = r.faults = FaultSet()
    ctl = program_secure_stream(dev, 3)
    fs.arm("ide-fail")  # when=run, the default
    nonce = lock(r, default_stream_id=3)
    # CONFIG_LOCKED: Status reads and requests leave the stream alone (PCIe r6.x
    # 7.9.26.5.3: state 2 = Secure, bit 31 clear)
    assert int.from_bytes(dev.dsm.config.read(ctl + 4, 4), "little") == 2
    assert state(r) is L
    assert fs.active("ide-fail")
    start(r, nonce)
    # RUN: the next Status read sees the failure -- Insecure with IDE_FAIL -- and the
    # TDI bound to the stream is in ERROR
    assert int.from_bytes(dev.dsm.config.read(ctl + 4, 4), "little") == 0x80000000
    assert state(r) is E and not fs.active("ide-fail")


def test_ide_fail_when_any_fails_a_secure_stream_at_once() -> None:
    from tests.test_tdisp import program_secure_stream

    dev, r = make()
    fs = dev.ide.faults = r.faults = FaultSet()
    ctl = program_secure_stream(dev, 3)
    fs.arm("ide-fail:when=any")
    assert int.from_bytes(dev.dsm.config.read(ctl + 4, 4), "little") == 0x80000000
    assert state(r) is U  # no TDI was bound to it


def test_requester_retries_busy_then_gives_up(events: Recorder) -> None:
    from tests.spdm_support import requester
    from vfiouser_tdisp.spdm.requester import BUSY_RETRIES, SpdmRequesterError

    r = responder()
    fs = r.faults = FaultSet()
    req = requester(r)
    fs.arm("spdm-busy:GET_CAPABILITIES,count=2")
    req.init_connection()  # Busy twice, then CAPABILITIES: the connection is made
    assert len(fired(events, "spdm-busy")) == 2
    fs.arm(f"spdm-busy:GET_DIGESTS,count={BUSY_RETRIES + 1}")
    with pytest.raises(SpdmRequesterError):
        req.get_digests()
    assert len(fired(events, "spdm-busy")) == 2 + BUSY_RETRIES + 1
    assert len(req.get_digests()) == 1  # spent: the next read works
