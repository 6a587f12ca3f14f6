"""TDISP message layouts (bytes only): sizes and offsets as in the spec / libspdm."""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.tdisp import messages as m
from vfiouser_tdisp.wire import DecodeError

# Whole-message sizes from libspdm pci_tdisp.h (16-byte header included).
SIZES: dict[type[m.TdispMessage], int] = {
    m.GET_TDISP_VERSION: 16, m.GET_TDISP_CAPABILITIES: 20, m.LOCK_INTERFACE_REQUEST: 36,
    m.GET_DEVICE_INTERFACE_REPORT: 20, m.GET_DEVICE_INTERFACE_STATE: 16,
    m.START_INTERFACE_REQUEST: 48, m.STOP_INTERFACE_REQUEST: 16,
    m.BIND_P2P_STREAM_REQUEST: 18, m.UNBIND_P2P_STREAM_REQUEST: 17,
    m.SET_MMIO_ATTRIBUTE_REQUEST: 32, m.SET_TDISP_CONFIG_REQUEST: 20,
    m.TDISP_CAPABILITIES: 44, m.LOCK_INTERFACE_RESPONSE: 48, m.DEVICE_INTERFACE_STATE: 17,
    m.START_INTERFACE_RESPONSE: 16, m.STOP_INTERFACE_RESPONSE: 16,
    m.BIND_P2P_STREAM_RESPONSE: 16, m.UNBIND_P2P_STREAM_RESPONSE: 16,
    m.SET_MMIO_ATTRIBUTE_RESPONSE: 16, m.SET_TDISP_CONFIG_RESPONSE: 16,
}


def test_codes_and_names() -> None:
    assert [c.value for c in m.TdispRequest] == list(range(0x81, 0x8D))
    assert [c.value for c in m.TdispResponse][:-1] == list(range(0x01, 0x0D))
    assert m.TdispResponse.TDISP_ERROR == 0x7F
    assert {c.name: c.value for c in m.TdispErrorCode} == {
        "INVALID_REQUEST": 0x01, "BUSY": 0x03, "INVALID_INTERFACE_STATE": 0x04,
        "UNSPECIFIED": 0x05, "UNSUPPORTED_REQUEST": 0x07, "VERSION_MISMATCH": 0x41,
        "VENDOR_SPECIFIC_ERROR": 0xFF, "INVALID_INTERFACE": 0x101, "INVALID_NONCE": 0x102,
        "INSUFFICIENT_ENTROPY": 0x103, "INVALID_DEVICE_CONFIGURATION": 0x104}
    assert int(m.LockInterfaceFlags.NO_FW_UPDATE) == 1
    assert int(m.LockInterfaceFlags.SYSTEM_CACHE_LINE_SIZE) == 2
    assert int(m.LockInterfaceFlags.LOCK_MSIX) == 4
    assert int(m.LockInterfaceFlags.BIND_P2P) == 8
    assert int(m.LockInterfaceFlags.ALL_REQUEST_REDIRECT) == 0x10
    for code, cls in m.REQUESTS.items():
        assert cls.__name__ == m.TdispRequest(code).name
        assert m.RESPONSE_FOR[code].CODE == code - 0x80
    for code, cls in m.RESPONSES.items():
        assert cls.__name__ == m.TdispResponse(code).name


@pytest.mark.parametrize("cls", list(SIZES), ids=lambda c: c.__name__)
def test_fixed_sizes_and_round_trip(cls: type[m.TdispMessage]) -> None:
    msg = cls(function_id=0x01020304)
    raw = msg.pack()
    assert len(raw) == SIZES[cls]
    assert raw[0] == 0x10 and raw[1] == cls.CODE and raw[2:4] == b"\0\0"
    assert struct.unpack_from("<IQ", raw, 4) == (0x01020304, 0)
    table = m.REQUESTS if cls.CODE & 0x80 else m.RESPONSES
    assert m.decode(raw, table) == msg
    with pytest.raises(DecodeError):
        cls.unpack(raw[:-1] if len(raw) > 16 else raw[:15])
    if len(raw) > 16 or cls is m.GET_TDISP_VERSION:
        with pytest.raises(DecodeError):
            cls.unpack(raw + b"\0")


def test_header_layout() -> None:
    raw = m.TdispHeader(version=0x10, message_type=0x85, function_id=m.make_function_id(
        0x3A, 0x11, segment=0x22), reserved_interface_id=0).pack()
    assert raw == bytes([0x10, 0x85, 0, 0, 0x11, 0x3A, 0x22, 0x01]) + bytes(8)
    assert m.make_function_id(1, 8) == 0x0108  # no segment: segment_valid clear


