"""What independent SPDM peers (DMTF libspdm) require, checked on bytes written
out from DSP0274 (SPDM 1.2.x/1.3.x) and DSP0277 (secured messages 1.0-1.2),
never produced by our requester or responder.

Responder: HeartbeatPeriod, GET_CERTIFICATE through CHUNK_GET, ERROR version of
a bad GET_CAPABILITIES, HANDSHAKE_IN_THE_CLEAR, secured-message version 1.2.
Requester: the NEGOTIATE_ALGORITHMS it sends, the steppable flow contract
(request bytes, ResponseNotReady/RESPOND_IF_READY, ERROR), the UpdateAllKeys
KEY_UPDATE_ACK under the new response key.
(CertInfo, SessionRequired and the UpdateAllKeys responder side are in
test_spdm_errors.py / test_spdm_independent.py.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vfiouser_tdisp.device.device import DeviceProfile
from vfiouser_tdisp.spdm.requester import (
    SpdmRequest,
    SpdmRequester,
    SpdmRequesterError,
    doe_transport,
    drive,
)
from vfiouser_tdisp.spdm.responder import SpdmResponder

from .spdm_support import dispatcher, responder
from .test_spdm_independent import SETS, Hand

# GET_CAPABILITIES requester flags (DSP0274 1.2 Table "flag fields"): CERT_CAP(1),
# CHAL_CAP(2), ENCRYPT_CAP(6), MAC_CAP(7), KEY_EX_CAP(9), HBEAT_CAP(13), KEY_UPD_CAP(14)
BASE_FLAGS = (1 << 1) | (1 << 2) | (1 << 6) | (1 << 7) | (1 << 9) | (1 << 13) | (1 << 14)
HANDSHAKE_IN_THE_CLEAR_CAP = 1 << 15
CHUNK_CAP = 1 << 17
ENCAP_CAP = 1 << 12


def vca(hand: Hand, flags: int = BASE_FLAGS, dts: int = 4096, mx: int = 4096) -> bytes:
    """GET_VERSION/GET_CAPABILITIES/NEGOTIATE_ALGORITHMS by hand; returns CAPABILITIES."""
    v, a = hand.v, hand.a
    req = struct.pack("<BBBB", 0x10, 0x84, 0, 0)
    hand.A = req + hand.plain(req)
    req = struct.pack("<BBBBBBHIII", v, 0xE1, 0, 0, 0, 12, 0, flags, dts, mx)
    caps = hand.plain(req)
    hand.A += req + caps
    structs = struct.pack("<BBH", 2, 0x20, a.dhe_bit) + struct.pack("<BBH", 3, 0x20, a.aead_bit) + \
        struct.pack("<BBH", 5, 0x20, 1)
    req = struct.pack("<BBBBHBBII12sBBBB", v, 0xE3, 3, 0, 32 + len(structs), 1, 2,
                      a.asym_bit, a.hash_bit, bytes(12), 0, 0, 0, 0) + structs
    hand.A += req + hand.plain(req)
    return caps


def opaque_versions(*versions: int) -> bytes:
    """DSP0277 §"secured message opaque data": general opaque data table (SPDM 1.2
    OtherParamsSupport OpaqueDataFmt1) with one SUPPORTED_VERSION_LIST element."""
    element = struct.pack("<BBB", 1, 1, len(versions)) + \
        b"".join(struct.pack("<H", v << 8) for v in versions)
    opaque = struct.pack("<B3xBBH", 1, 0, 0, len(element)) + element
    return opaque + bytes(-len(opaque) % 4)


# -- responder ----------------------------------------------------------------------------
def key_exchange(hand: Hand, versions: tuple[int, ...] = (0x11,)
                 ) -> tuple[bytes, bytes, ec.EllipticCurvePrivateKey, int]:
    """KEY_EXCHANGE by hand: (request, response, our DHE key, point size)."""
    mine = ec.generate_private_key(hand.a.curve())
    point = mine.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    opaque = opaque_versions(*versions)
    req = struct.pack("<BBBBHBB", hand.v, 0xE4, 0, 0, 0x1234, 0, 0) + os.urandom(32) + \
        point + struct.pack("<H", len(opaque)) + opaque
    return req, hand.plain(req), mine, len(point)


@pytest.mark.parametrize("period", [None, 0, 5])
def test_heartbeat_period_in_key_exchange_rsp(period: int | None) -> None:
    """DSP0274 1.2 §10.16 KEY_EXCHANGE_RSP Param1 = HeartbeatPeriod (seconds, 0 = no
    HEARTBEAT).  The device announces a non-zero period unless its profile says 0."""
    r = responder() if period is None else responder(heartbeat_period=period)
    hand = Hand(r, SETS["p384-sha384-aes256"], 0x12)
    vca(hand)
    hand.certificate()
    _, rsp, _, _ = key_exchange(hand)
    assert rsp[:2] == b"\x12\x64"
    assert rsp[2] == (60 if period is None else period)
    assert DeviceProfile("x", "dma-test").spdm_heartbeat_period == 60


@pytest.mark.parametrize("version", [0x12, 0x13])
def test_secured_message_version_1_2_is_selected(version: int) -> None:
    """DSP0277 1.2 is a version a requester may offer (libspdm offers 1.2 and 1.1); the
    responder's VERSION_SELECTION element (SMDataID 0) names it: 01 00 | 00 12."""
    r = responder()
    hand = Hand(r, SETS["p384-sha384-aes256"], version)
    vca(hand)
    hand.certificate()
    for offered, chosen in (((0x12,), 0x12), ((0x11, 0x12), 0x12), ((0x10,), 0x10)):
        _, rsp, _, dhe = key_exchange(hand, offered)
        pos = 8 + 32 + dhe
        (length,) = struct.unpack_from("<H", rsp, pos)
        opaque = rsp[pos + 2:pos + 2 + length]
        # general opaque table: TotalElements 1, element header (ID 0 = DMTF, VendorLen 0,
        # OpaqueElementDataLen 4), then SMDataVersion 1, SMDataID 0, SelectedVersion
        assert opaque == struct.pack("<B3xBBH", 1, 0, 0, 4) + struct.pack("<BBH", 1, 0,
                                                                        chosen << 8)


