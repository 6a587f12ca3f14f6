"""The DOE mailbox driven exactly like Linux drivers/pci/doe.c, on config bytes.

``LinuxDoe`` below is a line-by-line model of the kernel's requester
(pci_doe_abort, pci_doe_send_req, the DATA_OBJECT_READY poll in
doe_statemachine_work, pci_doe_recv_resp, pci_doe_discovery), written against
32-bit config accessors so every register access is the one the kernel makes.
"""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.doe.mailbox import (
    PCI_DOE_CAP,
    PCI_DOE_CTRL,
    PCI_DOE_CTRL_ABORT,
    PCI_DOE_CTRL_GO,
    PCI_DOE_READ,
    PCI_DOE_STATUS,
    PCI_DOE_STATUS_BUSY,
    PCI_DOE_STATUS_DATA_OBJECT_READY,
    PCI_DOE_STATUS_ERROR,
    PCI_DOE_WRITE,
    DoeCapability,
)
from vfiouser_tdisp.doe.protocols import DoeDispatcher, DoeError, build_object
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.pci.config import ConfigSpace

DOE = 0x100
PCI_DOE_MAX_LENGTH = 1 << 18
POLLS = 128  # the kernel polls for 1 s at HZ/128; the mailbox here never needs a second poll


class DoeIOError(Exception):
    """-EIO / -EBUSY from the kernel's DOE code."""


class LinuxDoe:
    def __init__(self, cfg: ConfigSpace, cap: int = DOE) -> None:
        self.cfg = cfg
        self.cap = cap
        self.accesses: list[tuple[str, int, int]] = []  # (op, register, value)
        self.trace = True

    # pci_read_config_dword / pci_write_config_dword
    def rd(self, reg: int) -> int:
        value = int(struct.unpack("<I", self.cfg.read(self.cap + reg, 4))[0])
        if self.trace:
            self.accesses.append(("r", reg, value))
        return value

    def wr(self, reg: int, value: int) -> None:
        if self.trace:
            self.accesses.append(("w", reg, value))
        self.cfg.write(self.cap + reg, struct.pack("<I", value))

    @property
    def capver(self) -> int:
        return (int(struct.unpack("<I", self.cfg.read(self.cap, 4))[0]) >> 16) & 0xF

    def abort(self) -> None:
        self.wr(PCI_DOE_CTRL, PCI_DOE_CTRL_ABORT)
        for _ in range(POLLS):
            val = self.rd(PCI_DOE_STATUS)
            if not val & PCI_DOE_STATUS_ERROR and not val & PCI_DOE_STATUS_BUSY:
                return
        raise DoeIOError("abort timed out: mailbox dead")

    def send_req(self, vid: int, typ: int, payload: bytes) -> None:
        val = self.rd(PCI_DOE_STATUS)
        if val & PCI_DOE_STATUS_BUSY:
            raise DoeIOError("EBUSY")
        if val & PCI_DOE_STATUS_ERROR:
            raise DoeIOError("EIO: ERROR set before send")
        length = 2 + (len(payload) + 3) // 4
        if length > PCI_DOE_MAX_LENGTH:
            raise DoeIOError("EIO: request too long")
        if length == PCI_DOE_MAX_LENGTH:
            length = 0
        self.wr(PCI_DOE_WRITE, vid | (typ << 16))
        self.wr(PCI_DOE_WRITE, length)
        padded = payload + bytes(-len(payload) % 4)
        for i in range(0, len(padded), 4):
            self.wr(PCI_DOE_WRITE, int.from_bytes(padded[i : i + 4], "little"))
        self.wr(PCI_DOE_CTRL, PCI_DOE_CTRL_GO)

    def wait_ready(self) -> None:
        for _ in range(POLLS):
            val = self.rd(PCI_DOE_STATUS)
            if val & PCI_DOE_STATUS_ERROR:
                raise DoeIOError("EIO: ERROR while waiting for the response")
            if val & PCI_DOE_STATUS_DATA_OBJECT_READY:
                return
        raise DoeIOError("ETIMEDOUT")

    def recv_resp(self, vid: int, typ: int, response_size: int) -> bytes:
        val = self.rd(PCI_DOE_READ)
        if (val & 0xFFFF, (val >> 16) & 0xFF) != (vid, typ):
            raise DoeIOError(f"EIO: expected [VID, Protocol] = [{vid:#x}, {typ}], got {val:#x}")
        self.wr(PCI_DOE_READ, 0)
        val = self.rd(PCI_DOE_READ)
        self.wr(PCI_DOE_READ, 0)
        length = val & 0x3FFFF
        if not length:
            length = PCI_DOE_MAX_LENGTH
        if length < 2:
            raise DoeIOError("EIO: LENGTH < 2")
        length -= 2
        payload_length = (response_size + 3) // 4
        if length < payload_length:
            payload_length = length
        out = bytearray()
        for _ in range(payload_length - 1):
            out += self.rd(PCI_DOE_READ).to_bytes(4, "little")
            self.wr(PCI_DOE_READ, 0)
        if payload_length:
            out += self.rd(PCI_DOE_READ).to_bytes(4, "little")
            if not self.rd(PCI_DOE_STATUS) & PCI_DOE_STATUS_DATA_OBJECT_READY:
                raise DoeIOError("EIO: DOR clear before the last ack")
            self.wr(PCI_DOE_READ, 0)
        for _ in range(length - payload_length):  # flush excess length
            self.rd(PCI_DOE_READ)
            self.wr(PCI_DOE_READ, 0)
        if self.rd(PCI_DOE_STATUS) & PCI_DOE_STATUS_ERROR:
            raise DoeIOError("EIO: ERROR after the response")
        return bytes(out[: min(response_size, 4 * payload_length)])

    def task(self, vid: int, typ: int, payload: bytes, response_size: int = 4096) -> bytes:
        """One pci_doe() call; on failure the kernel aborts the mailbox."""
        try:
            self.send_req(vid, typ, payload)
            self.wait_ready()
            return self.recv_resp(vid, typ, response_size)
        except DoeIOError:
            self.abort()
            raise

    def discovery(self, index: int) -> tuple[int, int, int]:
        ver = 2 if self.capver >= 2 else 0
        rsp = self.task(1, 0, struct.pack("<I", index | (ver << 8)), 4)
        val = int.from_bytes(rsp, "little")
        return val & 0xFFFF, (val >> 16) & 0xFF, (val >> 24) & 0xFF

    def features(self) -> list[tuple[int, int]]:
        """pci_doe_cache_features: walk the discovery chain from index 0."""
        found, index = [], 0
        while True:
            vid, typ, index = self.discovery(index)
            found.append((vid, typ))
            if index == 0:
                return found


