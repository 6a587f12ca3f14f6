"""What benchmarks/cca.py and benchmarks/sev_tio.py share: rounds of a guest-less
platform sequence, reported as median step times, over an in-process device and over
spdm-emu's socket protocol to the same device."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
from collections.abc import Callable, Sequence

from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient, SpdmEmuServer
from vfiouser_tdisp.tsm.platform import DoeTransport, in_process_device, socket_transport

# one round: each step's seconds, then the counts its line names
Round = tuple[dict[str, float], ...]
RoundFn = Callable[[DoeTransport], tuple[dict[str, float], int] | tuple[dict[str, float], int, int]]


def report(name: str, transport: DoeTransport, rounds: int, steps: Sequence[str],
           one_round: RoundFn, counts: Callable[[tuple[int, ...]], str]) -> None:
    runs = [one_round(transport) for _ in range(rounds)]
    cols = "  ".join(f"{s} {statistics.median(r[0][s] for r in runs) * 1e3:7.2f} ms"
                     for s in steps)
    total = statistics.median(sum(r[0].values()) for r in runs)
    print(f"{name:<16} {cols}  whole {total * 1e3:7.2f} ms  ({counts(tuple(runs[0][1:]))})")


def main(doc: str, steps: Sequence[str], one_round: RoundFn,
         counts: Callable[[tuple[int, ...]], str]) -> int:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        transport, dev = in_process_device(identity_dir=cache)
        report("in-process", transport, args.rounds, steps, one_round, counts)
        server = SpdmEmuServer(dev.doe, threading.RLock(), port=0)
        server.start()
        client = SpdmEmuClient("127.0.0.1", server.port)
        try:
            report("spdm-emu socket", socket_transport(client), args.rounds, steps, one_round,
                   counts)
        finally:
            client.close()
            server.close()
    return 0
