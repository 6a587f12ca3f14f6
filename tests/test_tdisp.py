"""TDISP responder on bytes: state machine, errors, enforcement, report, vendor handler.

Devices are real ``Device`` objects (profile "dma-test": BAR0 registers, BAR2
64-bit memory, BAR4 MSI-X table + PBA) programmed through config-space writes
the way a guest's PCI core would do it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import pytest

from vfiouser_tdisp.device import personality as personality_mod
from vfiouser_tdisp.device.device import Device, DeviceProfile, get_profile
from vfiouser_tdisp.device.dma_test import DMA_CMD_FROM_DEVICE, STATUS_DONE, STATUS_ERROR
from vfiouser_tdisp.device.personality import Personality
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.ide.km import K_SET, KEY_PROG, IdeKmObject
from vfiouser_tdisp.pci.caps import PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR
from vfiouser_tdisp.pci.function import Bar, BarKind, DmaError, PciFunction
from vfiouser_tdisp.tdisp import messages as m
from vfiouser_tdisp.tdisp.messages import (
    InterfaceInfo,
    LockInterfaceFlags,
    MmioRangeAttributes,
    TdispErrorCode,
    TdispRequest,
    TdiState,
)
from vfiouser_tdisp.tdisp.report import FirstPageEncoding, mmio_ranges
from vfiouser_tdisp.tdisp.responder import (
    SPDM_ERROR_INVALID_REQUEST,
    SPDM_ERROR_SESSION_REQUIRED,
    SPDM_ERROR_UNSUPPORTED_REQUEST,
    TDI_TRANSITIONS,
    Enforcement,
    TdispResponder,
    VendorRequestError,
    pci_sig_vendor_handler,
)

U, L, R, E = TdiState.CONFIG_UNLOCKED, TdiState.CONFIG_LOCKED, TdiState.RUN, TdiState.ERROR
CMD_MEM, CMD_MASTER = 0x2, 0x4

# Where each function k of a test device gets its BARs.
BAR0_BASE = 0xFE000000
BAR2_BASE = 0x8_0000_0000
BAR4_BASE = 0xFE008000


# -- helpers --------------------------------------------------------------------------


def w(fn: PciFunction, off: int, value: int, size: int = 4) -> None:
    fn.config.write(off, value.to_bytes(size, "little"))


def program(fn: PciFunction, k: int = 0, command: int = CMD_MEM | CMD_MASTER) -> None:
    """Assign BARs and enable decoding like the guest's PCI core would."""
    w(fn, 0x10, BAR0_BASE + k * 0x10000)
    bar2 = BAR2_BASE + k * 0x10000
    w(fn, 0x18, bar2 & 0xFFFFFFFF)
    w(fn, 0x1C, bar2 >> 32)
    w(fn, 0x20, BAR4_BASE + k * 0x10000)
    w(fn, 0x04, command, 2)


def bars_of(k: int) -> dict[int, int]:
    return {0: BAR0_BASE + k * 0x10000, 2: BAR2_BASE + k * 0x10000, 4: BAR4_BASE + k * 0x10000}


def make(functions: int = 1, **options: Any) -> tuple[Device, TdispResponder]:
    profile = get_profile("dma-test") if functions == 1 else DeviceProfile(
        "dma-test-multi", "dma-test", functions=functions)
    dev = Device(profile)
    dev.tdisp.close()  # the device's own responder: these tests build theirs with options
    for k, fn in enumerate(dev.functions):
        program(fn, k)
    return dev, TdispResponder.for_device(dev, **options)


def ask(r: TdispResponder, cls: type[m.TdispMessage], fid: int = 0, **fields: Any) -> Any:
    return m.decode_response(r.handle(cls(function_id=fid, **fields).pack()))


def error_of(rsp: m.TdispMessage) -> TdispErrorCode | None:
    return TdispErrorCode(rsp.error_code) if isinstance(rsp, m.TDISP_ERROR) else None


def lock(r: TdispResponder, fid: int = 0, **fields: Any) -> bytes:
    rsp = ask(r, m.LOCK_INTERFACE_REQUEST, fid, **fields)
    assert isinstance(rsp, m.LOCK_INTERFACE_RESPONSE), rsp
    return bytes(rsp.start_interface_nonce)


def start(r: TdispResponder, nonce: bytes, fid: int = 0) -> None:
    rsp = ask(r, m.START_INTERFACE_REQUEST, fid, start_interface_nonce=nonce)
    assert isinstance(rsp, m.START_INTERFACE_RESPONSE), rsp


def state(r: TdispResponder, fid: int = 0) -> TdiState:
    rsp = ask(r, m.GET_DEVICE_INTERFACE_STATE, fid)
    assert isinstance(rsp, m.DEVICE_INTERFACE_STATE), rsp
    return TdiState(rsp.tdi_state)


def drive(r: TdispResponder, fn: PciFunction, target: TdiState, fid: int = 0,
          **lock_fields: Any) -> bytes | None:
    """Bring the TDI to ``target`` using only requests and guest config writes."""
    if target is U:
        return None
    nonce = lock(r, fid, **lock_fields)
    if target is R:
        start(r, nonce, fid)
    elif target is E:
        command = fn.command
        w(fn, 0x04, command & ~CMD_MEM, 2)  # clearing MSE errors the TDI
        w(fn, 0x04, command, 2)
    assert state(r, fid) is target
    return nonce


