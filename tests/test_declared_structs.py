"""The structures declared on the shared codec in place of hand-packed bytes,
and the capture printer's decoding of DSP0274 1.3 capability fields,
encapsulated requests and HANDSHAKE_IN_THE_CLEAR.

Every expected byte string is written out from the specification's tables
(clause named next to it), never produced by our requester or responder.
"""

from __future__ import annotations

import hashlib
import io
import struct

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from vfiouser_tdisp.doe.capture import (
    PcapGlobalHeader,
    PcapRecordHeader,
    PcapWriter,
    parse_pcap,
)
from vfiouser_tdisp.doe.protocols import build_object
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.inspect.capture import (
    CaptureDecoder,
    _cap_flags,
    decode_capture,
    session_order,
    spdm_dump_command,
)
from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.spdm.session import (
    BinConcat,
    GeneralOpaqueData,
    OpaqueElement,
    SecuredPlaintext,
    SecuredRecordHeader,
    SmSupportedVersionList,
    SmVersionSelection,
    SpdmOpaqueDataV1,
    bin_concat,
    build_opaque,
    parse_secured_version_list,
    parse_secured_version_selection,
)
from vfiouser_tdisp.wire import DecodeError, Struct, pad, u8

from .spdm_support import identity

# -- DSP0274 §12 key schedule: BinConcat ------------------------------------------------------


def test_bin_concat_bytes() -> None:
    # BinConcat(Length = 48 as u16 LE, Version "spdm1.2 ", Label "key", Context none)
    assert bin_concat(0x12, 48, b"key") == b"\x30\x00" + b"spdm1.2 " + b"key"
    # with a context (TH1 for "req hs data"): Label then Context, no separator
    assert bin_concat(0x13, 0x20, b"req hs data", b"\xaa" * 4) == \
        b"\x20\x00spdm1.3 req hs data\xaa\xaa\xaa\xaa"
    assert BinConcat.unpack(b"\x0c\x00spdm1.1 iv").length == 12


# -- DSP0277 §6 secured message over PCI DOE --------------------------------------------------


def test_secured_record_header_and_plaintext_bytes() -> None:
    # SessionID 0xFFFE0001 (u32 LE), Length 0x0020 (u16 LE); no SequenceNumber on DOE
    assert SecuredRecordHeader(0xFFFE0001, 0x20).pack() == bytes.fromhex("0100feff2000")
    # ApplicationDataLength (u16 LE) then the SPDM message (HEARTBEAT 1.2), no RandomData
    assert SecuredPlaintext(application_data=b"\x12\xe8\x00\x00").pack() == \
        bytes.fromhex("0400" "12e80000")
    # RandomData after the message is not part of the application data
    p = SecuredPlaintext.unpack(bytes.fromhex("0200" "1268" "deadbeef"))
    assert (p.application_data, p.random_data) == (b"\x12\x68", bytes.fromhex("deadbeef"))
    with pytest.raises(DecodeError):   # ApplicationDataLength beyond the record
        SecuredPlaintext.unpack(bytes.fromhex("0500" "12e8"))


# -- DSP0274 1.2 general opaque data / DSP0277 secured-message version elements --------------

# OpaqueDataFmt1: TotalElements 1, Reserved 3; element ID 0 (DMTF), VendorLen 0,
# OpaqueElementDataLen 4; data = SMDataVersion 1, SMDataID 0 (selection),
# SelectedVersion 0x1100 (1.1 in bits 15:8) -> 12 bytes, already 4-byte aligned.
SELECTION_FMT1 = bytes.fromhex("01000000" "00000400" "01000011")
# Supported version list 1.0, 1.1, 1.2: SMDataVersion 1, SMDataID 1, VersionCount 3,
# VersionsList 0x1000 0x1100 0x1200 -> 9 bytes of data, then 3 bytes AlignPadding.
VERSION_LIST_DATA = bytes.fromhex("010103" "0010" "0011" "0012")
VERSION_LIST_FMT1 = bytes.fromhex("01000000" "00000900") + VERSION_LIST_DATA + bytes(3)
# SPDM 1.1 / DSP0277 1.0 form: SpecID 0x444D5446 ("DMTF" LE), OpaqueVersion 1,
# TotalElements 1, Reserved u16, then the same element.
SELECTION_FMT0 = bytes.fromhex("46544d44" "01010000" "00000400" "01000011")


