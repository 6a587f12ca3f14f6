"""SPDM 1.0-1.3 messages (DSP0274 §10), declared once.

Every request and response is a frozen dataclass whose fields are named as
in the specification and is declared on the shared codec
(:mod:`vfiouser_tdisp.wire`).  Several SPDM fields have sizes fixed only by the
negotiation (hash size ``H``, signature size ``S``, DHE exchange size ``D``),
exist only from a given version on (``since=``), or only when a flag in the
same message says so (``when=``); the codec takes the sizes and flags from a
:class:`Sizes` context, fills length and count fields in, and handlers never
do offset arithmetic.  A malformed message fails in ``unpack`` with
:class:`~vfiouser_tdisp.wire.DecodeError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..wire import DecodeError, Struct, counted, raw, tail, u8, u16, u24, u32

# -- request / response codes (DSP0274 Table 4 / Table 5) -------------------------------
GET_DIGESTS_CODE = 0x81
GET_CERTIFICATE_CODE = 0x82
CHALLENGE_CODE = 0x83
GET_VERSION_CODE = 0x84
CHUNK_SEND_CODE = 0x85
CHUNK_GET_CODE = 0x86
GET_MEASUREMENTS_CODE = 0xE0
GET_CAPABILITIES_CODE = 0xE1
NEGOTIATE_ALGORITHMS_CODE = 0xE3
KEY_EXCHANGE_CODE = 0xE4
FINISH_CODE = 0xE5
PSK_EXCHANGE_CODE = 0xE6
PSK_FINISH_CODE = 0xE7
HEARTBEAT_CODE = 0xE8
KEY_UPDATE_CODE = 0xE9
GET_ENCAPSULATED_REQUEST_CODE = 0xEA
DELIVER_ENCAPSULATED_RESPONSE_CODE = 0xEB
END_SESSION_CODE = 0xEC
GET_CSR_CODE = 0xED
SET_CERTIFICATE_CODE = 0xEE
VENDOR_DEFINED_REQUEST_CODE = 0xFE
RESPOND_IF_READY_CODE = 0xFF

DIGESTS_CODE = 0x01
CERTIFICATE_CODE = 0x02
CHALLENGE_AUTH_CODE = 0x03
VERSION_CODE = 0x04
CHUNK_SEND_ACK_CODE = 0x05
CHUNK_RESPONSE_CODE = 0x06
MEASUREMENTS_CODE = 0x60
CAPABILITIES_CODE = 0x61
ALGORITHMS_CODE = 0x63
KEY_EXCHANGE_RSP_CODE = 0x64
FINISH_RSP_CODE = 0x65
HEARTBEAT_ACK_CODE = 0x68
KEY_UPDATE_ACK_CODE = 0x69
ENCAPSULATED_REQUEST_CODE = 0x6A
ENCAPSULATED_RESPONSE_ACK_CODE = 0x6B
END_SESSION_ACK_CODE = 0x6C
VENDOR_DEFINED_RESPONSE_CODE = 0x7E
ERROR_CODE = 0x7F


class SpdmErrorCode:
    """ERROR response codes (DSP0274 Table 58)."""

    InvalidRequest = 0x01
    Busy = 0x03
    UnexpectedRequest = 0x04
    Unspecified = 0x05
    DecryptError = 0x06
    UnsupportedRequest = 0x07
    RequestInFlight = 0x08
    InvalidResponseCode = 0x09
    SessionLimitExceeded = 0x0A
    SessionRequired = 0x0B
    ResetRequired = 0x0C
    ResponseTooLarge = 0x0D
    RequestTooLarge = 0x0E
    LargeResponse = 0x0F
    MessageLost = 0x10
    InvalidPolicy = 0x11
    VersionMismatch = 0x41
    ResponseNotReady = 0x42
    RequestResynch = 0x43
    OperationFailed = 0x44
    NoPendingRequests = 0x45
    VendorDefined = 0xFF

    @classmethod
    def name(cls, code: int) -> str:
        for key, value in vars(cls).items():
            if value == code and not key.startswith("_"):
                return key
        return f"0x{code:02x}"


# -- capability flags (DSP0274 Table 11 / Table 12) ---------------------------------------
class CapFlags:
    CACHE_CAP = 1 << 0
    CERT_CAP = 1 << 1
    CHAL_CAP = 1 << 2
    MEAS_CAP_NO_SIG = 1 << 3
    MEAS_CAP_SIG = 2 << 3
    MEAS_CAP_MASK = 3 << 3
    MEAS_FRESH_CAP = 1 << 5
    ENCRYPT_CAP = 1 << 6
    MAC_CAP = 1 << 7
    MUT_AUTH_CAP = 1 << 8
    KEY_EX_CAP = 1 << 9
    PSK_CAP_MASK = 3 << 10
    ENCAP_CAP = 1 << 12
    HBEAT_CAP = 1 << 13
    KEY_UPD_CAP = 1 << 14
    HANDSHAKE_IN_THE_CLEAR_CAP = 1 << 15
    PUB_KEY_ID_CAP = 1 << 16
    CHUNK_CAP = 1 << 17
    ALIAS_CERT_CAP = 1 << 18
    # SPDM 1.3 additions
    SET_CERT_CAP = 1 << 19
    CSR_CAP = 1 << 20
    CERT_INSTALL_RESET_CAP = 1 << 21
    EP_INFO_CAP_MASK = 3 << 22
    MEL_CAP = 1 << 24
    EVENT_CAP = 1 << 25
    MULTI_KEY_CAP_MASK = 3 << 26
    GET_KEY_PAIR_INFO_CAP = 1 << 28
    SET_KEY_PAIR_INFO_CAP = 1 << 29


# Algorithm structure types in NEGOTIATE_ALGORITHMS / ALGORITHMS (Table 16)
ALG_TYPE_DHE = 2
ALG_TYPE_AEAD = 3
ALG_TYPE_REQ_BASE_ASYM = 4
ALG_TYPE_KEY_SCHEDULE = 5

# KEY_UPDATE operations (Table 97)
KEY_UPDATE_UPDATE_KEY = 1
KEY_UPDATE_UPDATE_ALL_KEYS = 2
KEY_UPDATE_VERIFY_NEW_KEY = 3

# GET_MEASUREMENTS attributes / operations (Table 43)
MEAS_ATTR_SIGNATURE_REQUESTED = 1 << 0
MEAS_ATTR_RAW_BIT_STREAM_REQUESTED = 1 << 1
MEAS_OPERATION_TOTAL_NUMBER = 0x00
MEAS_OPERATION_ALL = 0xFF

# Measurement summary hash types (CHALLENGE param2, KEY_EXCHANGE param1)
SUMMARY_HASH_NONE = 0x00
SUMMARY_HASH_TCB = 0x01
SUMMARY_HASH_ALL = 0xFF

# DSP0274 (CHALLENGE_AUTH transcript): one of these requests arriving before a
# CHALLENGE completes resets M1/M2 -- the digests/certificate part (B) and C.
RESETS_M1 = frozenset({GET_MEASUREMENTS_CODE, KEY_EXCHANGE_CODE, FINISH_CODE,
                       PSK_EXCHANGE_CODE, PSK_FINISH_CODE, HEARTBEAT_CODE, KEY_UPDATE_CODE,
                       GET_ENCAPSULATED_REQUEST_CODE, DELIVER_ENCAPSULATED_RESPONSE_CODE,
                       END_SESSION_CODE})

CHUNK_LAST = 1 << 0
NONCE_SIZE = 32
RANDOM_DATA_SIZE = 32
REQUESTER_CONTEXT_SIZE = 8
MIN_DATA_TRANSFER_SIZE_V12 = 42
REGISTRY_ID_PCISIG = 3

V10, V11, V12, V13 = 0x10, 0x11, 0x12, 0x13
SUPPORTED_VERSIONS = (V10, V11, V12, V13)


def version_byte(text: str) -> int:
    """"1.2" -> 0x12."""
    major, minor = text.split(".")
    return (int(major) << 4) | int(minor)


@dataclass
class Sizes:
    """What the negotiation fixed: the size context of the codec (``wire``).

    ``raw("H")``, ``raw("S")``, ``raw("D")`` fields take the hash, signature
    and DHE exchange sizes; ``raw("MS")`` is the measurement summary hash,
    present (H bytes) only when the request asked for one.
    """

    version: int = V10
    hash: int = 0           # H: base hash size
    signature: int = 0      # S: base asym signature size
    dhe: int = 0            # D: DHE exchange data size
    summary_hash: bool = False   # MeasurementSummaryHash present (request asked for one)
    signed: bool = False          # MEASUREMENTS carries a signature
    responder_verify: bool = True  # FINISH_RSP carries ResponderVerifyData

    def size(self, name: str) -> int:
        if name == "H":
            return self.hash
        if name == "S":
            return self.signature
        if name == "D":
            return self.dhe
        if name == "MS":
            return self.hash if self.summary_hash else 0
        raise KeyError(f"no negotiated size {name!r}")


Cond = Callable[[Any, Sizes], bool]


@functools.lru_cache(maxsize=256)
def _default_sizes(version: int) -> Sizes:
    """Nothing negotiated yet (shared: the codec only reads it)."""
    return Sizes(version=version)
M = TypeVar("M", bound="SpdmMessage")


@dataclass(frozen=True)
class SpdmMessage(Struct):
    """The 4-byte SPDM header every message starts with (DSP0274 §10 "SPDM message format").

    Fields marked ``since=`` exist from that SPDMVersion on; ``request_response_code``
    is filled in from ``CODE`` and checked by ``unpack``.
    """

    CODE: ClassVar[int] = 0
    VERSION_FIELD: ClassVar[str] = "spdm_version"
    CODE_FIELD: ClassVar[str] = "request_response_code"
    spdm_version: int = u8(V10)
    request_response_code: int = u8()
    param1: int = u8()
    param2: int = u8()

    @classmethod
    def default_context(cls, version: int | None) -> Sizes:
        return _default_sizes(V10 if version is None else version)

    def pack(self, sizes: Sizes | None = None) -> bytes:
        return Struct.pack(self, sizes)

    @classmethod
    def unpack(cls: type[M], data: bytes | bytearray | memoryview,
               sizes: Sizes | None = None, *, exact: bool = True) -> M:
        return super().unpack(data, sizes, exact=exact)

    @classmethod
    def unpack_partial(cls: type[M], data: bytes | bytearray | memoryview,
                       sizes: Sizes | None = None) -> tuple[M, int]:
        """The message at the start of ``data`` and how many bytes it took.

        DOE pads objects to whole dwords, so a message may be followed by up to
        three padding bytes; transcripts use exactly the consumed bytes.
        """
        return cls.unpack_from(data, 0, sizes)


def _sig_requested(v: dict[str, Any], s: Sizes) -> bool:
    return bool(v["param1"] & MEAS_ATTR_SIGNATURE_REQUESTED)


def _signed(v: dict[str, Any], s: Sizes) -> bool:
    return s.signed


def _first_chunk(v: dict[str, Any], s: Sizes) -> bool:
    return v["chunk_seq_no"] == 0


# -- VCA ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionNumberEntry(Struct):
    """VERSION's VersionNumberEntry: bits 15:12 major, 11:8 minor, 7:4 update, 3:0 alpha."""

    version: int = u16()


