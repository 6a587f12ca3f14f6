#!/usr/bin/env python3
"""Arm CCA figures without a guest: each step of the sequence through the RMM emulator.

Run on demand (not part of the tests):

    python3 benchmarks/cca.py [--rounds N]

Per round: connect (PDEV identity, key, session, root port, IDE stream), bind (VDEV
create), lock (realm: RHI SET_TDI_STATE + report + measurements + four object reads +
digest checks), accept (VALIDATE_MAPPING per range, RUN, DMA_ENABLE), unlock, unbind,
disconnect.  "in-process" reaches the device's DOE mailbox registers in this process;
"spdm-emu socket" carries every object over TCP to a server thread in this process.
Median wall time per step, and DOE objects per connect.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient, SpdmEmuServer  # noqa: E402
from vfiouser_tdisp.tsm.cca.host import CcaHost, CcaRealm  # noqa: E402
from vfiouser_tdisp.tsm.cca.rmm import Rmm  # noqa: E402
from vfiouser_tdisp.tsm.platform import (  # noqa: E402
    DoeTransport,
    in_process_device,
    socket_transport,
)

STEPS = ("connect", "bind", "lock", "accept", "unlock", "unbind", "disconnect")


def one_round(transport: DoeTransport) -> tuple[dict[str, float], int]:
    host = CcaHost(Rmm(), transport)
    realm = CcaRealm(host)
    actions: dict[str, Callable[[], object]] = {
        "connect": host.connect, "bind": lambda: host.bind(0x10, lock=False),
        "lock": lambda: realm.lock(0x10), "accept": lambda: realm.accept(0x10),
        "unlock": lambda: realm.unlock(0x10), "unbind": lambda: host.unbind(0x10),
        "disconnect": host.disconnect}
    times = {}
    objects = 0
    for step in STEPS:
        start = time.perf_counter()
        actions[step]()
        times[step] = time.perf_counter() - start
        if step == "connect":
            objects = host.objects_sent
    return times, objects


def report(name: str, transport: DoeTransport, rounds: int) -> None:
    runs = [one_round(transport) for _ in range(rounds)]
    cols = "  ".join(f"{s} {statistics.median(r[0][s] for r in runs) * 1e3:7.2f} ms"
                     for s in STEPS)
    total = statistics.median(sum(r[0].values()) for r in runs)
    print(f"{name:<16} {cols}  whole {total * 1e3:7.2f} ms  ({runs[0][1]} objects at connect)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        transport, dev = in_process_device(identity_dir=cache)
        report("in-process", transport, args.rounds)
        server = SpdmEmuServer(dev.doe, threading.RLock(), port=0)
        server.start()
        client = SpdmEmuClient("127.0.0.1", server.port)
        try:
            report("spdm-emu socket", socket_transport(client), args.rounds)
        finally:
            client.close()
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