def test_invalid_get_capabilities_is_answered_in_the_request_version() -> None:
    """DSP0274 1.2 §10.4: DataTransferSize below 42 is invalid; the ERROR response
    (§10.9) carries the request's SPDMVersion (the version being negotiated)."""
    for version in (0x12, 0x13):
        r = responder()
        assert r.handle_cma(b"\x10\x84\x00\x00")[1] == 0x04
        bad = struct.pack("<BBBBBBHIII", version, 0xE1, 0, 0, 0, 12, 0, BASE_FLAGS, 41, 41)
        assert r.handle_cma(bad) == bytes([version, 0x7F, 0x01, 0x00])
    r = responder()
    r.handle_cma(b"\x10\x84\x00\x00")
    bad = struct.pack("<BBBBBBHI", 0x11, 0xE1, 0, 0, 0, 32, 0, BASE_FLAGS)  # CTExponent 32
    assert r.handle_cma(bad) == bytes([0x11, 0x7F, 0x01, 0x00])


def chunk_get_all(r: SpdmResponder, version: int, handle: int) -> bytes:
    """DSP0274 1.2 §10.20 CHUNK_GET / CHUNK_RESPONSE until the LastChunk bit."""
    whole, seq, size = b"", 0, None
    while True:
        rsp = r.handle_cma(struct.pack("<BBBBH", version, 0x86, 0, handle, seq))
        assert rsp[:2] == bytes([version, 0x06]) and rsp[3] == handle
        got_seq, _, chunk_size = struct.unpack_from("<HHI", rsp, 4)
        assert got_seq == seq
        pos = 12
        if seq == 0:
            (size,) = struct.unpack_from("<I", rsp, 12)
            pos = 16
        whole += rsp[pos:pos + chunk_size]
        if rsp[2] & 1:
            assert len(whole) == size
            return whole
        seq += 1