def report(r: TdispResponder, fid: int = 0, chunk: int = 0xFFFF) -> m.TDI_REPORT_STRUCTURE:
    data = b""
    while True:
        rsp = ask(r, m.GET_DEVICE_INTERFACE_REPORT, fid, offset=len(data), length=chunk)
        assert isinstance(rsp, m.DEVICE_INTERFACE_REPORT), rsp
        data += rsp.report
        if rsp.remainder_length == 0:
            return m.TDI_REPORT_STRUCTURE.unpack(data)


# -- the exhaustive state table --------------------------------------------------------

OK = "ok"
# request -> {state: (outcome, next state)}; outcome is OK or the TDISP error code.
IIS = TdispErrorCode.INVALID_INTERFACE_STATE
UNS = TdispErrorCode.UNSUPPORTED_REQUEST
INV = TdispErrorCode.INVALID_REQUEST
EXPECTED: dict[TdispRequest, dict[TdiState, tuple[Any, TdiState]]] = {
    TdispRequest.GET_TDISP_VERSION: {s: (OK, s) for s in TdiState},
    TdispRequest.GET_TDISP_CAPABILITIES: {s: (OK, s) for s in TdiState},
    TdispRequest.LOCK_INTERFACE_REQUEST: {U: (OK, L), L: (IIS, L), R: (IIS, R), E: (IIS, E)},
    TdispRequest.GET_DEVICE_INTERFACE_REPORT: {U: (IIS, U), L: (OK, L), R: (OK, R),
                                               E: (IIS, E)},
    TdispRequest.GET_DEVICE_INTERFACE_STATE: {s: (OK, s) for s in TdiState},
    TdispRequest.START_INTERFACE_REQUEST: {U: (IIS, U), L: (OK, R), R: (IIS, R), E: (IIS, E)},
    TdispRequest.STOP_INTERFACE_REQUEST: {s: (OK, U) for s in TdiState},
    # Legal only in RUN; there the table's plain request fails its own checks
    # (no BIND_P2P lock, nothing bound, range not reported): INVALID_REQUEST.
    **{req: {U: (IIS, U), L: (IIS, L), R: (INV, R), E: (IIS, E)} for req in (
        TdispRequest.BIND_P2P_STREAM_REQUEST, TdispRequest.UNBIND_P2P_STREAM_REQUEST,
        TdispRequest.SET_MMIO_ATTRIBUTE_REQUEST)},
    TdispRequest.VDM_REQUEST: {s: (OK, s) for s in TdiState},
    TdispRequest.SET_TDISP_CONFIG_REQUEST: {U: (OK, U), L: (IIS, L), R: (IIS, R),
                                            E: (IIS, E)},
}


def valid_request(req: TdispRequest, nonce: bytes | None) -> m.TdispMessage:
    cls = m.REQUESTS[req]
    extras: dict[TdispRequest, dict[str, Any]] = {
        TdispRequest.START_INTERFACE_REQUEST: {"start_interface_nonce": nonce or bytes(32)},
        TdispRequest.GET_DEVICE_INTERFACE_REPORT: {"offset": 0, "length": 0xFFFF},
        TdispRequest.VDM_REQUEST: {"vendor_id_len": 2, "vendor_id": b"\x36\x1b"},
        TdispRequest.SET_MMIO_ATTRIBUTE_REQUEST: {"first_page": 0xFE000, "number_of_pages": 1},
        TdispRequest.BIND_P2P_STREAM_REQUEST: {"p2p_stream_id": 1},
    }
    extra = extras.get(req, {})
    return cls(function_id=0, **extra)


def test_expected_table_covers_every_pair() -> None:
    assert set(EXPECTED) == set(TdispRequest)
    assert all(set(row) == set(TdiState) for row in EXPECTED.values())


@pytest.mark.parametrize("start_state", list(TdiState), ids=lambda s: s.name)
@pytest.mark.parametrize("req", list(TdispRequest), ids=lambda r: r.name)
def test_state_table(start_state: TdiState, req: TdispRequest, events: Recorder) -> None:
    dev, r = make()
    nonce = drive(r, dev.dsm, start_state)
    before = len(events.of("tdi.transition"))
    rsp: Any = m.decode_response(r.handle(valid_request(req, nonce).pack()))
    outcome, next_state = EXPECTED[req][start_state]
    if outcome is OK:
        assert type(rsp) is m.RESPONSE_FOR[req], rsp
        assert rsp.function_id == 0 and rsp.version == 0x10
    else:
        assert error_of(rsp) is outcome, rsp
    assert r.tdis[0].state is next_state
    transitions = events.of("tdi.transition")[before:]
    if next_state is start_state:
        assert transitions == []
    else:
        (ev,) = transitions
        assert ev["function"] == dev.dsm.name and ev["trigger"] == req.name
        assert ev["old"] == start_state.name and ev["new"] == next_state.name
        assert ev["cause"] == req.name and isinstance(ev["time"], float)
    if req is TdispRequest.GET_DEVICE_INTERFACE_STATE:
        assert rsp.tdi_state == start_state


def test_one_table_drives_the_fsm() -> None:
    _dev, r = make()
    assert r.tdis[0].fsm.table is TDI_TRANSITIONS
    for s in (L, R):
        for t in Enforcement:
            assert TDI_TRANSITIONS[(s, t.value)] is E
    for s in (U, E):
        assert not any((s, t.value) in TDI_TRANSITIONS for t in Enforcement)


# -- every error code ----------------------------------------------------------------


