"""Boot a guest with the device, the firmware port and the guest module.

The devices and the firmware behind the port run in this process (so a caller
can hand in any :class:`~vfiouser_tdisp.firmware.Firmware` and inspect it
afterwards); QEMU gets the device behind ``rp0`` and the port behind its own
root port; the initramfs carries the guest module built for the kernel
(run/module_build.py).  Used by the guest-module tests and
benchmarks/guest_module.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..firmware import Firmware
from ..server import firmware_port_path, function_socket_path, start_devices
from .initramfs import build_initramfs
from .job import GuestRun, parse_console
from .module_build import ensure_module
from .provision import Provisioned
from .qemu import QemuCommand, accel_decision, firmware_port_args, run_with_deadline

# The guest enumerates the device behind its own root port on bus 1.
GUEST_BUS = 1


class GuestBootError(RuntimeError):
    pass


def boot_with_port(prov: Provisioned, out: Path, firmware: Firmware, checks: str,
                   timeout: float = 150, append: str = "",
                   profile: str = "virtio-rng") -> tuple[GuestRun, str]:
    """Serve ``profile`` + the firmware port in this process, boot the guest with the
    guest module in its initramfs, run ``checks``; returns the parsed run and the console."""
    out.mkdir(parents=True, exist_ok=True)
    ko = ensure_module(prov)
    initrd = build_initramfs(prov.busybox, prov.modules, out / "initrd.gz", extra_modules=[ko])
    sock = f"/tmp/vtfw-{os.getpid()}-{id(out) % 10**6}.sock"
    running = start_devices([sock], profile, firmware=firmware)
    # A function captures its bus number from Type 0 configuration writes (PCIe
    # r6.x 2.2.6.2); vfio-user does not carry it, and the device's TDISP
    # responder answers INTERFACE_IDs on bus 0 unless told.  The RMM puts the
    # TDI's host RID, as the guest enumerated it, in INTERFACE_ID.
    running.devices[0].tdisp.bus = GUEST_BUS
    try:
        chosen, _why = accel_decision(prov.qemu, prov.kernel, "auto", prov.cache)
        console = out / "console.log"
        vendor, device = running.devices[0].dsm.vendor_id, running.devices[0].dsm.device_id
        fns = [function_socket_path(sock, i) for i in range(len(running.devices[0].functions))]
        qc = QemuCommand(kernel=prov.kernel, initrd=str(initrd), sockets=[fns],
                         append=f"console=ttyS0 panic=-1 loglevel=7 vtdisp.vendor={vendor:#06x} "
                                f"vtdisp.device={device:#06x} vtdisp.functions={len(fns)} "
                                f"vtdisp.checks={checks} {append}",
                         accel=chosen, console_log=str(console),
                         extra=firmware_port_args(firmware_port_path(sock)))
        (out / "qemu-cmdline.txt").write_text(qc.shell(prov.qemu) + "\n")
        rc, err = run_with_deadline(qc.command(prov.qemu), prov.qemu.environ(), timeout)
        text = console.read_text(errors="replace")
        if rc != 0:
            raise GuestBootError(f"qemu rc={rc}: {err[-2000:]!r}\n{text[-3000:]}")
        run = parse_console(text)
        run.exit_code, run.accel = rc, chosen
        return run, text
    finally:
        running.close()


__all__ = ["GUEST_BUS", "GuestBootError", "boot_with_port"]
