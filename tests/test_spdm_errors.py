"""Every SPDM request and error path of the responder, on bytes built with the
message classes; after each error the connection still works."""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.doe.protocols import DoeError, build_object
from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.spdm.algorithms import AEADS, ASYMS, DHES, HASHES, mask
from vfiouser_tdisp.spdm.requester import SpdmRequester, SpdmRequesterError
from vfiouser_tdisp.spdm.responder import SpdmResponder, VendorError

from .spdm_support import dispatcher, identity, requester, responder

E = m.SpdmErrorCode
REQ_FLAGS = SpdmRequester.CAP_FLAGS


def err(rsp: bytes) -> int | None:
    return rsp[2] if len(rsp) >= 4 and rsp[1] == m.ERROR_CODE else None


def get_version(r: SpdmResponder) -> bytes:
    return r.handle_cma(m.GET_VERSION().pack())


def get_caps(v: int = m.V12, flags: int = REQ_FLAGS, dts: int = 4096, mx: int = 65536,
             ct: int = 12) -> bytes:
    return m.GET_CAPABILITIES(spdm_version=v, ct_exponent=ct, flags=flags,
                              data_transfer_size=dts, max_spdm_msg_size=mx).pack()


def negotiate(v: int = m.V12, hashes: tuple[str, ...] = ("sha384",),
              asyms: tuple[str, ...] = ("ecdsa-p384",), dhes: tuple[str, ...] = ("secp384r1",),
              aeads: tuple[str, ...] = ("aes-256-gcm",),
              structs: list[tuple[int, int]] | None = None) -> bytes:
    if structs is None:
        structs = [(2, mask(dhes, DHES)), (3, mask(aeads, AEADS)), (4, 0), (5, 1)] \
            if v >= m.V11 else []
    body = b"".join(m.AlgStruct(t, bits).pack() for t, bits in structs)
    return m.NEGOTIATE_ALGORITHMS(
        spdm_version=v, param1=len(structs), length=32 + len(body),
        measurement_specification=1, other_params_support=2 if v >= m.V12 else 0,
        base_asym_algo=mask(asyms, ASYMS), base_hash_algo=mask(hashes, HASHES),
        req_alg_struct=body).pack()


def vca(r: SpdmResponder, v: int = m.V12, **kw: object) -> None:
    assert get_version(r)[1] == m.VERSION_CODE
    caps = r.handle_cma(get_caps(v, dts=kw.pop("dts", 4096), mx=kw.pop("mx", 65536)))  # type: ignore[arg-type]
    assert caps[1] == m.CAPABILITIES_CODE, caps
    alg = r.handle_cma(negotiate(v, **kw))  # type: ignore[arg-type]
    assert alg[1] == m.ALGORITHMS_CODE, alg


def works(r: SpdmResponder, v: int = m.V12) -> None:
    """The connection still answers a normal request."""
    rsp = r.handle_cma(m.GET_DIGESTS(spdm_version=v).pack())
    assert rsp[1] == m.DIGESTS_CODE, rsp


@pytest.fixture
def r() -> SpdmResponder:
    return responder()


# -- VCA ------------------------------------------------------------------------------------
def test_version_lists_every_supported_version(r: SpdmResponder) -> None:
    rsp = m.VERSION.unpack(get_version(r))
    assert rsp.spdm_version == m.V10 and rsp.versions == [0x10, 0x11, 0x12, 0x13]


def test_get_version_must_be_1_0(r: SpdmResponder) -> None:
    rsp = r.handle_cma(m.GET_VERSION(spdm_version=0x12).pack())
    assert err(rsp) == E.VersionMismatch and rsp[0] == 0x10
    vca(r)
    works(r)


@pytest.mark.parametrize("code", [0x81, 0x82, 0x83, 0xE0, 0xE1, 0xE3, 0xE4, 0xFE])
def test_requests_before_get_version(r: SpdmResponder, code: int) -> None:
    assert err(r.handle_cma(bytes([0x12, code, 0, 0]) + bytes(40))) == E.UnexpectedRequest