def test_get_version_and_capabilities() -> None:
    _dev, r = make()
    v = ask(r, m.GET_TDISP_VERSION)
    assert v.version_num_count == 1 and v.version_num_entry == b"\x10"
    caps = ask(r, m.GET_TDISP_CAPABILITIES, tsm_caps=0xA5)
    assert r.tdis[0].tsm_caps == 0xA5
    assert caps.dsm_caps == m.DsmCaps.XT_MODE_SUPPORTED
    bitmap = int.from_bytes(caps.req_msg_supported, "little")
    assert bitmap == 0xFFF  # GET_TDISP_VERSION .. SET_TDISP_CONFIG_REQUEST
    assert caps.lock_interface_flags_supported == (
        LockInterfaceFlags.NO_FW_UPDATE | LockInterfaceFlags.SYSTEM_CACHE_LINE_SIZE
        | LockInterfaceFlags.LOCK_MSIX | LockInterfaceFlags.BIND_P2P
        | LockInterfaceFlags.ALL_REQUEST_REDIRECT)
    assert caps.dev_addr_width == 64 and caps.num_req_this == 1 and caps.num_req_all == 1


def test_invalid_request_malformed() -> None:
    _dev, r = make()
    short = m.LOCK_INTERFACE_REQUEST().pack()[:-1]
    assert error_of(m.decode_response(r.handle(short))) is TdispErrorCode.INVALID_REQUEST
    long = m.GET_DEVICE_INTERFACE_STATE().pack() + b"\0"
    assert error_of(m.decode_response(r.handle(long))) is TdispErrorCode.INVALID_REQUEST
    rsp = m.decode_response(r.handle(b"\x10\x81\0\0"))  # not even a header
    assert error_of(rsp) is TdispErrorCode.INVALID_REQUEST and rsp.function_id == 0
    assert state(r) is U  # nothing locked by the malformed LOCK


def test_invalid_request_lock_parameters() -> None:
    _dev, r = make()
    rsp = ask(r, m.LOCK_INTERFACE_REQUEST, flags=0x8000)
    assert error_of(rsp) is TdispErrorCode.INVALID_REQUEST
    rsp = ask(r, m.LOCK_INTERFACE_REQUEST, mmio_reporting_offset=0x800)
    assert error_of(rsp) is TdispErrorCode.INVALID_REQUEST
    assert state(r) is U


def test_invalid_request_report_window() -> None:
    _dev, r = make()
    lock(r)
    size = len(report(r).pack())
    for offset, length in ((size, 1), (size + 10, 5), (0, 0)):
        rsp = ask(r, m.GET_DEVICE_INTERFACE_REPORT, offset=offset, length=length)
        assert error_of(rsp) is TdispErrorCode.INVALID_REQUEST


def test_busy_unspecified_and_vendor_specific_are_injectable() -> None:
    _dev, r = make()
    r.inject_error(TdispErrorCode.BUSY, request=TdispRequest.LOCK_INTERFACE_REQUEST, count=2)
    assert error_of(ask(r, m.GET_DEVICE_INTERFACE_STATE)) is None  # other requests unaffected
    assert error_of(ask(r, m.LOCK_INTERFACE_REQUEST)) is TdispErrorCode.BUSY
    assert error_of(ask(r, m.LOCK_INTERFACE_REQUEST)) is TdispErrorCode.BUSY
    assert state(r) is U
    lock(r)  # the retry succeeds
    r.inject_error(TdispErrorCode.UNSPECIFIED)
    assert error_of(ask(r, m.GET_TDISP_VERSION)) is TdispErrorCode.UNSPECIFIED
    ext = m.EXTENDED_ERROR_DATA(registry_id=0, vendor_id_len=2, vendor_id=b"\x01\x00",
                                vendor_err_data=b"\xde\xad").pack()
    r.inject_error(TdispErrorCode.VENDOR_SPECIFIC_ERROR, error_data=7, extended=ext)
    rsp = ask(r, m.GET_DEVICE_INTERFACE_STATE)
    assert error_of(rsp) is TdispErrorCode.VENDOR_SPECIFIC_ERROR and rsp.error_data == 7
    assert m.EXTENDED_ERROR_DATA.unpack(rsp.extended_error_data).vendor_err_data == b"\xde\xad"


