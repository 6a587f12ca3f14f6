"""SPDM key schedule (DSP0274 §12) and secured messages (DSP0277) for PCI DOE.

Key schedule, with ``BinConcat(L, label, ctx) = L (u16 LE) || "spdm1.x " ||
label || ctx`` and HKDF-Expand of the negotiated hash:

    handshake_secret  = HMAC(salt_0 = 0^H, DHE shared secret)
    {req,rsp}_hs      = Expand(handshake_secret, BinConcat(H, "req hs data"/"rsp hs data", TH1))
    finished_key      = Expand({req,rsp}_hs, BinConcat(H, "finished"))
    salt_1            = Expand(handshake_secret, BinConcat(H, "derived"))
    master_secret     = HMAC(salt_1, 0^H)
    {req,rsp}_data    = Expand(master_secret, BinConcat(H, "req app data"/"rsp app data", TH2))
    key, iv           = Expand(secret, BinConcat(key_len, "key")), Expand(.., BinConcat(12, "iv"))
    key update        = Expand(secret, BinConcat(H, "traffic upd"))

Secured message over PCI DOE (DSP0277 §6, sequence number not transmitted):

    SessionID (u32) | Length (u16) | AEAD( AppDataLength (u16) | SPDM message ) | MAC (16)

with AAD = SessionID || Length and IV = base IV XOR the 64-bit per-direction
sequence number (little-endian, in the first 8 bytes).  A record that fails
its MAC, arrives for an unknown session or with a spent sequence number is
rejected before anything reaches the SPDM layer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from ..events import emit
from ..fsm import StateMachine
from ..wire import DecodeError, Struct, counted, items, pad, raw, tail, u8, u16, u32
from .algorithms import AeadAlgo, CryptoError, HashAlgo
from .messages import VersionNumberEntry

SEQUENCE_LIMIT = (1 << 64) - 1


class SecuredMessageError(Exception):
    """A secured record is rejected (unknown session, bad MAC, bad framing)."""

    def __init__(self, reason: str, session_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.session_id = session_id


@dataclass(frozen=True)
class BinConcat(Struct):
    """DSP0274 §12 "Key schedule": BinConcat(Length, Version, Label, Context), the
    HKDF-Expand info; Version is the text "spdm1.x " (8 bytes), Label and Context
    follow each other with no length of their own."""

    length: int = u16()
    version: bytes = raw(8)
    label_and_context: bytes = tail()


def bin_concat(version: int, length: int, label: bytes, context: bytes = b"") -> bytes:
    return BinConcat(length, b"spdm%d.%d " % (version >> 4, version & 0xF),
                     label + context).pack()


@dataclass(frozen=True)
class SecuredRecordHeader(Struct):
    """DSP0277 §6 secured message, PCI DOE binding (no SequenceNumber on the wire):
    SessionID, then Length = bytes of the encrypted data and the MAC after it."""

    session_id: int = u32()
    length: int = u16()


@dataclass(frozen=True)
class SecuredPlaintext(Struct):
    """DSP0277 §6 encrypted data before encryption: ApplicationDataLength,
    ApplicationData (one SPDM message) and the optional RandomData padding."""

    application_data_length: int = u16()
    application_data: bytes = counted("application_data_length")
    random_data: bytes = tail()


@dataclass
class DirectionKeys:
    """Secret, AEAD key, IV and sequence number of one direction."""

    secret: bytes
    key: bytes
    iv: bytes
    sequence: int = 0

    def nonce(self) -> bytes:
        # DSP0277: the 64-bit sequence number, little-endian, XORed into the IV's start.
        seq = self.sequence.to_bytes(8, "little") + bytes(len(self.iv) - 8)
        return bytes(a ^ b for a, b in zip(self.iv, seq, strict=True))


class KeySchedule:
    """The derivations above for one session; no transport knowledge."""

    def __init__(self, hash_algo: HashAlgo, aead: AeadAlgo, version: int) -> None:
        self.hash = hash_algo
        self.aead = aead
        # Sessions use the SPDM version negotiated, 1.1 at least (KEY_EXCHANGE is 1.1+).
        self.version = max(version, 0x11)
        self.handshake_secret = b""
        self.master_secret = b""

    def expand(self, secret: bytes, length: int, label: bytes, context: bytes = b"") -> bytes:
        return self.hash.hkdf_expand(secret, bin_concat(self.version, length, label, context),
                                     length)

    def direction(self, secret: bytes) -> DirectionKeys:
        return DirectionKeys(secret, self.expand(secret, self.aead.key_size, b"key"),
                             self.expand(secret, self.aead.iv_size, b"iv"))

    def handshake(self, dhe_secret: bytes, th1: bytes) -> tuple[DirectionKeys, DirectionKeys]:
        size = self.hash.size
        self.handshake_secret = self.hash.hmac(bytes(size), dhe_secret)
        req = self.expand(self.handshake_secret, size, b"req hs data", th1)
        rsp = self.expand(self.handshake_secret, size, b"rsp hs data", th1)
        return self.direction(req), self.direction(rsp)

    def finished_key(self, direction_secret: bytes) -> bytes:
        return self.expand(direction_secret, self.hash.size, b"finished")

    def data(self, th2: bytes) -> tuple[DirectionKeys, DirectionKeys]:
        size = self.hash.size
        salt_1 = self.expand(self.handshake_secret, size, b"derived")
        self.master_secret = self.hash.hmac(salt_1, bytes(size))
        req = self.expand(self.master_secret, size, b"req app data", th2)
        rsp = self.expand(self.master_secret, size, b"rsp app data", th2)
        return self.direction(req), self.direction(rsp)

    def export_master(self, th2: bytes) -> bytes:
        return self.expand(self.master_secret, self.hash.size, b"exp master", th2)

    def update(self, keys: DirectionKeys) -> DirectionKeys:
        return self.direction(self.expand(keys.secret, self.hash.size, b"traffic upd"))


class SessionState(enum.Enum):
    """DSP0274 session phases, as either role sees them.

    FINISHING: FINISH checked, FINISH_RSP still to travel under the handshake
    keys; KEY_UPDATING: a KEY_UPDATE (UpdateKey/UpdateAllKeys) is done and its
    VerifyNewKey not yet seen (§10.21); ENDING: the last response (END_SESSION_ACK
    or a failed FINISH's ERROR) still to go out.
    """

    HANDSHAKING = "handshaking"
    FINISHING = "finishing"
    ESTABLISHED = "established"
    KEY_UPDATING = "key_updating"
    ENDING = "ending"
    ENDED = "ended"


_LIVE = (SessionState.HANDSHAKING, SessionState.FINISHING, SessionState.ESTABLISHED,
         SessionState.KEY_UPDATING)
SESSION_TABLE = {
    (SessionState.HANDSHAKING, "finish"): SessionState.FINISHING,
    (SessionState.FINISHING, "data_keys"): SessionState.ESTABLISHED,
    (SessionState.ESTABLISHED, "key_update"): SessionState.KEY_UPDATING,
    (SessionState.KEY_UPDATING, "key_update"): SessionState.KEY_UPDATING,
    (SessionState.KEY_UPDATING, "verify_new_key"): SessionState.ESTABLISHED,
    **{(s, "end"): SessionState.ENDING for s in _LIVE},
    (SessionState.ENDING, "closed"): SessionState.ENDED,
    **{(s, "error"): SessionState.ENDED for s in (*_LIVE, SessionState.ENDING)},
}


@dataclass
class SecuredSession:
    """One session's keys in both directions, from one side's point of view.

    ``role`` is "responder" or "requester": a responder opens request-direction
    records and seals response-direction ones, a requester the reverse.
    """

    session_id: int
    schedule: KeySchedule
    role: str
    request: DirectionKeys | None = None
    response: DirectionKeys | None = None
    fsm: StateMachine[SessionState] = field(init=False)

    def __post_init__(self) -> None:
        self.fsm = StateMachine("spdm.session", SESSION_TABLE, SessionState.HANDSHAKING,
                                session_id=f"{self.session_id:#010x}", role=self.role)

    @property
    def state(self) -> SessionState:
        return self.fsm.state

    # -- keys ----------------------------------------------------------------------------
    def _keys(self, outgoing: bool) -> DirectionKeys:
        req_side = (self.role == "requester") == outgoing
        keys = self.request if req_side else self.response
        if keys is None:
            raise SecuredMessageError("session has no keys yet", self.session_id)
        return keys

    def update_keys(self, direction: str) -> None:
        """Derive the next key of "request" or "response" direction (KEY_UPDATE)."""
        keys = self.request if direction == "request" else self.response
        assert keys is not None
        new = self.schedule.update(keys)
        if direction == "request":
            self.request = new
        else:
            self.response = new
        emit("spdm.session.key_update", session_id=f"{self.session_id:#010x}",
             role=self.role, direction=direction)

    # -- records -------------------------------------------------------------------------
    def seal(self, message: bytes) -> bytes:
        """An SPDM message as a secured record in this side's sending direction."""
        keys = self._keys(outgoing=True)
        if keys.sequence >= SEQUENCE_LIMIT:
            raise SecuredMessageError("sequence number exhausted", self.session_id)
        plain = SecuredPlaintext(application_data=message).pack()
        length = len(plain) + self.schedule.aead.tag_size
        header = SecuredRecordHeader(self.session_id, length).pack()
        record = header + self.schedule.aead.encrypt(keys.key, keys.nonce(), plain, header)
        keys.sequence += 1
        return record

    def open(self, record: bytes) -> bytes:
        """The SPDM message inside a record in this side's receiving direction."""
        keys = self._keys(outgoing=False)
        session_id, length = parse_record_header(record)
        if session_id != self.session_id:
            raise SecuredMessageError("record for another session", session_id)
        body = record[6:]
        if length != len(body) or length < 2 + self.schedule.aead.tag_size:
            raise SecuredMessageError(f"record Length {length} but {len(body)} bytes follow",
                                      session_id)
        if keys.sequence >= SEQUENCE_LIMIT:
            raise SecuredMessageError("sequence number exhausted", self.session_id)
        try:
            plain = self.schedule.aead.decrypt(keys.key, keys.nonce(), body, record[:6])
        except CryptoError:
            # A forged or replayed record (a replay is sealed under an older
            # sequence number, so its tag fails with the current nonce).
            raise SecuredMessageError("MAC does not verify (forged, replayed or "
                                      "out-of-sequence record)", session_id) from None
        keys.sequence += 1
        try:
            return SecuredPlaintext.unpack(plain).application_data
        except DecodeError:
            raise SecuredMessageError("ApplicationDataLength beyond the record",
                                      session_id) from None


def parse_record_header(record: bytes) -> tuple[int, int]:
    if len(record) < 6:
        raise SecuredMessageError(f"secured record of {len(record)} bytes")
    header, _ = SecuredRecordHeader.unpack_partial(record)
    return header.session_id, header.length


# -- DSP0277 opaque data (secured message version negotiation) -------------------------------
OPAQUE_SPEC_ID_DMTF = 0x444D5446
SM_DATA_VERSION = 1
SM_DATA_ID_VERSION_SELECTION = 0
SM_DATA_ID_SUPPORTED_VERSION_LIST = 1
# DSP0277 versions supported.  1.2 keeps the 1.0/1.1 record layout and the
# little-endian sequence number in the AEAD nonce, so all three share one codec.
SECURED_MESSAGE_VERSIONS = (0x10, 0x11, 0x12)




@dataclass(frozen=True)
class OpaqueElement(Struct):
    """DSP0274 1.2 "General opaque data format" OpaqueElement (also the element of
    DSP0277 1.0's format): ID (0 = DMTF), VendorLen, VendorID, OpaqueElementDataLen,
    OpaqueElementData, AlignPadding to a multiple of 4 bytes."""

    id: int = u8()
    vendor_len: int = u8()
    vendor_id: bytes = counted("vendor_len")
    opaque_element_data_len: int = u16()
    opaque_element_data: bytes = counted("opaque_element_data_len")
    align_padding: bytes = pad(4)


@dataclass(frozen=True)
class GeneralOpaqueData(Struct):
    """DSP0274 1.2 OpaqueDataFmt1 (OtherParamsSelection bit 1): TotalElements,
    Reserved (3 bytes), OpaqueList."""

    total_elements: int = u8()
    reserved: bytes = raw(3)
    opaque_list: list[OpaqueElement] = items(OpaqueElement, "total_elements")


@dataclass(frozen=True)
class SpdmOpaqueDataV1(Struct):
    """The SPDM 1.1 / DSP0277 1.0 opaque data header (OpaqueDataFmt0 or none):
    SpecID "DMTF", OpaqueVersion 1, TotalElements, Reserved, OpaqueList."""

    spec_id: int = u32(OPAQUE_SPEC_ID_DMTF)
    opaque_version: int = u8(1)
    total_elements: int = u8()
    reserved: int = u16()
    opaque_list: list[OpaqueElement] = items(OpaqueElement, "total_elements")


@dataclass(frozen=True)
class SmVersionSelection(Struct):
    """DSP0277 secured-message opaque element data "version selection"
    (SMDataID 0): SMDataVersion 1, SelectedVersion as a VersionNumberEntry."""

    sm_data_version: int = u8(SM_DATA_VERSION)
    sm_data_id: int = u8(SM_DATA_ID_VERSION_SELECTION)
    selected_version: int = u16()


@dataclass(frozen=True)
class SmSupportedVersionList(Struct):
    """DSP0277 opaque element data "supported version list" (SMDataID 1):
    SMDataVersion 1, VersionCount, VersionsList of VersionNumberEntry."""

    CODE: ClassVar[int] = SM_DATA_ID_SUPPORTED_VERSION_LIST
    CODE_FIELD: ClassVar[str] = "sm_data_id"
    sm_data_version: int = u8(SM_DATA_VERSION)
    sm_data_id: int = u8()
    version_count: int = u8()
    versions_list: list[VersionNumberEntry] = items(VersionNumberEntry, "version_count")

    @classmethod
    def of(cls, versions: list[int] | tuple[int, ...]) -> SmSupportedVersionList:
        """From version bytes (0x11): entry = major.minor in bits 15:8."""
        return cls(versions_list=[VersionNumberEntry(v << 8) for v in versions])


def build_opaque(element_data: bytes, opaque_format: int) -> bytes:
    """One DMTF element in the general opaque data table (fmt1) or with the
    SPDM 1.1 spec_id header (fmt0)."""
    element = OpaqueElement(id=0, opaque_element_data=element_data)
    if opaque_format == 2:
        return GeneralOpaqueData(opaque_list=[element]).pack()
    return SpdmOpaqueDataV1(opaque_list=[element]).pack()


def parse_opaque_elements(opaque: bytes, opaque_format: int) -> list[bytes] | None:
    """Element data of every DMTF element, or None when malformed."""
    try:
        table: GeneralOpaqueData | SpdmOpaqueDataV1
        if opaque_format == 2:
            table, _ = GeneralOpaqueData.unpack_partial(opaque)
        else:
            table, _ = SpdmOpaqueDataV1.unpack_partial(opaque)
            if table.spec_id != OPAQUE_SPEC_ID_DMTF:
                return None
    except DecodeError:
        return None
    return [e.opaque_element_data for e in table.opaque_list if e.id == 0]


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
            try:
                element, _ = SmSupportedVersionList.unpack_partial(data)
            except DecodeError:
                return None
            return [e.version >> 8 for e in element.versions_list]
    return []


def parse_secured_version_selection(opaque: bytes, opaque_format: int) -> int | None:
    for data in parse_opaque_elements(opaque, opaque_format) or []:
        if len(data) >= 4 and data[0] == SM_DATA_VERSION and \
                data[1] == SM_DATA_ID_VERSION_SELECTION:
            element, _ = SmVersionSelection.unpack_partial(data)
            return element.selected_version >> 8
    return None
