"""`run --platform cca` end to end: a stock 7.3.4 guest, the guest module, the kernel's
PCI/TSM core and DOE driver, the RMM emulator behind the firmware port, the device.

One run (two boots: the flow, then against a tampered device) for the whole module;
each test reads its part.  The expected values are the specification's: the errnos
of the proposed TEE I/O ABI (reference/firmware-abi.md A.3/A.5), the PDEV and VDEV
paths of the RMM (C.4, C.5), the TDISP TDI states (PCIe r7.0 §11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.platform_support import step_detail
from vfiouser_tdisp.run.platform import GUEST_STEPS, HOST_STEPS, PlatformRun, run_platform
from vfiouser_tdisp.run.provision import Provisioned

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def flow(prov: Provisioned, tmp_path_factory: pytest.TempPathFactory) -> PlatformRun:
    return run_platform(prov, tmp_path_factory.mktemp("platform"), timeout=240, log=False)


def test_every_step_passes(flow: PlatformRun) -> None:
    names = [n for n, _ok, _d in flow.results]
    for step in GUEST_STEPS + HOST_STEPS + ("tamper", "tamper_host"):
        assert step in names
    failed = [(n, d) for n, ok, d in flow.results if not ok]
    assert not failed and flow.ok, failed
    assert flow.main.run.done and flow.main.run.exit_code == 0


def test_kernel_core_connects_and_binds(flow: PlatformRun) -> None:
    assert "connect=tsm0 authenticated=tsm0 dsm=0000:01:00.0" in step_detail(flow, "connect")
    assert step_detail(flow, "bind") == "bound=tsm0 tvm/state=unlocked"
    assert step_detail(flow, "disconnect") == "connect, authenticated and dsm empty"


def test_preconditions_of_the_proposed_abi(flow: PlatformRun) -> None:
    # lock while a driver is bound: -EBUSY; accept before lock: -EINVAL
    assert "virtio-pci bound: Device or resource busy; state=unlocked" in \
        step_detail(flow, "lock_busy")
    assert step_detail(flow, "accept_unlocked") == \
        "accept before lock: Invalid argument; state=unlocked"


def test_evidence_is_verified_before_accept(flow: PlatformRun) -> None:
    verify = step_detail(flow, "verify")
    assert "chain of 3 to the anchor" in verify and "4 digests (sha256) as attested" in verify
    assert "measurements 1 2 3 = reference" in verify
    assert "in BAR0" in verify and "FAIL" not in verify
    assert step_detail(flow, "accept").startswith("state=run")
    assert step_detail(flow, "probe") == "driver=virtio-pci rng_current=virtio_rng.0"
    rng = step_detail(flow, "hwrng")
    assert len(rng) == 64 and rng != "0" * 64


def test_firmware_state_machines(flow: PlatformRun) -> None:
    assert step_detail(flow, "pdev_states") == \
        "EP PDEV NEW -> NEEDS_KEY -> HAS_KEY -> READY -> STOPPED"
    assert step_detail(flow, "vdev_states").startswith(
        "VDEV NEW -> UNLOCKED -> LOCKED -> STARTED -> UNLOCKED")
    doe = step_detail(flow, "doe_objects")
    for what in ("GET_VERSION 1", "KEY_EXCHANGE 1", "FINISH(secured) 1", "key_prog 6",
                 "k_set_go 6", "LOCK_INTERFACE_REQUEST", "START_INTERFACE_REQUEST"):
        assert what in doe


def test_negative_paths(flow: PlatformRun) -> None:
    assert "gave 0 bytes in 5 s" in step_detail(flow, "dma_held")
    assert "held while the TDI was locked" in step_detail(flow, "dma_gate")
    err = step_detail(flow, "tdi_error")
    assert "state=error" in err and err.endswith("unlock: state=unlocked")
    assert "RUN -> ERROR (bar_change) -> CONFIG_UNLOCKED" in step_detail(flow, "tdi_states")


def test_tampered_evidence_is_refused_and_never_accepted(flow: PlatformRun) -> None:
    tamper = step_detail(flow, "tamper")
    assert "FAIL measurement(s) 1 != reference" in tamper
    assert "outside every BAR" in tamper and tamper.endswith("not accepted (state=locked)")
    assert step_detail(flow, "tamper_host").endswith("START_INTERFACE requests: 0")


def test_step_times_are_reported(flow: PlatformRun, tmp_path: Path) -> None:
    assert set(GUEST_STEPS) <= set(flow.main.step_times)
    assert all(v >= 0 for v in flow.main.step_times.values())
