"""Provisioning, initramfs, QEMU command line and the deadline, without booting."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

from vfiouser_tdisp.run.initramfs import Entry, cpio_newc, parse_cpio_newc
from vfiouser_tdisp.run.job import parse_console
from vfiouser_tdisp.run.provision import parse_apt_mirrors
from vfiouser_tdisp.run.qemu import QemuConfig, device_args, run_with_deadline


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example.org/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    (d / "other.sources").write_text("Types: deb\nURIs: https://vendor.example.com/apt\n"
                                     "Suites: stable\n")
    assert parse_apt_mirrors(str(tmp_path / "none"), str(d)) == [
        "http://mirror.example.org/debian"]


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    f = tmp_path / "sources.list"
    f.write_text("# comment\ndeb [arch=amd64 signed-by=/x.gpg] http://ftp.example.org/debian/ "
                 "bookworm main\ndeb http://security.example.org/debian-security "
                 "bookworm-security main\n")
    assert parse_apt_mirrors(str(f), str(tmp_path / "nodir")) == ["http://ftp.example.org/debian"]


def test_disabled_stanza_is_ignored(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.sources").write_text("Enabled: no\nTypes: deb\nURIs: http://a.example.org/debian\n"
                                 "Suites: bookworm\n")
    assert parse_apt_mirrors(str(tmp_path / "none"), str(d)) == []


def test_cpio_round_trip() -> None:
    entries = [Entry("bin", stat.S_IFDIR | 0o755),
               Entry("bin/busybox", stat.S_IFREG | 0o755, b"\x7fELF" + bytes(13)),
               Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
               Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n")]
    data = cpio_newc(entries)
    assert data.startswith(b"070701") and len(data) % 4 == 0
    assert parse_cpio_newc(data) == entries
    assert cpio_newc(entries) == data  # deterministic


def test_qemu_command_line_shape() -> None:
    cfg = QemuConfig(kernel="/k", initrd="/i", append="console=ttyS0",
                     sockets=[["/tmp/a.sock", "/tmp/a.sock.fn1"], ["/tmp/b.sock"]])
    args = cfg.args()
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in args
    assert args[args.index("-M") + 1] == "q35,memory-backend=mem"
    devs = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert devs[0].startswith("pcie-root-port,id=rp0")
    fn0, fn1 = json.loads(devs[1]), json.loads(devs[2])
    assert fn0 == {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": "/tmp/a.sock"},
                   "bus": "rp0", "addr": "0.0", "multifunction": True, "id": "vtdisp0fn0"}
    assert fn1["addr"] == "0.1" and "multifunction" not in fn1
    assert json.loads(devs[4])["bus"] == "rp1"
    assert device_args([["/s"]])[-1] == (
        '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/s"},"bus":"rp0",'
        '"id":"vtdisp0fn0"}')


def test_deadline_kills_a_hung_process_group() -> None:
    # A shell that starts a child and hangs, as a wedged QEMU would.
    t = time.monotonic()
    rc, _out = run_with_deadline(["sh", "-c", "sleep 60 & sleep 60"], {"PATH": "/usr/bin:/bin"},
                                 1.0)
    assert rc is None and time.monotonic() - t < 10
    left = subprocess.run(["pgrep", "-f", "sleep 60"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_deadline_until_marker() -> None:
    rc, out = run_with_deadline(["sh", "-c", "echo booting; echo 'Linux version 9'; sleep 60"],
                                {"PATH": "/usr/bin:/bin"}, 10, stdout=subprocess.PIPE,
                                until=b"Linux version")
    assert rc == 0 and b"Linux version 9" in out


def test_parse_console() -> None:
    run = parse_console("noise\nVTDISP-RESULT a PASS x y\r\nVTDISP-RESULT b FAIL why\n"
                        "VTDISP-DONE 1 1\n")
    assert run.results == [("a", True, "x y"), ("b", False, "why")]
    assert run.done and not run.ok
    assert not parse_console("VTDISP-RESULT a PASS\n").ok  # never finished