def test_get_certificate_whole_chain_through_chunk_get() -> None:
    """DSP0274 1.2 §10.6/§10.20: with CHUNK_CAP on both sides a GET_CERTIFICATE for
    Offset 0, Length 0xFFFF gets the whole chain (RemainderLength 0) as a large
    response: ERROR LargeResponse (0x0F) with the handle, then CHUNK_GETs."""
    r = responder()
    hand = Hand(r, SETS["p384-sha384-aes256"], 0x12)
    caps = vca(hand, BASE_FLAGS | CHUNK_CAP, dts=256, mx=65536)
    assert struct.unpack_from("<I", caps, 8)[0] & CHUNK_CAP
    chain = r.config.identity.for_asym("ecdsa-p384").spdm_chain("sha384")  # type: ignore[union-attr]
    assert len(chain) > 256
    err = r.handle_cma(struct.pack("<BBBBHH", 0x12, 0x82, 0, 0, 0, 0xFFFF))
    assert err[:4] == b"\x12\x7f\x0f\x00" and len(err) == 5
    whole = chunk_get_all(r, 0x12, err[4])
    assert whole == b"\x12\x02\x00\x00" + struct.pack("<HH", len(chain), 0) + chain


def test_get_certificate_without_chunking_stays_within_the_transfer_size() -> None:
    """Without CHUNK_CAP the portion fits the requester's DataTransferSize (1.2)."""
    r = responder()
    hand = Hand(r, SETS["p384-sha384-aes256"], 0x12)
    vca(hand, BASE_FLAGS, dts=256, mx=256)
    rsp = r.handle_cma(struct.pack("<BBBBHH", 0x12, 0x82, 0, 0, 0, 0xFFFF))
    portion, remainder = struct.unpack_from("<HH", rsp, 4)
    assert rsp[:4] == b"\x12\x02\x00\x00" and portion == 256 - 8 and len(rsp) == 256


@pytest.mark.parametrize("version", [0x12, 0x13])
def test_handshake_in_the_clear_by_hand(version: int) -> None:
    """DSP0274 1.2 §10.16-10.17 with HANDSHAKE_IN_THE_CLEAR_CAP on both sides:
    KEY_EXCHANGE_RSP ends at its signature (no ResponderVerifyData); FINISH and
    FINISH_RSP are plain SPDM messages; FINISH_RSP carries ResponderVerifyData =
    HMAC(rsp finished_key, Hash(K || FINISH || FINISH_RSP header)); TH2 covers
    FINISH_RSP with it; the data keys (DSP0277 records) follow."""
    a = SETS["p256-sha256-aes128"]
    r = responder(handshake_in_the_clear=True)
    hand = Hand(r, a, version)
    caps = vca(hand, BASE_FLAGS | HANDSHAKE_IN_THE_CLEAR_CAP)
    assert struct.unpack_from("<I", caps, 8)[0] & HANDSHAKE_IN_THE_CLEAR_CAP
    chain = hand.certificate()
    h, S = hand.h, a.sig_size
    ke, rsp, mine, dhe = key_exchange(hand, (0x12,))
    pos = 8 + 32 + dhe
    (opaque_len,) = struct.unpack_from("<H", rsp, pos)
    pos += 2 + opaque_len
    assert len(rsp) == pos + S          # signature last, no ResponderVerifyData
    transcript = hand.A + hand.H(chain) + ke + rsp[:pos]
    hand.verify("key_exchange", transcript, rsp[pos:])
    transcript += rsp[pos:]
    th1 = hand.H(transcript)
    shared = mine.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(
        a.curve(), b"\x04" + rsp[40:40 + dhe]))
    hs = hmac.new(bytes(h), shared, a.hash_name).digest()
    fin_req = hand.expand(hand.expand(hs, h, b"req hs data", th1), h, b"finished")
    fin_rsp = hand.expand(hand.expand(hs, h, b"rsp hs data", th1), h, b"finished")
    header = struct.pack("<BBBB", version, 0xE5, 0, 0)
    finish = header + hmac.new(fin_req, hand.H(transcript + header), a.hash_name).digest()
    # a FINISH with a wrong RequesterVerifyData first?  No: that would end the session.
    finish_rsp = hand.plain(finish)     # DOE type 1, in the clear
    rsp_header = struct.pack("<BBBB", version, 0x65, 0, 0)
    assert finish_rsp == rsp_header + hmac.new(
        fin_rsp, hand.H(transcript + finish + rsp_header), a.hash_name).digest()
    th2 = hand.H(transcript + finish + finish_rsp)
    master = hmac.new(hand.expand(hs, h, b"derived"), bytes(h), a.hash_name).digest()
    req_data = hand.expand(master, h, b"req app data", th2)
    rsp_data = hand.expand(master, h, b"rsp app data", th2)
    sid = 0x1234 | (struct.unpack_from("<H", rsp, 4)[0] << 16)
    hb = struct.pack("<BBBB", version, 0xE8, 0, 0)
    ack = hand.open(sid, rsp_data, 0, r.handle_secured(hand.seal(sid, req_data, 0, hb)))
    assert ack == struct.pack("<BBBB", version, 0x68, 0, 0)
    # a second plain FINISH has no handshake to complete
    assert r.handle_cma(finish)[:3] == bytes([version, 0x7F, 0x04])


