#!/usr/bin/env python3
"""How long `vfiouser-tdisp serve` takes to stop on SIGTERM.

Run on demand (not part of the tests):

    python3 benchmarks/serve_stop.py [--rounds N]

Each round starts a real ``serve`` process (one device, an spdm-emu port), waits
until its socket exists, connects a vfio-user client on every other round, sends
SIGTERM and measures the time until the process has exited.  Prints median,
p99 and maximum, and how many rounds did not exit within 5 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vfiouser_tdisp.vfio_user.client import VfioUserClient  # noqa: E402

BOUND = 5.0


def one_stop(tmp: Path, i: int, cache: str) -> float:
    sock = tmp / f"s{i}.sock"
    env = dict(os.environ, VFIOUSER_TDISP_CACHE=cache, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket",
                             str(sock), "--quiet", "--spdm-port", "0"], env=env,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("serve did not start")
            time.sleep(0.01)
        client = None
        if i % 2:
            client = VfioUserClient(str(sock))
            client.version()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            return float("inf")
        took = time.monotonic() - started
        if client is not None:
            client.close()
        return took
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vtstop-", dir="/tmp") as tmp:
        times = [one_stop(Path(tmp), i, str(Path(tmp) / "cache")) for i in range(args.rounds)]
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    late = sum(t > BOUND for t in times)
    print(f"serve SIGTERM stop, {len(times)} rounds: median {statistics.median(times)*1e3:.0f} ms, "
          f"p99 {p99*1e3:.0f} ms, max {times[-1]*1e3:.0f} ms; over {BOUND:.0f} s: {late}")
    return 1 if late else 0


if __name__ == "__main__":
    sys.exit(main())
