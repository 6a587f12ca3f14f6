"""SPDM 1.0-1.3 responder (DSP0274) with secured sessions (DSP0277) over PCI DOE.

The responder is the device side of CMA: DOE type 1 objects carry plain SPDM
messages (:meth:`SpdmResponder.handle_cma`), type 2 objects carry secured
records (:meth:`SpdmResponder.handle_secured`).  Every request is decoded with
its declared message class; anything malformed, out of order or unsupported
gets the specification's ERROR response and leaves the connection as it was.

Transcripts (DSP0274 §10.x, "message_a/b/c/k/f/l"):

* A = GET_VERSION..ALGORITHMS (VCA); B = GET_DIGESTS..CERTIFICATE exchanges;
  C = CHALLENGE + CHALLENGE_AUTH before its signature.  M1 = A||B||C.
* L1 = [A (1.2+)] || GET_MEASUREMENTS/MEASUREMENTS since the last signed one.
* K = A || Hash(cert chain) || KEY_EXCHANGE || KEY_EXCHANGE_RSP; F adds FINISH
  and FINISH_RSP.  TH1/TH2 are hashes of these (see :mod:`.session`).

From 1.2 on a signature covers ``combined_spdm_prefix || Hash(transcript)``
where the prefix is "dmtf-spdm-v1.x.*" four times, zero padding and the
context string; before 1.2 it covers the transcript itself.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..doe.protocols import DoeError
from ..events import emit
from ..fsm import StateMachine
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
    MEASUREMENT_HASH_RAW_BIT_STREAM,
    MEASUREMENT_SPEC_DMTF,
    AeadAlgo,
    AsymAlgo,
    CryptoError,
    DheAlgo,
    HashAlgo,
    mask,
    select,
)
from .keylog import dhe_entry, key_entry
from .session import (
    DirectionKeys,
    KeySchedule,
    SecuredMessageError,
    SecuredSession,
    SessionState,
    parse_record_header,
)

if TYPE_CHECKING:
    from .identity import DeviceIdentity, SlotIdentity

CT_EXPONENT = 12           # 2^12 us = 4 ms worst-case cryptographic timeout
CERT_MODEL_DEVICE_CERT = 1  # SPDM 1.3 CertInfo.CertModel
MAX_SESSIONS = 4
SECURED_MESSAGE_VERSIONS = (0x10, 0x11)  # DSP0277 versions we select from
OPAQUE_SPEC_ID_DMTF = 0x444D5446
SM_DATA_VERSION = 1
SM_DATA_ID_VERSION_SELECTION = 0
SM_DATA_ID_SUPPORTED_VERSION_LIST = 1

SIGNING_CONTEXT = {
    "challenge_auth": b"responder-challenge_auth signing",
    "measurements": b"responder-measurements signing",
    "key_exchange_rsp": b"responder-key_exchange_rsp signing",
    "finish": b"requester-finish signing",
}


class SpdmFailure(Exception):
    """Answer the current request with ERROR ``code`` (DSP0274 §10.9)."""

    def __init__(self, code: int, detail: str = "", data: int = 0,
                 extended: bytes = b"") -> None:
        super().__init__(f"{m.SpdmErrorCode.name(code)}: {detail}")
        self.code = code
        self.detail = detail
        self.data = data
        self.extended = extended


# The exception vendor-defined protocol handlers raise to get an ERROR.
VendorError = SpdmFailure


def signing_message(version: int, context: str, transcript_hash: bytes) -> bytes:
    """What a 1.2+ signature covers: combined_spdm_prefix || Hash(transcript)."""
    prefix = (b"dmtf-spdm-v%d.%d.*" % (version >> 4, version & 0xF)) * 4
    ctx = SIGNING_CONTEXT[context]
    return prefix + bytes(36 - len(ctx)) + ctx + transcript_hash


@dataclass(frozen=True)
class VendorContext:
    """What a vendor-defined protocol handler learns about its request."""

    session_id: int | None
    version: int


VendorProtocolHandler = Callable[[VendorContext, bytes], bytes]


class MeasurementSource(Protocol):
    def measurement_blocks(self, hash_algo: HashAlgo | None,
                           raw_requested: bool) -> list[m.MeasurementBlock]: ...


@dataclass
class ResponderConfig:
    """The device's SPDM personality, normally from its :class:`DeviceProfile`."""

    identity: DeviceIdentity
    versions: tuple[int, ...] = m.SUPPORTED_VERSIONS
    hashes: tuple[str, ...] = DEFAULT_HASHES
    asyms: tuple[str, ...] = DEFAULT_ASYMS
    dhes: tuple[str, ...] = DEFAULT_DHES
    aeads: tuple[str, ...] = DEFAULT_AEADS
    data_transfer_size: int = 4096
    max_spdm_msg_size: int = 65536
    measurements: MeasurementSource | None = None
    heartbeat_period: int = 0

    def __post_init__(self) -> None:
        # Only algorithms the identity has a leaf for can be offered.
        self.asyms = tuple(a for a in self.asyms if self.identity.for_asym(a) is not None)
        if not self.asyms:
            raise ValueError("the identity has no certificate chain for any offered algorithm")
        if self.data_transfer_size < m.MIN_DATA_TRANSFER_SIZE_V12:
            raise ValueError("DataTransferSize below the SPDM 1.2 minimum of 42")


class ConnectionState(enum.Enum):
    NOT_STARTED = "not_started"
    AFTER_VERSION = "after_version"
    AFTER_CAPABILITIES = "after_capabilities"
    NEGOTIATED = "negotiated"


_ANY = tuple(ConnectionState)
CONNECTION_TABLE: dict[tuple[ConnectionState, str], ConnectionState] = {
    **{(s, "version"): ConnectionState.AFTER_VERSION for s in _ANY},
    (ConnectionState.AFTER_VERSION, "capabilities"): ConnectionState.AFTER_CAPABILITIES,
    (ConnectionState.AFTER_CAPABILITIES, "algorithms"): ConnectionState.NEGOTIATED,
}