@dataclass(frozen=True)
class GET_VERSION(SpdmMessage):
    CODE: ClassVar[int] = GET_VERSION_CODE


@dataclass(frozen=True)
class VERSION(SpdmMessage):
    CODE: ClassVar[int] = VERSION_CODE
    reserved: int = u8()
    version_number_entry_count: int = u8()
    version_number_entries: bytes = counted("version_number_entry_count", 2)

    @property
    def versions(self) -> list[int]:
        """Entries as version bytes (0x12), from VersionNumberEntry bits 15:8."""
        raw_entries = self.version_number_entries
        return [raw_entries[i + 1] for i in range(0, len(raw_entries), 2)]

    @classmethod
    def build(cls, versions: list[int]) -> VERSION:
        entries = b"".join(VersionNumberEntry(v << 8).pack() for v in versions)
        return cls(spdm_version=V10, version_number_entries=entries)


@dataclass(frozen=True)
class GET_CAPABILITIES(SpdmMessage):
    CODE: ClassVar[int] = GET_CAPABILITIES_CODE
    reserved: int = u8(since=V11)
    ct_exponent: int = u8(since=V11)
    reserved2: int = u16(since=V11)
    flags: int = u32(since=V11)
    data_transfer_size: int = u32(since=V12)
    max_spdm_msg_size: int = u32(since=V12)


