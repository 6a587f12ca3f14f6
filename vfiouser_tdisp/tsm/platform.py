"""What every platform-firmware emulator's guest-less driver needs, whatever the platform.

The Arm CCA RMM (``tsm/cca``), the TDX module (``tsm/tdx``) and the SEV-TIO PSP
(``tsm/sev_tio``) are each driven without a guest by a Python host driver that plays
the host kernel: it hands the firmware pages in guest memory, and carries every DOE
object the firmware asks for to the device.  The pieces here are the platform-neutral
part of that: guest memory backed by a bytearray, the DOE transports (the DMTF
spdm-emu socket, or a DOE mailbox in this process with the BARs assigned as firmware
would), and the ``vfiouser-tdisp tsm --platform NAME`` dispatch with its common
arguments and its one-line-per-step runner.  Nothing here knows a platform.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..doe.protocols import PCI_SIG_VENDOR_ID, build_object, parse_object
from ..firmware import GuestMemoryError

PAGE_SIZE = 0x1000

# (DOE object type, payload) -> response payload
DoeTransport = Callable[[int, bytes], bytes]


class TransportError(Exception):
    """The device could not be reached or gave no answer."""


class ByteArrayMemory:
    """Guest memory backed by a bytearray, with a bump allocator for pages.

    Implements :class:`vfiouser_tdisp.firmware.GuestMemory`; an access outside the
    array raises :class:`GuestMemoryError` as a failed DMA would.
    """

    def __init__(self, size: int = 4 << 20, base: int = 0x8000_0000) -> None:
        self.base, self.data = base, bytearray(size)
        self._next = base

    def _span(self, addr: int, size: int) -> int:
        off = addr - self.base
        if off < 0 or size < 0 or off + size > len(self.data):
            raise GuestMemoryError(f"{size} bytes at {addr:#x} outside guest memory")
        return off

    def read(self, addr: int, size: int) -> bytes:
        off = self._span(addr, size)
        return bytes(self.data[off:off + size])

    def write(self, addr: int, data: bytes) -> None:
        off = self._span(addr, len(data))
        self.data[off:off + len(data)] = data

    def alloc(self, size: int = PAGE_SIZE, align: int = PAGE_SIZE) -> int:
        addr = (self._next + align - 1) & ~(align - 1)
        self._span(addr, size)
        self._next = addr + size
        return addr


def socket_transport(client: Any) -> DoeTransport:
    """Over DMTF's spdm-emu socket (:class:`~..doe.emu_socket.SpdmEmuClient`)."""
    def exchange(object_type: int, payload: bytes) -> bytes:
        rsp = client.doe(build_object(PCI_SIG_VENDOR_ID, object_type, payload))
        if not rsp:
            raise TransportError("the responder answered with an empty frame")
        return parse_object(rsp)[1]
    return exchange


def object_transport(exchange_object: Callable[[bytes], bytes]) -> DoeTransport:
    """Over anything that exchanges whole DOE objects (a DoeDriver on config space)."""
    def exchange(object_type: int, payload: bytes) -> bytes:
        return parse_object(exchange_object(build_object(PCI_SIG_VENDOR_ID, object_type,
                                                         payload)))[1]
    return exchange


BAR_BASE = 0xE000_0000
DOE_CAP_OFFSET = 0x100     # the DSM's DOE capability (device/device.py)


def assign_bars(read32: Callable[[int], int], write32: Callable[[int, int], None],
                base: int = BAR_BASE) -> dict[int, tuple[int, int]]:
    """Size and place every BAR as firmware would, then set Memory Space and Bus
    Master Enable (a TDI can be locked only while it decodes).  Returns
    {BAR index: (base, size)}."""
    bars: dict[int, tuple[int, int]] = {}
    index = 0
    while index < 6:
        reg = 0x10 + 4 * index
        write32(reg, 0xFFFF_FFFF)
        low = read32(reg)
        if low == 0:
            index += 1
            continue
        is64 = (low >> 1) & 3 == 2
        mask = low & ~0xF
        if is64:
            write32(reg + 4, 0xFFFF_FFFF)
            mask |= read32(reg + 4) << 32
        size = (~mask + 1) & ((1 << 64) - 1 if is64 else 0xFFFF_FFFF)
        base = (base + size - 1) & ~(size - 1)
        write32(reg, base & 0xFFFF_FFFF)
        if is64:
            write32(reg + 4, base >> 32)
        bars[index] = (base, size)
        base += size
        index += 2 if is64 else 1
    write32(0x04, read32(0x04) | 0x6)
    return bars


def in_process_transport(profile: str, cache_dir: str | None = None
                         ) -> tuple[DoeTransport, Any]:
    """A device of ``profile`` in this process, BARs assigned, reached through its DOE
    mailbox registers; returns (transport, device)."""
    from ..device.device import Device, get_profile
    from ..doe.driver import DoeDriver
    from ..paths import identity_dir

    dev = Device(get_profile(profile),
                 identity_options={"identity_dir": identity_dir(cache_dir)})
    fn = dev.dsm

    def read32(off: int) -> int:
        return int.from_bytes(fn.config.read(off, 4), "little")

    def write32(off: int, value: int) -> None:
        fn.config.write(off, value.to_bytes(4, "little"))
    assign_bars(read32, write32)
    _ = dev.identity  # generated before the first exchange, not inside a step's timing
    return object_transport(DoeDriver(read32, write32, DOE_CAP_OFFSET).exchange), dev


