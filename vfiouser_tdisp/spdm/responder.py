"""SPDM 1.0-1.3 responder (DSP0274) with secured sessions (DSP0277) over PCI DOE.

The responder is the device side of CMA: DOE type 1 objects carry plain SPDM
messages (:meth:`SpdmResponder.handle_cma`), type 2 objects carry secured
records (:meth:`SpdmResponder.handle_secured`).  Every request is decoded with
its declared message class; anything malformed, out of order or unsupported
gets the specification's ERROR response and leaves the connection as it was.

Each request code has one typed handler, registered with :func:`handles`
(its message class, the connection phase it needs, whether it belongs inside
or outside a session); the dispatcher checks those, decodes the request and
calls the handler with the decoded message.  Sessions follow
:class:`~.session.SessionState` (key update included), large messages the
:class:`ChunkState` machine; both are one enum and one transition table.

Transcripts (VCA, M1, L1/L2, K/F, TH1/TH2) follow :mod:`.transcript`, the
same object the requester uses.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..doe.protocols import DoeError
from ..events import emit
from ..faults import ARMED, FaultSet
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
    SECURED_MESSAGE_VERSIONS,
    DirectionKeys,
    KeySchedule,
    SecuredMessageError,
    SecuredSession,
    SessionState,
    SmVersionSelection,
    build_opaque,
    parse_record_header,
    parse_secured_version_list,
)
from .transcript import SessionTranscript, Transcript, signing_message

if TYPE_CHECKING:
    from .identity import DeviceIdentity, SlotIdentity

CT_EXPONENT = 12           # 2^12 us = 4 ms worst-case cryptographic timeout
# HeartbeatPeriod (seconds) in KEY_EXCHANGE_RSP: non-zero so requesters send HEARTBEAT.
# DSP0274 (HEARTBEAT): a session with no message for 2 x HeartbeatPeriod is terminated.
# The largest period (255 s -> 510 s of silence) so platform flows that hold a session
# idle between steps for minutes keep it; longer holders send HEARTBEAT.
DEFAULT_HEARTBEAT_PERIOD = 255
MAX_SESSIONS = 4


class SpdmFailure(Exception):
    """Answer the current request with ERROR ``code`` (DSP0274 §10.9)."""

    def __init__(self, code: int, detail: str = "", data: int = 0,
                 extended: bytes = b"", version: int | None = None) -> None:
        super().__init__(f"{m.SpdmErrorCode.name(code)}: {detail}")
        self.version = version   # the ERROR's SPDMVersion when not the negotiated one
        self.code = code
        self.detail = detail
        self.data = data
        self.extended = extended


# The exception vendor-defined protocol handlers raise to get an ERROR.
VendorError = SpdmFailure


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
    heartbeat_period: int = DEFAULT_HEARTBEAT_PERIOD
    handshake_in_the_clear: bool = False   # offer HANDSHAKE_IN_THE_CLEAR_CAP
    # Seconds, monotonic: what the heartbeat timeout is measured with (tests step it).
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        # Only algorithms the identity has a leaf for can be offered.
        self.asyms = tuple(a for a in self.asyms if self.identity.for_asym(a) is not None)
        if not self.asyms:
            raise ValueError("the identity has no certificate chain for any offered algorithm")
        if not 0 <= self.heartbeat_period <= 0xFF:
            raise ValueError("HeartbeatPeriod is one byte (seconds)")
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


class EncapState(enum.Enum):
    """A responder-initiated KEY_UPDATE carried in encapsulated requests (DSP0274 1.2
    §10.23): the device is the KEY_UPDATE requester and updates its own (response
    direction) key."""

    IDLE = "idle"
    ARMED = "armed"                      # waiting for GET_ENCAPSULATED_REQUEST
    AWAIT_UPDATE_ACK = "await_update_ack"  # KEY_UPDATE UpdateKey sent encapsulated
    AWAIT_VERIFY_ACK = "await_verify_ack"  # VerifyNewKey sent in ENCAPSULATED_RESPONSE_ACK


ENCAP_TABLE: dict[tuple[EncapState, str], EncapState] = {
    (EncapState.IDLE, "arm"): EncapState.ARMED,
    (EncapState.ARMED, "arm"): EncapState.ARMED,
    (EncapState.ARMED, "update_sent"): EncapState.AWAIT_UPDATE_ACK,
    (EncapState.AWAIT_UPDATE_ACK, "updated"): EncapState.AWAIT_VERIFY_ACK,
    (EncapState.AWAIT_VERIFY_ACK, "verified"): EncapState.IDLE,
    (EncapState.AWAIT_UPDATE_ACK, "abort"): EncapState.IDLE,
    (EncapState.AWAIT_VERIFY_ACK, "abort"): EncapState.IDLE,
}


@dataclass
class ResponderSession:
    secured: SecuredSession
    transcript: SessionTranscript
    finished_req: bytes = b""
    finished_rsp: bytes = b""
    in_the_clear: bool = False   # HANDSHAKE_IN_THE_CLEAR: FINISH/FINISH_RSP travel plain
    # Response-direction data keys, taken into use once FINISH_RSP is out (FINISHING).
    next_response_keys: DirectionKeys | None = None
    encap: StateMachine[EncapState] = dataclasses.field(init=False)
    encap_request_id: int = 0
    encap_tag: int = 0
    heartbeat_period: int = 0    # as announced in KEY_EXCHANGE_RSP; 0 = no timeout
    last_heard: float = 0.0      # clock() when the session last received a message

    def timed_out(self, now: float) -> bool:
        """DSP0274 HEARTBEAT: the established session received nothing for twice
        the HeartbeatPeriod (the handshake phase is not timed)."""
        return bool(self.heartbeat_period) and \
            self.secured.state is not SessionState.HANDSHAKING and \
            now - self.last_heard > 2 * self.heartbeat_period

    def __post_init__(self) -> None:
        self.encap = StateMachine("spdm.encap", ENCAP_TABLE, EncapState.IDLE,
                                  session_id=f"{self.session_id:#010x}")

    @property
    def session_id(self) -> int:
        return self.secured.session_id

    @property
    def message_l(self) -> bytearray:   # L2
        return self.transcript.message_l


class Where(enum.Enum):
    """Where a request is legal (DSP0274 1.2 Table "SPDM request codes" session column)."""

    ANYWHERE = "anywhere"
    SESSION_ONLY = "session_only"
    OUTSIDE_ONLY = "outside_only"


@dataclass(frozen=True)
class Route:
    """How one request code is handled: its message class (decoded before the handler
    runs), the connection phase it needs, where it is legal, an optional readiness
    check run before decoding (its ERROR wins over a decoding error).  A message with
    its own Length (NEGOTIATE_ALGORITHMS) ends there: the codec's ``message_length``."""

    cls: type[m.SpdmMessage]
    handler: Callable[..., bytes]
    state: ConnectionState | None
    where: Where
    ready: str | None = None


