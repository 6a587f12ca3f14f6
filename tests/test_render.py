"""Readable live output: `serve` prints one line per protocol exchange (-v: every
event with its fields, -q: nothing), and `vfiouser-tdisp events FILE [--follow]`
renders a saved events.jsonl the same way.  Expected lines are written out here."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_tdisp_e2e import program_bars
from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient
from vfiouser_tdisp.render import Renderer
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.tdisp import messages as t
from vfiouser_tdisp.tsm.core import IdeKmRequester, PciSigChannel, TdispRequester
from vfiouser_tdisp.vfio_user.client import VfioUserClient

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.25  # 2023-11-14 22:13:20.250 UTC


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def ev(kind: str, dt: float = 0.0, **fields: object) -> dict[str, object]:
    return {"time": T0 + dt, "event": kind, **fields}


# What the layers emit for one failed GET_MEASUREMENTS, a KEY_PROG and a failed LOCK
# (field sets as in docs/events.md), in the order they emit them.
EXCHANGES = [
    ev("spdm.request", 0.001, endpoint="dev.0.spdm", request="GET_VERSION", version="0x10",
       session_id=None),
    ev("spdm.connection.transition", 0.002, endpoint="dev.0.spdm", trigger="version",
       old="NOT_STARTED", new="AFTER_VERSION"),
    ev("spdm.response", 0.003, endpoint="dev.0.spdm", request="GET_VERSION",
       response="VERSION", session_id=None),
    ev("spdm.request", 0.010, endpoint="dev.0.spdm", request="GET_MEASUREMENTS",
       version="0x13", session_id=None),
    ev("spdm.request_failed", 0.011, endpoint="dev.0.spdm", request="GET_MEASUREMENTS",
       error="InvalidRequest", detail="no measurement index 9"),
    ev("spdm.error_response", 0.011, endpoint="dev.0.spdm", code="InvalidRequest", data=0),
    ev("spdm.response", 0.012, endpoint="dev.0.spdm", request="GET_MEASUREMENTS",
       response="ERROR", error="InvalidRequest", session_id=None),
    ev("spdm.request", 0.020, endpoint="dev.0.spdm", request="VENDOR_DEFINED_REQUEST",
       version="0x13", session_id="0xfffe0001"),
    ev("ide_km.key_fingerprint", 0.021, function="dev.0.fn0", stream_id=1,
       sha256_prefix="55975f64"),
    ev("ide_km.key_prog", 0.021, function="dev.0.fn0", stream_id=1, port=0,
       key_sub_stream=0x12, status="SUCCESS"),
    ev("spdm.response", 0.022, endpoint="dev.0.spdm", request="VENDOR_DEFINED_REQUEST",
       response="VENDOR_DEFINED_RESPONSE", session_id="0xfffe0001"),
    ev("tdisp.error", 0.030, message="LOCK_INTERFACE_REQUEST", function_id="0x0",
       error="INVALID_DEVICE_CONFIGURATION", detail="Memory Space Enable is clear"),
    ev("tdisp.request", 0.030, message="LOCK_INTERFACE_REQUEST", function_id="0x0",
       result="INVALID_DEVICE_CONFIGURATION"),
    ev("doe.transition", 0.031, mailbox="dev.0.doe", trigger="go_ok", old="BUSY",
       new="READY"),
    ev("fault.fired", 0.040, fault="busy", request="GET_VERSION"),  # no words for it (yet)
]


def test_default_is_one_line_per_exchange_with_the_reason_folded_in(utc: None) -> None:
    r = Renderer()
    lines = [line for e in EXCHANGES if (line := r.render(e)) is not None]
    assert lines == [
        "22:13:20.252 state spdm.connection dev.0: NOT_STARTED -> AFTER_VERSION on version",
        "22:13:20.253 SPDM dev.0: GET_VERSION -> VERSION",
        "22:13:20.262 SPDM dev.0: GET_MEASUREMENTS -> ERROR InvalidRequest: "
        "no measurement index 9",
        "22:13:20.271 IDE_KM dev.0.fn0: KEY_PROG stream 1 port 0 key_sub_stream 0x12 -> "
        "KP_ACK SUCCESS (key sha256 55975f64)",
        "22:13:20.280 TDISP fn 0x0: LOCK_INTERFACE_REQUEST -> INVALID_DEVICE_CONFIGURATION: "
        "Memory Space Enable is clear",
        "22:13:20.290 fault.fired fault=busy request=GET_VERSION",
    ]


def test_verbose_shows_every_event_with_its_fields(utc: None) -> None:
    r = Renderer(verbose=True)
    lines = [r.render(e) for e in EXCHANGES]
    assert None not in lines and len(lines) == len(EXCHANGES)
    assert lines[0] == ("22:13:20.251 SPDM dev.0: GET_VERSION (version 0x10)  [spdm.request "
                        "endpoint=dev.0.spdm request=GET_VERSION version=0x10 session_id=-]")
    assert lines[10] == (
        "22:13:20.272 SPDM dev.0: VENDOR_DEFINED_REQUEST -> VENDOR_DEFINED_RESPONSE "
        "[session 0xfffe0001]  [spdm.response endpoint=dev.0.spdm "
        "request=VENDOR_DEFINED_REQUEST response=VENDOR_DEFINED_RESPONSE "
        "session_id=0xfffe0001]")
    assert lines[13] == ("22:13:20.281 state doe dev.0.doe: BUSY -> READY on go_ok  "
                         "[doe.transition mailbox=dev.0.doe trigger=go_ok old=BUSY new=READY]")
    assert lines[14] == "22:13:20.290 fault.fired fault=busy request=GET_VERSION"


def test_kind_filter_and_odd_values(utc: None) -> None:
    r = Renderer(kinds=("tdisp.",))
    assert r.render(EXCHANGES[2]) is None
    assert r.render(ev("tdisp.request", message="STOP_INTERFACE_REQUEST", function_id="0x1",
                       result="STOP_INTERFACE_RESPONSE")) == (
        "22:13:20.250 TDISP fn 0x1: STOP_INTERFACE_REQUEST -> STOP_INTERFACE_RESPONSE")
    # a field a template names but the event lacks, and a value with spaces
    assert Renderer().render(ev("vfio_user.disconnect", socket="/s")) == (
        "22:13:20.250 vfio-user: /s client gone (?)")
    assert Renderer().render(ev("x.y", reason="two words")) == \
        '22:13:20.250 x.y reason="two words"'
    assert Renderer().render({"event": "server.stopped"}) == "--:--:--.--- server stopped"


# -- a real server ---------------------------------------------------------------------

def serve(sock: Path, events: Path, *flags: str) -> subprocess.Popen[str]:
    env = dict(os.environ, TZ="UTC", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", str(sock),
         "--spdm-port", "0", "--events", str(events), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_port(events: Path, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if events.exists():
            for line in events.read_text().splitlines():
                e = json.loads(line)
                if e["event"] == "server.ready":
                    return int(e["spdm_ports"][0])
        time.sleep(0.05)
    raise AssertionError("server not ready")


def drive(sock: Path, port: int) -> None:
    """A TSM's sequence over the spdm-emu socket, with three refusals on the way."""
    client = SpdmEmuClient("127.0.0.1", port)
    fn0 = VfioUserClient(str(sock))
    try:
        fn0.version()
        spdm = SpdmRequester(client.doe)
        spdm.authenticate()
        with pytest.raises(Exception, match="InvalidRequest"):
            spdm.get_measurements(9)   # the device has indices 1..4 (measurements.py)
        session = spdm.start_session()
        channel = PciSigChannel(spdm, session)
        ide_km, tdisp = IdeKmRequester(channel), TdispRequester(channel)
        ide_km.query()
        fid = t.make_function_id(0, 0)
        with pytest.raises(Exception, match="INVALID_DEVICE_CONFIGURATION"):
            tdisp.lock(fid)              # Memory Space Enable still clear
        program_bars(fn0, 0)
        nonce = tdisp.lock(fid)
        with pytest.raises(Exception, match="INVALID_NONCE|INVALID_REQUEST"):
            tdisp.start(fid, bytes(32))
        tdisp.start(fid, nonce)
        tdisp.stop(fid)
        spdm.end_session(session)
    finally:
        fn0.close()
        client.close()