def test_opaque_data_bytes() -> None:
    selection = SmVersionSelection(selected_version=0x1100).pack()
    assert selection == bytes.fromhex("01000011")
    assert build_opaque(selection, 2) == SELECTION_FMT1
    assert build_opaque(selection, 0) == SELECTION_FMT0
    assert build_opaque(selection, 1) == SELECTION_FMT0
    assert SmSupportedVersionList.of((0x10, 0x11, 0x12)).pack() == VERSION_LIST_DATA
    assert build_opaque(VERSION_LIST_DATA, 2) == VERSION_LIST_FMT1


def test_opaque_data_parsing() -> None:
    assert parse_secured_version_list(VERSION_LIST_FMT1, 2) == [0x10, 0x11, 0x12]
    assert parse_secured_version_selection(SELECTION_FMT1, 2) == 0x11
    assert parse_secured_version_selection(SELECTION_FMT0, 0) == 0x11
    table = GeneralOpaqueData.unpack(VERSION_LIST_FMT1)
    assert table.total_elements == 1
    assert table.opaque_list[0].align_padding == bytes(3)
    # A vendor element (ID 2 = PCI-SIG in DSP0274's registry table, VendorLen 2,
    # VendorID 0x0001) before ours is skipped: 2+2+2+1 data bytes + 1 pad.
    vendor = bytes.fromhex("0202" "0100" "0100" "ab" "00")
    two = bytes.fromhex("02000000") + vendor + SELECTION_FMT1[4:]
    assert parse_secured_version_selection(two, 2) == 0x11
    # Wrong SpecID, a missing AlignPadding, a count beyond the data: malformed
    assert parse_secured_version_list(b"XXXX" + SELECTION_FMT0[4:], 0) is None
    assert parse_secured_version_list(VERSION_LIST_FMT1[:-3], 2) is None
    assert parse_secured_version_list(bytes.fromhex("02000000") + VERSION_LIST_FMT1[4:],
                                      2) is None
    assert SpdmOpaqueDataV1.unpack(SELECTION_FMT0).spec_id == 0x444D5446


def test_pad_field_rejects_wrong_padding() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Padded(Struct):
        a: int = u8()
        p: bytes = pad(4)

    assert Padded(7).pack() == b"\x07\x00\x00\x00"
    with pytest.raises(ValueError):
        Padded(7, b"\x00").pack()
    with pytest.raises(DecodeError):
        Padded.unpack(b"\x07\x00")
    element = OpaqueElement(opaque_element_data=b"\x01")
    assert element.pack() == bytes.fromhex("00000100" "01000000")


# -- DSP0274 certificate chain format, VERSION, ERROR extended data ---------------------------


def test_cert_chain_header_bytes() -> None:
    chain = m.CertChain(root_hash=b"\x11" * 32, certificates=b"\x30\x03\x02\x01\x00")
    # Length = 4 + 32 + 5 = 41 (u16 LE), Reserved 0, RootHash, certificates
    assert chain.pack(m.Sizes(hash=32)) == \
        bytes.fromhex("2900" "0000") + b"\x11" * 32 + bytes.fromhex("3003020100")
    slot = identity().slots["ecdsa-p256"]
    spdm = slot.spdm_chain("sha256")
    length, reserved = struct.unpack_from("<HH", spdm)
    assert (length, reserved) == (len(spdm), 0)
    assert spdm[4:36] == hashlib.sha256(slot.certs[0].public_bytes(Encoding.DER)).digest()
    with pytest.raises(DecodeError):
        m.CertChain.unpack(spdm + b"\x00", m.Sizes(hash=32))