def test_unspecified_on_internal_failure(monkeypatch: pytest.MonkeyPatch,
                                         events: Recorder) -> None:
    _dev, r = make()

    def broken(tdi: Any, req: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setitem(r._handlers, TdispRequest.GET_TDISP_VERSION, broken)
    assert error_of(ask(r, m.GET_TDISP_VERSION)) is TdispErrorCode.UNSPECIFIED
    assert events.of("tdisp.internal_error")


def test_unsupported_request() -> None:
    _dev, r = make()
    for code in (0x8D, 0xFF, 0x01, 0x7F):  # unknown, and responses sent as requests
        rsp = m.decode_response(r.handle(m.TdispHeader(message_type=code).pack()))
        assert error_of(rsp) is TdispErrorCode.UNSUPPORTED_REQUEST


def test_version_mismatch() -> None:
    _dev, r = make()
    for version in (0x11, 0x20, 0x00):
        raw = bytearray(m.GET_TDISP_VERSION().pack())
        raw[0] = version
        rsp = m.decode_response(r.handle(bytes(raw)))
        assert error_of(rsp) is TdispErrorCode.VERSION_MISMATCH and rsp.version == 0x10


def test_invalid_interface() -> None:
    _dev, r = make()
    for fid in (0x0005, 0x0100, 0x02000000, m.make_function_id(0, 0, segment=1)):
        rsp = ask(r, m.GET_DEVICE_INTERFACE_STATE, fid)
        assert error_of(rsp) is TdispErrorCode.INVALID_INTERFACE and rsp.function_id == fid
    assert state(r, m.make_function_id(0, 0, segment=0)) is U  # a valid segment 0 matches


def test_invalid_nonce_keeps_the_tdi_locked() -> None:
    _dev, r = make()
    nonce = lock(r)
    bad = bytes(b ^ 1 for b in nonce)
    rsp = ask(r, m.START_INTERFACE_REQUEST, start_interface_nonce=bad)
    assert error_of(rsp) is TdispErrorCode.INVALID_NONCE
    assert state(r) is L
    start(r, nonce)
    assert state(r) is R


def test_nonce_is_fresh_per_lock() -> None:
    _dev, r = make()
    first = lock(r)
    ask(r, m.STOP_INTERFACE_REQUEST)
    second = lock(r)
    assert first != second and len(second) == 32
    rsp = ask(r, m.START_INTERFACE_REQUEST, start_interface_nonce=first)
    assert error_of(rsp) is TdispErrorCode.INVALID_NONCE


def test_insufficient_entropy() -> None:
    def no_entropy(n: int) -> bytes:
        raise OSError("entropy pool empty")

    _dev, r = make(nonce_source=no_entropy)
    assert error_of(ask(r, m.LOCK_INTERFACE_REQUEST)) is TdispErrorCode.INSUFFICIENT_ENTROPY
    _dev, r = make(nonce_source=lambda n: b"short")
    assert error_of(ask(r, m.LOCK_INTERFACE_REQUEST)) is TdispErrorCode.INSUFFICIENT_ENTROPY
    assert state(r) is U


def test_invalid_device_configuration() -> None:
    dev, r = make()
    fn = dev.dsm
    w(fn, 0x04, CMD_MASTER, 2)  # Memory Space Enable clear
    rsp = ask(r, m.LOCK_INTERFACE_REQUEST)
    assert error_of(rsp) is TdispErrorCode.INVALID_DEVICE_CONFIGURATION
    w(fn, 0x04, CMD_MEM | CMD_MASTER, 2)
    w(fn, 0x20, 0)  # BAR4 unassigned
    rsp = ask(r, m.LOCK_INTERFACE_REQUEST)
    assert error_of(rsp) is TdispErrorCode.INVALID_DEVICE_CONFIGURATION
    w(fn, 0x20, BAR4_BASE)
    lock(r)


# -- enforcement -------------------------------------------------------------------------


@pytest.mark.parametrize("locked_state", [L, R], ids=lambda s: s.name)
def test_bar_reprogramming_errors(locked_state: TdiState, events: Recorder) -> None:
    dev, r = make()
    fn = dev.dsm
    drive(r, fn, locked_state)
    w(fn, 0x10, BAR0_BASE)  # same value: no change, no error
    assert state(r) is locked_state
    w(fn, 0x1C, 0x9)  # upper half of 64-bit BAR2
    assert state(r) is E
    (ev,) = [e for e in events.of("tdi.transition") if e["new"] == "ERROR"]
    assert ev["trigger"] == Enforcement.BAR_CHANGE.value and "BAR3" in ev["cause"]
    assert ev["function"] == fn.name


def test_bar_sizing_while_unlocked_is_fine() -> None:
    dev, r = make()
    fn = dev.dsm
    w(fn, 0x10, 0xFFFFFFFF)
    w(fn, 0x10, BAR0_BASE)
    assert state(r) is U
    lock(r)


@pytest.mark.parametrize("locked_state", [L, R], ids=lambda s: s.name)
@pytest.mark.parametrize("cleared,trigger", [
    (CMD_MEM, Enforcement.MEMORY_SPACE_DISABLED),
    (CMD_MASTER, Enforcement.BUS_MASTER_DISABLED),
], ids=["MSE", "BME"])
def test_clearing_mse_or_bme_errors(locked_state: TdiState, cleared: int,
                                    trigger: Enforcement, events: Recorder) -> None:
    dev, r = make()
    fn = dev.dsm
    drive(r, fn, locked_state)
    w(fn, 0x04, CMD_MEM | CMD_MASTER | 0x40 | 0x100, 2)  # other bits: no violation
    w(fn, 0x04, CMD_MEM | CMD_MASTER, 2)
    assert state(r) is locked_state
    w(fn, 0x04, (CMD_MEM | CMD_MASTER) & ~cleared, 2)
    assert state(r) is E
    assert events.of("tdi.transition")[-1]["trigger"] == trigger.value


def test_lock_without_bus_master_is_allowed() -> None:
    dev, r = make()
    w(dev.dsm, 0x04, CMD_MEM, 2)  # a TDI that does no DMA need not enable it
    lock(r)


@pytest.mark.parametrize("locked_state", [L, R], ids=lambda s: s.name)
def test_flr_errors(locked_state: TdiState, events: Recorder) -> None:
    dev, r = make()
    fn = dev.dsm
    drive(r, fn, locked_state)
    assert fn.pcie is not None
    w(fn, fn.pcie.offset + PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR | 0x2810, 2)
    assert state(r) is E
    ev = [e for e in events.of("tdi.transition") if e["new"] == "ERROR"][-1]
    assert ev["trigger"] == Enforcement.RESET.value and ev["cause"] == "flr"
    # ERROR -> STOP -> CONFIG_UNLOCKED; after re-enumeration the TDI locks again.
    ask(r, m.STOP_INTERFACE_REQUEST)
    assert state(r) is U
    program(fn)
    lock(r)


def test_flr_while_unlocked_does_nothing() -> None:
    dev, r = make()
    dev.dsm.reset("flr")
    assert state(r) is U


@pytest.mark.parametrize("locked_state", [L, R], ids=lambda s: s.name)
def test_msix_changes_error_only_with_lock_msix(locked_state: TdiState) -> None:
    for flags, errors in ((0, False), (LockInterfaceFlags.LOCK_MSIX, True)):
        dev, r = make()
        fn = dev.dsm
        assert fn.msix is not None
        drive(r, fn, locked_state, flags=flags)
        control = fn.config.get(fn.msix.offset + 2, 2)
        w(fn, fn.msix.offset + 2, control | 0x8000, 2)  # MSI-X Enable
        assert state(r) is (E if errors else locked_state)

        dev, r = make()
        fn = dev.dsm
        drive(r, fn, locked_state, flags=flags)
        fn.region_write(4, 0, struct.pack("<IIII", 0xFEE00000, 0, 0x41, 0))  # table entry 0
        assert state(r) is (E if errors else locked_state)


def program_secure_stream(dev: Device, stream_id: int) -> int:
    """Key and enable selective stream 0 with ``stream_id`` via IDE_KM; returns SEL_CTL."""
    ide = dev.ide
    ctl = ide.offset + ide.sel_base(0) + 4
    for sub in range(3):
        for direction in range(2):
            kss = (direction << 1) | (sub << 4)
            dev.ide_km.handle(KEY_PROG(IdeKmObject.KEY_PROG, 0, stream_id, 0, kss, 0,
                                       bytes(32), bytes(8)).pack())
            dev.ide_km.handle(K_SET(IdeKmObject.K_SET_GO, 0, stream_id, 0, kss, 0).pack())
    w(dev.dsm, ctl, (stream_id << 24) | 1)
    return ctl


@pytest.mark.parametrize("locked_state", [L, R], ids=lambda s: s.name)
def test_ide_stream_leaving_secure_errors(locked_state: TdiState) -> None:
    dev, r = make()
    ctl = program_secure_stream(dev, 3)
    drive(r, dev.dsm, locked_state, default_stream_id=3)
    assert r.tdis[0].lock is not None and r.tdis[0].lock.ide_stream == 3
    r.ide_stream_insecure(4)  # another stream: no effect
    assert state(r) is locked_state
    w(dev.dsm, ctl, 3 << 24)  # EN cleared: stream 3 goes INSECURE, IDE layer notifies
    assert state(r) is E


def test_tdi_without_secure_stream_has_no_dependency() -> None:
    dev, r = make()
    drive(r, dev.dsm, R, default_stream_id=3)
    assert r.tdis[0].lock is not None and r.tdis[0].lock.ide_stream is None
    r.ide_stream_insecure(3)
    assert state(r) is R


def test_require_secure_stream() -> None:
    dev, r = make(require_secure_stream=True)
    rsp = ask(r, m.LOCK_INTERFACE_REQUEST, default_stream_id=3)
    assert error_of(rsp) is TdispErrorCode.INVALID_DEVICE_CONFIGURATION
    program_secure_stream(dev, 3)
    lock(r, default_stream_id=3)


def test_ide_insecure_without_ide_capability_uses_default_stream_id() -> None:
    dev = Device(get_profile("dma-test"))
    dev.tdisp.close()
    program(dev.dsm)
    r = TdispResponder(dev.functions)  # no IDE wired: the IDE layer's calls are authoritative
    drive(r, dev.dsm, R, default_stream_id=9)
    r.ide_stream_insecure(9)
    assert state(r) is E


@pytest.mark.parametrize("locked_state", [L, R], ids=lambda s: s.name)
def test_firmware_update_errors_only_with_no_fw_update(locked_state: TdiState) -> None:
    dev, r = make()
    drive(r, dev.dsm, locked_state)
    assert r.firmware_update() == []
    assert state(r) is locked_state
    dev, r = make()
    drive(r, dev.dsm, locked_state, flags=LockInterfaceFlags.NO_FW_UPDATE)
    assert r.firmware_update() == [r.tdis[0]]
    assert state(r) is E


def test_enforcement_ignored_when_unlocked_or_already_in_error(events: Recorder) -> None:
    dev, r = make()
    fn = dev.dsm
    w(fn, 0x10, BAR0_BASE + 0x1000)
    w(fn, 0x04, 0, 2)
    r.firmware_update()
    r.ide_stream_insecure(0)
    assert state(r) is U
    program(fn)
    drive(r, fn, E)
    n = len(events.of("tdi.transition"))
    w(fn, 0x10, BAR0_BASE + 0x2000)
    fn.reset("flr")
    assert state(r) is E and len(events.of("tdi.transition")) == n


@dataclass
class FakeDma:
    data: bytearray

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.data[addr : addr + size])

    def write(self, addr: int, data: bytes) -> None:
        self.data[addr : addr + len(data)] = data


