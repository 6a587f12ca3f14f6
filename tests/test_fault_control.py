"""The control socket with a real `serve` process: `vfiouser-tdisp fault --control SOCK`
arms, lists and clears faults at run time; an armed fault acts on the device served
over vfio-user (its DOE registers read over the socket), and `serve --fault` arms one
from the command line.  The events file records fault.armed / fired / cleared."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_serve_process import env, start
from vfiouser_tdisp.vfio_user.client import VfioUserClient

DOE = 0x100  # the DSM's DOE capability (device/device.py)
STATUS, CTRL, WRITE = DOE + 0x0C, DOE + 0x08, DOE + 0x10


def fault(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "fault", *args],
                          env=env(), capture_output=True, text=True, timeout=30)


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def doe_go(client: VfioUserClient) -> int:
    """A DOE discovery request (PCIe §6.30.1.1: VID 0001h type 0, index 0); the status
    right after GO."""
    for dw in (0x0001, 3, 0):
        client.config_write32(WRITE, dw)
    client.config_write32(CTRL, 0x80000000)
    return client.config_read32(STATUS)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def test_arm_list_clear_at_run_time(sock_dir: Path) -> None:
    sock, control, events = sock_dir / "d.sock", sock_dir / "ctl", sock_dir / "ev.jsonl"
    proc = start(sock, "--control", str(control), "--events", str(events))
    try:
        wait_for(control)
        assert control.stat().st_mode & 0o777 == 0o600  # only the owner arms faults
        with VfioUserClient(str(sock)) as client:
            client.version()
            client.config_write32(CTRL, 1)  # ABORT: a clean mailbox
            assert doe_go(client) == 0x80000000  # Data Object Ready: no fault yet
            client.config_write32(CTRL, 1)

            out = fault("--control", str(control), "doe-error:2")
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "doe-error:count=2,type=-1  fired 0"
            assert doe_go(client) == 0x00000004  # DOE Status ERROR
            client.config_write32(CTRL, 1)
            listed = fault("--control", str(control), "--list")
            assert listed.stdout.strip() == "doe-error:count=2,type=-1  fired 1"

            bad = fault("--control", str(control), "doe-error:lots")
            assert bad.returncode == 2 and "not int" in bad.stderr
            cleared = fault("--control", str(control), "--clear")
            assert cleared.returncode == 0 and cleared.stdout.strip() == "cleared 1"
            assert doe_go(client) == 0x80000000  # the mailbox works again
            client.config_write32(CTRL, 1)
        assert fault("--control", str(control), "--list").stdout.strip() == ""
    finally:
        stop(proc)
    assert not control.exists()  # removed on stop
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [(e["event"], e.get("name")) for e in seen if e["event"].startswith("fault.")]
    assert kinds == [("fault.armed", "doe-error"), ("fault.fired", "doe-error"),
                     ("fault.cleared", "doe-error")]
    fired = next(e for e in seen if e["event"] == "fault.fired")
    assert fired["target"].endswith("doe") and fired["args"] == {"count": 2, "type": -1}


def test_serve_fault_arms_from_the_command_line(sock_dir: Path) -> None:
    sock = sock_dir / "d.sock"
    proc = start(sock, "--fault", "doe-busy:1")
    try:
        with VfioUserClient(str(sock)) as client:
            client.version()
            client.config_write32(CTRL, 1)
            assert doe_go(client) == 0x00000001  # BUSY, no response
            client.config_write32(CTRL, 1)  # ABORT clears it
            assert client.config_read32(STATUS) == 0
            assert doe_go(client) == 0x80000000
    finally:
        stop(proc)


def test_bad_fault_on_the_command_line_is_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket",
                          "/nonexistent/x", "--fault", "no-such"], env=env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unknown fault 'no-such'" in out.stderr


def test_fault_without_server(sock_dir: Path) -> None:
    out = fault("--control", str(sock_dir / "none"), "doe-busy")
    assert out.returncode == 1 and "vfiouser-tdisp fault:" in out.stderr
    names = fault("--names")
    assert names.returncode == 0 and "doe-busy:count,type  [doe]" in names.stdout


@pytest.mark.parametrize("request_line,error", [
    (b"not json\n", "bad JSON"),
    (b'{"op": "explode"}\n', "unknown op"),
    (b'{"op": "arm", "faults": "doe-busy"}\n', "list of strings"),
    (b'{"op": "clear", "name": "zzz"}\n', "unknown fault"),
])
def test_bad_control_requests_answer_an_error(sock_dir: Path, request_line: bytes,
                                              error: str) -> None:
    import socket

    from vfiouser_tdisp.control import ControlServer
    from vfiouser_tdisp.faults import FaultSet

    fs = FaultSet()
    srv = ControlServer(str(sock_dir / "c"), fs)
    srv.start()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock_dir / "c"))
            s.sendall(request_line)
            reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] is False and error in reply["error"]
        assert fs.armed() == []
        from vfiouser_tdisp.control import send
        assert send(str(sock_dir / "c"), {"op": "list"})["ok"] is True  # still serving
    finally:
        srv.close()


def test_run_takes_faults_and_scenarios() -> None:
    from vfiouser_tdisp.cli import build_parser
    from vfiouser_tdisp.run.scenarios import SCENARIOS

    args = build_parser().parse_args(["run", "--fault", "doe-busy:type=1", "--fault",
                                      "report-range", "--scenario", "tdi-error"])
    assert args.fault == ["doe-busy:type=1", "report-range"]
    assert args.scenario == "tdi-error" and args.handler == "vfiouser_tdisp.run.platform:main_run"
    from vfiouser_tdisp.cli import SCENARIOS as CHOICES
    assert set(CHOICES) == set(SCENARIOS)  # --scenario offers exactly the declared ones
    for scenario in SCENARIOS.values():
        for platform in ("cca", "tdx", "sev-tio"):
            for text in scenario.faults_for(platform):  # every scenario's faults parse
                build_parser().parse_args(["serve", "--socket", "x", "--fault", text])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--scenario", "nope"])
