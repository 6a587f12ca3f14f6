"""Boot a guest with the device and run device checks in it (tests, benchmarks).

The server runs as its own process (``vfiouser-tdisp serve``), exactly as a
user would run it; QEMU gets the device through ``vfio-user-pci``; the guest's
``/init`` (guest-scripts/) runs the checks named on its kernel command line and
prints ``VTDISP-RESULT`` lines on the serial console, which this module parses.
Leaves ``DIR/console.log`` (the guest's serial console), ``DIR/events.jsonl``
(the server's events), ``DIR/server.log``, ``DIR/qemu.log`` (QEMU's own
output), ``DIR/qemu-cmdline.txt`` and ``DIR/initrd.gz``.  The server and QEMU are always
stopped, also on Ctrl-C or SIGTERM, and die with ``run`` when it is killed outright
(SIGKILL of its process group, as CI timeouts do): see lifetime.py.  The `run`
command itself (the platform flow) is run/platform.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..device.device import get_profile
from ..device.personality import get_personality
from ..server import function_socket_path
from .initramfs import build_initramfs
from .lifetime import die_with_parent
from .provision import Provisioned, ensure_provisioned
from .qemu import ANSI_ESCAPE, QemuCommand, accel_decision, qmp_query, run_with_deadline

RESULT_RE = re.compile(r"VTDISP-RESULT (\S+) (PASS|FAIL) ?(.*)")
DONE_RE = re.compile(r"VTDISP-DONE (\d+) (\d+)")
INFO_RE = re.compile(r"VTDISP-INFO (\S+) ?(.*)")
SOCKET_MAX = 107  # sun_path is 108 bytes with the NUL
SERVER_READY_TIMEOUT = 20.0


@dataclass
class GuestRun:
    results: list[tuple[str, bool, str]] = field(default_factory=list)
    done: bool = False
    exit_code: int | None = None
    console: str = ""
    qmp: dict[str, object] | None = None
    seconds: float = 0.0
    info: dict[str, str] = field(default_factory=dict)
    accel: str = ""

    @property
    def ok(self) -> bool:
        return self.done and bool(self.results) and all(ok for _n, ok, _d in self.results)

    @property
    def powered_off(self) -> bool:
        """The guest shut itself down (rather than panicking or being killed)."""
        return "reboot: Power down" in self.console

    @property
    def panicked(self) -> bool:
        return "Kernel panic" in self.console

    def require(self, checks: list[str]) -> None:
        """A requested check that never reported is a failure (a guest that died
        or skipped it must not pass by saying nothing)."""
        reported = {n for n, _ok, _d in self.results}
        for name in checks:
            if name != "none" and name not in reported:
                self.results.append((name, False, "requested but never reported"))
                reported.add(name)

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
        elif (i := INFO_RE.search(line)) is not None:
            run.info[i.group(1)] = i.group(2).strip()
    return run


class ServerProcess:
    """``vfiouser-tdisp serve`` in a child process (its own process group)."""

    def __init__(self, socket_path: str, profile: str, events: str, log: str,
                 extra: list[str] | None = None) -> None:
        self.socket_path = socket_path
        self.log_path = log
        cmd = [sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", socket_path,
               "--profile", profile, "--events", events, "--quiet"] + (extra or [])
        self._log = open(log, "wb")
        env = dict(os.environ)
        # The child must import this very package, wherever it was started from.
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(
            [pkg_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        # SIGTERM when run dies: serve stops cleanly and removes its sockets.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True,
                                     preexec_fn=die_with_parent(signal.SIGTERM))

    def output(self, limit: int = 3000) -> str:
        self._log.flush()
        try:
            return Path(self.log_path).read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_ready(self, paths: list[str], timeout: float = SERVER_READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(p) for p in paths):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} "
                                   f"before listening:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not create {' '.join(paths)} within "
                                   f"{timeout:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def socket_dir(out: Path, longest_suffix: str = ".fn7") -> Iterator[Path]:
    """Where the sockets go: ``out`` itself when the paths fit in sun_path, else a
    short private directory under /tmp (removed afterwards)."""
    if len(str(out.absolute() / "vfio-user.sock") + longest_suffix) <= SOCKET_MAX:
        yield out.absolute()
        return
    tmp = Path(tempfile.mkdtemp(prefix="vtdisp-", dir="/tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)


def boot_guest(prov: Provisioned, out: Path, profile: str | None, timeout: float,
               accel: str = "auto", checks: list[str] | None = None,
               log: bool = True, append: str = "",
               server_args: list[str] | None = None) -> GuestRun:
    """Boot the guest (with the device of ``profile``, or none) and parse its report.

    ``checks`` names guest-scripts/check_<name>.sh to run (default: the
    personality's list); ``append`` adds kernel command line options;
    ``server_args`` go to ``vfiouser-tdisp serve``.
    """
    out.mkdir(parents=True, exist_ok=True)
    console = out / "console.log"
    console.write_text("")
    initrd = build_initramfs(prov.busybox, prov.modules, out / "initrd.gz")
    server: ServerProcess | None = None
    sockets: list[list[str]] = []
    # DOE discovery messages are pci_dbg(): enable them for the doe_dmesg check.
    cmdline = 'console=ttyS0 panic=-1 loglevel=7 dyndbg="file drivers/pci/doe.c +p"'
    with socket_dir(out) as sockdir:
        qmp_sock = str(sockdir / "qmp.sock")
        fn_socks: list[str] = []
        try:
            if profile is not None:
                prof = get_profile(profile)
                pers = get_personality(prof.personality)
                sock = str(sockdir / "vfio-user.sock")
                fn_socks = [function_socket_path(sock, fn) for fn in range(prof.functions)]
                _remove(fn_socks)
                server = ServerProcess(sock, profile, str(out / "events.jsonl"),
                                       str(out / "server.log"), server_args)
                server.wait_ready(fn_socks)
                sockets = [fn_socks]
                cmdline += (f" vtdisp.vendor=0x{pers.VENDOR_ID:04x}"
                            f" vtdisp.device=0x{pers.DEVICE_ID:04x}"
                            f" vtdisp.functions={prof.functions}")
                checks = checks or list(pers.GUEST_CHECKS)
            if checks:
                cmdline += " vtdisp.checks=" + ",".join(checks)
            cmdline += " vtdisp.hold=1"  # time for the QMP snapshot below
            if append:
                cmdline += " " + append
            chosen, why = accel_decision(prov.qemu, prov.kernel, accel, prov.cache)
            qc = QemuCommand(kernel=prov.kernel, initrd=str(initrd), append=cmdline,
                             sockets=sockets, accel=chosen, console_log=str(console),
                             qmp_socket=qmp_sock)
            (out / "qemu-cmdline.txt").write_text(qc.shell(prov.qemu) + "\n")
            if log:
                print(f"run: booting the guest ({chosen}: {why}; deadline {timeout:.0f} s)",
                      file=sys.stderr, flush=True)
            snap = _QmpSnapshot(console, qmp_sock)
            started = time.monotonic()
            try:
                rc, err = run_with_deadline(qc.command(prov.qemu), prov.qemu.environ(),
                                            timeout, qmp_socket=qmp_sock)
            finally:
                snap.stop()
            (out / "qemu.log").write_bytes(err)
            run = parse_console(console.read_text(errors="replace"))
            run.require(checks or [])
            run.exit_code = rc
            run.seconds = time.monotonic() - started
            run.qmp = snap.result
            run.accel = chosen
            if rc is None:
                said = _first_error(err)
                run.results.append(("qemu", False, f"stopped at the {timeout:.0f} s deadline"
                                    + (f"; it said: {said}" if said else "")))
            elif rc != 0:
                run.results.append(("qemu", False, f"exit {rc}: {_first_error(err)}"))
            if server is not None and server.proc.poll() is not None:
                run.results.append(("server", False, f"exited with status "
                                    f"{server.proc.returncode}: {server.output(800)}"))
            return run
        finally:
            if server is not None:
                server.stop()
            _remove(fn_socks + [qmp_sock])


def _first_error(output: bytes) -> str:
    """The line of QEMU's output that explains a failure (or its last line)."""
    lines = [ln.strip() for ln in ANSI_ESCAPE.sub("", output.decode(errors="replace"))
             .splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failure" in ln.lower()]
    for ln in [e for e in errors if "warning:" not in e] + errors + lines[-1:]:
        return ln[:300]
    return ""


class _QmpSnapshot:
    """Once the guest is up (its first VTDISP-INFO line), PCI enumeration is
    done: ask QEMU over QMP for its status and PCI topology then."""

    def __init__(self, console: Path, qmp_sock: str) -> None:
        self.console = console
        self.qmp_sock = qmp_sock
        self.result: dict[str, object] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if "VTDISP-INFO" in self.console.read_text(errors="replace"):
                self.result = qmp_query(self.qmp_sock)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def boot_time(with_device: bool, profile: str = "virtio-rng") -> float:
    """Seconds from QEMU start to guest power-off (used by the benchmark)."""
    prov = ensure_provisioned()
    with tempfile.TemporaryDirectory(prefix="vtboot-") as tmp:
        run = boot_guest(prov, Path(tmp), profile if with_device else None, 120,
                         checks=["device"] if with_device else ["none"], log=False)
    return run.seconds


__all__ = ["GuestRun", "ServerProcess", "boot_guest", "boot_time", "parse_console"]