def test_version_entries_bytes() -> None:
    # VERSION: 1.0 header, Reserved, VersionNumberEntryCount 2, entries 0x1200, 0x1300
    assert m.VERSION.build([0x12, 0x13]).pack() == bytes.fromhex("10040000" "0002" "0012"
                                                                   "0013")
    assert m.VERSION.unpack(bytes.fromhex("100400000003001000110012")).versions == \
        [0x10, 0x11, 0x12]


def test_error_extended_data_bytes() -> None:
    # DSP0274 1.2 ResponseTooLarge: ExtendedErrorData = the response size, u32 LE
    assert m.ResponseTooLargeData(0x1234).pack() == bytes.fromhex("34120000")
    # LargeResponse: ExtendedErrorData = Handle (u8)
    assert m.LargeResponseData(7).pack() == b"\x07"


# -- libpcap headers -------------------------------------------------------------------------


def test_pcap_header_structs() -> None:
    # magic a1b2c3d4, 2.4, thiszone 0, sigfigs 0, snaplen 65536, network 292 (PCI DOE)
    assert PcapGlobalHeader().pack() == bytes.fromhex(
        "d4c3b2a1" "0200" "0400" "00000000" "00000000" "00000100" "24010000")
    assert PcapRecordHeader(1, 2, 8, 8).pack() == bytes.fromhex(
        "01000000" "02000000" "08000000" "08000000")


# -- capture printer: DSP0274 1.3 two-bit capability fields (finding D1) ----------------------


def test_two_bit_capability_fields_are_named() -> None:
    # DMTF spdm_requester_emu's GET_CAPABILITIES Flags (SPDM 1.3): spdm_dump prints
    # EP_INFO_SIG and MULTI_KEY_NEG for bits 23 and 27.
    assert _cap_flags(0x0882F7C6) == [
        "CERT_CAP", "CHAL_CAP", "ENCRYPT_CAP", "MAC_CAP", "MUT_AUTH_CAP", "KEY_EX_CAP",
        "ENCAP_CAP", "HBEAT_CAP", "KEY_UPD_CAP", "HANDSHAKE_IN_THE_CLEAR_CAP", "CHUNK_CAP",
        "PSK_CAP=PSK", "EP_INFO_CAP=SIG", "MULTI_KEY_CAP=NEG"]
    # MEAS_CAP 01b, PSK_CAP 10b, EP_INFO_CAP 01b, MULTI_KEY_CAP 01b
    assert _cap_flags((1 << 3) | (2 << 10) | (1 << 22) | (1 << 26)) == [
        "MEAS_CAP=NO_SIG", "PSK_CAP=PSK_WITH_CONTEXT", "EP_INFO_CAP=NO_SIG",
        "MULTI_KEY_CAP=ONLY"]
    assert _cap_flags(3 << 26) == ["MULTI_KEY_CAP=3"]   # reserved value shown as is


# -- capture printer: encapsulated requests (finding D2) --------------------------------------


def test_encapsulated_messages_show_what_they_carry() -> None:
    d = CaptureDecoder()
    sid = 0xFFFE0001
    # DSP0274 1.3 §10.23: ENCAPSULATED_REQUEST Param1 = RequestID 1, carrying
    # KEY_UPDATE (E9) UpdateKey (Param1 1), Tag 5
    _dir, name, _v, f, note = d.spdm(bytes.fromhex("136a0100" "13e90105"), sid)
    assert (name, note) == ("ENCAPSULATED_REQUEST", "")
    assert f == {"request_id": 1, "encapsulated": "KEY_UPDATE", "operation": "UpdateKey",
                 "tag": 5}
    # DELIVER_ENCAPSULATED_RESPONSE Param1 = RequestID 1, carrying KEY_UPDATE_ACK (69)
    _dir, name, _v, f, note = d.spdm(bytes.fromhex("13eb0100" "13690105"), sid)
    assert (name, note) == ("DELIVER_ENCAPSULATED_RESPONSE", "")
    assert f == {"request_id": 1, "encapsulated": "KEY_UPDATE_ACK", "operation": "UpdateKey",
                 "tag": 5}
    # ENCAPSULATED_RESPONSE_ACK Param1 = RequestID 2, Param2 = PayloadType 1 (present),
    # AckRequestID 1, Reserved 3 bytes, then KEY_UPDATE VerifyNewKey (Param1 3), Tag 6
    _dir, name, _v, f, note = d.spdm(bytes.fromhex("136b0201" "01000000" "13e90306"), sid)
    assert (name, note) == ("ENCAPSULATED_RESPONSE_ACK", "")
    assert f == {"request_id": 2, "payload_type": "present", "ack_request_id": 1,
                 "encapsulated": "KEY_UPDATE", "operation": "VerifyNewKey", "tag": 6}
    # PayloadType 0: nothing carried, the exchange is over
    _dir, name, _v, f, _note = d.spdm(bytes.fromhex("136b0300" "02000000"), sid)
    assert f == {"request_id": 3, "payload_type": "absent", "ack_request_id": 2}