@dataclass(frozen=True)
class CAPABILITIES(SpdmMessage):
    CODE: ClassVar[int] = CAPABILITIES_CODE
    reserved: int = u8()
    ct_exponent: int = u8()
    reserved2: int = u16()
    flags: int = u32()
    data_transfer_size: int = u32(since=V12)
    max_spdm_msg_size: int = u32(since=V12)


@dataclass(frozen=True)
class AlgStructHeader(Struct):
    """The fixed part of an AlgStruct (DSP0274 NEGOTIATE_ALGORITHMS, "AlgStructure").

    AlgCount bits 7:4 give the size of AlgSupported (2), bits 3:0 the number of
    4-byte AlgExternal entries that follow.
    """

    alg_type: int = u8()
    alg_count: int = u8(0x20)
    alg_supported: int = u16()


@dataclass(frozen=True)
class AlgStruct:
    """One AlgStruct of NEGOTIATE_ALGORITHMS / ALGORITHMS (Table 16)."""

    alg_type: int
    alg_supported: int
    ext_count: int = 0

    def pack(self) -> bytes:
        # AlgCount: bits 7:4 fixed-field bytes (2), bits 3:0 external count (we send none)
        return AlgStructHeader(self.alg_type, 0x20, self.alg_supported).pack()


def parse_alg_structs(data: bytes, count: int) -> list[AlgStruct]:
    out, pos = [], 0
    for _ in range(count):
        if pos + 2 > len(data):
            raise DecodeError("AlgStruct truncated")
        alg_type, alg_count = data[pos], data[pos + 1]
        fixed, ext = alg_count >> 4, alg_count & 0xF
        if fixed != 2:
            raise DecodeError(f"AlgStruct {alg_type}: fixed algorithm field of {fixed} bytes")
        head, pos = AlgStructHeader.unpack_from(data, pos)
        pos += 4 * ext  # AlgExternal entries: we select none of them
        if pos > len(data):
            raise DecodeError("AlgStruct truncated")
        out.append(AlgStruct(alg_type, head.alg_supported, ext))
    if pos != len(data):
        raise DecodeError("bytes after the last AlgStruct")
    return out


