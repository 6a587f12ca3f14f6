"""A device of the user's own in a real guest: examples/counter (a TOML profile and
a personality outside the package) is enumerated by the guest kernel with the
profile's IDs, BARs and IDE streams, and the host TSM flow runs against it with
the profile's SPDM algorithms and measurements.  Needs `vfiouser-tdisp setup`."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfiouser_tdisp.run.host_flow import guest_bars, tsm_flow
from vfiouser_tdisp.run.job import boot_guest, free_tcp_port
from vfiouser_tdisp.run.provision import Provisioned, ProvisionError, ensure_provisioned

from .conftest import PROVISIONED_CACHE

pytestmark = pytest.mark.vm

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "counter" / "counter.toml"


@pytest.fixture(scope="module")
def prov() -> Provisioned:
    try:
        return ensure_provisioned(PROVISIONED_CACHE)
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")


def test_example_profile_in_a_real_guest(prov: Provisioned, tmp_path: Path) -> None:
    port = free_tcp_port()
    run = boot_guest(prov, tmp_path, str(EXAMPLE), 150,
                     checks=["device", "ids", "functions", "ide_cap", "wait_host"],
                     log=False, append="vtdisp.wait=8",
                     server_args=["--spdm-port", str(port)],
                     host_turn=lambda console: tsm_flow(port, console))
    assert run.done and run.exit_code == 0, run.console[-3000:]
    for name in ("device", "ids", "functions", "ide_cap", "host"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{run.console[-3000:]}"
    # the PCI header the guest kernel read: the profile's IDs (sysfs formatting)
    assert (run.result("ids") or (False, ""))[1] == (
        "vendor=0x1b36 device=0x10f1 class=0xff0000 revision=0x02 subsystem=0x1b36:0x0001")
    # IDE Capability register: Number of Selective IDE Streams Supported (23:16) = 4 - 1
    assert "cap=0x0103" in (run.result("ide_cap") or (False, ""))[1]
    # the personality's BAR0 and the profile's BAR2 and BAR4, as the guest assigned them
    assert {i: size for i, (_, size) in guest_bars(run.console)[0].items()} == {
        0: 0x1000, 2: 0x1000, 4: 0x10000}
    host = (run.result("host") or (False, ""))[1]
    assert host.startswith("SPDM 1.3 ecdsa-p256/sha256, 6 signed measurements;")
    assert "fn0 LOCK/report (3 BARs = guest's)/START/STOP" in host