@pytest.fixture
def dev() -> Device:
    return Device(get_profile("virtio-rng"))


@pytest.fixture
def doe(dev: Device) -> LinuxDoe:
    drv = LinuxDoe(dev.dsm.config)
    drv.abort()  # what pci_doe_create_mb does first
    return drv


def echo_handlers(dev: Device) -> None:
    dev.doe.register(1, 1, lambda p: p)
    dev.doe.register(1, 2, lambda p: bytes(reversed(p)))


def mailbox(dev: Device) -> DoeCapability:
    cap = dev.dsm.config.find(DoeCapability)
    assert isinstance(cap, DoeCapability)
    return cap


def status(drv: LinuxDoe) -> int:
    return drv.rd(PCI_DOE_STATUS)


# -- discovery ---------------------------------------------------------------------------


def test_capability_header_and_no_interrupt_support(dev: Device, doe: LinuxDoe) -> None:
    hdr = int(struct.unpack("<I", dev.dsm.config.read(DOE, 4))[0])
    assert hdr & 0xFFFF == 0x2E and doe.capver == 2
    assert doe.rd(PCI_DOE_CAP) == 0  # INT_SUP clear: the kernel polls
    doe.wr(PCI_DOE_CTRL, 0x2)  # INT_EN is hardwired to 0
    assert doe.rd(PCI_DOE_CTRL) == 0
    assert status(doe) == 0


def test_discovery_declares_cma_before_a_responder_is_attached(doe: LinuxDoe) -> None:
    # The DSM advertises CMA and secured CMA; objects of those types get the
    # mailbox ERROR until the SPDM layer registers its responders.
    assert doe.discovery(0) == (1, 0, 1)
    assert doe.features() == [(1, 0), (1, 1), (1, 2)]


def test_declared_protocol_without_responder_sets_error() -> None:
    d = DoeDispatcher("t")
    d.declare(1, 1)
    with pytest.raises(DoeError):
        d.exchange(build_object(1, 1, b"\x10\x84\x00\x00"))