ROUTES: dict[int, Route] = {}
H = TypeVar("H", bound=Callable[..., bytes])


def handles(cls: type[m.SpdmMessage], *, state: ConnectionState | None =
            ConnectionState.NEGOTIATED, where: Where = Where.ANYWHERE,
            ready: str | None = None) -> Callable[[H], H]:
    """Register the decorated method as the handler of ``cls.CODE``."""
    def register(handler: H) -> H:
        ROUTES[cls.CODE] = Route(cls, handler, state, where, ready)
        return handler
    return register


class ChunkState(enum.Enum):
    """DSP0274 1.2 §10.20 large-message transfer, one per connection."""

    IDLE = "idle"
    RECEIVING = "receiving"   # CHUNK_SEND pieces of a large request arriving
    SENDING = "sending"       # a large response parked for CHUNK_GET


CHUNK_TABLE: dict[tuple[ChunkState, str], ChunkState] = {
    **{(s, "receive"): ChunkState.RECEIVING for s in ChunkState},  # CHUNK_SEND seq 0
    (ChunkState.RECEIVING, "chunk_received"): ChunkState.RECEIVING,
    (ChunkState.RECEIVING, "last_chunk_received"): ChunkState.IDLE,
    (ChunkState.RECEIVING, "abort"): ChunkState.IDLE,
    (ChunkState.IDLE, "large_response"): ChunkState.SENDING,
    (ChunkState.SENDING, "large_response"): ChunkState.SENDING,
    (ChunkState.SENDING, "chunk_sent"): ChunkState.SENDING,
    (ChunkState.SENDING, "last_chunk_sent"): ChunkState.IDLE,
    (ChunkState.SENDING, "other_request"): ChunkState.IDLE,   # the parked response is dropped
    (ChunkState.SENDING, "abort"): ChunkState.IDLE,
    **{(s, "reset"): ChunkState.IDLE for s in ChunkState},    # GET_VERSION
}


class ChunkTransfer:
    """The large message in transit (either direction) and its state machine."""

    def __init__(self, endpoint: str) -> None:
        self.fsm: StateMachine[ChunkState] = StateMachine(
            "spdm.chunk", CHUNK_TABLE, ChunkState.IDLE, endpoint=endpoint)
        self.handle = 0
        self.seq = 0
        self.size = 0
        self.buffer = bytearray()

    @property
    def state(self) -> ChunkState:
        return self.fsm.state

    def _load(self, handle: int, data: bytes, size: int) -> None:
        self.handle, self.seq, self.size, self.buffer = handle, 0, size, bytearray(data)

    def start_receiving(self, handle: int, size: int) -> None:
        self._load(handle, b"", size)
        self.fsm.fire("receive", handle=handle, size=size)

    def finish_receiving(self) -> None:
        self.fsm.fire("last_chunk_received", size=len(self.buffer))

    def park_response(self, handle: int, response: bytes) -> None:
        self._load(handle, response, len(response))
        self.fsm.fire("large_response", handle=handle, size=len(response))

    def abort(self, why: str) -> None:
        if self.fsm.can("abort"):
            self.fsm.fire("abort", reason=why)
        self._load(0, b"", 0)

    def other_request(self) -> None:
        if self.fsm.can("other_request"):
            self.fsm.fire("other_request")
            self._load(0, b"", 0)

    def reset(self) -> None:
        self.fsm.fire("reset")
        self._load(0, b"", 0)


def _request_code(text: str) -> int:
    """A request code by its DSP0274 name (GET_MEASUREMENTS) or number (0xE0)."""
    try:
        return int(text, 0)
    except ValueError:
        for code, cls in m.REQUESTS.items():
            if cls.__name__ == text.upper():
                return code
    return -1


