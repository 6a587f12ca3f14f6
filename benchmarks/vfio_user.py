#!/usr/bin/env python3
"""vfio-user transport figures: latency and server CPU per request, the
aggregate rate of one process serving many sockets, DMA throughput (mmap of a
sealed memfd vs pread/pwrite of an unsealed one vs DMA messages), the
server's memory over reconnect rounds, guest boot time.

Run on demand (not part of the tests):

    python3 benchmarks/vfio_user.py [--samples N] [--no-boot] [--only NAME ...]

The server runs in its own process (``vfiouser-tdisp serve``), as with QEMU.
Latency is measured with a minimal Python client (one send, one recv per
request) and, for reference, against a minimal Python echo server on the
same kind of socket: the difference is what the server itself costs.  Server
CPU comes from /proc/PID/stat (user + system time) over the measured series.
"""

from __future__ import annotations

import argparse
import fcntl
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
# A client in its own process: config reads on one socket for a while, then
# prints how many it did.
LOAD_CLIENT = r"""
import socket, struct, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX); s.connect(path)
caps = b'{"capabilities":{}}\0'
s.sendall(struct.pack("<HHIII", 1, 1, 20 + len(caps), 0, 0) + struct.pack("<HH", 0, 0) + caps)
s.recv(65536)
msg = struct.pack("<HHIII", 2, 9, 32, 0, 0) + struct.pack("<QII", 0, 7, 4)
n = 0
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    for _ in range(100):
        s.send(msg)
        s.recv(65536)
    n += 100
print(n)
"""
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def serve(paths: list[str], profile: str = "dma-test",
          pin: list[str] | None = None) -> subprocess.Popen[bytes]:
    cmd = (pin or []) + [sys.executable, "-m", "vfiouser_tdisp", "serve", "--profile", profile,
                         "--quiet"]
    for p in paths:
        cmd += ["--socket", p]
    return subprocess.Popen(cmd)


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
        cpu = 0.0
        for _ in range(rounds):
            before = cpu_seconds(srv.pid)
            series["cfg"] += rtt(c.sock, cfg, samples // rounds)
            series["bar"] += rtt(c.sock, bar, samples // rounds)
            cpu += cpu_seconds(srv.pid) - before
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
        served = len(series["cfg"]) + len(series["bar"])
        print(f"  server CPU per request (config + BAR reads, /proc/PID/stat): "
              f"{cpu / served * 1e6:.1f} us")
        e.close()
        c.close()
    finally:
        srv.terminate()
        echo.terminate()
        srv.wait()
        echo.wait()


def _sealed_map(c: VfioUserClient, iova: int, size: int) -> int:
    """DMA_MAP a memfd sealed like QEMU's memory-backend-memfd (the server mmaps it)."""
    fd = os.memfd_create("sealed-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    c.call(Command.VFIO_USER_DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, iova, size), fds=[fd])
    return fd


def bench_dma(tmp: str) -> None:
    print("DMA throughput (dma-test device, 64 KiB and 16 bytes per command)")
    path = os.path.join(tmp, "dma.sock")
    srv = serve([path])
    try:
        wait_for(path, srv)
        c = VfioUserClient(path, memory_size=4 << 20)
        c.version()
        c.config_write32(4, 0x6)
        sealed = _sealed_map(c, 0x3000000, 1 << 20)
        c.dma_map(0x1000000, 1 << 20, mem_offset=0, share_fd=True)  # unsealed memfd
        c.dma_map(0x2000000, 1 << 20, mem_offset=1 << 20, share_fd=False)
        rows = (("sealed memfd: mmap", 0x3000000),
                ("unsealed memfd: pread/pwrite", 0x1000000),
                ("DMA_READ/WRITE messages", 0x2000000))
        for size in (0x10000, 16):
            for name, base in rows:
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
                    rate = (f"{n * size / dt / 1e6:8.1f} MB/s" if size > 16 else
                            f"{dt / n * 1e6:8.1f} us per command")
                    print(f"  {size:>6} B  {name:<30} {label:<14} {rate}")
        os.close(sealed)
        c.close()
    finally:
        srv.terminate()
        srv.wait()


def bench_aggregate(tmp: str, seconds: float, counts: tuple[int, ...]) -> None:
    """Config reads from N client processes: one server process with N sockets
    against N server processes with one socket each."""
    print(f"Aggregate request rate over N sockets ({seconds:g} s, one client process per socket)")

    def load(paths: list[str]) -> float:
        clients = [subprocess.Popen([sys.executable, "-c", LOAD_CLIENT, p, str(seconds)],
                                    stdout=subprocess.PIPE) for p in paths]
        total = 0
        for cl in clients:
            out, _ = cl.communicate()
            total += int(out)
        return total / seconds

    for n in counts:
        paths = [os.path.join(tmp, f"agg{n}-{i}.sock") for i in range(n)]
        one = serve(paths)
        try:
            for p in paths:
                wait_for(p, one)
            before = cpu_seconds(one.pid)
            shared = load(paths)
            cpu = cpu_seconds(one.pid) - before
        finally:
            one.terminate()
            one.wait()
        procs = [serve([p.replace(".sock", "-own.sock")]) for p in paths]
        try:
            for p, pr in zip(paths, procs, strict=True):
                wait_for(p.replace(".sock", "-own.sock"), pr)
            separate = load([p.replace(".sock", "-own.sock") for p in paths])
        finally:
            for pr in procs:
                pr.terminate()
                pr.wait()
        print(f"  N={n}: one process {shared:9.0f} req/s "
              f"(server CPU {cpu / (shared * seconds) * 1e6:.1f} us/req)   "
              f"{n} processes {separate:9.0f} req/s   ratio {shared / separate:.2f}")


def bench_memory(tmp: str, tdis: int, rounds: int) -> None:
    """RSS of one serve process with many TDIs while clients come and go.

    Each session does what a guest's driver does to the server's memory: maps
    1 MiB of guest RAM, runs a 64 KiB DMA from it, writes 64 KiB of BAR
    memory, and sends one 1 MiB message (refused), which fills the receive
    path as a maximal transfer does.
    """
    paths = [os.path.join(tmp, f"mem{i}.sock") for i in range(tdis)]
    srv = serve(paths)
    big = struct.pack("<QII", 0, 7, (1 << 20) - 64) + bytes((1 << 20) - 64)
    try:
        for p in paths:
            wait_for(p, srv, timeout=600)
        print(f"Server memory: {tdis} TDIs (dma-test functions, one socket each), "
              f"{rounds} reconnect rounds")
        print(f"  after start: RSS {rss_mib(srv.pid):6.1f} MiB")
        for r in range(1, rounds + 1):
            for p in paths:
                c = VfioUserClient(p, memory_size=1 << 20)
                c.version()
                c.config_write32(4, 0x6)
                c.dma_map(0x100000, 1 << 20, share_fd=True)
                c.memory[0:0x10000] = os.urandom(0x10000)
                c.region_write(0, 4, struct.pack("<III", 0x100000, 0, 0x10000))
                c.region_write(0, 0x10, struct.pack("<I", 1))
                c.region_write(2, 0, bytes(0x10000))
                c.call(Command.VFIO_USER_REGION_WRITE, big, check=False)
                c.close()
            if r in (1, 2, rounds // 2, rounds):
                print(f"  after round {r:2d}: RSS {rss_mib(srv.pid):6.1f} MiB")
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
    ap.add_argument("--only", nargs="+", metavar="NAME",
                    choices=("latency", "aggregate", "dma", "memory", "boot"),
                    help="run only these parts (latency aggregate dma memory boot)")
    ap.add_argument("--tdis", type=int, default=64, help="TDIs for the memory figure")
    ap.add_argument("--rounds", type=int, default=12, help="reconnect rounds (memory figure)")
    args = ap.parse_args()
    parts = set(args.only or ("latency", "aggregate", "dma", "memory", "boot"))
    if args.no_boot:
        parts.discard("boot")
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="vtb-", dir="/tmp") as tmp:
        if "latency" in parts:
            # Where the scheduler puts the two processes dominates the figure
            # on a VM (a cross-CPU wake-up costs tens of microseconds): show both.
            placements: list[tuple[int | None, int | None]] = [(None, None)]
            if len(cpus) >= 2 and shutil.which("taskset"):
                placements = [(cpus[0], cpus[0]), (cpus[0], cpus[1])]
            for server_cpu, client_cpu in placements:
                bench_latency(tmp, args.samples, server_cpu, client_cpu)
            os.sched_setaffinity(0, cpus)
        if "aggregate" in parts:
            bench_aggregate(tmp, 3.0, (1, 2, 4))
        if "dma" in parts:
            bench_dma(tmp)
        if "memory" in parts:
            bench_memory(tmp, args.tdis, args.rounds)
    if "boot" in parts:
        bench_boot(args.boot_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
