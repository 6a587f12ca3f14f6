#!/usr/bin/env python3
"""Platform flow figures: the time of each step of `run --platform P` in the guest.

Run on demand (not part of the tests; needs `vfiouser-tdisp setup`):

    python3 benchmarks/platform_flow.py [--runs N] [--accel tcg|kvm|auto]
                                        [--platform cca|tdx|sev-tio]

Each run boots the guest once with the device and the firmware port (the RMM or
PSP emulator behind it) and runs guest-scripts/check_platform.sh.  The guest stamps every
step with /proc/uptime (VTDISP-INFO step_time), so a figure is the guest's wall time
for the step: connect is the kernel's PCI/TSM connect with every SPDM / IDE_KM object
relayed through its DOE driver, lock the realm's lock with the evidence read and
checked, verify the relying party's openssl checks, accept VALIDATE_MAPPING + RUN +
DMA_ENABLE (sev-tio: RUN + SDTE_WRITE + MMIO_VALIDATE per TEE range).  "flow" is
the sum of the guest's steps, "boot" QEMU start to power-off.
Figures: median (min-max) over the runs, in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from vfiouser_tdisp.run.platform import PLATFORM_STEPS, PLATFORMS, boot_platform
from vfiouser_tdisp.run.provision import ensure_provisioned


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="tcg")
    ap.add_argument("--platform", choices=PLATFORMS, default="cca")
    args = ap.parse_args()
    steps = PLATFORM_STEPS[args.platform]
    prov = ensure_provisioned()
    figures: dict[str, list[float]] = {}
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vtbench-") as tmp:
            boot = boot_platform(prov, Path(tmp), platform=args.platform, accel=args.accel,
                                 timeout=300, log=False)
        failed = [n for n, ok, _d in boot.run.results if not ok]
        if failed:
            print(f"run {i + 1}: failed steps {failed}; figures of this run dropped")
            continue
        for step in steps:
            figures.setdefault(step, []).append(boot.step_times.get(step, float("nan")))
        figures.setdefault("flow", []).append(sum(boot.step_times.get(s, 0.0)
                                                  for s in steps))
        figures.setdefault("boot", []).append(boot.run.seconds)
        accel = boot.run.accel
    if not figures:
        return 1
    print(f"platform {args.platform}, guest kernel {prov.kernel_version}, QEMU {prov.qemu_version} "
          f"({accel}), {len(figures['flow'])} run(s); seconds, median (min-max)")
    for step, values in figures.items():
        print(f"  {step:<22} {statistics.median(values):7.2f}  "
              f"({min(values):.2f}-{max(values):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
