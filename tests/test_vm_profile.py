"""A device of the user's own in a real guest: examples/counter (a TOML profile and
a personality outside the package) is enumerated by the guest kernel with the
profile's IDs, BARs and IDE streams; the platform firmware (the guest-less CCA
sequence) connects, binds, locks and accepts it.  Needs `vfiouser-tdisp setup`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vfiouser_tdisp.run.job import boot_guest
from vfiouser_tdisp.run.provision import Provisioned

pytestmark = pytest.mark.vm

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "counter" / "counter.toml"


def test_example_profile_in_a_real_guest(prov: Provisioned, tmp_path: Path) -> None:
    run = boot_guest(prov, tmp_path, str(EXAMPLE), 150,
                     checks=["device", "ids", "functions", "ide_cap"], log=False)
    assert run.done and run.exit_code == 0, run.console[-3000:]
    for name in ("device", "ids", "functions", "ide_cap"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{run.console[-3000:]}"
    # the PCI header the guest kernel read: the profile's IDs (sysfs formatting)
    assert (run.result("ids") or (False, ""))[1] == (
        "vendor=0x1b36 device=0x10f1 class=0xff0000 revision=0x02 subsystem=0x1b36:0x0001")
    # IDE Capability register: Number of Selective IDE Streams Supported (23:16) = 4 - 1
    assert "cap=0x0103" in (run.result("ide_cap") or (False, ""))[1]
    # the personality's BAR0 and the profile's BAR2 and BAR4, as the guest kernel sized them
    # (the device sits behind the root port: 0000:01:00.0)
    sizes = {int(m.group(1)): int(m.group(3), 16) - int(m.group(2), 16) + 1
             for m in re.finditer(r"0000:01:00\.0: BAR (\d) \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)",
                                  run.console)}
    assert sizes == {0: 0x1000, 2: 0x1000, 4: 0x10000}, run.console[-3000:]


def test_example_profile_through_the_platform_firmware() -> None:
    """The RMM emulator's whole host + realm sequence against the example device
    (in process: the profile's SPDM algorithms, measurements and three BARs)."""
    r = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "tsm", "--platform", "cca",
                        "--profile", str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(3 ranges)" in r.stdout and "digests match" in r.stdout, r.stdout
    assert "FAIL" not in r.stdout
