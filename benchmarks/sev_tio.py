#!/usr/bin/env python3
"""AMD SEV-TIO figures without a guest: each step of the sequence through the PSP emulator.

Run on demand (not part of the tests):

    python3 benchmarks/sev_tio.py [--rounds N]

Per round: connect (TIO_DEV_CREATE + the TIO_DEV_CONNECT loop: SPDM identity, session,
measurements, IDE_KM), lock (guest SEV_TIO_OP BIND -> TIO_TDI_CREATE + TIO_TDI_BIND loop,
TDI_INFO message, evidence digests checked), accept (RUN -> TIO_TDI_BIND with RUN_FORCE,
SDTE_WRITE, MMIO_VALIDATE per TEE range), unlock (STOP, invalidations, UNBIND), disconnect.
"in-process" reaches the device's DOE mailbox registers in this process; "spdm-emu socket"
carries every object over TCP to a server thread in this process.  Median wall time per
step, PSP commands issued (SPDM_REQUEST re-issues included) and DOE objects per round.
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
from vfiouser_tdisp.events import LOG, Recorder  # noqa: E402
from vfiouser_tdisp.tsm.platform import (  # noqa: E402
    DoeTransport,
    in_process_device,
    socket_transport,
)
from vfiouser_tdisp.tsm.sev_tio.host import SevTioHost, SnpGuest  # noqa: E402
from vfiouser_tdisp.tsm.sev_tio.psp import Psp  # noqa: E402

STEPS = ("connect", "lock", "accept", "unlock", "disconnect")
RID = 0x0100


def one_round(transport: DoeTransport) -> tuple[dict[str, float], int, int]:
    psp = Psp()
    host = SevTioHost(psp, transport)
    host.init()
    guest = SnpGuest(psp, host.mem, host.create_guest())
    host.assign(RID, 0)
    ev: list[object] = []
    actions: dict[str, Callable[[], object]] = {
        "connect": host.connect, "lock": lambda: ev.append(guest.lock(RID)),
        "accept": lambda: guest.accept(RID, ev[0]),  # type: ignore[arg-type]
        "unlock": lambda: guest.unlock(RID, ev[0]),  # type: ignore[arg-type]
        "disconnect": host.disconnect}
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    times = {}
    try:
        for step in STEPS:
            start = time.perf_counter()
            actions[step]()
            times[step] = time.perf_counter() - start
    finally:
        unsubscribe()
    return times, len(rec.of("psp.command")), host.objects_sent


def report(name: str, transport: DoeTransport, rounds: int) -> None:
    runs = [one_round(transport) for _ in range(rounds)]
    cols = "  ".join(f"{s} {statistics.median(r[0][s] for r in runs) * 1e3:7.2f} ms"
                     for s in STEPS)
    total = statistics.median(sum(r[0].values()) for r in runs)
    print(f"{name:<16} {cols}  whole {total * 1e3:7.2f} ms  "
          f"({runs[0][1]} PSP commands, {runs[0][2]} DOE objects)")


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