def wait_for(events: Path, *kinds: str) -> None:
    """Until the server has logged each of ``kinds`` (its threads see a client go
    away on their own time)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen = {json.loads(ln)["event"] for ln in events.read_text().splitlines()}
        if set(kinds) <= seen:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {kinds} in {events}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def normalized(text: str) -> list[str]:
    """Lines without their timestamps, session IDs and ports; runs of one line kept once
    (the number of GET_CERTIFICATE portions depends on the chain's length)."""
    out: list[str] = []
    for line in text.splitlines():
        assert re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line), line
        line = re.sub(r"0x[0-9a-f]{8}\b", "0xSESSION", line[13:])
        line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)
        line = re.sub(r"socket \d+:", "socket PORT:", line)
        if not out or out[-1] != line:
            out.append(line)
    return out


EXPECTED_EXCHANGES = [
    "spdm-emu socket PORT: 127.0.0.1:PORT connected",
    "state spdm.connection virtio-rng.0: NOT_STARTED -> AFTER_VERSION on version",
    "SPDM virtio-rng.0: GET_VERSION -> VERSION",
    "state spdm.connection virtio-rng.0: AFTER_VERSION -> AFTER_CAPABILITIES on capabilities",
    "SPDM virtio-rng.0: GET_CAPABILITIES -> CAPABILITIES",
    "state spdm.connection virtio-rng.0: AFTER_CAPABILITIES -> NEGOTIATED on algorithms",
    "SPDM virtio-rng.0: NEGOTIATE_ALGORITHMS -> ALGORITHMS",
    "SPDM virtio-rng.0: GET_DIGESTS -> DIGESTS",
    "SPDM virtio-rng.0: GET_CERTIFICATE -> CERTIFICATE",
    "SPDM virtio-rng.0: CHALLENGE -> CHALLENGE_AUTH",
    "SPDM virtio-rng.0: GET_MEASUREMENTS -> ERROR InvalidRequest: no measurement index 9",
    "SPDM virtio-rng.0: session 0xSESSION opened",
    "SPDM virtio-rng.0: KEY_EXCHANGE -> KEY_EXCHANGE_RSP",
    "state spdm.session 0xSESSION: HANDSHAKING -> FINISHING on finish",
    "SPDM virtio-rng.0: FINISH -> FINISH_RSP [session 0xSESSION]",
    "state spdm.session 0xSESSION: FINISHING -> ESTABLISHED on data_keys",
    "IDE_KM virtio-rng.0.fn0: QUERY port 0 -> QUERY_RESP",
    "TDISP fn 0x0: LOCK_INTERFACE_REQUEST -> INVALID_DEVICE_CONFIGURATION: "
    "Memory Space Enable is clear",
    "state tdi virtio-rng.0.fn0: CONFIG_UNLOCKED -> CONFIG_LOCKED on LOCK_INTERFACE_REQUEST",
    "TDISP fn 0x0: LOCK_INTERFACE_REQUEST -> LOCK_INTERFACE_RESPONSE",
    "TDISP fn 0x0: START_INTERFACE_REQUEST -> INVALID_NONCE: nonce differs from LOCK's",
    "state tdi virtio-rng.0.fn0: CONFIG_LOCKED -> RUN on START_INTERFACE_REQUEST",
    "TDISP fn 0x0: START_INTERFACE_REQUEST -> START_INTERFACE_RESPONSE",
    "state tdi virtio-rng.0.fn0: RUN -> CONFIG_UNLOCKED on STOP_INTERFACE_REQUEST",
    "TDISP virtio-rng.0.fn0: TDI state scrubbed",
    "TDISP fn 0x0: STOP_INTERFACE_REQUEST -> STOP_INTERFACE_RESPONSE",
    "state spdm.session 0xSESSION: ESTABLISHED -> ENDING on end",
    "SPDM virtio-rng.0: END_SESSION -> END_SESSION_ACK [session 0xSESSION]",
    "state spdm.session 0xSESSION: ENDING -> ENDED on closed",
    "SPDM virtio-rng.0: session 0xSESSION closed (end_session)",
]


