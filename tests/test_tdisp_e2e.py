"""Issue 4's sequence through the DOE registers of a running server, for a
device with two functions: secured session, IDE_KM QUERY, six KEY_PROG +
K_SET_GO, enable the selective stream -> SECURE, LOCK both TDIs, read their
reports (ranges = the BARs as programmed), START, a BAR write -> ERROR, STOP
-> CONFIG_UNLOCKED; measurements follow the TDISP configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiouser_tdisp.doe.driver import DoeDriver
from vfiouser_tdisp.ide.capability import IdeStreamState
from vfiouser_tdisp.server import RunningDevices, function_socket_path, start_devices
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.tdisp import messages as t
from vfiouser_tdisp.tsm.core import (
    IdeKmRequester,
    PciSigChannel,
    TdispRequester,
    TsmProtocolError,
    parse_report,
)
from vfiouser_tdisp.tsm.platform import assign_bars
from vfiouser_tdisp.vfio_user.client import VfioUserClient

DOE = 0x100
IDE = 0x118
SEL0_CTL = IDE + 0x0C + 0x04   # no link streams: selective stream 0 starts at +0x0C
SEL0_STS = IDE + 0x0C + 0x08
STREAM_ID = 3
BAR_BASE = {0: 0xE000_0000, 1: 0xE100_0000}  # per function: BAR0 (64-bit) base


@pytest.fixture
def served(sock_dir: Path) -> Iterator[tuple[RunningDevices, str]]:
    path = str(sock_dir / "tdi.sock")
    running = start_devices([path], "virtio-rng-2fn")
    yield running, path
    running.close()


def program_bars(c: VfioUserClient, fn: int) -> dict[int, tuple[int, int]]:
    """Assign addresses like firmware would, through the vfio-user client's config space
    accessors: size each BAR, place it at ``BAR_BASE[fn]`` on, enable MSE and BME."""
    return assign_bars(c.config_read32, c.config_write32, BAR_BASE[fn])


def test_lock_report_start_error_stop_through_doe_registers(served, events) -> None:  # type: ignore[no-untyped-def]
    running, path = served
    dev = running.devices[0]
    fn0 = VfioUserClient(path)
    fn1 = VfioUserClient(function_socket_path(path, 1))
    try:
        fn0.version()
        fn1.version()
        bars = {0: program_bars(fn0, 0), 1: program_bars(fn1, 1)}
        drv = DoeDriver(fn0.config_read32, fn0.config_write32, DOE)
        drv.abort()
        spdm = SpdmRequester(drv.exchange)
        spdm.authenticate(dev.identity.root)
        before = spdm.get_measurements(4).blocks[0].value
        session = spdm.start_session()
        channel = PciSigChannel(spdm, session)
        ide_km, tdisp = IdeKmRequester(channel), TdispRequester(channel)

        # IDE: query, six keys + K_SET_GO, then enabling the stream reads SECURE
        query = ide_km.query()
        assert query.max_port_index == 0 and len(query.ide_registers) > 8
        keys = ide_km.program_stream(STREAM_ID)
        logged = json.dumps(events.events, default=str)
        assert not any(k.hex() in logged for k in keys.values())  # keys never in clear
        assert len(events.of("ide_km.key_fingerprint")) == 6
        fn0.config_write32(SEL0_CTL, (STREAM_ID << 24) | 1)
        assert fn0.config_read32(SEL0_STS) & 0xF == IdeStreamState.SECURE.value

        # TDISP outside the session is refused
        with pytest.raises(Exception, match="SessionRequired"):
            spdm.vendor_request(3, b"\x01\x00", b"\x01" + t.GET_TDISP_VERSION(
                function_id=0).pack())

        fids = {fn: t.make_function_id(0, fn) for fn in (0, 1)}
        nonces = {}
        for fn, fid in fids.items():
            assert tdisp.version(fid).version_num_count >= 1
            tdisp.capabilities(fid)
            assert tdisp.state(fid) is t.TdiState.CONFIG_UNLOCKED
            nonces[fn] = tdisp.lock(fid, flags=t.LockInterfaceFlags.NO_FW_UPDATE,
                                    default_stream_id=STREAM_ID)
            assert tdisp.state(fid) is t.TdiState.CONFIG_LOCKED
            report = parse_report(tdisp.report(fid, portion=64))  # several portions
            covered: dict[int, list[tuple[int, int]]] = {}
            for r in report.mmio_range:
                covered.setdefault(r.range_id, []).append(
                    (r.first_page << 12, r.number_of_pages << 12))
            assert sorted(covered) == sorted(bars[fn])
            for index, (base, size) in bars[fn].items():
                spans = sorted(covered[index])
                assert spans[0][0] == base
                assert sum(s for _, s in spans) == size
            msix = [r for r in report.mmio_range
                    if r.range_attributes & t.MmioRangeAttributes.MSIX_TABLE]
            assert msix, "MSI-X table range flagged"

        # the TDISP-relevant measurement changed with the lock
        assert spdm.get_measurements(4, session=session).blocks[0].value != before

        with pytest.raises(TsmProtocolError, match="INVALID_NONCE|INVALID_REQUEST"):
            tdisp.start(fids[0], bytes(32))
        for fn, fid in fids.items():
            tdisp.start(fid, nonces[fn])
            assert tdisp.state(fid) is t.TdiState.RUN

        # a BAR write on function 0 while RUN: its TDI goes to ERROR, fn1 keeps running
        fn0.config_write32(0x10, BAR_BASE[0] + 0x10_0000)
        assert tdisp.state(fids[0]) is t.TdiState.ERROR
        assert tdisp.state(fids[1]) is t.TdiState.RUN

        for fid in fids.values():
            tdisp.stop(fid)
            assert tdisp.state(fid) is t.TdiState.CONFIG_UNLOCKED

        # K_SET_STOP: the stream leaves SECURE
        ide_km.stop_stream(STREAM_ID)
        assert fn0.config_read32(SEL0_STS) & 0xF == IdeStreamState.INSECURE.value
        spdm.end_session(session)
    finally:
        fn0.close()
        fn1.close()