@pytest.mark.parametrize("code", [0x80, 0x87, 0xE2, 0xE6, 0xED, 0x10, 0x05])
def test_unknown_or_unsupported_code(r: SpdmResponder, code: int) -> None:
    vca(r)
    rsp = r.handle_cma(bytes([0x12, code, 0, 0]))
    assert err(rsp) == E.UnsupportedRequest and rsp[3] == code
    works(r)


def test_short_message(r: SpdmResponder) -> None:
    assert err(r.handle_cma(b"\x10\x84")) == E.InvalidRequest


def test_vca_order(r: SpdmResponder) -> None:
    get_version(r)
    assert err(r.handle_cma(negotiate())) == E.UnexpectedRequest
    assert r.handle_cma(get_caps())[1] == m.CAPABILITIES_CODE
    assert err(r.handle_cma(get_caps())) == E.UnexpectedRequest  # twice
    assert r.handle_cma(negotiate())[1] == m.ALGORITHMS_CODE
    assert err(r.handle_cma(negotiate())) == E.UnexpectedRequest
    works(r)


@pytest.mark.parametrize("request_bytes", [
    get_caps(flags=m.CapFlags.ENCRYPT_CAP | m.CapFlags.CERT_CAP),          # ENCRYPT w/o KEY_EX
    get_caps(flags=m.CapFlags.KEY_EX_CAP),                                  # KEY_EX w/o ENC/MAC
    get_caps(flags=REQ_FLAGS | m.CapFlags.PSK_CAP_MASK),                    # PSK_CAP 3
    get_caps(flags=m.CapFlags.HANDSHAKE_IN_THE_CLEAR_CAP | m.CapFlags.MAC_CAP
             | (1 << 10)),                                                  # clear w/o KEY_EX
    get_caps(dts=41, mx=41, flags=REQ_FLAGS & ~m.CapFlags.CHUNK_CAP),       # DTS < 42
    get_caps(dts=4096, mx=1024),                                            # max < DTS
    get_caps(dts=1024, mx=4096, flags=REQ_FLAGS & ~m.CapFlags.CHUNK_CAP),   # no CHUNK, != max
    get_caps(ct=32),                                                        # CTExponent
    get_caps()[:-1],                                                        # truncated
    get_caps() + b"\x01",                                                   # trailing byte
], ids=["enc-no-kex", "kex-no-enc", "psk3", "clear-no-kex", "dts41", "max-lt-dts",
        "nochunk-ne", "ct32", "truncated", "trailing"])
def test_invalid_capabilities(r: SpdmResponder, request_bytes: bytes) -> None:
    get_version(r)
    assert err(r.handle_cma(request_bytes)) == E.InvalidRequest
    assert r.handle_cma(get_caps())[1] == m.CAPABILITIES_CODE  # state unchanged


def test_capabilities_version_not_offered() -> None:
    r = responder(versions=(0x12, 0x13))
    get_version(r)
    assert err(r.handle_cma(get_caps(v=0x11))) == E.VersionMismatch
    assert r.handle_cma(get_caps(v=0x13))[1] == m.CAPABILITIES_CODE


def test_capabilities_by_version(r: SpdmResponder) -> None:
    get_version(r)
    rsp = m.CAPABILITIES.unpack(r.handle_cma(m.GET_CAPABILITIES(spdm_version=0x10).pack()))
    assert rsp.flags & m.CapFlags.CERT_CAP and not rsp.flags & m.CapFlags.KEY_EX_CAP
    get_version(r)
    rsp = m.CAPABILITIES.unpack(r.handle_cma(get_caps(v=0x12)))
    f = m.CapFlags
    for flag in (f.CERT_CAP, f.CHAL_CAP, f.MEAS_CAP_SIG, f.ENCRYPT_CAP, f.MAC_CAP,
                 f.KEY_EX_CAP, f.HBEAT_CAP, f.KEY_UPD_CAP, f.CHUNK_CAP):
        assert rsp.flags & flag == flag
    assert rsp.data_transfer_size == 4096 and rsp.max_spdm_msg_size == 65536