# -- capture printer: HANDSHAKE_IN_THE_CLEAR (finding D3) -------------------------------------

H, S, D = 48, 96, 96   # SHA-384, ECDSA P-384, secp384r1


def _clear_handshake_capture() -> bytes:
    flags_req = 0x0882F7C6                    # HANDSHAKE_IN_THE_CLEAR_CAP (bit 15) set
    flags_rsp = 0x0002F2D6                    # ours at fe94c36, bit 15 set
    msgs = [
        bytes.fromhex("10840000"),                                   # GET_VERSION
        bytes.fromhex("10040000" "0001" "0013"),                     # VERSION 1.3
        struct.pack("<BBBBBBHIII", 0x13, 0xE1, 0, 0, 0, 12, 0, flags_req, 4096, 4096),
        struct.pack("<BBBBBBHIII", 0x13, 0x61, 0, 0, 0, 12, 0, flags_rsp, 4096, 4096),
        # NEGOTIATE_ALGORITHMS 1.3 with DHE, AEAD, KeySchedule AlgStructs (44 bytes)
        struct.pack("<BBBBHBBII12sBBBB", 0x13, 0xE3, 3, 0, 44, 1, 2, 1 << 7, 1 << 1,
                    bytes(12), 0, 0, 0, 0) +
        struct.pack("<BBH", 2, 0x20, 1 << 4) + struct.pack("<BBH", 3, 0x20, 1 << 1) +
        struct.pack("<BBH", 5, 0x20, 1),
        # ALGORITHMS: 36 fixed bytes + 3 AlgStructs = 48; P-384 (bit 7), SHA-384 (bit 1),
        # secp384r1 (bit 4), AES-256-GCM (bit 1), SPDM key schedule
        struct.pack("<BBBBHBBIII11sBBBH", 0x13, 0x63, 3, 0, 48, 1, 2, 1 << 2, 1 << 7,
                    1 << 1, bytes(11), 0, 0, 0, 0) +
        struct.pack("<BBH", 2, 0x20, 1 << 4) + struct.pack("<BBH", 3, 0x20, 1 << 1) +
        struct.pack("<BBH", 5, 0x20, 1),
        # KEY_EXCHANGE: no summary hash, slot 0, ReqSessionID 0xFFFF, policy, reserved,
        # RandomData 32, ExchangeData D, OpaqueDataLength 0
        struct.pack("<BBBBHBB", 0x13, 0xE4, 0, 0, 0xFFFF, 0, 0) + bytes(32) + bytes(D) +
        b"\x00\x00",
        # KEY_EXCHANGE_RSP in the clear: HeartbeatPeriod 60, RspSessionID 0xE616,
        # MutAuthRequested 0, SlotIDParam 0, RandomData, ExchangeData, OpaqueDataLength 0,
        # Signature S, and no ResponderVerifyData: 4+2+1+1+32+96+2+96 = 234 bytes
        struct.pack("<BBBBHBB", 0x13, 0x64, 60, 0, 0xE616, 0, 0) + bytes(32) + bytes(D) +
        b"\x00\x00" + bytes(S),
        # FINISH in the clear: no signature (Param1 0), RequesterVerifyData H
        bytes.fromhex("13e50000") + bytes(H),
        # FINISH_RSP in the clear carries ResponderVerifyData H
        bytes.fromhex("13650000") + bytes(H),
    ]
    out = io.BytesIO()
    w = PcapWriter(out)
    for i, msg in enumerate(msgs):
        w.write(build_object(0x0001, 1, msg), timestamp=1.0 + i)
    return out.getvalue()