def test_lock_interface_request_layout() -> None:
    req = m.LOCK_INTERFACE_REQUEST(flags=0x15, default_stream_id=7,
                                   mmio_reporting_offset=0x1122334455667000,
                                   bind_p2p_address_mask=0xFFFF0000)
    raw = req.pack()
    assert struct.unpack_from("<HBBQQ", raw, 16) == (0x15, 7, 0, 0x1122334455667000, 0xFFFF0000)


def test_capabilities_layout() -> None:
    rsp = m.TDISP_CAPABILITIES(dsm_caps=1, req_msg_supported=bytes([0x7F]) + bytes(15),
                               lock_interface_flags_supported=0x17, dev_addr_width=52,
                               num_req_this=1, num_req_all=2)
    raw = rsp.pack()
    assert struct.unpack_from("<I", raw, 16) == (1,)
    assert raw[20:36] == bytes([0x7F]) + bytes(15)
    assert struct.unpack_from("<H3sBBB", raw, 36) == (0x17, bytes(3), 52, 1, 2)


def test_variable_messages() -> None:
    v = m.TDISP_VERSION(version_num_count=2, version_num_entry=b"\x10\x11")
    assert v.pack()[16:] == b"\x02\x10\x11"
    with pytest.raises(DecodeError):
        m.TDISP_VERSION.unpack(v.pack()[:-1])
    rep = m.DEVICE_INTERFACE_REPORT(portion_length=3, remainder_length=9, report=b"abc")
    assert rep.pack()[16:] == struct.pack("<HH", 3, 9) + b"abc"
    assert m.DEVICE_INTERFACE_REPORT.unpack(rep.pack()) == rep
    vdm = m.VDM_REQUEST(registry_id=0, vendor_id_len=2, vendor_id=b"\x86\x80", vendor_data=b"xyz")
    assert vdm.pack()[16:] == b"\x00\x02\x86\x80xyz"
    assert m.VDM_REQUEST.unpack(vdm.pack()) == vdm
    assert m.VDM_RESPONSE.unpack(m.VDM_RESPONSE(vendor_id_len=1, vendor_id=b"A").pack()).vendor_id \
        == b"A"
    err = m.TDISP_ERROR(error_code=0x104, error_data=5, extended_error_data=b"\x01")
    assert err.pack()[16:] == struct.pack("<II", 0x104, 5) + b"\x01"
    ext = m.EXTENDED_ERROR_DATA(registry_id=1, vendor_id_len=2, vendor_id=b"\x01\x02",
                                vendor_err_data=b"zz")
    assert m.EXTENDED_ERROR_DATA.unpack(ext.pack()) == ext
    bind = m.BIND_P2P_STREAM_REQUEST(p2p_stream_id=3, stream_config=m.StreamConfig.XT_ENABLE)
    assert bind.pack()[16:] == b"\x03\x01"
    cfg = m.SET_TDISP_CONFIG_REQUEST(dsm_config=m.DsmConfig.XT_BIT_FOR_LOCKED_MSIX)
    assert cfg.pack()[16:] == struct.pack("<I", 2)
    mmio = m.SET_MMIO_ATTRIBUTE_REQUEST(first_page=0x12345, number_of_pages=4,
                                        range_attributes=8, range_id=2)
    assert mmio.pack()[16:] == m.MMIO_RANGE(0x12345, 4, 8, 2).pack()


def test_report_structure_layout() -> None:
    ranges = [m.MMIO_RANGE(0xFE000, 1, 0, 0), m.MMIO_RANGE(0x100000, 16, 0x3, 2)]
    rep = m.TDI_REPORT_STRUCTURE(interface_info=0x3, msi_x_message_control=0x8001,
                                 tph_control=0, mmio_range_count=2, mmio_range=ranges,
                                 device_specific_info_len=2, device_specific_info=b"hi")
    raw = rep.pack()
    assert len(m.MMIO_RANGE().pack()) == 16
    assert struct.unpack_from("<HHHHII", raw, 0) == (3, 0, 0x8001, 0, 0, 2)
    assert struct.unpack_from("<QIHH", raw, 16) == (0xFE000, 1, 0, 0)
    assert struct.unpack_from("<QIHH", raw, 32) == (0x100000, 16, 3, 2)
    assert raw[48:] == struct.pack("<I", 2) + b"hi"
    assert m.TDI_REPORT_STRUCTURE.unpack(raw) == rep
    with pytest.raises(DecodeError):
        m.TDI_REPORT_STRUCTURE.unpack(raw[:40])


def test_decode_rejects_unknown_type() -> None:
    with pytest.raises(DecodeError):
        m.decode_request(m.TdispHeader(message_type=0x8F).pack())
    with pytest.raises(DecodeError):
        m.decode_response(bytes(10))