def test_without_handshake_in_the_clear_key_exchange_rsp_keeps_verify_data() -> None:
    """The cap is offered by the profile only: a default responder does not set it,
    so KEY_EXCHANGE_RSP ends with ResponderVerifyData even if the requester asks."""
    r = responder()
    hand = Hand(r, SETS["p256-sha256-aes128"], 0x12)
    caps = vca(hand, BASE_FLAGS | HANDSHAKE_IN_THE_CLEAR_CAP)
    assert not struct.unpack_from("<I", caps, 8)[0] & HANDSHAKE_IN_THE_CLEAR_CAP
    hand.certificate()
    _, rsp, _, dhe = key_exchange(hand)
    pos = 8 + 32 + dhe
    pos += 2 + struct.unpack_from("<H", rsp, pos)[0]
    assert len(rsp) == pos + 64 + 32


# -- requester: the steppable contract --------------------------------------------------
P384_REQUESTER = dict(hashes=("sha384",), asyms=("ecdsa-p384",), dhes=("secp384r1",),
                      aeads=("aes-256-gcm",))


def test_flow_yields_the_dsp0274_requests_and_handles_response_not_ready() -> None:
    req = SpdmRequester(**P384_REQUESTER)   # no transport: stepped by hand
    flow = req.init_connection_flow()
    # GET_VERSION is always version 1.0 (DSP0274 §10.3)
    assert next(flow) == SpdmRequest(b"\x10\x84\x00\x00", secured=False)
    # VERSION: Reserved, VersionNumberEntryCount 1, entry 1.2 (0x1200)
    step = flow.send(b"\x10\x04\x00\x00\x00\x01\x00\x12")
    # GET_CAPABILITIES 1.2 (Table "GET_CAPABILITIES"): CTExponent 12, Flags CERT|CHAL|
    # ENCRYPT|MAC|KEY_EX|ENCAP|HBEAT|KEY_UPD|CHUNK, DataTransferSize 4096, MaxSPDMmsgSize
    # 65536
    assert step == SpdmRequest(struct.pack("<BBBBBBHIII", 0x12, 0xE1, 0, 0, 0, 12, 0,
                                           BASE_FLAGS | ENCAP_CAP | CHUNK_CAP, 4096, 65536),
                               False)
    rsp_flags = BASE_FLAGS | (2 << 3) | CHUNK_CAP
    step = flow.send(struct.pack("<BBBBBBHIII", 0x12, 0x61, 0, 0, 0, 12, 0, rsp_flags,
                                 4096, 65536))
    # NEGOTIATE_ALGORITHMS 1.2: Param1 = 3 AlgStructs (DHE secp384r1 bit 4, AEAD
    # AES-256-GCM bit 1, KeySchedule SPDM bit 0) and no ReqBaseAsymAlg struct (an
    # AlgStruct with AlgSupported 0 is refused by libspdm); Length 32 + 12; DMTF
    # measurement spec; OpaqueDataFmt1; BaseAsymAlgo ECDSA P-384 (bit 7), SHA-384 (bit 1)
    expected = struct.pack("<BBBBHBBII12sBBBB", 0x12, 0xE3, 3, 0, 44, 1, 2, 1 << 7, 1 << 1,
                           bytes(12), 0, 0, 0, 0) + \
        struct.pack("<BBH", 2, 0x20, 1 << 4) + struct.pack("<BBH", 3, 0x20, 1 << 1) + \
        struct.pack("<BBH", 5, 0x20, 1)
    assert step == SpdmRequest(expected, False)
    # ERROR ResponseNotReady (0x42): RDTExponent 0, RequestCode E3, Token 7, RDTM 1
    # -> RESPOND_IF_READY with Param1 = the original request code, Param2 = Token
    step = flow.send(b"\x12\x7f\x42\x00\x00\xe3\x07\x01")
    assert step == SpdmRequest(b"\x12\xff\xe3\x07", False)
    # a plain ERROR ends the flow with the error code
    with pytest.raises(SpdmRequesterError) as exc:
        flow.send(b"\x12\x7f\x01\x00")
    assert exc.value.error_code == 0x01


