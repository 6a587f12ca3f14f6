"""The QEMU launcher: command line, deadlines (process-group kill, Ctrl-C),
QMP, the KVM probe, and one real guest boot without the device."""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vfiouser_tdisp.run.job import boot_guest, parse_console, socket_dir
from vfiouser_tdisp.run.provision import Provisioned, QemuInstall, read_stamp
from vfiouser_tdisp.run.qemu import (
    QemuCommand,
    main_qemu_args,
    probe_kvm,
    qmp_query,
    qmp_quit,
    run_with_deadline,
    vfio_user_device_json,
)

from .conftest import PROVISIONED_CACHE

SH_ENV = {"PATH": "/usr/bin:/bin"}


def _devices(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "-device"]


def test_command_line_for_two_devices() -> None:
    qc = QemuCommand(kernel="/k/vmlinuz", initrd="/k/initrd.gz", append="console=ttyS0 x=1",
                     memory_mb=768, console_log="/o/console.log", qmp_socket="/o/qmp.sock")
    qc.add_device(["/s/a.sock", "/s/a.sock.fn1"]).add_device(["/s/b.sock"])
    args = qc.args()
    assert args[args.index("-M") + 1] == "q35,memory-backend=mem"
    assert args[args.index("-object") + 1] == "memory-backend-memfd,id=mem,size=768M,share=on"
    assert args[args.index("-m") + 1] == "768M"
    assert {"-nographic", "-no-reboot"} <= set(args)
    assert args[args.index("-serial") + 1] == "file:/o/console.log"
    assert args[args.index("-qmp") + 1] == "unix:/o/qmp.sock,server=on,wait=off"
    assert args[args.index("-append") + 1] == "console=ttyS0 x=1"
    devs = _devices(args)
    assert devs[0] == "pcie-root-port,id=rp0,chassis=1,slot=0"
    assert devs[3] == "pcie-root-port,id=rp1,chassis=2,slot=1"
    fn0, fn1, other = json.loads(devs[1]), json.loads(devs[2]), json.loads(devs[4])
    assert fn0 == {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": "/s/a.sock"},
                   "bus": "rp0", "addr": "0.0", "multifunction": True, "id": "vtdisp0fn0"}
    assert fn1["socket"]["path"] == "/s/a.sock.fn1" and fn1["addr"] == "0.1"
    assert "multifunction" not in fn1
    assert other == {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": "/s/b.sock"},
                     "bus": "rp1", "id": "vtdisp1fn0"}


def test_shell_form_round_trips() -> None:
    q = QemuInstall(["/opt/q/ld.so", "--library-path", "/opt/q/lib", "/opt/q/qemu"],
                    ["-L", "/opt/q/share"], {"QEMU_MODULE_DIR": "/opt/q/mods"})
    qc = QemuCommand(kernel="/k", initrd="/i", append='console=ttyS0 dyndbg="file a.c +p"')
    qc.add_device(["/tmp/dir with space/vfio-user.sock"])
    words = shlex.split(qc.shell(q))
    assert words[0] == "QEMU_MODULE_DIR=/opt/q/mods"
    assert words[1:] == qc.command(q)
    dev = json.loads(_devices(words)[-1])
    assert dev["socket"]["path"] == "/tmp/dir with space/vfio-user.sock"


def test_socket_path_is_json_escaped() -> None:
    odd = '/tmp/a"b\\c.sock'
    assert json.loads(vfio_user_device_json(odd, "rp0"))["socket"]["path"] == odd


@pytest.mark.parametrize("profile,functions", [("virtio-rng", 1), ("virtio-rng-2fn", 2)])
def test_qemu_args_for_users(profile: str, functions: int) -> None:
    out = io.StringIO()
    ns = argparse.Namespace(socket="/run/vt/dev.sock", bus="rpX", profile=profile,
                            device_only=True)
    assert main_qemu_args(ns, out) == 0
    text = out.getvalue()
    assert "share=on" in text and "memfd" in text  # the requirement is explained
    line = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert len(line) == 1
    words = shlex.split(line[0])
    assert "memory-backend-memfd,id=mem,size=1G,share=on" in words
    devs = _devices(words)
    assert devs[0] == "pcie-root-port,id=rpX,chassis=1"
    fns = [json.loads(d) for d in devs[1:]]
    assert len(fns) == functions
    assert [f["socket"]["path"] for f in fns] == (
        ["/run/vt/dev.sock"] if functions == 1 else ["/run/vt/dev.sock", "/run/vt/dev.sock.fn1"])
    assert all(f["bus"] == "rpX" and f["driver"] == "vfio-user-pci" for f in fns)