@dataclass(frozen=True)
class NEGOTIATE_ALGORITHMS(SpdmMessage):
    CODE: ClassVar[int] = NEGOTIATE_ALGORITHMS_CODE
    length: int = u16(message_length=True)
    measurement_specification: int = u8()
    other_params_support: int = u8()
    base_asym_algo: int = u32()
    base_hash_algo: int = u32()
    reserved: bytes = raw(12)
    ext_asym_count: int = u8()
    ext_hash_count: int = u8()
    reserved2: int = u8()
    mel_specification: int = u8()
    ext_asym: bytes = counted("ext_asym_count", 4)
    ext_hash: bytes = counted("ext_hash_count", 4)
    req_alg_struct: bytes = tail()

    def alg_structs(self) -> list[AlgStruct]:
        return parse_alg_structs(self.req_alg_struct, self.param1)


@dataclass(frozen=True)
class ALGORITHMS(SpdmMessage):
    CODE: ClassVar[int] = ALGORITHMS_CODE
    length: int = u16(message_length=True)
    measurement_specification_sel: int = u8()
    other_params_selection: int = u8()
    measurement_hash_algo: int = u32()
    base_asym_sel: int = u32()
    base_hash_sel: int = u32()
    reserved: bytes = raw(11)
    mel_specification_sel: int = u8()
    ext_asym_sel_count: int = u8()
    ext_hash_sel_count: int = u8()
    reserved2: int = u16()
    ext_asym_sel: bytes = counted("ext_asym_sel_count", 4)
    ext_hash_sel: bytes = counted("ext_hash_sel_count", 4)
    resp_alg_struct: bytes = tail()

    def alg_structs(self) -> list[AlgStruct]:
        return parse_alg_structs(self.resp_alg_struct, self.param1)


# -- identity ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GET_DIGESTS(SpdmMessage):
    CODE: ClassVar[int] = GET_DIGESTS_CODE