def test_discovery_chain(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    assert doe.discovery(0) == (1, 0, 1)
    assert doe.discovery(1) == (1, 1, 2)
    assert doe.discovery(2) == (1, 2, 0)
    assert doe.features() == [(1, 0), (1, 1), (1, 2)]


def test_discovery_request_carries_version_2(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    seen: list[bytes] = []
    dev.doe.observers.append(lambda direction, obj: seen.append(obj) if direction == "request"
                             else None)
    assert doe.discovery(1) == (1, 1, 2)
    assert seen == [struct.pack("<III", 0x00000001, 3, 0x0201)]  # INDEX 1, VER 2 in byte 1
    written = [v for op, reg, v in doe.accesses if op == "w" and reg == PCI_DOE_WRITE]
    assert written[-1] == 0x0201


def test_discovery_version_0_is_answered_too(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    doe.send_req(1, 0, struct.pack("<I", 2))  # a pre-6.10 kernel sends VER 0
    doe.wait_ready()
    assert doe.recv_resp(1, 0, 4) == bytes([1, 0, 2, 0])


def test_discovery_index_out_of_range_is_an_error(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    with pytest.raises(DoeIOError):
        doe.discovery(3)
    assert status(doe) == 0  # the kernel aborted, the mailbox is usable
    assert doe.discovery(0) == (1, 0, 1)


# -- exchanges and error handling ----------------------------------------------------------


def test_exchange_round_trip(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    assert doe.task(1, 1, b"hello world!") == b"hello world!"
    assert doe.task(1, 2, b"abcdefgh") == b"hgfedcba"
    assert status(doe) == 0  # DOR drops after the last ack


def test_response_larger_than_buffer_is_flushed(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    assert doe.task(1, 1, bytes(range(64)), response_size=8) == bytes(range(8))
    assert status(doe) == 0
    assert doe.task(1, 1, b"next") == b"next"


def test_unknown_type_sets_error_go_ignored_abort_recovers(
        dev: Device, doe: LinuxDoe, recorder: Recorder) -> None:
    echo_handlers(dev)
    doe.send_req(1, 0x55, b"\0\0\0\0")
    assert status(doe) == PCI_DOE_STATUS_ERROR
    with pytest.raises(DoeIOError):
        doe.wait_ready()
    # While ERROR is set the mailbox ignores WRITE and GO.
    doe.wr(PCI_DOE_WRITE, 0x00010001)
    doe.wr(PCI_DOE_WRITE, 3)
    doe.wr(PCI_DOE_WRITE, 0)
    doe.wr(PCI_DOE_CTRL, PCI_DOE_CTRL_GO)
    assert status(doe) == PCI_DOE_STATUS_ERROR
    with pytest.raises(DoeIOError, match="ERROR set before send"):
        doe.send_req(1, 0, b"\0\0\0\0")
    doe.abort()
    assert status(doe) == 0
    assert doe.discovery(0) == (1, 0, 1)  # nothing of the ignored request survived
    assert recorder.of("doe.unsupported") and recorder.of("doe.error")
    triggers = [e["trigger"] for e in recorder.of("doe.transition")]
    assert "go_error" in triggers and "abort" in triggers


@pytest.mark.parametrize("dws", [
    [0x00010001, 5, 0],  # LENGTH larger than what was written
    [0x00010001, 2, 0],  # LENGTH smaller than what was written
    [0x00010001, 1],  # LENGTH below the 2-DW header
    [0x00010001, 0, 0],  # LENGTH 0 means 2^18 DW, only 3 written
    [0x00010001, 0x40000 | 3, 0],  # reserved LENGTH bits
    [0x00010001],  # no LENGTH dword at all
])
def test_length_mismatch_sets_error(dev: Device, doe: LinuxDoe, dws: list[int]) -> None:
    echo_handlers(dev)
    for dw in dws:
        doe.wr(PCI_DOE_WRITE, dw)
    doe.wr(PCI_DOE_CTRL, PCI_DOE_CTRL_GO)
    assert status(doe) == PCI_DOE_STATUS_ERROR
    doe.abort()
    assert doe.task(1, 1, b"ok!!") == b"ok!!"


def test_go_with_empty_mailbox_sets_error(doe: LinuxDoe) -> None:
    doe.wr(PCI_DOE_CTRL, PCI_DOE_CTRL_GO)
    assert status(doe) == PCI_DOE_STATUS_ERROR
    doe.abort()
    assert status(doe) == 0


def test_length_zero_means_2_pow_18(dev: Device, doe: LinuxDoe) -> None:
    """A maximum-size object both ways: LENGTH 0 in the request and the response."""
    mailbox(dev).max_request_dw = PCI_DOE_MAX_LENGTH
    got: list[int] = []

    def echo(payload: bytes) -> bytes:
        got.append(len(payload))
        return payload

    dev.doe.register(1, 1, echo)
    headers: list[tuple[str, bytes]] = []
    dev.doe.observers.append(lambda direction, obj: headers.append((direction, obj[:8])))
    payload = (bytes(range(256)) * 4096)[: 4 * (PCI_DOE_MAX_LENGTH - 2)]
    doe.trace = False
    doe.send_req(1, 1, payload)
    doe.wait_ready()
    assert headers == [(d, struct.pack("<II", 0x00010001, 0)) for d in ("request", "response")]
    assert doe.rd(PCI_DOE_READ) == 0x00010001
    assert got == [4 * (PCI_DOE_MAX_LENGTH - 2)]
    assert doe.recv_resp(1, 1, len(payload)) == payload  # LENGTH 0 read back as 2^18
    assert status(doe) == 0


def test_request_larger_than_max_request_dw_sets_error(
        dev: Device, doe: LinuxDoe, recorder: Recorder) -> None:
    echo_handlers(dev)
    mailbox(dev).max_request_dw = 8
    assert doe.task(1, 1, bytes(24)) == bytes(24)  # 8 DW fit exactly
    with pytest.raises(DoeIOError):
        doe.task(1, 1, bytes(28))  # 9 DW
    assert recorder.of("doe.overflow")
    assert status(doe) == 0  # the failed task aborted
    assert doe.task(1, 2, b"1234") == b"4321"


def test_reading_read_mailbox_has_no_side_effects(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    doe.send_req(1, 1, b"\x11\x22\x33\x44\x55\x66\x77\x88")
    doe.wait_ready()
    first = doe.rd(PCI_DOE_READ)
    assert doe.rd(PCI_DOE_READ) == first == 0x00010001
    assert status(doe) & PCI_DOE_STATUS_DATA_OBJECT_READY
    whole = dev.dsm.config.read(0, 4096)  # a whole-space read (QEMU does this) changes nothing
    assert whole[DOE + PCI_DOE_READ : DOE + PCI_DOE_READ + 4] == struct.pack("<I", first)
    assert doe.recv_resp(1, 1, 8) == b"\x11\x22\x33\x44\x55\x66\x77\x88"
    assert doe.rd(PCI_DOE_READ) == 0  # nothing pending reads as zero


def test_write_while_response_pending_discards_it(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    doe.send_req(1, 1, b"old!")
    doe.wait_ready()
    doe.rd(PCI_DOE_READ)
    doe.wr(PCI_DOE_READ, 0)  # partly consumed, then abandoned
    doe.send_req(1, 2, b"new!")
    doe.wait_ready()
    assert doe.recv_resp(1, 2, 4) == b"!wen"
    assert status(doe) == 0


def test_abort_mid_response_and_mid_request(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    doe.send_req(1, 1, b"abcdefgh")
    doe.wait_ready()
    doe.abort()
    assert status(doe) == 0 and doe.rd(PCI_DOE_READ) == 0
    doe.wr(PCI_DOE_WRITE, 0x00010001)  # half a request
    doe.abort()
    assert doe.task(1, 1, b"full") == b"full"


def test_handler_exception_sets_error_and_mailbox_survives(
        dev: Device, doe: LinuxDoe, recorder: Recorder) -> None:
    def boom(payload: bytes) -> bytes:
        raise RuntimeError("protocol layer bug")

    dev.doe.register(1, 1, boom)
    with pytest.raises(DoeIOError):
        doe.task(1, 1, b"1234")
    assert status(doe) == 0  # the kernel's abort worked
    assert recorder.of("doe.handler_error") and recorder.of("doe.error")
    dev.doe.register(1, 1, lambda p: p)
    assert doe.task(1, 1, b"1234") == b"1234"


def test_events_trace_one_exchange(dev: Device, doe: LinuxDoe, recorder: Recorder) -> None:
    echo_handlers(dev)
    doe.task(1, 1, b"ping")
    moves = [(e["old"], e["trigger"], e["new"]) for e in recorder.of("doe.transition")]
    assert moves == [("IDLE", "go_ok", "RESPONSE_READY"),
                     ("RESPONSE_READY", "read_done", "IDLE")]
    go = recorder.of("doe.transition")[0]
    assert go["request_dw"] == 3 and go["response_dw"] == 3


def test_flr_returns_mailbox_to_idle(dev: Device, doe: LinuxDoe) -> None:
    echo_handlers(dev)
    doe.send_req(1, 1, b"abcd")
    doe.wait_ready()
    dev.dsm.reset("flr")
    assert status(doe) == 0
    assert doe.task(1, 1, b"efgh") == b"efgh"