def test_flow_blocking_and_stepped_runs_agree_with_a_responder() -> None:
    """drive() over a transport and a hand loop run the same flow to the same end."""
    r = responder()
    transport = doe_transport(dispatcher(r).exchange)
    req = SpdmRequester(**P384_REQUESTER)
    flow = req.authenticate_flow()
    request = next(flow)
    seen = []
    while True:
        seen.append(request.payload[1])
        try:
            request = flow.send(transport(request))
        except StopIteration as done:
            auth = done.value
            break
    assert auth.request_response_code == 0x03   # CHALLENGE_AUTH
    assert seen == [0x84, 0xE1, 0xE3, 0x81, 0x82, 0x83]   # whole chain in one GET_CERTIFICATE
    session = drive(req.start_session_flow(), transport)
    assert session.secured_version == 0x12 and session.heartbeat_period == 60
    with pytest.raises(SpdmRequesterError, match="no transport"):
        req.heartbeat(session)


def test_requester_reads_update_all_keys_ack_under_the_new_response_key() -> None:
    """DSP0274 1.2 §10.21: after UpdateAllKeys the responder answers under its new
    response key ("traffic upd" of the old secret, sequence 0).  The request still
    goes under the old request key; an ACK under the old response key is refused."""
    a = SETS["p384-sha384-aes256"]
    r = responder()
    req = SpdmRequester(dispatcher(r).exchange, **P384_REQUESTER)
    req.authenticate()
    for ack_under_new_key in (True, False):
        s = req.start_session()
        hand = Hand(r, a, req.conn.version)
        assert s.secured.request is not None and s.secured.response is not None
        req_secret, req_seq = s.secured.request.secret, s.secured.request.sequence
        rsp_secret, rsp_seq = s.secured.response.secret, s.secured.response.sequence
        flow = req.key_update_operation_flow(s, 2)
        record = next(flow).payload
        ku = hand.open(s.session_id, req_secret, req_seq, record)
        assert ku[:3] == bytes([req.conn.version, 0xE9, 0x02])
        ack = bytes([req.conn.version, 0x69, 0x02, ku[3]])
        new_rsp = hand.expand(rsp_secret, hashlib.sha384().digest_size, b"traffic upd")
        if ack_under_new_key:
            with pytest.raises(StopIteration):
                flow.send(hand.seal(s.session_id, new_rsp, 0, ack))
            assert s.secured.response.secret == new_rsp
        else:
            with pytest.raises(SpdmRequesterError, match="old response key"):
                flow.send(hand.seal(s.session_id, rsp_secret, rsp_seq, ack))
        r.sessions.clear()


def test_every_request_code_has_one_typed_route() -> None:
    """Each request the codec knows is routed to a handler for exactly its class."""
    from vfiouser_tdisp.spdm import messages as m
    from vfiouser_tdisp.spdm.responder import ROUTES
    assert set(ROUTES) == set(m.REQUESTS)
    for code, route in ROUTES.items():
        assert route.cls is m.REQUESTS[code] and route.cls.CODE == code


def hand_vca(flow, rsp_flags: int = BASE_FLAGS | (2 << 3) | CHUNK_CAP,  # type: ignore[no-untyped-def]
             dts: int = 4096, mx: int = 65536) -> None:
    """Answer a stepped init_connection_flow with hand-written 1.2 responses (P-384 set)."""
    next(flow)
    flow.send(b"\x10\x04\x00\x00\x00\x01\x00\x12")
    flow.send(struct.pack("<BBBBBBHIII", 0x12, 0x61, 0, 0, 0, 12, 0, rsp_flags, dts, mx))
    structs = struct.pack("<BBH", 2, 0x20, 1 << 4) + struct.pack("<BBH", 3, 0x20, 1 << 1) + \
        struct.pack("<BBH", 5, 0x20, 1)
    # ALGORITHMS 1.2: Length 36 + structs, DMTF measurement spec, OpaqueDataFmt1,
    # MeasurementHashAlgo SHA-384 (bit 2), BaseAsymSel P-384, BaseHashSel SHA-384
    algorithms = struct.pack("<BBBBHBBIII11sBBBH", 0x12, 0x63, 3, 0, 36 + len(structs), 1, 2,
                             1 << 2, 1 << 7, 1 << 1, bytes(11), 0, 0, 0, 0) + structs
    with pytest.raises(StopIteration):
        flow.send(algorithms)