def test_handshake_in_the_clear_capture_decodes() -> None:
    decoded = decode_capture(parse_pcap(_clear_handshake_capture()))
    names = [d.name for d in decoded]
    assert names == ["GET_VERSION", "VERSION", "GET_CAPABILITIES", "CAPABILITIES",
                     "NEGOTIATE_ALGORITHMS", "ALGORITHMS", "KEY_EXCHANGE",
                     "KEY_EXCHANGE_RSP", "FINISH", "FINISH_RSP"]
    assert [d.note for d in decoded] == [""] * 10
    ke = decoded[7]
    assert ke.fields["session_id"] == "0xe616ffff"
    assert ke.fields["handshake_in_the_clear"] is True
    assert ke.fields["heartbeat_period"] == 60
    assert decoded[8].fields == {"signature_included": False, "handshake_in_the_clear": True}
    assert decoded[9].fields == {"handshake_in_the_clear": True, "responder_verify_data": 48}
    # spdm-dump's command line now gets the session's dhe_secret
    assert session_order(decoded) == [0xE616FFFF]
    argv, missing = spdm_dump_command("doe.pcap", decoded,
                                      [{"session_id": "0xe616ffff", "dhe_secret": "ab"}])
    assert argv == ["spdm_dump", "-r", "doe.pcap", "--dhe_secret", "ab"] and missing == []


def test_without_clear_handshake_verify_data_is_required() -> None:
    # The same KEY_EXCHANGE_RSP when only the requester set bit 15: ResponderVerifyData
    # (H bytes) is due, so the 234-byte message is short.
    raw = bytearray(_clear_handshake_capture())
    capture = parse_pcap(bytes(raw))
    records = capture.records
    caps = records[3].data
    flags_at = 8 + 8
    patched = caps[:flags_at] + struct.pack("<I", 0x0002F2D6 & ~(1 << 15)) + \
        caps[flags_at + 4:]
    records[3] = type(records[3])(records[3].ts_sec, records[3].ts_usec, patched,
                                  records[3].orig_len)
    decoded = decode_capture(capture)
    assert decoded[7].note.startswith("malformed: KEY_EXCHANGE_RSP: truncated")


# -- DSP0274 HEARTBEAT: the session ends after 2 x HeartbeatPeriod of silence -----------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_session_ends_after_twice_the_heartbeat_period(events: Recorder) -> None:
    from vfiouser_tdisp.doe.protocols import DoeError

    from .spdm_support import requester, responder

    clock = _Clock()
    r = responder(heartbeat_period=5, clock=clock)
    req = requester(r, versions=(0x12,))
    req.authenticate()
    s = req.start_session()
    # KEY_EXCHANGE_RSP Param1 = HeartbeatPeriod 5 (both sides set HBEAT_CAP, bit 13)
    assert s.heartbeat_period == 5
    sid = s.session_id
    clock.now += 10.0           # exactly 2 x HeartbeatPeriod: still alive
    req.heartbeat(s)
    clock.now += 9.9            # the HEARTBEAT restarted the timer
    req.heartbeat(s)
    clock.now += 10.001         # silent for more than 10 s: the session is gone
    record = s.secured.seal(m.HEARTBEAT(spdm_version=0x12).pack())
    with pytest.raises(DoeError, match="unknown session"):
        r.handle_secured(record)
    assert sid not in r.sessions
    closed = events.of("spdm.session.closed")
    assert [(e["session_id"], e["cause"]) for e in closed] == \
        [(f"{sid:#010x}", "heartbeat_timeout")]
    # the connection itself stays usable: a new session opens
    s2 = req.start_session()
    assert s2.session_id in r.sessions


