"""Read a DOE capture (``serve --pcap``): every object, named as the specs name it.

``vfiouser-tdisp dump CAPTURE [--keys KEYS]`` prints one line per DOE object
of a LINKTYPE_PCI_DOE (292) pcap file:

* DOE Discovery (PCIe r6.x §6.30.1.1): requested index, announced protocol;
* SPDM (DSP0274) messages by their request/response names, with the fields
  that decide a flow: versions, capability flags, offered and selected
  algorithms (named as DSP0274's NEGOTIATE_ALGORITHMS tables name them),
  certificate portions, measurement operations, session ids, KEY_UPDATE
  operations, ERROR codes, chunk numbers;
* PCI-SIG vendor-defined payloads inside them: IDE_KM objects (PCIe r6.x
  §6.33.4: QUERY ... K_GOSTOP_ACK, with stream, key set, direction and
  sub-stream, never the key) and TDISP messages (PCIe r6.x §11.3:
  GET_TDISP_VERSION ... TDISP_ERROR, with the interface's function id);
* secured records (DSP0277 over DOE type 2) by session id; with the key log
  of ``--pcap-keys`` they are opened and the SPDM message inside is decoded
  like a plain one.

LINKTYPE_PCI_DOE carries no direction.  As DMTF spdm-dump does, a plain SPDM
message's direction comes from its code (requests have bit 7 set); an
opened secured record's from the key that opened it; anything else (DOE
Discovery, records without keys) from the mailbox rule that a response
follows each request.

The decoder tracks what the negotiation fixed (version, hash, signature and
DHE sizes from ALGORITHMS) so sized fields decode as a peer would decode
them.  A malformed object is reported on its line; decoding goes on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..doe.capture import LINKTYPE_MCTP, LINKTYPE_PCI_DOE, PcapFile, read_pcap_file
from ..doe.protocols import (
    PCI_DOE_FEATURE_CMA,
    PCI_DOE_FEATURE_DISCOVERY,
    PCI_DOE_FEATURE_SSESSION,
    PCI_SIG_VENDOR_ID,
    DiscoveryRequest,
    DiscoveryResponse,
    DoeHeader,
)
from ..ide import km
from ..spdm import messages as m
from ..spdm.keylog import decrypt_capture, dhe_secrets, load_keylog
from ..spdm.session import SecuredRecordHeader
from ..tdisp import messages as t
from ..wire import DecodeError

# -- names the specifications give --------------------------------------------------------
# DSP0274 NEGOTIATE_ALGORITHMS / ALGORITHMS: bit -> name.
BASE_HASH_ALGO = {0: "TPM_ALG_SHA_256", 1: "TPM_ALG_SHA_384", 2: "TPM_ALG_SHA_512",
                  3: "TPM_ALG_SHA3_256", 4: "TPM_ALG_SHA3_384", 5: "TPM_ALG_SHA3_512",
                  6: "TPM_ALG_SM3_256"}
MEASUREMENT_HASH_ALGO = {0: "Raw Bit Stream Only", 1: "TPM_ALG_SHA_256", 2: "TPM_ALG_SHA_384",
                         3: "TPM_ALG_SHA_512", 4: "TPM_ALG_SHA3_256", 5: "TPM_ALG_SHA3_384",
                         6: "TPM_ALG_SHA3_512", 7: "TPM_ALG_SM3_256"}
BASE_ASYM_ALGO = {0: "TPM_ALG_RSASSA_2048", 1: "TPM_ALG_RSAPSS_2048", 2: "TPM_ALG_RSASSA_3072",
                  3: "TPM_ALG_RSAPSS_3072", 4: "TPM_ALG_ECDSA_ECC_NIST_P256",
                  5: "TPM_ALG_RSASSA_4096", 6: "TPM_ALG_RSAPSS_4096",
                  7: "TPM_ALG_ECDSA_ECC_NIST_P384", 8: "TPM_ALG_ECDSA_ECC_NIST_P521",
                  9: "TPM_ALG_SM2_ECC_SM2_P256", 10: "EdDSA ed25519", 11: "EdDSA ed448"}
DHE_NAMED_GROUP = {0: "ffdhe2048", 1: "ffdhe3072", 2: "ffdhe4096", 3: "secp256r1",
                   4: "secp384r1", 5: "secp521r1", 6: "SM2_P256"}
AEAD_CIPHER_SUITE = {0: "AES-128-GCM", 1: "AES-256-GCM", 2: "CHACHA20_POLY1305",
                     3: "AEAD_SM4_GCM"}
KEY_SCHEDULE = {0: "SPDM Key Schedule"}
# AlgType of an AlgStruct -> its table and the field name used here.
ALG_STRUCTS: dict[int, tuple[str, dict[int, str]]] = {
    m.ALG_TYPE_DHE: ("dhe", DHE_NAMED_GROUP),
    m.ALG_TYPE_AEAD: ("aead", AEAD_CIPHER_SUITE),
    m.ALG_TYPE_REQ_BASE_ASYM: ("req_base_asym", BASE_ASYM_ALGO),
    m.ALG_TYPE_KEY_SCHEDULE: ("key_schedule", KEY_SCHEDULE),
}
# Sizes a decoder needs once ALGORITHMS selected them (DSP0274: H, S, D).
HASH_SIZE = {0: 32, 1: 48, 2: 64, 3: 32, 4: 48, 5: 64, 6: 32}
SIGNATURE_SIZE = {0: 256, 1: 256, 2: 384, 3: 384, 4: 64, 5: 512, 6: 512, 7: 96, 8: 132,
                  9: 64, 10: 64, 11: 114}
DHE_SIZE = {0: 256, 1: 384, 2: 512, 3: 64, 4: 96, 5: 132, 6: 64}
KEY_UPDATE_OPERATION = {m.KEY_UPDATE_UPDATE_KEY: "UpdateKey",
                        m.KEY_UPDATE_UPDATE_ALL_KEYS: "UpdateAllKeys",
                        m.KEY_UPDATE_VERIFY_NEW_KEY: "VerifyNewKey"}
SUMMARY_HASH_TYPE = {m.SUMMARY_HASH_NONE: "none", m.SUMMARY_HASH_TCB: "TCB",
                     m.SUMMARY_HASH_ALL: "all"}
DOE_PROTOCOL = {PCI_DOE_FEATURE_DISCOVERY: "DOE Discovery", PCI_DOE_FEATURE_CMA: "CMA/SPDM",
                PCI_DOE_FEATURE_SSESSION: "Secured CMA/SPDM"}
PCI_PROTOCOL_ID = {t.PCI_PROTOCOL_ID_IDE_KM: "IDE_KM", t.PCI_PROTOCOL_ID_TDISP: "TDISP"}


def _bits(value: int, table: dict[int, str]) -> list[str]:
    return [table.get(b, f"bit{b}") for b in range(32) if value >> b & 1]


def _version(v: int) -> str:
    return f"{v >> 4}.{v & 0xF}"


# DSP0274 GET_CAPABILITIES / CAPABILITIES Flags that are 2-bit fields: (shift,
# name, value -> meaning).  MEAS_CAP, PSK_CAP (1.1), EP_INFO_CAP and
# MULTI_KEY_CAP (1.3); the value 3 is reserved in each.
CAP_FIELDS: tuple[tuple[int, str, dict[int, str]], ...] = (
    (3, "MEAS_CAP", {1: "NO_SIG", 2: "SIG"}),
    (10, "PSK_CAP", {1: "PSK", 2: "PSK_WITH_CONTEXT"}),
    (22, "EP_INFO_CAP", {1: "NO_SIG", 2: "SIG"}),
    (26, "MULTI_KEY_CAP", {1: "ONLY", 2: "NEG"}),
)


def _cap_flags(flags: int) -> list[str]:
    names = {v: k for k, v in vars(m.CapFlags).items()
             if k.endswith("_CAP") and isinstance(v, int)}
    wide = 0
    for shift, _name, _values in CAP_FIELDS:
        wide |= 3 << shift
    out = [names.get(1 << b, f"bit{b}") for b in range(32)
           if flags >> b & 1 and not wide & (1 << b)]
    for shift, name, values in CAP_FIELDS:
        value = (flags >> shift) & 3
        if value:
            out.append(f"{name}={values.get(value, value)}")
    return out


# -- what one object decodes to -------------------------------------------------------------
REQUEST, RESPONSE, UNKNOWN = "request", "response", "?"


@dataclass
class Decoded:
    index: int                 # 1-based record number, as spdm-dump counts
    time: float                # seconds since the first record
    direction: str             # "request" | "response" | "?"
    protocol: str              # "DOE Discovery" | "SPDM" | "Secured SPDM" | ...
    name: str                  # message name as the spec writes it
    session_id: int | None = None
    version: str | None = None  # SPDM version of the message
    fields: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.session_id is not None:
            out["session_id"] = f"{self.session_id:#010x}"
        return out

    def render(self) -> str:
        arrow = {REQUEST: "REQ->RSP", RESPONSE: "RSP->REQ"}.get(self.direction, "(?)->(?)")
        where = self.protocol
        if self.session_id is not None:
            where += f"({self.session_id:#010x})"
        if self.version:
            where += f" SPDM {self.version}"
        parts = [f"{self.index:>5}", f"{self.time:10.6f}", arrow, where, self.name]
        for key, value in self.fields.items():
            if isinstance(value, list):
                value = ",".join(str(v) for v in value) or "-"
            parts.append(f"{key}={value}")
        if self.note:
            parts.append(f"[{self.note}]")
        return " ".join(parts)


@dataclass
class _Negotiated:
    version: int = m.V10
    hash_bit: int | None = None
    asym_bit: int | None = None
    dhe_bit: int | None = None
    requester_flags: int = 0   # GET_CAPABILITIES Flags
    responder_flags: int = 0   # CAPABILITIES Flags

    @property
    def in_the_clear(self) -> bool:
        """HANDSHAKE_IN_THE_CLEAR_CAP on both sides (DSP0274 1.1+): KEY_EXCHANGE_RSP
        has no ResponderVerifyData, FINISH/FINISH_RSP travel in the clear and
        FINISH_RSP carries ResponderVerifyData."""
        return self.version >= m.V11 and bool(
            self.requester_flags & self.responder_flags &
            m.CapFlags.HANDSHAKE_IN_THE_CLEAR_CAP)

    def sizes(self, **kw: Any) -> m.Sizes:
        return m.Sizes(version=self.version,
                       hash=HASH_SIZE.get(self.hash_bit, 0) if self.hash_bit is not None else 0,
                       signature=SIGNATURE_SIZE.get(self.asym_bit, 0)
                       if self.asym_bit is not None else 0,
                       dhe=DHE_SIZE.get(self.dhe_bit, 0) if self.dhe_bit is not None else 0,
                       **kw)


class CaptureDecoder:
    """Decodes the objects of one capture in order (state: negotiation, last request)."""

    def __init__(self) -> None:
        self.neg = _Negotiated()
        # per channel: a session id, None (plain), or ("encap", session) for the
        # Responder's encapsulated requests, which pair with their own responses.
        self.last_request: dict[Any, bytes] = {}
        # Large messages being reassembled from CHUNK_SEND / CHUNK_RESPONSE, per
        # session and direction (DSP0274 1.2+ chunking).
        self.chunks: dict[tuple[int | None, str], bytearray] = {}
        self.session: Any = None  # the channel of the message being decoded

    # -- SPDM -------------------------------------------------------------------------------
    def spdm(self, msg: bytes, session: Any) -> tuple[str, str, str | None,
                                                        dict[str, Any], str]:
        """(direction, name, version, fields, note) of one SPDM message."""
        if len(msg) < 4:
            return UNKNOWN, "(short SPDM message)", None, {"bytes": len(msg)}, "malformed"
        version, code = msg[0], msg[1]
        direction = REQUEST if code & 0x80 else RESPONSE
        cls = (m.REQUESTS if direction == REQUEST else m.RESPONSES).get(code)
        name = cls.__name__ if cls else f"code {code:#04x}"
        fields: dict[str, Any] = {}
        note = ""
        request = self.last_request.get(session, b"") if direction == RESPONSE else msg
        self.session = session
        try:
            handler = _SPDM_FIELDS.get(code)
            if handler is not None:
                handler(self, msg, request, fields)
        except (DecodeError, ValueError, KeyError, IndexError) as exc:
            note = f"malformed: {exc}"
        if direction == REQUEST and code not in (m.CHUNK_GET_CODE, m.CHUNK_SEND_CODE):
            # The request a response answers; chunk transfers only carry it.
            self.last_request[session] = msg
        return direction, name, _version(version), fields, note


def _f_version(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    rsp = m.VERSION.unpack_partial(msg)[0]
    f["versions"] = [_version(v) for v in rsp.versions]


def _f_get_capabilities(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    d.neg.version = msg[0]
    d.neg.requester_flags = d.neg.responder_flags = 0
    if msg[0] < m.V11:
        return
    r = m.GET_CAPABILITIES.unpack_partial(msg)[0]
    d.neg.requester_flags = r.flags
    _caps_fields(r, msg[0], f)


def _f_capabilities(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    r = m.CAPABILITIES.unpack_partial(msg)[0]
    d.neg.responder_flags = r.flags
    _caps_fields(r, msg[0], f)


def _caps_fields(r: Any, version: int, f: dict[str, Any]) -> None:
    f["ct_exponent"] = r.ct_exponent
    f["flags"] = _cap_flags(r.flags)
    if version >= m.V12:
        f["data_transfer_size"] = r.data_transfer_size
        f["max_spdm_msg_size"] = r.max_spdm_msg_size


def _alg_structs(raw: bytes, count: int, f: dict[str, Any]) -> None:
    for s in m.parse_alg_structs(raw, count):
        key, table = ALG_STRUCTS.get(s.alg_type, (f"alg_type_{s.alg_type}", {}))
        f[key] = _bits(s.alg_supported, table)


def _f_negotiate(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    r = m.NEGOTIATE_ALGORITHMS.unpack_partial(msg)[0]
    f["base_asym_algo"] = _bits(r.base_asym_algo, BASE_ASYM_ALGO)
    f["base_hash_algo"] = _bits(r.base_hash_algo, BASE_HASH_ALGO)
    _alg_structs(r.req_alg_struct, r.param1, f)


def _f_algorithms(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    r = m.ALGORITHMS.unpack_partial(msg)[0]
    f["measurement_hash_algo"] = _bits(r.measurement_hash_algo, MEASUREMENT_HASH_ALGO)
    f["base_asym_sel"] = _bits(r.base_asym_sel, BASE_ASYM_ALGO)
    f["base_hash_sel"] = _bits(r.base_hash_sel, BASE_HASH_ALGO)
    _alg_structs(r.resp_alg_struct, r.param1, f)
    d.neg.version = msg[0]
    d.neg.hash_bit = r.base_hash_sel.bit_length() - 1 if r.base_hash_sel else None
    d.neg.asym_bit = r.base_asym_sel.bit_length() - 1 if r.base_asym_sel else None
    for s in m.parse_alg_structs(r.resp_alg_struct, r.param1):
        if s.alg_type == m.ALG_TYPE_DHE and s.alg_supported:
            d.neg.dhe_bit = s.alg_supported.bit_length() - 1


def _f_digests(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    f["slot_mask"] = f"{msg[3]:#04x}"


def _f_get_certificate(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    r = m.GET_CERTIFICATE.unpack(msg, exact=False)
    f.update(slot=r.param1 & 0xF, offset=r.offset, length=r.length)


def _f_certificate(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    r = m.CERTIFICATE.unpack_partial(msg)[0]
    f.update(slot=r.param1 & 0xF, portion_length=r.portion_length,
             remainder_length=r.remainder_length)


def _f_challenge(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    f.update(slot=msg[2], measurement_summary_hash=SUMMARY_HASH_TYPE.get(msg[3], msg[3]))


def _f_get_measurements(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    op = msg[3]
    f["operation"] = {m.MEAS_OPERATION_TOTAL_NUMBER: "total number",
                      m.MEAS_OPERATION_ALL: "all"}.get(op, f"index {op}")
    f["signature_requested"] = bool(msg[2] & m.MEAS_ATTR_SIGNATURE_REQUESTED)


def _f_measurements(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    signed = len(req) > 2 and bool(req[2] & m.MEAS_ATTR_SIGNATURE_REQUESTED)
    r = m.MEASUREMENTS.unpack_partial(msg, d.neg.sizes(signed=signed))[0]
    f["number_of_blocks"] = r.number_of_blocks
    if r.number_of_blocks:
        blocks = m.parse_measurement_record(r.measurement_record, r.number_of_blocks)
        f["indices"] = [b.index for b in blocks]
    else:
        f["total"] = r.param1
    f["signed"] = signed


def _f_key_exchange(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    r = m.KEY_EXCHANGE.unpack_partial(msg, d.neg.sizes())[0]
    f.update(measurement_summary_hash=SUMMARY_HASH_TYPE.get(r.param1, r.param1),
             slot=r.param2, req_session_id=f"{r.req_session_id:#06x}")


def _f_key_exchange_rsp(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    summary = len(req) > 2 and req[2] != m.SUMMARY_HASH_NONE
    clear = d.neg.in_the_clear
    r = m.KEY_EXCHANGE_RSP.unpack_partial(
        msg, d.neg.sizes(summary_hash=summary, responder_verify=not clear))[0]
    f.update(heartbeat_period=r.param1, rsp_session_id=f"{r.rsp_session_id:#06x}",
             mut_auth_requested=r.mut_auth_requested)
    if clear:
        f["handshake_in_the_clear"] = True
    if len(req) >= 6 and req[1] == m.KEY_EXCHANGE_CODE:
        req_sid = m.KEY_EXCHANGE.unpack_partial(req, d.neg.sizes())[0].req_session_id
        f["session_id"] = f"{req_sid | r.rsp_session_id << 16:#010x}"


def _f_finish(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    clear = d.neg.in_the_clear
    r = m.FINISH.unpack_partial(msg, d.neg.sizes(responder_verify=not clear))[0]
    f["signature_included"] = bool(r.param1 & 1)
    if clear:
        f["handshake_in_the_clear"] = True


def _f_finish_rsp(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    clear = d.neg.in_the_clear
    r = m.FINISH_RSP.unpack_partial(msg, d.neg.sizes(responder_verify=not clear))[0]
    if clear:
        f.update(handshake_in_the_clear=True,
                 responder_verify_data=len(r.responder_verify_data))


def _encap_inner(d: CaptureDecoder, inner: bytes, f: dict[str, Any]) -> None:
    """The message an encapsulated exchange carries (DSP0274 1.2 §10.23): the
    Responder's request to the Requester or the Requester's response; named and
    decoded on the carrier's line, paired on their own channel."""
    if not inner:
        return
    _dir, name, _version_text, fields, note = d.spdm(inner, ("encap", d.session))
    f["encapsulated"] = name
    f.update({k: v for k, v in fields.items() if k not in f})
    if note:
        f["encapsulated_note"] = note


