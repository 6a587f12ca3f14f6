"""The SPDM responder request by request, on bytes built with the message classes.

Complements test_spdm_errors.py: every request kind truncated, extended,
padded and sent with the wrong version; requests between GET_VERSION and
ALGORITHMS; FINISH and the other session requests in the handshake phase;
chunked responses and requests assembled by hand; secured-record damage;
and the "bad input loses nothing" rule -- an ERROR leaves every transcript
as it was, so the next CHALLENGE / signed MEASUREMENTS still verify.
"""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.doe.protocols import DoeError, build_object, parse_object
from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.spdm.algorithms import DHES
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.spdm.responder import SpdmResponder, VendorError

from .spdm_helpers import (
    REQ_FLAGS,
    E,
    err,
    get_caps,
    get_version,
    negotiate,
    requests_after_vca,
    vca,
    works,
)
from .spdm_support import dispatcher, identity, requester, responder

VENDOR = (3, b"\x01\x00")


def vendor_handler(ctx, payload: bytes) -> bytes:  # type: ignore[no-untyped-def]
    if payload.startswith(b"raise:"):
        raise VendorError(int(payload[6:]))
    return b"echo:" + payload


@pytest.fixture
def r() -> SpdmResponder:
    resp = responder()
    resp.register_vendor_protocol(*VENDOR, vendor_handler)
    return resp


def valid_requests(v: int) -> dict[str, bytes]:
    """requests_after_vca with a KEY_EXCHANGE that carries a real P-384 point."""
    reqs = requests_after_vca(v)
    _, point = DHES["secp384r1"].generate()
    reqs["KEY_EXCHANGE"] = m.KEY_EXCHANGE(spdm_version=v, req_session_id=7,
                                          exchange_data=point).pack(m.Sizes(version=v, dhe=96))
    return reqs


NAMES = list(requests_after_vca())


# -- VCA ------------------------------------------------------------------------------------
def test_get_version_resets_the_connection(r: SpdmResponder) -> None:
    vca(r)
    req = requester(r, versions=(0x12,))
    req.authenticate()
    req.start_session()
    assert r.handle_cma(get_version())[1] == m.VERSION_CODE
    assert not r.sessions
    assert err(r.handle_cma(m.GET_DIGESTS(spdm_version=0x12).pack())) == E.UnexpectedRequest
    assert err(r.handle_cma(negotiate())) == E.UnexpectedRequest
    assert r.handle_cma(get_caps())[1] == m.CAPABILITIES_CODE
    assert r.handle_cma(negotiate())[1] == m.ALGORITHMS_CODE
    works(r)


def test_bad_get_version_keeps_the_connection(r: SpdmResponder) -> None:
    vca(r)
    for bad in (get_version() + b"\x01", get_version() + bytes(4), b"\x11\x84\0\0",
                get_version()[:3]):
        assert err(r.handle_cma(bad)) in (E.InvalidRequest, E.VersionMismatch), bad.hex()
        works(r)
    assert r.handle_cma(get_version() + bytes(3))[1] == m.VERSION_CODE  # DOE padding


@pytest.mark.parametrize("stage", ["version", "capabilities"])
@pytest.mark.parametrize("name", NAMES)
def test_requests_before_algorithms(r: SpdmResponder, stage: str, name: str) -> None:
    r.handle_cma(get_version())
    if stage == "capabilities":
        r.handle_cma(get_caps())
    expected = E.UnexpectedRequest
    if name == "CHUNK_GET" and stage == "capabilities":
        expected = E.InvalidRequest  # chunking is on from CAPABILITIES; nothing to get
    assert err(r.handle_cma(valid_requests(0x12)[name])) == expected
    if stage == "version":
        assert r.handle_cma(get_caps())[1] == m.CAPABILITIES_CODE
    assert r.handle_cma(negotiate())[1] == m.ALGORITHMS_CODE
    works(r)


