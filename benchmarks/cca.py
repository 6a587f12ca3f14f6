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

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _steps  # noqa: E402
from vfiouser_tdisp.tsm.cca.host import CcaHost, CcaRealm  # noqa: E402
from vfiouser_tdisp.tsm.cca.rmm import Rmm  # noqa: E402
from vfiouser_tdisp.tsm.platform import (  # noqa: E402
    DoeTransport,
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


def main() -> int:
    return _steps.main(__doc__ or "", STEPS, one_round, lambda c: f"{c[0]} objects at connect")


if __name__ == "__main__":
    sys.exit(main())
