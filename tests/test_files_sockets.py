"""Files and sockets the server creates: explicit modes, no symlink following,
busy listeners are not stale, and only our own socket is removed on exit."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vfiouser_tdisp.events import open_event_log
from vfiouser_tdisp.server import start_devices
from vfiouser_tdisp.sockets import bind_unix_listener, prepare_socket_path, socket_is_stale

ROOT = Path(__file__).resolve().parent.parent


def fill_backlog(path: str) -> list[socket.socket]:
    """Connect non-blocking clients until the listener's backlog is full (EAGAIN)."""
    clients = []
    for _ in range(64):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        err = c.connect_ex(path)
        clients.append(c)
        if err == errno.EAGAIN:
            return clients
        assert err == 0, os.strerror(err)
    raise AssertionError("backlog never filled")


def test_busy_listener_is_not_stale(sock_dir: Path) -> None:
    path = str(sock_dir / "busy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)  # never accepts: one queued connection fills it
    clients = fill_backlog(path)
    try:
        assert not socket_is_stale(path)
        with pytest.raises(FileExistsError, match="listening"):
            prepare_socket_path(path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # still there
    finally:
        for c in clients:
            c.close()
        listener.close()


def test_stale_socket_is_removed_and_a_regular_file_is_not(sock_dir: Path) -> None:
    path = str(sock_dir / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: ECONNREFUSED
    assert socket_is_stale(path)
    prepare_socket_path(path)
    assert not os.path.lexists(path)
    Path(path).write_text("mine")
    with pytest.raises(FileExistsError, match="not a socket"):
        prepare_socket_path(path)
    assert Path(path).read_text() == "mine"


def test_socket_created_0600_under_umask_000(sock_dir: Path) -> None:
    old = os.umask(0)
    try:
        bound = bind_unix_listener(str(sock_dir / "m.sock"))
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(bound.path).st_mode) == 0o600
    finally:
        bound.sock.close()
        assert bound.unlink()


@pytest.mark.parametrize("replacement", ["file", "socket"])
def test_close_never_unlinks_what_replaced_our_socket(sock_dir: Path, replacement: str) -> None:
    path = sock_dir / "dev.sock"
    running = start_devices([str(path)], "dma-test")
    os.unlink(path)  # someone else takes the name while we run
    other = None
    if replacement == "file":
        path.write_text("not yours")
    else:
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(path))
    try:
        running.close()
        assert os.path.lexists(path)
        if replacement == "file":
            assert path.read_text() == "not yours"
    finally:
        if other is not None:
            other.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def test_close_removes_our_own_socket(sock_dir: Path) -> None:
    path = sock_dir / "own.sock"
    running = start_devices([str(path)], "dma-test")
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    running.close()
    assert not os.path.lexists(path)


# -- the events file -------------------------------------------------------------------------

def test_event_log_created_0600_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with open_event_log(tmp_path / "ev.jsonl") as f:
            f.write("x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ev.jsonl").stat().st_mode) == 0o600


def test_event_log_refuses_a_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    target.chmod(0o644)
    link = tmp_path / "ev.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError, match="symlink"):
        open_event_log(link)
    assert target.read_text() == "keep\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_event_log_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(OSError):
        open_event_log(fifo)
    assert time.monotonic() - t0 < 2


def serve(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vfiouser_tdisp", "serve", *args], capture_output=True,
        text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)  # type: ignore[func-returns-value]


def test_serve_refuses_events_symlink_in_one_line(tmp_path: Path, sock_dir: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    (tmp_path / "ev.jsonl").symlink_to(target)
    r = serve("--socket", str(sock_dir / "s.sock"), "--events", str(tmp_path / "ev.jsonl"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "symlink" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert target.read_text() == "keep\n"
    assert not (sock_dir / "s.sock").exists()


def test_serve_under_umask_000_keeps_its_cache_private(tmp_path: Path, sock_dir: Path) -> None:
    """The identity cache (keys) must not come out 0777 when the user's umask is 000."""
    cache = tmp_path / "fresh-cache"
    sock = sock_dir / "u.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", str(sock), "--quiet",
         "--cache-dir", str(cache), "--events", str(tmp_path / "ev.jsonl")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.umask(0) and None)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(10)
    # The cache root may be shared (docs/provisioning.md: root provisions it for everyone),
    # so it is only never writable by others; the identity below it (keys) is private.
    assert stat.S_IMODE(cache.stat().st_mode) & 0o022 == 0, oct(cache.stat().st_mode)
    dirs = [p for p in cache.rglob("*") if p.is_dir()]
    assert dirs, "serve generated no identity"
    for d in dirs:
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, (d, oct(d.stat().st_mode))
    for f in (p for p in cache.rglob("*") if p.is_file()):
        assert stat.S_IMODE(f.stat().st_mode) & 0o022 == 0, (f, oct(f.stat().st_mode))
    assert stat.S_IMODE((tmp_path / "ev.jsonl").stat().st_mode) == 0o600
