"""Shared pieces for the SPDM tests: one generated identity per test session,
a measurement source, responders and requesters wired in-process."""

from __future__ import annotations

from pathlib import Path

from vfiouser_tdisp.doe.protocols import DoeDispatcher
from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.spdm.algorithms import HashAlgo
from vfiouser_tdisp.spdm.identity import DeviceIdentity, PcieSan
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.spdm.responder import ResponderConfig, SpdmResponder

SAN = PcieSan(0x1B36, 0x10F0, 0xFF0000, 1, serial=0x1122334455667788)
_IDENTITY: dict[str, DeviceIdentity] = {}


def identity(cache: Path | None = None) -> DeviceIdentity:
    if "id" not in _IDENTITY:
        _IDENTITY["id"] = DeviceIdentity.generated(
            SAN, ("ecdsa-p384", "ecdsa-p256", "rsassa-3072"), cache_dir=cache,
            label="spdm-tests")
    return _IDENTITY["id"]


class Measurements:
    """Four blocks like the device's; ``config`` changes block 4."""

    def __init__(self) -> None:
        self.config = b"config-0"

    def measurement_blocks(self, hash_algo: HashAlgo | None,
                           raw_requested: bool) -> list[m.MeasurementBlock]:
        def v(data: bytes) -> tuple[bytes, bool]:
            return (data, True) if hash_algo is None or raw_requested else \
                (hash_algo.digest(data), False)
        out = []
        for index, vtype, data in ((1, 1, b"firmware"), (3, 2, b"hardware"),
                                   (4, 3, self.config)):
            value, raw = v(data)
            out.append(m.MeasurementBlock(index, vtype, value, raw, index != 4))
        out.insert(1, m.MeasurementBlock(2, 6, b"1.0.0", True))
        return out


def responder(**config: object) -> SpdmResponder:
    config.setdefault("measurements", Measurements())
    cfg = ResponderConfig(identity=identity(), **config)  # type: ignore[arg-type]
    return SpdmResponder(cfg, name="test.spdm")


def dispatcher(resp: SpdmResponder) -> DoeDispatcher:
    doe = DoeDispatcher("test.doe")
    doe.register(1, 1, resp.handle_cma)
    doe.register(1, 2, resp.handle_secured)
    return doe


def requester(resp: SpdmResponder, **options: object) -> SpdmRequester:
    return SpdmRequester(dispatcher(resp).exchange, **options)  # type: ignore[arg-type]