def _f_encapsulated_request(d: CaptureDecoder, msg: bytes, req: bytes,
                            f: dict[str, Any]) -> None:
    session = d.session
    r = m.ENCAPSULATED_REQUEST.unpack_partial(msg)[0]
    f["request_id"] = r.param1
    _encap_inner(d, r.encapsulated_request, f)
    d.session = session


def _f_deliver_encapsulated(d: CaptureDecoder, msg: bytes, req: bytes,
                            f: dict[str, Any]) -> None:
    session = d.session
    r = m.DELIVER_ENCAPSULATED_RESPONSE.unpack_partial(msg)[0]
    f["request_id"] = r.param1
    _encap_inner(d, r.encapsulated_response, f)
    d.session = session


ENCAP_PAYLOAD_TYPE = {m.ENCAP_PAYLOAD_ABSENT: "absent", m.ENCAP_PAYLOAD_PRESENT: "present",
                      m.ENCAP_PAYLOAD_REQ_SLOT_NUMBER: "ReqSlotNumber"}


def _f_encapsulated_ack(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    session = d.session
    r = m.ENCAPSULATED_RESPONSE_ACK.unpack_partial(msg)[0]
    f["request_id"] = r.param1
    f["payload_type"] = ENCAP_PAYLOAD_TYPE.get(r.param2, r.param2)
    if msg[0] >= m.V12:
        f["ack_request_id"] = r.ack_request_id
    if r.param2 == m.ENCAP_PAYLOAD_PRESENT:
        _encap_inner(d, r.encapsulated_request, f)
    d.session = session


def _f_key_update(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    f.update(operation=KEY_UPDATE_OPERATION.get(msg[2], msg[2]), tag=msg[3])


def _f_end_session(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    f["preserve_negotiated_state"] = bool(msg[2] & 1)


def _f_error(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    f.update(error_code=m.SpdmErrorCode.name(msg[2]), error_data=f"{msg[3]:#04x}")


def _f_chunk(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    cls: Any = {m.CHUNK_SEND_CODE: m.CHUNK_SEND, m.CHUNK_RESPONSE_CODE: m.CHUNK_RESPONSE,
           m.CHUNK_GET_CODE: m.CHUNK_GET, m.CHUNK_SEND_ACK_CODE: m.CHUNK_SEND_ACK}[msg[1]]
    r: Any = cls.unpack_partial(msg)[0]
    f["chunk_seq_no"] = r.chunk_seq_no
    if not hasattr(r, "chunk_size"):
        if msg[1] == m.CHUNK_SEND_ACK_CODE and r.response_to_large_request:
            _inner(d, r.response_to_large_request, "response", f)
        return
    f["chunk_size"] = r.chunk_size
    last = bool(r.param1 & m.CHUNK_LAST)
    f["last"] = last
    if r.chunk_seq_no == 0:
        f["large_message_size"] = r.large_message_size
    direction = "request" if msg[1] == m.CHUNK_SEND_CODE else "response"
    key = (d.session, direction)
    if r.chunk_seq_no == 0:
        d.chunks[key] = bytearray()
    buf = d.chunks.get(key)
    if buf is None:
        return  # a capture that starts mid-transfer
    buf += r.spdm_chunk if direction == "request" else r.response_chunk
    if last:
        del d.chunks[key]
        _inner(d, bytes(buf), direction, f)


def _inner(d: CaptureDecoder, large: bytes, direction: str, f: dict[str, Any]) -> None:
    """Decode a reassembled large message; its name and fields join the chunk's line."""
    session = d.session
    _dir, name, _version_text, fields, note = d.spdm(large, session)
    f[f"large_{direction}"] = name
    f.update({f"{k}": v for k, v in fields.items() if k not in f})
    if note:
        f["large_note"] = note


def _f_vendor(d: CaptureDecoder, msg: bytes, req: bytes, f: dict[str, Any]) -> None:
    is_request = msg[1] == m.VENDOR_DEFINED_REQUEST_CODE
    if is_request:
        vreq = m.VENDOR_DEFINED_REQUEST.unpack_partial(msg)[0]
        standard, vendor, payload = vreq.standard_id, vreq.vendor_id, \
            vreq.vendor_defined_req_payload
    else:
        vrsp = m.VENDOR_DEFINED_RESPONSE.unpack_partial(msg)[0]
        standard, vendor, payload = vrsp.standard_id, vrsp.vendor_id, \
            vrsp.vendor_defined_resp_payload
    pci_sig = standard == m.REGISTRY_ID_PCISIG and \
        int.from_bytes(vendor, "little") == PCI_SIG_VENDOR_ID
    if not pci_sig or not payload:
        f.update(standard_id=standard, vendor_id=vendor.hex(), payload_length=len(payload))
        return
    protocol = payload[0]
    f["protocol"] = PCI_PROTOCOL_ID.get(protocol, f"{protocol:#04x}")
    body = payload[1:]
    if protocol == t.PCI_PROTOCOL_ID_TDISP:
        _tdisp_fields(body, is_request, f)
    elif protocol == t.PCI_PROTOCOL_ID_IDE_KM:
        _ide_km_fields(body, f)


def _tdisp_fields(body: bytes, is_request: bool, f: dict[str, Any]) -> None:
    header, _ = t.TdispHeader.unpack_from(body)
    table: Any = t.TdispRequest if is_request else t.TdispResponse
    try:
        f["message"] = table(header.message_type).name
    except ValueError:
        f["message"] = f"{header.message_type:#04x}"
    f["tdisp_version"] = _version(header.version)
    f["function_id"] = f"{header.function_id:#x}"
    try:
        msg: Any = (t.decode_request if is_request else t.decode_response)(body)
    except DecodeError:
        return
    if isinstance(msg, t.TDISP_ERROR):
        try:
            f["error_code"] = t.TdispErrorCode(msg.error_code).name
        except ValueError:
            f["error_code"] = f"{msg.error_code:#x}"
    elif isinstance(msg, t.DEVICE_INTERFACE_STATE):
        try:
            f["tdi_state"] = t.TdiState(msg.tdi_state).name
        except ValueError:
            f["tdi_state"] = msg.tdi_state


def _ide_km_fields(body: bytes, f: dict[str, Any]) -> None:
    if not body:
        raise DecodeError("IDE_KM object without object_id")
    try:
        obj = km.IdeKmObject(body[0])
    except ValueError:
        f["message"] = f"{body[0]:#04x}"
        return
    f["message"] = obj.name
    if obj in (km.IdeKmObject.QUERY,):
        f["port_index"] = km.QUERY.unpack_from(body)[0].port_index
    elif obj is km.IdeKmObject.QUERY_RESP:
        q = km.QUERY_RESP.unpack_from(body)[0]
        f.update(port_index=q.port_index, bus=q.bus_num, dev_func=q.dev_func_num,
                 segment=q.segment, max_port_index=q.max_port_index)
    else:
        layout: Any = {km.IdeKmObject.KEY_PROG: km.KEY_PROG,
                       km.IdeKmObject.KP_ACK: km.KP_ACK}.get(obj, km.K_SET)
        k = layout.unpack_from(body)[0]
        key_set, direction, sub = km.split_key_sub_stream(k.key_sub_stream)
        # KEY_PROG's key and IV stay out of the output: they are the stream's secrets.
        f.update(stream_id=k.stream_id, key_set=f"K{key_set}", direction=direction.name,
                 substream=sub.name, port_index=k.port_index)
        if obj is km.IdeKmObject.KP_ACK:
            try:
                f["status"] = km.KpAckStatus(k.status).name
            except ValueError:
                f["status"] = k.status


_SPDM_FIELDS: dict[int, Callable[[CaptureDecoder, bytes, bytes, dict[str, Any]], None]] = {
    m.VERSION_CODE: _f_version,
    m.GET_CAPABILITIES_CODE: _f_get_capabilities,
    m.CAPABILITIES_CODE: _f_capabilities,
    m.NEGOTIATE_ALGORITHMS_CODE: _f_negotiate,
    m.ALGORITHMS_CODE: _f_algorithms,
    m.DIGESTS_CODE: _f_digests,
    m.GET_CERTIFICATE_CODE: _f_get_certificate,
    m.CERTIFICATE_CODE: _f_certificate,
    m.CHALLENGE_CODE: _f_challenge,
    m.GET_MEASUREMENTS_CODE: _f_get_measurements,
    m.MEASUREMENTS_CODE: _f_measurements,
    m.KEY_EXCHANGE_CODE: _f_key_exchange,
    m.KEY_EXCHANGE_RSP_CODE: _f_key_exchange_rsp,
    m.FINISH_CODE: _f_finish,
    m.FINISH_RSP_CODE: _f_finish_rsp,
    m.ENCAPSULATED_REQUEST_CODE: _f_encapsulated_request,
    m.DELIVER_ENCAPSULATED_RESPONSE_CODE: _f_deliver_encapsulated,
    m.ENCAPSULATED_RESPONSE_ACK_CODE: _f_encapsulated_ack,
    m.KEY_UPDATE_CODE: _f_key_update,
    m.KEY_UPDATE_ACK_CODE: _f_key_update,
    m.END_SESSION_CODE: _f_end_session,
    m.ERROR_CODE: _f_error,
    m.CHUNK_SEND_CODE: _f_chunk,
    m.CHUNK_SEND_ACK_CODE: _f_chunk,
    m.CHUNK_GET_CODE: _f_chunk,
    m.CHUNK_RESPONSE_CODE: _f_chunk,
    m.VENDOR_DEFINED_REQUEST_CODE: _f_vendor,
    m.VENDOR_DEFINED_RESPONSE_CODE: _f_vendor,
}


# -- the capture ------------------------------------------------------------------------------
def _flip(direction: str) -> str:
    return RESPONSE if direction == REQUEST else REQUEST


def decode_capture(capture: PcapFile,
                   keylog: list[dict[str, Any]] | None = None) -> list[Decoded]:
    """Every record of ``capture`` decoded; secured records opened with ``keylog``."""
    packets = [r.data for r in capture.records]
    opened = {i: (direction, msg) for i, direction, msg in
              decrypt_capture(packets, keylog or [])}
    decoder = CaptureDecoder()
    out: list[Decoded] = []
    start = None
    last = RESPONSE  # so the first object without its own direction counts as a request
    for i, rec in enumerate(capture.records):
        ts = rec.ts_sec + rec.ts_usec / 1e6
        start = ts if start is None else start
        d = _decode_object(decoder, i, rec.data, opened.get(i), _flip(last))
        d.index, d.time = i + 1, ts - start
        if rec.truncated:
            d.note = (d.note + "; " if d.note else "") + \
                f"cut at SnapLen: {len(rec.data)} of {rec.orig_len} bytes"
        if d.direction != UNKNOWN:
            last = d.direction
        out.append(d)
    return out


def _decode_object(decoder: CaptureDecoder, i: int, data: bytes,
                   opened: tuple[str, bytes] | None, expected: str) -> Decoded:
    if len(data) < 8:
        return Decoded(0, 0.0, expected, "DOE", "(short object)", note="malformed")
    hdr = DoeHeader.unpack(data[:8])
    payload = data[8:hdr.length_dw * 4]
    note = "" if hdr.length_dw * 4 == len(data) else \
        f"DOE Length {hdr.length_dw} DW for {len(data)} bytes"
    if hdr.vendor_id != PCI_SIG_VENDOR_ID or hdr.data_object_type not in DOE_PROTOCOL:
        return Decoded(0, 0.0, expected, "DOE",
                       f"vendor {hdr.vendor_id:#06x} type {hdr.data_object_type}",
                       fields={"bytes": len(payload)}, note=note)
    if hdr.data_object_type == PCI_DOE_FEATURE_DISCOVERY:
        return _discovery(payload, expected, note)
    if hdr.data_object_type == PCI_DOE_FEATURE_CMA:
        direction, name, version, fields, spdm_note = decoder.spdm(payload, None)
        return Decoded(0, 0.0, direction, "SPDM", name, None, version, fields,
                       "; ".join(n for n in (note, spdm_note) if n))
    # Secured CMA/SPDM: SessionID (u32) | Length (u16) | encrypted data + MAC (DSP0277).
    if len(payload) < 6:
        return Decoded(0, 0.0, expected, "Secured SPDM", "(short record)", note="malformed")
    record, _ = SecuredRecordHeader.unpack_partial(payload)
    session_id, length = record.session_id, record.length
    if opened is None:
        return Decoded(0, 0.0, expected, "Secured SPDM", "(encrypted)", session_id,
                       fields={"length": length},
                       note="; ".join(n for n in (note, "not opened: no key") if n))
    key_direction, message = opened
    direction, name, version, fields, spdm_note = decoder.spdm(message, session_id)
    if direction != key_direction:
        spdm_note = (spdm_note + "; " if spdm_note else "") + \
            f"{direction} code under the {key_direction} key"
    return Decoded(0, 0.0, key_direction, "Secured SPDM", name, session_id, version, fields,
                   "; ".join(n for n in (note, spdm_note) if n))


def _discovery(payload: bytes, expected: str, note: str) -> Decoded:
    if len(payload) < 4:
        return Decoded(0, 0.0, expected, "DOE Discovery", "(short)", note="malformed")
    if expected == REQUEST:
        q = DiscoveryRequest.unpack(payload[:4])
        return Decoded(0, 0.0, REQUEST, "DOE Discovery", "DISCOVERY request",
                       fields={"index": q.index, "version": q.version}, note=note)
    r = DiscoveryResponse.unpack(payload[:4])
    proto = DOE_PROTOCOL.get(r.data_object_protocol, f"type {r.data_object_protocol}") \
        if r.vendor_id == PCI_SIG_VENDOR_ID else f"type {r.data_object_protocol}"
    return Decoded(0, 0.0, RESPONSE, "DOE Discovery", "DISCOVERY response",
                   fields={"vendor_id": f"{r.vendor_id:#06x}", "protocol": proto,
                           "next_index": r.next_index}, note=note)


def sessions_summary(decoded: list[Decoded]) -> dict[int, dict[str, int]]:
    """Per session id: secured records per direction, and how many were opened."""
    out: dict[int, dict[str, int]] = {}
    for d in decoded:
        if d.protocol != "Secured SPDM" or d.session_id is None:
            continue
        s = out.setdefault(d.session_id, {"request": 0, "response": 0, "unknown": 0,
                                          "opened": 0})
        s[d.direction if d.direction != UNKNOWN else "unknown"] += 1
        s["opened"] += d.name != "(encrypted)"
    return out


def session_order(decoded: list[Decoded]) -> list[int]:
    """Session ids in the order their KEY_EXCHANGE_RSP appears in the capture."""
    return [int(d.fields["session_id"], 16) for d in decoded
            if (d.name == "KEY_EXCHANGE_RSP" or d.fields.get("large_response") ==
                "KEY_EXCHANGE_RSP") and "session_id" in d.fields]


def spdm_dump_command(capture: str, decoded: list[Decoded],
                      keylog: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """The DMTF spdm-dump command line that opens this capture's sessions, and the
    sessions the key log has no secret for.

    spdm-dump gives the n-th ``--dhe_secret`` to the n-th KEY_EXCHANGE_RSP of the
    capture, so the secrets follow the capture's order; a key log appended to over
    several runs may hold more (the last one logged for a session id wins).
    """
    secrets = dict(dhe_secrets(keylog))
    argv, missing = ["spdm_dump", "-r", capture], []
    for sid in session_order(decoded):
        if sid in secrets:
            argv += ["--dhe_secret", secrets[sid]]
        else:
            missing.append(sid)
    return argv, missing


def main_dump(args: Any) -> int:
    """``vfiouser-tdisp dump``."""
    try:
        capture = read_pcap_file(args.capture)
        keylog = load_keylog(Path(args.keys).read_text()) if args.keys else None
    except (OSError, ValueError) as exc:
        print(f"vfiouser-tdisp dump: {exc}", file=sys.stderr)
        return 2
    if capture.linktype != LINKTYPE_PCI_DOE:
        what = " (LINKTYPE_MCTP)" if capture.linktype == LINKTYPE_MCTP else ""
        print(f"vfiouser-tdisp dump: {args.capture}: link type {capture.linktype}{what}, "
              f"expected {LINKTYPE_PCI_DOE} (LINKTYPE_PCI_DOE)", file=sys.stderr)
        return 2
    decoded = decode_capture(capture, keylog)
    if args.spdm_dump:
        import shlex

        argv, missing = spdm_dump_command(args.capture, decoded, keylog or [])
        if missing:
            print("vfiouser-tdisp dump: no dhe_secret for session(s) "
                  f"{', '.join(f'{sid:#010x}' for sid in missing)}; spdm_dump gives the n-th "
                  "--dhe_secret to the n-th session, so it cannot open the ones after",
                  file=sys.stderr)
            return 1
        print(shlex.join(argv))
        return 0
    if args.json:
        for d in decoded:
            print(json.dumps(d.to_json(), sort_keys=True))
        return 0
    print(f"{args.capture}: LINKTYPE_PCI_DOE ({capture.linktype}), SnapLen {capture.snaplen}, "
          f"{len(decoded)} objects" + ("" if keylog is not None else
                                       "; no key log: secured records stay closed"))
    for d in decoded:
        print(d.render())
    for sid, s in sessions_summary(decoded).items():
        print(f"session {sid:#010x}: {s['request']} requests, {s['response']} responses, "
              f"{s['unknown']} of unknown direction; {s['opened']} opened")
    return 0
