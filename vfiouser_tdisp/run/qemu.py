"""Launch QEMU with the device: q35, pcie-root-port, JSON ``-device``, memfd RAM.

Every QEMU started here dies with the process that started it (PR_SET_PDEATHSIG,
see lifetime.py) and has a hard deadline: at the deadline it is asked to
quit over QMP (when it has a QMP socket) and its process group is killed
whatever happens, also when the caller is interrupted (Ctrl-C).  A broken KVM
can hang QEMU forever, so KVM is probed once with a short deadline and TCG is
the fallback.  QMP goes through the ``qemu.qmp`` library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .lifetime import die_with_parent
from .provision import QemuInstall

KVM_PROBE_DEADLINE = 8.0
ANSI_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[^\[])")
QMP_QUIT_GRACE = 3.0


# -- the command line -------------------------------------------------------------------------

def vfio_user_device_json(socket_path: str, bus: str, addr: str | None = None,
                          multifunction: bool = False, dev_id: str | None = None) -> str:
    """The ``-device`` argument for one vfio-user function (only the JSON form
    of ``-device`` accepts a ``socket`` SocketAddress)."""
    dev: dict[str, Any] = {"driver": "vfio-user-pci",
                           "socket": {"type": "unix", "path": socket_path}, "bus": bus}
    if addr is not None:
        dev["addr"] = addr
    if multifunction:
        dev["multifunction"] = True
    if dev_id is not None:
        dev["id"] = dev_id
    return json.dumps(dev, separators=(",", ":"))


def device_args(sockets: list[list[str]]) -> list[str]:
    """Root port + vfio-user-pci arguments; ``sockets[i]`` lists device i's
    function sockets (function 0 first).  Device i sits alone behind root port
    ``rp<i>`` (so the guest sees a PCIe Endpoint, not an RCiEP)."""
    args: list[str] = []
    for i, fns in enumerate(sockets):
        port = f"rp{i}"
        args += ["-device", f"pcie-root-port,id={port},chassis={i + 1},slot={i}"]
        for fn, path in enumerate(fns):
            args += ["-device", vfio_user_device_json(
                path, port, addr=f"0.{fn}" if len(fns) > 1 else None,
                multifunction=len(fns) > 1 and fn == 0, dev_id=f"vtdisp{i}fn{fn}")]
    return args


# QEMU aborts when a vfio-user reply takes longer than x-msg-timeout (5 s by
# default); a firmware call (an SPDM key exchange under TCG) may take longer.
FIRMWARE_PORT_MSG_TIMEOUT_MS = 60000


def firmware_port_args(socket_path: str, port_index: int = 9) -> list[str]:
    """The firmware port (docs/firmware-port.md) behind its own root port."""
    bus = f"rp{port_index}"
    dev = {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": socket_path},
           "bus": bus, "id": "vtfwport", "x-msg-timeout": FIRMWARE_PORT_MSG_TIMEOUT_MS}
    return ["-device", f"pcie-root-port,id={bus},chassis={port_index + 1},slot={port_index}",
            "-device", json.dumps(dev, separators=(",", ":"))]


@dataclass
class QemuCommand:
    """A q35 guest booted from ``-kernel``/``-initrd``, serial console to a file,
    guest RAM in a shared memfd (so vfio-user DMA_MAP carries fds), optional QMP
    socket, and one root port + vfio-user-pci device per entry of ``sockets``."""

    kernel: str
    initrd: str
    append: str
    memory_mb: int = 512
    sockets: list[list[str]] = field(default_factory=list)
    accel: str = "tcg"
    console_log: str = "console.log"
    qmp_socket: str | None = None
    smp: int = 1
    extra: list[str] = field(default_factory=list)

    def add_device(self, function_sockets: list[str]) -> QemuCommand:
        """Attach one more device (its functions' sockets) behind a new root port."""
        self.sockets.append(list(function_sockets))
        return self

    def args(self) -> list[str]:
        a = ["-M", "q35,memory-backend=mem",
             "-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
             "-m", f"{self.memory_mb}M", "-smp", str(self.smp), "-accel", self.accel,
             "-nographic", "-no-reboot", "-nodefaults",
             "-serial", f"file:{self.console_log}",
             "-kernel", self.kernel, "-initrd", self.initrd, "-append", self.append]
        if self.qmp_socket:
            a += ["-qmp", f"unix:{self.qmp_socket},server=on,wait=off"]
        return a + device_args(self.sockets) + self.extra

    def command(self, qemu: QemuInstall) -> list[str]:
        return qemu.command(self.args())

    def shell(self, qemu: QemuInstall) -> str:
        """The command line, shell-quoted (for qemu-cmdline.txt and bug reports)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(qemu.env.items()))
        line = " ".join(shlex.quote(a) for a in self.command(qemu))
        return f"{env} {line}" if env else line


QemuConfig = QemuCommand  # the earlier name


# -- running with a deadline -----------------------------------------------------------------

def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group ``proc`` leads, then reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_with_deadline(cmd: list[str], env: Mapping[str, str] | None, deadline: float,
                      stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.PIPE,
                      until: bytes | None = None,
                      qmp_socket: str | None = None) -> tuple[int | None, bytes]:
    """Run ``cmd`` in its own process group for at most ``deadline`` seconds.

    Returns (exit code, captured output); the code is None if it was stopped at
    the deadline.  With ``until`` (and ``stdout=PIPE``), stop it (code 0) as
    soon as stdout contains that marker.  With ``qmp_socket``, QEMU is first
    asked to ``quit`` over QMP at the deadline; its group is killed in any case
    (also when this call is interrupted).
    """
    proc = subprocess.Popen(cmd, env=dict(env) if env is not None else None,
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            start_new_session=True, preexec_fn=die_with_parent())
    try:
        if until is None:
            try:
                out, err = proc.communicate(timeout=deadline)
                return proc.returncode, (out or b"") + (err or b"")
            except subprocess.TimeoutExpired:
                if qmp_socket and qmp_quit(qmp_socket, QMP_QUIT_GRACE):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(QMP_QUIT_GRACE)
                if proc.poll() is None:
                    kill_group(proc)
                try:  # what it said before it hung (e.g. "KVM internal error")
                    out, err = proc.communicate(timeout=5)
                except (subprocess.TimeoutExpired, ValueError):
                    out, err = b"", b""
                return None, (out or b"") + (err or b"")
        return _read_until(proc, deadline, until)
    finally:
        if proc.poll() is None:
            kill_group(proc)


def _read_until(proc: subprocess.Popen[bytes], deadline: float,
                until: bytes) -> tuple[int | None, bytes]:
    assert proc.stdout is not None, "until= needs stdout=PIPE"
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            chunk = proc.stdout.read(65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            if until in buf:
                return 0, buf
        elif proc.poll() is not None:
            return proc.returncode, buf
        else:
            time.sleep(0.05)
    return None, buf


# -- KVM or TCG ---------------------------------------------------------------------------------

def probe_kvm(qemu: QemuInstall, kernel: str,
              deadline: float = KVM_PROBE_DEADLINE) -> tuple[bool, str]:
    """Does KVM really run guest code?  Boot the guest kernel under KVM with a
    deadline and wait for its banner on the serial port.  A KVM without VMX/SVM
    fails ("emulation failure") and then hangs: both mean no."""
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible"
    started = time.monotonic()
    rc, out = run_with_deadline(
        qemu.command(["-M", "q35", "-accel", "kvm", "-m", "256M", "-nographic", "-nodefaults",
                      "-no-reboot", "-serial", "stdio", "-kernel", kernel,
                      "-append", "console=ttyS0 panic=-1 earlyprintk=serial"]),
        qemu.environ(), deadline, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        until=b"Linux version")
    if rc == 0 and b"Linux version" in out:
        return True, f"the KVM probe booted a kernel in {time.monotonic() - started:.1f} s"
    text = ANSI_ESCAPE.sub("", out.decode(errors="replace"))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for key in ("emulation failure", "KVM", "kvm"):
        for line in lines:
            if key in line:
                return False, f"KVM probe: {line[:160]}"
    if rc is None:
        return False, f"the KVM probe showed no kernel banner within {deadline:.0f} s"
    return False, f"the KVM probe exited {rc}: {text.strip()[-160:]}"


def accel_decision(qemu: QemuInstall, kernel: str, requested: str = "auto",
                   cache: str | None = None) -> tuple[str, str]:
    """(``kvm`` or ``tcg``, why).  The probe result is cached per host boot and QEMU."""
    if requested in ("kvm", "tcg"):
        return requested, "requested"
    stamp = Path(cache) / "kvm-probe.json" if cache else None
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    if stamp is not None and stamp.exists():
        try:
            data = json.loads(stamp.read_text())
            if data.get("boot_id") == boot_id and data.get("qemu") == qemu.prefix \
                    and data.get("accel") in ("kvm", "tcg"):
                return str(data["accel"]), str(data.get("reason", "probed earlier")) \
                    + "; cached for this host boot"
        except (OSError, ValueError):
            pass
    ok, reason = probe_kvm(qemu, kernel)
    accel = "kvm" if ok else "tcg"
    if stamp is not None:
        with contextlib.suppress(OSError):
            stamp.write_text(json.dumps({"boot_id": boot_id, "qemu": qemu.prefix,
                                         "accel": accel, "reason": reason}))
    return accel, reason


def choose_accel(qemu: QemuInstall, kernel: str, requested: str = "auto",
                 cache: str | None = None) -> str:
    """``kvm`` or ``tcg`` (see :func:`accel_decision`)."""
    return accel_decision(qemu, kernel, requested, cache)[0]


# -- QMP ------------------------------------------------------------------------------------------

async def _qmp(sock: str, commands: list[str], timeout: float) -> dict[str, Any]:
    from qemu.qmp import QMPClient

    client = QMPClient("vfiouser-tdisp")
    await asyncio.wait_for(client.connect(sock), timeout)
    out: dict[str, Any] = {}
    try:
        for cmd in commands:
            out[cmd] = await asyncio.wait_for(client.execute(cmd), timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), timeout)
    return out


def qmp_execute(sock: str, commands: list[str], timeout: float = 5.0) -> dict[str, Any]:
    """Run argument-less QMP commands in order; returns their results by name.
    Raises on any failure (connect, command error, timeout)."""
    return asyncio.run(_qmp(sock, commands, timeout))


def _wait_for_socket(sock: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not os.path.exists(sock):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def qmp_query(sock: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """``{"status": query-status, "pci": query-pci}``, or None if QEMU did not answer."""
    if not _wait_for_socket(sock, timeout):
        return None
    try:
        got = qmp_execute(sock, ["query-status", "query-pci"], timeout)
    except Exception:
        return None
    return {"status": got["query-status"], "pci": got["query-pci"]}


def qmp_quit(sock: str, timeout: float = QMP_QUIT_GRACE) -> bool:
    """Ask QEMU to quit; True if it accepted."""
    if not os.path.exists(sock):
        return False
    try:
        qmp_execute(sock, ["quit"], timeout)
        return True
    except Exception:
        return False


# -- `vfiouser-tdisp qemu-args` -------------------------------------------------------------------

def user_qemu_args(socket: str, bus: str = "rp0", functions: int = 1,
                   memory: str = "1G") -> list[str]:
    """What a user adds to their own qemu-system-x86_64 to attach the device."""
    from ..server import function_socket_path

    args = ["-M", "q35,memory-backend=mem",
            "-object", f"memory-backend-memfd,id=mem,size={memory},share=on", "-m", memory,
            "-device", f"pcie-root-port,id={bus},chassis=1"]
    for fn in range(functions):
        args += ["-device", vfio_user_device_json(
            function_socket_path(socket, fn), bus, addr=f"0.{fn}" if functions > 1 else None,
            multifunction=functions > 1 and fn == 0)]
    return args


GUEST_CMDLINE = 'console=ttyS0 panic=-1 loglevel=7 dyndbg="file drivers/pci/doe.c +p"'


def guest_append(profile_name: str, checks: list[str] | None = None, extra: str = "") -> str:
    """The kernel command line the guest's /init reads (guest-scripts/init):
    the device's IDs and function count, and the checks to run (default: the
    personality's).  DOE discovery messages are pci_dbg(): dyndbg enables them
    for the doe_dmesg check."""
    from ..device.device import get_profile
    from ..device.personality import get_personality

    prof = get_profile(profile_name)
    pers = get_personality(prof.personality)
    line = (f"{GUEST_CMDLINE} vtdisp.vendor=0x{pers.VENDOR_ID:04x}"
            f" vtdisp.device=0x{pers.DEVICE_ID:04x} vtdisp.functions={prof.functions}"
            f" vtdisp.checks={','.join(checks or pers.GUEST_CHECKS)}")
    return f"{line} {extra}" if extra else line


def guest_qemu_args(socket: str, kernel: str, initrd: str, append: str, accel: str,
                    functions: int = 1, memory: str = "1G") -> list[str]:
    """A whole guest: the device's arguments plus kernel, initrd, serial on stdio."""
    return (user_qemu_args(socket, "rp0", functions, memory)
            + ["-accel", accel, "-smp", "1", "-display", "none", "-nodefaults", "-no-reboot",
               "-serial", "stdio", "-kernel", kernel, "-initrd", initrd, "-append", append])


def shell_command(qemu: QemuInstall, args: list[str]) -> str:
    """``qemu`` run with ``args`` as one shell line (environment included)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(qemu.env.items()))
    line = " ".join(shlex.quote(a) for a in qemu.command(args))
    return f"{env} {line}" if env else line


def main_qemu_args(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    from ..device.device import get_profile

    profile = get_profile(args.profile) if getattr(args, "profile", None) else None
    nfn = profile.functions if profile else 1
    if not getattr(args, "device_only", True):
        return _print_guest_command(args, nfn, out)
    lines = [
        "# Add to your qemu-system-x86_64 (QEMU >= 10.1 with vfio-user-pci) command line.",
        "# Guest RAM must be a shared memfd (memory-backend-memfd ... share=on, the machine's",
        "# memory-backend): the server then maps it and does DMA directly. Keep size= equal",
        "# to your -m. The device sits behind its own PCIe root port on q35.",
        " ".join(shlex.quote(a) for a in user_qemu_args(args.socket, args.bus, nfn)),
    ]
    if getattr(args, "platform", None):
        from ..server import firmware_port_path

        lines += ["# The firmware port (serve --platform): the guest module's path to the "
                  "platform firmware.",
                  " ".join(shlex.quote(a) for a in firmware_port_args(
                      firmware_port_path(args.socket)))]
    print("\n".join(lines), file=out)
    return 0


def _print_guest_command(args: argparse.Namespace, functions: int,
                         out: IO[str] | None) -> int:
    """`qemu-args` without --device-only: the provisioned QEMU booting the
    provisioned guest kernel with ``args.initrd`` and the device, as one
    runnable shell command."""
    from .provision import cache_dir, read_stamp

    prov = read_stamp(cache_dir(args.cache_dir))
    if prov is None or prov.missing():
        print("vfiouser-tdisp qemu-args: nothing provisioned in "
              f"{cache_dir(args.cache_dir)}: run `vfiouser-tdisp setup` first (or use "
              "--device-only with your own QEMU)", file=sys.stderr)
        return 1
    if not args.initrd:
        print("vfiouser-tdisp qemu-args: --initrd FILE is needed for a whole command "
              "(build one with `vfiouser-tdisp initramfs --out FILE`)", file=sys.stderr)
        return 2
    accel, why = accel_decision(prov.qemu, prov.kernel, args.accel, prov.cache)
    checks = args.checks.split(",") if args.checks else None
    qargs = guest_qemu_args(args.socket, prov.kernel, os.path.abspath(args.initrd),
                            guest_append(args.profile, checks, args.append or ""), accel,
                            functions, args.memory)
    lines = [
        f"# QEMU {prov.qemu_version} ({prov.qemu.source}), guest kernel {prov.kernel_version}",
        f"# accel {accel}: {why}",
        "# The guest runs its checks, prints VTDISP-RESULT lines on the serial console",
        "# (stdio here) and powers off; QEMU then exits.",
        shell_command(prov.qemu, qargs),
    ]
    print("\n".join(lines), file=out)
    return 0


def main_qemu(args: argparse.Namespace) -> int:
    """Run the provisioned QEMU with the user's arguments (loader, library path,
    firmware paths and module directory added)."""
    from .provision import cache_dir, read_stamp

    prov = read_stamp(cache_dir(args.cache_dir))
    if prov is None or prov.missing():
        print(f"vfiouser-tdisp qemu: nothing provisioned in {cache_dir(args.cache_dir)}: "
              "run `vfiouser-tdisp setup` first", file=sys.stderr)
        return 1
    qargs = list(args.qemu_args)
    if qargs and qargs[0] == "--":
        qargs = qargs[1:]
    cmd = prov.qemu.command(qargs)
    os.execve(cmd[0], cmd, prov.qemu.environ())
    return 127  # not reached


__all__ = ["QemuCommand", "QemuConfig", "accel_decision", "choose_accel", "device_args",
           "firmware_port_args", "guest_append", "guest_qemu_args", "kill_group", "main_qemu",
           "main_qemu_args", "probe_kvm", "qmp_execute", "qmp_query", "qmp_quit",
           "run_with_deadline", "shell_command", "user_qemu_args", "vfio_user_device_json"]