def run_dma(fn: PciFunction, length: int = 16) -> int:
    """Start a dma-test BAR2 -> guest copy and return STATUS."""
    fn.region_write(0, 0x04, struct.pack("<III", 0x100, 0, length))
    fn.region_write(0, 0x10, struct.pack("<I", DMA_CMD_FROM_DEVICE))
    return int(struct.unpack("<I", fn.region_read(0, 0x14, 4))[0])


def test_dma_gate(events: Recorder) -> None:
    dev, r = make()
    fn = dev.dsm
    mem = FakeDma(bytearray(0x1000))
    fn.dma = mem
    fn.region_write(2, 0, b"payload!")
    assert run_dma(fn) == STATUS_DONE  # CONFIG_UNLOCKED: the function works as usual
    mem.data[:] = bytes(0x1000)
    nonce = lock(r)
    assert run_dma(fn) == STATUS_DONE | STATUS_ERROR  # CONFIG_LOCKED: held
    (held,) = events.of("tdisp.dma_held")
    assert held["function"] == fn.name and held["state"] == "CONFIG_LOCKED"
    assert held["direction"] == "write" and held["address"] == 0x100 and held["size"] == 16
    assert mem.data[0x100:0x108] == bytes(8)
    start(r, nonce)
    assert run_dma(fn) == STATUS_DONE  # RUN: allowed
    assert mem.data[0x100:0x108] == b"payload!"
    w(fn, 0x10, BAR0_BASE + 0x1000)  # -> ERROR
    w(fn, 0x10, BAR0_BASE)
    with pytest.raises(DmaError, match="ERROR"):
        fn.dma.read(0, 4)
    assert events.of("tdisp.dma_held")[-1]["state"] == "ERROR"
    ask(r, m.STOP_INTERFACE_REQUEST)
    assert fn.dma.read(0x100, 4) == b"payl"
    r.close()
    assert fn.dma is mem  # gates removed with the responder