def _gone(pid: int, within: float = 5.0) -> bool:
    """The process no longer runs (absent, or a zombie awaiting its new parent)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def _pids(f: Path) -> list[int]:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        words = f.read_text().split() if f.exists() else []
        if len(words) >= 2:
            return [int(w) for w in words]
        time.sleep(0.05)
    raise AssertionError(f"no pids in {f}")


def test_deadline_kills_a_hung_sleep() -> None:
    t = time.monotonic()
    rc, _out = run_with_deadline(["sleep", "60"], SH_ENV, 1.0)
    assert rc is None and time.monotonic() - t < 5


def test_deadline_kills_the_whole_process_group(tmp_path: Path) -> None:
    # A "QEMU" that hangs and has a child that hangs too.
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pids}; wait"
    t = time.monotonic()
    rc, _out = run_with_deadline(["sh", "-c", script], SH_ENV, 1.5)
    assert rc is None and time.monotonic() - t < 6
    parent, child = _pids(pids)
    assert _gone(parent) and _gone(child)


def test_ctrl_c_still_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pids}; wait"
    # Ctrl-C as a terminal gives it, even when the suite was started in the background
    # by a non-interactive shell (which hands it SIGINT ignored)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_with_deadline(["sh", "-c", script], SH_ENV, 60)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert time.monotonic() - t < 10
    parent, child = _pids(pids)
    assert _gone(parent) and _gone(child)


def test_until_marker_stops_early() -> None:
    t = time.monotonic()
    rc, out = run_with_deadline(["sh", "-c", "echo booting; echo 'Linux version 9'; sleep 60"],
                                SH_ENV, 30, stdout=subprocess.PIPE, until=b"Linux version")
    assert rc == 0 and b"Linux version 9" in out and time.monotonic() - t < 10


def test_exit_code_and_output_are_returned() -> None:
    rc, out = run_with_deadline(["sh", "-c", "echo oops >&2; exit 3"], SH_ENV, 10)
    assert (rc, out) == (3, b"oops\n")


def test_parse_console_reports_info_results_and_power_off() -> None:
    run = parse_console("[    1.0] Run /init\nVTDISP-INFO kernel 7.3.4+deb13-amd64\r\n"
                        "VTDISP-RESULT a PASS x y\nVTDISP-RESULT b FAIL why\n"
                        "VTDISP-DONE 1 1\n[    2.0] reboot: Power down\n")
    assert run.info == {"kernel": "7.3.4+deb13-amd64"}
    assert run.results == [("a", True, "x y"), ("b", False, "why")]
    assert run.done and run.powered_off and not run.ok and not run.panicked
    assert not parse_console("VTDISP-RESULT a PASS\n").ok  # never finished


def test_requested_check_that_never_reported_fails_the_run() -> None:
    run = parse_console("VTDISP-RESULT a PASS\nVTDISP-DONE 1 0\n")
    assert run.ok  # what the guest said, taken alone
    run.require(["a", "b", "none"])
    assert not run.ok
    assert run.results == [("a", True, ""), ("b", False, "requested but never reported")]


def test_socket_dir_short_and_long(tmp_path: Path) -> None:
    short = Path("/tmp") / f"vt-{os.getpid()}"
    with socket_dir(short) as d:
        assert d == short.absolute()
    deep = tmp_path / ("x" * 120)
    with socket_dir(deep) as d:
        assert d != deep and len(str(d / "vfio-user.sock.fn7")) <= 107
        assert d.is_dir()
    assert not d.exists()


# -- with the provisioned QEMU ---------------------------------------------------------------

def _provisioned() -> Provisioned:
    p = read_stamp(PROVISIONED_CACHE)
    if p is None or p.missing():
        pytest.skip("not provisioned (run `vfiouser-tdisp setup`)")
    return p


def test_qmp_query_and_quit_on_a_real_qemu() -> None:
    p = _provisioned()
    sock = f"/tmp/vt-qmp-{os.getpid()}.sock"
    box: list[tuple[int | None, bytes]] = []
    cmd = p.qemu.command(["-M", "none", "-nodefaults", "-display", "none",
                          "-qmp", f"unix:{sock},server=on,wait=off"])
    th = threading.Thread(target=lambda: box.append(
        run_with_deadline(cmd, p.qemu.environ(), 30, qmp_socket=sock)))
    t = time.monotonic()
    th.start()
    try:
        got = qmp_query(sock, timeout=10)
        assert got is not None
        assert got["status"]["status"] in ("running", "prelaunch")
        assert got["pci"] == []  # -M none has no PCI bus
        assert qmp_quit(sock)
        th.join(10)
        assert box and box[0][0] == 0  # QEMU quit by itself, well before the deadline
        assert time.monotonic() - t < 15
    finally:
        th.join(40)
        if os.path.exists(sock):
            os.unlink(sock)


def test_kvm_probe_has_a_deadline() -> None:
    p = _provisioned()
    t = time.monotonic()
    ok, reason = probe_kvm(p.qemu, p.kernel, deadline=5.0)
    assert time.monotonic() - t < 15
    assert reason
    if not ok:  # e.g. a KVM without VMX/SVM: it failed or hung and was killed
        assert "KVM" in reason or "kvm" in reason or "banner" in reason


@pytest.mark.vm
def test_guest_boots_and_powers_off_without_the_device(tmp_path: Path) -> None:
    p = _provisioned()
    run = boot_guest(p, tmp_path, None, 120, checks=["boot", "device"], log=False)
    console = (tmp_path / "console.log").read_text(errors="replace")
    assert run.console == console
    assert "Run /init as init process" in console
    assert run.info["kernel"] == p.kernel_version
    assert run.done, console[-3000:]
    assert run.powered_off and not run.panicked  # init powered off; no panic on exit
    assert run.exit_code == 0
    boot = run.result("boot")
    assert boot is not None and boot[0], console[-3000:]
    assert f"kernel={p.kernel_version}" in boot[1]
    assert run.result("device") == (False, "no : function in /sys/bus/pci/devices")
    # QMP saw the running guest and its q35 PCI bus.
    assert run.qmp is not None
    assert run.qmp["status"]["status"] == "running"  # type: ignore[index]
    devices = [d for bus in run.qmp["pci"] for d in bus["devices"]]  # type: ignore[index]
    assert any(d["id"]["device"] == 0x29C0 for d in devices)  # the q35 host bridge
    cmdline = (tmp_path / "qemu-cmdline.txt").read_text()
    assert "vfio-user-pci" not in cmdline and "share=on" in cmdline
    assert run.seconds < 60
