#!/usr/bin/env python3
"""Codec figures: pack and unpack time of a few SPDM, TDISP, IDE_KM and DOE messages.

Run on demand (not part of the tests):

    python3 benchmarks/codec.py [--number N]

Each figure is the best of five runs of ``N`` calls, in microseconds per call,
for messages declared on :mod:`vfiouser_tdisp.wire` as the DOE/SPDM path uses
them (negotiated sizes for the signed responses).
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from vfiouser_tdisp.doe.protocols import DoeHeader
from vfiouser_tdisp.ide.km import KEY_PROG
from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.tdisp import messages as t


def cases() -> dict[str, tuple[Any, m.Sizes | None]]:
    sizes = m.Sizes(version=0x12, hash=48, signature=96, dhe=96, summary_hash=True,
                    signed=True)
    return {
        "SPDM GET_VERSION": (m.GET_VERSION(), None),
        "SPDM GET_MEASUREMENTS": (m.GET_MEASUREMENTS(spdm_version=0x13, param1=1,
                                                     param2=0xFF, nonce=bytes(32)), None),
        "SPDM CHALLENGE_AUTH": (m.CHALLENGE_AUTH(
            spdm_version=0x12, cert_chain_hash=bytes(48), measurement_summary_hash=bytes(48),
            opaque_data=bytes(4), signature=bytes(96)), sizes),
        "SPDM MEASUREMENTS": (m.MEASUREMENTS(
            spdm_version=0x12, number_of_blocks=1, measurement_record=bytes(100),
            signature=bytes(96)), sizes),
        "SPDM VENDOR_DEFINED_REQUEST": (m.VENDOR_DEFINED_REQUEST(
            spdm_version=0x12, standard_id=3, vendor_id=b"\x01\x00",
            vendor_defined_req_payload=bytes(20)), None),
        "SPDM KEY_EXCHANGE_RSP": (m.KEY_EXCHANGE_RSP(
            spdm_version=0x12, exchange_data=bytes(96), measurement_summary_hash=bytes(48),
            opaque_data=bytes(12), signature=bytes(96), responder_verify_data=bytes(48)),
            sizes),
        "SPDM NEGOTIATE_ALGORITHMS": (m.NEGOTIATE_ALGORITHMS(
            spdm_version=0x12, param1=2, length=40, req_alg_struct=bytes(8)), None),
        "TDISP LOCK_INTERFACE_REQUEST": (t.LOCK_INTERFACE_REQUEST(flags=1), None),
        "TDISP TDISP_VERSION": (t.TDISP_VERSION(version_num_entry=b"\x10"), None),
        "DOE header": (DoeHeader(1, 1, 0, 10), None),
        "IDE_KM KEY_PROG": (KEY_PROG(stream_id=1, key=bytes(32), ifv=bytes(8)), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20000)
    n = parser.parse_args().number
    for name, (msg, sizes) in cases().items():
        pack, unpack = measure(msg, sizes, n)
        print(f"{name:30s} pack {pack:6.2f} us   unpack {unpack:6.2f} us")


def measure(msg: Any, sizes: m.Sizes | None, n: int) -> tuple[float, float]:
    """Microseconds per pack() and per unpack() call."""
    args = () if sizes is None else (sizes,)
    data = msg.pack(*args)
    cls = type(msg)
    pack = min(timeit.repeat(lambda: msg.pack(*args), number=n, repeat=5)) / n * 1e6
    unpack = min(timeit.repeat(lambda: cls.unpack(data, *args), number=n, repeat=5)) / n * 1e6
    return pack, unpack

if __name__ == "__main__":
    main()
