"""What the RMM says to the device, operation by operation (flows for :mod:`.devcomm`).

Each function is a flow: it yields the objects to send / cache and returns the
operation's result.  SPDM (DSP0274/DSP0277) through the project's requester, IDE_KM
and TDISP (PCIe r6 §6.33, TDISP 1.0) through :mod:`vfiouser_tdisp.tsm.core`; the RMM
checks the certificate chain and every signature itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ...ide.capability import KeyDirection, KeySubstream
from ...spdm import messages as m
from ...spdm.requester import RequesterSession, SpdmFlow, SpdmRequester, SpdmRequesterError
from ...tdisp import messages as t
from ..core import ALL_SUBSTREAMS, IdeKmRequester, PciSigChannel, TdispRequester, parse_report
from . import model
from .abi import RmiDevCommObject as Obj
from .abi import RmiDevCommProtocol as Proto
from .abi import RmiSignatureAlgorithm as Sig
from .devcomm import Cache, DevFlow, Send, StreamWait

T = TypeVar("T")

# The RMM's GET_CAPABILITIES Flags: without HBEAT_CAP.  The RMM runs only when the
# host calls it and has no call that would make it send HEARTBEAT, so it must not ask
# for heartbeats (TF-RMM's CMA_SPDM_GET_CAPABILITIES_REQUEST_FLAGS leave HBEAT_CAP out
# too): the device then answers HeartbeatPeriod 0 and an idle session lasts (DSP0274
# KEY_EXCHANGE_RSP).
RMM_REQUESTER_FLAGS = SpdmRequester.CAP_FLAGS & ~m.CapFlags.HBEAT_CAP


def spdm(flow: SpdmFlow[T]) -> DevFlow[T]:
    """A steppable requester flow as an RMM flow: each SpdmRequest becomes a Send (the
    host carries it; DOE type 2 when secured), each response resumes the requester."""
    try:
        request = next(flow)
        while True:
            response = yield Send(Proto.SECURE_SPDM if request.secured else Proto.SPDM,
                                  request.payload)
            request = flow.send(response or b"")
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


@dataclass
class SpdmContext:
    """The RMM's SPDM connection to one endpoint PDEV (and its session)."""

    name: str
    spdm: SpdmRequester = field(init=False)
    session: RequesterSession | None = None
    leaf_key: Any = None

    def __post_init__(self) -> None:
        # No transport: the RMM only steps flows; the host carries every object.
        self.spdm = SpdmRequester(name=f"rmm.{self.name}", cap_flags=RMM_REQUESTER_FLAGS)

    def channel(self) -> PciSigChannel:
        if self.session is None:
            raise SpdmRequesterError("no secured session")
        return PciSigChannel(self.spdm, self.session)


def identity(ctx: SpdmContext, slot: int) -> DevFlow[None]:
    """NEW -> NEEDS_KEY: VCA, digests, certificate chain (cached), chain checked."""
    yield from spdm(ctx.spdm.init_connection_flow())
    yield Cache(Obj.VCA, bytes(ctx.spdm.message_a))
    yield from spdm(ctx.spdm.get_digests_flow())
    chain = yield from spdm(ctx.spdm.get_certificate_flow(slot))
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
    ctx.session = yield from spdm(ctx.spdm.start_session_flow())


def stop(ctx: SpdmContext) -> DevFlow[None]:
    """READY/ERROR -> STOPPED: END_SESSION if a session is open."""
    if ctx.session is not None:
        sess, ctx.session = ctx.session, None
        try:
            yield from spdm(ctx.spdm.end_session_flow(sess))
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
    yield from spdm(km.query_flow())
    for (sub, d), (key, ifv) in keys.keys.items():
        yield from spdm(km.key_prog_flow(keys.stream_id, 0, d, sub, key, ifv))
    keys.ep_programmed = True
    while not keys.rp_programmed:
        yield StreamWait()
    for sub, d in keys.keys:
        yield from spdm(km.k_set_flow(True, keys.stream_id, 0, d, sub))