@dataclass
class Negotiated:
    version: int
    hash: HashAlgo | None = None
    asym: AsymAlgo | None = None
    dhe: DheAlgo | None = None
    aead: AeadAlgo | None = None
    measurement_hash: HashAlgo | None = None
    measurement_raw_only: bool = False
    measurement_spec: int = 0
    opaque_format: int = 0
    peer_flags: int = 0
    peer_dts: int = 0
    peer_max: int = 0

    def sizes(self, **kw: Any) -> m.Sizes:
        return m.Sizes(version=self.version, hash=self.hash.size if self.hash else 0,
                       signature=self.asym.signature_size if self.asym else 0,
                       dhe=self.dhe.exchange_size if self.dhe else 0, **kw)


@dataclass
class ResponderSession:
    secured: SecuredSession
    transcript: bytearray
    finished_req: bytes = b""
    message_l: bytearray = field(default_factory=bytearray)
    pending_update: bool = False   # UpdateKey done, VerifyNewKey not yet seen
    end_after_send: bool = False
    rotate_response_after_send: bool = False
    next_response_keys: DirectionKeys | None = None  # data keys, after FINISH_RSP

    @property
    def session_id(self) -> int:
        return self.secured.session_id


class SpdmResponder:
    """One SPDM endpoint (the DSM).  Not thread-safe: callers hold the device lock."""

    def __init__(self, config: ResponderConfig, name: str = "spdm") -> None:
        self.config = config
        self.name = name
        self.fsm: StateMachine[ConnectionState] = StateMachine(
            "spdm.connection", CONNECTION_TABLE, ConnectionState.NOT_STARTED, endpoint=name)
        self.neg = Negotiated(m.V10)
        self.message_a = bytearray()
        self.message_b = bytearray()
        self.message_l = bytearray()
        self.sessions: dict[int, ResponderSession] = {}
        self.vendor_protocols: dict[tuple[int, bytes], VendorProtocolHandler] = {}
        self._large_response: tuple[int, bytes] | None = None
        self._chunk_in: dict[str, Any] | None = None
        self._next_handle = 1
        # Receives session keys as they change (serve --pcap-keys); None = never.
        self.key_sink: Callable[[dict[str, Any]], None] | None = None

    # -- registry ------------------------------------------------------------------------
    def register_vendor_protocol(self, standard_id: int, vendor_id: bytes,
                                 handler: VendorProtocolHandler) -> None:
        """VENDOR_DEFINED_REQUEST with this registry/vendor ID goes to ``handler``."""
        self.vendor_protocols[(standard_id, bytes(vendor_id))] = handler

    # -- transports ----------------------------------------------------------------------
    def handle_cma(self, payload: bytes) -> bytes:
        """DOE type 1: one plain SPDM request (maybe dword-padded) -> response."""
        return self._respond(payload, None, padded=True)

    def handle_secured(self, payload: bytes) -> bytes:
        """DOE type 2: one secured record -> secured record (or a plain ERROR)."""
        try:
            session_id, length = parse_record_header(payload)
        except SecuredMessageError as exc:
            emit("spdm.secured.rejected", endpoint=self.name, reason=exc.reason)
            raise DoeError(f"secured record rejected: {exc.reason}") from None
        sess = self.sessions.get(session_id)
        if sess is None:
            emit("spdm.secured.rejected", endpoint=self.name, session_id=f"{session_id:#010x}",
                 reason="unknown session")
            raise DoeError(f"secured record for unknown session {session_id:#010x}")
        record = payload[:6 + length]
        try:
            request = sess.secured.open(record)
        except SecuredMessageError as exc:
            # DSP0274 DecryptError: the record is dropped and the session ends.
            emit("spdm.secured.rejected", endpoint=self.name,
                 session_id=f"{session_id:#010x}", reason=exc.reason)
            self._end_session(sess, "decrypt_error")
            return self._error(m.SpdmErrorCode.DecryptError, 0)
        response = self._respond(request, sess, padded=False)
        sealed = sess.secured.seal(response)
        if sess.next_response_keys is not None:
            sess.secured.response, sess.next_response_keys = sess.next_response_keys, None
            self._log_keys(sess, "response")
        if sess.rotate_response_after_send:
            sess.rotate_response_after_send = False
            sess.secured.update_keys("response")
            self._log_keys(sess, "response")
        if sess.end_after_send:
            self._end_session(sess, "end_session")
        return sealed

    # -- core ----------------------------------------------------------------------------
    def _error(self, code: int, data: int = 0, extended: bytes = b"") -> bytes:
        version = self.neg.version if self.fsm.state is not ConnectionState.NOT_STARTED \
            else m.V10
        emit("spdm.error_response", endpoint=self.name, code=m.SpdmErrorCode.name(code),
             data=data)
        return m.ERROR(spdm_version=version, param1=code, param2=data,
                       extended_error_data=extended).pack()

    def _respond(self, data: bytes, sess: ResponderSession | None, *, padded: bool) -> bytes:
        """One request -> its response, reported as one ``spdm.response`` event
        (what `serve` prints per exchange)."""
        response = self._answer(data, sess, padded=padded)
        if len(data) >= 2 and len(response) >= 3:
            error = {"error": m.SpdmErrorCode.name(response[2])} \
                if response[1] == m.ERROR.CODE else {}
            emit("spdm.response", endpoint=self.name, request=m.request_name(data[1]),
                 response=m.request_name(response[1]), **error,
                 session_id=None if sess is None else f"{sess.session_id:#010x}")
        return response

    def _answer(self, data: bytes, sess: ResponderSession | None, *, padded: bool) -> bytes:
        if len(data) < 4:
            emit("spdm.malformed", endpoint=self.name, size=len(data))
            return self._error(m.SpdmErrorCode.InvalidRequest)
        version, code = data[0], data[1]
        name = m.request_name(code)
        emit("spdm.request", endpoint=self.name, request=name, version=f"{version:#x}",
             session_id=None if sess is None else f"{sess.session_id:#010x}")
        try:
            response = self._dispatch(bytes(data), sess, padded)
        except SpdmFailure as exc:
            emit("spdm.request_failed", endpoint=self.name, request=name,
                 error=m.SpdmErrorCode.name(exc.code), detail=exc.detail)
            return self._error(exc.code, exc.data, exc.extended)
        return self._deliver(response)

    def _deliver(self, response: bytes) -> bytes:
        """Hand out ``response``, or park it for CHUNK_GET when it is too large."""
        neg = self.neg
        if neg.version >= m.V12 and neg.peer_dts and len(response) > neg.peer_dts:
            if neg.peer_flags & m.CapFlags.CHUNK_CAP:
                handle = self._new_handle()
                self._large_response = (handle, response)
                emit("spdm.chunk.large_response", endpoint=self.name, size=len(response),
                     handle=handle)
                return self._error(m.SpdmErrorCode.LargeResponse, 0, bytes([handle]))
            return self._error(m.SpdmErrorCode.ResponseTooLarge, 0,
                               struct.pack("<I", len(response)))
        return response

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle = (self._next_handle % 255) + 1
        return handle

    def _parse(self, cls: type[m.M], data: bytes, padded: bool, **sizes: Any) -> tuple[m.M, bytes]:
        """Decode ``data`` as ``cls``; returns the message and its exact bytes."""
        try:
            msg, used = cls.unpack_partial(data, self.neg.sizes(**sizes))
        except DecodeError as exc:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, str(exc)) from None
        extra = data[used:]
        if extra and not (padded and len(extra) < 4 and not any(extra)):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              f"{cls.__name__}: {len(extra)} trailing bytes")
        return msg, data[:used]

    def _dispatch(self, data: bytes, sess: ResponderSession | None, padded: bool) -> bytes:
        version, code = data[0], data[1]
        if code == m.GET_VERSION_CODE:
            if sess is not None:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "GET_VERSION in a session")
            if version != m.V10:
                raise SpdmFailure(m.SpdmErrorCode.VersionMismatch,
                                  "GET_VERSION must be version 1.0")
            return self._get_version(data, padded)
        handler = self._HANDLERS.get(code)
        if handler is None:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest,
                              f"request code {code:#04x}", data=code)
        if self.fsm.state is ConnectionState.NOT_STARTED:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "no GET_VERSION yet")
        if self.fsm.state is ConnectionState.AFTER_VERSION and code != m.GET_CAPABILITIES_CODE:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "GET_CAPABILITIES comes next")
        choosing = code == m.GET_CAPABILITIES_CODE and \
            self.fsm.state is ConnectionState.AFTER_VERSION  # this request picks the version
        if version != self.neg.version and not choosing:
            raise SpdmFailure(m.SpdmErrorCode.VersionMismatch,
                              f"request version {version:#x}, negotiated {self.neg.version:#x}")
        if sess is not None:
            if sess.secured.state is SessionState.HANDSHAKING and code != m.FINISH_CODE:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                                  "only FINISH in the handshake phase")
            if code in _OUTSIDE_SESSION_ONLY:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                                  f"{m.request_name(code)} inside a session")
        elif code in _SESSION_ONLY:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                              f"{m.request_name(code)} outside a session")
        response: bytes = handler(self, data, sess, padded)
        # Only a request that succeeded moves the transcripts on: bad input loses nothing.
        if code not in (m.GET_MEASUREMENTS_CODE, m.CHUNK_GET_CODE, m.CHUNK_SEND_CODE):
            (sess.message_l if sess else self.message_l).clear()
        if code in m.RESETS_M1:
            self.message_b.clear()
        if code not in (m.CHUNK_GET_CODE, m.CHUNK_SEND_CODE):
            self._large_response = None
        return response

    # -- VCA -----------------------------------------------------------------------------
    def _get_version(self, data: bytes, padded: bool) -> bytes:
        _, exact = self._parse(m.GET_VERSION, data, padded)
        # GET_VERSION resets the connection and ends every session (§10.3).
        for sess in list(self.sessions.values()):
            self._end_session(sess, "get_version")
        self.neg = Negotiated(m.V10)
        self.message_b.clear()
        self.message_l.clear()
        self._large_response = None
        self._chunk_in = None
        rsp = m.VERSION.build(sorted(self.config.versions)).pack()
        self.message_a = bytearray(exact + rsp)
        self.fsm.fire("version")
        return rsp

    def _get_capabilities(self, data: bytes, sess: Any, padded: bool) -> bytes:
        if self.fsm.state is not ConnectionState.AFTER_VERSION:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "GET_CAPABILITIES out of order")
        if data[0] not in self.config.versions:
            raise SpdmFailure(m.SpdmErrorCode.VersionMismatch,
                              f"version {data[0]:#x} not offered in VERSION")
        self.neg.version = data[0]
        try:
            req, exact = self._parse(m.GET_CAPABILITIES, data, padded)
        except SpdmFailure:
            self.neg.version = m.V10
            raise
        v = req.spdm_version
        flags = req.flags
        if v >= m.V11:
            enc_mac = flags & (m.CapFlags.ENCRYPT_CAP | m.CapFlags.MAC_CAP)
            key_ex = flags & (m.CapFlags.KEY_EX_CAP | m.CapFlags.PSK_CAP_MASK)
            bad = ""
            if bool(enc_mac) != bool(key_ex):
                bad = "ENCRYPT/MAC_CAP and KEY_EX/PSK_CAP must come together"
            elif (flags & m.CapFlags.PSK_CAP_MASK) == m.CapFlags.PSK_CAP_MASK:
                bad = "PSK_CAP value 3 is reserved"
            elif flags & m.CapFlags.HANDSHAKE_IN_THE_CLEAR_CAP and \
                    not flags & m.CapFlags.KEY_EX_CAP:
                bad = "HANDSHAKE_IN_THE_CLEAR_CAP needs KEY_EX_CAP"
            elif req.ct_exponent > 31:
                bad = "CTExponent above 31"
            if v >= m.V12 and not bad:
                if req.data_transfer_size < m.MIN_DATA_TRANSFER_SIZE_V12:
                    bad = f"DataTransferSize {req.data_transfer_size} below 42"
                elif req.max_spdm_msg_size < req.data_transfer_size:
                    bad = "MaxSPDMmsgSize below DataTransferSize"
                elif not flags & m.CapFlags.CHUNK_CAP and \
                        req.max_spdm_msg_size != req.data_transfer_size:
                    bad = "without CHUNK_CAP MaxSPDMmsgSize must equal DataTransferSize"
            if bad:
                self.neg.version = m.V10
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, bad)
        self.neg.peer_flags = flags
        self.neg.peer_dts = req.data_transfer_size if v >= m.V12 else 0
        self.neg.peer_max = req.max_spdm_msg_size if v >= m.V12 else 0
        rsp = m.CAPABILITIES(spdm_version=v, ct_exponent=CT_EXPONENT, flags=self._flags(v),
                             data_transfer_size=self.config.data_transfer_size,
                             max_spdm_msg_size=self.config.max_spdm_msg_size).pack()
        self.message_a += exact + rsp
        self.fsm.fire("capabilities", version=f"{v:#x}")
        return rsp

    def _flags(self, version: int) -> int:
        f = m.CapFlags
        flags = f.CERT_CAP | f.CHAL_CAP
        if self.config.measurements is not None:
            flags |= f.MEAS_CAP_SIG
        if version >= m.V11:
            flags |= f.ENCRYPT_CAP | f.MAC_CAP | f.KEY_EX_CAP | f.HBEAT_CAP | f.KEY_UPD_CAP
        if version >= m.V12:
            flags |= f.CHUNK_CAP
        return flags

    def _negotiate_algorithms(self, data: bytes, sess: Any, padded: bool) -> bytes:
        if self.fsm.state is not ConnectionState.AFTER_CAPABILITIES:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                              "NEGOTIATE_ALGORITHMS out of order")
        if len(data) >= 6:
            (length,) = struct.unpack_from("<H", data, 4)
            if length > len(data) or length < 32:
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                                  f"Length {length} vs {len(data)} bytes received")
            extra = data[length:]
            if extra and not (padded and len(extra) < 4 and not any(extra)):
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "Length mismatch")
            data = data[:length]
        req, exact = self._parse(m.NEGOTIATE_ALGORITHMS, data, False)
        v = self.neg.version
        if v < m.V11 and req.param1:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "AlgStructs before SPDM 1.1")
        if req.ext_asym_count + req.ext_hash_count > 20:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "too many extended algorithms")
        try:
            structs = req.alg_structs()
        except DecodeError as exc:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, str(exc)) from None
        types = [s.alg_type for s in structs]
        if types != sorted(set(types)) or any(t not in (2, 3, 4, 5) for t in types):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              "AlgStructs must be ascending, unique and of known types")
        cfg, neg = self.config, self.neg
        neg.hash = select(cfg.hashes, req.base_hash_algo, HASHES)
        neg.asym = select(cfg.asyms, req.base_asym_algo, ASYMS)
        dmtf = bool(req.measurement_specification & MEASUREMENT_SPEC_DMTF) and \
            cfg.measurements is not None
        neg.measurement_spec = MEASUREMENT_SPEC_DMTF if dmtf else 0
        neg.measurement_hash = neg.hash if dmtf else None
        offered = {s.alg_type: s.alg_supported for s in structs}
        neg.dhe = select(cfg.dhes, offered.get(m.ALG_TYPE_DHE, 0), DHES)
        neg.aead = select(cfg.aeads, offered.get(m.ALG_TYPE_AEAD, 0), AEADS)
        key_schedule = offered.get(m.ALG_TYPE_KEY_SCHEDULE, 0) & KEY_SCHEDULE_SPDM
        other = 0
        if v >= m.V12:
            other = 2 if req.other_params_support & 2 else (1 if req.other_params_support & 1
                                                            else 0)
        neg.opaque_format = other
        selections = {
            m.ALG_TYPE_DHE: neg.dhe.bit if neg.dhe else 0,
            m.ALG_TYPE_AEAD: neg.aead.bit if neg.aead else 0,
            m.ALG_TYPE_REQ_BASE_ASYM: 0,  # no mutual authentication
            m.ALG_TYPE_KEY_SCHEDULE: key_schedule,
        }
        resp_structs = b"".join(m.AlgStruct(t, selections[t]).pack() for t in types)
        meas_hash_bit = neg.measurement_hash.measurement_bit if neg.measurement_hash else 0
        rsp = m.ALGORITHMS(
            spdm_version=v, param1=len(types), length=36 + len(resp_structs),
            measurement_specification_sel=neg.measurement_spec,
            other_params_selection=other, measurement_hash_algo=meas_hash_bit,
            base_asym_sel=neg.asym.bit if neg.asym else 0,
            base_hash_sel=neg.hash.bit if neg.hash else 0,
            resp_alg_struct=resp_structs).pack()
        if v >= m.V11 and not (neg.dhe and neg.aead and key_schedule):
            neg.dhe = neg.aead = None   # no sessions without all three
        self.message_a += exact + rsp
        self.fsm.fire("algorithms", hash=neg.hash.name if neg.hash else None,
                      asym=neg.asym.name if neg.asym else None,
                      dhe=neg.dhe.name if neg.dhe else None,
                      aead=neg.aead.name if neg.aead else None)
        return rsp

    def _require_negotiated(self) -> tuple[HashAlgo, AsymAlgo, SlotIdentity]:
        if self.fsm.state is not ConnectionState.NEGOTIATED:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "algorithms not negotiated")
        neg = self.neg
        if neg.hash is None or neg.asym is None:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                              "no common hash/signature algorithm was negotiated")
        slot = self.config.identity.for_asym(neg.asym.name)
        assert slot is not None
        return neg.hash, neg.asym, slot

    def _chain(self, slot: SlotIdentity, hash_algo: HashAlgo) -> bytes:
        return slot.spdm_chain(hash_algo.name)

    def _sign(self, context: str, transcript: bytes) -> bytes:
        hash_algo, asym, slot = self._require_negotiated()
        if self.neg.version >= m.V12:
            message = signing_message(self.neg.version, context, hash_algo.digest(transcript))
        else:
            message = transcript
        return asym.sign(slot.key, message, hash_algo)

    # -- identity ------------------------------------------------------------------------
    def _get_digests(self, data: bytes, sess: ResponderSession | None, padded: bool) -> bytes:
        hash_algo, _, slot = self._require_negotiated()
        _, exact = self._parse(m.GET_DIGESTS, data, padded)
        digest = hash_algo.digest(self._chain(slot, hash_algo))
        rsp = m.DIGESTS(spdm_version=self.neg.version,
                        param1=0x01 if self.neg.version >= m.V13 else 0,
                        param2=0x01, digest=digest).pack()
        if sess is None:
            self.message_b += exact + rsp
        return rsp

    def _get_certificate(self, data: bytes, sess: ResponderSession | None,
                         padded: bool) -> bytes:
        hash_algo, _, slot = self._require_negotiated()
        req, exact = self._parse(m.GET_CERTIFICATE, data, padded)
        slot_id = req.param1 & 0xF
        if slot_id != 0:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"slot {slot_id} is empty")
        chain = self._chain(slot, hash_algo)
        # 1.3: CertInfo.CertModel = DeviceCert (1); SlotSizeRequested (param2 bit 0)
        # asks only for the chain's size, in RemainderLength.
        cert_info = CERT_MODEL_DEVICE_CERT if self.neg.version >= m.V13 else 0
        if self.neg.version >= m.V13 and req.param2 & 1:
            rsp = m.CERTIFICATE(spdm_version=self.neg.version, param1=slot_id, param2=cert_info,
                                portion_length=0, remainder_length=len(chain)).pack()
            if sess is None:
                self.message_b += exact + rsp
            return rsp
        if req.offset >= len(chain):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              f"offset {req.offset} beyond the {len(chain)}-byte chain")
        limit = min(self.config.data_transfer_size,
                    self.neg.peer_dts or self.config.data_transfer_size) - 8
        portion = chain[req.offset:req.offset + min(req.length, limit)]
        rsp = m.CERTIFICATE(spdm_version=self.neg.version, param1=slot_id, param2=cert_info,
                            portion_length=len(portion),
                            remainder_length=len(chain) - req.offset - len(portion),
                            cert_chain=portion).pack()
        if sess is None:
            self.message_b += exact + rsp
        return rsp

    def _summary_hash(self, kind: int) -> bytes:
        if kind == m.SUMMARY_HASH_NONE:
            return b""
        if kind not in (m.SUMMARY_HASH_TCB, m.SUMMARY_HASH_ALL):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              f"MeasurementSummaryHashType {kind:#x}")
        if self.config.measurements is None or self.neg.hash is None:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              "measurement summary hash without MEAS_CAP")
        blocks = self.config.measurements.measurement_blocks(self.neg.measurement_hash, False)
        chosen = [b for b in blocks if kind == m.SUMMARY_HASH_ALL or b.tcb]
        return self.neg.hash.digest(b"".join(b.pack() for b in chosen))

    def _challenge(self, data: bytes, sess: Any, padded: bool) -> bytes:
        hash_algo, _, slot = self._require_negotiated()
        req, exact = self._parse(m.CHALLENGE, data, padded)
        slot_id = req.param1 & 0xF if req.param1 != 0xFF else 0xFF
        if slot_id != 0:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"slot {req.param1:#x}")
        summary = self._summary_hash(req.param2)
        chain = self._chain(slot, hash_algo)
        sizes = self.neg.sizes(summary_hash=bool(summary))
        rsp = m.CHALLENGE_AUTH(
            spdm_version=self.neg.version, param1=0, param2=0x01,
            cert_chain_hash=hash_algo.digest(chain), nonce=os.urandom(m.NONCE_SIZE),
            measurement_summary_hash=summary, opaque_length=0, opaque_data=b"",
            requester_context=req.requester_context,
            signature=bytes(sizes.signature))
        unsigned = rsp.pack(sizes)[:-sizes.signature]
        transcript = bytes(self.message_a + self.message_b) + exact + unsigned
        signature = self._sign("challenge_auth", transcript)
        self.message_b.clear()
        emit("spdm.challenge", endpoint=self.name, summary_hash_type=req.param2)
        return unsigned + signature

    # -- measurements --------------------------------------------------------------------
    def _get_measurements(self, data: bytes, sess: ResponderSession | None,
                          padded: bool) -> bytes:
        hash_algo, _, _ = self._require_negotiated()
        source = self.config.measurements
        if source is None or not self.neg.measurement_spec:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "no measurements negotiated",
                              data=m.GET_MEASUREMENTS_CODE)
        req, exact = self._parse(m.GET_MEASUREMENTS, data, padded)
        signed = bool(req.param1 & m.MEAS_ATTR_SIGNATURE_REQUESTED)
        if signed and req.slot_id_param != 0:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"slot {req.slot_id_param}")
        raw_requested = bool(req.param1 & m.MEAS_ATTR_RAW_BIT_STREAM_REQUESTED) and \
            self.neg.version >= m.V12
        blocks = source.measurement_blocks(self.neg.measurement_hash, raw_requested)
        op = req.param2
        param1 = 0
        if op == m.MEAS_OPERATION_TOTAL_NUMBER:
            chosen: list[m.MeasurementBlock] = []
            param1 = len(blocks)
        elif op == m.MEAS_OPERATION_ALL:
            chosen = blocks
        else:
            chosen = [b for b in blocks if b.index == op]
            if not chosen:
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"no measurement index {op}")
        record = b"".join(b.pack() for b in chosen)
        sizes = self.neg.sizes(signed=signed)
        rsp = m.MEASUREMENTS(
            spdm_version=self.neg.version, param1=param1, param2=0,  # slot 0
            number_of_blocks=len(chosen), measurement_record_length=len(record),
            measurement_record=record, nonce=os.urandom(m.NONCE_SIZE),
            requester_context=req.requester_context,
            signature=bytes(sizes.signature) if signed else b"")
        packed = rsp.pack(sizes)
        transcript = sess.message_l if sess else self.message_l
        if not signed:
            transcript += exact + packed
            return packed
        unsigned = packed[:-sizes.signature]
        prefix = bytes(self.message_a) if self.neg.version >= m.V12 else b""
        signature = self._sign("measurements", prefix + bytes(transcript) + exact + unsigned)
        transcript.clear()
        emit("spdm.measurements", endpoint=self.name, operation=op, blocks=len(chosen))
        return unsigned + signature

    # -- sessions ------------------------------------------------------------------------
    def _key_exchange(self, data: bytes, sess: Any, padded: bool) -> bytes:
        hash_algo, asym, slot = self._require_negotiated()
        neg = self.neg
        if neg.version < m.V11 or neg.dhe is None or neg.aead is None or \
                not neg.peer_flags & m.CapFlags.KEY_EX_CAP:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "no key exchange negotiated",
                              data=m.KEY_EXCHANGE_CODE)
        req, exact = self._parse(m.KEY_EXCHANGE, data, padded)
        if req.param2 != 0:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"slot {req.param2:#x}")
        summary = self._summary_hash(req.param1)
        if len(self.sessions) >= MAX_SESSIONS:
            raise SpdmFailure(m.SpdmErrorCode.SessionLimitExceeded,
                              f"{MAX_SESSIONS} sessions open")
        opaque = self._secured_version_opaque(req.opaque_data)
        dhe_key, exchange = neg.dhe.generate()
        try:
            shared = neg.dhe.shared_secret(dhe_key, req.exchange_data)
        except CryptoError as exc:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, str(exc)) from None
        rsp_sid = self._new_session_id(req.req_session_id)
        session_id = req.req_session_id | (rsp_sid << 16)
        sizes = neg.sizes(summary_hash=bool(summary))
        rsp = m.KEY_EXCHANGE_RSP(
            spdm_version=neg.version, param1=self.config.heartbeat_period,
            rsp_session_id=rsp_sid, random_data=os.urandom(m.RANDOM_DATA_SIZE),
            exchange_data=exchange, measurement_summary_hash=summary,
            opaque_length=len(opaque), opaque_data=opaque,
            signature=bytes(sizes.signature), responder_verify_data=bytes(sizes.hash))
        packed = rsp.pack(sizes)
        unsigned = packed[:-(sizes.signature + sizes.hash)]
        cert_hash = hash_algo.digest(self._chain(slot, hash_algo))
        transcript = bytearray(self.message_a) + cert_hash + exact + unsigned
        signature = self._sign("key_exchange_rsp", bytes(transcript))
        transcript += signature
        th1 = hash_algo.digest(bytes(transcript))
        schedule = KeySchedule(hash_algo, neg.aead, neg.version)
        req_keys, rsp_keys = schedule.handshake(shared, th1)
        verify = hash_algo.hmac(schedule.finished_key(rsp_keys.secret), th1)
        transcript += verify
        secured = SecuredSession(session_id, schedule, "responder", req_keys, rsp_keys)
        session = ResponderSession(secured, transcript,
                                   finished_req=schedule.finished_key(req_keys.secret))
        self.sessions[session_id] = session
        emit("spdm.session.opened", endpoint=self.name, session_id=f"{session_id:#010x}",
             dhe=neg.dhe.name, aead=neg.aead.name, hash=hash_algo.name)
        self._log_keys(session, "request", "response", dhe_secret=shared)
        return unsigned + signature + verify

    def _new_session_id(self, req_sid: int) -> int:
        while True:
            rsp_sid = int.from_bytes(os.urandom(2), "little")
            if rsp_sid not in (0, 0xFFFF) and \
                    (req_sid | (rsp_sid << 16)) not in self.sessions:
                return rsp_sid

    def _secured_version_opaque(self, opaque: bytes) -> bytes:
        """Pick a DSP0277 version from the requester's list; answer with the selection."""
        offered = parse_secured_version_list(opaque, self.neg.opaque_format)
        if opaque and offered is None:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "malformed opaque data")
        choice = max((v for v in (offered or [0x11]) if v in SECURED_MESSAGE_VERSIONS),
                     default=None)
        if choice is None:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              "no common secured-message version")
        element = struct.pack("<BBH", SM_DATA_VERSION, SM_DATA_ID_VERSION_SELECTION,
                              choice << 8)
        return build_opaque(element, self.neg.opaque_format)

    def _finish(self, data: bytes, sess: ResponderSession | None, padded: bool) -> bytes:
        hash_algo, _, _ = self._require_negotiated()
        if sess is None:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "FINISH outside a session")
        if sess.secured.state is not SessionState.HANDSHAKING:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "session already finished")
        req, exact = self._parse(m.FINISH, data, padded)
        if req.param1 & 1:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              "FINISH signature without mutual authentication")
        body = exact[:-hash_algo.size]
        expected = hash_algo.hmac(sess.finished_req,
                                  hash_algo.digest(bytes(sess.transcript) + body))
        if expected != req.requester_verify_data:
            emit("spdm.session.finish_failed", endpoint=self.name,
                 session_id=f"{sess.session_id:#010x}")
            sess.end_after_send = True
            raise SpdmFailure(m.SpdmErrorCode.DecryptError, "RequesterVerifyData mismatch")
        sess.transcript += exact
        rsp = m.FINISH_RSP(spdm_version=self.neg.version).pack(self.neg.sizes())
        sess.transcript += rsp
        th2 = hash_algo.digest(bytes(sess.transcript))
        # The FINISH_RSP still travels under the handshake keys: switch after it.
        req_keys, rsp_keys = sess.secured.schedule.data(th2)
        sess.secured.request = req_keys
        sess.next_response_keys = rsp_keys
        self._log_keys(sess, "request")
        sess.secured.fsm.fire("finish")
        return rsp

    def _heartbeat(self, data: bytes, sess: Any, padded: bool) -> bytes:
        self._parse(m.HEARTBEAT, data, padded)
        return m.HEARTBEAT_ACK(spdm_version=self.neg.version).pack()

    def _key_update(self, data: bytes, sess: ResponderSession, padded: bool) -> bytes:
        req, _ = self._parse(m.KEY_UPDATE, data, padded)
        op = req.param1
        if op == m.KEY_UPDATE_UPDATE_KEY:
            sess.secured.update_keys("request")
            self._log_keys(sess, "request")
            sess.pending_update = True
        elif op == m.KEY_UPDATE_UPDATE_ALL_KEYS:
            sess.secured.update_keys("request")
            self._log_keys(sess, "request")
            sess.rotate_response_after_send = True  # the ACK goes under the old key
            sess.pending_update = True
        elif op == m.KEY_UPDATE_VERIFY_NEW_KEY:
            if not sess.pending_update:
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "no key update to verify")
            sess.pending_update = False
        else:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"KeyOperation {op}")
        return m.KEY_UPDATE_ACK(spdm_version=self.neg.version, param1=op,
                                param2=req.param2).pack()

    def _end_session_request(self, data: bytes, sess: ResponderSession, padded: bool) -> bytes:
        self._parse(m.END_SESSION, data, padded)
        sess.end_after_send = True
        return m.END_SESSION_ACK(spdm_version=self.neg.version).pack()

    def _end_session(self, sess: ResponderSession, cause: str) -> None:
        if self.sessions.pop(sess.session_id, None) is None:
            return
        trigger = "end" if cause in ("end_session", "get_version") else "error"
        if sess.secured.fsm.can(trigger):
            sess.secured.fsm.fire(trigger, cause=cause)
        emit("spdm.session.closed", endpoint=self.name, session_id=f"{sess.session_id:#010x}",
             cause=cause)

    # -- vendor-defined ------------------------------------------------------------------
    def _vendor_defined(self, data: bytes, sess: ResponderSession | None, padded: bool) -> bytes:
        self._require_negotiated()
        req, _ = self._parse(m.VENDOR_DEFINED_REQUEST, data, padded)
        handler = self.vendor_protocols.get((req.standard_id, req.vendor_id))
        if handler is None:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest,
                              f"no vendor protocol {req.standard_id}/{req.vendor_id.hex()}",
                              data=m.VENDOR_DEFINED_REQUEST_CODE)
        ctx = VendorContext(None if sess is None else sess.session_id, self.neg.version)
        try:
            answer = handler(ctx, req.vendor_defined_req_payload)
        except SpdmFailure:
            raise
        except Exception as exc:  # a protocol bug answers ERROR, the connection lives on
            emit("spdm.vendor_handler_error", endpoint=self.name, error=repr(exc))
            raise SpdmFailure(m.SpdmErrorCode.Unspecified, f"vendor handler: {exc!r}") from None
        if len(answer) > 0xFFFF:
            raise SpdmFailure(m.SpdmErrorCode.Unspecified, "vendor response too large")
        return m.VENDOR_DEFINED_RESPONSE(
            spdm_version=self.neg.version, standard_id=req.standard_id, len=req.len,
            vendor_id=req.vendor_id, resp_length=len(answer),
            vendor_defined_resp_payload=answer).pack()

    # -- chunking (DSP0274 §10.20) ----------------------------------------------------------
    def _chunk_get(self, data: bytes, sess: Any, padded: bool) -> bytes:
        req, _ = self._parse(m.CHUNK_GET, data, padded)
        if self.neg.version < m.V12:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "CHUNK_GET before 1.2",
                              data=m.CHUNK_GET_CODE)
        if self._large_response is None or self._large_response[0] != req.param2:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "no large response with handle "
                              f"{req.param2}")
        handle, whole = self._large_response
        first_room = self.neg.peer_dts - 16
        room = self.neg.peer_dts - 12
        seq = req.chunk_seq_no
        start = 0 if seq == 0 else first_room + (seq - 1) * room
        if start >= len(whole):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"chunk {seq} beyond the end")
        chunk = whole[start:start + (first_room if seq == 0 else room)]
        last = start + len(chunk) >= len(whole)
        if last:
            self._large_response = None
        return m.CHUNK_RESPONSE(
            spdm_version=self.neg.version, param1=m.CHUNK_LAST if last else 0, param2=handle,
            chunk_seq_no=seq, chunk_size=len(chunk), large_message_size=len(whole),
            response_chunk=chunk).pack()

    def _chunk_send(self, data: bytes, sess: ResponderSession | None, padded: bool) -> bytes:
        req, _ = self._parse(m.CHUNK_SEND, data, padded)
        if self.neg.version < m.V12:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "CHUNK_SEND before 1.2",
                              data=m.CHUNK_SEND_CODE)
        state = self._chunk_in
        if req.chunk_seq_no == 0:
            if req.large_message_size > self.config.max_spdm_msg_size:
                self._chunk_in = None
                raise SpdmFailure(m.SpdmErrorCode.RequestTooLarge,
                                  f"{req.large_message_size} bytes")
            state = self._chunk_in = {"handle": req.param2, "seq": 0, "data": bytearray(),
                                      "size": req.large_message_size}
        elif state is None or state["handle"] != req.param2 or \
                req.chunk_seq_no != state["seq"] + 1:
            self._chunk_in = None
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "CHUNK_SEND out of sequence")
        state["seq"] = req.chunk_seq_no
        state["data"] += req.spdm_chunk
        if len(state["data"]) > state["size"]:
            self._chunk_in = None
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "chunks exceed LargeMessageSize")
        response = b""
        if req.param1 & m.CHUNK_LAST:
            self._chunk_in = None
            if len(state["data"]) != state["size"]:
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                                  "chunks shorter than LargeMessageSize")
            inner = bytes(state["data"])
            if len(inner) >= 2 and inner[1] in (m.CHUNK_SEND_CODE, m.CHUNK_GET_CODE):
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "chunked chunk request")
            emit("spdm.chunk.large_request", endpoint=self.name, size=len(inner))
            response = self._respond(inner, sess, padded=False)
        return m.CHUNK_SEND_ACK(spdm_version=self.neg.version, param2=req.param2,
                                chunk_seq_no=req.chunk_seq_no,
                                response_to_large_request=response).pack()

    def _respond_if_ready(self, data: bytes, sess: Any, padded: bool) -> bytes:
        raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                          "no ResponseNotReady was sent")

    # -- key log (for decrypting captures) --------------------------------------------------
    def _log_keys(self, sess: ResponderSession, *directions: str,
                  dhe_secret: bytes | None = None) -> None:
        if self.key_sink is None:
            return
        s = sess.secured
        if dhe_secret is not None:  # spdm-dump opens the session from it (--dhe_secret)
            self.key_sink(dhe_entry(s.session_id, dhe_secret))
        for direction in directions:
            keys = s.request if direction == "request" else s.response
            if keys is not None:
                self.key_sink(key_entry(s.session_id, direction, s.schedule.aead.name, keys))

    _HANDLERS: dict[int, Callable[..., bytes]] = {}