def test_stop_scrubs_the_personality() -> None:
    dev, r = make()
    fn = dev.dsm
    drive(r, fn, R)
    fn.region_write(2, 0, b"tee secret")
    ask(r, m.STOP_INTERFACE_REQUEST)
    assert fn.region_read(2, 0, 10) == bytes(10)


def test_conventional_reset_unlocks_every_tdi() -> None:
    dev, r = make(functions=2)
    drive(r, dev.functions[0], R)
    drive(r, dev.functions[1], L, fid=1)
    r.conventional_reset()
    assert [t.state for t in r.tdis] == [U, U]


# -- configuration digest ------------------------------------------------------------------


def test_configuration_digest_tracks_configuration() -> None:
    dev, r = make()
    fn = dev.dsm
    base = r.configuration_digest()
    assert len(base) == 48 and base == r.configuration_digest()
    assert r.tdis[0].configuration_digest() == hashlib.sha384(
        r.tdis[0].configuration_record().pack()).digest()
    seen = {base}

    def changed() -> None:
        now = r.configuration_digest()
        assert now not in seen
        seen.add(now)

    lock(r, flags=LockInterfaceFlags.NO_FW_UPDATE)
    changed()  # lock parameters are covered
    w(fn, 0x04, CMD_MEM, 2)
    changed()  # command register
    w(fn, 0x10, BAR0_BASE + 0x1000)
    changed()  # BARs
    assert fn.msix is not None
    w(fn, fn.msix.offset + 2, 0x8000, 2)
    changed()  # MSI-X message control
    fn.region_write(4, 0, b"\x01\x02\x03\x04")
    changed()  # MSI-X table


# -- the device interface report --------------------------------------------------------


@pytest.mark.parametrize("encoding", list(FirstPageEncoding), ids=lambda e: e.name)
@pytest.mark.parametrize("offset", [0, 0x7F_0000_0000], ids=["no-offset", "offset"])
def test_report_matches_programmed_bars(encoding: FirstPageEncoding, offset: int) -> None:
    dev, r = make(encoding=encoding)
    lock(r, mmio_reporting_offset=offset, flags=LockInterfaceFlags.NO_FW_UPDATE)
    rep = report(r)
    fn = dev.dsm
    assert fn.msix is not None

    def first(addr: int) -> int:
        return (addr + offset) >> 12 if encoding is FirstPageEncoding.PAGE_NUMBER \
            else addr + offset

    bars = bars_of(0)
    assert [(x.first_page, x.number_of_pages, x.range_attributes, x.range_id)
            for x in rep.mmio_range] == [
        (first(bars[0]), 1, 0, 0),
        (first(bars[2]), 16, 0, 2),
        # dma-test keeps table (0x0) and PBA (0x800) in one 4 KiB page
        (first(bars[4]), 1, MmioRangeAttributes.MSIX_TABLE | MmioRangeAttributes.MSIX_PBA, 4),
    ]
    assert rep.mmio_range_count == 3
    assert rep.interface_info == InterfaceInfo.NO_UPDATE_AFTER_LOCK | \
        InterfaceInfo.DMA_WITHOUT_PASID
    assert rep.msi_x_message_control == fn.config.get(fn.msix.offset + 2, 2)
    assert rep.lnr_control == 0 and rep.tph_control == 0
    assert rep.device_specific_info_len == 0


def linux_mmio_check(rep: m.TDI_REPORT_STRUCTURE, fn: PciFunction, offset: int) -> None:
    """Parse the report as the proposed Linux parser does (pci_tsm_mmio_alloc, [IO2]):
    ``struct pci_tsm_devif_report {le16 interface_info, reserved, msi_x_message_control,
    lnr_control; le32 tph_control, mmio_range_count; {le64 pfn; le32 nr_pfns;
    le32 attributes}[]}`` with RANGE_ID = attributes[31:16]."""
    raw = rep.pack()
    count = struct.unpack_from("<I", raw, 12)[0]
    last = (-1, -1)
    seen_bars: set[int] = set()
    for i in range(count):
        pfn, _nr, attributes = struct.unpack_from("<QII", raw, 16 + 16 * i)
        bar = attributes >> 16
        target = fn.bars[bar] if 0 <= bar < 6 else None
        assert target is not None and target.kind is not BarKind.IO  # must be a MEM BAR
        assert (bar, pfn) > last  # ascending by BAR, then address
        last = (bar, pfn)
        if bar not in seen_bars:  # the first range of a BAR is the BAR base
            assert pfn * 4096 == fn.bar_address(bar) + offset
            seen_bars.add(bar)
    assert seen_bars == {i for i, b in enumerate(fn.bars) if b and b.kind is not BarKind.IO}


