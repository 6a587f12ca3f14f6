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

from vfiouser_tdisp.device.device import Device, get_profile  # noqa: E402
from vfiouser_tdisp.doe.driver import DoeDriver  # noqa: E402
from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient, SpdmEmuServer  # noqa: E402
from vfiouser_tdisp.tsm.cca.host import (  # noqa: E402
    CcaHost,
    CcaRealm,
    DoeTransport,
    object_transport,
    socket_transport,
)
from vfiouser_tdisp.tsm.cca.rmm import Rmm  # noqa: E402

STEPS = ("connect", "bind", "lock", "accept", "unlock", "unbind", "disconnect")


def assign_bars(dev: Device) -> tuple[Callable[[int], int], Callable[[int, int], None]]:
    fn = dev.dsm

    def read32(off: int) -> int:
        return int.from_bytes(fn.config.read(off, 4), "little")

    def write32(off: int, value: int) -> None:
        fn.config.write(off, value.to_bytes(4, "little"))
    base = 0xE000_0000
    for index in (0, 2, 4):   # virtio-rng: three 64-bit BARs at most
        reg = 0x10 + 4 * index
        write32(reg, 0xFFFF_FFFF)
        low = read32(reg)
        if low == 0:
            continue
        write32(reg + 4, 0xFFFF_FFFF)
        size = (~((read32(reg + 4) << 32) | (low & ~0xF)) + 1) & ((1 << 64) - 1)
        base = (base + size - 1) & ~(size - 1)
        write32(reg, base & 0xFFFF_FFFF)
        write32(reg + 4, base >> 32)
        base += size
    write32(0x04, read32(0x04) | 0x6)
    return read32, write32


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
        dev = Device(get_profile("virtio-rng"), identity_options={"identity_dir": cache})
        _ = dev.identity
        read32, write32 = assign_bars(dev)
        report("in-process", object_transport(DoeDriver(read32, write32, 0x100).exchange),
               args.rounds)
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
