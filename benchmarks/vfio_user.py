#!/usr/bin/env python3
"""vfio-user transport figures: latency, DMA throughput, guest boot time.

Run on demand (not part of the tests):

    python3 benchmarks/vfio_user.py [--samples N] [--no-boot]

The server runs in its own process (``vfiouser-tdisp serve``), as with QEMU.
Latency is measured with a minimal Python client (one send, one recv per
request) and, for reference, against a minimal Python echo server on the
same kind of socket: the difference is what the server itself costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfiouser_tdisp.vfio_user.client import VfioUserClient  # noqa: E402
from vfiouser_tdisp.vfio_user.messages import Command  # noqa: E402

_HDR = struct.Struct("<HHIII")
ECHO_SERVER = r"""
import os, socket, sys
path = sys.argv[1]
l = socket.socket(socket.AF_UNIX); l.bind(path); l.listen(1)
c, _ = l.accept()
while True:
    d = c.recv(65536)
    if not d:
        break
    c.send(d[:32] + b"\0\0\0\0")
"""


def wait_for(path: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server did not come up at {path}")
        time.sleep(0.02)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def rtt(sock: socket.socket, msg: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        sock.send(msg)
        sock.recv(65536)
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def report(name: str, lat: list[float]) -> None:
    print(f"  {name:<44} median {statistics.median(lat):7.1f} us   "
          f"p99 {percentile(lat, 0.99):7.1f} us")


def bench_latency(tmp: str, samples: int, server_cpu: int | None,
                  client_cpu: int | None) -> None:
    where = ("unpinned" if server_cpu is None else
             f"server on CPU {server_cpu}, client on CPU {client_cpu}")
    print(f"Round-trip latency (Python client, server in its own process; {where})")
    pin = [] if server_cpu is None else ["taskset", "-c", str(server_cpu)]
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    path = os.path.join(tmp, f"bench-{server_cpu}-{client_cpu}.sock")
    srv = subprocess.Popen(pin + [sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket",
                                  path, "--profile", "dma-test", "--quiet"])
    echo_path = os.path.join(tmp, f"echo-{server_cpu}-{client_cpu}.sock")
    echo = subprocess.Popen(pin + [sys.executable, "-c", ECHO_SERVER, echo_path])
    try:
        wait_for(path, srv)
        wait_for(echo_path, echo)
        c = VfioUserClient(path)
        c.version()
        # Plain blocking socket, like the echo client: a timeout adds a poll()
        # before every recv.
        c.sock.settimeout(None)
        cfg = _HDR.pack(1, Command.VFIO_USER_REGION_READ, 32, 0, 0) + struct.pack("<QII", 0, 7, 4)
        bar = _HDR.pack(2, Command.VFIO_USER_REGION_READ, 32, 0, 0) + struct.pack("<QII", 0, 0, 4)
        e = socket.socket(socket.AF_UNIX)
        e.connect(echo_path)
        rtt(c.sock, cfg, 500)  # warm up
        rtt(e, cfg, 500)
        # Interleave rounds so machine noise hits every series alike.
        series: dict[str, list[float]] = {"cfg": [], "bar": [], "echo": [], "client": []}
        rounds = 10
        for _ in range(rounds):
            series["cfg"] += rtt(c.sock, cfg, samples // rounds)
            series["bar"] += rtt(c.sock, bar, samples // rounds)
            series["echo"] += rtt(e, cfg, samples // rounds)
            for _ in range(samples // rounds // 4):
                t = time.perf_counter_ns()
                c.config_read32(0)
                series["client"].append((time.perf_counter_ns() - t) / 1000)
        report("config read, 4 bytes", series["cfg"])
        report("BAR0 register read, 4 bytes", series["bar"])
        report("config read via VfioUserClient (full parse)", series["client"])
        report("reference: bare Python echo server", series["echo"])
        over = statistics.median(series["cfg"]) - statistics.median(series["echo"])
        print(f"  server cost over the bare echo floor: {over:.1f} us")
        e.close()
        c.close()
    finally:
        srv.terminate()
        echo.terminate()
        srv.wait()
        echo.wait()


def bench_dma(tmp: str) -> None:
    print("DMA throughput (dma-test device copying 64 KiB per command)")
    path = os.path.join(tmp, "dma.sock")
    srv = subprocess.Popen([sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", path,
                            "--profile", "dma-test", "--quiet"])
    try:
        wait_for(path, srv)
        c = VfioUserClient(path, memory_size=4 << 20)
        c.version()
        c.config_write32(4, 0x6)
        c.dma_map(0x1000000, 1 << 20, mem_offset=0, share_fd=True)
        c.dma_map(0x2000000, 1 << 20, mem_offset=1 << 20, share_fd=False)
        size = 0x10000
        for name, base in (("mmap'ed fd", 0x1000000), ("DMA_READ/WRITE messages", 0x2000000)):
            for label, cmd in (("guest->device", 1), ("device->guest", 2)):
                c.region_write(0, 4, struct.pack("<III", base, 0, size))
                n = 0
                t = time.perf_counter()
                while time.perf_counter() - t < 1.0:
                    c.region_write(0, 0x10, struct.pack("<I", cmd))
                    n += 1
                dt = time.perf_counter() - t
                status = struct.unpack("<I", c.region_read(0, 0x14, 4))[0]
                if status != 1:
                    raise SystemExit(f"DMA failed (status {status})")
                print(f"  {name:<26} {label:<14} {n * size / dt / 1e6:8.1f} MB/s")
        c.close()
    finally:
        srv.terminate()
        srv.wait()


def bench_boot(runs: int) -> None:
    print("Guest boot to poweroff (TCG unless KVM works), busybox initramfs")
    try:
        from vfiouser_tdisp.run.job import boot_time  # type: ignore[attr-defined]
    except ImportError:
        print("  skipped: vfiouser_tdisp.run.job.boot_time is not available")
        return
    for with_device in (False, True):
        times = [boot_time(with_device=with_device) for _ in range(runs)]
        label = "with the vfio-user device" if with_device else "without a device"
        print(f"  {label:<44} median {statistics.median(times):6.2f} s  "
              f"(min {min(times):.2f}, max {max(times):.2f}, {runs} runs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20000, help="latency samples per series")
    ap.add_argument("--no-boot", action="store_true", help="skip the guest boot timing")
    ap.add_argument("--boot-runs", type=int, default=3)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="vtb-", dir="/tmp") as tmp:
        # Where the scheduler puts the two processes dominates the figure on a
        # VM (a cross-CPU wake-up costs tens of microseconds): show both.
        placements: list[tuple[int | None, int | None]] = [(None, None)]
        if len(cpus) >= 2 and shutil.which("taskset"):
            placements = [(cpus[0], cpus[0]), (cpus[0], cpus[1])]
        for server_cpu, client_cpu in placements:
            bench_latency(tmp, args.samples, server_cpu, client_cpu)
        os.sched_setaffinity(0, cpus)
        bench_dma(tmp)
    if not args.no_boot:
        bench_boot(args.boot_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
