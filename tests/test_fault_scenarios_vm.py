"""`run --scenario NAME` in a booted guest: each fault's kernel-visible reaction, on
every platform.

One boot per scenario and platform (about 15 s under TCG).  The expected values are the
kernel's and the firmware's: pci_doe() fails an exchange with -EIO when the mailbox
stays BUSY past PCI_DOE_TIMEOUT (1 s, then ABORT) or shows ERROR (ABORT at once); the
module passes that on for CCA, the PSP ends TIO_DEV_CONNECT with ERR_IN_DEV_CONN (0x35,
EIO), the TDX module ends TDH.SPDM.CONNECT with TDX_DEVICE_ERROR (EPROTO); the firmware
busy answers are RMI_BUSY (RMM spec B4), TDX_INTERRUPTED_RESUMABLE and
EXPAND_BUFFER_LENGTH_REQUEST (AMD SEV-TIO); an IDE Fail leaves the Selective IDE Stream
Status register at state 0 (Insecure) with bit 31 set (PCIe r6.x 7.9.26.5.3) and errors
the TDI bound to the stream (PCIe r7.0 §11); the relying party's refusals are those of
guest-scripts/check_platform.sh's verifier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vfiouser_tdisp.run.provision import Provisioned, ProvisionError, ensure_provisioned
from vfiouser_tdisp.run.scenarios import SCENARIOS, run_scenario

pytestmark = pytest.mark.vm

PLATFORMS = ("cca", "tdx", "sev-tio")
# the errno tsm/connect fails with when the device fails the firmware's connect
CONNECT_ERRNO = {"cca": "Input/output error", "tdx": "Protocol error",
                 "sev-tio": "Input/output error"}
# how the firmware says the device failed it (the module's log line)
FIRMWARE_SAYS = {"cca": "connect failed: -5", "tdx": "TDX_DEVICE_ERROR",
                 "sev-tio": "TIO_DEV_CONNECT: SEV status 0x35"}
HOST_CHECKS = {"doe-busy": ["kernel_doe_abort"], "doe-delay": ["kernel_doe_abort"],
               "doe-error": ["kernel_doe_abort"], "spdm-not-ready": ["respond_if_ready"],
               "cert-change": ["firmware_refused"], "dma-locked": ["dma_held"],
               "spdm-busy": ["busy_retried"], "ide-fail": ["ide_failed"]}


@pytest.fixture(scope="module")
def prov() -> Provisioned:
    try:
        return ensure_provisioned()
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")


def scenario(prov: Provisioned, tmp_path: Path, name: str,
             platform: str) -> dict[str, tuple[bool, str]]:
    boot, results = run_scenario(prov, tmp_path, SCENARIOS[name], timeout=240, log=False,
                                 platform=platform)
    got = {n: (ok, d) for n, ok, d in results}
    failed = {n: d for n, (ok, d) in got.items() if not ok}
    assert not failed, f"{failed}\n{boot.run.console[-3000:]}"
    assert list(got) == list(SCENARIOS[name].steps) + ["fault_fired"] + \
        HOST_CHECKS.get(name, [])
    return got


def test_every_scenario_is_tested_here() -> None:
    tested = {"doe-busy", "doe-delay", "doe-error", "kp-ack", "fw-busy",
              "measurements-change", "report-range", "cert-change", "dma-locked",
              "spdm-busy", "spdm-not-ready", "tdi-error", "ide-fail"}
    assert tested == set(SCENARIOS)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", ["doe-busy", "doe-delay", "doe-error"])
def test_doe_faults_fail_connect_then_recover(prov: Provisioned, tmp_path: Path,
                                             name: str, platform: str) -> None:
    got = scenario(prov, tmp_path, name, platform)
    assert got["connect_fails"][1].startswith(
        f"tsm/connect: '{CONNECT_ERRNO[platform]}'")
    assert FIRMWARE_SAYS[platform] in got["connect_fails"][1]
    waited = "its 1 s timeout" if name != "doe-error" else "ERROR seen at once"
    assert waited in got["kernel_doe_abort"][1]
    assert got["connect_recovers"][1] == "the fault spent, a second connect: connect=tsm0"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_kp_ack_failure_fails_connect_then_recovers(prov: Provisioned, tmp_path: Path,
                                                    platform: str) -> None:
    got = scenario(prov, tmp_path, "kp-ack", platform)
    assert got["connect_fails"][1].startswith(f"tsm/connect: '{CONNECT_ERRNO[platform]}'")
    assert "at virtio-rng.0.fn0:stream" in got["fault_fired"][1]


@pytest.mark.parametrize("platform,says,where", [
    ("cca", "COMMUNICATE: RMI_BUSY 3 times, called again", "rmm:RMI_PDEV_COMMUNICATE"),
    ("tdx", "TDH.SPDM.CONNECT: TDX_INTERRUPTED_RESUMABLE 3 times, called again",
     "tdx:TDH.SPDM.CONNECT"),
    ("sev-tio", "TIO_DEV_CONNECT: EXPAND_BUFFER_LENGTH_REQUEST 3 times, called again",
     "psp:TIO_DEV_CONNECT"),
])
def test_firmware_busy_is_retried_by_the_module(prov: Provisioned, tmp_path: Path,
                                                platform: str, says: str, where: str) -> None:
    got = scenario(prov, tmp_path, "fw-busy", platform)
    assert says in got["connect_succeeds"][1]
    assert got["fault_fired"][1] == f"3 x fw-busy at {where}"


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name,why", [
    ("measurements-change", "measurement(s) 1 != reference"),
    ("report-range", "outside every BAR"),
])
def test_changed_evidence_is_refused_by_the_guest_verifier(prov: Provisioned, tmp_path: Path,
                                                           name: str, why: str,
                                                           platform: str) -> None:
    got = scenario(prov, tmp_path, name, platform)
    assert why in got["verifier_refuses"][1]
    assert "accept not written (state=locked)" in got["verifier_refuses"][1]


@pytest.mark.parametrize("platform,event", [
    ("cca", "rmm.comm_failed"), ("tdx", "tdx.device_error"), ("sev-tio", "psp.device_failed")])
def test_changed_chain_is_refused_by_the_firmware(prov: Provisioned, tmp_path: Path,
                                                  platform: str, event: str) -> None:
    got = scenario(prov, tmp_path, "cert-change", platform)
    assert got["connect_fails"][1].startswith(f"tsm/connect: '{CONNECT_ERRNO[platform]}'")
    assert got["firmware_refused"][1].startswith(f"{event}: ")
    assert "chain link broken" in got["firmware_refused"][1]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_dma_while_locked_is_held(prov: Provisioned, tmp_path: Path, platform: str) -> None:
    got = scenario(prov, tmp_path, "dma-locked", platform)
    assert got["lock_succeeds"][1].startswith("state=locked, evidence verified:")
    assert got["dma_held"][1].startswith("1 DMA attempt(s) while LOCKED held")
    assert got["dma_held"][1].endswith("0 let through")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_busy_is_retried_by_the_firmware_requester(prov: Provisioned, tmp_path: Path,
                                                   platform: str) -> None:
    got = scenario(prov, tmp_path, "spdm-busy", platform)
    assert got["busy_retried"][1].startswith("GET_MEASUREMENTS -> Busy, Busy, Busy, MEASUREMENTS")
    assert got["lock_succeeds"][1].startswith("state=locked, evidence verified:")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_response_not_ready_is_waited_out(prov: Provisioned, tmp_path: Path,
                                          platform: str) -> None:
    got = scenario(prov, tmp_path, "spdm-not-ready", platform)
    assert got["lock_succeeds"][1].startswith("state=locked, evidence verified:")
    assert got["respond_if_ready"][1].startswith(
        "GET_MEASUREMENTS -> ResponseNotReady, then RESPOND_IF_READY -> MEASUREMENTS")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_tdi_error_while_run(prov: Provisioned, tmp_path: Path, platform: str) -> None:
    got = scenario(prov, tmp_path, "tdi-error", platform)
    assert "refresh 'Input/output error' state=error" in got["tdi_error_state"][1]
    assert got["tdi_error_state"][1].endswith("state=unlocked")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_ide_fail_while_run(prov: Provisioned, tmp_path: Path, platform: str) -> None:
    got = scenario(prov, tmp_path, "ide-fail", platform)
    # Selective IDE Stream Status: 2 (Secure) while locked; 0x80000000 (Insecure, IDE
    # Fail) once the TDI runs
    assert got["ide_fail_state"][1].startswith(
        "IDE Status 0x00000002 while locked, 0x80000000 after accept;")
    assert "refresh 'Input/output error' state=error" in got["ide_fail_state"][1]
    assert got["ide_fail_state"][1].endswith("state=unlocked")
    assert "SECURE -> INSECURE by IDE Fail while virtio-rng.0.fn0 ran" in got["ide_failed"][1]
    assert "RUN -> ERROR (IDE stream" in got["ide_failed"][1]