def test_flow_fetches_a_large_response_with_chunk_get() -> None:
    """DSP0274 1.2 §10.20: ERROR LargeResponse (0x0F, ExtendedErrorData = Handle) is
    followed by CHUNK_GET (Param2 = Handle, ChunkSeqNo from 0) until LastChunk."""
    req = SpdmRequester(**P384_REQUESTER)
    hand_vca(req.init_connection_flow())
    assert req.conn.version == 0x12 and req.conn.responder_dts == 4096
    flow = req.get_digests_flow()
    assert next(flow) == SpdmRequest(b"\x12\x81\x00\x00", False)
    assert flow.send(b"\x12\x7f\x0f\x00\x05") == SpdmRequest(b"\x12\x86\x00\x05\x00\x00", False)
    digests = b"\x12\x01\x00\x01" + bytes(range(48))
    first, rest = digests[:20], digests[20:]
    step = flow.send(struct.pack("<BBBBHHII", 0x12, 0x06, 0, 5, 0, 0, len(first),
                                 len(digests)) + first)
    assert step == SpdmRequest(b"\x12\x86\x00\x05\x01\x00", False)
    with pytest.raises(StopIteration) as done:
        flow.send(struct.pack("<BBBBHHI", 0x12, 0x06, 1, 5, 1, 0, len(rest)) + rest)
    assert done.value.value == [bytes(range(48))]


def test_requester_handshake_in_the_clear_sends_finish_unsecured() -> None:
    """With HANDSHAKE_IN_THE_CLEAR_CAP on both sides FINISH is a plain SPDM object
    (DOE type 1) of header + RequesterVerifyData, and the session then runs under
    the data keys (records, type 2)."""
    r = responder(handshake_in_the_clear=True)
    transport = doe_transport(dispatcher(r).exchange)
    req = SpdmRequester(handshake_in_the_clear=True, **P384_REQUESTER)
    drive(req.authenticate_flow(), transport)
    flow = req.start_session_flow()
    sent = []
    request = next(flow)
    while True:
        sent.append(request)
        try:
            request = flow.send(transport(request))
        except StopIteration as done:
            session = done.value
            break
    assert [(s.payload[1], s.secured) for s in sent] == [(0xE4, False), (0xE5, False)]
    assert sent[1].payload[:4] == bytes([req.conn.version, 0xE5, 0, 0])
    assert len(sent[1].payload) == 4 + 48
    heartbeat = req.heartbeat_flow(session)
    assert next(heartbeat).secured


# -- responder-initiated KEY_UPDATE (encapsulated requests) ------------------------------


def clear_session(r: SpdmResponder, version: int, flags: int
                  ) -> tuple[Hand, int, bytes, bytes]:
    """A session by hand (HANDSHAKE_IN_THE_CLEAR keeps it short); returns the hand,
    the session ID and the request/response data secrets (DSP0274 §12 key schedule)."""
    a = SETS["p256-sha256-aes128"]
    hand = Hand(r, a, version)
    caps = vca(hand, flags | HANDSHAKE_IN_THE_CLEAR_CAP)
    assert struct.unpack_from("<I", caps, 8)[0] & HANDSHAKE_IN_THE_CLEAR_CAP
    chain = hand.certificate()
    h = hand.h
    ke, rsp, mine, dhe = key_exchange(hand, (0x12,))
    transcript = hand.A + hand.H(chain) + ke + rsp
    th1 = hand.H(transcript)
    shared = mine.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(
        a.curve(), b"\x04" + rsp[40:40 + dhe]))
    hs = hmac.new(bytes(h), shared, a.hash_name).digest()
    fin_req = hand.expand(hand.expand(hs, h, b"req hs data", th1), h, b"finished")
    header = struct.pack("<BBBB", version, 0xE5, 0, 0)
    finish = header + hmac.new(fin_req, hand.H(transcript + header), a.hash_name).digest()
    finish_rsp = hand.plain(finish)
    th2 = hand.H(transcript + finish + finish_rsp)
    master = hmac.new(hand.expand(hs, h, b"derived"), bytes(h), a.hash_name).digest()
    sid = 0x1234 | (struct.unpack_from("<H", rsp, 4)[0] << 16)
    return (hand, sid, hand.expand(master, h, b"req app data", th2),
            hand.expand(master, h, b"rsp app data", th2))