def test_report_is_what_linux_parses() -> None:
    dev, r = make()
    lock(r, mmio_reporting_offset=0x1000_0000)
    linux_mmio_check(report(r), dev.dsm, 0x1000_0000)


def test_interface_info_without_no_fw_update_or_dma() -> None:
    _dev, r = make(dma_capable=False)
    lock(r)
    assert report(r).interface_info == 0


class SplitReport(Personality):
    """A function whose MSI-X table, PBA and non-TEE ranges sit on separate pages."""

    NAME = "tdisp-test-split"
    VENDOR_ID = 0x1B36
    DEVICE_ID = 0x10F1
    CLASS_CODE = 0xFF0000

    def build(self, fn: PciFunction) -> None:
        fn.add_bar(Bar(0, 0x10000, BarKind.MEM64, prefetchable=True))
        fn.add_bar(Bar(2, 0x100, BarKind.IO))
        fn.add_bar(Bar(3, 0x2000, BarKind.MEM32))
        fn.add_msix(16, 0, 0x2000, 0, 0x3000)

    def non_tee_ranges(self) -> list[tuple[int, int, int]]:
        return [(0, 0x8000, 0x2000), (3, 0x1000, 0x1000)]


@pytest.mark.parametrize("encoding", list(FirstPageEncoding), ids=lambda e: e.name)
def test_report_splits_msix_and_non_tee_ranges(monkeypatch: pytest.MonkeyPatch,
                                               encoding: FirstPageEncoding) -> None:
    monkeypatch.setitem(personality_mod._REGISTRY, SplitReport.NAME, SplitReport)
    dev = Device(DeviceProfile("split", SplitReport.NAME))
    dev.tdisp.close()
    fn = dev.dsm
    w(fn, 0x10, 0x0000000C)  # 64-bit prefetchable BAR0 at 0x9_0000_0000
    w(fn, 0x14, 0x9)
    w(fn, 0x18, 0xC001)  # I/O BAR2: not a TDISP range
    w(fn, 0x1C, 0xFD000000)
    w(fn, 0x04, CMD_MEM | 0x1, 2)
    r = TdispResponder.for_device(dev, encoding=encoding)
    offset = 0x10_0000_0000
    lock(r, mmio_reporting_offset=offset)
    rep = report(r, chunk=5)  # and read it in small portions

    def first(addr: int) -> int:
        return (addr + offset) >> 12 if encoding is FirstPageEncoding.PAGE_NUMBER \
            else addr + offset

    A = MmioRangeAttributes
    b0, b3 = 0x9_0000_0000, 0xFD000000
    assert [(x.first_page, x.number_of_pages, x.range_attributes, x.range_id)
            for x in rep.mmio_range] == [
        (first(b0), 2, 0, 0),
        (first(b0 + 0x2000), 1, A.MSIX_TABLE, 0),
        (first(b0 + 0x3000), 1, A.MSIX_PBA, 0),
        (first(b0 + 0x4000), 4, 0, 0),
        (first(b0 + 0x8000), 2, A.IS_NON_TEE_MEM, 0),
        (first(b0 + 0xA000), 6, 0, 0),
        (first(b3), 1, 0, 3),
        (first(b3 + 0x1000), 1, A.IS_NON_TEE_MEM, 3),
    ]
    if encoding is FirstPageEncoding.PAGE_NUMBER:
        linux_mmio_check(rep, fn, offset)
    # the report module is usable without a responder
    assert mmio_ranges(fn, non_tee=SplitReport().non_tee_ranges(), mmio_reporting_offset=offset,
                       encoding=encoding) == rep.mmio_range


def test_report_portions() -> None:
    _dev, r = make(max_report_portion=20)
    lock(r)
    full = report(r).pack()
    assert len(full) == 16 + 3 * 16 + 4
    rsp = ask(r, m.GET_DEVICE_INTERFACE_REPORT, offset=0, length=0xFFFF)
    assert rsp.portion_length == 20 and rsp.remainder_length == len(full) - 20
    assert rsp.report == full[:20]
    rsp = ask(r, m.GET_DEVICE_INTERFACE_REPORT, offset=30, length=7)
    assert rsp.portion_length == 7 and rsp.remainder_length == len(full) - 37
    assert rsp.report == full[30:37]
    rsp = ask(r, m.GET_DEVICE_INTERFACE_REPORT, offset=len(full) - 3, length=100)
    assert rsp.portion_length == 3 and rsp.remainder_length == 0
    assert report(r, chunk=1).pack() == full


def test_report_is_fixed_at_lock() -> None:
    dev, r = make()
    lock(r)
    before = report(r)
    fn = dev.dsm
    assert fn.msix is not None
    w(fn, fn.msix.offset + 2, 0x8000, 2)  # allowed without LOCK_MSIX
    assert report(r) == before


# -- multiple functions ----------------------------------------------------------------


