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
import struct
from dataclasses import dataclass, field

from ..events import emit
from ..fsm import StateMachine
from .algorithms import AeadAlgo, CryptoError, HashAlgo

SEQUENCE_LIMIT = (1 << 64) - 1


class SecuredMessageError(Exception):
    """A secured record is rejected (unknown session, bad MAC, bad framing)."""

    def __init__(self, reason: str, session_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.session_id = session_id


def bin_concat(version: int, length: int, label: bytes, context: bytes = b"") -> bytes:
    return struct.pack("<H", length) + b"spdm%d.%d " % (version >> 4, version & 0xF) + \
        label + context


@dataclass
class DirectionKeys:
    """Secret, AEAD key, IV and sequence number of one direction."""

    secret: bytes
    key: bytes
    iv: bytes
    sequence: int = 0

    def nonce(self) -> bytes:
        seq = struct.pack("<Q", self.sequence) + bytes(len(self.iv) - 8)
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
        plain = struct.pack("<H", len(message)) + message
        length = len(plain) + self.schedule.aead.tag_size
        header = struct.pack("<IH", self.session_id, length)
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
        (app_length,) = struct.unpack_from("<H", plain)
        if app_length > len(plain) - 2:
            raise SecuredMessageError("ApplicationDataLength beyond the record", session_id)
        return plain[2:2 + app_length]


def parse_record_header(record: bytes) -> tuple[int, int]:
    if len(record) < 6:
        raise SecuredMessageError(f"secured record of {len(record)} bytes")
    session_id, length = struct.unpack_from("<IH", record)
    return session_id, length


# -- DSP0277 opaque data (secured message version negotiation) -------------------------------
OPAQUE_SPEC_ID_DMTF = 0x444D5446
SM_DATA_VERSION = 1
SM_DATA_ID_VERSION_SELECTION = 0
SM_DATA_ID_SUPPORTED_VERSION_LIST = 1
# DSP0277 versions supported.  1.2 keeps the 1.0/1.1 record layout and the
# little-endian sequence number in the AEAD nonce, so all three share one codec.
SECURED_MESSAGE_VERSIONS = (0x10, 0x11, 0x12)


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