@pytest.mark.parametrize("version", [0x12, 0x13])
def test_responder_initiated_key_update_through_encapsulated_requests(version: int) -> None:
    """DSP0274 1.2 §10.23 (encapsulated requests) carrying KEY_UPDATE §10.21, the
    device being the KEY_UPDATE requester: GET_ENCAPSULATED_REQUEST (EA) ->
    ENCAPSULATED_REQUEST (6A, Param1 RequestID) + KEY_UPDATE UpdateKey;
    DELIVER_ENCAPSULATED_RESPONSE (EB, RequestID) + KEY_UPDATE_ACK ->
    ENCAPSULATED_RESPONSE_ACK (6B; 1.2+: AckRequestID, 3 reserved bytes) + VerifyNewKey,
    already under the device's new key (sequence 0); the last ACK has PayloadType 0.
    spdm-emu's OOB_ENCAP_KEY_UPDATE socket command (0x8001, session ID) starts it."""
    import threading

    from vfiouser_tdisp.doe.emu_socket import SpdmEmuServer
    from vfiouser_tdisp.server import encap_key_update

    r = responder(handshake_in_the_clear=True)
    hand, sid, req_data, rsp_data = clear_session(r, version, BASE_FLAGS | ENCAP_CAP)
    v = version
    seq = {"req": 0, "rsp": 0}
    rsp_key = [rsp_data]

    def call(message: bytes) -> bytes:
        record = r.handle_secured(hand.seal(sid, req_data, seq["req"], message))
        seq["req"] += 1
        answer = hand.open(sid, rsp_key[0], seq["rsp"], record)
        seq["rsp"] += 1
        return answer

    # nothing queued yet: 1.3 NoPendingRequests (0x45), 1.2 UnexpectedRequest
    assert call(bytes([v, 0xEA, 0, 0])) == bytes([v, 0x7F, 0x45 if v >= 0x13 else 0x04, 0])
    emu = SpdmEmuServer(dispatcher(r), threading.RLock(), oob={0x8001: encap_key_update(r)})
    reply, done = emu.handle_frame(0x8001, 2, struct.pack("<I", sid))
    assert (reply, done) == (struct.pack(">III", 0x8001, 2, 0), False)

    encap = call(bytes([v, 0xEA, 0, 0]))
    assert len(encap) == 8 and encap[:2] == bytes([v, 0x6A]) and encap[3] == 0
    rid, inner = encap[2], encap[4:]
    assert inner[:3] == bytes([v, 0xE9, 0x01])          # KEY_UPDATE UpdateKey, Tag
    # a DELIVER_ENCAPSULATED_RESPONSE for another RequestID is refused
    assert call(bytes([v, 0xEB, rid ^ 0x80, 0, v, 0x69, 1, inner[3]]))[:3] == \
        bytes([v, 0x7F, 0x01])
    # the ACK of UpdateKey; the answer already comes under the device's new key
    record = r.handle_secured(hand.seal(sid, req_data, seq["req"],
                                        bytes([v, 0xEB, rid, 0, v, 0x69, 1, inner[3]])))
    seq["req"] += 1
    rsp_key[0] = hand.expand(rsp_data, hand.h, b"traffic upd")
    seq["rsp"] = 0
    ack = hand.open(sid, rsp_key[0], 0, record)
    seq["rsp"] = 1
    assert ack[:2] == bytes([v, 0x6B]) and ack[3] == 1 and ack[4:8] == bytes([rid, 0, 0, 0])
    rid2, verify = ack[2], ack[8:]
    assert len(verify) == 4 and verify[:3] == bytes([v, 0xE9, 0x03])   # VerifyNewKey
    last = call(bytes([v, 0xEB, rid2, 0, v, 0x69, 3, verify[3]]))
    assert last == bytes([v, 0x6B, 0, 0, rid2, 0, 0, 0])
    # the session goes on: request key unchanged, response under the new key
    assert call(bytes([v, 0xE8, 0, 0])) == bytes([v, 0x68, 0, 0])
    assert call(bytes([v, 0xEA, 0, 0]))[1:3] == bytes([0x7F, 0x45 if v >= 0x13 else 0x04])