# -- `vfiouser-tdisp tsm --platform NAME` -------------------------------------------------------
# Platform name -> module with add_platform_arguments(group) and main_tsm(args) -> int.
PLATFORMS = {
    "cca": "vfiouser_tdisp.tsm.cca.cli",
    "tdx": "vfiouser_tdisp.tsm.tdx.cli",
}
PLATFORM_HELP = {"cca": "Arm CCA RMM", "tdx": "Intel TDX module (TDX Connect) + P-SEAMLDR"}


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every platform's guest-less sequence takes."""
    p.add_argument("steps", nargs="*", metavar="STEP", default=[],
                   help="steps to run in order (default: the platform's whole sequence); "
                        "--platform NAME --list-steps names them")
    p.add_argument("--list-steps", action="store_true",
                   help="print the platform's steps and exit")
    p.add_argument("--spdm", metavar="HOST:PORT",
                   help="reach the device over the DMTF spdm-emu socket (PCI DOE transport); "
                        "default: a device in this process, BARs assigned")
    p.add_argument("--pdev-id", type=lambda s: int(s, 0), default=0, metavar="RID",
                   help="the device's RID (bus << 8 | devfn) (default: 0)")
    p.add_argument("--tdi", type=lambda s: int(s, 0), default=None, metavar="RID",
                   help="the TDI's RID, the TDISP function id (default: --pdev-id)")
    p.add_argument("--root", metavar="FILE",
                   help="PEM/DER root certificate the device chain must start at "
                        "(e.g. root.pem from `vfiouser-tdisp certs`)")
    p.add_argument("--profile", default="virtio-rng",
                   help="device profile for the in-process device (default: virtio-rng)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache holding the in-process device's identity")
    p.add_argument("--events", metavar="FILE", help="append structured events to FILE")
    p.add_argument("--verbose", action="store_true",
                   help="print the firmware's events as they happen")


def add_tsm_parser(sub: Any) -> None:
    """``tsm``: a platform's firmware emulator driven by its guest-less host driver."""
    p = sub.add_parser("tsm", help="run a platform's connect / bind / lock / accept sequence "
                                   "against a device without a guest (firmware emulator + "
                                   "host driver in this process)")
    p.add_argument("--platform", required=True, choices=sorted(PLATFORMS),
                   help="platform firmware to emulate: " + ", ".join(
                       f"{k} ({v})" for k, v in sorted(PLATFORM_HELP.items())))
    add_common_arguments(p)
    for name in sorted(PLATFORMS):
        group = p.add_argument_group(f"--platform {name}")
        importlib.import_module(PLATFORMS[name]).add_platform_arguments(group)
    p.set_defaults(handler="vfiouser_tdisp.tsm.platform:main_tsm")


def main_tsm(args: argparse.Namespace) -> int:
    module = importlib.import_module(PLATFORMS[args.platform])
    if args.list_steps:
        print(" ".join(module.STEPS))
        return 0
    return int(module.main_tsm(args))


def load_root(path: str | None) -> Any:
    """The relying party's root certificate (PEM or DER), or None."""
    if not path:
        return None
    from pathlib import Path

    from cryptography import x509
    data = Path(path).read_bytes()
    return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data \
        else x509.load_der_x509_certificate(data)


def chosen_steps(requested: Sequence[str], known: Sequence[str],
                 default: Sequence[str]) -> list[str]:
    """The steps to run (``all`` or none: ``default``); ValueError names an unknown one."""
    unknown = [s for s in requested if s not in tuple(known) + ("all",)]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}; steps: {', '.join(known)}")
    if list(requested) in (["all"], []):
        return list(default)
    return [s for s in requested if s != "all"]


def run_steps(steps: Iterable[str], table: dict[str, Callable[[], str]],
              why: Callable[[], str | None] = lambda: None,
              out: Any = None) -> bool:
    """Run each step; one line each (name, PASS/FAIL, seconds, detail).  Stops at the
    first failure; ``why`` may add the firmware's own reason.  True if all passed."""
    out = out or sys.stdout
    for step in steps:
        start = time.monotonic()
        try:
            detail = table[step]()
        except Exception as exc:  # one line per step, whatever went wrong
            reason = why()
            print(f"{step:<16} FAIL {time.monotonic() - start:6.3f}s {exc}"
                  + (f" ({reason})" if reason else ""), file=out)
            return False
        print(f"{step:<16} PASS {time.monotonic() - start:6.3f}s {detail}", file=out)
    return True


__all__ = ["PAGE_SIZE", "PLATFORMS", "ByteArrayMemory", "DoeTransport", "TransportError",
           "add_common_arguments", "add_tsm_parser", "assign_bars", "chosen_steps",
           "in_process_transport", "load_root", "main_tsm", "object_transport", "run_steps",
           "socket_transport"]