def test_capabilities_and_algorithms_padding_and_garbage(r: SpdmResponder) -> None:
    r.handle_cma(get_version())
    for bad in (get_caps() + b"\x01", get_caps() + bytes(4)):
        assert err(r.handle_cma(bad)) == E.InvalidRequest
    assert r.handle_cma(get_caps() + bytes(3))[1] == m.CAPABILITIES_CODE
    for bad in (negotiate() + b"\x01", negotiate() + b"\0\0\x07", negotiate() + bytes(4)):
        assert err(r.handle_cma(bad)) == E.InvalidRequest, bad.hex()
    assert r.handle_cma(negotiate() + bytes(3))[1] == m.ALGORITHMS_CODE
    works(r)


def test_negotiate_algorithms_length_field(r: SpdmResponder) -> None:
    r.handle_cma(get_version())
    r.handle_cma(get_caps())
    good = negotiate()
    for length in (31, len(good) - 4, len(good) + 4, 0xFFFF):
        bad = good[:4] + struct.pack("<H", length) + good[6:]
        assert err(r.handle_cma(bad)) == E.InvalidRequest, length
    assert r.handle_cma(good)[1] == m.ALGORITHMS_CODE


def test_no_key_exchange_without_a_common_dhe(r: SpdmResponder) -> None:
    r.handle_cma(get_version())
    r.handle_cma(get_caps())
    alg = m.ALGORITHMS.unpack(r.handle_cma(negotiate(structs=[(2, 0), (3, 2), (4, 0), (5, 1)])))
    assert {s.alg_type: s.alg_supported for s in alg.alg_structs()}[2] == 0
    assert err(r.handle_cma(valid_requests(0x12)["KEY_EXCHANGE"])) == E.UnsupportedRequest
    works(r)


def test_no_key_exchange_when_the_requester_lacks_key_ex_cap(r: SpdmResponder) -> None:
    flags = REQ_FLAGS & ~(m.CapFlags.KEY_EX_CAP | m.CapFlags.ENCRYPT_CAP | m.CapFlags.MAC_CAP
                          | m.CapFlags.HBEAT_CAP | m.CapFlags.KEY_UPD_CAP)
    vca(r, flags=flags)
    assert err(r.handle_cma(valid_requests(0x12)["KEY_EXCHANGE"])) == E.UnsupportedRequest
    works(r)


