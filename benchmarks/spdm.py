#!/usr/bin/env python3
"""SPDM figures: a full handshake per algorithm set, and messages per second in a session.

Run on demand (not part of the tests):

    python3 benchmarks/spdm.py [--rounds N] [--seconds S] [--no-doe]

A full handshake is VCA, GET_DIGESTS, GET_CERTIFICATE, CHALLENGE, signed
GET_MEASUREMENTS, KEY_EXCHANGE, FINISH and END_SESSION, done by the
package's requester. "in-process" calls the DOE dispatcher directly; "DOE
registers" drives the mailbox dword by dword through config-space writes and
reads over the vfio-user socket, like a guest kernel does: the server runs
in its own process (``vfiouser-tdisp serve``).  "spdm-emu socket" sends
each DOE object over TCP in the spdm-emu framing to a server thread in this
process (so its CPU includes the server's).  Wall time is the median per
handshake; CPU is this process's CPU time per handshake (for the DOE case the
server's CPU is reported separately from /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfiouser_tdisp.device.device import Device, get_profile  # noqa: E402
from vfiouser_tdisp.doe.driver import DoeDriver  # noqa: E402
from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient, SpdmEmuServer  # noqa: E402
from vfiouser_tdisp.spdm.requester import SpdmRequester  # noqa: E402
from vfiouser_tdisp.vfio_user.client import VfioUserClient  # noqa: E402

SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "ECDSA P-384 / SHA-384 / AES-256-GCM": dict(
        hashes=("sha384",), asyms=("ecdsa-p384",), dhes=("secp384r1",), aeads=("aes-256-gcm",)),
    "ECDSA P-256 / SHA-256 / AES-128-GCM": dict(
        hashes=("sha256",), asyms=("ecdsa-p256",), dhes=("secp256r1",), aeads=("aes-128-gcm",)),
    "RSASSA-3072 / SHA-384 / AES-256-GCM": dict(
        hashes=("sha384",), asyms=("rsassa-3072",), dhes=("secp384r1",), aeads=("aes-256-gcm",)),
}


def handshake(transport: Callable[[bytes], bytes], algs: dict[str, tuple[str, ...]]) -> None:
    req = SpdmRequester(transport, **algs)  # type: ignore[arg-type]
    req.authenticate()
    req.get_measurements()
    session = req.start_session()
    req.end_session(session)


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, transport: Callable[[bytes], bytes], rounds: int,
            pid: int | None = None) -> None:
    for label, algs in SETS.items():
        handshake(transport, algs)  # warm up (identity loaded, code paths hot)
        walls = []
        cpu0 = time.process_time()
        srv0 = server_cpu(pid) if pid else 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            handshake(transport, algs)
            walls.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / rounds
        line = (f"  {name:<15} {label:<38} wall {statistics.median(walls) * 1e3:7.1f} ms"
                f"  (min {min(walls) * 1e3:.1f})  cpu {cpu * 1e3:6.1f} ms")
        if pid:
            line += f"  server cpu {(server_cpu(pid) - srv0) / rounds * 1e3:6.1f} ms"
        print(line, flush=True)


def session_rate(name: str, transport: Callable[[bytes], bytes], seconds: float) -> None:
    req = SpdmRequester(transport, **SETS["ECDSA P-384 / SHA-384 / AES-256-GCM"])  # type: ignore[arg-type]
    req.authenticate()
    session = req.start_session()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        req.heartbeat(session)
        n += 1
    elapsed = time.perf_counter() - t0
    req.end_session(session)
    print(f"  {name:<15} HEARTBEAT round trips in a session: {n / elapsed:8.0f} /s "
          f"({elapsed / n * 1e6:.0f} us each)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="handshakes per figure (10)")
    ap.add_argument("--seconds", type=float, default=2.0, help="session rate window (2 s)")
    ap.add_argument("--no-doe", action="store_true", help="skip the DOE-register figures")
    ap.add_argument("--no-emu", action="store_true", help="skip the spdm-emu socket figures")
    args = ap.parse_args()

    device = Device(get_profile("virtio-rng"))
    device.spdm  # noqa: B018  (load the identity before timing)
    print("full SPDM handshake (VCA, digests, certificate, challenge, measurements, "
          "key exchange, finish, end session):")
    measure("in-process", device.doe.exchange, args.rounds)
    rates: list[tuple[str, Callable[[bytes], bytes]]] = [("in-process", device.doe.exchange)]
    with contextlib.ExitStack() as stack:
        if not args.no_emu:
            emu = SpdmEmuServer(device.doe, threading.RLock(), port=0)
            emu.start()
            stack.callback(emu.close)
            client = SpdmEmuClient("127.0.0.1", emu.port)
            stack.callback(client.close)
            measure("spdm-emu socket", client.doe, args.rounds)
            rates.append(("spdm-emu socket", client.doe))
        if not args.no_doe:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            sock = os.path.join(tmp, "bench.sock")
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
            server = subprocess.Popen(
                [sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", sock,
                 "--profile", "virtio-rng", "--quiet"], env=env)
            stack.callback(server.wait, 10)
            stack.callback(server.terminate)
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
            vfu = stack.enter_context(VfioUserClient(sock))
            vfu.version()
            drv = DoeDriver(vfu.config_read32, vfu.config_write32, 0x100)
            drv.abort()
            measure("DOE registers", drv.exchange, args.rounds, server.pid)
            rates.append(("DOE registers", drv.exchange))
        print("messages in a session:")
        for name, transport in rates:
            session_rate(name, transport, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
