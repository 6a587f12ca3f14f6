"""The shared codec (``vfiouser_tdisp.wire``) on bytes.

Part one declares small structures and checks every field kind against bytes
written out by hand (little-endian, as the declaration says).  Part two takes
SPDM message layouts from DSP0274 (1.0-1.3) -- the clause is named at each
test -- and checks the declarations in ``spdm/messages.py`` against bytes
written out from the specification's tables, never from our own requester or
responder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.wire import (
    DecodeError,
    Struct,
    counted,
    items,
    raw,
    tail,
    u8,
    u16,
    u24,
    u32,
    u64,
)

# -- part one: every field kind --------------------------------------------------------


@dataclass(frozen=True)
class Ints(Struct):
    a: int = u8()
    b: int = u16()
    c: int = u24()
    d: int = u32()
    e: int = u64()


def test_integers_are_little_endian() -> None:
    msg = Ints(0x01, 0x0302, 0x060504, 0x0A090807, 0x1211100F0E0D0C0B)
    wire = bytes(range(1, 0x13))
    assert msg.pack() == wire
    assert Ints.unpack(wire) == msg


def test_integer_out_of_range_fails_in_pack() -> None:
    with pytest.raises(ValueError):
        Ints(a=0x100).pack()
    with pytest.raises(ValueError):
        Ints(c=1 << 24).pack()


@dataclass(frozen=True)
class Raws(Struct):
    tag: int = u8()
    key: bytes = raw(4)
    rest: bytes = tail()


def test_raw_and_tail() -> None:
    wire = bytes.fromhex("07 deadbeef 0102")
    msg = Raws.unpack(wire)
    assert (msg.tag, msg.key, msg.rest) == (7, bytes.fromhex("deadbeef"), b"\x01\x02")
    assert msg.pack() == wire
    assert Raws.unpack(wire[:5]).rest == b""
    with pytest.raises(ValueError, match="4 bytes"):
        Raws(key=b"\x00" * 3).pack()  # never padded or cut silently
    with pytest.raises(DecodeError):
        Raws.unpack(wire[:4])


@dataclass(frozen=True)
class Sub(Struct):
    x: int = u16()
    y: int = u8()


@dataclass(frozen=True)
class Counted(Struct):
    n: int = u8()
    data: bytes = counted("n", 2)
    count: int = u16()
    subs: list[Sub] = items(Sub, "count")
    after: int = u8()


def test_counted_and_items_fill_their_count() -> None:
    msg = Counted(data=b"abcd", subs=[Sub(1, 2), Sub(0x0304, 5)], after=9)
    assert (msg.n, msg.count) == (2, 2)  # filled when the object is built
    wire = bytes.fromhex("02 61626364 0200 010002 040305 09")
    assert msg.pack() == wire
    assert Counted.unpack(wire) == msg
    empty = Counted()
    assert empty.pack() == bytes.fromhex("00 0000 00")


def test_given_counts_must_agree() -> None:
    with pytest.raises(ValueError, match="n says 6"):
        Counted(n=3, data=b"abcd").pack()
    with pytest.raises(ValueError, match="count says 1"):
        Counted(count=1, subs=[Sub(), Sub()]).pack()
    with pytest.raises(ValueError):
        Counted(data=b"abc").pack()  # 3 bytes are not a whole number of 2-byte units


def test_replace_recomputes_counts() -> None:
    msg = Counted(data=b"ab")
    assert msg.replace(data=b"abcdef").n == 3
    assert msg.replace(data=b"abcdef").pack()[:1] == b"\x03"
    with pytest.raises(ValueError):
        msg.replace(n=2, data=b"ab").pack()  # a count given with the data wins: 4 != 2


def test_counted_truncated_and_extended() -> None:
    wire = bytes.fromhex("02 61626364 0100 010002 09")
    assert Counted.unpack(wire).subs == [Sub(1, 2)]
    for cut in range(len(wire)):
        with pytest.raises(DecodeError):
            Counted.unpack(wire[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        Counted.unpack(wire + b"\x00")
    msg, used = Counted.unpack_partial(wire + b"\x00\x00")
    assert used == len(wire) and msg.after == 9
    assert Counted.unpack(wire + b"\x00", exact=False) == msg
    assert Counted.unpack_from(b"\xff" + wire, 1) == (msg, 1 + len(wire))


@dataclass(frozen=True)
class Framed(Struct):
    """A message whose own length field covers the whole message."""

    kind: int = u8()
    length: int = u16(message_length=True)
    body: bytes = tail()


def test_message_length_filled_checked_and_bounding() -> None:
    assert Framed(1, body=b"xyz").pack() == bytes.fromhex("01 0600 78797a")
    with pytest.raises(ValueError, match="6 bytes"):
        Framed(1, length=5, body=b"xyz").pack()
    # the tail stops at Length: padding after it is not consumed
    msg, used = Framed.unpack_partial(bytes.fromhex("01 0600 78797a 0000"))
    assert (msg.length, msg.body, used) == (6, b"xyz", 6)
    with pytest.raises(DecodeError, match="trailing"):
        Framed.unpack(bytes.fromhex("01 0600 78797a 00"))
    with pytest.raises(DecodeError):  # Length beyond the bytes received
        Framed.unpack(bytes.fromhex("01 0700 78797a"))
    with pytest.raises(DecodeError):  # Length shorter than its own fixed fields
        Framed.unpack(bytes.fromhex("01 0200 78797a"))
    assert Framed.unpack(bytes.fromhex("01 0600 78797a")).replace(body=b"").pack() == \
        bytes.fromhex("01 0300")


@dataclass(frozen=True)
class Versioned(Struct):
    VERSION_FIELD: ClassVar[str] = "version"
    version: int = u8(0x10)
    flags: int = u8()
    added: int = u16(since=0x11)
    optional: bytes = raw(2, when=lambda v, c: bool(v["flags"] & 1))
    sized: bytes = raw("K")
    later: bytes = raw(1, since=0x12, default=b"\x00")


@dataclass
class Ctx:
    k: int

    def size(self, name: str) -> int:
        assert name == "K"
        return self.k


def test_version_dependent_fields() -> None:
    ctx = Ctx(0)
    assert Versioned(0x10, added=5).pack(ctx) == bytes.fromhex("10 00")
    assert Versioned(0x11, added=5).pack(ctx) == bytes.fromhex("11 00 0500")
    assert Versioned(0x12, added=5, later=b"L").pack(ctx) == bytes.fromhex("12 00 0500 4c")
    assert Versioned.unpack(bytes.fromhex("10 00"), ctx) == Versioned(0x10)
    assert Versioned.unpack(bytes.fromhex("13 00 0700 4c"), ctx) == \
        Versioned(0x13, added=7, later=b"L")
    with pytest.raises(DecodeError):
        Versioned.unpack(bytes.fromhex("11 00"), ctx)
    with pytest.raises(DecodeError, match="trailing"):
        Versioned.unpack(bytes.fromhex("10 00 0500"), ctx)


def test_flag_dependent_fields() -> None:
    ctx = Ctx(0)
    assert Versioned(0x10, flags=1, optional=b"ab").pack(ctx) == bytes.fromhex("10 01 6162")
    assert Versioned(0x10, flags=0, optional=b"ab").pack(ctx) == bytes.fromhex("10 00")
    assert Versioned.unpack(bytes.fromhex("10 01 6162"), ctx).optional == b"ab"
    with pytest.raises(DecodeError):
        Versioned.unpack(bytes.fromhex("10 01 61"), ctx)


def test_negotiated_sizes() -> None:
    wire = bytes.fromhex("10 00 a1a2a3")
    assert Versioned.unpack(wire, Ctx(3)).sized == bytes.fromhex("a1a2a3")
    assert Versioned(sized=bytes.fromhex("a1a2a3")).pack(Ctx(3)) == wire
    with pytest.raises(DecodeError):
        Versioned.unpack(wire, Ctx(4))
    with pytest.raises(DecodeError):
        Versioned.unpack(wire, Ctx(2))
    with pytest.raises(ValueError, match="expected 4"):
        Versioned(sized=b"abc").pack(Ctx(4))
    with pytest.raises(ValueError, match="size context"):
        Versioned(sized=b"abc").pack()


def test_fixed_size() -> None:
    assert Ints.fixed_size() == 18
    with pytest.raises(TypeError):
        Counted.fixed_size()
    with pytest.raises(TypeError):
        Versioned.fixed_size()


def test_declaration_errors() -> None:
    @dataclass(frozen=True)
    class NoVersion(Struct):
        a: int = u8(since=0x11)

    with pytest.raises(TypeError, match="VERSION_FIELD"):
        NoVersion().pack()

    @dataclass(frozen=True)
    class Plain(Struct):
        a: int = 0

    with pytest.raises(TypeError, match="no wire format"):
        Plain().pack()


# -- part two: SPDM layouts from DSP0274 ---------------------------------------------


def roundtrip(msg: m.SpdmMessage, wire: str, sizes: m.Sizes | None = None) -> None:
    expected = bytes.fromhex(wire)
    assert msg.pack(sizes) == expected
    assert type(msg).unpack(expected, sizes) == msg
    for cut in range(len(expected)):
        with pytest.raises(DecodeError):
            type(msg).unpack(expected[:cut], sizes)
    with pytest.raises(DecodeError):
        type(msg).unpack(expected + b"\x00", sizes)
    assert type(msg).unpack_partial(expected + b"\x00\x00\x00", sizes) == (msg, len(expected))


def test_spdm_get_version() -> None:
    # DSP0274 1.0+ "GET_VERSION request": SPDMVersion 0x10, code 0x84, Param1/2 reserved.
    roundtrip(m.GET_VERSION(), "10 84 00 00")


def test_spdm_version_response() -> None:
    # DSP0274 "VERSION response": header, Reserved, VersionNumberEntryCount, then
    # 16-bit entries (bits 15:12 major, 11:8 minor); 1.2 is 0x1200 -> bytes 00 12.
    msg = m.VERSION.build([m.V11, m.V12, m.V13])
    assert msg.version_number_entry_count == 3
    roundtrip(msg, "10 04 00 00 00 03 0011 0012 0013")
    assert m.VERSION.unpack(bytes.fromhex("10 04 00 00 00 01 0012")).versions == [0x12]


def test_spdm_get_capabilities_per_version() -> None:
    # DSP0274 "GET_CAPABILITIES request": 1.0 is the header only; 1.1 adds Reserved,
    # CTExponent, Reserved(2), Flags(4); 1.2 adds DataTransferSize and MaxSPDMmsgSize.
    kw: dict[str, Any] = dict(ct_exponent=12, flags=0x00028206, data_transfer_size=4096,
                              max_spdm_msg_size=0x10000)
    roundtrip(m.GET_CAPABILITIES(spdm_version=0x10), "10 e1 00 00")
    roundtrip(m.GET_CAPABILITIES(spdm_version=0x11, ct_exponent=12, flags=0x00028206),
              "11 e1 00 00 00 0c 0000 06820200")
    roundtrip(m.GET_CAPABILITIES(spdm_version=0x12, **kw),
              "12 e1 00 00 00 0c 0000 06820200 00100000 00000100")
    # fields of a later version are not written, whatever their value
    assert m.GET_CAPABILITIES(spdm_version=0x10, **kw).pack() == bytes.fromhex("10 e1 00 00")
    assert len(m.GET_CAPABILITIES(spdm_version=0x11, **kw).pack()) == 12


def test_spdm_negotiate_algorithms_length_is_automatic() -> None:
    # DSP0274 1.2 "NEGOTIATE_ALGORITHMS request": Param1 = number of AlgStructs, Length
    # (2) = the whole message, MeasurementSpecification, OtherParamsSupport,
    # BaseAsymAlgo(4), BaseHashAlgo(4), Reserved(12), ExtAsymCount, ExtHashCount,
    # Reserved, MELspecification, then ReqAlgStruct: AlgType, AlgCount 0x20, AlgSupported.
    structs = m.AlgStruct(m.ALG_TYPE_DHE, 0x0010).pack() + \
        m.AlgStruct(m.ALG_TYPE_KEY_SCHEDULE, 0x0001).pack()
    msg = m.NEGOTIATE_ALGORITHMS(spdm_version=0x12, param1=2, measurement_specification=1,
                                 other_params_support=2, base_asym_algo=0x80,
                                 base_hash_algo=0x02, req_alg_struct=structs)
    wire = ("12 e3 02 00 2800 01 02 80000000 02000000" + " 00" * 12 + " 00 00 00 00"
            " 02 20 1000 05 20 0100")
    assert msg.pack() == bytes.fromhex(wire)
    decoded = m.NEGOTIATE_ALGORITHMS.unpack(bytes.fromhex(wire))
    assert decoded.length == 40
    assert decoded.alg_structs() == [m.AlgStruct(2, 0x10), m.AlgStruct(5, 1)]
    # DOE padding after Length is not part of the message (and not an AlgStruct)
    _, used = m.NEGOTIATE_ALGORITHMS.unpack_partial(bytes.fromhex(wire) + bytes(3))
    assert used == 40
    with pytest.raises(ValueError):
        msg.replace(length=44).pack()
    with pytest.raises(DecodeError):  # Length says more than was received
        m.NEGOTIATE_ALGORITHMS.unpack(bytes.fromhex(wire.replace("2800", "2c00", 1)))


def test_spdm_certificate_counted() -> None:
    # DSP0274 "CERTIFICATE response": Param1 slot, PortionLength(2), RemainderLength(2),
    # CertChain(PortionLength).
    msg = m.CERTIFICATE(spdm_version=0x12, param1=0, remainder_length=0x100,
                        cert_chain=b"\x30\x82\x01")
    assert msg.portion_length == 3
    roundtrip(msg, "12 02 00 00 0300 0001 308201")


def test_spdm_challenge_requester_context_from_1_3() -> None:
    # DSP0274 "CHALLENGE request": Nonce(32); 1.3 adds RequesterContext(8).
    nonce = bytes(range(32))
    roundtrip(m.CHALLENGE(spdm_version=0x12, param2=0xFF, nonce=nonce),
              "12 83 00 ff " + nonce.hex())
    roundtrip(m.CHALLENGE(spdm_version=0x13, param2=0xFF, nonce=nonce,
                          requester_context=b"CONTEXT!"),
              "13 83 00 ff " + nonce.hex() + b"CONTEXT!".hex())


def test_spdm_get_measurements_nonce_only_when_signature_requested() -> None:
    # DSP0274 "GET_MEASUREMENTS request": Nonce and SlotIDParam (1.1+) only when
    # Param1 bit 0 (SignatureRequested) is set.
    nonce = bytes([0xAA]) * 32
    roundtrip(m.GET_MEASUREMENTS(spdm_version=0x12, param1=0, param2=0xFF),
              "12 e0 00 ff")
    roundtrip(m.GET_MEASUREMENTS(spdm_version=0x12, param1=1, param2=0xFF, nonce=nonce,
                                 slot_id_param=0),
              "12 e0 01 ff " + nonce.hex() + " 00")
    roundtrip(m.GET_MEASUREMENTS(spdm_version=0x10, param1=1, param2=1, nonce=nonce),
              "10 e0 01 01 " + nonce.hex())


def test_spdm_measurements_with_negotiated_signature() -> None:
    # DSP0274 "MEASUREMENTS response": NumberOfBlocks, MeasurementRecordLength (3
    # bytes), MeasurementRecord, Nonce(32), OpaqueDataLength(2), OpaqueData, 1.3
    # RequesterContext(8), Signature(S) when signed.  A block: Index, Measurement-
    # Specification (bit 0 DMTF), MeasurementSize(2), then the DMTF format:
    # DMTFSpecMeasurementValueType, DMTFSpecMeasurementValueSize(2), the value.
    block = m.MeasurementBlock(index=1, value_type=0x01, value=b"\x11\x22")
    assert block.pack() == bytes.fromhex("01 01 0500 01 0200 1122")
    nonce = bytes([0x55]) * 32
    sig = bytes([0x5A]) * 64
    msg = m.MEASUREMENTS(spdm_version=0x12, param1=0, param2=0, number_of_blocks=1,
                         measurement_record=block.pack(), nonce=nonce,
                         opaque_data=b"\x01\x02", signature=sig)
    assert (msg.measurement_record_length, msg.opaque_length) == (9, 2)
    signed = m.Sizes(version=0x12, signature=64, signed=True)
    roundtrip(msg, "12 60 00 00 01 090000 01010500010200 1122 " + nonce.hex() +
              " 0200 0102 " + sig.hex(), signed)
    unsigned = m.Sizes(version=0x12, signature=64, signed=False)
    roundtrip(msg.replace(signature=b""), "12 60 00 00 01 090000 01010500010200 1122 " +
              nonce.hex() + " 0200 0102", unsigned)
    assert m.parse_measurement_record(msg.measurement_record, 1) == [block]
    with pytest.raises(DecodeError):
        m.parse_measurement_record(bytes.fromhex("01 01 0500 01 0300 1122"), 1)


def test_spdm_key_exchange_dhe_size() -> None:
    # DSP0274 "KEY_EXCHANGE request": ReqSessionID(2), SessionPolicy, Reserved,
    # RandomData(32), ExchangeData(D: 64 for secp256r1), OpaqueDataLength(2), OpaqueData.
    rnd, exch = bytes([1]) * 32, bytes([2]) * 64
    sizes = m.Sizes(version=0x12, dhe=64)
    roundtrip(m.KEY_EXCHANGE(spdm_version=0x12, param1=0, param2=0, req_session_id=0xFFFE,
                             random_data=rnd, exchange_data=exch, opaque_data=b"\xAB"),
              "12 e4 00 00 feff 00 00 " + rnd.hex() + exch.hex() + " 0100 ab", sizes)


def test_spdm_finish_signature_only_with_param1_bit0() -> None:
    # DSP0274 "FINISH request": Signature(S) present only when Param1 bit 0 is set,
    # then RequesterVerifyData(H).
    sizes = m.Sizes(version=0x12, hash=32, signature=64)
    verify, sig = bytes([7]) * 32, bytes([9]) * 64
    roundtrip(m.FINISH(spdm_version=0x12, requester_verify_data=verify),
              "12 e5 00 00 " + verify.hex(), sizes)
    roundtrip(m.FINISH(spdm_version=0x12, param1=1, signature=sig,
                       requester_verify_data=verify),
              "12 e5 01 00 " + sig.hex() + verify.hex(), sizes)


def test_spdm_vendor_defined_counts() -> None:
    # DSP0274 "VENDOR_DEFINED_REQUEST": StandardID(2), Len, VendorID(Len), ReqLength(2),
    # VendorDefinedReqPayload(ReqLength).  PCI-SIG StandardID is 3, VendorID 0x0001.
    msg = m.VENDOR_DEFINED_REQUEST(spdm_version=0x12, standard_id=3, vendor_id=b"\x01\x00",
                                   vendor_defined_req_payload=b"\x01\x10\x81")
    assert (msg.len, msg.req_length) == (2, 3)
    roundtrip(msg, "12 fe 00 00 0300 02 0100 0300 011081")


def test_spdm_chunk_send_large_message_size_only_in_first_chunk() -> None:
    # DSP0274 1.2 "CHUNK_SEND request": ChunkSeqNo(2), Reserved(2), ChunkSize(4),
    # LargeMessageSize(4) only when ChunkSeqNo is 0, SPDMchunk(ChunkSize).
    roundtrip(m.CHUNK_SEND(spdm_version=0x12, param2=1, chunk_seq_no=0,
                           large_message_size=0x40, spdm_chunk=b"\x12\x81"),
              "12 85 00 01 0000 0000 02000000 40000000 1281")
    roundtrip(m.CHUNK_SEND(spdm_version=0x12, param1=1, param2=1, chunk_seq_no=1,
                           spdm_chunk=b"\xAA"),
              "12 85 01 01 0100 0000 01000000 aa")


def test_spdm_code_is_filled_and_checked() -> None:
    assert m.HEARTBEAT(spdm_version=0x12).request_response_code == m.HEARTBEAT_CODE
    with pytest.raises(DecodeError, match="code"):
        m.HEARTBEAT.unpack(bytes.fromhex("12 ec 00 00"))  # END_SESSION's code
    with pytest.raises(DecodeError):
        m.HEARTBEAT.unpack(bytes.fromhex("12 e8 00"))