SpdmResponder._HANDLERS = {
    m.GET_CAPABILITIES_CODE: SpdmResponder._get_capabilities,
    m.NEGOTIATE_ALGORITHMS_CODE: SpdmResponder._negotiate_algorithms,
    m.GET_DIGESTS_CODE: SpdmResponder._get_digests,
    m.GET_CERTIFICATE_CODE: SpdmResponder._get_certificate,
    m.CHALLENGE_CODE: SpdmResponder._challenge,
    m.GET_MEASUREMENTS_CODE: SpdmResponder._get_measurements,
    m.KEY_EXCHANGE_CODE: SpdmResponder._key_exchange,
    m.FINISH_CODE: SpdmResponder._finish,
    m.HEARTBEAT_CODE: SpdmResponder._heartbeat,
    m.KEY_UPDATE_CODE: SpdmResponder._key_update,
    m.END_SESSION_CODE: SpdmResponder._end_session_request,
    m.VENDOR_DEFINED_REQUEST_CODE: SpdmResponder._vendor_defined,
    m.CHUNK_GET_CODE: SpdmResponder._chunk_get,
    m.CHUNK_SEND_CODE: SpdmResponder._chunk_send,
    m.RESPOND_IF_READY_CODE: SpdmResponder._respond_if_ready,
}
_SESSION_ONLY = {m.FINISH_CODE, m.HEARTBEAT_CODE, m.KEY_UPDATE_CODE, m.END_SESSION_CODE}
_OUTSIDE_SESSION_ONLY = {m.GET_CAPABILITIES_CODE, m.NEGOTIATE_ALGORITHMS_CODE, m.CHALLENGE_CODE,
                         m.KEY_EXCHANGE_CODE}