class SpdmResponder:
    """One SPDM endpoint (the DSM).  Not thread-safe: callers hold the device lock."""

    def __init__(self, config: ResponderConfig, name: str = "spdm") -> None:
        self.config = config
        self.name = name
        self.fsm: StateMachine[ConnectionState] = StateMachine(
            "spdm.connection", CONNECTION_TABLE, ConnectionState.NOT_STARTED, endpoint=name)
        self.neg = Negotiated(m.V10)
        self.transcript = Transcript()
        self.sessions: dict[int, ResponderSession] = {}
        self.vendor_protocols: dict[tuple[int, bytes], VendorProtocolHandler] = {}
        self.chunk = ChunkTransfer(name)
        self._next_handle = 1
        # Receives session keys as they change (serve --pcap-keys); None = never.
        self.key_sink: Callable[[dict[str, Any]], None] | None = None
        # Fault injection (faults.py): spdm-busy, spdm-not-ready, cert-change.
        self.faults: FaultSet = ARMED
        # The request a ResponseNotReady parked: (request code, token, bytes, session).
        self._not_ready: tuple[int, int, bytes, ResponderSession | None] | None = None
        self._next_token = 1

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
        now = self.config.clock()
        if sess is not None and sess.timed_out(now):
            # The session ended when 2 x HeartbeatPeriod passed in silence; a record
            # for it now is one for a session that no longer exists.
            self._end_session(sess, "heartbeat_timeout")
            sess = None
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
        sess.last_heard = now
        response = self._respond(request, sess, padded=False)
        sealed = sess.secured.seal(response)
        state = sess.secured.state
        if state is SessionState.FINISHING and sess.next_response_keys is not None:
            sess.secured.response, sess.next_response_keys = sess.next_response_keys, None
            sess.secured.fsm.fire("data_keys")
            self._log_keys(sess, "response")
        elif state is SessionState.ENDING:
            self._end_session(sess, "end_session")
        return sealed

    # -- core ----------------------------------------------------------------------------
    def _error(self, code: int, data: int = 0, extended: bytes = b"",
                version: int | None = None) -> bytes:
        if version is None:
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
            injected = self._injected_fault(bytes(data), sess)
            if injected is not None:
                return injected
            if code == m.RESPOND_IF_READY_CODE and self._not_ready is not None:
                data = self._parked_request(bytes(data), sess)
            response = self._dispatch(bytes(data), sess, padded)
        except SpdmFailure as exc:
            emit("spdm.request_failed", endpoint=self.name, request=name,
                 error=m.SpdmErrorCode.name(exc.code), detail=exc.detail)
            return self._error(exc.code, exc.data, exc.extended, exc.version)
        return self._deliver(response)

    def _injected_fault(self, data: bytes, sess: ResponderSession | None) -> bytes | None:
        """An armed spdm-busy / spdm-not-ready fault for this request code: its ERROR.
        Nothing else happens, so the transcripts and state stay as they were."""
        code = data[1]

        def match(args: Any) -> bool:
            return _request_code(args["request"]) == code

        if self.faults.take("spdm-busy", f"{self.name}:{m.request_name(code)}", match):
            return self._error(m.SpdmErrorCode.Busy)
        fault = self.faults.take("spdm-not-ready", f"{self.name}:{m.request_name(code)}",
                                 match)
        if fault is None:
            return None
        token = self._next_token
        self._next_token = self._next_token % 255 + 1
        self._not_ready = (code, token, data, sess)
        # DSP0274 Table "ResponseNotReady extended error data": RDTExponent (1),
        # RequestCode (1), Token (1), RDTM (1).
        ext = bytes([fault.args["rdt_exponent"] & 0xFF, code, token, fault.args["rdtm"] & 0xFF])
        return self._error(m.SpdmErrorCode.ResponseNotReady, 0, ext)

    def _parked_request(self, data: bytes, sess: ResponderSession | None) -> bytes:
        """RESPOND_IF_READY (Param1 = RequestCode, Param2 = Token) -> the parked
        request, handled now; without a matching parked request, an ERROR."""
        parked, self._not_ready = self._not_ready, None
        if parked is None or parked[0] != data[2] or parked[1] != data[3] or parked[3] is not sess:
            self._not_ready = parked
            # DSP0274 1.2+: UnexpectedRequest for a RESPOND_IF_READY nothing waits for.
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                              "RESPOND_IF_READY without a matching ResponseNotReady")
        return parked[2]

    def _chain_now(self, slot: SlotIdentity, hash_algo: HashAlgo, *, read: bool) -> bytes:
        """Slot 0's chain; an armed cert-change fault alters it after ``after`` reads
        (a read = one GET_DIGESTS)."""
        chain = self._chain(slot, hash_algo)
        fault = self.faults.peek("cert-change")
        if fault is None:
            return chain
        if read:
            fault.state["reads"] = fault.state.get("reads", 0) + 1
        if fault.state.get("reads", 0) <= fault.args["after"]:
            return chain
        self.faults.fired_sticky(fault, f"{self.name}:slot0")
        return chain[:-1] + bytes([chain[-1] ^ 0xFF])

    def _deliver(self, response: bytes) -> bytes:
        """Hand out ``response``, or park it for CHUNK_GET when it is too large."""
        neg = self.neg
        if neg.version >= m.V12 and neg.peer_dts and len(response) > neg.peer_dts:
            if neg.peer_flags & m.CapFlags.CHUNK_CAP:
                handle = self._new_handle()
                self.chunk.park_response(handle, response)
                emit("spdm.chunk.large_response", endpoint=self.name, size=len(response),
                     handle=handle)
                return self._error(m.SpdmErrorCode.LargeResponse, 0,
                                   m.LargeResponseData(handle).pack())
            return self._error(m.SpdmErrorCode.ResponseTooLarge, 0,
                               m.ResponseTooLargeData(len(response)).pack())
        return response

    def _chunking(self) -> bool:
        """CHUNK_CAP on both sides (1.2+)."""
        return self.neg.version >= m.V12 and \
            bool(self.neg.peer_flags & self._flags(self.neg.version) & m.CapFlags.CHUNK_CAP)

    def _clear_handshake(self) -> bool:
        """HANDSHAKE_IN_THE_CLEAR_CAP on both sides."""
        return self.neg.version >= m.V11 and bool(
            self.neg.peer_flags & self._flags(self.neg.version) &
            m.CapFlags.HANDSHAKE_IN_THE_CLEAR_CAP)

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle = (self._next_handle % 255) + 1
        return handle

    def _parse(self, cls: type[m.M], data: bytes, padded: bool) -> tuple[m.M, bytes]:
        """Decode ``data`` as ``cls`` in the request's own version (the negotiated one,
        or the one GET_CAPABILITIES picks); returns the message and its exact bytes."""
        sizes = dataclasses.replace(self.neg.sizes(), version=data[0])
        try:
            msg, used = cls.unpack_partial(data, sizes)
        except DecodeError as exc:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, str(exc)) from None
        extra = data[used:]
        if extra and not (padded and len(extra) < 4 and not any(extra)):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              f"{cls.__name__}: {len(extra)} trailing bytes")
        return msg, data[:used]

    def _dispatch(self, data: bytes, sess: ResponderSession | None, padded: bool) -> bytes:
        """Order of checks: known code, connection phase, version, where (session or
        not), the route's phase and readiness, then decoding, then the typed handler."""
        version, code = data[0], data[1]
        route = ROUTES.get(code)
        if route is None:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest,
                              f"request code {code:#04x}", data=code)
        name = route.cls.__name__
        choosing = False   # GET_CAPABILITIES picks the version: errors answer in it
        if code == m.GET_VERSION_CODE:
            if sess is not None:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "GET_VERSION in a session")
            if version != m.V10:
                raise SpdmFailure(m.SpdmErrorCode.VersionMismatch,
                                  "GET_VERSION must be version 1.0")
        else:
            state = self.fsm.state
            if state is ConnectionState.NOT_STARTED:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "no GET_VERSION yet")
            if state is ConnectionState.AFTER_VERSION and code != m.GET_CAPABILITIES_CODE:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                                  "GET_CAPABILITIES comes next")
            choosing = code == m.GET_CAPABILITIES_CODE and state is ConnectionState.AFTER_VERSION
            if version != self.neg.version and not choosing:
                raise SpdmFailure(m.SpdmErrorCode.VersionMismatch,
                                  f"request version {version:#x}, negotiated "
                                  f"{self.neg.version:#x}")
            if choosing and version not in self.config.versions:
                raise SpdmFailure(m.SpdmErrorCode.VersionMismatch,
                                  f"version {version:#x} not offered in VERSION")
            self._check_where(route, code, sess)
            if route.state is not None and state is not route.state:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, f"{name} out of order")
        try:
            if route.ready is not None:
                getattr(self, route.ready)()
            msg, exact = self._parse(route.cls, data, padded)
            response: bytes = route.handler(self, msg, exact, sess)
        except SpdmFailure as exc:
            if choosing:
                exc.version = version
            if exc.code == m.SpdmErrorCode.UnsupportedRequest and not exc.data:
                exc.data = code   # ErrorData of UnsupportedRequest: the request code
            raise
        # Only a request that succeeded moves the transcripts on: bad input loses nothing.
        self.transcript.request_succeeded(code, sess.transcript if sess else None)
        if code not in (m.CHUNK_GET_CODE, m.CHUNK_SEND_CODE):
            self.chunk.other_request()
        return response

    def _check_where(self, route: Route, code: int, sess: ResponderSession | None) -> None:
        name = route.cls.__name__
        if sess is not None:
            if sess.secured.state is SessionState.HANDSHAKING and code != m.FINISH_CODE:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                                  "only FINISH in the handshake phase")
            if route.where is Where.OUTSIDE_ONLY:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, f"{name} inside a session")
        elif route.where is Where.SESSION_ONLY and \
                not (code == m.FINISH_CODE and self._clear_handshake()):
            # DSP0274 1.2 Table "error codes": SessionRequired (0x0B) "the request
            # ... is only allowed within a session"; 1.0/1.1 have no such code.
            error = m.SpdmErrorCode.SessionRequired if self.neg.version >= m.V12 else \
                m.SpdmErrorCode.UnexpectedRequest
            raise SpdmFailure(error, f"{name} outside a session")

    # -- VCA -----------------------------------------------------------------------------
    @handles(m.GET_VERSION, state=None, where=Where.OUTSIDE_ONLY)
    def _get_version(self, req: m.GET_VERSION, exact: bytes, sess: None) -> bytes:
        # GET_VERSION resets the connection and ends every session (§10.3).
        for old in list(self.sessions.values()):
            self._end_session(old, "get_version")
        self.neg = Negotiated(m.V10)
        self.chunk.reset()
        rsp = m.VERSION.build(sorted(self.config.versions)).pack()
        self.transcript.reset(exact, rsp)
        self.fsm.fire("version")
        return rsp

    @handles(m.GET_CAPABILITIES, state=ConnectionState.AFTER_VERSION,
             where=Where.OUTSIDE_ONLY)
    def _get_capabilities(self, req: m.GET_CAPABILITIES, exact: bytes, sess: None) -> bytes:
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
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, bad)
        self.neg.version = v
        self.neg.peer_flags = flags
        self.neg.peer_dts = req.data_transfer_size if v >= m.V12 else 0
        self.neg.peer_max = req.max_spdm_msg_size if v >= m.V12 else 0
        rsp = m.CAPABILITIES(spdm_version=v, ct_exponent=CT_EXPONENT, flags=self._flags(v),
                             data_transfer_size=self.config.data_transfer_size,
                             max_spdm_msg_size=self.config.max_spdm_msg_size).pack()
        self.transcript.add_vca(exact, rsp)
        self.fsm.fire("capabilities", version=f"{v:#x}")
        return rsp

    def _flags(self, version: int) -> int:
        f = m.CapFlags
        flags = f.CERT_CAP | f.CHAL_CAP
        if self.config.measurements is not None:
            flags |= f.MEAS_CAP_SIG
        if version >= m.V11:
            flags |= f.ENCRYPT_CAP | f.MAC_CAP | f.KEY_EX_CAP | f.HBEAT_CAP | f.KEY_UPD_CAP | \
                f.ENCAP_CAP
        if version >= m.V11 and self.config.handshake_in_the_clear:
            flags |= f.HANDSHAKE_IN_THE_CLEAR_CAP
        if version >= m.V12:
            flags |= f.CHUNK_CAP
        return flags

    @handles(m.NEGOTIATE_ALGORITHMS, state=ConnectionState.AFTER_CAPABILITIES,
             where=Where.OUTSIDE_ONLY)
    def _negotiate_algorithms(self, req: m.NEGOTIATE_ALGORITHMS, exact: bytes,
                              sess: None) -> bytes:
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
        # An AlgStruct whose AlgSupported is 0 offers nothing of its type: DSP0274's
        # ReqAlgStruct tables define AlgSupported only as the Requester's bit mask and
        # list no InvalidRequest case for an empty one (libspdm refuses it; this
        # responder reads it as "none", answering that AlgStruct with 0 selected).
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
            spdm_version=v, param1=len(types),
            measurement_specification_sel=neg.measurement_spec,
            other_params_selection=other, measurement_hash_algo=meas_hash_bit,
            base_asym_sel=neg.asym.bit if neg.asym else 0,
            base_hash_sel=neg.hash.bit if neg.hash else 0,
            resp_alg_struct=resp_structs).pack()
        if v >= m.V11 and not (neg.dhe and neg.aead and key_schedule):
            neg.dhe = neg.aead = None   # no sessions without all three
        self.transcript.add_vca(exact, rsp)
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
    @handles(m.GET_DIGESTS)
    def _get_digests(self, req: m.GET_DIGESTS, exact: bytes, sess: ResponderSession | None
                     ) -> bytes:
        hash_algo, _, slot = self._require_negotiated()
        digest = hash_algo.digest(self._chain_now(slot, hash_algo, read=True))
        rsp = m.DIGESTS(spdm_version=self.neg.version,
                        param1=0x01 if self.neg.version >= m.V13 else 0,
                        param2=0x01, digest=digest).pack()
        if sess is None:
            self.transcript.add_b(exact, rsp)
        return rsp

    @handles(m.GET_CERTIFICATE)
    def _get_certificate(self, req: m.GET_CERTIFICATE, exact: bytes,
                         sess: ResponderSession | None) -> bytes:
        hash_algo, _, slot = self._require_negotiated()
        slot_id = req.param1 & 0xF
        if slot_id != 0:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"slot {slot_id} is empty")
        chain = self._chain_now(slot, hash_algo, read=False)
        # 1.3: Param2 is CertInfo only with MULTI_KEY_CAP, which this device does not
        # advertise, so it is reserved (0).  SlotSizeRequested (request Param2 bit 0)
        # asks only for the chain's size, in RemainderLength.
        cert_info = 0
        if self.neg.version >= m.V13 and req.param2 & 1:
            rsp = m.CERTIFICATE(spdm_version=self.neg.version, param1=slot_id, param2=cert_info,
                                portion_length=0, remainder_length=len(chain)).pack()
            if sess is None:
                self.transcript.add_b(exact, rsp)
            return rsp
        if req.offset >= len(chain):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              f"offset {req.offset} beyond the {len(chain)}-byte chain")
        if self._chunking():
            # Both sides have CHUNK_CAP: the whole requested portion, however large,
            # goes out as a large response through CHUNK_GET (DSP0274 1.2 §10.6:
            # the responder may return more than DataTransferSize when chunking).
            limit = min(self.config.max_spdm_msg_size, self.neg.peer_max) - 8
        else:
            limit = min(self.config.data_transfer_size,
                        self.neg.peer_dts or self.config.data_transfer_size) - 8
        portion = chain[req.offset:req.offset + min(req.length, limit)]
        rsp = m.CERTIFICATE(spdm_version=self.neg.version, param1=slot_id, param2=cert_info,
                            remainder_length=len(chain) - req.offset - len(portion),
                            cert_chain=portion).pack()
        if sess is None:
            self.transcript.add_b(exact, rsp)
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

    @handles(m.CHALLENGE, where=Where.OUTSIDE_ONLY)
    def _challenge(self, req: m.CHALLENGE, exact: bytes, sess: None) -> bytes:
        hash_algo, _, slot = self._require_negotiated()
        slot_id = req.param1 & 0xF if req.param1 != 0xFF else 0xFF
        if slot_id != 0:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"slot {req.param1:#x}")
        summary = self._summary_hash(req.param2)
        chain = self._chain(slot, hash_algo)
        sizes = self.neg.sizes(summary_hash=bool(summary))
        rsp = m.CHALLENGE_AUTH(
            spdm_version=self.neg.version, param1=0, param2=0x01,
            cert_chain_hash=hash_algo.digest(chain), nonce=os.urandom(m.NONCE_SIZE),
            measurement_summary_hash=summary,
            requester_context=req.requester_context,
            signature=bytes(sizes.signature))
        unsigned = rsp.pack(sizes)[:-sizes.signature]
        signature = self._sign("challenge_auth",
                               self.transcript.challenge_message(exact, unsigned))
        self.transcript.challenge_done()
        emit("spdm.challenge", endpoint=self.name, summary_hash_type=req.param2)
        return unsigned + signature

    # -- measurements --------------------------------------------------------------------
    def _measurements_ready(self) -> None:
        self._require_negotiated()
        if self.config.measurements is None or not self.neg.measurement_spec:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "no measurements negotiated",
                              data=m.GET_MEASUREMENTS_CODE)

    @handles(m.GET_MEASUREMENTS, ready="_measurements_ready")
    def _get_measurements(self, req: m.GET_MEASUREMENTS, exact: bytes,
                          sess: ResponderSession | None) -> bytes:
        source = self.config.measurements
        assert source is not None
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
            number_of_blocks=len(chosen),
            measurement_record=record, nonce=os.urandom(m.NONCE_SIZE),
            requester_context=req.requester_context,
            signature=bytes(sizes.signature) if signed else b"")
        packed = rsp.pack(sizes)
        st = sess.transcript if sess else None
        if not signed:
            self.transcript.add_unsigned_measurements(st, exact, packed)
            return packed
        unsigned = packed[:-sizes.signature]
        signature = self._sign("measurements", self.transcript.measurements_message(
            self.neg.version, st, exact, unsigned))
        self.transcript.measurement_log(st).clear()
        emit("spdm.measurements", endpoint=self.name, operation=op, blocks=len(chosen))
        return unsigned + signature

    # -- sessions ------------------------------------------------------------------------
    def _key_exchange_ready(self) -> None:
        self._require_negotiated()
        neg = self.neg
        if neg.version < m.V11 or neg.dhe is None or neg.aead is None or \
                not neg.peer_flags & m.CapFlags.KEY_EX_CAP:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "no key exchange negotiated",
                              data=m.KEY_EXCHANGE_CODE)

    @handles(m.KEY_EXCHANGE, where=Where.OUTSIDE_ONLY, ready="_key_exchange_ready")
    def _key_exchange(self, req: m.KEY_EXCHANGE, exact: bytes, sess: None) -> bytes:
        hash_algo, asym, slot = self._require_negotiated()
        neg = self.neg
        assert neg.dhe is not None and neg.aead is not None
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
        clear = self._clear_handshake()
        sizes = neg.sizes(summary_hash=bool(summary), responder_verify=not clear)
        # DSP0274 KEY_EXCHANGE_RSP HeartbeatPeriod: 0 unless both sides set HBEAT_CAP.
        period = self.config.heartbeat_period if \
            neg.peer_flags & m.CapFlags.HBEAT_CAP else 0
        rsp = m.KEY_EXCHANGE_RSP(
            spdm_version=neg.version, param1=period,
            rsp_session_id=rsp_sid, random_data=os.urandom(m.RANDOM_DATA_SIZE),
            exchange_data=exchange, measurement_summary_hash=summary,
            opaque_data=opaque,
            signature=bytes(sizes.signature), responder_verify_data=bytes(sizes.hash))
        packed = rsp.pack(sizes)
        # In the clear (DSP0274 1.2 §10.16) KEY_EXCHANGE_RSP has no ResponderVerifyData.
        unsigned = packed[:-(sizes.signature + (0 if clear else sizes.hash))]
        cert_hash = hash_algo.digest(self._chain(slot, hash_algo))
        transcript = self.transcript.key_exchange(cert_hash, exact, unsigned)
        signature = self._sign("key_exchange_rsp", bytes(transcript.data))
        transcript.add(signature)
        th1 = transcript.hash(hash_algo)
        schedule = KeySchedule(hash_algo, neg.aead, neg.version)
        req_keys, rsp_keys = schedule.handshake(shared, th1)
        verify = b""
        if not clear:
            verify = hash_algo.hmac(schedule.finished_key(rsp_keys.secret), th1)
            transcript.add(verify)
        secured = SecuredSession(session_id, schedule, "responder", req_keys, rsp_keys)
        session = ResponderSession(secured, transcript,
                                   finished_req=schedule.finished_key(req_keys.secret),
                                   finished_rsp=schedule.finished_key(rsp_keys.secret),
                                   in_the_clear=clear, heartbeat_period=period,
                                   last_heard=self.config.clock())
        self.sessions[session_id] = session
        emit("spdm.session.opened", endpoint=self.name, session_id=f"{session_id:#010x}",
             dhe=neg.dhe.name, aead=neg.aead.name, hash=hash_algo.name,
             heartbeat_period=period)
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
        element = SmVersionSelection(selected_version=choice << 8).pack()
        return build_opaque(element, self.neg.opaque_format)

    def _finish_ready(self) -> None:
        self._require_negotiated()

    # Outside a session only with HANDSHAKE_IN_THE_CLEAR (the dispatcher checks).
    @handles(m.FINISH, where=Where.SESSION_ONLY, ready="_finish_ready")
    def _finish(self, req: m.FINISH, exact: bytes, sess: ResponderSession | None) -> bytes:
        hash_algo, _, _ = self._require_negotiated()
        if sess is None:
            # HANDSHAKE_IN_THE_CLEAR: a plain FINISH completes the newest handshake.
            sess = self._clear_handshake_session()
            if sess is None:
                raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                                  "FINISH without a session in its handshake phase")
        elif sess.in_the_clear:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                              "FINISH must travel in the clear in this session")
        if sess.secured.state is not SessionState.HANDSHAKING:
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "session already finished")
        if req.param1 & 1:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              "FINISH signature without mutual authentication")
        body = exact[:-hash_algo.size]
        expected = hash_algo.hmac(sess.finished_req, sess.transcript.hash(hash_algo, body))
        if expected != req.requester_verify_data:
            emit("spdm.session.finish_failed", endpoint=self.name,
                 session_id=f"{sess.session_id:#010x}")
            if sess.in_the_clear:
                self._end_session(sess, "finish_failed")
            else:
                sess.secured.fsm.fire("end", cause="finish_failed")  # after this ERROR
            raise SpdmFailure(m.SpdmErrorCode.DecryptError, "RequesterVerifyData mismatch")
        sess.transcript.add(exact)
        if sess.in_the_clear:
            # ResponderVerifyData moves here: HMAC(finished_key, Hash(K || FINISH || header)).
            header = m.FINISH_RSP(spdm_version=self.neg.version).pack(
                self.neg.sizes(responder_verify=True))
            verify = hash_algo.hmac(sess.finished_rsp, sess.transcript.hash(hash_algo, header))
            rsp = header + verify
        else:
            rsp = m.FINISH_RSP(spdm_version=self.neg.version).pack(self.neg.sizes())
        sess.transcript.add(rsp)
        th2 = sess.transcript.hash(hash_algo)
        req_keys, rsp_keys = sess.secured.schedule.data(th2)
        sess.secured.request = req_keys
        sess.secured.fsm.fire("finish")
        # The heartbeat timer runs from here (the session is established), as in
        # libspdm's responder, and restarts on every record the session receives.
        sess.last_heard = self.config.clock()
        if sess.in_the_clear:   # FINISH_RSP goes plain: both directions switch now
            sess.secured.response = rsp_keys
            sess.secured.fsm.fire("data_keys")
            self._log_keys(sess, "request", "response")
        else:   # FINISH_RSP still travels under the handshake key: switch after it
            sess.next_response_keys = rsp_keys
            self._log_keys(sess, "request")
        return rsp

    def _clear_handshake_session(self) -> ResponderSession | None:
        for sess in reversed(list(self.sessions.values())):
            if sess.in_the_clear and sess.secured.state is SessionState.HANDSHAKING:
                return sess
        return None

    @handles(m.HEARTBEAT, where=Where.SESSION_ONLY)
    def _heartbeat(self, req: m.HEARTBEAT, exact: bytes, sess: ResponderSession) -> bytes:
        return m.HEARTBEAT_ACK(spdm_version=self.neg.version).pack()

    @handles(m.KEY_UPDATE, where=Where.SESSION_ONLY)
    def _key_update(self, req: m.KEY_UPDATE, exact: bytes, sess: ResponderSession) -> bytes:
        op = req.param1
        fsm = sess.secured.fsm
        if op in (m.KEY_UPDATE_UPDATE_KEY, m.KEY_UPDATE_UPDATE_ALL_KEYS):
            # DSP0274 1.2 §10.21: the next request comes under the new request key;
            # with UpdateAllKeys the responder also moves to its new response key
            # before answering, so this KEY_UPDATE_ACK is already under it.
            sess.secured.update_keys("request")
            self._log_keys(sess, "request")
            if op == m.KEY_UPDATE_UPDATE_ALL_KEYS:
                sess.secured.update_keys("response")
                self._log_keys(sess, "response")
            fsm.fire("key_update", operation=op)
        elif op == m.KEY_UPDATE_VERIFY_NEW_KEY:
            if not fsm.can("verify_new_key"):
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "no key update to verify")
            fsm.fire("verify_new_key")
        else:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"KeyOperation {op}")
        return m.KEY_UPDATE_ACK(spdm_version=self.neg.version, param1=op,
                                param2=req.param2).pack()

    @handles(m.END_SESSION, where=Where.SESSION_ONLY)
    def _end_session_request(self, req: m.END_SESSION, exact: bytes,
                             sess: ResponderSession) -> bytes:
        sess.secured.fsm.fire("end", cause="end_session")  # closed once the ACK is out
        return m.END_SESSION_ACK(spdm_version=self.neg.version).pack()

    def _end_session(self, sess: ResponderSession, cause: str) -> None:
        if self.sessions.pop(sess.session_id, None) is None:
            return
        fsm = sess.secured.fsm
        if fsm.state is SessionState.ENDING:
            fsm.fire("closed", cause=cause)
        elif fsm.can("error"):
            fsm.fire("error", cause=cause)
        emit("spdm.session.closed", endpoint=self.name, session_id=f"{sess.session_id:#010x}",
             cause=cause)

    # -- vendor-defined ------------------------------------------------------------------
    @handles(m.VENDOR_DEFINED_REQUEST)
    def _vendor_defined(self, req: m.VENDOR_DEFINED_REQUEST, exact: bytes,
                        sess: ResponderSession | None) -> bytes:
        self._require_negotiated()
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
            spdm_version=self.neg.version, standard_id=req.standard_id,
            vendor_id=req.vendor_id,
            vendor_defined_resp_payload=answer).pack()

    # -- encapsulated requests: responder-initiated KEY_UPDATE (DSP0274 1.2 §10.23) ----------
    def request_key_update(self, session_id: int) -> bool:
        """Queue a KEY_UPDATE (UpdateKey) of the device's own key for ``session_id``; the
        requester fetches it with GET_ENCAPSULATED_REQUEST.  False: no such session."""
        sess = self.sessions.get(session_id)
        if sess is None or sess.secured.state not in (SessionState.ESTABLISHED,
                                                       SessionState.KEY_UPDATING):
            return False
        sess.encap.fire("arm")
        return True

    def _encap_ready(self) -> None:
        self._require_negotiated()
        if self.neg.version < m.V11 or not self.neg.peer_flags & m.CapFlags.ENCAP_CAP:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "no ENCAP_CAP negotiated")

    def _nothing_pending(self) -> SpdmFailure:
        # 1.3 has NoPendingRequests for this; before, the request is unexpected.
        if self.neg.version >= m.V13:
            return SpdmFailure(m.SpdmErrorCode.NoPendingRequests, "no encapsulated request")
        return SpdmFailure(m.SpdmErrorCode.UnexpectedRequest, "no encapsulated request")

    def _encap_key_update(self, sess: ResponderSession, operation: int) -> bytes:
        sess.encap_request_id = sess.encap_request_id % 255 + 1
        sess.encap_tag = os.urandom(1)[0]
        return m.KEY_UPDATE(spdm_version=self.neg.version, param1=operation,
                            param2=sess.encap_tag).pack()

    @handles(m.GET_ENCAPSULATED_REQUEST, ready="_encap_ready")
    def _get_encapsulated_request(self, req: m.GET_ENCAPSULATED_REQUEST, exact: bytes,
                                  sess: ResponderSession | None) -> bytes:
        if sess is None or sess.encap.state is not EncapState.ARMED:
            raise self._nothing_pending()
        inner = self._encap_key_update(sess, m.KEY_UPDATE_UPDATE_KEY)
        sess.encap.fire("update_sent", request_id=sess.encap_request_id)
        return m.ENCAPSULATED_REQUEST(spdm_version=self.neg.version,
                                      param1=sess.encap_request_id,
                                      encapsulated_request=inner).pack()

    @handles(m.DELIVER_ENCAPSULATED_RESPONSE, ready="_encap_ready")
    def _deliver_encapsulated_response(self, req: m.DELIVER_ENCAPSULATED_RESPONSE,
                                       exact: bytes, sess: ResponderSession | None) -> bytes:
        if sess is None or sess.encap.state not in (EncapState.AWAIT_UPDATE_ACK,
                                                    EncapState.AWAIT_VERIFY_ACK):
            raise SpdmFailure(m.SpdmErrorCode.UnexpectedRequest,
                              "no encapsulated request outstanding")
        if req.param1 != sess.encap_request_id:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              f"RequestID {req.param1}, expected {sess.encap_request_id}")
        answer = req.encapsulated_response
        ack_id = sess.encap_request_id
        done = m.ENCAPSULATED_RESPONSE_ACK(
            spdm_version=self.neg.version, param1=0, param2=m.ENCAP_PAYLOAD_ABSENT,
            ack_request_id=ack_id)
        if len(answer) >= 4 and answer[1] == m.ERROR_CODE:
            sess.encap.fire("abort", error=answer[2])   # the requester declined: flow over
            return done.pack()
        waiting_update = sess.encap.state is EncapState.AWAIT_UPDATE_ACK
        op = m.KEY_UPDATE_UPDATE_KEY if waiting_update else m.KEY_UPDATE_VERIFY_NEW_KEY
        expected = m.KEY_UPDATE_ACK(spdm_version=self.neg.version, param1=op,
                                    param2=sess.encap_tag).pack()
        if answer != expected:
            sess.encap.fire("abort", error="bad ack")
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                              f"encapsulated answer {answer[:4].hex()} is not the "
                              f"KEY_UPDATE_ACK {expected.hex()}")
        if waiting_update:
            # The requester acknowledged: from this ENCAPSULATED_RESPONSE_ACK on the
            # device sends under its new key, and asks for VerifyNewKey under it.
            sess.secured.update_keys("response")
            self._log_keys(sess, "response")
            sess.encap.fire("updated")
            verify = self._encap_key_update(sess, m.KEY_UPDATE_VERIFY_NEW_KEY)
            return m.ENCAPSULATED_RESPONSE_ACK(
                spdm_version=self.neg.version, param1=sess.encap_request_id,
                param2=m.ENCAP_PAYLOAD_PRESENT, ack_request_id=ack_id,
                encapsulated_request=verify).pack()
        sess.encap.fire("verified")
        return done.pack()

    # -- chunking (DSP0274 §10.20) ----------------------------------------------------------
    @handles(m.CHUNK_GET, state=None)   # large ALGORITHMS etc. travel chunked too
    def _chunk_get(self, req: m.CHUNK_GET, exact: bytes, sess: ResponderSession | None
                   ) -> bytes:
        if self.neg.version < m.V12:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "CHUNK_GET before 1.2",
                              data=m.CHUNK_GET_CODE)
        chunk = self.chunk
        if chunk.state is not ChunkState.SENDING or chunk.handle != req.param2:
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "no large response with handle "
                              f"{req.param2}")
        whole = bytes(chunk.buffer)
        first_room = self.neg.peer_dts - 16
        room = self.neg.peer_dts - 12
        seq = req.chunk_seq_no
        start = 0 if seq == 0 else first_room + (seq - 1) * room
        if start >= len(whole):
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, f"chunk {seq} beyond the end")
        piece = whole[start:start + (first_room if seq == 0 else room)]
        last = start + len(piece) >= len(whole)
        chunk.fsm.fire("last_chunk_sent" if last else "chunk_sent", seq=seq)
        return m.CHUNK_RESPONSE(
            spdm_version=self.neg.version, param1=m.CHUNK_LAST if last else 0,
            param2=req.param2, chunk_seq_no=seq,
            large_message_size=len(whole), response_chunk=piece).pack()

    @handles(m.CHUNK_SEND, state=None)
    def _chunk_send(self, req: m.CHUNK_SEND, exact: bytes, sess: ResponderSession | None
                    ) -> bytes:
        if self.neg.version < m.V12:
            raise SpdmFailure(m.SpdmErrorCode.UnsupportedRequest, "CHUNK_SEND before 1.2",
                              data=m.CHUNK_SEND_CODE)
        chunk = self.chunk
        if req.chunk_seq_no == 0:
            if req.large_message_size > self.config.max_spdm_msg_size:
                chunk.abort("request too large")
                raise SpdmFailure(m.SpdmErrorCode.RequestTooLarge,
                                  f"{req.large_message_size} bytes")
            chunk.start_receiving(req.param2, req.large_message_size)
        elif chunk.state is not ChunkState.RECEIVING or chunk.handle != req.param2 or \
                req.chunk_seq_no != chunk.seq + 1:
            chunk.abort("out of sequence")
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "CHUNK_SEND out of sequence")
        else:
            chunk.fsm.fire("chunk_received", seq=req.chunk_seq_no)
        chunk.seq = req.chunk_seq_no
        chunk.buffer += req.spdm_chunk
        if len(chunk.buffer) > chunk.size:
            chunk.abort("too long")
            raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "chunks exceed LargeMessageSize")
        response = b""
        if req.param1 & m.CHUNK_LAST:
            inner = bytes(chunk.buffer)
            if len(inner) != chunk.size:
                chunk.abort("too short")
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest,
                                  "chunks shorter than LargeMessageSize")
            chunk.finish_receiving()
            if len(inner) >= 2 and inner[1] in (m.CHUNK_SEND_CODE, m.CHUNK_GET_CODE):
                raise SpdmFailure(m.SpdmErrorCode.InvalidRequest, "chunked chunk request")
            emit("spdm.chunk.large_request", endpoint=self.name, size=len(inner))
            response = self._respond(inner, sess, padded=False)
        return m.CHUNK_SEND_ACK(spdm_version=self.neg.version, param2=req.param2,
                                chunk_seq_no=req.chunk_seq_no,
                                response_to_large_request=response).pack()

    @handles(m.RESPOND_IF_READY, state=None)
    def _respond_if_ready(self, req: m.RESPOND_IF_READY, exact: bytes, sess: Any) -> bytes:
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




__all__ = ["SpdmResponder", "ResponderConfig", "SpdmFailure", "VendorError", "VendorContext",
           "MeasurementSource", "signing_message", "mask", "MEASUREMENT_HASH_RAW_BIT_STREAM"]