def test_serve_prints_one_line_per_exchange_and_events_replays_it(
        sock_dir: Path, tmp_path: Path) -> None:
    sock, events = sock_dir / "d.sock", tmp_path / "events.jsonl"
    proc = serve(sock, events)
    try:
        drive(sock, wait_port(events, proc))
        wait_for(events, "vfio_user.disconnect", "spdm_emu.disconnect")
    finally:
        err = stop(proc)
    lines = normalized(err)
    # the vfio-user connection is accepted on its own thread: its line may come anywhere
    assert f"vfio-user: client connected to {sock} (virtio-rng.0.fn0)" in lines
    assert "spdm-emu socket PORT: 127.0.0.1:PORT gone (client disconnected)" in lines
    proto = [ln for ln in lines if not ln.startswith(("vfio-user:", "spdm-emu socket PORT: "
                                                       "127.0.0.1:PORT gone"))]
    start = proto.index(EXPECTED_EXCHANGES[0])
    assert proto[start:start + len(EXPECTED_EXCHANGES)] == EXPECTED_EXCHANGES
    assert sorted(proto[start + len(EXPECTED_EXCHANGES):]) == [
        "server stopped", "server stopping (SIGTERM)", "virtio-rng.0.fn0: reset (disconnect)"]
    assert proto[-1] == "server stopped"
    assert not any("[" in ln and "=" in ln for ln in lines)  # no fields without -v

    # `events FILE` renders the saved file exactly as serve printed it
    r = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "events", str(events)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, TZ="UTC"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == err


