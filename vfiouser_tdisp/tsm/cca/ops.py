"""What the RMM says to the device, operation by operation (flows for :mod:`.devcomm`).

Each function is a flow: it yields the objects to send / cache and returns the
operation's result.  SPDM (DSP0274/DSP0277) through the project's requester, IDE_KM
and TDISP (PCIe r6 §6.33, TDISP 1.0) through :mod:`vfiouser_tdisp.tsm.core`; the RMM
checks the certificate chain and every signature itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ...ide.capability import KeyDirection, KeySubstream
from ...spdm.requester import RequesterSession, SpdmRequester, SpdmRequesterError
from ...tdisp import messages as t
from ..core import ALL_SUBSTREAMS, IdeKmRequester, PciSigChannel, TdispRequester, parse_report
from . import model
from .abi import RmiDevCommObject as Obj
from .abi import RmiSignatureAlgorithm as Sig
from .devcomm import BlockingBridge, Cache, DevFlow, StreamWait


@dataclass
class SpdmContext:
    """The RMM's SPDM connection to one endpoint PDEV (and its session)."""

    name: str
    bridge: BlockingBridge = field(init=False)
    spdm: SpdmRequester = field(init=False)
    session: RequesterSession | None = None
    leaf_key: Any = None

    def __post_init__(self) -> None:
        self.bridge = BlockingBridge(self.name)
        self.spdm = SpdmRequester(self.bridge.transport, name=f"rmm.{self.name}")

    def channel(self) -> PciSigChannel:
        if self.session is None:
            raise SpdmRequesterError("no secured session")
        return PciSigChannel(self.spdm, self.session)


def identity(ctx: SpdmContext, slot: int) -> DevFlow[None]:
    """NEW -> NEEDS_KEY: VCA, digests, certificate chain (cached), chain checked."""
    run = ctx.bridge.run
    yield from run(ctx.spdm.init_connection)
    yield Cache(Obj.VCA, bytes(ctx.spdm.message_a))
    yield from run(ctx.spdm.get_digests)
    chain: bytes = yield from run(lambda: ctx.spdm.get_certificate(slot))
    yield Cache(Obj.CERTIFICATE, chain)
    # Length, RootHash, every link and the leaf key type; the trust anchor is the
    # relying party's business (the realm checks the chain against its own root).
    ctx.leaf_key = ctx.spdm.verify_certificate_chain()


def public_key_matches(leaf: Any, algo: int, key: bytes, metadata: bytes) -> bool:
    """Does the key the host passed in RMI_PDEV_SET_PUBKEY equal the chain's leaf key?

    ECDSA: the raw (uncompressed SEC1) point; RSA-3072: modulus in ``key``, public
    exponent in ``metadata`` (both big-endian), as the Linux host passes them.
    """
    if algo in (Sig.RMI_SIGNATURE_ALGORITHM_ECDSA_P256, Sig.RMI_SIGNATURE_ALGORITHM_ECDSA_P384):
        curve = ec.SECP256R1 if algo == Sig.RMI_SIGNATURE_ALGORITHM_ECDSA_P256 else ec.SECP384R1
        if not isinstance(leaf, ec.EllipticCurvePublicKey) or not isinstance(leaf.curve, curve):
            return False
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        return leaf.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) == key
    if algo == Sig.RMI_SIGNATURE_ALGORITHM_RSASSA_3072:
        if not isinstance(leaf, rsa.RSAPublicKey) or leaf.key_size != 3072:
            return False
        nums = leaf.public_numbers()
        return (int.from_bytes(key, "big"), int.from_bytes(metadata, "big")) == (nums.n, nums.e)
    return False


def session(ctx: SpdmContext) -> DevFlow[None]:
    """HAS_KEY -> READY: KEY_EXCHANGE (signature checked against the leaf key) + FINISH."""
    ctx.session = yield from ctx.bridge.run(ctx.spdm.start_session)


def stop(ctx: SpdmContext) -> DevFlow[None]:
    """READY/ERROR -> STOPPED: END_SESSION if a session is open."""
    if ctx.session is not None:
        sess, ctx.session = ctx.session, None
        try:
            yield from ctx.bridge.run(lambda: ctx.spdm.end_session(sess))
        except Exception:  # the device may be gone: stopping still succeeds
            pass


@dataclass
class StreamKeys:
    stream_id: int
    keys: dict[tuple[KeySubstream, KeyDirection], tuple[bytes, bytes]]
    ep_programmed: bool = False
    rp_programmed: bool = False


def new_stream_keys(stream_id: int) -> StreamKeys:
    return StreamKeys(stream_id, {(sub, d): (os.urandom(32), os.urandom(8))
                                  for sub, d in ALL_SUBSTREAMS})


