"""Launch QEMU with the device: q35, pcie-root-port, JSON ``-device``, memfd RAM.

Every QEMU started here has a hard deadline (its process group is killed at
the deadline): a broken KVM can hang QEMU forever.  KVM is probed with a
short deadline first; TCG is the fallback.  QMP goes through ``qemu.qmp``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .provision import QemuInstall


def vfio_user_device_json(socket_path: str, bus: str, addr: str | None = None,
                          multifunction: bool = False, dev_id: str | None = None) -> str:
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
    function sockets (function 0 first)."""
    args: list[str] = []
    for i, fns in enumerate(sockets):
        port = f"rp{i}"
        args += ["-device", f"pcie-root-port,id={port},chassis={i + 1},slot={i}"]
        for fn, path in enumerate(fns):
            args += ["-device", vfio_user_device_json(
                path, port, addr=f"0.{fn}" if len(fns) > 1 else None,
                multifunction=len(fns) > 1 and fn == 0, dev_id=f"vtdisp{i}fn{fn}")]
    return args


@dataclass
class QemuConfig:
    kernel: str
    initrd: str
    append: str
    memory_mb: int = 512
    sockets: list[list[str]] = field(default_factory=list)
    accel: str = "tcg"
    console_log: str = "console.log"
    qmp_socket: str | None = None
    extra: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        a = ["-M", "q35,memory-backend=mem",
             "-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
             "-m", f"{self.memory_mb}M", "-smp", "1", "-accel", self.accel,
             "-nographic", "-no-reboot", "-nodefaults",
             "-serial", f"file:{self.console_log}",
             "-kernel", self.kernel, "-initrd", self.initrd, "-append", self.append]
        if self.qmp_socket:
            a += ["-qmp", f"unix:{self.qmp_socket},server=on,wait=off"]
        return a + device_args(self.sockets) + self.extra


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_with_deadline(cmd: list[str], env: dict[str, str], deadline: float,
                      stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.PIPE,
                      until: bytes | None = None) -> tuple[int | None, bytes]:
    """Run ``cmd`` for at most ``deadline`` seconds, then kill its process group.

    Returns (exit code, captured output); the code is None if it was killed at
    the deadline.  With ``until``, stop (code 0) as soon as the captured stdout
    contains that marker.
    """
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr,
                            start_new_session=True)
    if until is None:
        try:
            out, err = proc.communicate(timeout=deadline)
            return proc.returncode, (out or b"") + (err or b"")
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return None, b""
    assert proc.stdout is not None
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
                kill_group(proc)
                return 0, buf
        elif proc.poll() is not None:
            return proc.returncode, buf
        else:
            time.sleep(0.05)
    kill_group(proc)
    return None, buf


def probe_kvm(qemu: QemuInstall, kernel: str, timeout: float = 8.0) -> bool:
    """Does KVM really run guest code?  Boot the guest kernel under KVM with a
    deadline and look for its banner on the serial port.  A KVM without
    VMX/SVM fails with "emulation failure" or hangs: both mean no."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    rc, out = run_with_deadline(
        qemu.command(["-M", "q35", "-accel", "kvm", "-m", "256M", "-nographic", "-nodefaults",
                      "-no-reboot", "-serial", "stdio", "-kernel", kernel,
                      "-append", "console=ttyS0 panic=-1 earlyprintk=serial"]),
        qemu.environ(), timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        until=b"Linux version")
    return rc == 0 and b"Linux version" in out


def choose_accel(qemu: QemuInstall, kernel: str, requested: str = "auto",
                 cache: str | None = None) -> str:
    """``kvm`` or ``tcg``.  The probe result is cached per host boot."""
    if requested in ("kvm", "tcg"):
        return requested
    stamp = Path(cache) / "kvm-probe.json" if cache else None
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    if stamp is not None and stamp.exists():
        try:
            data = json.loads(stamp.read_text())
            if data.get("boot_id") == boot_id and data.get("qemu") == qemu.prefix:
                return str(data["accel"])
        except (ValueError, KeyError):
            pass
    accel = "kvm" if probe_kvm(qemu, kernel) else "tcg"
    if stamp is not None:
        stamp.write_text(json.dumps({"boot_id": boot_id, "qemu": qemu.prefix, "accel": accel}))
    return accel


async def _qmp_query(sock: str, timeout: float) -> dict[str, Any]:
    from qemu.qmp import QMPClient

    client = QMPClient("vfiouser-tdisp")
    await asyncio.wait_for(client.connect(sock), timeout)
    try:
        status = await client.execute("query-status")
        pci = await client.execute("query-pci")
        return {"status": status, "pci": pci}
    finally:
        await client.disconnect()


def qmp_query(sock: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """Status and PCI topology through QMP (None if QEMU did not answer)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    try:
        return asyncio.run(_qmp_query(sock, timeout))
    except Exception:
        return None


def main_qemu_args(args: argparse.Namespace) -> int:
    from ..device.device import get_profile
    from ..server import function_socket_path

    profile = get_profile(args.profile) if getattr(args, "profile", None) else None
    nfn = profile.functions if profile else 1
    sockets = [function_socket_path(args.socket, fn) for fn in range(nfn)]
    dev = []
    for fn, path in enumerate(sockets):
        dev += ["-device", vfio_user_device_json(
            path, args.bus, addr=f"0.{fn}" if nfn > 1 else None,
            multifunction=nfn > 1 and fn == 0)]
    base = ["-M", "q35,memory-backend=mem",
            "-object", "memory-backend-memfd,id=mem,size=1G,share=on", "-m", "1G",
            "-device", f"pcie-root-port,id={args.bus},chassis=1"]
    print("# add to your qemu-system-x86_64 command line (adjust size= to your -m):")
    print(" ".join(shlex.quote(a) for a in base + dev))
    return 0


__all__ = ["QemuConfig", "choose_accel", "device_args", "kill_group", "main_qemu_args",
           "probe_kvm", "qmp_query", "run_with_deadline", "vfio_user_device_json"]
