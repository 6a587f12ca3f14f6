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

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _steps  # noqa: E402
from vfiouser_tdisp.events import LOG, Recorder  # noqa: E402
from vfiouser_tdisp.tsm.platform import (  # noqa: E402
    DoeTransport,
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


def main() -> int:
    return _steps.main(__doc__ or "", STEPS, one_round,
                       lambda c: f"{c[0]} PSP commands, {c[1]} DOE objects")


if __name__ == "__main__":
    sys.exit(main())
