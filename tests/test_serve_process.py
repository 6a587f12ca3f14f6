"""`vfiouser-tdisp serve` as a real process: stopping on signals, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vfiouser_tdisp.vfio_user.client import VfioUserClient

ROOT = Path(__file__).resolve().parent.parent
STOP_BOUND = 5.0  # issue 9: every SIGTERM stop within 5 s


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vfiouser_tdisp", "serve", *args]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def start(sock: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(serve_cmd("--socket", str(sock), "--quiet", *extra), env=env(),
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "serve did not create its socket"
        time.sleep(0.01)
    return proc


def test_hundred_sigterm_stops_each_exit_in_time(sock_dir: Path) -> None:
    """The old handler called Event.set() while the main thread sat in
    Event.wait() holding the same lock: about 1 stop in 50 hung for good."""
    times = []
    for i in range(100):
        sock = sock_dir / f"s{i}.sock"
        proc = start(sock, "--spdm-port", "0")
        client = None
        try:
            if i % 2:  # half of the stops with a client attached
                client = VfioUserClient(str(sock))
                client.version()
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_BOUND)
            except subprocess.TimeoutExpired:
                pytest.fail(f"stop {i}: serve still running {STOP_BOUND} s after SIGTERM")
            times.append(time.monotonic() - t0)
            assert proc.returncode == 0, proc.communicate()[1].decode()
            assert not sock.exists()  # it removed its own socket
        finally:
            if client is not None:
                client.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
    assert len(times) == 100 and max(times) < STOP_BOUND


def test_sigterm_while_starting_still_stops(sock_dir: Path) -> None:
    """A signal that arrives before the devices are up stays pending and stops
    the server as soon as it is ready (it is blocked, never lost)."""
    proc = subprocess.Popen(serve_cmd("--socket", str(sock_dir / "early.sock"), "--quiet"),
                            env=env(), stdin=subprocess.DEVNULL)
    time.sleep(0.2)  # inside interpreter start-up or start_devices
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (sock_dir / "early.sock").exists()


def test_sigint_stops_like_sigterm(sock_dir: Path) -> None:
    proc = start(sock_dir / "int.sock")
    proc.send_signal(signal.SIGINT)
    proc.wait(STOP_BOUND)
    assert proc.returncode == 0


# -- one-line errors (issue 9 item 17) ------------------------------------------------------

def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfiouser_tdisp", *args], capture_output=True,
                          text=True, timeout=120, env=env(), **kw)  # type: ignore[call-overload]


def test_spdm_port_out_of_range_is_a_usage_error(sock_dir: Path) -> None:
    r = cli("serve", "--socket", str(sock_dir / "p.sock"), "--spdm-port", "70000")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].endswith("port 70000 is outside 0..65535")
    r = cli("serve", "--socket", str(sock_dir / "p.sock"), "--socket", str(sock_dir / "q.sock"),
            "--spdm-port", "65535")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "PORT+i" in r.stderr


def test_events_in_a_missing_directory_is_one_line(sock_dir: Path, tmp_path: Path) -> None:
    r = cli("serve", "--socket", str(sock_dir / "e.sock"),
            "--events", str(tmp_path / "no" / "such" / "ev.jsonl"))
    assert r.returncode == 1
    assert r.stderr == (f"vfiouser-tdisp serve: --events {tmp_path}/no/such/ev.jsonl: "
                        "No such file or directory\n")
    assert not (sock_dir / "e.sock").exists()


SETPRIV = "/usr/bin/setpriv"


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists(SETPRIV),
                    reason="needs root and setpriv to become an unprivileged user")
def test_run_by_unprivileged_user_on_root_provisioned_cache_is_one_line() -> None:
    """Root provisioned a cache whose tree this user cannot read (under /root):
    `run` refuses in one line instead of a PermissionError traceback."""
    from .conftest import PROVISIONED_CACHE

    stamp = PROVISIONED_CACHE / "provisioned.json"
    if not stamp.exists():
        pytest.skip("not provisioned")
    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="vt-multiuser-", dir="/tmp"))  # pytest's is 0700
    tmp_path.chmod(0o755)
    try:
        _run_as_nobody(tmp_path, stamp)
    finally:
        shutil.rmtree(tmp_path)


def _run_as_nobody(tmp_path: Path, stamp: Path) -> None:
    cache = tmp_path / "shared-cache"
    cache.mkdir(mode=0o755)
    (cache / "provisioned.json").write_bytes(stamp.read_bytes())
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    r = subprocess.run(
        [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "vfiouser_tdisp", "run", "--platform", "cca", "--cache-dir", str(cache),
         "--out", str(home / "out")],
        capture_output=True, text=True, timeout=120, cwd=home,
        env=dict(env(), HOME=str(home)))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"vfiouser-tdisp run: the cache {cache} (owned by uid 0)")
    assert "not readable by uid 65534" in r.stderr


SYSTEM_PYTHON = "/usr/bin/python3"  # an interpreter an unprivileged user may run


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists(SETPRIV)
                    or not os.path.exists(SYSTEM_PYTHON),
                    reason="needs root, setpriv and a system python3")
def test_run_by_unprivileged_user_on_readable_root_provisioned_cache_works() -> None:
    """docs/provisioning.md's multi-user path: root provisioned DIR (here: a
    hard-linked copy of the provisioned tree outside /root), user 65534 runs
    `run --cache-dir DIR`; the whole job passes and the identity goes to the
    user's own cache."""
    import json
    import shutil
    import tempfile

    from .conftest import PROVISIONED_CACHE

    stamp = PROVISIONED_CACHE / "provisioned.json"
    if not stamp.exists():
        pytest.skip("not provisioned")
    base = Path(tempfile.mkdtemp(prefix="vt-multiuser-", dir="/tmp"))
    base.chmod(0o755)
    try:
        cache = base / "cache"
        cache.mkdir(mode=0o755)
        # what `setup` provisions: QEMU tree, guest kernel, the guest module's build tree
        # (also openssl for the guest) and the built module
        for part in ("tree", "kernel", "modbuild", "module"):
            subprocess.run(["cp", "-al", str(PROVISIONED_CACHE / part), str(cache)], check=True)
        (cache / "provisioned.json").write_text(
            stamp.read_text().replace(json.dumps(str(PROVISIONED_CACHE))[1:-1], str(cache)))
        venv = base / "venv"  # the test's own venv points into /root: unusable for 65534
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        src = base / "src"  # a copy: a pip build writes build/ into its source tree
        src.mkdir()
        subprocess.run(f"git ls-files -z | xargs -0 cp --parents -t {src}", shell=True,
                       cwd=ROOT, check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], check=True,
                       capture_output=True, timeout=600)
        subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
        home = base / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        r = subprocess.run(
            [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups",
             str(venv / "bin" / "vfiouser-tdisp"), "run", "--platform", "cca",
             "--cache-dir", str(cache), "--out", str(home / "out"), "--timeout", "240"],
            capture_output=True, text=True, timeout=400, cwd=home,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "OK:" in r.stdout and " 0 failed" in r.stdout
        ident = home / ".cache" / "vfiouser-tdisp" / "identity"
        assert ident.is_dir() and ident.stat().st_uid == 65534
        assert not (cache / "identity").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
