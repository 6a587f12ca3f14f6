"""Fuzzing the SPDM responder's request parsers (hypothesis).

Whatever arrives -- random bytes, valid requests with flipped, cut or added
bytes, garbage inside a valid secured record, forged records -- the responder
answers with a well-formed SPDM message (or, for an undecodable secured
record, the mailbox error), never raises anything else, and afterwards a full
VCA + certificate + CHALLENGE still succeeds.  Plain requests are fuzzed in
every connection state, including with a session in its handshake phase and
an established one; secured records in the handshake and data phases.

The long runs are marked ``slow`` (deselect them with ``-m 'not slow'``); the
default suite and CI run them.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfiouser_tdisp.doe.protocols import DoeError
from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.spdm.requester import RequesterSession, SpdmRequester, SpdmRequesterError
from vfiouser_tdisp.spdm.session import SecuredMessageError

from .spdm_support import dispatcher, requester, responder

FAST = dict(hashes=("sha256",), asyms=("ecdsa-p256",), dhes=("secp256r1",),
            aeads=("aes-128-gcm",))
RESPONSE_CODES = {cls.CODE for cls in m.RESPONSES.values()}
STATES = ["none", "version", "capabilities", "negotiated", "authenticated", "handshaking",
          "in-session"]


def valid_requests(version: int = 0x13) -> list[bytes]:
    v = version
    return [
        m.GET_VERSION().pack(),
        m.GET_CAPABILITIES(spdm_version=v, ct_exponent=12, flags=SpdmRequester.CAP_FLAGS,
                           data_transfer_size=4096, max_spdm_msg_size=65536).pack(),
        m.NEGOTIATE_ALGORITHMS(spdm_version=v, param1=2, length=40,
                               measurement_specification=1, other_params_support=2,
                               base_asym_algo=0x90, base_hash_algo=3,
                               req_alg_struct=bytes.fromhex("0220180003200300")).pack(),
        m.GET_DIGESTS(spdm_version=v).pack(),
        m.GET_CERTIFICATE(spdm_version=v, offset=0, length=0x200).pack(),
        m.CHALLENGE(spdm_version=v, param2=1, nonce=bytes(32)).pack(),
        m.GET_MEASUREMENTS(spdm_version=v, param1=1, param2=0xFF, nonce=bytes(32)).pack(),
        m.KEY_EXCHANGE(spdm_version=v, req_session_id=5, exchange_data=bytes(96)).pack(
            m.Sizes(version=v, dhe=96)),
        m.VENDOR_DEFINED_REQUEST(spdm_version=v, standard_id=3, len=2, vendor_id=b"\x01\x00",
                                 req_length=3, vendor_defined_req_payload=b"\x01\x10\x81").pack(),
        m.CHUNK_SEND(spdm_version=v, chunk_size=4, large_message_size=4,
                     spdm_chunk=b"\x13\x81\0\0").pack(),
        m.CHUNK_GET(spdm_version=v, param2=1).pack(),
        m.HEARTBEAT(spdm_version=v).pack(),
        m.KEY_UPDATE(spdm_version=v, param1=1, param2=1).pack(),
        m.END_SESSION(spdm_version=v).pack(),
        m.RESPOND_IF_READY(spdm_version=v).pack(),
    ]


VALID = valid_requests()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "add", "set"]))
        if op == "flip" and base:
            i = draw(st.integers(0, len(base) - 1))
            base[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del base[draw(st.integers(0, len(base))):]
        elif op == "add":
            base += draw(st.binary(min_size=1, max_size=64))
        elif op == "set" and base:
            base[draw(st.integers(0, min(len(base) - 1, 8)))] = draw(st.integers(0, 255))
    return bytes(base)


requests = st.one_of(st.binary(max_size=300), mutated())


def prepared(state: str):  # type: ignore[no-untyped-def]
    r = responder()
    if state == "none":
        return r
    req = requester(r, **FAST)
    if state == "version":
        r.handle_cma(m.GET_VERSION().pack())
    elif state == "capabilities":
        r.handle_cma(m.GET_VERSION().pack())
        r.handle_cma(VALID[1])
    else:
        req.init_connection()
        if state != "negotiated":
            req.get_digests()
            req.get_certificate()
        if state == "handshaking":
            HandshakeOnly(r).open()
        elif state == "in-session":
            req.start_session()
    return r


class HandshakeOnly(SpdmRequester):
    """Stops a session after KEY_EXCHANGE_RSP: the responder is left in the handshake phase."""

    class Stop(Exception):
        pass

    def __init__(self, r) -> None:  # type: ignore[no-untyped-def]
        super().__init__(dispatcher(r).exchange, **FAST)  # type: ignore[arg-type]
        self.session: RequesterSession | None = None

    def send_flow(self, request: bytes, session=None, **kw):  # type: ignore[no-untyped-def]
        if session is not None and request[1] == m.FINISH_CODE:
            self.session = session
            raise self.Stop
        return super().send_flow(request, session, **kw)

    def open(self) -> RequesterSession:
        self.authenticate()
        with pytest.raises(self.Stop):
            self.start_session()
        assert self.session is not None
        return self.session


def well_formed(rsp: bytes) -> None:
    assert len(rsp) >= 4 and 0x10 <= rsp[0] <= 0x13
    assert rsp[1] in RESPONSE_CODES, rsp.hex()
    if rsp[1] == m.ERROR_CODE:
        assert m.SpdmErrorCode.name(rsp[2]) != f"0x{rsp[2]:02x}", rsp.hex()


def still_works(r) -> None:  # type: ignore[no-untyped-def]
    req = requester(r, **FAST)
    req.authenticate()


RESPONDERS = {state: prepared(state) for state in STATES}


def fuzz_plain(state: str, data: bytes, recover: bool) -> None:
    r = RESPONDERS[state]
    well_formed(r.handle_cma(data))
    if recover:
        still_works(r)
        RESPONDERS[state] = prepared(state)


@pytest.mark.parametrize("state", STATES)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests, recover=st.integers(0, 9))
def test_plain_requests(state: str, data: bytes, recover: int) -> None:
    fuzz_plain(state, data, recover == 0)


class SessionFixture:
    def __init__(self) -> None:
        self.r = responder()
        self.req = requester(self.r, **FAST)
        self.req.authenticate()
        self.s = self.req.start_session()

    def alive(self) -> None:
        """Make sure our side still agrees with the responder on the session.

        Fuzzed plaintext can legitimately re-key or end it behind our back (a
        KEY_UPDATE or END_SESSION wrapped in CHUNK_SEND, say): probe with a
        HEARTBEAT and start afresh if it no longer opens.
        """
        if self.s.session_id in self.r.sessions:
            try:
                self.req.heartbeat(self.s)
                # the probe itself may have been the last message of a session the
                # fuzzer had already ended (END_SESSION inside a chunked transfer ends
                # it after the next response): reuse only a session still there after it
                if self.s.session_id in self.r.sessions:
                    return
            except (SpdmRequesterError, DoeError):
                # DoeError: the responder ended the session after 2 x HeartbeatPeriod in
                # silence (DSP0274 HEARTBEAT); the fixture is made at import, long before
                # the first example when the whole suite runs
                pass
        self.fresh()

    def fresh(self) -> None:
        """Drop whatever the fuzzer left (ended or re-keyed sessions): a new one."""
        for other in list(self.r.sessions.values()):
            self.r._end_session(other, "test_reset")
        self.s = self.req.start_session()


SESSION = SessionFixture()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests)
def test_garbage_inside_a_valid_secured_record(data: bytes) -> None:
    """The SPDM layer inside a session sees arbitrary plaintext."""
    SESSION.alive()
    record = SESSION.s.secured.seal(data)
    answer = SESSION.r.handle_secured(record)
    if answer[1:2] == bytes([m.ERROR_CODE]) and answer[:4] != record[:4]:
        well_formed(answer)  # a plain ERROR: the session ended
        return
    try:
        inner = SESSION.s.secured.open(answer)
    except SecuredMessageError:
        # KEY_UPDATE UpdateAllKeys (maybe inside CHUNK_SEND): the answer already
        # comes under the next response key
        SESSION.s.secured.update_keys("response")
        inner = SESSION.s.secured.open(answer)
    well_formed(inner)
    if inner[1] in (m.END_SESSION_ACK_CODE, m.KEY_UPDATE_ACK_CODE) or \
            SESSION.s.session_id not in SESSION.r.sessions:
        # the fuzzer changed session keys or ended it: start afresh
        SESSION.fresh()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flip=st.integers(0, 10_000), extra=st.binary(max_size=16), cut=st.integers(0, 200))
def test_forged_secured_records(flip: int, extra: bytes, cut: int) -> None:
    SESSION.alive()
    record = bytearray(SESSION.s.secured.seal(m.HEARTBEAT(spdm_version=0x13).pack()))
    record[flip % len(record)] ^= 1 << (flip % 8)
    data = bytes(record[:max(6, len(record) - cut % 8)]) + extra
    try:
        answer = SESSION.r.handle_secured(data)
    except DoeError:
        return  # undecodable or unknown session: the mailbox error
    if answer[:4] == data[:4] and SESSION.s.session_id in SESSION.r.sessions:
        # the flip hit padding or the trailing extra bytes: a good record after all
        well_formed(SESSION.s.secured.open(answer))
    else:
        well_formed(answer)
    if SESSION.s.session_id not in SESSION.r.sessions:
        SESSION.fresh()


class HandshakeFixture:
    """A session left in the handshake phase: only FINISH may come."""

    def __init__(self) -> None:
        self.fresh()

    def fresh(self) -> None:
        self.r = responder()
        self.s = HandshakeOnly(self.r).open()


HANDSHAKE = HandshakeFixture()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests)
def test_garbage_inside_a_handshake_record(data: bytes) -> None:
    h = HANDSHAKE
    answer = h.r.handle_secured(h.s.secured.seal(data))
    if h.s.session_id not in h.r.sessions:  # DecryptError for a bad FINISH: a plain ERROR
        if answer[:4] != struct.pack("<I", h.s.session_id):
            well_formed(answer)
        h.fresh()
        return
    inner = h.s.secured.open(answer)
    well_formed(inner)
    if inner[1] == m.FINISH_RSP_CODE:  # the fuzzer found the FINISH: start over
        h.fresh()
    else:
        assert inner[1] == m.ERROR_CODE


@pytest.mark.parametrize("state", STATES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=200),
                      st.builds(lambda sid, n, body: struct.pack("<IH", sid, n) + body,
                                st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF),
                                st.binary(max_size=64))))
def test_random_secured_records_in_every_state(state: str, data: bytes) -> None:
    """No key: unknown sessions are the mailbox's error; a guessed live session id
    fails authentication (plain DecryptError)."""
    r = RESPONDERS[state]
    try:
        answer = r.handle_secured(data)
    except DoeError:
        return
    well_formed(answer)
    assert answer[1] == m.ERROR_CODE and answer[2] == m.SpdmErrorCode.DecryptError
    RESPONDERS[state] = prepared(state)


def test_fuzzed_responders_still_authenticate() -> None:
    for r in RESPONDERS.values():
        still_works(r)
    SESSION.alive()
    SESSION.req.heartbeat(SESSION.s)
    still_works(HANDSHAKE.r)


@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=st.sampled_from(STATES), data=requests)
def _plain_requests_long(state: str, data: bytes) -> None:
    fuzz_plain(state, data, False)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests)
def _secured_garbage_long(data: bytes) -> None:
    test_garbage_inside_a_valid_secured_record.hypothesis.inner_test(data)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_plain_requests_long() -> None:
    _plain_requests_long()


@pytest.mark.slow
def test_secured_garbage_long() -> None:
    _secured_garbage_long()