def _bad_length() -> bytes:
    good = bytearray(negotiate())
    good[4] += 4
    return bytes(good)


@pytest.mark.parametrize("request_bytes", [
    _bad_length(),
    negotiate(structs=[(3, 1), (2, 8), (4, 0), (5, 1)]),   # not ascending
    negotiate(structs=[(2, 8), (2, 16), (5, 1)]),          # duplicate
    negotiate(structs=[(2, 8), (9, 1)]),                   # unknown type
    negotiate()[:30],                                      # truncated
], ids=["length", "order", "duplicate", "unknown-type", "truncated"])
def test_invalid_negotiate_algorithms(r: SpdmResponder, request_bytes: bytes) -> None:
    get_version(r)
    r.handle_cma(get_caps())
    assert err(r.handle_cma(request_bytes)) == E.InvalidRequest
    assert r.handle_cma(negotiate())[1] == m.ALGORITHMS_CODE


def test_structs_before_1_1(r: SpdmResponder) -> None:
    get_version(r)
    r.handle_cma(m.GET_CAPABILITIES(spdm_version=0x10).pack())
    assert err(r.handle_cma(negotiate(v=0x10, structs=[(2, 8)]))) == E.InvalidRequest
    assert r.handle_cma(negotiate(v=0x10))[1] == m.ALGORITHMS_CODE


def test_selection_follows_the_responder_preference(r: SpdmResponder) -> None:
    get_version(r)
    r.handle_cma(get_caps())
    rsp = m.ALGORITHMS.unpack(r.handle_cma(negotiate(
        hashes=("sha512", "sha256"), asyms=("rsassa-3072", "ecdsa-p256"),
        dhes=("secp256r1", "secp384r1"), aeads=("chacha20-poly1305", "aes-128-gcm"))))
    assert rsp.base_hash_sel == HASHES["sha256"].bit
    assert rsp.base_asym_sel == ASYMS["ecdsa-p256"].bit
    assert rsp.measurement_hash_algo == HASHES["sha256"].measurement_bit
    sel = {s.alg_type: s.alg_supported for s in rsp.alg_structs()}
    assert sel == {2: DHES["secp384r1"].bit, 3: AEADS["aes-128-gcm"].bit, 4: 0, 5: 1}
    assert rsp.length == 36 + 16 and rsp.other_params_selection == 2


def test_no_common_algorithm(r: SpdmResponder) -> None:
    get_version(r)
    r.handle_cma(get_caps())
    rsp = m.ALGORITHMS.unpack(r.handle_cma(negotiate(asyms=("rsassa-2048",))))
    assert rsp.base_asym_sel == 0
    assert err(r.handle_cma(m.GET_DIGESTS(spdm_version=0x12).pack())) == E.UnexpectedRequest


def test_version_mismatch_after_negotiation(r: SpdmResponder) -> None:
    vca(r)
    assert err(r.handle_cma(m.GET_DIGESTS(spdm_version=0x11).pack())) == E.VersionMismatch
    works(r)


def test_doe_padding_is_accepted_garbage_is_not(r: SpdmResponder) -> None:
    vca(r)
    digests = m.GET_DIGESTS(spdm_version=0x12).pack()
    assert r.handle_cma(digests + b"\0\0\0")[1] == m.DIGESTS_CODE
    assert err(r.handle_cma(digests + b"\0\0\0\0")) == E.InvalidRequest
    assert err(r.handle_cma(digests + b"\x01")) == E.InvalidRequest
    works(r)