@dataclass(frozen=True)
class DIGESTS(SpdmMessage):
    CODE: ClassVar[int] = DIGESTS_CODE
    digest: bytes = tail()  # one H-byte digest per slot set in param2


@dataclass(frozen=True)
class GET_CERTIFICATE(SpdmMessage):
    CODE: ClassVar[int] = GET_CERTIFICATE_CODE
    offset: int = u16()
    length: int = u16()


@dataclass(frozen=True)
class CERTIFICATE(SpdmMessage):
    CODE: ClassVar[int] = CERTIFICATE_CODE
    portion_length: int = u16()
    remainder_length: int = u16()
    cert_chain: bytes = counted("portion_length")


@dataclass(frozen=True)
class CHALLENGE(SpdmMessage):
    CODE: ClassVar[int] = CHALLENGE_CODE
    nonce: bytes = raw(NONCE_SIZE)
    requester_context: bytes = raw(REQUESTER_CONTEXT_SIZE, since=V13)


@dataclass(frozen=True)
class CHALLENGE_AUTH(SpdmMessage):
    CODE: ClassVar[int] = CHALLENGE_AUTH_CODE
    cert_chain_hash: bytes = raw("H")
    nonce: bytes = raw(NONCE_SIZE)
    measurement_summary_hash: bytes = raw("MS")
    opaque_length: int = u16()
    opaque_data: bytes = counted("opaque_length")
    requester_context: bytes = raw(REQUESTER_CONTEXT_SIZE, since=V13)
    signature: bytes = raw("S")


@dataclass(frozen=True)
class GET_MEASUREMENTS(SpdmMessage):
    CODE: ClassVar[int] = GET_MEASUREMENTS_CODE
    nonce: bytes = raw(NONCE_SIZE, when=_sig_requested)
    slot_id_param: int = u8(since=V11, when=_sig_requested)
    requester_context: bytes = raw(REQUESTER_CONTEXT_SIZE, since=V13)


@dataclass(frozen=True)
class MEASUREMENTS(SpdmMessage):
    CODE: ClassVar[int] = MEASUREMENTS_CODE
    number_of_blocks: int = u8()
    measurement_record_length: int = u24()
    measurement_record: bytes = counted("measurement_record_length")
    nonce: bytes = raw(NONCE_SIZE)
    opaque_length: int = u16()
    opaque_data: bytes = counted("opaque_length")
    requester_context: bytes = raw(REQUESTER_CONTEXT_SIZE, since=V13)
    signature: bytes = raw("S", when=_signed)


@dataclass(frozen=True)
class MEASUREMENT_BLOCK(Struct):
    """One block of a measurement record (DSP0274 MEASUREMENTS, "Measurement block")."""

    index: int = u8()
    measurement_specification: int = u8(0x01)   # bit 0: DMTF
    measurement_size: int = u16()
    measurement: bytes = counted("measurement_size")


@dataclass(frozen=True)
class DMTF_MEASUREMENT(Struct):
    """The DMTF measurement specification format of a block's Measurement."""

    dmtf_spec_measurement_value_type: int = u8()   # bit 7: raw bit stream
    dmtf_spec_measurement_value_size: int = u16()
    dmtf_spec_measurement_value: bytes = counted("dmtf_spec_measurement_value_size")


@dataclass(frozen=True)
class MeasurementBlock:
    """One measurement block in the DMTF measurement specification format (§10.11.1)."""

    index: int
    value_type: int         # DMTFSpecMeasurementValueType bits 6:0
    value: bytes
    raw_bit_stream: bool = False
    tcb: bool = True        # counted in the TCB measurement summary hash

    def pack(self) -> bytes:
        dmtf = DMTF_MEASUREMENT(self.value_type | (0x80 if self.raw_bit_stream else 0),
                                dmtf_spec_measurement_value=self.value).pack()
        return MEASUREMENT_BLOCK(self.index, measurement=dmtf).pack()


