"""`run --platform tdx` end to end: a stock 7.3.4 guest, the guest module's TDX host and TD
sides, the kernel's PCI/TSM core, DOE driver and firmware-upload class, the TDX module +
P-SEAMLDR emulator behind the firmware port, the device.

One run (the flow, then the tampered device) for the whole module; each test reads its
part.  Expected values are the sources': the proposed TEE I/O errnos (firmware-abi.md
A.3/A.5), the TDX module's call sequence (B.4-B.6), Linux v7.2's runtime-update ABI (B.2:
/sys/devices/faux/tdx_host/{version 0444, seamldr_version 0400, num_remaining_updates
0400}, "%u.%u.%02u", fw_upload "tdx_module" whose write maps every install error to
FW_UPLOAD_ERR_FW_INVALID), and the firmware-upload class's own error format
(Documentation/ABI/testing/sysfs-class-firmware: "error" is "<status>:<error>", the status
when it failed, e.g. "transferring", and "firmware-invalid").
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.platform_support import step_detail
from vfiouser_tdisp.run.platform import PlatformRun, doe_objects, run_platform
from vfiouser_tdisp.run.platform_tdx import HOST_STEPS, STEPS
from vfiouser_tdisp.run.provision import Provisioned

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def flow(prov: Provisioned, tmp_path_factory: pytest.TempPathFactory) -> PlatformRun:
    return run_platform(prov, tmp_path_factory.mktemp("platform-tdx"), platform="tdx",
                        timeout=240, log=False)


def test_every_step_passes(flow: PlatformRun) -> None:
    names = [n for n, _ok, _d in flow.results]
    for step in STEPS + HOST_STEPS + ("tamper", "tamper_host"):
        assert step in names
    failed = [(n, d) for n, ok, d in flow.results if not ok]
    assert not failed and flow.ok, failed
    assert flow.main.run.done and flow.main.run.exit_code == 0


def test_connect_goes_through_the_tdx_module_and_the_kernel_doe_path(flow: PlatformRun) -> None:
    assert "connected through the TDX module" in step_detail(flow, "connect")
    assert step_detail(flow, "bind") == "bound=tsm0 tvm/state=unlocked"
    doe = step_detail(flow, "doe_objects")
    m = re.match(r"(\d+) objects the firmware handed .* (\d+) SPDM requests at the device", doe)
    assert m and m.group(1) == m.group(2)
    # each of them a TDX_SPDM_REQUEST of the leaf that was running (doe-objects.txt)
    leaves = Counter(line.split(":")[0] for line in doe_objects(flow.main)
                     if "TDX_SPDM_REQUEST" in line)
    for leaf in ("TDH.SPDM.CONNECT", "TDH.IDE.STREAM.KM", "TDH.SPDM.DISCONNECT"):
        assert leaves[leaf] > 0, leaves
    assert sum(leaves.values()) == int(m.group(1))
    for what in ("GET_VERSION 1", "KEY_EXCHANGE 1", "FINISH(secured) 1", "key_prog 6",
                 "k_set_go 6", "LOCK_INTERFACE_REQUEST", "START_INTERFACE_REQUEST",
                 "END_SESSION(secured) 1"):
        assert what in doe
    assert step_detail(flow, "spdm_states") == \
        "SPDM context CREATED -> CONNECTING -> CONNECTED -> DISCONNECTING -> DISCONNECTED"
    assert step_detail(flow, "disconnect") == "connect, authenticated and dsm empty"


def test_td_lock_and_accept(flow: PlatformRun) -> None:
    assert "Device or resource busy; state=unlocked" in step_detail(flow, "lock_busy")
    assert step_detail(flow, "accept_unlocked") == \
        "accept before lock: Invalid argument; state=unlocked"
    assert step_detail(flow, "lock").startswith("state=locked")
    assert "tdi_info=128" in step_detail(flow, "evidence")
    verify = step_detail(flow, "verify")
    assert "report and dev_info digests (sha384) as TDG.TDI.RD attests" in verify or \
        "2 digests (sha384) as attested" in verify
    assert "measurements 1 2 3 = reference" in verify and "FAIL" not in verify
    assert "MMIO ranges accepted, DMA accepted, TDI RUN" in step_detail(flow, "accept")
    assert step_detail(flow, "tdi_fw_states").startswith(
        "module TDI BINDING -> LOCKED -> STARTING -> RUN -> STOPPING -> UNLOCKED")
    assert "gave 0 bytes in 5 s" in step_detail(flow, "dma_held")


def test_tdi_error_reaches_the_td_and_unlock_recovers(flow: PlatformRun) -> None:
    # the BAR moved while RUN (PCIe r7.0 §11): refresh asks again and fails with EIO (the
    # proposed ABI's errno for a firmware-refused operation), TDG.TDI.RD reads ERROR (3,
    # firmware-abi.md B.6), TDCM UNBIND's STOP_INTERFACE takes it back to unlocked
    err = step_detail(flow, "tdi_error")
    assert re.match(r"run; BAR0 0x[0-9a-f]+ moved: refresh 'Input/output error', "
                    r"state=error; unlock: state=unlocked$", err), err
    assert step_detail(flow, "tdi_fw_states").endswith("RUN -> ERROR -> STOPPING -> UNLOCKED")
    assert "RUN -> ERROR (bar_change) -> CONFIG_UNLOCKED" in step_detail(flow, "tdi_states")
    leaves = Counter(line.split(":")[0] for line in doe_objects(flow.main)
                     if "TDX_SPDM_REQUEST" in line)
    assert leaves["TDH.TDI.STATE"] > 0 and leaves["TDH.TDI.REPORT"] > 0, leaves


def test_update_abi_files(flow: PlatformRun) -> None:
    info = step_detail(flow, "seamldr_info")
    # boot module 1.5.20 and P-SEAMLDR 2.0.00 in TDX_VERSION_FMT, 4 updates left
    assert info.startswith("version=1.5.20 seamldr_version=2.0.00 num_remaining_updates=4")
    assert "(modes 444 400 400)" in info
    assert info.endswith("loading data status error remaining_size cancel")


def test_td_preserving_update_while_the_tdi_runs(flow: PlatformRun) -> None:
    upd = step_detail(flow, "module_update")
    assert upd.startswith("1.5.20 -> 1.5.21, num_remaining_updates 4 -> 3, TDI run, hwrng ")
    rng = upd.rsplit(" ", 1)[1]
    assert len(rng) == 64 and rng != "0" * 64
    assert "4 TD-preserving updates" in step_detail(flow, "module_updates")


def test_bad_images_and_exhaustion_are_refused_as_the_kernel_reports(flow: PlatformRun) -> None:
    bad = step_detail(flow, "update_bad_image")
    for kind, why in (("bad-signature", "EBADSIG"), ("module-hash", "EBADHASH"),
                      ("magic", "TDX-BLOB")):
        assert f"{kind}: transferring:firmware-invalid ({why})" in bad
    assert bad.endswith("version 1.5.21, remaining 3, TDI run")
    ex = step_detail(flow, "update_exhausted")
    assert ex == ("1.5.21 -> 1.5.22 1.5.23 1.5.24, num_remaining_updates 3 -> 0; next: "
                  "transferring:firmware-invalid (EBADCALL), version 1.5.24")


def test_tampered_evidence_is_refused(flow: PlatformRun) -> None:
    tamper = step_detail(flow, "tamper")
    assert "FAIL measurement(s) 1 != reference" in tamper
    assert tamper.endswith("not accepted (state=locked)")
    assert step_detail(flow, "tamper_host").endswith("START_INTERFACE requests: 0")


def test_module_heartbeats_keep_the_session(prov: Provisioned,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """The TDX module asks for the device's HeartbeatPeriod, so the host must call
    TDH.SPDM.MNG(HEARTBEAT) while connected (the guest module's heartbeat_secs,
    `run --module-param`): each call is a HEARTBEAT the device answers with
    HEARTBEAT_ACK inside the session (DSP0274), and the flow is unchanged."""
    from vfiouser_tdisp.run.platform import _guest_results, boot_platform, host_checks

    boot = boot_platform(prov, tmp_path_factory.mktemp("tdx-heartbeat"), platform="tdx",
                         timeout=240, log=False, module_params=("heartbeat_secs=1",))
    results = _guest_results(boot, STEPS) + host_checks(boot, "tdx", None)
    failed = [(n, d) for n, ok, d in results if not ok]
    assert not failed, failed
    mng = [e for e in boot.of("tdx.call") if e.get("leaf") == "TDH.SPDM.MNG"]
    beats = [e for e in boot.of("spdm.response") if e.get("request") == "HEARTBEAT"]
    assert len(mng) >= 2 and len(beats) >= 2, (len(mng), len(beats))
    assert all(e.get("response") == "HEARTBEAT_ACK" for e in beats)
    assert "TDH.SPDM.MNG(HEARTBEAT):" not in boot.run.console
