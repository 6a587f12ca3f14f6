"""`run --platform sev-tio` on the host side, without a guest: the step list the guest
reports, the host's checks on the PSP's events, and the PSP rule the flow's tdi_error step
relies on.  The events come from the real PSP emulator driven by its guest-less drivers
(the same calls the guest module makes), so the event names the checks read are the ones
the PSP emits.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.run.job import GuestRun
from vfiouser_tdisp.run.platform import (
    GUEST_STEPS,
    PLATFORM_STEPS,
    Boot,
    _sev_checks,
    host_checks,
)
from vfiouser_tdisp.tdisp.messages import TdiState
from vfiouser_tdisp.tsm.platform import in_process_device
from vfiouser_tdisp.tsm.sev_tio.abi import SevRet, TdiStatus
from vfiouser_tdisp.tsm.sev_tio.host import SevTioError, SevTioHost, SnpGuest
from vfiouser_tdisp.tsm.sev_tio.model import TdiState as PspTdiState
from vfiouser_tdisp.tsm.sev_tio.psp import Psp

RID = 0x0100


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    yield rec
    unsubscribe()


def _bench(tmp_path: Path) -> tuple[SevTioHost, SnpGuest, object]:
    transport, device = in_process_device(identity_dir=str(tmp_path))
    psp = Psp()
    host = SevTioHost(psp, transport)
    host.init()
    guest = SnpGuest(psp, host.mem, host.create_guest())
    host.assign(RID, 0)
    return host, guest, device


def test_sev_tio_steps_are_ccas_plus_two_after_accept() -> None:
    sev = PLATFORM_STEPS["sev-tio"]
    assert PLATFORM_STEPS["cca"] == GUEST_STEPS
    i = sev.index("accept")
    assert sev[i + 1:i + 3] == ("mmio_validate_rejects", "guest_msg_replay")
    assert sev[:i + 1] + sev[i + 3:] == GUEST_STEPS


def test_host_checks_read_the_psps_events(tmp_path: Path, recorder: Recorder) -> None:
    host, guest, _ = _bench(tmp_path)
    host.connect()
    ev = guest.lock(RID)
    guest.accept(RID, ev)
    # the relay replays the guest's last sealed message: INVALID_PARAM (0x16)
    assert guest.relay(guest.last_sealed, RID)[0] == SevRet.INVALID_PARAM
    guest.unlock(RID, ev)
    host.disconnect()
    boot = Boot(GuestRun(), events=list(recorder.events))
    checks = {name: (ok, detail) for name, ok, detail in _sev_checks(boot)[0]}
    assert checks["dev_ctx_states"] == (True, "device context CREATED -> CONNECTING -> "
                                        "CONNECTED -> DISCONNECTING -> CREATED")
    assert checks["tdi_ctx_states"][0], checks["tdi_ctx_states"]
    ok, detail = checks["guest_msgs"]
    assert ok and "refused: 1 (INVALID_PARAM: sequence number" in detail
    # each SPDM_REQUEST hands one object out, and the device answered each one
    relayed = _sev_checks(boot)[1]
    assert relayed == host.objects_sent > 20
    names = [n for n, _ok, _d in host_checks(boot, "sev-tio")]
    assert names[:3] == ["dev_ctx_states", "tdi_ctx_states", "guest_msgs"]
    assert "doe_objects" in names


def test_guest_msgs_fails_without_a_refused_replay(tmp_path: Path, recorder: Recorder) -> None:
    host, guest, _ = _bench(tmp_path)
    host.connect()
    guest.lock(RID)
    boot = Boot(GuestRun(), events=list(recorder.events))
    ok, detail = {n: (o, d) for n, o, d in _sev_checks(boot)[0]}["guest_msgs"]
    assert not ok and "refused: 0" in detail


def test_a_refused_report_puts_the_running_tdi_in_error(tmp_path: Path) -> None:
    """TDISP 1.0 §11.2.4: a BAR written while RUN moves the TDI to ERROR; the PSP learns it
    at TIO_TDI_REPORT (the device answers ERROR) and its context goes to ERROR ([MODEL]);
    the guest sees tdi_status INVALID (1) and TDISP state ERROR (3); a FORCE unbind and
    a reclaim still tear it down."""
    host, guest, device = _bench(tmp_path)
    host.connect()
    ev = guest.lock(RID)
    guest.accept(RID, ev)
    cfg = device.dsm.config  # type: ignore[attr-defined]
    bar0 = struct.unpack("<I", cfg.read(0x10, 4))[0]
    cfg.write(0x10, struct.pack("<I", bar0 + 0x0010_0000))
    assert device.tdisp.tdis[0].state is TdiState.ERROR  # type: ignore[attr-defined]
    with pytest.raises(SevTioError) as err:
        host.report(RID)
    # a TDISP ERROR answer is not an SPDM ERROR: the exchange broke (docs/platform-sev-tio.md)
    assert err.value.status == SevRet.ERR_IN_DEV_CONN
    assert host.tdi_status(RID).state == list(PspTdiState).index(PspTdiState.ERROR)
    info, regs = guest.tdi_info(RID, 1)
    assert info.tdi_status == TdiStatus.INVALID and regs[2] == 3
    cfg.write(0x10, struct.pack("<I", bar0))
    host.stop(RID, force=True)
    host.unbind(RID)
    host.disconnect()


def test_run_all_prints_one_table() -> None:
    """`run --platform all`: a row per step in flow order (a platform's own steps after the
    step they follow), a column per platform, "-" where a platform has no such step, the
    failures with their detail below."""
    from types import SimpleNamespace

    from vfiouser_tdisp.cli import build_parser
    from vfiouser_tdisp.run.platform import PlatformRun, table

    assert build_parser().parse_args(["run", "--platform", "all"]).platform == "all"

    def run(results: list[tuple[str, bool, str]], times: dict[str, float]) -> PlatformRun:
        guest = GuestRun(results=results, accel="tcg", seconds=20.0)
        return PlatformRun(Boot(guest, step_times=times), None, results)

    cca = run([("lock", True, ""), ("accept", True, ""), ("probe", True, ""),
               ("pdev_states", True, "")], {"lock": 0.25, "accept": 0.5})
    sev = run([("lock", True, ""), ("accept", True, ""), ("mmio_validate_rejects", False, "9"),
               ("probe", True, ""), ("dev_ctx_states", True, "")], {"lock": 1.0})
    prov = SimpleNamespace(kernel_version="7.3.4", qemu_version="11.1")
    lines = table({"cca": cca, "sev-tio": sev}, prov, Path("out"))  # type: ignore[arg-type]
    rows = [line.split() for line in lines[2:-2]]
    assert lines[1].split() == ["step", "cca", "sev-tio"]
    assert rows == [["lock", "PASS", "0.25s", "PASS", "1.00s"],
                    ["accept", "PASS", "0.50s", "PASS"],
                    ["mmio_validate_rejects", "-", "FAIL"],
                    ["probe", "PASS", "PASS"],
                    ["dev_ctx_states", "-", "PASS"],
                    ["pdev_states", "PASS", "-"]]
    assert lines[-2] == "  FAIL sev-tio mmio_validate_rejects: 9"
    assert lines[-1].startswith("FAILED: 8 passed, 1 failed")
