#!/usr/bin/env python3
"""Intel TDX Connect figures without a guest: each step through the TDX module emulator.

Run on demand (not part of the tests):

    python3 benchmarks/tdx.py [--rounds N]

Per round, the steps of ``vfiouser-tdisp tsm --platform tdx`` (connect, bind, lock,
accept, heartbeat, key_update, seamldr_info, module_update, update_bad_image, unlock,
unbind, disconnect), each against a fresh module.  "in-process" reaches the device's DOE
mailbox registers in this process; "spdm-emu socket" carries every object over TCP to a
``serve --spdm-port`` server in this process (BARs assigned over vfio-user).  Median wall
time per step and DOE objects per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient  # noqa: E402
from vfiouser_tdisp.server import start_devices  # noqa: E402
from vfiouser_tdisp.tsm.platform import (  # noqa: E402
    DoeTransport,
    assign_bars,
    in_process_device,
    socket_transport,
)
from vfiouser_tdisp.tsm.tdx.cli import DEFAULT_STEPS, sequence_steps  # noqa: E402
from vfiouser_tdisp.tsm.tdx.host import TdxHost, TdxTd  # noqa: E402
from vfiouser_tdisp.tsm.tdx.module import TdxModule  # noqa: E402
from vfiouser_tdisp.vfio_user.client import VfioUserClient  # noqa: E402


def one_round(transport: DoeTransport) -> tuple[dict[str, float], int]:
    host = TdxHost(TdxModule(), transport)
    table = sequence_steps(host, TdxTd(host), "bench", None, None)
    times = {}
    for step in DEFAULT_STEPS:
        start = time.perf_counter()
        table[step]()
        times[step] = time.perf_counter() - start
    return times, host.objects_sent


def report(name: str, transport: DoeTransport, rounds: int) -> None:
    runs = [one_round(transport) for _ in range(rounds)]
    print(f"{name}: {rounds} rounds, {runs[0][1]} DOE objects per round")
    for step in DEFAULT_STEPS:
        ms = statistics.median(r[0][step] for r in runs) * 1000
        print(f"  {step:<18} {ms:8.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tdx-bench") as tmp:
        transport, _dev = in_process_device("virtio-rng", tmp)
        report("in-process", transport, args.rounds)
        path = f"{tmp}/d.sock"
        running = start_devices([path], "virtio-rng", spdm_port=0,
                                identity_options={"identity_dir": tmp})
        try:
            fn0 = VfioUserClient(path)
            fn0.version()
            assign_bars(fn0.config_read32, fn0.config_write32)
            client = SpdmEmuClient("127.0.0.1", running.spdm_servers[0].port)
            try:
                report("spdm-emu socket", socket_transport(client), args.rounds)
            finally:
                client.close()
                fn0.close()
        finally:
            running.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