# -- DSP0277 opaque data (secured message version negotiation) -------------------------------
def build_opaque(element_data: bytes, opaque_format: int) -> bytes:
    """One DMTF element in the general opaque data table (fmt1) or with the
    SPDM 1.1 spec_id header (fmt0)."""
    element = struct.pack("<BBH", 0, 0, len(element_data)) + element_data
    element += bytes(-len(element) % 4)
    if opaque_format == 2:
        return struct.pack("<B3x", 1) + element
    return struct.pack("<IBB2x", OPAQUE_SPEC_ID_DMTF, 1, 1) + element


def parse_opaque_elements(opaque: bytes, opaque_format: int) -> list[bytes] | None:
    """Element data of every DMTF element, or None when malformed."""
    try:
        if opaque_format == 2:
            count, pos = opaque[0], 4
        else:
            spec_id, _, count = struct.unpack_from("<IBB", opaque)
            if spec_id != OPAQUE_SPEC_ID_DMTF:
                return None
            pos = 8
        out = []
        for _ in range(count):
            ident, vlen = opaque[pos], opaque[pos + 1]
            pos += 2 + vlen
            (dlen,) = struct.unpack_from("<H", opaque, pos)
            pos += 2
            if pos + dlen > len(opaque):
                return None
            if ident == 0:
                out.append(opaque[pos:pos + dlen])
            pos += dlen + (-(2 + vlen + 2 + dlen) % 4)
        return out
    except (IndexError, struct.error):
        return None