def test_requester_serves_the_responder_initiated_key_update() -> None:
    """The requester side of the same exchange: nothing pending -> 0 requests served;
    after the device queues a KEY_UPDATE, GET_ENCAPSULATED_REQUEST and two
    DELIVER_ENCAPSULATED_RESPONSEs (UpdateKey, VerifyNewKey), the session goes on
    under the device's new key."""
    r = responder()
    req = SpdmRequester(dispatcher(r).exchange, **P384_REQUESTER)
    req.authenticate()
    assert req.conn.responder_flags & ENCAP_CAP
    s = req.start_session()
    assert req.encapsulated(s) == 0
    old = s.secured.response
    assert r.request_key_update(s.session_id)
    sent: list[SpdmRequest] = []
    transport = doe_transport(dispatcher(r).exchange)

    def recording(request: SpdmRequest) -> bytes:
        sent.append(request)
        return transport(request)

    assert drive(req.encapsulated_flow(s), recording) == 2
    assert [request.secured for request in sent] == [True] * 3
    assert s.secured.response is not old
    req.heartbeat(s)
    req.key_update(s, all_keys=True)
    req.heartbeat(s)


@pytest.mark.parametrize("code", [0xEA, 0xEB])
def test_encapsulated_requests_need_encap_cap(code: int) -> None:
    """Without ENCAP_CAP in the requester's GET_CAPABILITIES the encapsulated-request
    codes are unsupported: ERROR UnsupportedRequest, ErrorData = the request code."""
    r = responder()
    hand = Hand(r, SETS["p384-sha384-aes256"], 0x12)
    vca(hand, BASE_FLAGS)
    assert r.handle_cma(bytes([0x12, code, 0, 0])) == bytes([0x12, 0x7F, 0x07, code])


def test_ide_km_and_tdisp_messages_step_one_object_at_a_time() -> None:
    """The TSM requesters are flows too: each IDE_KM / TDISP message is exactly one
    secured object (DOE type 2) and its answer; a wrong answer raises out of send()."""
    from vfiouser_tdisp.device.device import Device, get_profile
    from vfiouser_tdisp.ide.capability import KeyDirection, KeySubstream
    from vfiouser_tdisp.tdisp import messages as t
    from vfiouser_tdisp.tsm.core import IdeKmRequester, PciSigChannel, TdispRequester

    from .spdm_support import identity

    device = Device(get_profile("virtio-rng"), identity=identity())
    transport = doe_transport(device.doe.exchange)
    spdm = SpdmRequester()                     # no transport of its own
    drive(spdm.authenticate_flow(), transport)
    session = drive(spdm.start_session_flow(), transport)
    channel = PciSigChannel(spdm, session)
    flow = IdeKmRequester(channel).key_prog_flow(3, 0, KeyDirection.RX, KeySubstream.PR,
                                                 bytes(32), bytes(8))
    request = next(flow)
    assert request.secured and request.payload[:4] == struct.pack("<I", session.session_id)
    with pytest.raises(StopIteration) as done:
        flow.send(transport(request))
    assert done.value.value.status == 0        # KP_ACK Status 0: success
    objects = []

    def counting(request: SpdmRequest) -> bytes:
        objects.append(request)
        return transport(request)

    version = drive(TdispRequester(channel).version_flow(t.make_function_id(0, 0)), counting)
    assert len(objects) == 1 and objects[0].secured and version.message_type
    flow2 = TdispRequester(channel).state_flow(t.make_function_id(0, 0))
    next(flow2)
    with pytest.raises(SpdmRequesterError):
        flow2.send(b"\x13\x7f\x06\x00")   # plain ERROR DecryptError: session gone