def test_serve_quiet_prints_nothing_and_verbose_prints_fields(
        sock_dir: Path, tmp_path: Path) -> None:
    for flag in ("-q", "-v"):
        sock, events = sock_dir / f"d{flag}.sock", tmp_path / f"events{flag}.jsonl"
        proc = serve(sock, events, flag)
        try:
            client = SpdmEmuClient("127.0.0.1", wait_port(events, proc))
            SpdmRequester(client.doe).init_connection()
            client.close()
        finally:
            err = stop(proc)
        if flag == "-q":
            assert err == ""
        else:
            assert re.search(r"^\S+ SPDM virtio-rng\.0: GET_VERSION -> VERSION  \["
                             r"spdm\.response endpoint=virtio-rng\.0\.spdm "
                             r"request=GET_VERSION response=VERSION session_id=-\]$", err, re.M)
            assert re.search(r"^\S+ SPDM virtio-rng\.0: GET_VERSION \(version 0x10\)  "
                             r"\[spdm\.request endpoint=virtio-rng\.0\.spdm request=GET_VERSION "
                             r"version=0x10 session_id=-\]$", err, re.M)
            assert len(err.splitlines()) == sum(1 for _ in events.open())


def _sigint_default() -> None:
    """Ctrl-C as a terminal gives it: a suite started in the background by a
    non-interactive shell inherits SIGINT ignored (POSIX asynchronous lists), and a
    Python child would then never see KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_events_follow_renders_lines_as_they_are_appended(tmp_path: Path) -> None:
    """Like tail -F: waits for the file, reads lines written in pieces whole, and
    starts over on a new file (`run` replaces events.jsonl)."""
    path = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "vfiouser_tdisp", "events", "--follow",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, TZ="UTC"),
                            preexec_fn=_sigint_default)

    def next_line() -> str:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no line within 20 s"
        return proc.stdout.readline()

    try:
        time.sleep(0.5)  # the file does not exist yet
        path.write_text(json.dumps(ev("server.ready", sockets=["/s"], profile="p",
                                      spdm_ports=[])) + "\n")
        assert next_line() == "22:13:20.250 server ready on /s (profile p)\n"
        line = json.dumps(ev("tdisp.request", 1, message="GET_DEVICE_INTERFACE_STATE",
                             function_id="0x0", result="DEVICE_INTERFACE_STATE"))
        with path.open("a") as f:   # a line written in two pieces is read whole
            f.write(line[:20])
            f.flush()
            time.sleep(0.5)
            f.write(line[20:] + "\n")
        assert next_line() == ("22:13:21.250 TDISP fn 0x0: GET_DEVICE_INTERFACE_STATE -> "
                               "DEVICE_INTERFACE_STATE\n")
        fresh = tmp_path / "new.jsonl"   # a new run: a new file in its place
        fresh.write_text(json.dumps(ev("server.stopped", 2)) + "\n")
        os.replace(fresh, path)
        assert next_line() == "22:13:22.250 server stopped\n"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_events_reports_lines_that_are_not_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(ev("server.stopped")) + "\nnot json\n[1]\n")
    r = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "events", str(path)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, TZ="UTC"))
    assert r.returncode == 1
    assert r.stdout == "22:13:20.250 server stopped\n"
    assert r.stderr.splitlines() == ["vfiouser-tdisp events: not an event: not json",
                                     "vfiouser-tdisp events: not an event: [1]"]
    missing = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "events",
                              str(tmp_path / "nope.jsonl")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1
    assert "nope.jsonl: No such file or directory" in missing.stderr
