"""`run --scenario NAME` in a booted guest: each fault's kernel-visible reaction.

One boot per scenario (about 15 s under TCG).  The expected values are the kernel's:
pci_doe() fails an exchange with -EIO when the mailbox stays BUSY past PCI_DOE_TIMEOUT
(1 s, then ABORT) or shows ERROR (ABORT at once); the relying party's refusals are
those of guest-scripts/check_platform.sh's verifier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vfiouser_tdisp.run.provision import Provisioned, ProvisionError, ensure_provisioned
from vfiouser_tdisp.run.scenarios import SCENARIOS, run_scenario

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def prov() -> Provisioned:
    try:
        return ensure_provisioned()
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")


def scenario(prov: Provisioned, tmp_path: Path, name: str,
             platform: str = "cca") -> dict[str, tuple[bool, str]]:
    boot, results = run_scenario(prov, tmp_path, SCENARIOS[name], timeout=240, log=False,
                                 platform=platform)
    got = {n: (ok, d) for n, ok, d in results}
    failed = {n: d for n, (ok, d) in got.items() if not ok}
    assert not failed, f"{failed}\n{boot.run.console[-3000:]}"
    assert list(got) == list(SCENARIOS[name].steps) + ["fault_fired"] + (
        ["kernel_doe_abort"] if name.startswith("doe-") else []) + (
        ["respond_if_ready"] if name == "spdm-not-ready" else []) + (
        ["firmware_refused"] if name == "cert-change" else []) + (
        ["dma_held"] if name == "dma-locked" else []) + (
        ["busy_retried"] if name == "spdm-busy" else [])
    return got


@pytest.mark.parametrize("name", ["doe-busy", "doe-delay", "doe-error"])
def test_doe_faults_fail_connect_with_eio_then_recover(prov: Provisioned, tmp_path: Path,
                                                      name: str) -> None:
    got = scenario(prov, tmp_path, name)
    assert got["connect_fails"][1].startswith("tsm/connect: 'Input/output error'")
    assert "connect failed: -5" in got["connect_fails"][1]
    waited = "its 1 s timeout" if name != "doe-error" else "ERROR seen at once"
    assert waited in got["kernel_doe_abort"][1]
    assert got["connect_recovers"][1] == "the fault spent, a second connect: connect=tsm0"


def test_doe_busy_on_tdx_fails_connect_with_eproto(prov: Provisioned, tmp_path: Path) -> None:
    # the DOE driver's -EIO goes to the TDX module, which ends TDH.SPDM.CONNECT with
    # TDX_DEVICE_ERROR; the module returns -EPROTO
    got = scenario(prov, tmp_path, "doe-busy", platform="tdx")
    assert got["connect_fails"][1].startswith("tsm/connect: 'Protocol error'")
    assert "DOE type 1 exchange failed: -5" in got["connect_fails"][1]
    assert "its 1 s timeout" in got["kernel_doe_abort"][1]


def test_kp_ack_failure_fails_connect_then_recovers(prov: Provisioned, tmp_path: Path) -> None:
    got = scenario(prov, tmp_path, "kp-ack")
    assert "tsm/connect: '" in got["connect_fails"][1]
    assert "at virtio-rng.0.fn0:stream" in got["fault_fired"][1]


def test_firmware_busy_is_retried_by_the_module(prov: Provisioned, tmp_path: Path) -> None:
    got = scenario(prov, tmp_path, "fw-busy")
    assert "RMI_BUSY 3 times, called again" in got["connect_succeeds"][1]
    assert got["fault_fired"][1].startswith("3 x fw-busy at rmm:RMI_PDEV_COMMUNICATE")


@pytest.mark.parametrize("name,why", [
    ("measurements-change", "measurement(s) 1 != reference"),
    ("report-range", "report"),
])
def test_changed_evidence_is_refused_by_the_guest_verifier(prov: Provisioned, tmp_path: Path,
                                                           name: str, why: str) -> None:
    got = scenario(prov, tmp_path, name)
    assert why in got["verifier_refuses"][1]


def test_changed_chain_is_refused_by_the_firmware(prov: Provisioned, tmp_path: Path) -> None:
    got = scenario(prov, tmp_path, "cert-change")
    assert got["connect_fails"][1].startswith("tsm/connect: 'Input/output error'")
    assert "chain link broken" in got["firmware_refused"][1]


def test_dma_while_locked_is_held(prov: Provisioned, tmp_path: Path) -> None:
    got = scenario(prov, tmp_path, "dma-locked")
    assert got["dma_held"][1].startswith("1 DMA attempt(s) while LOCKED held")
    assert got["dma_held"][1].endswith("0 let through")


def test_busy_is_retried_by_the_firmware_requester(prov: Provisioned, tmp_path: Path) -> None:
    got = scenario(prov, tmp_path, "spdm-busy")
    assert got["busy_retried"][1].startswith("GET_MEASUREMENTS -> Busy, Busy, Busy, MEASUREMENTS")


def test_response_not_ready_is_waited_out(prov: Provisioned, tmp_path: Path) -> None:
    got = scenario(prov, tmp_path, "spdm-not-ready")
    assert got["lock_succeeds"][1].startswith("state=locked, evidence verified:")
    assert got["respond_if_ready"][1].startswith(
        "GET_MEASUREMENTS -> ResponseNotReady, then RESPOND_IF_READY -> MEASUREMENTS")


def test_tdi_error_while_run(prov: Provisioned, tmp_path: Path) -> None:
    got = scenario(prov, tmp_path, "tdi-error")
    assert "state=error" in got["tdi_error_state"][1]