# -- identity --------------------------------------------------------------------------------
def test_certificate_portions_and_errors(r: SpdmResponder) -> None:
    vca(r)
    chain = identity().for_asym("ecdsa-p384").spdm_chain("sha384")  # type: ignore[union-attr]
    got, offset = b"", 0
    while True:
        rsp = m.CERTIFICATE.unpack(r.handle_cma(m.GET_CERTIFICATE(
            spdm_version=0x12, offset=offset, length=200).pack()))
        assert rsp.portion_length <= 200
        got += rsp.cert_chain
        offset += rsp.portion_length
        assert rsp.remainder_length == len(chain) - offset
        if not rsp.remainder_length:
            break
    assert got == chain
    big = m.CERTIFICATE.unpack(r.handle_cma(m.GET_CERTIFICATE(
        spdm_version=0x12, offset=0, length=0xFFFF).pack()))
    assert big.portion_length == min(len(chain), 4096 - 8)
    for bad in (m.GET_CERTIFICATE(spdm_version=0x12, offset=len(chain), length=10),
                m.GET_CERTIFICATE(spdm_version=0x12, param1=1, offset=0, length=10)):
        assert err(r.handle_cma(bad.pack())) == E.InvalidRequest
    assert err(r.handle_cma(m.GET_CERTIFICATE(spdm_version=0x12).pack()[:6])) == \
        E.InvalidRequest
    works(r)


@pytest.mark.parametrize("param1,param2", [(1, 0), (0xFF, 0), (0, 2), (0, 0xFE)])
def test_challenge_errors(r: SpdmResponder, param1: int, param2: int) -> None:
    vca(r)
    req = m.CHALLENGE(spdm_version=0x12, param1=param1, param2=param2, nonce=bytes(32))
    assert err(r.handle_cma(req.pack())) == E.InvalidRequest
    works(r)


# -- measurements ----------------------------------------------------------------------------
def test_measurement_operations(r: SpdmResponder) -> None:
    vca(r)
    count = m.MEASUREMENTS.unpack(r.handle_cma(m.GET_MEASUREMENTS(
        spdm_version=0x12, param2=0).pack()))
    assert count.param1 == 4 and count.number_of_blocks == 0
    one = m.MEASUREMENTS.unpack(r.handle_cma(m.GET_MEASUREMENTS(
        spdm_version=0x12, param2=2).pack()))
    (block,) = m.parse_measurement_record(one.measurement_record, one.number_of_blocks)
    assert (block.index, block.value_type, block.value, block.raw_bit_stream) == \
        (2, 6, b"1.0.0", True)
    raw = m.MEASUREMENTS.unpack(r.handle_cma(m.GET_MEASUREMENTS(
        spdm_version=0x12, param1=m.MEAS_ATTR_RAW_BIT_STREAM_REQUESTED, param2=4).pack()))
    assert m.parse_measurement_record(raw.measurement_record, 1)[0].value == b"config-0"
    assert err(r.handle_cma(m.GET_MEASUREMENTS(spdm_version=0x12, param2=9).pack())) == \
        E.InvalidRequest
    signed_bad_slot = m.GET_MEASUREMENTS(spdm_version=0x12, param1=1, param2=0xFF,
                                         nonce=bytes(32), slot_id_param=3)
    assert err(r.handle_cma(signed_bad_slot.pack())) == E.InvalidRequest
    works(r)


def test_measurements_without_meas_spec() -> None:
    r = responder(measurements=None)
    vca(r)
    rsp = r.handle_cma(m.GET_MEASUREMENTS(spdm_version=0x12, param2=0xFF).pack())
    assert err(rsp) == E.UnsupportedRequest


# -- sessions --------------------------------------------------------------------------------
def test_key_exchange_needs_1_1(r: SpdmResponder) -> None:
    req = requester(r, versions=(0x10,))
    req.authenticate()
    raw = m.KEY_EXCHANGE(spdm_version=0x10, exchange_data=bytes(96)).pack(
        m.Sizes(version=0x10, dhe=96))
    assert err(r.handle_cma(raw)) == E.UnsupportedRequest


