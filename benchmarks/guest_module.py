#!/usr/bin/env python3
"""Guest-module figures under the accelerator this host offers (TCG here).

Run on demand (not part of the tests):

    python3 benchmarks/guest_module.py [--rounds N]

Builds (or finds) the guest module, boots a stock guest with the virtio-rng
device and the firmware port with the Arm CCA RMM emulator behind it, and runs
guest-scripts/check_tsm_module.sh with bind and the TVM flow.  Each step's time
is measured inside the guest (from /proc/uptime, 10 ms resolution) around the
sysfs write that runs it: connect (PDEV to READY + IDE stream, every object
through the kernel's DOE driver), bind (realm, VDEV locked), lock (RHI, evidence
read and digests checked), accept (VALIDATE_MAPPING, RUN, DMA_ENABLE),
disconnect.  Reports the median of each over the rounds, and the boot wall time.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vfiouser_tdisp.run.module_build import ensure_module
from vfiouser_tdisp.run.port_guest import boot_with_port
from vfiouser_tdisp.run.provision import ensure_provisioned
from vfiouser_tdisp.server import platform_firmware

STEPS = ("tsm_connect", "tsm_bind", "tvm_lock", "tvm_accept", "tsm_disconnect")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    prov = ensure_provisioned()
    started = time.monotonic()
    ko = ensure_module(prov)
    print(f"module: {ko} ({ko.stat().st_size} bytes), ready in "
          f"{time.monotonic() - started:.2f} s (cached after the first build)")
    times: dict[str, list[float]] = {s: [] for s in STEPS}
    walls = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            run, console = boot_with_port(prov, Path(tmp), platform_firmware("cca"),
                                          "device,tsm_module",
                                          append="vtdisp.bind=1 vtdisp.tvm=1")
            walls.append(time.monotonic() - t0)
        for step in STEPS:
            got = run.result(step)
            m = re.search(r"t=(\d+\.\d+)s", got[1]) if got and got[0] else None
            if m is None:
                print(f"round {i}: {step} did not pass: {got}", file=sys.stderr)
                return 1
            times[step].append(float(m.group(1)))
    print(f"{'step':16} median (s)  [rounds: {args.rounds}, accel: {run.accel}]")
    for step in STEPS:
        print(f"{step:16} {statistics.median(times[step]):8.2f}")
    print(f"{'guest boot+flow':16} {statistics.median(walls):8.2f}  (wall, QEMU to power-off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
