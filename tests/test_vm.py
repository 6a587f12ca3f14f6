"""End-to-end: a real Linux guest in stock QEMU with the device attached.

Needs `vfiouser-tdisp setup` (the README's test command runs it first).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfiouser_tdisp.run.job import GuestRun, boot_guest
from vfiouser_tdisp.run.provision import Provisioned

pytestmark = pytest.mark.vm


def assert_passed(run: GuestRun, *names: str) -> None:
    for name in names:
        got = run.result(name)
        assert got is not None, f"check {name} did not run:\n{run.console[-3000:]}"
        assert got[0], f"check {name} failed: {got[1]}\n{run.console[-3000:]}"


def test_guest_boots_without_device(prov: Provisioned, tmp_path: Path) -> None:
    run = boot_guest(prov, tmp_path, None, 120, checks=["device"], log=False)
    assert run.done and run.exit_code == 0  # init ran its checks and powered off
    assert run.result("device") == (False, "no : function in /sys/bus/pci/devices")


def test_guest_sees_the_device(prov: Provisioned, tmp_path: Path) -> None:
    run = boot_guest(prov, tmp_path, "dma-test", 120,
                     checks=["device", "ids", "tee_io", "ide_cap", "doe_dmesg"], log=False)
    assert run.done and run.exit_code == 0, run.console[-3000:]
    assert_passed(run, "device", "ids", "tee_io", "ide_cap")
    ok, detail = run.result("ids") or (False, "")
    assert "vendor=0x1b36 device=0x10f0 class=0xff0000" in detail
    assert "devcap=0x5" in (run.result("tee_io") or (False, ""))[1]  # FLR | TEE-IO
    # The guest kernel ran DOE discovery against the mailbox at 0x100.
    assert "DOE: [100] Found feature 0 vid: 1 type: 0" in run.console
    # QEMU (through QMP) shows the function behind the root port.
    assert run.qmp is not None
    devices = [d for bus in run.qmp["pci"] for d in bus["devices"]]  # type: ignore[index]
    bridges = [d for d in devices if d.get("pci_bridge")]
    inner = [d for b in bridges for d in b["pci_bridge"].get("devices", [])]
    ours = [d for d in inner if d["qdev_id"] == "vtdisp0fn0"]
    assert ours and (ours[0]["id"]["vendor"], ours[0]["id"]["device"]) == (0x1B36, 0x10F0)
    bars = {r["bar"]: r for r in ours[0]["regions"]}
    assert sorted(bars) == [0, 2, 4]  # BAR sizing through the socket worked
    assert (bars[0]["size"], bars[2]["size"], bars[2]["mem_type_64"]) == (4096, 65536, True)
    assert all(r["address"] not in (-1, 0) for r in bars.values())  # the guest assigned them
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"vfio_user.version", "vfio_user.dma_map", "doe.transition"} <= kinds
    assert any(e["event"] == "vfio_user.dma_map" and e["fd"] for e in events)


def test_virtio_rng_driver_binds_and_hwrng_delivers(prov: Provisioned, tmp_path: Path) -> None:
    run = boot_guest(prov, tmp_path, "virtio-rng", 120, log=False)  # every check of the profile
    assert run.done and run.exit_code == 0, run.console[-3000:]
    assert_passed(run, "device", "ids", "tee_io", "doe_features", "doe_dmesg", "doe_spdm",
                  "ide_cap", "virtio_rng", "hwrng", "msix")
    assert run.ok
    # SPDM driven by the guest through the DOE registers QEMU forwards to the device
    spdm = (run.result("doe_spdm") or (False, ""))[1]
    assert "VERSION entries=4 (10 11 12 13)" in spdm and "dts=4096" in spdm
    for t in (1, 2):
        assert f"DOE: [100] Found feature {t} vid: 1 type: {t}" in run.console
    assert "0001:01" in (run.result("doe_features") or (False, ""))[1]
    rng = (run.result("hwrng") or (False, ""))[1]
    assert len(rng) == 64 and rng != "0" * 64
    msix = (run.result("msix") or (False, ""))[1]
    assert "virtio0-config" in msix and "virtio0-input" in msix
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "vfio_user.set_irqs" and e["index"] == "MSIX" for e in events)
    assert any(e["event"] == "virtio.status" and e["status"] & 0x4 for e in events)  # DRIVER_OK
    requests = [e["request"] for e in events if e["event"] == "spdm.request"]
    assert requests[:3] == ["GET_VERSION", "GET_CAPABILITIES", "GET_VERSION"]