def test_key_exchange_bad_point_and_slot(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    sizes = req.conn.sizes()
    bad_point = m.KEY_EXCHANGE(spdm_version=0x13, req_session_id=1, exchange_data=bytes(96))
    assert err(r.handle_cma(bad_point.pack(sizes))) == E.InvalidRequest
    _, point = DHES["secp384r1"].generate()
    bad_slot = m.KEY_EXCHANGE(spdm_version=0x13, param2=1, req_session_id=1,
                              exchange_data=point)
    assert err(r.handle_cma(bad_slot.pack(sizes))) == E.InvalidRequest
    bad_opaque = m.KEY_EXCHANGE(spdm_version=0x13, req_session_id=1, exchange_data=point,
                                opaque_length=3, opaque_data=b"\x09\x09\x09")
    assert err(r.handle_cma(bad_opaque.pack(sizes))) == E.InvalidRequest
    assert not r.sessions
    req.start_session()  # and a proper one still works


def test_session_limit(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    sessions = [req.start_session() for _ in range(4)]
    with pytest.raises(SpdmRequesterError) as exc:
        req.start_session()
    assert exc.value.error_code == E.SessionLimitExceeded
    req.end_session(sessions[0])
    req.start_session()


@pytest.mark.parametrize("version,expected", [
    # DSP0274 1.2 Table "ERROR response codes": SessionRequired (0x0B) "the request ...
    # is only allowed within a session"; the code is new in 1.2, so 1.1 keeps
    # UnexpectedRequest (0x04).  The ERROR is in the negotiated version.
    (0x13, bytes([0x13, 0x7F, 0x0B, 0x00])),
    (0x12, bytes([0x12, 0x7F, 0x0B, 0x00])),
    (0x11, bytes([0x11, 0x7F, 0x04, 0x00])),
])
@pytest.mark.parametrize("code", [m.FINISH_CODE, m.HEARTBEAT_CODE, m.KEY_UPDATE_CODE,
                                  m.END_SESSION_CODE])
def test_session_requests_outside_a_session(r: SpdmResponder, code: int, version: int,
                                            expected: bytes) -> None:
    vca(r, v=version)
    # FINISH/HEARTBEAT/KEY_UPDATE/END_SESSION as plain DOE type 1 objects
    request = bytes([version, code, 1, 0]) + (bytes(48) if code == m.FINISH_CODE else b"")
    assert r.handle_cma(request) == expected
    works(r, v=version)


class Tamper(SpdmRequester):
    """A requester that replaces the FINISH it would send."""

    replace: object = None

    def send_flow(self, request: bytes, session=None, **kw):  # type: ignore[no-untyped-def]
        if session is not None and request[1] == m.FINISH_CODE and self.replace:
            request = self.replace(request)  # type: ignore[operator]
        return super().send_flow(request, session, **kw)


def test_only_finish_during_handshake(r: SpdmResponder) -> None:
    req = Tamper(dispatcher(r).exchange)
    req.authenticate()
    req.replace = lambda _rq: m.HEARTBEAT(spdm_version=0x13).pack()
    with pytest.raises(SpdmRequesterError) as exc:
        req.start_session()
    assert exc.value.error_code == E.UnexpectedRequest
    (sess,) = r.sessions.values()  # still in handshake, still there
    assert sess.secured.state.name == "HANDSHAKING"


def test_bad_requester_verify_data_ends_the_session(r: SpdmResponder) -> None:
    req = Tamper(dispatcher(r).exchange)
    req.authenticate()
    req.replace = lambda rq: rq[:-1] + bytes([rq[-1] ^ 1])
    with pytest.raises(SpdmRequesterError) as exc:
        req.start_session()
    assert exc.value.error_code == E.DecryptError
    assert not r.sessions
    req.replace = None
    req.start_session()


def test_finish_with_signature_without_mutual_auth(r: SpdmResponder) -> None:
    req = Tamper(dispatcher(r).exchange)
    req.authenticate()
    req.replace = lambda rq: bytes([rq[0], rq[1], 1, 0]) + bytes(96) + rq[4:]
    with pytest.raises(SpdmRequesterError) as exc:
        req.start_session()
    assert exc.value.error_code == E.InvalidRequest


def test_key_update_errors(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s = req.start_session()
    rsp = req.send(m.KEY_UPDATE(spdm_version=0x13, param1=7, param2=1).pack(), s)
    assert err(rsp) == E.InvalidRequest
    rsp = req.send(m.KEY_UPDATE(spdm_version=0x13, param1=3, param2=1).pack(), s)
    assert err(rsp) == E.InvalidRequest  # verify without an update
    req.key_update(s)
    req.key_update(s, all_keys=True)
    req.heartbeat(s)


def test_in_session_refuses_connection_requests(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    s = req.start_session()
    for raw in (m.GET_VERSION().pack(), get_caps(v=0x13),
                m.CHALLENGE(spdm_version=0x13, nonce=bytes(32)).pack()):
        assert err(req.send(raw, s)) == E.UnexpectedRequest
    req.heartbeat(s)


def test_get_version_ends_sessions(r: SpdmResponder) -> None:
    req = requester(r)
    req.authenticate()
    req.start_session()
    assert r.sessions
    get_version(r)
    assert not r.sessions


# -- vendor-defined ---------------------------------------------------------------------------
def test_vendor_defined_dispatch_and_errors(r: SpdmResponder) -> None:
    def handler(ctx, payload: bytes) -> bytes:  # type: ignore[no-untyped-def]
        if payload == b"deny":
            raise VendorError(E.SessionRequired)
        return payload[::-1] + bytes([ctx.session_id is not None])
    r.register_vendor_protocol(3, b"\x01\x00", handler)
    req = requester(r)
    req.authenticate()
    assert req.vendor_request(3, b"\x01\x00", b"abc") == b"cba\x00"
    with pytest.raises(SpdmRequesterError) as exc:
        req.vendor_request(3, b"\x01\x00", b"deny")
    assert exc.value.error_code == E.SessionRequired
    with pytest.raises(SpdmRequesterError) as exc:
        req.vendor_request(4, b"\x01\x00", b"abc")
    assert exc.value.error_code == E.UnsupportedRequest
    s = req.start_session()
    assert req.vendor_request(3, b"\x01\x00", b"abc", s) == b"cba\x01"

    def broken(ctx, payload: bytes) -> bytes:  # type: ignore[no-untyped-def]
        raise RuntimeError("handler bug")
    r.register_vendor_protocol(3, b"\x02\x00", broken)
    with pytest.raises(SpdmRequesterError) as exc:
        req.vendor_request(3, b"\x02\x00", b"abc", s)
    assert exc.value.error_code == E.Unspecified
    req.heartbeat(s)  # the session survived


# -- chunking ----------------------------------------------------------------------------------
def test_large_response_and_request_in_chunks(r: SpdmResponder) -> None:
    r.register_vendor_protocol(3, b"\x01\x00", lambda ctx, p: p * 2)
    req = requester(r, data_transfer_size=64)
    req.authenticate()
    assert len(req.get_measurements().blocks) == 4  # signed MEASUREMENTS > 64 bytes
    s = req.start_session()
    assert req.vendor_request(3, b"\x01\x00", bytes(range(200)), s) == bytes(range(200)) * 2


def test_chunk_errors(r: SpdmResponder) -> None:
    vca(r)
    assert err(r.handle_cma(m.CHUNK_GET(spdm_version=0x12, param2=9).pack())) == \
        E.InvalidRequest
    first = m.CHUNK_SEND(spdm_version=0x12, param2=1, chunk_seq_no=0, chunk_size=4,
                         large_message_size=8, spdm_chunk=b"\x12\x81\0\0")
    assert r.handle_cma(first.pack())[1] == m.CHUNK_SEND_ACK_CODE
    skip = m.CHUNK_SEND(spdm_version=0x12, param1=1, param2=1, chunk_seq_no=2,
                        chunk_size=4, spdm_chunk=b"\0\0\0\0")
    assert err(r.handle_cma(skip.pack())) == E.InvalidRequest
    huge = first.replace(large_message_size=1 << 20)
    assert err(r.handle_cma(huge.pack())) == E.RequestTooLarge
    short = m.CHUNK_SEND(spdm_version=0x12, param1=1, param2=2, chunk_seq_no=0,
                         chunk_size=4, large_message_size=8, spdm_chunk=b"\x12\x81\0\0")
    assert err(r.handle_cma(short.pack())) == E.InvalidRequest
    whole = m.CHUNK_SEND(spdm_version=0x12, param1=1, param2=3, chunk_seq_no=0,
                         chunk_size=4, large_message_size=4, spdm_chunk=b"\x12\x81\0\0")
    ack = m.CHUNK_SEND_ACK.unpack(r.handle_cma(whole.pack()))
    assert ack.response_to_large_request[1] == m.DIGESTS_CODE
    works(r)


def test_response_too_large_without_chunking(r: SpdmResponder) -> None:
    get_version(r)
    r.handle_cma(get_caps(dts=64, mx=64, flags=REQ_FLAGS & ~m.CapFlags.CHUNK_CAP))
    r.handle_cma(negotiate())
    rsp = r.handle_cma(m.GET_MEASUREMENTS(spdm_version=0x12, param2=0xFF).pack())
    assert err(rsp) == E.ResponseTooLarge
    assert struct.unpack_from("<I", rsp, 4)[0] > 64


# -- secured records ------------------------------------------------------------------------
def test_forged_replayed_and_unknown_records(r: SpdmResponder) -> None:
    doe = dispatcher(r)
    seen: list[bytes] = []

    def transport(obj: bytes) -> bytes:
        seen.append(obj)
        return doe.exchange(obj)

    req = SpdmRequester(transport)
    req.authenticate()
    s = req.start_session()
    req.heartbeat(s)
    heartbeat_record = seen[-1]
    # replay: the sequence number moved on, the MAC fails -> DecryptError, session ends
    rsp = doe.exchange(heartbeat_record)
    assert err(rsp[8:]) == E.DecryptError and not r.sessions
    # unknown session: the mailbox's ERROR, not an SPDM answer
    with pytest.raises(DoeError):
        doe.exchange(heartbeat_record)
    with pytest.raises(DoeError):
        doe.exchange(build_object(1, 2, b"\x01\x02"))
    # forged MAC on a live session
    s = req.start_session()
    record = bytearray(s.secured.seal(m.HEARTBEAT(spdm_version=0x13).pack()))
    record[-1] ^= 0x80
    assert err(r.handle_secured(bytes(record))) == E.DecryptError
    assert s.session_id not in r.sessions
    # and the connection itself is intact
    s = req.start_session()
    req.heartbeat(s)


def test_spdm_1_3_certificate_info_and_slot_size() -> None:
    """DSP0274 1.3 §10.7 CERTIFICATE: Param2 is CertInfo only when MULTI_KEY_CAP is
    set; this device never advertises it (CAPABILITIES Flags bits 27:26 = 0), so
    Param2 is reserved and must be 0.  SlotSizeRequested (GET_CERTIFICATE Param2
    bit 0) answers PortionLength 0 and the chain size in RemainderLength."""
    r = responder()
    assert get_version(r)[1] == m.VERSION_CODE
    caps = r.handle_cma(get_caps(0x13))
    assert struct.unpack_from("<I", caps, 8)[0] & (3 << 26) == 0   # no MULTI_KEY_CAP
    assert r.handle_cma(negotiate(0x13))[1] == m.ALGORITHMS_CODE
    chain = identity().for_asym("ecdsa-p384").spdm_chain("sha384")  # type: ignore[union-attr]
    # GET_CERTIFICATE 1.3: 13 82 | Param1 slot 0 | Param2 SlotSizeRequested | Offset | Length
    size = r.handle_cma(bytes([0x13, 0x82, 0x00, 0x01]) + struct.pack("<HH", 0, 0x100))
    assert size == bytes([0x13, 0x02, 0x00, 0x00]) + struct.pack("<HH", 0, len(chain))
    part = r.handle_cma(bytes([0x13, 0x82, 0x00, 0x00]) + struct.pack("<HH", 0, 0x100))
    assert part == bytes([0x13, 0x02, 0x00, 0x00]) + \
        struct.pack("<HH", 0x100, len(chain) - 0x100) + chain[:0x100]
