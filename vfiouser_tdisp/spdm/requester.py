"""SPDM requester (DSP0274 / DSP0277), the other end of :mod:`.responder`.

Written from the specification's point of view of a host or TSM: it keeps
its own transcripts from the bytes it sent and received, verifies every
signature and verify-data field against them, and checks the certificate
chain (root hash, links, leaf key) itself.  The TSM emulators drive devices
through it; the tests use it as an independent counterpart of the responder.

The transport is any callable taking a whole DOE object and returning the
whole response object: the DOE registers (:class:`~..doe.driver.DoeDriver`),
the spdm-emu socket, or a dispatcher in the same process.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
from .responder import (
    SM_DATA_ID_SUPPORTED_VERSION_LIST,
    SM_DATA_VERSION,
    build_opaque,
    parse_secured_version_selection,
    signing_message,
)
from .session import KeySchedule, SecuredMessageError, SecuredSession

ObjectTransport = Callable[[bytes], bytes]


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
    transcript: bytearray
    heartbeat_period: int = 0
    secured_version: int = 0
    th2: bytes = b""
    message_l: bytearray = field(default_factory=bytearray)  # L2


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


class SpdmRequester:
    CAP_FLAGS = (m.CapFlags.CERT_CAP | m.CapFlags.CHAL_CAP | m.CapFlags.ENCRYPT_CAP |
                 m.CapFlags.MAC_CAP | m.CapFlags.KEY_EX_CAP | m.CapFlags.HBEAT_CAP |
                 m.CapFlags.KEY_UPD_CAP | m.CapFlags.CHUNK_CAP)

    def __init__(self, transport: ObjectTransport, *,
                 versions: tuple[int, ...] = m.SUPPORTED_VERSIONS,
                 hashes: tuple[str, ...] = DEFAULT_HASHES,
                 asyms: tuple[str, ...] = DEFAULT_ASYMS,
                 dhes: tuple[str, ...] = DEFAULT_DHES,
                 aeads: tuple[str, ...] = DEFAULT_AEADS,
                 data_transfer_size: int = 4096, max_spdm_msg_size: int = 65536,
                 chunk: bool = True, name: str = "requester") -> None:
        self.transport = transport
        self.versions = versions
        self.hashes, self.asyms, self.dhes, self.aeads = hashes, asyms, dhes, aeads
        self.dts = data_transfer_size
        self.max_msg = max_spdm_msg_size if chunk else data_transfer_size
        self.chunk = chunk
        self.name = name
        self.conn = Connection()
        self.message_a = bytearray()
        self.message_b = bytearray()
        self.message_l = bytearray()
        self.sessions: dict[int, RequesterSession] = {}
        self._chunk_handle = 0

    # -- transport -----------------------------------------------------------------------
    def _object(self, object_type: int, payload: bytes) -> bytes:
        rsp = self.transport(build_object(PCI_SIG_VENDOR_ID, object_type, payload))
        hdr, body = parse_object(rsp)
        if hdr.data_object_type != object_type:
            raise SpdmRequesterError(f"response object type {hdr.data_object_type}")
        return body

    def send(self, request: bytes, session: RequesterSession | None = None) -> bytes:
        """One request -> its response bytes (DOE padding stripped by the decoders).

        Chunking is transparent: big requests go as CHUNK_SEND, LargeResponse
        errors are followed by CHUNK_GETs, both inside the session if any.
        """
        if self.conn.responder_dts and len(request) > self.conn.responder_dts:
            response = self._chunk_send(request, session)
        else:
            response = self._raw(request, session)
            if len(response) >= 4 and response[1] == m.ERROR_CODE and \
                    response[2] == m.SpdmErrorCode.LargeResponse and len(response) >= 5:
                response = self._chunk_get(response[4], session)
        if response[1:2] != bytes([m.ERROR_CODE]):
            if request[1] != m.GET_MEASUREMENTS_CODE:
                # Any other request that succeeds resets L1/L2, as on the responder.
                (session.message_l if session is not None else self.message_l).clear()
            if request[1] in m.RESETS_M1:
                self.message_b.clear()
        return response

    def _raw(self, request: bytes, session: RequesterSession | None) -> bytes:
        if session is None:
            return self._object(PCI_DOE_FEATURE_CMA, request)
        record = self._object(PCI_DOE_FEATURE_SSESSION, session.secured.seal(request))
        if len(record) >= 4 and record[1] == m.ERROR_CODE and \
                struct.unpack_from("<I", record)[0] != session.session_id:
            # A plain ERROR (DecryptError): the responder dropped the session.
            self.sessions.pop(session.session_id, None)
            return record
        try:
            return session.secured.open(record[:6 + struct.unpack_from("<IH", record)[1]])
        except (SecuredMessageError, struct.error) as exc:
            raise SpdmRequesterError(f"secured response rejected: {exc}") from None

    def _chunk_get(self, handle: int, session: RequesterSession | None) -> bytes:
        whole, seq, total = bytearray(), 0, None
        while True:
            req = m.CHUNK_GET(spdm_version=self.conn.version, param2=handle,
                              chunk_seq_no=seq).pack()
            rsp = self._expect(m.CHUNK_RESPONSE, self._raw(req, session))
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

    def _chunk_send(self, request: bytes, session: RequesterSession | None) -> bytes:
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
                               chunk_seq_no=seq, chunk_size=len(piece),
                               large_message_size=len(request), spdm_chunk=piece).pack()
            ack = self._expect(m.CHUNK_SEND_ACK, self._raw(msg, session))
            if last:
                inner = ack.response_to_large_request
                if len(inner) >= 5 and inner[1] == m.ERROR_CODE and \
                        inner[2] == m.SpdmErrorCode.LargeResponse:
                    return self._chunk_get(inner[4], session)
                return inner
            seq += 1

    def _expect(self, cls: type[m.M], data: bytes, **sizes: Any) -> m.M:
        if len(data) >= 4 and data[1] == m.ERROR_CODE and cls is not m.ERROR:
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
    def init_connection(self) -> Connection:
        self.conn = Connection()
        self.sessions.clear()
        self.message_b.clear()
        self.message_l.clear()
        req = m.GET_VERSION(spdm_version=m.V10).pack()
        ver = self._expect(m.VERSION, self._raw(req, None))
        common = [v for v in ver.versions if v in self.versions]
        if not common:
            raise SpdmRequesterError(f"no common SPDM version in {ver.versions}")
        v = max(common)
        self.message_a = bytearray(req + self._last_exact)
        self.conn.version = v
        creq = m.GET_CAPABILITIES(spdm_version=v, ct_exponent=12, flags=self.CAP_FLAGS
                                  if v >= m.V11 else 0, data_transfer_size=self.dts,
                                  max_spdm_msg_size=self.max_msg).pack()
        if v >= m.V11 and not self.chunk:
            creq = m.GET_CAPABILITIES(spdm_version=v, ct_exponent=12,
                                      flags=self.CAP_FLAGS & ~m.CapFlags.CHUNK_CAP,
                                      data_transfer_size=self.dts,
                                      max_spdm_msg_size=self.max_msg).pack()
        caps = self._expect(m.CAPABILITIES, self._raw(creq, None))
        self.message_a += creq + self._last_exact
        self.conn.responder_flags = caps.flags
        self.conn.ct_exponent = caps.ct_exponent
        if v >= m.V12:
            self.conn.responder_dts = caps.data_transfer_size
            self.conn.responder_max = caps.max_spdm_msg_size
        structs = b""
        count = 0
        if v >= m.V11:
            structs = b"".join(m.AlgStruct(t, bits).pack() for t, bits in (
                (m.ALG_TYPE_DHE, mask(self.dhes, DHES)),
                (m.ALG_TYPE_AEAD, mask(self.aeads, AEADS)),
                (m.ALG_TYPE_REQ_BASE_ASYM, 0),
                (m.ALG_TYPE_KEY_SCHEDULE, KEY_SCHEDULE_SPDM)))
            count = 4
        areq = m.NEGOTIATE_ALGORITHMS(
            spdm_version=v, param1=count, length=32 + len(structs),
            measurement_specification=MEASUREMENT_SPEC_DMTF,
            other_params_support=2 if v >= m.V12 else 0,
            base_asym_algo=mask(self.asyms, ASYMS), base_hash_algo=mask(self.hashes, HASHES),
            req_alg_struct=structs).pack()
        raw_alg = self._raw(areq, None)
        if len(raw_alg) >= 6 and raw_alg[1] == m.ALGORITHMS_CODE:
            raw_alg = raw_alg[:struct.unpack_from("<H", raw_alg, 4)[0]]
        alg = self._expect(m.ALGORITHMS, raw_alg)
        self.message_a += areq + self._last_exact
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

    # -- identity ------------------------------------------------------------------------
    def get_digests(self) -> list[bytes]:
        req = m.GET_DIGESTS(spdm_version=self.conn.version).pack()
        raw_rsp = self.send(req)
        rsp = self._expect(m.DIGESTS, raw_rsp)
        n = bin(rsp.param2).count("1")
        size = self.conn.hash.size if self.conn.hash else 0
        if len(rsp.digest) < n * size:
            raise SpdmRequesterError("DIGESTS shorter than its slot mask says")
        exact = raw_rsp[:4 + n * size]
        self.message_b += req + exact
        self.conn.digests = [rsp.digest[i * size:(i + 1) * size] for i in range(n)]
        return self.conn.digests

    def get_certificate(self, slot: int = 0, portion: int = 0x400) -> bytes:
        chain, offset = bytearray(), 0
        while True:
            req = m.GET_CERTIFICATE(spdm_version=self.conn.version, param1=slot,
                                    offset=offset, length=portion).pack()
            rsp = self._expect(m.CERTIFICATE, self.send(req))
            self.message_b += req + self._last_exact
            if rsp.portion_length == 0:
                raise SpdmRequesterError("CERTIFICATE with an empty portion")
            chain += rsp.cert_chain
            offset += rsp.portion_length
            if rsp.remainder_length == 0:
                break
        self.conn.cert_chain = bytes(chain)
        return self.conn.cert_chain

    def verify_certificate_chain(self, root: x509.Certificate | None = None) -> Any:
        """Check the SPDM chain (length, root hash, links, leaf key type); returns
        the leaf public key.  With ``root`` the chain must start at that root."""
        chain, h = self.conn.cert_chain, self.conn.hash
        assert h is not None and self.conn.asym is not None
        if len(chain) < 4 + h.size or struct.unpack_from("<H", chain)[0] != len(chain):
            raise SpdmRequesterError("certificate chain Length does not match")
        try:
            certs = split_der_certificates(chain[4 + h.size:])
        except ValueError as exc:
            raise SpdmRequesterError(f"certificate chain: {exc}") from None
        if h.digest(certs[0].public_bytes(Encoding.DER)) != chain[4:4 + h.size]:
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

    def challenge(self, summary_hash_type: int = m.SUMMARY_HASH_NONE) -> m.CHALLENGE_AUTH:
        req = m.CHALLENGE(spdm_version=self.conn.version, param1=0, param2=summary_hash_type,
                          nonce=os.urandom(32), requester_context=os.urandom(8)).pack()
        raw_rsp = self.send(req)
        sizes = self.conn.sizes(summary_hash=summary_hash_type != 0)
        rsp = self._expect(m.CHALLENGE_AUTH, raw_rsp, summary_hash=summary_hash_type != 0)
        exact = self._last_exact
        unsigned = exact[:-sizes.signature]
        h = self.conn.hash
        assert h is not None
        if rsp.cert_chain_hash != h.digest(self.conn.cert_chain):
            raise SpdmRequesterError("CertChainHash does not match the chain")
        if self.conn.version >= m.V13 and rsp.requester_context != req[36:44]:
            raise SpdmRequesterError("RequesterContext not echoed")
        self._verify("challenge_auth", bytes(self.message_a + self.message_b) + req + unsigned,
                     rsp.signature)
        self.message_b.clear()
        return rsp

    # -- measurements --------------------------------------------------------------------
    def get_measurements(self, operation: int = m.MEAS_OPERATION_ALL, *, signed: bool = True,
                         raw: bool = False,
                         session: RequesterSession | None = None) -> MeasurementResult:
        attrs = (m.MEAS_ATTR_SIGNATURE_REQUESTED if signed else 0) | \
            (m.MEAS_ATTR_RAW_BIT_STREAM_REQUESTED if raw and self.conn.version >= m.V12 else 0)
        req = m.GET_MEASUREMENTS(spdm_version=self.conn.version, param1=attrs,
                                 param2=operation, nonce=os.urandom(32),
                                 requester_context=os.urandom(8)).pack()
        rsp = self._expect(m.MEASUREMENTS, self.send(req, session), signed=signed)
        exact = self._last_exact
        try:
            blocks = m.parse_measurement_record(rsp.measurement_record, rsp.number_of_blocks)
        except DecodeError as exc:
            raise SpdmRequesterError(f"measurement record: {exc}") from None
        transcript = session.message_l if session is not None else self.message_l
        if signed:
            unsigned = exact[:-self.conn.sizes().signature]
            prefix = bytes(self.message_a) if self.conn.version >= m.V12 else b""
            self._verify("measurements", prefix + bytes(transcript) + req + unsigned,
                         rsp.signature)
            transcript.clear()
        else:
            transcript += req + exact
        return MeasurementResult(blocks, rsp.param1, signed, rsp)

    # -- sessions ------------------------------------------------------------------------
    def start_session(self, summary_hash_type: int = m.SUMMARY_HASH_NONE,
                      secured_versions: tuple[int, ...] = (0x11, 0x10)) -> RequesterSession:
        """KEY_EXCHANGE + FINISH; returns the established session."""
        conn, h = self.conn, self.conn.hash
        if conn.dhe is None or conn.aead is None or h is None:
            raise SpdmRequesterError("no DHE/AEAD negotiated: sessions unavailable")
        if not conn.cert_chain:
            self.get_digests()
            self.get_certificate()
        dhe_key, exchange = conn.dhe.generate()
        req_sid = int.from_bytes(os.urandom(2), "little") | 1
        versions = struct.pack("<BBB", SM_DATA_VERSION, SM_DATA_ID_SUPPORTED_VERSION_LIST,
                               len(secured_versions)) + \
            b"".join(struct.pack("<H", v << 8) for v in secured_versions)
        opaque = build_opaque(versions, conn.opaque_format)
        req = m.KEY_EXCHANGE(spdm_version=conn.version, param1=summary_hash_type, param2=0,
                             req_session_id=req_sid, random_data=os.urandom(32),
                             exchange_data=exchange, opaque_length=len(opaque),
                             opaque_data=opaque).pack(conn.sizes())
        summary = summary_hash_type != 0
        rsp = self._expect(m.KEY_EXCHANGE_RSP, self.send(req), summary_hash=summary)
        exact = self._last_exact
        sizes = conn.sizes(summary_hash=summary)
        unsigned = exact[:-(sizes.signature + sizes.hash)]
        cert_hash = h.digest(conn.cert_chain)
        transcript = bytearray(self.message_a) + cert_hash + req + unsigned
        self._verify("key_exchange_rsp", bytes(transcript), rsp.signature)
        selected = parse_secured_version_selection(rsp.opaque_data, conn.opaque_format)
        if selected is None or selected not in secured_versions:
            raise SpdmRequesterError(f"secured message version selection {selected}")
        try:
            shared = conn.dhe.shared_secret(dhe_key, rsp.exchange_data)
        except CryptoError as exc:
            raise SpdmRequesterError(str(exc)) from None
        transcript += rsp.signature
        th1 = h.digest(bytes(transcript))
        schedule = KeySchedule(h, conn.aead, conn.version)
        req_keys, rsp_keys = schedule.handshake(shared, th1)
        if h.hmac(schedule.finished_key(rsp_keys.secret), th1) != rsp.responder_verify_data:
            raise SpdmRequesterError("ResponderVerifyData does not verify")
        transcript += rsp.responder_verify_data
        session_id = req_sid | (rsp.rsp_session_id << 16)
        secured = SecuredSession(session_id, schedule, "requester", req_keys, rsp_keys)
        session = RequesterSession(session_id, secured, transcript, rsp.param1, selected)
        self.sessions[session_id] = session
        # FINISH, under the handshake keys
        header = m.FINISH(spdm_version=conn.version,
                          requester_verify_data=bytes(h.size)).pack(conn.sizes())[:4]
        verify = h.hmac(schedule.finished_key(req_keys.secret),
                        h.digest(bytes(transcript) + header))
        freq = header + verify
        frsp_raw = self.send(freq, session)
        self._expect(m.FINISH_RSP, frsp_raw)
        transcript += freq + self._last_exact
        session.th2 = h.digest(bytes(transcript))
        secured.request, secured.response = schedule.data(session.th2)
        secured.fsm.fire("finish")
        emit("spdm.requester.session", requester=self.name, session_id=f"{session_id:#010x}")
        return session

    def heartbeat(self, session: RequesterSession) -> None:
        req = m.HEARTBEAT(spdm_version=self.conn.version).pack()
        self._expect(m.HEARTBEAT_ACK, self.send(req, session))

    def key_update(self, session: RequesterSession, *, all_keys: bool = False) -> None:
        """KEY_UPDATE (UpdateKey or UpdateAllKeys) then VerifyNewKey."""
        op = m.KEY_UPDATE_UPDATE_ALL_KEYS if all_keys else m.KEY_UPDATE_UPDATE_KEY
        tag = os.urandom(1)[0]
        ack = self._expect(m.KEY_UPDATE_ACK, self.send(
            m.KEY_UPDATE(spdm_version=self.conn.version, param1=op, param2=tag).pack(),
            session))
        if (ack.param1, ack.param2) != (op, tag):
            raise SpdmRequesterError("KEY_UPDATE_ACK does not echo operation and tag")
        session.secured.update_keys("request")
        if all_keys:
            session.secured.update_keys("response")
        tag = os.urandom(1)[0]
        ack = self._expect(m.KEY_UPDATE_ACK, self.send(
            m.KEY_UPDATE(spdm_version=self.conn.version, param1=m.KEY_UPDATE_VERIFY_NEW_KEY,
                         param2=tag).pack(), session))
        if (ack.param1, ack.param2) != (m.KEY_UPDATE_VERIFY_NEW_KEY, tag):
            raise SpdmRequesterError("KEY_UPDATE_ACK (verify) does not echo")

    def end_session(self, session: RequesterSession) -> None:
        req = m.END_SESSION(spdm_version=self.conn.version).pack()
        self._expect(m.END_SESSION_ACK, self.send(req, session))
        self.sessions.pop(session.session_id, None)
        session.secured.fsm.fire("end")

    def vendor_request(self, standard_id: int, vendor_id: bytes, payload: bytes,
                       session: RequesterSession | None = None) -> bytes:
        req = m.VENDOR_DEFINED_REQUEST(
            spdm_version=self.conn.version, standard_id=standard_id, len=len(vendor_id),
            vendor_id=vendor_id, req_length=len(payload),
            vendor_defined_req_payload=payload).pack()
        rsp = self._expect(m.VENDOR_DEFINED_RESPONSE, self.send(req, session))
        if (rsp.standard_id, rsp.vendor_id) != (standard_id, vendor_id):
            raise SpdmRequesterError("VENDOR_DEFINED_RESPONSE for another registry/vendor")
        return rsp.vendor_defined_resp_payload

    def authenticate(self, root: x509.Certificate | None = None,
                     summary_hash_type: int = m.SUMMARY_HASH_NONE) -> m.CHALLENGE_AUTH:
        """VCA, digests, certificate (verified, optionally against ``root``), challenge."""
        self.init_connection()
        self.get_digests()
        self.get_certificate()
        self.verify_certificate_chain(root)
        return self.challenge(summary_hash_type)

