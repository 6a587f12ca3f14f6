"""SPDM requester (DSP0274 / DSP0277), the other end of :mod:`.responder`.

Written from the specification's point of view of a host or TSM: it keeps
its own transcripts (:mod:`.transcript`) from the bytes it sent and received,
verifies every signature and verify-data field against them, and checks the
certificate chain (root hash, links, leaf key) itself.  The TSM emulators
drive devices through it; the tests use it as an independent counterpart of
the responder.

Steppable contract (the platform firmware emulators hand every SPDM object to
the host kernel and resume when the answer comes back, so the requester never
owns a transport):

* :class:`SpdmRequest` ``(payload, secured)`` is one object to deliver:
  ``payload`` is the SPDM message, or the whole DSP0277 secured record when
  ``secured`` is True; ``secured`` picks the DOE data object type
  (False: type 1 "SPDM", True: type 2 "secured SPDM").
* A flow (``SpdmFlow[T]``) is a generator: ``next(flow)`` gives the first
  :class:`SpdmRequest`; ``flow.send(response_payload)`` (the DOE object's
  payload, dword padding allowed) gives the next one; when the operation is
  complete the generator returns its result (``StopIteration.value``).  A
  failure raises :class:`SpdmRequesterError` out of ``send()``.
* Every operation ``x`` has ``SpdmRequester.x_flow(...)`` returning its flow
  and a blocking ``SpdmRequester.x(...)`` = ``drive(self.x_flow(...),
  transport)`` over the DOE object transport given to the constructor
  (``SpdmRequester.run(flow)`` does the same for any flow).
  Flows: ``init_connection_flow``, ``get_digests_flow``,
  ``get_certificate_flow``, ``challenge_flow``, ``get_measurements_flow``,
  ``start_session_flow`` (KEY_EXCHANGE + FINISH), ``heartbeat_flow``,
  ``key_update_flow`` (UpdateKey or UpdateAllKeys, then VerifyNewKey),
  ``key_update_operation_flow`` (one KEY_UPDATE of any KeyOperation),
  ``end_session_flow``, ``vendor_request_flow``, ``authenticate_flow``,
  ``encapsulated_flow`` (serve the responder's own KEY_UPDATE, GET_ENCAPSULATED_REQUEST),
  ``send_flow`` (any request, raw response).  CHUNK_SEND/CHUNK_GET and
  ResponseNotReady/RESPOND_IF_READY happen inside the flows (the flow sleeps
  the responder's RDT, at most 1 s, before RESPOND_IF_READY).
* :func:`drive` runs a flow to completion over ``transport(SpdmRequest) ->
  response payload``; :func:`doe_transport` makes such a transport out of a
  whole-DOE-object exchange (DOE driver, spdm-emu socket, in-process
  dispatcher).  Only one flow may run at a time on one requester.

Usage::

    spdm = SpdmRequester()                    # no transport needed to step
    flow = spdm.init_connection_flow()
    request = next(flow)                      # SpdmRequest(payload, secured=False)
    while True:
        answer = host_kernel_doe(request.secured, request.payload)   # your I/O
        try:
            request = flow.send(answer)
        except StopIteration as done:
            conn = done.value                 # the flow's result
            break
    # or, blocking: drive(spdm.get_digests_flow(), doe_transport(exchange))
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..doe.protocols import (
    PCI_DOE_FEATURE_CMA,
    PCI_DOE_FEATURE_SSESSION,
    PCI_SIG_VENDOR_ID,
    build_object,
    parse_object,
)
from ..events import emit
from ..wire import DecodeError
from . import messages as m
from .algorithms import (
    AEADS,
    ASYMS,
    DEFAULT_AEADS,
    DEFAULT_ASYMS,
    DEFAULT_DHES,
    DEFAULT_HASHES,
    DHES,
    HASHES,
    KEY_SCHEDULE_SPDM,
    MEASUREMENT_SPEC_DMTF,
    AeadAlgo,
    AsymAlgo,
    CryptoError,
    DheAlgo,
    HashAlgo,
    by_bit,
    mask,
)
from .der import split_der_certificates
from .session import (
    SECURED_MESSAGE_VERSIONS,
    KeySchedule,
    SecuredMessageError,
    SecuredRecordHeader,
    SecuredSession,
    SmSupportedVersionList,
    build_opaque,
    parse_secured_version_selection,
)
from .transcript import SessionTranscript, Transcript, signing_message

T = TypeVar("T")
ObjectTransport = Callable[[bytes], bytes]


@dataclass(frozen=True)
class SpdmRequest:
    """One object for the responder."""

    payload: bytes   # the SPDM message, or the whole DSP0277 secured record when secured
    secured: bool    # True: DOE data object type 2 (secured SPDM); False: type 1 (SPDM)


SpdmFlow = Generator[SpdmRequest, bytes, T]   # yields a request, is .send() the response payload
Transport = Callable[[SpdmRequest], bytes]

RESPONSE_NOT_READY_RETRIES = 8
# ERROR Busy (DSP0274: the responder cannot handle the request now; it may be retried):
# the same request is sent again this often, BUSY_DELAY s apart, before giving up.
BUSY_RETRIES = 8
BUSY_DELAY = 0.01
MAX_RDT_SLEEP = 1.0


def drive(flow: SpdmFlow[T], transport: Transport) -> T:
    """Run ``flow`` to its end, each request through ``transport``."""
    try:
        request = next(flow)
        while True:
            request = flow.send(transport(request))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def doe_transport(exchange: ObjectTransport) -> Transport:
    """A flow transport over a whole-DOE-object exchange (PCI-SIG type 1 / type 2)."""
    def transport(request: SpdmRequest) -> bytes:
        object_type = PCI_DOE_FEATURE_SSESSION if request.secured else PCI_DOE_FEATURE_CMA
        hdr, body = parse_object(exchange(build_object(PCI_SIG_VENDOR_ID, object_type,
                                                       request.payload)))
        if hdr.data_object_type != object_type:
            raise SpdmRequesterError(f"response object type {hdr.data_object_type}")
        return body
    return transport


class SpdmRequesterError(Exception):
    """The responder answered with ERROR, or its answer failed a check."""

    def __init__(self, message: str, error_code: int | None = None,
                 error_data: int = 0) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.error_data = error_data


@dataclass
class RequesterSession:
    session_id: int
    secured: SecuredSession
    transcript: SessionTranscript
    heartbeat_period: int = 0
    secured_version: int = 0
    th2: bytes = b""

    @property
    def message_l(self) -> bytearray:   # L2
        return self.transcript.message_l


@dataclass
class Connection:
    """What GET_VERSION .. NEGOTIATE_ALGORITHMS established."""

    version: int = 0
    responder_flags: int = 0
    responder_dts: int = 0
    responder_max: int = 0
    ct_exponent: int = 0
    hash: HashAlgo | None = None
    asym: AsymAlgo | None = None
    dhe: DheAlgo | None = None
    aead: AeadAlgo | None = None
    measurement_hash_algo: int = 0
    opaque_format: int = 0
    handshake_in_the_clear: bool = False
    cert_chain: bytes = b""
    digests: list[bytes] = field(default_factory=list)

    def sizes(self, **kw: Any) -> m.Sizes:
        return m.Sizes(version=self.version, hash=self.hash.size if self.hash else 0,
                       signature=self.asym.signature_size if self.asym else 0,
                       dhe=self.dhe.exchange_size if self.dhe else 0, **kw)


@dataclass(frozen=True)
class MeasurementResult:
    blocks: list[m.MeasurementBlock]
    total: int
    signed: bool
    response: m.MEASUREMENTS


def _is_error(data: bytes, code: int | None = None) -> bool:
    return len(data) >= 4 and data[1] == m.ERROR_CODE and (code is None or data[2] == code)


class SpdmRequester:
    CAP_FLAGS = (m.CapFlags.CERT_CAP | m.CapFlags.CHAL_CAP | m.CapFlags.ENCRYPT_CAP |
                 m.CapFlags.MAC_CAP | m.CapFlags.KEY_EX_CAP | m.CapFlags.HBEAT_CAP |
                 m.CapFlags.KEY_UPD_CAP | m.CapFlags.CHUNK_CAP | m.CapFlags.ENCAP_CAP)

    def __init__(self, transport: ObjectTransport | None = None, *,
                 versions: tuple[int, ...] = m.SUPPORTED_VERSIONS,
                 hashes: tuple[str, ...] = DEFAULT_HASHES,
                 asyms: tuple[str, ...] = DEFAULT_ASYMS,
                 dhes: tuple[str, ...] = DEFAULT_DHES,
                 aeads: tuple[str, ...] = DEFAULT_AEADS,
                 data_transfer_size: int = 4096, max_spdm_msg_size: int = 65536,
                 chunk: bool = True, handshake_in_the_clear: bool = False,
                 secured_versions: tuple[int, ...] = SECURED_MESSAGE_VERSIONS[::-1],
                 name: str = "requester", cap_flags: int | None = None) -> None:
        """``transport`` (whole DOE object in, whole DOE object out) is needed only
        by the blocking methods; flows work without it.  ``cap_flags`` replaces
        :attr:`CAP_FLAGS` (GET_CAPABILITIES Flags) for a requester that lacks some,
        e.g. HBEAT_CAP where nothing can send HEARTBEAT on its own."""
        self.transport: Transport | None = doe_transport(transport) if transport else None
        self.versions = versions
        self.hashes, self.asyms, self.dhes, self.aeads = hashes, asyms, dhes, aeads
        self.dts = data_transfer_size
        self.max_msg = max_spdm_msg_size if chunk else data_transfer_size
        self.chunk = chunk
        self.handshake_in_the_clear = handshake_in_the_clear
        self.secured_versions = secured_versions
        self.name = name
        if cap_flags is not None:
            self.CAP_FLAGS = cap_flags
        self.conn = Connection()
        self.transcript = Transcript()
        self.sessions: dict[int, RequesterSession] = {}
        self._chunk_handle = 0
        self._last_exact = b""

    # transcript views (kept for callers that inspect them)
    @property
    def message_a(self) -> bytearray:
        return self.transcript.message_a

    @property
    def message_b(self) -> bytearray:
        return self.transcript.message_b

    @property
    def message_l(self) -> bytearray:
        return self.transcript.message_l

    def run(self, flow: SpdmFlow[T]) -> T:
        """``flow`` to its end over the transport given to the constructor."""
        return self._drive(flow)

    def _drive(self, flow: SpdmFlow[T]) -> T:
        if self.transport is None:
            flow.close()
            raise SpdmRequesterError("no transport: use the *_flow methods and drive()")
        return drive(flow, self.transport)

    # -- one exchange --------------------------------------------------------------------
    def _once(self, request: bytes, session: RequesterSession | None,
              new_response_key: bool = False) -> SpdmFlow[bytes]:
        """One request object -> its SPDM response (opened when secured).

        ``new_response_key``: the answer comes under the next response-direction
        key (KEY_UPDATE UpdateAllKeys, DSP0274 §10.21); an answer that still
        opens under the old key (an ERROR) rolls the key back.
        """
        if session is None:
            return (yield SpdmRequest(request, False))
        record = yield SpdmRequest(session.secured.seal(request), True)
        try:
            header: SecuredRecordHeader | None = SecuredRecordHeader.unpack_partial(record)[0]
        except DecodeError:
            header = None
        if _is_error(record) and (header is None or header.session_id != session.session_id):
            # A plain ERROR (DecryptError): the responder dropped the session.
            self._drop(session, "decrypt_error")
            return record
        if header is None:
            raise SpdmRequesterError("secured response shorter than its header")
        exact = record[:6 + header.length]
        old = session.secured.response
        if new_response_key:
            session.secured.update_keys("response")
        try:
            return session.secured.open(exact)
        except SecuredMessageError as exc:
            if new_response_key and old is not None:
                session.secured.response = old
                try:
                    answer = session.secured.open(exact)
                except SecuredMessageError:
                    pass
                else:
                    if _is_error(answer):
                        return answer
                    raise SpdmRequesterError("KEY_UPDATE_ACK (UpdateAllKeys) under the old "
                                             "response key") from None
            raise SpdmRequesterError(f"secured response rejected: {exc}") from None

    def _drop(self, session: RequesterSession, cause: str) -> None:
        self.sessions.pop(session.session_id, None)
        if session.secured.fsm.can("error"):
            session.secured.fsm.fire("error", cause=cause)

    def _exchange(self, request: bytes, session: RequesterSession | None,
                  new_response_key: bool = False) -> SpdmFlow[bytes]:
        """:meth:`_once`; again while the answer is ERROR Busy (a bounded number of
        times); then RESPOND_IF_READY while it is ResponseNotReady."""
        before = session.secured.response if session is not None else None
        response = yield from self._once(request, session, new_response_key)
        if session is not None and session.secured.response is not before:
            new_response_key = False   # already on the new key: retries stay there
        for _ in range(BUSY_RETRIES):
            if not _is_error(response, m.SpdmErrorCode.Busy):
                break
            time.sleep(BUSY_DELAY)
            before = session.secured.response if session is not None else None
            response = yield from self._once(request, session, new_response_key)
            if session is not None and session.secured.response is not before:
                new_response_key = False
        for _ in range(RESPONSE_NOT_READY_RETRIES):
            if not _is_error(response, m.SpdmErrorCode.ResponseNotReady):
                return response
            # ExtendedErrorData (DSP0274 Table "ResponseNotReady"): RDTExponent,
            # RequestCode, Token, RDTM.
            if len(response) < 8:
                raise SpdmRequesterError("ResponseNotReady without its extended data")
            rdt_exponent, code, token = response[4], response[5], response[6]
            if code != request[1]:
                raise SpdmRequesterError(f"ResponseNotReady for request {code:#04x}")
            time.sleep(min((1 << min(rdt_exponent, 31)) / 1e6, MAX_RDT_SLEEP))
            retry = m.RESPOND_IF_READY(spdm_version=self.conn.version, param1=code,
                                       param2=token).pack()
            before = session.secured.response if session is not None else None
            response = yield from self._once(retry, session, new_response_key)
            if session is not None and session.secured.response is not before:
                new_response_key = False
        raise SpdmRequesterError("responder stayed not ready")

    def send_flow(self, request: bytes, session: RequesterSession | None = None,
                  *, new_response_key: bool = False) -> SpdmFlow[bytes]:
        """One request -> its response bytes (DOE padding stripped by the decoders).

        Chunking is transparent: big requests go as CHUNK_SEND, LargeResponse
        errors are followed by CHUNK_GETs, both inside the session if any.
        """
        if self.conn.responder_dts and len(request) > self.conn.responder_dts:
            response = yield from self._chunk_send(request, session)
        else:
            response = yield from self._exchange(request, session, new_response_key)
            if _is_error(response, m.SpdmErrorCode.LargeResponse) and len(response) >= 5:
                response = yield from self._chunk_get(response[4], session)
        if not _is_error(response):
            self.transcript.request_succeeded(
                request[1], session.transcript if session is not None else None)
        return response

    def send(self, request: bytes, session: RequesterSession | None = None) -> bytes:
        return self._drive(self.send_flow(request, session))

    def _chunk_get(self, handle: int, session: RequesterSession | None) -> SpdmFlow[bytes]:
        whole, seq, total = bytearray(), 0, None
        while True:
            req = m.CHUNK_GET(spdm_version=self.conn.version, param2=handle,
                              chunk_seq_no=seq).pack()
            rsp = self._expect(m.CHUNK_RESPONSE, (yield from self._exchange(req, session)))
            if rsp.param2 != handle or rsp.chunk_seq_no != seq:
                raise SpdmRequesterError("CHUNK_RESPONSE for another handle or sequence")
            if seq == 0:
                total = rsp.large_message_size
            whole += rsp.response_chunk
            if rsp.param1 & m.CHUNK_LAST:
                break
            seq += 1
            if total is not None and len(whole) > total:
                raise SpdmRequesterError("chunks exceed LargeMessageSize")
        if len(whole) != total:
            raise SpdmRequesterError(f"large response {len(whole)} bytes, announced {total}")
        return bytes(whole)

    def _chunk_send(self, request: bytes, session: RequesterSession | None) -> SpdmFlow[bytes]:
        if not (self.conn.responder_flags & m.CapFlags.CHUNK_CAP and self.chunk):
            raise SpdmRequesterError("request larger than the responder's DataTransferSize")
        self._chunk_handle = (self._chunk_handle + 1) % 256
        pos, seq = 0, 0
        while True:
            room = self.conn.responder_dts - (16 if seq == 0 else 12)
            piece = request[pos:pos + room]
            pos += len(piece)
            last = pos >= len(request)
            msg = m.CHUNK_SEND(spdm_version=self.conn.version,
                               param1=m.CHUNK_LAST if last else 0, param2=self._chunk_handle,
                               chunk_seq_no=seq,
                               large_message_size=len(request), spdm_chunk=piece).pack()
            ack = self._expect(m.CHUNK_SEND_ACK, (yield from self._exchange(msg, session)))
            if last:
                inner = ack.response_to_large_request
                if _is_error(inner, m.SpdmErrorCode.LargeResponse) and len(inner) >= 5:
                    return (yield from self._chunk_get(inner[4], session))
                return inner
            seq += 1

    def _expect(self, cls: type[m.M], data: bytes, **sizes: Any) -> m.M:
        if _is_error(data) and cls is not m.ERROR:
            err = m.ERROR.unpack(data)
            raise SpdmRequesterError(
                f"{cls.__name__} expected, got ERROR {m.SpdmErrorCode.name(err.param1)}",
                err.param1, err.param2)
        try:
            msg, used = cls.unpack_partial(data, self.conn.sizes(**sizes))
        except DecodeError as exc:
            raise SpdmRequesterError(f"malformed {cls.__name__}: {exc}") from None
        self._last_exact = data[:used]
        return msg

    # -- VCA -----------------------------------------------------------------------------
    def capability_flags(self, version: int) -> int:
        """GET_CAPABILITIES Flags (DSP0274 Table "requester flags") for ``version``."""
        if version < m.V11:
            return 0   # 1.0 has no requester flags
        flags = self.CAP_FLAGS
        if not self.chunk or version < m.V12:
            flags &= ~m.CapFlags.CHUNK_CAP
        if self.handshake_in_the_clear:
            flags |= m.CapFlags.HANDSHAKE_IN_THE_CLEAR_CAP
        return flags

    def negotiate_algorithms_request(self, version: int) -> bytes:
        """NEGOTIATE_ALGORITHMS for ``version``.  The AlgStructs (1.1+) are DHE,
        AEAD and KeySchedule; ReqBaseAsymAlg is left out because this requester
        has no key for mutual authentication: an AlgStruct offering nothing says
        no more than leaving it out, and libspdm's responder answers one with
        ERROR InvalidRequest."""
        structs = b""
        count = 0
        if version >= m.V11:
            structs = b"".join(m.AlgStruct(t, bits).pack() for t, bits in (
                (m.ALG_TYPE_DHE, mask(self.dhes, DHES)),
                (m.ALG_TYPE_AEAD, mask(self.aeads, AEADS)),
                (m.ALG_TYPE_KEY_SCHEDULE, KEY_SCHEDULE_SPDM)) if bits)
            count = len(structs) // 4
        return m.NEGOTIATE_ALGORITHMS(
            spdm_version=version, param1=count,
            measurement_specification=MEASUREMENT_SPEC_DMTF,
            other_params_support=2 if version >= m.V12 else 0,
            base_asym_algo=mask(self.asyms, ASYMS), base_hash_algo=mask(self.hashes, HASHES),
            req_alg_struct=structs).pack()

    def init_connection_flow(self) -> SpdmFlow[Connection]:
        """GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS (DSP0274 §10.3-10.5)."""
        self.conn = Connection()
        for session in list(self.sessions.values()):
            self._drop(session, "get_version")
        req = m.GET_VERSION(spdm_version=m.V10).pack()
        ver = self._expect(m.VERSION, (yield from self._exchange(req, None)))
        common = [v for v in ver.versions if v in self.versions]
        if not common:
            raise SpdmRequesterError(f"no common SPDM version in {ver.versions}")
        v = max(common)
        self.transcript.reset(req, self._last_exact)
        self.conn.version = v
        creq = m.GET_CAPABILITIES(spdm_version=v, ct_exponent=12,
                                  flags=self.capability_flags(v), data_transfer_size=self.dts,
                                  max_spdm_msg_size=self.max_msg).pack()
        caps = self._expect(m.CAPABILITIES, (yield from self._exchange(creq, None)))
        self.transcript.add_vca(creq, self._last_exact)
        self.conn.responder_flags = caps.flags
        self.conn.ct_exponent = caps.ct_exponent
        if v >= m.V12:
            self.conn.responder_dts = caps.data_transfer_size
            self.conn.responder_max = caps.max_spdm_msg_size
        self.conn.handshake_in_the_clear = bool(
            self.capability_flags(v) & caps.flags & m.CapFlags.HANDSHAKE_IN_THE_CLEAR_CAP)
        areq = self.negotiate_algorithms_request(v)
        # ALGORITHMS ends at its own Length (the codec's message_length).
        alg = self._expect(m.ALGORITHMS, (yield from self._exchange(areq, None)))
        self.transcript.add_vca(areq, self._last_exact)
        for name, value in (("BaseHashSel", alg.base_hash_sel),
                            ("BaseAsymSel", alg.base_asym_sel)):
            if bin(value).count("1") != 1:
                raise SpdmRequesterError(f"{name} {value:#x} does not select one algorithm")
        self.conn.hash = by_bit(alg.base_hash_sel, HASHES)
        self.conn.asym = by_bit(alg.base_asym_sel, ASYMS)
        if self.conn.hash is None or self.conn.hash.name not in self.hashes or \
                self.conn.asym is None or self.conn.asym.name not in self.asyms:
            raise SpdmRequesterError("responder selected an algorithm that was not offered")
        self.conn.measurement_hash_algo = alg.measurement_hash_algo
        self.conn.opaque_format = alg.other_params_selection
        for s in alg.alg_structs():
            if s.alg_type == m.ALG_TYPE_DHE:
                self.conn.dhe = by_bit(s.alg_supported, DHES)
            elif s.alg_type == m.ALG_TYPE_AEAD:
                self.conn.aead = by_bit(s.alg_supported, AEADS)
        emit("spdm.requester.negotiated", requester=self.name, version=f"{v:#x}",
             hash=self.conn.hash.name, asym=self.conn.asym.name,
             dhe=self.conn.dhe.name if self.conn.dhe else None,
             aead=self.conn.aead.name if self.conn.aead else None)
        return self.conn

    def init_connection(self) -> Connection:
        return self._drive(self.init_connection_flow())

    # -- identity ------------------------------------------------------------------------
    def get_digests_flow(self) -> SpdmFlow[list[bytes]]:
        req = m.GET_DIGESTS(spdm_version=self.conn.version).pack()
        raw_rsp = yield from self.send_flow(req)
        rsp = self._expect(m.DIGESTS, raw_rsp)
        n = bin(rsp.param2).count("1")
        size = self.conn.hash.size if self.conn.hash else 0
        if len(rsp.digest) < n * size:
            raise SpdmRequesterError("DIGESTS shorter than its slot mask says")
        self.transcript.add_b(req, raw_rsp[:4 + n * size])
        self.conn.digests = [rsp.digest[i * size:(i + 1) * size] for i in range(n)]
        return self.conn.digests

    def get_digests(self) -> list[bytes]:
        return self._drive(self.get_digests_flow())

    def get_certificate_flow(self, slot: int = 0,
                             portion: int | None = None) -> SpdmFlow[bytes]:
        """The slot's whole chain.  With CHUNK_CAP on both sides (1.2+) one request
        asks for all of it (Length 0xFFFF) and the answer comes by CHUNK_GET;
        otherwise in ``portion``-byte pieces (0x400 by default)."""
        if portion is None:
            chunked = self.chunk and self.conn.version >= m.V12 and \
                self.conn.responder_flags & m.CapFlags.CHUNK_CAP
            portion = 0xFFFF if chunked else 0x400
        chain, offset = bytearray(), 0
        while True:
            req = m.GET_CERTIFICATE(spdm_version=self.conn.version, param1=slot,
                                    offset=offset, length=portion).pack()
            rsp = self._expect(m.CERTIFICATE, (yield from self.send_flow(req)))
            self.transcript.add_b(req, self._last_exact)
            if rsp.portion_length == 0:
                raise SpdmRequesterError("CERTIFICATE with an empty portion")
            chain += rsp.cert_chain
            offset += rsp.portion_length
            if rsp.remainder_length == 0:
                break
        self.conn.cert_chain = bytes(chain)
        return self.conn.cert_chain

    def get_certificate(self, slot: int = 0, portion: int | None = None) -> bytes:
        return self._drive(self.get_certificate_flow(slot, portion))

    def verify_certificate_chain(self, root: x509.Certificate | None = None) -> Any:
        """Check the SPDM chain (length, root hash, links, leaf key type); returns
        the leaf public key.  With ``root`` the chain must start at that root."""
        chain, h = self.conn.cert_chain, self.conn.hash
        assert h is not None and self.conn.asym is not None
        try:
            parsed = m.CertChain.unpack(chain, m.Sizes(hash=h.size))
        except DecodeError:
            raise SpdmRequesterError("certificate chain Length does not match") from None
        try:
            certs = split_der_certificates(parsed.certificates)
        except ValueError as exc:
            raise SpdmRequesterError(f"certificate chain: {exc}") from None
        if h.digest(certs[0].public_bytes(Encoding.DER)) != parsed.root_hash:
            raise SpdmRequesterError("RootHash does not match the first certificate")
        if root is not None and certs[0] != root:
            raise SpdmRequesterError("chain does not start at the trusted root")
        for parent, child in zip(certs, certs[1:], strict=False):
            try:
                child.verify_directly_issued_by(parent)
            except Exception as exc:
                raise SpdmRequesterError(f"chain link broken at {child.subject}: {exc}") \
                    from None
        leaf = certs[-1].public_key()
        if not self.conn.asym.matches_key(leaf):
            raise SpdmRequesterError(f"leaf key is not {self.conn.asym.name}")
        if self.conn.digests and h.digest(chain) != self.conn.digests[0]:
            raise SpdmRequesterError("slot 0 digest does not match the chain")
        return leaf

    def _verify(self, context: str, transcript: bytes, signature: bytes) -> None:
        h, asym = self.conn.hash, self.conn.asym
        assert h is not None and asym is not None
        leaf = self.verify_certificate_chain()
        message = signing_message(self.conn.version, context, h.digest(transcript)) \
            if self.conn.version >= m.V12 else transcript
        try:
            asym.verify(leaf, signature, message, h)
        except CryptoError as exc:
            raise SpdmRequesterError(f"{context} signature: {exc}") from None

    def challenge_flow(self, summary_hash_type: int = m.SUMMARY_HASH_NONE
                       ) -> SpdmFlow[m.CHALLENGE_AUTH]:
        req = m.CHALLENGE(spdm_version=self.conn.version, param1=0, param2=summary_hash_type,
                          nonce=os.urandom(32), requester_context=os.urandom(8)).pack()
        raw_rsp = yield from self.send_flow(req)
        sizes = self.conn.sizes(summary_hash=summary_hash_type != 0)
        rsp = self._expect(m.CHALLENGE_AUTH, raw_rsp, summary_hash=summary_hash_type != 0)
        unsigned = self._last_exact[:-sizes.signature]
        h = self.conn.hash
        assert h is not None
        if rsp.cert_chain_hash != h.digest(self.conn.cert_chain):
            raise SpdmRequesterError("CertChainHash does not match the chain")
        if self.conn.version >= m.V13 and rsp.requester_context != req[36:44]:
            raise SpdmRequesterError("RequesterContext not echoed")
        self._verify("challenge_auth", self.transcript.challenge_message(req, unsigned),
                     rsp.signature)
        self.transcript.challenge_done()
        return rsp

    def challenge(self, summary_hash_type: int = m.SUMMARY_HASH_NONE) -> m.CHALLENGE_AUTH:
        return self._drive(self.challenge_flow(summary_hash_type))

    # -- measurements --------------------------------------------------------------------
    def get_measurements_flow(self, operation: int = m.MEAS_OPERATION_ALL, *,
                              signed: bool = True, raw: bool = False,
                              session: RequesterSession | None = None,
                              nonce: bytes | None = None) -> SpdmFlow[MeasurementResult]:
        """GET_MEASUREMENTS -> MEASUREMENTS (DSP0274 §10.11).  ``nonce``: the request's
        32-byte Nonce field (a signed request carries it; the signature then covers it),
        e.g. a verifier's own freshness value passed through; default: a random one."""
        if nonce is None:
            nonce = os.urandom(32)
        elif len(nonce) != 32:
            raise ValueError(f"GET_MEASUREMENTS Nonce is 32 bytes, not {len(nonce)}")
        attrs = (m.MEAS_ATTR_SIGNATURE_REQUESTED if signed else 0) | \
            (m.MEAS_ATTR_RAW_BIT_STREAM_REQUESTED if raw and self.conn.version >= m.V12 else 0)
        req = m.GET_MEASUREMENTS(spdm_version=self.conn.version, param1=attrs,
                                 param2=operation, nonce=nonce,
                                 requester_context=os.urandom(8)).pack()
        rsp = self._expect(m.MEASUREMENTS, (yield from self.send_flow(req, session)),
                           signed=signed)
        exact = self._last_exact
        try:
            blocks = m.parse_measurement_record(rsp.measurement_record, rsp.number_of_blocks)
        except DecodeError as exc:
            raise SpdmRequesterError(f"measurement record: {exc}") from None
        st = session.transcript if session is not None else None
        if signed:
            unsigned = exact[:-self.conn.sizes().signature]
            self._verify("measurements", self.transcript.measurements_message(
                self.conn.version, st, req, unsigned), rsp.signature)
            self.transcript.measurement_log(st).clear()
        else:
            self.transcript.add_unsigned_measurements(st, req, exact)
        return MeasurementResult(blocks, rsp.param1, signed, rsp)

    def get_measurements(self, operation: int = m.MEAS_OPERATION_ALL, *, signed: bool = True,
                         raw: bool = False, session: RequesterSession | None = None,
                         nonce: bytes | None = None) -> MeasurementResult:
        return self._drive(self.get_measurements_flow(operation, signed=signed, raw=raw,
                                                      session=session, nonce=nonce))

    # -- sessions ------------------------------------------------------------------------
    def start_session_flow(self, summary_hash_type: int = m.SUMMARY_HASH_NONE,
                           secured_versions: tuple[int, ...] | None = None
                           ) -> SpdmFlow[RequesterSession]:
        """KEY_EXCHANGE + FINISH (DSP0274 §10.16-10.17); the established session.

        With HANDSHAKE_IN_THE_CLEAR negotiated, FINISH and FINISH_RSP travel as
        plain SPDM (DOE type 1) and ResponderVerifyData moves to FINISH_RSP.
        """
        conn, h = self.conn, self.conn.hash
        if conn.dhe is None or conn.aead is None or h is None:
            raise SpdmRequesterError("no DHE/AEAD negotiated: sessions unavailable")
        if not conn.cert_chain:
            yield from self.get_digests_flow()
            yield from self.get_certificate_flow()
        versions_offered = secured_versions or self.secured_versions
        clear = conn.handshake_in_the_clear
        dhe_key, exchange = conn.dhe.generate()
        req_sid = int.from_bytes(os.urandom(2), "little") | 1
        versions = SmSupportedVersionList.of(versions_offered).pack()
        opaque = build_opaque(versions, conn.opaque_format)
        req = m.KEY_EXCHANGE(spdm_version=conn.version, param1=summary_hash_type, param2=0,
                             req_session_id=req_sid, random_data=os.urandom(32),
                             exchange_data=exchange, opaque_data=opaque).pack(conn.sizes())
        summary = summary_hash_type != 0
        rsp = self._expect(m.KEY_EXCHANGE_RSP, (yield from self.send_flow(req)),
                           summary_hash=summary, responder_verify=not clear)
        exact = self._last_exact
        sizes = conn.sizes(summary_hash=summary)
        tail_size = sizes.signature + (0 if clear else sizes.hash)
        unsigned = exact[:-tail_size]
        transcript = self.transcript.key_exchange(h.digest(conn.cert_chain), req, unsigned)
        self._verify("key_exchange_rsp", bytes(transcript.data), rsp.signature)
        selected = parse_secured_version_selection(rsp.opaque_data, conn.opaque_format)
        if selected is None or selected not in versions_offered:
            raise SpdmRequesterError(f"secured message version selection {selected}")
        try:
            shared = conn.dhe.shared_secret(dhe_key, rsp.exchange_data)
        except CryptoError as exc:
            raise SpdmRequesterError(str(exc)) from None
        transcript.add(rsp.signature)
        th1 = transcript.hash(h)
        schedule = KeySchedule(h, conn.aead, conn.version)
        req_keys, rsp_keys = schedule.handshake(shared, th1)
        if not clear:
            if h.hmac(schedule.finished_key(rsp_keys.secret), th1) != \
                    rsp.responder_verify_data:
                raise SpdmRequesterError("ResponderVerifyData does not verify")
            transcript.add(rsp.responder_verify_data)
        session_id = req_sid | (rsp.rsp_session_id << 16)
        secured = SecuredSession(session_id, schedule, "requester", req_keys, rsp_keys)
        session = RequesterSession(session_id, secured, transcript, rsp.param1, selected)
        self.sessions[session_id] = session
        # FINISH: under the handshake keys, or in the clear
        header = m.FINISH(spdm_version=conn.version,
                          requester_verify_data=bytes(h.size)).pack(conn.sizes())[:4]
        verify = h.hmac(schedule.finished_key(req_keys.secret), transcript.hash(h, header))
        freq = header + verify
        frsp = self._expect(m.FINISH_RSP, (yield from self.send_flow(
            freq, None if clear else session)), responder_verify=not clear)
        fexact = self._last_exact
        if clear:
            expected = h.hmac(schedule.finished_key(rsp_keys.secret),
                              transcript.hash(h, freq, fexact[:4]))
            if frsp.responder_verify_data != expected:
                raise SpdmRequesterError("FINISH_RSP ResponderVerifyData does not verify")
        transcript.add(freq, fexact)
        session.th2 = transcript.hash(h)
        secured.fsm.fire("finish")
        secured.request, secured.response = schedule.data(session.th2)
        secured.fsm.fire("data_keys")
        emit("spdm.requester.session", requester=self.name, session_id=f"{session_id:#010x}",
             secured_version=f"{selected:#x}", in_the_clear=clear)
        return session

    def start_session(self, summary_hash_type: int = m.SUMMARY_HASH_NONE,
                      secured_versions: tuple[int, ...] | None = None) -> RequesterSession:
        return self._drive(self.start_session_flow(summary_hash_type, secured_versions))

    def heartbeat_flow(self, session: RequesterSession) -> SpdmFlow[None]:
        req = m.HEARTBEAT(spdm_version=self.conn.version).pack()
        self._expect(m.HEARTBEAT_ACK, (yield from self.send_flow(req, session)))

    def heartbeat(self, session: RequesterSession) -> None:
        self._drive(self.heartbeat_flow(session))

    def key_update_operation_flow(self, session: RequesterSession,
                                  operation: int) -> SpdmFlow[m.KEY_UPDATE_ACK]:
        """One KEY_UPDATE (DSP0274 1.2 §10.21): UpdateKey, UpdateAllKeys or VerifyNewKey.

        The request goes under the current request key; after UpdateKey and
        UpdateAllKeys the request direction moves to the next key once the ACK
        is in.  UpdateAllKeys' ACK already comes under the next response key.
        """
        tag = os.urandom(1)[0]
        req = m.KEY_UPDATE(spdm_version=self.conn.version, param1=operation,
                           param2=tag).pack()
        all_keys = operation == m.KEY_UPDATE_UPDATE_ALL_KEYS
        ack = self._expect(m.KEY_UPDATE_ACK, (yield from self.send_flow(
            req, session, new_response_key=all_keys)))
        if (ack.param1, ack.param2) != (operation, tag):
            raise SpdmRequesterError("KEY_UPDATE_ACK does not echo operation and tag")
        if operation in (m.KEY_UPDATE_UPDATE_KEY, m.KEY_UPDATE_UPDATE_ALL_KEYS):
            session.secured.update_keys("request")
            session.secured.fsm.fire("key_update", operation=operation)
        elif operation == m.KEY_UPDATE_VERIFY_NEW_KEY:
            session.secured.fsm.fire("verify_new_key")
        return ack

    def key_update_flow(self, session: RequesterSession, *,
                        all_keys: bool = False) -> SpdmFlow[None]:
        """KEY_UPDATE (UpdateKey or UpdateAllKeys) then VerifyNewKey."""
        op = m.KEY_UPDATE_UPDATE_ALL_KEYS if all_keys else m.KEY_UPDATE_UPDATE_KEY
        yield from self.key_update_operation_flow(session, op)
        yield from self.key_update_operation_flow(session, m.KEY_UPDATE_VERIFY_NEW_KEY)

    def key_update(self, session: RequesterSession, *, all_keys: bool = False) -> None:
        self._drive(self.key_update_flow(session, all_keys=all_keys))

    def encapsulated_flow(self, session: RequesterSession) -> SpdmFlow[int]:
        """Serve the responder's encapsulated requests (DSP0274 1.2 §10.23) until it has
        none left; returns how many were answered.

        GET_ENCAPSULATED_REQUEST, then DELIVER_ENCAPSULATED_RESPONSE for each request
        the responder sends (in ENCAPSULATED_REQUEST, then ENCAPSULATED_RESPONSE_ACK).
        KEY_UPDATE is understood: the responder updates its own, response-direction
        key, and its answer to our ACK of UpdateKey already comes under the new key.
        Anything else is answered ERROR UnsupportedRequest.
        """
        v = self.conn.version
        raw = yield from self.send_flow(m.GET_ENCAPSULATED_REQUEST(spdm_version=v).pack(),
                                        session)
        if _is_error(raw, m.SpdmErrorCode.NoPendingRequests) or \
                (v < m.V13 and _is_error(raw, m.SpdmErrorCode.UnexpectedRequest)):
            return 0
        encap = self._expect(m.ENCAPSULATED_REQUEST, raw)
        request_id, inner = encap.param1, encap.encapsulated_request
        served = 0
        while True:
            answer, new_key = self._answer_encapsulated(inner)
            served += 1
            deliver = m.DELIVER_ENCAPSULATED_RESPONSE(spdm_version=v, param1=request_id,
                                                      encapsulated_response=answer).pack()
            ack = self._expect(m.ENCAPSULATED_RESPONSE_ACK, (yield from self.send_flow(
                deliver, session, new_response_key=new_key)))
            if v >= m.V12 and ack.ack_request_id != request_id:
                raise SpdmRequesterError(f"ENCAPSULATED_RESPONSE_ACK for request "
                                         f"{ack.ack_request_id}, delivered {request_id}")
            if ack.param2 == m.ENCAP_PAYLOAD_ABSENT:
                return served
            if ack.param2 != m.ENCAP_PAYLOAD_PRESENT:
                raise SpdmRequesterError(f"ENCAPSULATED_RESPONSE_ACK PayloadType {ack.param2}")
            request_id, inner = ack.param1, ack.encapsulated_request

    def _answer_encapsulated(self, request: bytes) -> tuple[bytes, bool]:
        """(our response, whether the responder's next answer uses its next key)."""
        v = self.conn.version
        if len(request) == 4 and request[:2] == bytes([v, m.KEY_UPDATE_CODE]) and \
                request[2] in (m.KEY_UPDATE_UPDATE_KEY, m.KEY_UPDATE_VERIFY_NEW_KEY):
            ack = m.KEY_UPDATE_ACK(spdm_version=v, param1=request[2], param2=request[3]).pack()
            return ack, request[2] == m.KEY_UPDATE_UPDATE_KEY
        code = request[1] if len(request) >= 2 else 0
        return m.ERROR(spdm_version=v, param1=m.SpdmErrorCode.UnsupportedRequest,
                       param2=code).pack(), False

    def encapsulated(self, session: RequesterSession) -> int:
        return self._drive(self.encapsulated_flow(session))

    def end_session_flow(self, session: RequesterSession) -> SpdmFlow[None]:
        req = m.END_SESSION(spdm_version=self.conn.version).pack()
        self._expect(m.END_SESSION_ACK, (yield from self.send_flow(req, session)))
        self.sessions.pop(session.session_id, None)
        session.secured.fsm.fire("end")
        session.secured.fsm.fire("closed")

    def end_session(self, session: RequesterSession) -> None:
        self._drive(self.end_session_flow(session))

    def vendor_request_flow(self, standard_id: int, vendor_id: bytes, payload: bytes,
                            session: RequesterSession | None = None) -> SpdmFlow[bytes]:
        req = m.VENDOR_DEFINED_REQUEST(
            spdm_version=self.conn.version, standard_id=standard_id, vendor_id=vendor_id,
            vendor_defined_req_payload=payload).pack()
        rsp = self._expect(m.VENDOR_DEFINED_RESPONSE, (yield from self.send_flow(req, session)))
        if (rsp.standard_id, rsp.vendor_id) != (standard_id, vendor_id):
            raise SpdmRequesterError("VENDOR_DEFINED_RESPONSE for another registry/vendor")
        return rsp.vendor_defined_resp_payload

    def vendor_request(self, standard_id: int, vendor_id: bytes, payload: bytes,
                       session: RequesterSession | None = None) -> bytes:
        return self._drive(self.vendor_request_flow(standard_id, vendor_id, payload, session))

    def authenticate_flow(self, root: x509.Certificate | None = None,
                          summary_hash_type: int = m.SUMMARY_HASH_NONE
                          ) -> SpdmFlow[m.CHALLENGE_AUTH]:
        """VCA, digests, certificate (verified, optionally against ``root``), challenge."""
        yield from self.init_connection_flow()
        yield from self.get_digests_flow()
        yield from self.get_certificate_flow()
        self.verify_certificate_chain(root)
        return (yield from self.challenge_flow(summary_hash_type))

    def authenticate(self, root: x509.Certificate | None = None,
                     summary_hash_type: int = m.SUMMARY_HASH_NONE) -> m.CHALLENGE_AUTH:
        return self._drive(self.authenticate_flow(root, summary_hash_type))