def parse_secured_version_list(opaque: bytes, opaque_format: int) -> list[int] | None:
    """Versions in a SUPPORTED_VERSION_LIST element (as 0x11), [] if none, None if bad."""
    if not opaque:
        return []
    elements = parse_opaque_elements(opaque, opaque_format)
    if elements is None:
        return None
    for data in elements:
        if len(data) >= 3 and data[0] == SM_DATA_VERSION and \
                data[1] == SM_DATA_ID_SUPPORTED_VERSION_LIST:
            count = data[2]
            if len(data) < 3 + 2 * count:
                return None
            return [struct.unpack_from("<H", data, 3 + 2 * i)[0] >> 8 for i in range(count)]
    return []


def parse_secured_version_selection(opaque: bytes, opaque_format: int) -> int | None:
    for data in parse_opaque_elements(opaque, opaque_format) or []:
        if len(data) >= 4 and data[0] == SM_DATA_VERSION and \
                data[1] == SM_DATA_ID_VERSION_SELECTION:
            return int(struct.unpack_from("<H", data, 2)[0] >> 8)
    return None


__all__ = ["SpdmResponder", "ResponderConfig", "SpdmFailure", "VendorError", "VendorContext",
           "MeasurementSource", "signing_message", "mask", "MEASUREMENT_HASH_RAW_BIT_STREAM"]
