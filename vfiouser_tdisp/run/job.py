"""`vfiouser-tdisp run`: provision, serve, boot a guest with the device, check it.

The server runs as its own process (``vfiouser-tdisp serve``), exactly as a
user would run it; QEMU gets the device through ``vfio-user-pci``; the guest's
``/init`` (guest-scripts/) runs the checks and prints ``VTDISP-RESULT`` lines
on the serial console, which this job parses.  Exit status 0 only if every
check passed.  Leaves ``DIR/console.log`` and ``DIR/events.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..device.device import get_profile
from ..device.personality import get_personality
from ..server import function_socket_path
from .initramfs import build_initramfs
from .provision import Provisioned, ProvisionError, ensure_provisioned
from .qemu import QemuConfig, choose_accel, qmp_query, run_with_deadline

RESULT_RE = re.compile(r"VTDISP-RESULT (\S+) (PASS|FAIL) ?(.*)")
DONE_RE = re.compile(r"VTDISP-DONE (\d+) (\d+)")


@dataclass
class GuestRun:
    results: list[tuple[str, bool, str]] = field(default_factory=list)
    done: bool = False
    exit_code: int | None = None
    console: str = ""
    qmp: dict[str, object] | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.done and bool(self.results) and all(ok for _n, ok, _d in self.results)

    def result(self, name: str) -> tuple[bool, str] | None:
        for n, ok, detail in self.results:
            if n == name:
                return ok, detail
        return None


def parse_console(text: str) -> GuestRun:
    run = GuestRun(console=text)
    for line in text.splitlines():
        line = line.strip("\r")
        m = RESULT_RE.search(line)
        if m:
            run.results.append((m.group(1), m.group(2) == "PASS", m.group(3).strip()))
        elif DONE_RE.search(line):
            run.done = True
    return run


class ServerProcess:
    """``vfiouser-tdisp serve`` in a child process, stopped on exit."""

    def __init__(self, socket_path: str, profile: str, events: str,
                 extra: list[str] | None = None) -> None:
        self.socket_path = socket_path
        self.stderr_path = events + ".stderr"
        cmd = [sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", socket_path,
               "--profile", profile, "--events", events, "--quiet"] + (extra or [])
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)

    def wait_ready(self, paths: list[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(p) for p in paths):
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + Path(self.stderr_path).read_text())
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not create {paths} in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def boot_guest(prov: Provisioned, out: Path, profile: str | None, timeout: float,
               accel: str = "auto", checks: list[str] | None = None,
               log: bool = True) -> GuestRun:
    """Boot the guest (with the device of ``profile``, or none) and parse its report."""
    out.mkdir(parents=True, exist_ok=True)
    console = out / "console.log"
    console.write_text("")
    initrd = build_initramfs(prov.busybox, prov.modules, out / "initrd.gz")
    # AF_UNIX paths are short: keep sockets in a short private directory.
    sockdir = Path(tempfile.mkdtemp(prefix="vtdisp-", dir="/tmp"))
    server: ServerProcess | None = None
    sockets: list[list[str]] = []
    # DOE discovery messages are pci_dbg(): enable them for the doe_dmesg check.
    append = 'console=ttyS0 panic=-1 loglevel=7 dyndbg="file drivers/pci/doe.c +p"'
    try:
        if profile is not None:
            prof = get_profile(profile)
            pers = get_personality(prof.personality)
            sock = str(sockdir / "vfio-user.sock")
            fn_socks = [function_socket_path(sock, fn) for fn in range(prof.functions)]
            server = ServerProcess(sock, profile, str(out / "events.jsonl"))
            server.wait_ready(fn_socks)
            sockets = [fn_socks]
            append += f" vtdisp.vendor=0x{pers.VENDOR_ID:04x} vtdisp.device=0x{pers.DEVICE_ID:04x}"
            checks = checks or list(pers.GUEST_CHECKS)
        if checks:
            append += " vtdisp.checks=" + ",".join(checks)
        append += " vtdisp.hold=1"  # time for the QMP snapshot below
        chosen = choose_accel(prov.qemu, prov.kernel, accel, prov.cache)
        cfg = QemuConfig(kernel=prov.kernel, initrd=str(initrd), append=append,
                         sockets=sockets, accel=chosen, console_log=str(console),
                         qmp_socket=str(sockdir / "qmp.sock"))
        cmd = prov.qemu.command(cfg.args())
        (out / "qemu-cmdline.txt").write_text(" ".join(shlex.quote(a) for a in cmd) + "\n")
        if log:
            print(f"run: booting the guest ({chosen}, deadline {timeout:.0f} s)", file=sys.stderr)
        qmp_box: list[dict[str, object] | None] = []

        def snapshot() -> None:
            # Once the guest is up its PCI enumeration is done: ask QEMU then.
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if "VTDISP-INFO" in console.read_text(errors="replace"):
                    qmp_box.append(qmp_query(str(sockdir / "qmp.sock")))
                    return
                time.sleep(0.1)

        qmp_thread = threading.Thread(target=snapshot, daemon=True)
        qmp_thread.start()
        started = time.monotonic()
        rc, err = run_with_deadline(cmd, prov.qemu.environ(), timeout)
        elapsed = time.monotonic() - started
        qmp_thread.join(5)
        run = parse_console(console.read_text(errors="replace"))
        run.exit_code = rc
        run.seconds = elapsed
        run.qmp = qmp_box[0] if qmp_box else None
        if rc is None:
            run.results.append(("qemu", False, f"killed at the {timeout:.0f} s deadline"))
        elif rc != 0:
            run.results.append(("qemu", False, f"exit {rc}: {err.decode(errors='replace')[-500:]}"))
        return run
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def boot_time(with_device: bool, profile: str = "virtio-rng") -> float:
    """Seconds from QEMU start to guest power-off (used by the benchmark)."""
    prov = ensure_provisioned()
    with tempfile.TemporaryDirectory(prefix="vtboot-") as tmp:
        run = boot_guest(prov, Path(tmp), profile if with_device else None, 120,
                         checks=["device"] if with_device else ["none"], log=False)
    return run.seconds


def main_run(args: argparse.Namespace) -> int:
    try:
        prov = ensure_provisioned(args.cache_dir, args.qemu)
    except ProvisionError as exc:
        print(f"vfiouser-tdisp run: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    if (out / "events.jsonl").exists():
        (out / "events.jsonl").unlink()
    try:
        run = boot_guest(prov, out, args.profile, args.timeout, args.accel)
    except RuntimeError as exc:
        print(f"vfiouser-tdisp run: {exc}", file=sys.stderr)
        return 1
    print(f"guest kernel {prov.kernel_version}, QEMU {prov.qemu_version}, "
          f"profile {args.profile}, {run.seconds:.1f} s")
    for name, ok, detail in run.results:
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<14} {detail}")
    if not run.done:
        print("  the guest did not finish its checks (see console.log)")
    print(f"console: {out / 'console.log'}\nevents:  {out / 'events.jsonl'}")
    return 0 if run.ok else 1