def parse_measurement_record(record: bytes, count: int) -> list[MeasurementBlock]:
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(record):
            raise DecodeError("measurement block truncated")
        try:
            block, pos = MEASUREMENT_BLOCK.unpack_from(record, pos)
        except DecodeError:
            raise DecodeError(f"measurement block {record[pos]} malformed") from None
        if block.measurement_specification != 0x01 or block.measurement_size < 3:
            raise DecodeError(f"measurement block {block.index} malformed")
        dmtf, used = DMTF_MEASUREMENT.unpack_partial(block.measurement)
        if used != block.measurement_size:
            raise DecodeError(f"measurement block {block.index}: value size "
                              f"{dmtf.dmtf_spec_measurement_value_size} vs "
                              f"{block.measurement_size - 3}")
        vtype = dmtf.dmtf_spec_measurement_value_type
        out.append(MeasurementBlock(block.index, vtype & 0x7F,
                                    dmtf.dmtf_spec_measurement_value, bool(vtype & 0x80)))
    if pos != len(record):
        raise DecodeError("bytes after the last measurement block")
    return out


# -- sessions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class KEY_EXCHANGE(SpdmMessage):
    CODE: ClassVar[int] = KEY_EXCHANGE_CODE
    req_session_id: int = u16()
    session_policy: int = u8()
    reserved: int = u8()
    random_data: bytes = raw(RANDOM_DATA_SIZE)
    exchange_data: bytes = raw("D")
    opaque_length: int = u16()
    opaque_data: bytes = counted("opaque_length")


@dataclass(frozen=True)
class KEY_EXCHANGE_RSP(SpdmMessage):
    CODE: ClassVar[int] = KEY_EXCHANGE_RSP_CODE
    rsp_session_id: int = u16()
    mut_auth_requested: int = u8()
    req_slot_id_param: int = u8()
    random_data: bytes = raw(RANDOM_DATA_SIZE)
    exchange_data: bytes = raw("D")
    measurement_summary_hash: bytes = raw("MS")
    opaque_length: int = u16()
    opaque_data: bytes = counted("opaque_length")
    signature: bytes = raw("S")
    responder_verify_data: bytes = raw("H", when=lambda v, s: s.responder_verify)


@dataclass(frozen=True)
class FINISH(SpdmMessage):
    CODE: ClassVar[int] = FINISH_CODE
    signature: bytes = raw("S", when=lambda v, s: bool(v["param1"] & 1))
    requester_verify_data: bytes = raw("H")


@dataclass(frozen=True)
class FINISH_RSP(SpdmMessage):
    CODE: ClassVar[int] = FINISH_RSP_CODE
    responder_verify_data: bytes = raw("H", when=lambda v, s: not s.responder_verify)


@dataclass(frozen=True)
class HEARTBEAT(SpdmMessage):
    CODE: ClassVar[int] = HEARTBEAT_CODE


@dataclass(frozen=True)
class HEARTBEAT_ACK(SpdmMessage):
    CODE: ClassVar[int] = HEARTBEAT_ACK_CODE


@dataclass(frozen=True)
class KEY_UPDATE(SpdmMessage):
    CODE: ClassVar[int] = KEY_UPDATE_CODE


@dataclass(frozen=True)
class KEY_UPDATE_ACK(SpdmMessage):
    CODE: ClassVar[int] = KEY_UPDATE_ACK_CODE


@dataclass(frozen=True)
class END_SESSION(SpdmMessage):
    CODE: ClassVar[int] = END_SESSION_CODE


@dataclass(frozen=True)
class END_SESSION_ACK(SpdmMessage):
    CODE: ClassVar[int] = END_SESSION_ACK_CODE


# -- encapsulated requests (DSP0274 1.2 §10.23): the Responder asks the Requester ------------
ENCAP_PAYLOAD_ABSENT = 0
ENCAP_PAYLOAD_PRESENT = 1
ENCAP_PAYLOAD_REQ_SLOT_NUMBER = 2


@dataclass(frozen=True)
class GET_ENCAPSULATED_REQUEST(SpdmMessage):
    CODE: ClassVar[int] = GET_ENCAPSULATED_REQUEST_CODE


@dataclass(frozen=True)
class ENCAPSULATED_REQUEST(SpdmMessage):
    CODE: ClassVar[int] = ENCAPSULATED_REQUEST_CODE   # Param1 = RequestID
    encapsulated_request: bytes = tail()


@dataclass(frozen=True)
class DELIVER_ENCAPSULATED_RESPONSE(SpdmMessage):
    CODE: ClassVar[int] = DELIVER_ENCAPSULATED_RESPONSE_CODE   # Param1 = RequestID
    encapsulated_response: bytes = tail()