def stream_connect_rp(keys: StreamKeys) -> DevFlow[None]:
    """The root port's half: its key registers take the same keys, no DOE traffic
    ([MODEL]: QEMU's root port has no IDE capability)."""
    keys.rp_programmed = True
    return
    yield  # a flow that sends nothing


def stream_disconnect_ep(ctx: SpdmContext, keys: StreamKeys) -> DevFlow[None]:
    km = IdeKmRequester(ctx.channel())
    for sub, d in keys.keys:
        yield from spdm(km.k_set_flow(False, keys.stream_id, 0, d, sub))


def vdev_init(ctx: SpdmContext, function_id: int) -> DevFlow[None]:
    """NEW -> UNLOCKED: TDISP version and capabilities; the TDI must end CONFIG_UNLOCKED."""
    tdisp = TdispRequester(ctx.channel())
    yield from spdm(tdisp.version_flow(function_id))
    yield from spdm(tdisp.capabilities_flow(function_id))
    if (yield from spdm(tdisp.state_flow(function_id))) is not t.TdiState.CONFIG_UNLOCKED:
        yield from spdm(tdisp.stop_flow(function_id))


def vdev_lock(ctx: SpdmContext, function_id: int, stream_id: int) -> DevFlow[bytes]:
    """UNLOCKED -> LOCKED: LOCK_INTERFACE; returns START_INTERFACE_NONCE."""
    tdisp = TdispRequester(ctx.channel())
    nonce: bytes = yield from spdm(tdisp.lock_flow(
        function_id, flags=model.LOCK_FLAGS, default_stream_id=stream_id,
        mmio_reporting_offset=model.MMIO_REPORTING_OFFSET))
    return nonce


def vdev_report(ctx: SpdmContext, function_id: int) -> DevFlow[bytes]:
    """GET_DEVICE_INTERFACE_REPORT (all portions), cached as INTERFACE_REPORT."""
    tdisp = TdispRequester(ctx.channel())
    report: bytes = yield from spdm(tdisp.report_flow(function_id))
    parse_report(report)  # must decode before the RMM vouches for it
    yield Cache(Obj.INTERFACE_REPORT, report)
    return report


def vdev_measurements(ctx: SpdmContext, raw: bool, nonce: bytes) -> DevFlow[bytes]:
    """Signed GET_MEASUREMENTS (all blocks) in the session, cached as MEASUREMENTS.
    ``nonce``: the 32 bytes of rmi_vdev_measure_params.nonce, sent as the request's
    Nonce field (DSP0274 §10.11), so the realm's freshness value is what the device
    signs over."""
    sess = ctx.session
    if sess is None:
        raise SpdmRequesterError("no secured session")

    yield from spdm(ctx.spdm.get_measurements_flow(signed=True, raw=raw, session=sess,
                                                       nonce=nonce))
    # The exact response bytes the signature covered (DOE padding excluded).
    response = bytes(ctx.spdm._last_exact)
    yield Cache(Obj.MEASUREMENTS, response)
    return response


def vdev_start(ctx: SpdmContext, function_id: int, nonce: bytes) -> DevFlow[None]:
    tdisp = TdispRequester(ctx.channel())
    yield from spdm(tdisp.start_flow(function_id, nonce))


def vdev_stop(ctx: SpdmContext, function_id: int) -> DevFlow[bool]:
    """STOP_INTERFACE; returns whether the device confirmed it.  [MODEL] Unlocking
    succeeds either way (like PDEV_STOP): the RMM withdraws the realm's access whatever
    the device says, so an ERROR VDEV can always be unlocked and destroyed."""
    try:
        tdisp = TdispRequester(ctx.channel())
        yield from spdm(tdisp.stop_flow(function_id))
    except Exception:
        return False
    return True


def report_ranges(report: bytes) -> list[tuple[int, int]]:
    """[base, top) of every MMIO range of an interface report (page-number encoding)."""
    parsed = parse_report(report)
    shift = model.REPORT_PAGE_SHIFT
    return [(r.first_page << shift, (r.first_page + r.number_of_pages) << shift)
            for r in parsed.mmio_range]
