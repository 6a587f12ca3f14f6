"""`run --shell` / `--shell-only` (issue 13 item 4): the guest's console on a real
terminal.  The VM tests drive `vfiouser-tdisp run` through a pseudo-terminal
(os.openpty) as a user at a terminal would: wait for the guest's prompt, run a
helper command, read its answer, leave the shell, and check QEMU is gone."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vfiouser_tdisp.run.shell import console_on_stdio, shell_append, terminal_problem

from .conftest import PROVISIONED_CACHE

PROMPT = b"vtdisp-guest# "


def test_refused_without_a_terminal(tmp_path: Path) -> None:
    # stdin not a TTY: one clear line, exit 2, before anything is provisioned or booted
    for opt in ("--shell", "--shell-only"):
        p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "run", opt,
                            "--out", str(tmp_path / "o")], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2
        assert "stdin is not a terminal" in p.stderr and opt.startswith("--shell")
        assert not (tmp_path / "o").exists()


def test_shell_and_shell_only_exclude_each_other(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "run", "--shell",
                        "--shell-only"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "not allowed with" in p.stderr


def test_terminal_detection() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(os.dup(slave)) as tty:
            assert terminal_problem(tty) is None
        with open(os.devnull) as null:
            assert "not a terminal" in str(terminal_problem(null))
    finally:
        os.close(master)
        os.close(slave)


def test_console_moves_to_stdio_and_is_still_logged() -> None:
    args = ["-nographic", "-serial", "file:/x/console.log", "-kernel", "k"]
    got = console_on_stdio(args, "/x/console.log")
    assert "-serial" in got and got[got.index("-serial") + 1] == "chardev:vtcon"
    chardev = got[got.index("-chardev") + 1]
    # QEMU's stdio chardev: serial and monitor muxed, Ctrl-C to the guest, a log file
    assert chardev.split(",") == ["stdio", "id=vtcon", "mux=on", "signal=off",
                                  "logfile=/x/console.log"]
    assert got[got.index("-mon") + 1] == "chardev=vtcon,mode=readline"
    assert "file:/x/console.log" not in got
    assert shell_append("a vtdisp.checks=platform b", "only") == \
        "a vtdisp.checks=none b vtdisp.shell=1"
    assert shell_append("vtdisp.checks=platform", "after") == \
        "vtdisp.checks=platform vtdisp.shell=1"


class Pty:
    """`vfiouser-tdisp run ARGS` with stdin, stdout and stderr on a pseudo-terminal."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()
        # the provisioned tree (each test's own cache is empty: never provision there)
        self.proc = subprocess.Popen([sys.executable, "-m", "vfiouser_tdisp", "run",
                                      "--cache-dir", str(PROVISIONED_CACHE), *args],
                                     stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.seen = b""

    def expect(self, marker: bytes, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        start = len(self.seen)
        while marker not in self.seen[start:]:
            left = end - time.monotonic()
            if left <= 0:
                said = self.seen[-3000:].decode(errors="replace")
                raise AssertionError(f"no {marker!r} within {timeout} s; terminal said:\n{said}")
            r, _w, _x = select.select([self.master], [], [], min(left, 1.0))
            if r:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the other side closed
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"run exited ({self.proc.returncode}) before "
                                         f"{marker!r}:\n{self.seen[-3000:].decode(errors='replace')}")
                self.seen += chunk
        return self.seen[start:]

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int | None:
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = None
        os.close(self.master)
        return rc


def _qemus_for(out: Path) -> list[int]:
    """Running QEMUs whose command line names this run directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and str(out).encode() in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.mark.vm
def test_shell_only_on_a_pty(tmp_path: Path) -> None:
    out = tmp_path / "run"
    t = Pty(["--shell-only", "--out", str(out)])
    try:
        banner = t.expect(PROMPT, 240)
        assert b"VTDISP-SHELL device 0000:01:00.0" in banner
        assert _qemus_for(out), "QEMU should be running while the shell is up"
        t.send("vt-state\n")
        # the module is loaded, nothing connected yet (the flow did not run)
        said = t.expect(PROMPT, 60)
        assert b"device 0000:01:00.0: connect= bound= tvm/state=unbound driver=virtio-pci" \
            in said, said
        t.send("vt-connect\n")
        said = t.expect(PROMPT, 120)
        assert b"ok: tsm0 > /sys/bus/pci/devices/0000:01:00.0/tsm/connect" in said, said
        assert b"connect=tsm0" in said, said
        t.send("exit\n")
        t.expect(b"reboot: Power down", 60)
        rc = t.close()
    finally:
        if t.proc.poll() is None:
            os.killpg(t.proc.pid, signal.SIGKILL)
    assert rc == 0, t.seen[-2000:]
    assert not _qemus_for(out)
    # the session was logged like any run: console.log and the server's events
    console = (out / "flow" / "console.log").read_text(errors="replace")
    assert "VTDISP-SHELL" in console and "vt-connect" in console
    assert '"spdm.request"' in (out / "flow" / "events.jsonl").read_text()


@pytest.mark.vm
def test_shell_after_the_flow_on_a_pty(tmp_path: Path) -> None:
    out = tmp_path / "run"
    t = Pty(["--shell", "--out", str(out), "--timeout", "300"])
    try:
        before = t.expect(PROMPT, 400)
        # the whole flow ran first, on this terminal
        assert b"VTDISP-RESULT disconnect PASS" in before and b"VTDISP-DONE 16 0" in before
        t.send("vt-lock\n")  # after disconnect: the kernel refuses (not connected/bound)
        said = t.expect(PROMPT, 60)
        assert b"failed: tsm1 > /sys/bus/pci/devices/0000:01:00.0/tvm/lock" in said, said
        t.send("exit\n")
        tail = t.expect(b"report: ", 120)
        rc = t.close()
    finally:
        if t.proc.poll() is None:
            os.killpg(t.proc.pid, signal.SIGKILL)
    # run printed its step lines after the session, and the report
    assert b"PASS  doe_objects" in tail and b"OK: " in tail, tail[-3000:]
    assert rc == 0
    assert not _qemus_for(out)
    assert (out / "report.html").exists() and not (out / "tamper").exists()
