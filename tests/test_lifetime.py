"""Children of `run` die with it: PR_SET_PDEATHSIG on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import PROVISIONED_CACHE

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> dict[int, str]:
    """{pid: command line} of the direct children of ``pid``."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out[int(p.name)] = cmd
    return out


def wait_gone(pids: list[int], within: float) -> list[int]:
    end = time.monotonic() + within
    while time.monotonic() < end:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def kill_leftovers(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


PARENT = """
import subprocess, sys
from vfiouser_tdisp.run.lifetime import die_with_parent
p = subprocess.Popen(["sleep", "60"], start_new_session=True, preexec_fn=die_with_parent())
print(p.pid, flush=True)
sys.stdin.read()
"""


def test_child_in_its_own_session_dies_with_a_sigkilled_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()
        parent.wait()
        assert wait_gone([child], 5) == []
    finally:
        kill_leftovers([child])


@pytest.mark.vm
def test_sigkill_of_runs_process_group_leaves_no_serve_or_qemu(tmp_path: Path) -> None:
    if not (PROVISIONED_CACHE / "provisioned.json").exists():
        pytest.skip("not provisioned")
    out = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, "-m", "vfiouser_tdisp", "run", "--platform", "cca", "--out", str(out),
         "--timeout", "90", "--cache-dir", str(PROVISIONED_CACHE)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen.update(children(run.pid))
            if any("serve" in c for c in seen.values()) and any(
                    "qemu-system" in c or "ld-linux" in c for c in seen.values()):
                break
            assert run.poll() is None, "run ended before QEMU started"
            time.sleep(0.1)
        else:
            pytest.fail(f"serve and QEMU never both ran: {seen}")
        time.sleep(1.0)  # QEMU is booting the guest, serve has a client
        os.killpg(run.pid, signal.SIGKILL)  # what a CI timeout does
        run.wait()
        left = wait_gone(list(seen), 10)
        assert left == [], {p: seen[p] for p in left}
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        kill_leftovers(list(seen))