def test_no_heartbeat_cap_means_period_zero_and_no_timeout() -> None:
    from .spdm_support import requester, responder

    clock = _Clock()
    r = responder(heartbeat_period=5, clock=clock)
    req = requester(r, versions=(0x12,))
    req.CAP_FLAGS = req.CAP_FLAGS & ~m.CapFlags.HBEAT_CAP   # requester without HBEAT_CAP
    req.authenticate()
    s = req.start_session()
    # DSP0274 KEY_EXCHANGE_RSP: HeartbeatPeriod 0 when either side lacks HBEAT_CAP
    assert s.heartbeat_period == 0
    clock.now += 3600
    answer = r.handle_secured(s.secured.seal(m.HEARTBEAT(spdm_version=0x12).pack()))
    assert s.secured.open(answer) == b"\x12\x68\x00\x00"     # HEARTBEAT_ACK
    assert s.session_id in r.sessions


# -- NEGOTIATE_ALGORITHMS: an AlgStruct with AlgSupported 0 --------------------------------------


def test_alg_struct_with_nothing_supported_is_answered_with_nothing_selected() -> None:
    from .spdm_support import responder

    r = responder()
    assert r.handle_cma(bytes.fromhex("10840000"))[1] == 0x04
    caps = struct.pack("<BBBBBBHIII", 0x12, 0xE1, 0, 0, 0, 12, 0,
                       int(m.CapFlags.CERT_CAP | m.CapFlags.CHAL_CAP |
                           m.CapFlags.ENCRYPT_CAP | m.CapFlags.MAC_CAP |
                           m.CapFlags.KEY_EX_CAP), 4096, 4096)
    assert r.handle_cma(caps)[1] == 0x61
    # NEGOTIATE_ALGORITHMS 1.2, Param1 = 4 AlgStructs: DHE secp384r1 (bit 4), AEAD
    # AES-256-GCM (bit 1), ReqBaseAsymAlg with AlgSupported 0, KeySchedule SPDM;
    # Length 32 + 16 = 48
    req = struct.pack("<BBBBHBBII12sBBBB", 0x12, 0xE3, 4, 0, 48, 1, 2, 1 << 7, 1 << 1,
                      bytes(12), 0, 0, 0, 0) + \
        struct.pack("<BBH", 2, 0x20, 1 << 4) + struct.pack("<BBH", 3, 0x20, 1 << 1) + \
        struct.pack("<BBH", 4, 0x20, 0) + struct.pack("<BBH", 5, 0x20, 1)
    rsp = r.handle_cma(req)
    # ALGORITHMS, Param1 = 4, Length 36 + 16 = 52; the AlgStructs answer in the same
    # order: DHE bit 4, AEAD bit 1, ReqBaseAsymAlg 0 (no mutual auth), KeySchedule 1
    assert rsp[:6] == bytes.fromhex("12630400" "3400")
    assert rsp[36:] == bytes.fromhex("02201000" "03200200" "04200000" "05200100")


def test_heartbeat_timer_starts_when_the_session_is_established() -> None:
    """A slow FINISH does not count against the session: the timer (2 x HeartbeatPeriod)
    starts at FINISH, as libspdm's responder starts its watchdog at FINISH_RSP."""
    from vfiouser_tdisp.doe.protocols import DoeError
    from vfiouser_tdisp.spdm.requester import doe_transport

    from .spdm_support import dispatcher, requester, responder

    clock = _Clock()
    r = responder(heartbeat_period=5, clock=clock)
    req = requester(r, versions=(0x12,))
    req.authenticate()
    transport = doe_transport(dispatcher(r).exchange)
    flow = req.start_session_flow()
    step = next(flow)
    assert step.payload[1] == 0xE4          # KEY_EXCHANGE
    step = flow.send(transport(step))
    assert step.secured                      # FINISH, under the handshake keys
    clock.now += 60.0                        # far beyond 2 x 5 s before FINISH
    with pytest.raises(StopIteration) as done:
        flow.send(transport(step))
    s = done.value.value
    clock.now += 10.0
    req.heartbeat(s)                         # 10 s after FINISH: alive
    clock.now += 10.5
    with pytest.raises(DoeError, match="unknown session"):
        r.handle_secured(s.secured.seal(m.HEARTBEAT(spdm_version=0x12).pack()))