@dataclass(frozen=True)
class ENCAPSULATED_RESPONSE_ACK(SpdmMessage):
    CODE: ClassVar[int] = ENCAPSULATED_RESPONSE_ACK_CODE  # Param1 = RequestID, Param2 = PayloadType
    ack_request_id: int = u8(since=V12)
    reserved: bytes = raw(3, since=V12)
    encapsulated_request: bytes = tail()


# -- vendor-defined, errors, chunking -------------------------------------------------------
@dataclass(frozen=True)
class VENDOR_DEFINED_REQUEST(SpdmMessage):
    CODE: ClassVar[int] = VENDOR_DEFINED_REQUEST_CODE
    standard_id: int = u16()
    len: int = u8()
    vendor_id: bytes = counted("len")
    req_length: int = u16()
    vendor_defined_req_payload: bytes = counted("req_length")


@dataclass(frozen=True)
class VENDOR_DEFINED_RESPONSE(SpdmMessage):
    CODE: ClassVar[int] = VENDOR_DEFINED_RESPONSE_CODE
    standard_id: int = u16()
    len: int = u8()
    vendor_id: bytes = counted("len")
    resp_length: int = u16()
    vendor_defined_resp_payload: bytes = counted("resp_length")


@dataclass(frozen=True)
class ERROR(SpdmMessage):
    CODE: ClassVar[int] = ERROR_CODE
    extended_error_data: bytes = tail()


@dataclass(frozen=True)
class RESPOND_IF_READY(SpdmMessage):
    CODE: ClassVar[int] = RESPOND_IF_READY_CODE


@dataclass(frozen=True)
class CHUNK_SEND(SpdmMessage):
    CODE: ClassVar[int] = CHUNK_SEND_CODE
    chunk_seq_no: int = u16()
    reserved: int = u16()
    chunk_size: int = u32()
    large_message_size: int = u32(when=_first_chunk)
    spdm_chunk: bytes = counted("chunk_size")


@dataclass(frozen=True)
class CHUNK_SEND_ACK(SpdmMessage):
    CODE: ClassVar[int] = CHUNK_SEND_ACK_CODE
    chunk_seq_no: int = u16()
    response_to_large_request: bytes = tail()


@dataclass(frozen=True)
class CHUNK_GET(SpdmMessage):
    CODE: ClassVar[int] = CHUNK_GET_CODE
    chunk_seq_no: int = u16()


@dataclass(frozen=True)
class CHUNK_RESPONSE(SpdmMessage):
    CODE: ClassVar[int] = CHUNK_RESPONSE_CODE
    chunk_seq_no: int = u16()
    reserved: int = u16()
    chunk_size: int = u32()
    large_message_size: int = u32(when=_first_chunk)
    response_chunk: bytes = counted("chunk_size")


REQUESTS: dict[int, type[SpdmMessage]] = {
    cls.CODE: cls for cls in (
        GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS, GET_DIGESTS, GET_CERTIFICATE,
        CHALLENGE, GET_MEASUREMENTS, KEY_EXCHANGE, FINISH, HEARTBEAT, KEY_UPDATE, END_SESSION,
        VENDOR_DEFINED_REQUEST, RESPOND_IF_READY, CHUNK_SEND, CHUNK_GET,
        GET_ENCAPSULATED_REQUEST, DELIVER_ENCAPSULATED_RESPONSE)
}
RESPONSES: dict[int, type[SpdmMessage]] = {
    cls.CODE: cls for cls in (
        VERSION, CAPABILITIES, ALGORITHMS, DIGESTS, CERTIFICATE, CHALLENGE_AUTH, MEASUREMENTS,
        KEY_EXCHANGE_RSP, FINISH_RSP, HEARTBEAT_ACK, KEY_UPDATE_ACK, END_SESSION_ACK,
        VENDOR_DEFINED_RESPONSE, ERROR, CHUNK_SEND_ACK, CHUNK_RESPONSE,
        ENCAPSULATED_REQUEST, ENCAPSULATED_RESPONSE_ACK)
}


def request_name(code: int) -> str:
    cls = REQUESTS.get(code) or RESPONSES.get(code)
    return cls.__name__ if cls else f"0x{code:02x}"