# -- every request: truncated, extended, padded, wrong version --------------------------------
@pytest.mark.parametrize("v", [0x12, 0x13])
@pytest.mark.parametrize("name", NAMES)
def test_truncated_requests(r: SpdmResponder, v: int, name: str) -> None:
    vca(r, v)
    good = valid_requests(v)[name]
    for cut in {1, len(good) // 2, len(good) - 3}:
        if 0 < cut < len(good):
            assert err(r.handle_cma(good[:-cut])) == E.InvalidRequest, (name, cut)
    works(r, v)


@pytest.mark.parametrize("v", [0x12, 0x13])
@pytest.mark.parametrize("name", NAMES)
def test_trailing_bytes_and_doe_padding(r: SpdmResponder, v: int, name: str) -> None:
    vca(r, v)
    good = valid_requests(v)[name]
    for extra in (b"\x01", b"\0\0\x80", bytes(4), b"\xff" * 16):
        assert err(r.handle_cma(good + extra)) == E.InvalidRequest, (name, extra)
        works(r, v)
    # up to three zero bytes are DOE padding: the same answer as without
    assert err(r.handle_cma(good + bytes(3))) == err(r.handle_cma(good))
    works(r, v)


@pytest.mark.parametrize("name", NAMES)
def test_version_mismatch_for_every_request(r: SpdmResponder, name: str) -> None:
    vca(r, 0x12)
    for other in (0x10, 0x11, 0x13, 0x20):
        bad = bytes([other]) + valid_requests(0x12)[name][1:]
        rsp = r.handle_cma(bad)
        assert err(rsp) == E.VersionMismatch and rsp[0] == 0x12, (name, other)
    works(r)


@pytest.mark.parametrize("code", [0x00, 0x01, 0x7F, 0x80, 0x87, 0xE2, 0xE6, 0xE7, 0xED, 0xEE,
                                  0xEF, 0xFD])
def test_unsupported_codes_name_themselves(r: SpdmResponder, code: int) -> None:
    vca(r)
    rsp = m.ERROR.unpack(r.handle_cma(bytes([0x12, code, 0, 0]) + bytes(8)))
    assert (rsp.param1, rsp.param2) == (E.UnsupportedRequest, code)
    works(r)


# -- identity: certificate portions, challenge variants ----------------------------------------
def test_certificate_edges(r: SpdmResponder) -> None:
    vca(r)
    chain = identity().for_asym("ecdsa-p384").spdm_chain("sha384")  # type: ignore[union-attr]
    last = m.CERTIFICATE.unpack(r.handle_cma(m.GET_CERTIFICATE(
        spdm_version=0x12, offset=len(chain) - 1, length=100).pack()))
    assert (last.portion_length, last.remainder_length) == (1, 0)
    assert last.cert_chain == chain[-1:]
    for slot in (1, 7, 0xF):
        bad = m.GET_CERTIFICATE(spdm_version=0x12, param1=slot, offset=0, length=10)
        assert err(r.handle_cma(bad.pack())) == E.InvalidRequest
    for offset in (len(chain), 0xFFFF):
        bad = m.GET_CERTIFICATE(spdm_version=0x12, offset=offset, length=10)
        assert err(r.handle_cma(bad.pack())) == E.InvalidRequest
    works(r)


@pytest.mark.parametrize("v", [0x11, 0x12, 0x13])
@pytest.mark.parametrize("summary", [0, 1, 0xFF])
def test_challenge_auth_layout(r: SpdmResponder, v: int, summary: int) -> None:
    vca(r, v)
    context = b"ctx-1234"
    req = m.CHALLENGE(spdm_version=v, param2=summary, nonce=bytes(32), requester_context=context)
    sizes = m.Sizes(version=v, hash=48, signature=96, summary_hash=bool(summary))
    rsp = m.CHALLENGE_AUTH.unpack(r.handle_cma(req.pack()), sizes)
    assert rsp.param2 == 0x01 and len(rsp.measurement_summary_hash) == (48 if summary else 0)
    if v >= 0x13:
        assert rsp.requester_context == context
    works(r, v)


def test_challenge_summary_without_measurements() -> None:
    r = responder(measurements=None)
    vca(r)
    req = m.CHALLENGE(spdm_version=0x12, param2=1, nonce=bytes(32))
    assert err(r.handle_cma(req.pack())) == E.InvalidRequest
    assert m.CHALLENGE_AUTH.unpack(r.handle_cma(req.replace(param2=0).pack()),
                                   m.Sizes(version=0x12, hash=48, signature=96))
    works(r)


# -- measurements ------------------------------------------------------------------------------
def test_measurements_signed_count_and_raw_before_1_2(r: SpdmResponder) -> None:
    vca(r, 0x11)
    sizes = m.Sizes(version=0x11, hash=48, signature=96, signed=True)
    count = m.MEASUREMENTS.unpack(r.handle_cma(m.GET_MEASUREMENTS(
        spdm_version=0x11, param1=1, param2=0, nonce=bytes(32)).pack()), sizes)
    assert count.param1 == 4 and count.number_of_blocks == 0 and len(count.signature) == 96
    # raw bit stream is a 1.2 attribute: 1.1 still gets digests
    one = m.MEASUREMENTS.unpack(r.handle_cma(m.GET_MEASUREMENTS(
        spdm_version=0x11, param1=2, param2=4).pack()))
    (block,) = m.parse_measurement_record(one.measurement_record, 1)
    assert not block.raw_bit_stream and len(block.value) == 48
    for missing in (5, 0x80, 0xFE):
        bad = m.GET_MEASUREMENTS(spdm_version=0x11, param2=missing)
        assert err(r.handle_cma(bad.pack())) == E.InvalidRequest
    works(r, 0x11)


# -- the handshake phase and session requests --------------------------------------------------
class Interloper(SpdmRequester):
    """Before its FINISH, sends other requests -- in the clear and in the session."""

    def __init__(self, r: SpdmResponder) -> None:
        super().__init__(dispatcher(r).exchange)
        self.r = r
        self.seen: list[tuple[str, int | None]] = []

    def send_flow(self, request: bytes, session=None, **kw):  # type: ignore[no-untyped-def]
        if session is not None and request[1] == m.FINISH_CODE:
            v = request[0]
            self.seen.append(("plain FINISH", err(self.r.handle_cma(request))))
            for req in (m.HEARTBEAT(spdm_version=v).pack(),
                        m.KEY_UPDATE(spdm_version=v, param1=1, param2=1).pack(),
                        m.END_SESSION(spdm_version=v).pack(),
                        m.GET_DIGESTS(spdm_version=v).pack(),
                        m.GET_MEASUREMENTS(spdm_version=v, param2=1).pack(),
                        m.VENDOR_DEFINED_REQUEST(spdm_version=v, standard_id=3, len=2,
                                                 vendor_id=b"\x01\x00", req_length=1,
                                                 vendor_defined_req_payload=b"x").pack()):
                self.seen.append((m.request_name(req[1]), err(self.send(req, session))))
        return super().send_flow(request, session, **kw)


def test_only_finish_in_the_handshake_phase_and_the_handshake_survives(
        r: SpdmResponder) -> None:
    req = Interloper(r)
    req.authenticate()
    s = req.start_session()
    # A plain FINISH without HANDSHAKE_IN_THE_CLEAR: SessionRequired (DSP0274 1.2+).
    assert req.seen == [("plain FINISH", E.SessionRequired)] + [
        (name, E.UnexpectedRequest) for name in
        ("HEARTBEAT", "KEY_UPDATE", "END_SESSION", "GET_DIGESTS", "GET_MEASUREMENTS",
         "VENDOR_DEFINED_REQUEST")]
    req.heartbeat(s)
    assert req.vendor_request(*VENDOR, b"ok", s) == b"echo:ok"


def test_finish_after_the_handshake_is_unexpected(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s = req.start_session()
    finish = m.FINISH(spdm_version=0x13, requester_verify_data=bytes(48)).pack(
        m.Sizes(version=0x13, hash=48))
    assert err(req.send(finish, s)) == E.UnexpectedRequest
    assert err(r.handle_cma(finish)) == E.SessionRequired   # plain: DSP0274 1.2+
    req.heartbeat(s)


def test_key_update_verify_only_once(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s = req.start_session()
    req.key_update(s)  # UpdateKey + VerifyNewKey
    verify = m.KEY_UPDATE(spdm_version=0x13, param1=3, param2=9).pack()
    assert err(req.send(verify, s)) == E.InvalidRequest
    for op in (0, 4, 0xFF):
        assert err(req.send(m.KEY_UPDATE(spdm_version=0x13, param1=op).pack(), s)) == \
            E.InvalidRequest
    req.heartbeat(s)
    req.key_update(s, all_keys=True)
    req.heartbeat(s)


def test_padding_is_not_allowed_inside_a_record(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s = req.start_session()
    assert err(req.send(m.HEARTBEAT(spdm_version=0x13).pack() + b"\0", s)) == E.InvalidRequest
    req.heartbeat(s)


def test_ended_session_records_are_a_mailbox_error(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s = req.start_session()
    other = req.start_session()
    req.end_session(s)
    with pytest.raises(DoeError):
        r.handle_secured(s.secured.seal(m.HEARTBEAT(spdm_version=0x13).pack()))
    req.heartbeat(other)
    works(r, 0x13)


def test_damaged_records(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s, other = req.start_session(), req.start_session()
    record = s.secured.seal(m.HEARTBEAT(spdm_version=0x13).pack())
    for short in (b"", record[:3], record[:5]):
        with pytest.raises(DoeError):
            r.handle_secured(short)
    assert s.session_id in r.sessions  # an undecodable header ends nothing
    # Length beyond the record: it cannot authenticate -> DecryptError, the session ends
    longer = record[:4] + struct.pack("<H", len(record)) + record[6:]
    assert err(r.handle_secured(longer)) == E.DecryptError
    assert s.session_id not in r.sessions and other.session_id in r.sessions
    req.heartbeat(other)
    # a cut record of a live session, the same
    record = other.secured.seal(m.HEARTBEAT(spdm_version=0x13).pack())
    assert err(r.handle_secured(record[:-1])) == E.DecryptError
    assert not r.sessions
    req.heartbeat(req.start_session())


# -- vendor-defined -----------------------------------------------------------------------------
def test_vendor_defined_errors(r: SpdmResponder) -> None:
    vca(r)
    base = m.VENDOR_DEFINED_REQUEST(spdm_version=0x12, standard_id=3, len=2,
                                    vendor_id=b"\x01\x00", req_length=2,
                                    vendor_defined_req_payload=b"hi")
    ok = m.VENDOR_DEFINED_RESPONSE.unpack(r.handle_cma(base.pack()))
    assert (ok.standard_id, ok.vendor_id, ok.vendor_defined_resp_payload) == \
        (3, b"\x01\x00", b"echo:hi")
    unknown_vendor = base.replace(vendor_id=b"\x02\x00")
    unknown_registry = base.replace(standard_id=0x10)
    for bad in (unknown_vendor, unknown_registry):
        error = m.ERROR.unpack(r.handle_cma(bad.pack()))
        assert (error.param1, error.param2) == \
            (E.UnsupportedRequest, m.VENDOR_DEFINED_REQUEST_CODE)
    for code in (E.Busy, E.InvalidPolicy, E.SessionRequired, E.OperationFailed):
        payload = b"raise:%d" % code
        rsp = r.handle_cma(base.replace(req_length=len(payload),
                                        vendor_defined_req_payload=payload).pack())
        assert err(rsp) == code
    lying = base.pack()[:-2] + struct.pack("<H", 9) + b"hi"
    assert err(r.handle_cma(lying)) == E.InvalidRequest
    works(r)


# -- chunking by hand ---------------------------------------------------------------------------
def small_dts(r: SpdmResponder, dts: int = 64) -> None:
    vca(r, 0x12, dts=dts, mx=65536)


def test_large_response_by_hand(r: SpdmResponder) -> None:
    small_dts(r)
    req = m.GET_MEASUREMENTS(spdm_version=0x12, param1=1, param2=0xFF, nonce=bytes(32))
    rsp = m.ERROR.unpack(r.handle_cma(req.pack()))
    assert rsp.param1 == E.LargeResponse and len(rsp.extended_error_data) == 1
    handle = rsp.extended_error_data[0]
    assert err(r.handle_cma(m.CHUNK_GET(spdm_version=0x12, param2=handle ^ 0x55).pack())) == \
        E.InvalidRequest  # wrong handle; the large response stays
    whole, seq, total = b"", 0, None
    while True:
        raw = r.handle_cma(m.CHUNK_GET(spdm_version=0x12, param2=handle, chunk_seq_no=seq).pack())
        assert len(raw) <= 64
        chunk = m.CHUNK_RESPONSE.unpack(raw)
        assert chunk.param2 == handle and chunk.chunk_seq_no == seq
        if seq == 0:
            total = chunk.large_message_size
        whole += chunk.response_chunk
        if chunk.param1 & m.CHUNK_LAST:
            break
        seq += 1
    assert len(whole) == total and seq > 2
    meas = m.MEASUREMENTS.unpack(whole, m.Sizes(version=0x12, hash=48, signature=96,
                                                signed=True))
    assert meas.number_of_blocks == 4
    # after the last chunk the large response is gone
    again = m.CHUNK_GET(spdm_version=0x12, param2=handle, chunk_seq_no=0)
    assert err(r.handle_cma(again.pack())) == E.InvalidRequest
    works(r)


def test_large_response_dropped_by_another_request(r: SpdmResponder) -> None:
    small_dts(r)
    req = m.GET_MEASUREMENTS(spdm_version=0x12, param1=1, param2=0xFF, nonce=bytes(32))
    handle = m.ERROR.unpack(r.handle_cma(req.pack())).extended_error_data[0]
    beyond = m.CHUNK_GET(spdm_version=0x12, param2=handle, chunk_seq_no=200)
    assert err(r.handle_cma(beyond.pack())) == E.InvalidRequest
    first = m.CHUNK_GET(spdm_version=0x12, param2=handle, chunk_seq_no=0)
    assert r.handle_cma(first.pack())[1] == m.CHUNK_RESPONSE_CODE
    works(r)
    assert err(r.handle_cma(first.pack())) == E.InvalidRequest


def chunk_sends(request: bytes, room: int, handle: int = 5) -> list[m.CHUNK_SEND]:
    out, pos, seq = [], 0, 0
    while pos < len(request):
        piece = request[pos:pos + room]
        pos += len(piece)
        out.append(m.CHUNK_SEND(spdm_version=0x12, param1=m.CHUNK_LAST if pos >= len(request)
                                else 0, param2=handle, chunk_seq_no=seq, chunk_size=len(piece),
                                large_message_size=len(request), spdm_chunk=piece))
        seq += 1
    return out


def vendor_request(size: int) -> bytes:
    payload = bytes(range(256)) * (size // 256 + 1)
    return m.VENDOR_DEFINED_REQUEST(spdm_version=0x12, standard_id=3, len=2,
                                    vendor_id=b"\x01\x00", req_length=size,
                                    vendor_defined_req_payload=payload[:size]).pack()


def test_chunk_send_by_hand(r: SpdmResponder) -> None:
    small_dts(r, 128)
    request = vendor_request(90)
    sends = chunk_sends(request, 40)
    assert len(sends) == 3
    for chunk in sends[:-1]:
        ack = m.CHUNK_SEND_ACK.unpack(r.handle_cma(chunk.pack()))
        assert ack.chunk_seq_no == chunk.chunk_seq_no and not ack.response_to_large_request
    ack = m.CHUNK_SEND_ACK.unpack(r.handle_cma(sends[-1].pack()))
    inner = m.VENDOR_DEFINED_RESPONSE.unpack(ack.response_to_large_request)
    assert inner.vendor_defined_resp_payload == b"echo:" + request[-90:]
    works(r)


@pytest.mark.parametrize("damage", ["skip", "restart-too-large", "handle", "oversize", "short",
                                    "nested", "no-first"])
def test_chunk_send_errors(r: SpdmResponder, damage: str) -> None:
    small_dts(r, 128)
    sends = chunk_sends(vendor_request(90), 40)
    if damage == "no-first":
        assert err(r.handle_cma(sends[1].pack())) == E.InvalidRequest
    else:
        assert r.handle_cma(sends[0].pack())[1] == m.CHUNK_SEND_ACK_CODE
        inner = m.CHUNK_GET(spdm_version=0x12, param2=1).pack()
        bad = {
            "skip": sends[2],
            "restart-too-large": sends[0].replace(large_message_size=1 << 24),
            "handle": sends[1].replace(param2=6),
            "oversize": sends[1].replace(chunk_size=80, spdm_chunk=bytes(80)),
            "short": sends[1].replace(param1=m.CHUNK_LAST),
            "nested": m.CHUNK_SEND(spdm_version=0x12, param1=m.CHUNK_LAST, param2=7,
                                   chunk_seq_no=0, chunk_size=len(inner),
                                   large_message_size=len(inner), spdm_chunk=inner),
        }[damage]
        rsp = r.handle_cma(bad.pack())
        assert err(rsp) in (E.InvalidRequest, E.RequestTooLarge), rsp.hex()
        # the half-sent request is gone: its next chunk is out of sequence
        assert err(r.handle_cma(sends[2].pack())) == E.InvalidRequest
    works(r)
    for chunk in chunk_sends(vendor_request(90), 40):  # and a whole one goes through
        ack = m.CHUNK_SEND_ACK.unpack(r.handle_cma(chunk.pack()))
    assert ack.response_to_large_request[1] == m.VENDOR_DEFINED_RESPONSE_CODE


def test_chunking_before_1_2(r: SpdmResponder) -> None:
    vca(r, 0x11)
    assert err(r.handle_cma(m.CHUNK_GET(spdm_version=0x11, param2=1).pack())) == \
        E.UnsupportedRequest
    send = m.CHUNK_SEND(spdm_version=0x11, param1=1, chunk_size=4, large_message_size=4,
                        spdm_chunk=b"\x11\x81\0\0")
    assert err(r.handle_cma(send.pack())) == E.UnsupportedRequest
    works(r, 0x11)


# -- bad input loses nothing ---------------------------------------------------------------------
def bad_inputs(v: int) -> list[bytes]:
    return [
        b"\x12",
        bytes([v, 0x80, 0, 0]),
        bytes([v ^ 1, m.GET_DIGESTS_CODE, 0, 0]),
        m.GET_DIGESTS(spdm_version=v).pack() + b"\x01",
        m.GET_CERTIFICATE(spdm_version=v, param1=3, offset=0, length=10).pack(),
        m.GET_CERTIFICATE(spdm_version=v, offset=0xFFF0, length=10).pack(),
        m.CHALLENGE(spdm_version=v, param1=2, nonce=bytes(32)).pack(),
        m.CHALLENGE(spdm_version=v, param2=7, nonce=bytes(32)).pack(),
        m.GET_MEASUREMENTS(spdm_version=v, param2=0x42).pack(),
        m.GET_MEASUREMENTS(spdm_version=v, param1=1, param2=1, nonce=bytes(32),
                           slot_id_param=2).pack(),
        m.KEY_EXCHANGE(spdm_version=v, exchange_data=bytes(96)).pack(m.Sizes(version=v,
                                                                              dhe=96)),
        m.HEARTBEAT(spdm_version=v).pack(),
        m.CHUNK_GET(spdm_version=v, param2=9).pack(),
        get_caps(v),
        negotiate(v),
    ]


@pytest.mark.parametrize("v", [0x11, 0x12, 0x13])
def test_errors_leave_the_transcripts_alone(r: SpdmResponder, v: int) -> None:
    """Errors between the steps of M1 and L1: the signatures still verify."""
    req = requester(r, versions=(v,))
    req.init_connection()

    def noise() -> None:
        for bad in bad_inputs(v):
            assert err(r.handle_cma(bad)) is not None, bad.hex()

    noise()
    req.get_digests()
    noise()
    req.get_certificate()
    noise()
    req.challenge(m.SUMMARY_HASH_ALL)
    req.get_measurements(1, signed=False)
    noise()
    req.get_measurements(2, signed=False)
    noise()
    req.get_measurements()  # signed over L1 = both unsigned exchanges, no errors
    s = req.start_session()
    req.get_measurements(3, signed=False, session=s)
    assert err(req.send(m.GET_MEASUREMENTS(spdm_version=v, param2=0x42).pack(), s)) == \
        E.InvalidRequest
    req.get_measurements(session=s)


def test_l1_is_reset_by_other_requests_and_kept_per_session(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s = req.start_session()
    req.get_measurements(1, signed=False)
    req.get_digests()  # a successful other request: L1 starts afresh
    req.get_measurements()
    req.get_measurements(1, signed=False)
    req.get_measurements(2, signed=False, session=s)  # the session's own L2
    req.get_measurements()
    req.get_measurements(session=s)


# -- through a device's DOE mailbox ---------------------------------------------------------------
def test_through_a_device_mailbox() -> None:
    device = Device(get_profile("virtio-rng"), identity=identity())
    req = SpdmRequester(device.doe.exchange)
    req.authenticate()
    assert len(req.get_measurements().blocks) >= 1
    s = req.start_session()
    req.heartbeat(s)
    # a bad request through the mailbox: an SPDM ERROR in a CMA object, connection intact
    hdr, payload = parse_object(device.doe.exchange(build_object(1, 1, b"\x13\x80\0\0")))
    assert hdr.data_object_type == 1 and err(payload) == E.UnsupportedRequest
    with pytest.raises(DoeError):
        device.doe.exchange(build_object(1, 2, struct.pack("<IH", 0xDEAD, 16) + bytes(16)))
    req.heartbeat(s)
    req.end_session(s)
    with pytest.raises(DoeError):  # the session is gone: the mailbox refuses its records
        req.heartbeat(s)
    req.challenge()