def test_multiple_functions_are_independent_tdis() -> None:
    dev, r = make(functions=2, bus=3)
    fn0, fn1 = dev.functions
    fid0, fid1 = 0x0300, 0x0301
    assert [t.function_id for t in r.tdis] == [fid0, fid1]
    assert error_of(ask(r, m.GET_DEVICE_INTERFACE_STATE, 0x0001)) is \
        TdispErrorCode.INVALID_INTERFACE  # bus 0 is not ours
    nonce1 = lock(r, fid1, mmio_reporting_offset=0)
    assert state(r, fid0) is U and state(r, fid1) is L
    rep1 = report(r, fid1)
    assert rep1.mmio_range[0].first_page == bars_of(1)[0] >> 12
    assert error_of(ask(r, m.GET_DEVICE_INTERFACE_REPORT, fid0, offset=0, length=10)) is IIS
    start(r, nonce1, fid1)
    nonce0 = lock(r, fid0)
    rsp = ask(r, m.START_INTERFACE_REQUEST, fid0, start_interface_nonce=nonce1)
    assert error_of(rsp) is TdispErrorCode.INVALID_NONCE  # nonces are per TDI
    start(r, nonce0, fid0)
    fn0.reset("flr")  # FLR of function 0 errors only its TDI
    assert state(r, fid0) is E and state(r, fid1) is R
    w(fn1, 0x20, BAR4_BASE + 0x40000)
    assert state(r, fid1) is E
    rsp = ask(r, m.GET_DEVICE_INTERFACE_STATE, fid1)
    assert rsp.function_id == fid1


def test_segment_in_function_id() -> None:
    _dev, r = make(functions=2, bus=1, segment=2)
    assert r.tdis[1].function_id == m.make_function_id(1, 1, segment=2)
    assert state(r, 0x0101) is U  # segment_valid clear: RID alone identifies
    assert state(r, m.make_function_id(1, 1, segment=2)) is U
    rsp = ask(r, m.GET_DEVICE_INTERFACE_STATE, m.make_function_id(1, 1, segment=3))
    assert error_of(rsp) is TdispErrorCode.INVALID_INTERFACE


# -- the PCI-SIG vendor-defined protocol handler ----------------------------------------


@dataclass
class Ctx:
    session_id: int | None


def test_vendor_handler_requires_a_session_and_dispatches() -> None:
    dev, r = make()
    handler = pci_sig_vendor_handler(r.handle, dev.ide_km.handle)
    req = bytes([1]) + m.GET_TDISP_VERSION().pack()
    with pytest.raises(VendorRequestError) as exc:
        handler(Ctx(None), req)
    assert exc.value.code == SPDM_ERROR_SESSION_REQUIRED
    rsp = handler(Ctx(0xFFFE0001), req)
    assert rsp[0] == 1 and isinstance(m.decode_response(rsp[1:]), m.TDISP_VERSION)
    query = bytes([0, IdeKmObject.QUERY, 0, 0])
    with pytest.raises(VendorRequestError):
        handler(Ctx(None), query)
    rsp = handler(Ctx(1), query)
    assert rsp[:2] == bytes([0, IdeKmObject.QUERY_RESP])
    with pytest.raises(VendorRequestError) as exc:
        handler(Ctx(1), bytes([0, 0x7E]))  # IDE_KM error -> SPDM ERROR
    assert exc.value.code == SPDM_ERROR_INVALID_REQUEST
    for payload, code in ((b"", SPDM_ERROR_INVALID_REQUEST),
                          (bytes([2, 0]), SPDM_ERROR_UNSUPPORTED_REQUEST)):
        with pytest.raises(VendorRequestError) as exc:
            handler(Ctx(1), payload)
        assert exc.value.code == code


def test_vendor_handler_without_ide_km_and_custom_error() -> None:
    _dev, r = make()

    class VendorError(Exception):
        def __init__(self, code: int) -> None:
            self.code = code

    handler = pci_sig_vendor_handler(r.handle, vendor_error=VendorError)
    with pytest.raises(VendorError) as exc:
        handler(Ctx(1), bytes([0, 0, 0, 0]))
    assert exc.value.code == SPDM_ERROR_UNSUPPORTED_REQUEST
    # a TDISP-level error is a normal TDISP_ERROR response, not an SPDM ERROR
    rsp = handler(Ctx(1), bytes([1]) + m.START_INTERFACE_REQUEST().pack())
    assert error_of(m.decode_response(rsp[1:])) is IIS


def test_full_flow_over_the_vendor_handler(events: Recorder) -> None:
    dev, r = make()
    handler = pci_sig_vendor_handler(r.handle, dev.ide_km.handle)
    ctx = Ctx(7)

    def tdisp(msg: m.TdispMessage) -> Any:
        out = handler(ctx, bytes([1]) + msg.pack())
        assert out[0] == 1
        return m.decode_response(out[1:])

    assert isinstance(tdisp(m.GET_TDISP_VERSION()), m.TDISP_VERSION)
    assert isinstance(tdisp(m.GET_TDISP_CAPABILITIES()), m.TDISP_CAPABILITIES)
    nonce = tdisp(m.LOCK_INTERFACE_REQUEST(flags=LockInterfaceFlags.NO_FW_UPDATE))
    rep = tdisp(m.GET_DEVICE_INTERFACE_REPORT(offset=0, length=0x1000))
    assert rep.remainder_length == 0
    tdisp(m.START_INTERFACE_REQUEST(start_interface_nonce=nonce.start_interface_nonce))
    assert tdisp(m.GET_DEVICE_INTERFACE_STATE()).tdi_state == TdiState.RUN
    assert isinstance(tdisp(m.STOP_INTERFACE_REQUEST()), m.STOP_INTERFACE_RESPONSE)
    assert [(e["old"], e["new"]) for e in events.of("tdi.transition")] == [
        ("CONFIG_UNLOCKED", "CONFIG_LOCKED"), ("CONFIG_LOCKED", "RUN"),
        ("RUN", "CONFIG_UNLOCKED")]
    assert [e["message"] for e in events.of("tdisp.request")][:3] == [
        "GET_TDISP_VERSION", "GET_TDISP_CAPABILITIES", "LOCK_INTERFACE_REQUEST"]
