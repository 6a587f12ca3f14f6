"""``vfiouser-tdisp tsm --platform cca STEP...``: the CCA sequences without a guest.

The RMM emulator, the host driver and the realm driver run in this process; the
device is either reached over the DMTF spdm-emu socket (``--spdm HOST:PORT``: ours
from ``serve --spdm-port``, or DMTF's ``spdm_responder_emu``) or built in process
with its BARs assigned (no ``--spdm``).  One line per step, then exit 0 only if
every step passed.  The RMM lives as long as the process, so one invocation runs a
whole sequence; after a failure the remaining steps are skipped and the device is
released (unbind, disconnect).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

# Only light imports here: `vfiouser-tdisp --help` builds this parser.
from .rhi import DEFAULT_LAYOUT, LAYOUTS

STEPS = ("connect", "bind", "lock", "report", "measurements", "info", "accept", "unlock",
         "unbind", "disconnect")
DEFAULT_STEPS = ("connect", "bind", "lock", "accept", "unlock", "unbind", "disconnect")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("steps", nargs="*", metavar="STEP", default=[],
                   help=f"steps to run in order (default: all = {' '.join(DEFAULT_STEPS)}); "
                        f"one of: {', '.join(STEPS)}")
    p.add_argument("--spdm", metavar="HOST:PORT",
                   help="reach the device over the DMTF spdm-emu socket (PCI DOE transport); "
                        "default: a device in this process, BARs assigned")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default=DEFAULT_LAYOUT,
                   help=f"RHI numbering the realm and host use (default: {DEFAULT_LAYOUT})")
    p.add_argument("--pdev-id", type=lambda s: int(s, 0), default=0, metavar="RID",
                   help="the device's RID (bus << 8 | devfn) for PDEV_CREATE (default: 0)")
    p.add_argument("--tdi", type=lambda s: int(s, 0), default=None, metavar="RID",
                   help="the TDI's RID, the TDISP function id (default: --pdev-id)")
    p.add_argument("--vdev-id", type=lambda s: int(s, 0), default=0x10, metavar="ID",
                   help="the VDEV id the realm uses (default: 0x10)")
    p.add_argument("--hash", choices=("sha256", "sha512"), default="sha256",
                   help="PDEV hash_algo for the digests the RMM attests (default: sha256)")
    p.add_argument("--root", metavar="FILE",
                   help="PEM/DER root certificate the realm requires the device chain to "
                        "start at (e.g. root.pem from `vfiouser-tdisp certs`)")
    p.add_argument("--profile", default="virtio-rng",
                   help="device profile for the in-process device (default: virtio-rng)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="identity cache of the in-process device")
    p.add_argument("--events", metavar="FILE", help="append structured events to FILE")
    p.add_argument("--verbose", action="store_true", help="print RMM events as they happen")


def main_tsm(args: argparse.Namespace) -> int:
    from ..steps import main_steps
    if args.platform != "cca":
        print(f"vfiouser-tdisp tsm: platform {args.platform!r} has no emulator yet",
              file=sys.stderr)
        return 2
    return main_steps(args, STEPS, DEFAULT_STEPS, ("rmm.", "cca_host."),
                      lambda steps, transport, where, root:
                      run_steps(args, steps, transport, where, root))


def run_steps(args: argparse.Namespace, steps: list[str], transport: Any, where: str,
              root: Any) -> int:
    from ..steps import run_steps_noting
    from .abi import RmiDevCommObject, RmiFid, RmiVdevState, RsiVdevState
    from .host import CcaError, CcaHost, CcaRealm, check_evidence
    from .rmm import Rmm
    host = CcaHost(Rmm(rhi_layout=args.layout), transport, layout=args.layout,
                   pdev_id=args.pdev_id, tdi_id=args.tdi,
                   hash_algo=1 if args.hash == "sha512" else 0)
    realm = CcaRealm(host)
    vid = args.vdev_id

    def vdev() -> Any:
        if vid not in host.vdevs:
            raise CcaError("no VDEV: run bind first")
        return host.vdevs[vid]

    def connect() -> str:
        host.connect()
        return f"PDEV READY, IDE stream {host.ide_sid} keyed ({host.objects_sent} objects, " \
            f"{where})"

    def bind() -> str:
        host.bind(vid, lock=False)
        return f"VDEV {vid:#x} UNLOCKED (TDI {host.tdi_id:#06x})"

    def lock() -> str:
        ev = realm.lock(vid)
        check_evidence(ev, lock_nonce=ev.info.lock_nonce, root=root)
        return (f"LOCKED; evidence: certificate {len(ev.certificate)} B, VCA {len(ev.vca)} B, "
                f"report {len(ev.report)} B ({len(ev.ranges)} ranges), measurements "
                f"{len(ev.measurements)} B; digests match"
                + ("; chain anchored" if root is not None else ""))

    def report() -> str:
        host.report(vdev())
        return f"report {len(vdev().cache[RmiDevCommObject.INTERFACE_REPORT])} B"

    def measurements() -> str:
        host.measure(vdev())
        return f"measurements {len(vdev().cache[RmiDevCommObject.MEASUREMENTS])} B"

    def info() -> str:
        i = realm.get_info(vid)
        return (f"state {RsiVdevState(i.state).name} lock_nonce {i.lock_nonce} meas_nonce "
                f"{i.meas_nonce} report_nonce {i.report_nonce} hash_algo {i.hash_algo}")

    def accept() -> str:
        realm.accept(vid)
        return "STARTED, mappings validated, DMA enabled"

    def unlock() -> str:
        realm.unlock(vid)
        return "UNLOCKED"

    def unbind() -> str:
        host.unbind(vid)
        return "VDEV destroyed"

    def disconnect() -> str:
        host.disconnect()
        return "PDEVs stopped and destroyed"

    table: dict[str, Callable[[], str]] = {
        "connect": connect, "bind": bind, "lock": lock, "report": report,
        "measurements": measurements, "info": info, "accept": accept, "unlock": unlock,
        "unbind": unbind, "disconnect": disconnect}
    failed = not run_steps_noting(steps, table, "rmm.comm_failed", "RMM", width=13)
    if failed:   # release what the steps took
        for vdev_id in list(host.vdevs):
            try:
                if host.vdev_state(host.vdevs[vdev_id].addr) is not RmiVdevState.UNLOCKED:
                    host.vdev_op(host.vdevs[vdev_id], RmiFid.RMI_VDEV_UNLOCK,
                                 RmiVdevState.UNLOCKED)
            except CcaError:
                pass
        try:
            host.disconnect()
        except CcaError:
            pass
    return 1 if failed else 0