def stream_connect_ep(ctx: SpdmContext, keys: StreamKeys) -> DevFlow[None]:
    """IDE_KM on the endpoint: QUERY, KEY_PROG x6, (wait for the root port), K_SET_GO x6."""
    km = IdeKmRequester(ctx.channel())
    yield from ctx.bridge.run(km.query)

    def program() -> None:
        for (sub, d), (key, ifv) in keys.keys.items():
            km.key_prog(keys.stream_id, 0, d, sub, key, ifv)
    yield from ctx.bridge.run(program)
    keys.ep_programmed = True
    while not keys.rp_programmed:
        yield StreamWait()

    def go() -> None:
        for sub, d in keys.keys:
            km.k_set(True, keys.stream_id, 0, d, sub)
    yield from ctx.bridge.run(go)


def stream_connect_rp(keys: StreamKeys) -> DevFlow[None]:
    """The root port's half: its key registers take the same keys, no DOE traffic
    ([MODEL]: QEMU's root port has no IDE capability)."""
    keys.rp_programmed = True
    return
    yield  # a flow that sends nothing


def stream_disconnect_ep(ctx: SpdmContext, keys: StreamKeys) -> DevFlow[None]:
    km = IdeKmRequester(ctx.channel())

    def stop_all() -> None:
        for sub, d in keys.keys:
            km.k_set(False, keys.stream_id, 0, d, sub)
    yield from ctx.bridge.run(stop_all)


def vdev_init(ctx: SpdmContext, function_id: int) -> DevFlow[None]:
    """NEW -> UNLOCKED: TDISP version and capabilities; the TDI must end CONFIG_UNLOCKED."""
    tdisp = TdispRequester(ctx.channel())

    def run() -> None:
        tdisp.version(function_id)
        tdisp.capabilities(function_id)
        if tdisp.state(function_id) is not t.TdiState.CONFIG_UNLOCKED:
            tdisp.stop(function_id)
    yield from ctx.bridge.run(run)


def vdev_lock(ctx: SpdmContext, function_id: int, stream_id: int) -> DevFlow[bytes]:
    """UNLOCKED -> LOCKED: LOCK_INTERFACE; returns START_INTERFACE_NONCE."""
    tdisp = TdispRequester(ctx.channel())
    nonce: bytes = yield from ctx.bridge.run(lambda: tdisp.lock(
        function_id, flags=model.LOCK_FLAGS, default_stream_id=stream_id,
        mmio_reporting_offset=model.MMIO_REPORTING_OFFSET))
    return nonce


def vdev_report(ctx: SpdmContext, function_id: int) -> DevFlow[bytes]:
    """GET_DEVICE_INTERFACE_REPORT (all portions), cached as INTERFACE_REPORT."""
    tdisp = TdispRequester(ctx.channel())
    report: bytes = yield from ctx.bridge.run(lambda: tdisp.report(function_id))
    parse_report(report)  # must decode before the RMM vouches for it
    yield Cache(Obj.INTERFACE_REPORT, report)
    return report


def vdev_measurements(ctx: SpdmContext, raw: bool) -> DevFlow[bytes]:
    """Signed GET_MEASUREMENTS (all blocks) in the session, cached as MEASUREMENTS."""
    sess = ctx.session
    if sess is None:
        raise SpdmRequesterError("no secured session")

    def run() -> bytes:
        ctx.spdm.get_measurements(signed=True, raw=raw, session=sess)
        # The exact response bytes the signature covered (DOE padding excluded).
        return bytes(ctx.spdm._last_exact)
    response: bytes = yield from ctx.bridge.run(run)
    yield Cache(Obj.MEASUREMENTS, response)
    return response


def vdev_start(ctx: SpdmContext, function_id: int, nonce: bytes) -> DevFlow[None]:
    tdisp = TdispRequester(ctx.channel())
    yield from ctx.bridge.run(lambda: tdisp.start(function_id, nonce))


def vdev_stop(ctx: SpdmContext, function_id: int) -> DevFlow[bool]:
    """STOP_INTERFACE; returns whether the device confirmed it.  [MODEL] Unlocking
    succeeds either way (like PDEV_STOP): the RMM withdraws the realm's access whatever
    the device says, so an ERROR VDEV can always be unlocked and destroyed."""
    try:
        tdisp = TdispRequester(ctx.channel())
        yield from ctx.bridge.run(lambda: tdisp.stop(function_id))
    except Exception:
        return False
    return True


def report_ranges(report: bytes) -> list[tuple[int, int]]:
    """[base, top) of every MMIO range of an interface report (page-number encoding)."""
    parsed = parse_report(report)
    shift = model.REPORT_PAGE_SHIFT
    return [(r.first_page << shift, (r.first_page + r.number_of_pages) << shift)
            for r in parsed.mmio_range]
