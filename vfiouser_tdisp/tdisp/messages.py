"""TDISP 1.0 messages (PCIe r6.1+ §11), PCI-SIG vendor-defined protocol 1.

TDISP messages travel as SPDM VENDOR_DEFINED payloads inside a secured
session; the caller strips the PCI-SIG ``protocol_id`` byte, so a message here
starts with its 16-byte header.  Layouts follow the specification (cross-checked
with DMTF libspdm ``include/industry_standard/pci_tdisp.h``); all fields are
little-endian::

    header        version (0x10) | message_type | reserved[2] |
                  INTERFACE_ID = function_id u32 (RID[15:0], segment[23:16],
                                 segment_valid bit 24) | reserved u64

Every message below is the header followed by its own fields: a subclass of
:class:`TdispMessage` whose ``message_type`` default is its code.  The device
interface report (the payload that GET_DEVICE_INTERFACE_REPORT returns in
portions) is :class:`TDI_REPORT_STRUCTURE` with :class:`MMIO_RANGE` entries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from ..wire import DecodeError, Struct, counted, items, raw, tail, u8, u16, u32, u64

PCI_PROTOCOL_ID_IDE_KM = 0x00
PCI_PROTOCOL_ID_TDISP = 0x01

TDISP_VERSION_10 = 0x10
START_INTERFACE_NONCE_SIZE = 32
TDISP_HEADER_SIZE = 16
PAGE_SIZE = 4096

FUNCTION_ID_RID_MASK = 0x0000FFFF
FUNCTION_ID_SEGMENT_SHIFT = 16
FUNCTION_ID_SEGMENT_MASK = 0x00FF0000
FUNCTION_ID_SEGMENT_VALID = 0x01000000


class TdispRequest(enum.IntEnum):
    GET_TDISP_VERSION = 0x81
    GET_TDISP_CAPABILITIES = 0x82
    LOCK_INTERFACE_REQUEST = 0x83
    GET_DEVICE_INTERFACE_REPORT = 0x84
    GET_DEVICE_INTERFACE_STATE = 0x85
    START_INTERFACE_REQUEST = 0x86
    STOP_INTERFACE_REQUEST = 0x87
    BIND_P2P_STREAM_REQUEST = 0x88
    UNBIND_P2P_STREAM_REQUEST = 0x89
    SET_MMIO_ATTRIBUTE_REQUEST = 0x8A
    VDM_REQUEST = 0x8B
    SET_TDISP_CONFIG_REQUEST = 0x8C


class TdispResponse(enum.IntEnum):
    TDISP_VERSION = 0x01
    TDISP_CAPABILITIES = 0x02
    LOCK_INTERFACE_RESPONSE = 0x03
    DEVICE_INTERFACE_REPORT = 0x04
    DEVICE_INTERFACE_STATE = 0x05
    START_INTERFACE_RESPONSE = 0x06
    STOP_INTERFACE_RESPONSE = 0x07
    BIND_P2P_STREAM_RESPONSE = 0x08
    UNBIND_P2P_STREAM_RESPONSE = 0x09
    SET_MMIO_ATTRIBUTE_RESPONSE = 0x0A
    VDM_RESPONSE = 0x0B
    SET_TDISP_CONFIG_RESPONSE = 0x0C
    TDISP_ERROR = 0x7F


class TdispErrorCode(enum.IntEnum):
    INVALID_REQUEST = 0x01
    BUSY = 0x03
    INVALID_INTERFACE_STATE = 0x04
    UNSPECIFIED = 0x05
    UNSUPPORTED_REQUEST = 0x07
    VERSION_MISMATCH = 0x41
    VENDOR_SPECIFIC_ERROR = 0xFF
    INVALID_INTERFACE = 0x101
    INVALID_NONCE = 0x102
    INSUFFICIENT_ENTROPY = 0x103
    INVALID_DEVICE_CONFIGURATION = 0x104


class TdiState(enum.IntEnum):
    """DEVICE_INTERFACE_STATE.tdi_state values (and the responder's FSM states)."""

    CONFIG_UNLOCKED = 0
    CONFIG_LOCKED = 1
    RUN = 2
    ERROR = 3


class DsmCaps(enum.IntFlag):
    XT_MODE_SUPPORTED = 0x1


class LockInterfaceFlags(enum.IntFlag):
    NO_FW_UPDATE = 0x1
    SYSTEM_CACHE_LINE_SIZE = 0x2  # 0: 64 B, 1: 128 B
    LOCK_MSIX = 0x4
    BIND_P2P = 0x8
    ALL_REQUEST_REDIRECT = 0x10


class InterfaceInfo(enum.IntFlag):
    NO_UPDATE_AFTER_LOCK = 0x1
    DMA_WITHOUT_PASID = 0x2
    DMA_WITH_PASID = 0x4
    ATS_SUPPORTED = 0x8
    PRS_SUPPORTED = 0x10
    XT_MODE_SUPPORTED = 0x20


class MmioRangeAttributes(enum.IntFlag):
    MSIX_TABLE = 0x1
    MSIX_PBA = 0x2
    IS_NON_TEE_MEM = 0x4
    IS_MEM_ATTR_UPDATABLE = 0x8


class StreamConfig(enum.IntFlag):
    XT_ENABLE = 0x1


class DsmConfig(enum.IntFlag):
    XT_MODE_ENABLE = 0x1
    XT_BIT_FOR_LOCKED_MSIX = 0x2


class RegistryId(enum.IntEnum):
    PCISIG = 0x00
    CXL = 0x01


def make_function_id(bus: int, devfn: int, segment: int | None = None) -> int:
    """INTERFACE_ID.function_id: RID = bus:devfn, plus the segment when known."""
    fid = ((bus & 0xFF) << 8) | (devfn & 0xFF)
    if segment is not None:
        fid |= ((segment & 0xFF) << FUNCTION_ID_SEGMENT_SHIFT) | FUNCTION_ID_SEGMENT_VALID
    return fid


# -- header ------------------------------------------------------------------------


@dataclass(frozen=True)
class TdispMessage(Struct):
    """The 16-byte TDISP header; every message class extends it."""

    CODE: ClassVar[int] = -1

    version: int = u8(TDISP_VERSION_10)
    message_type: int = u8()
    reserved: int = u16()
    function_id: int = u32()  # INTERFACE_ID.FUNCTION_ID
    reserved_interface_id: int = u64()  # INTERFACE_ID.RESERVED


TdispHeader = TdispMessage


# -- requests ----------------------------------------------------------------------


@dataclass(frozen=True)
class GET_TDISP_VERSION(TdispMessage):
    CODE = TdispRequest.GET_TDISP_VERSION
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class GET_TDISP_CAPABILITIES(TdispMessage):
    CODE = TdispRequest.GET_TDISP_CAPABILITIES
    message_type: int = u8(CODE)
    tsm_caps: int = u32()


@dataclass(frozen=True)
class LOCK_INTERFACE_REQUEST(TdispMessage):
    CODE = TdispRequest.LOCK_INTERFACE_REQUEST
    message_type: int = u8(CODE)
    flags: int = u16()
    default_stream_id: int = u8()
    reserved2: int = u8()
    mmio_reporting_offset: int = u64()
    bind_p2p_address_mask: int = u64()


@dataclass(frozen=True)
class GET_DEVICE_INTERFACE_REPORT(TdispMessage):
    CODE = TdispRequest.GET_DEVICE_INTERFACE_REPORT
    message_type: int = u8(CODE)
    offset: int = u16()
    length: int = u16()


@dataclass(frozen=True)
class GET_DEVICE_INTERFACE_STATE(TdispMessage):
    CODE = TdispRequest.GET_DEVICE_INTERFACE_STATE
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class START_INTERFACE_REQUEST(TdispMessage):
    CODE = TdispRequest.START_INTERFACE_REQUEST
    message_type: int = u8(CODE)
    start_interface_nonce: bytes = raw(START_INTERFACE_NONCE_SIZE)


@dataclass(frozen=True)
class STOP_INTERFACE_REQUEST(TdispMessage):
    CODE = TdispRequest.STOP_INTERFACE_REQUEST
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class BIND_P2P_STREAM_REQUEST(TdispMessage):
    CODE = TdispRequest.BIND_P2P_STREAM_REQUEST
    message_type: int = u8(CODE)
    p2p_stream_id: int = u8()
    stream_config: int = u8()


@dataclass(frozen=True)
class UNBIND_P2P_STREAM_REQUEST(TdispMessage):
    CODE = TdispRequest.UNBIND_P2P_STREAM_REQUEST
    message_type: int = u8(CODE)
    p2p_stream_id: int = u8()


@dataclass(frozen=True)
class MMIO_RANGE(Struct):
    """One MMIO range of the device interface report (16 bytes).

    ``first_page`` is a 4 KiB page number or a byte address depending on the
    report's :class:`~vfiouser_tdisp.tdisp.report.FirstPageEncoding`; either
    way it includes the lock's MMIO_REPORTING_OFFSET.
    """

    first_page: int = u64()
    number_of_pages: int = u32()
    range_attributes: int = u16()
    range_id: int = u16()


@dataclass(frozen=True)
class SET_MMIO_ATTRIBUTE_REQUEST(TdispMessage):
    CODE = TdispRequest.SET_MMIO_ATTRIBUTE_REQUEST
    message_type: int = u8(CODE)
    first_page: int = u64()  # the embedded MMIO_RANGE, flattened
    number_of_pages: int = u32()
    range_attributes: int = u16()
    range_id: int = u16()


@dataclass(frozen=True)
class VDM_REQUEST(TdispMessage):
    CODE = TdispRequest.VDM_REQUEST
    message_type: int = u8(CODE)
    registry_id: int = u8()
    vendor_id_len: int = u8()
    vendor_id: bytes = counted("vendor_id_len")
    vendor_data: bytes = tail()


@dataclass(frozen=True)
class SET_TDISP_CONFIG_REQUEST(TdispMessage):
    CODE = TdispRequest.SET_TDISP_CONFIG_REQUEST
    message_type: int = u8(CODE)
    dsm_config: int = u32()


# -- responses ---------------------------------------------------------------------


@dataclass(frozen=True)
class TDISP_VERSION(TdispMessage):
    CODE = TdispResponse.TDISP_VERSION
    message_type: int = u8(CODE)
    version_num_count: int = u8()
    version_num_entry: bytes = counted("version_num_count")


@dataclass(frozen=True)
class TDISP_CAPABILITIES(TdispMessage):
    CODE = TdispResponse.TDISP_CAPABILITIES
    message_type: int = u8(CODE)
    dsm_caps: int = u32()
    req_msg_supported: bytes = raw(16)  # bit n: request code 0x81 + n
    lock_interface_flags_supported: int = u16()
    reserved2: bytes = raw(3)
    dev_addr_width: int = u8()
    num_req_this: int = u8()
    num_req_all: int = u8()


@dataclass(frozen=True)
class LOCK_INTERFACE_RESPONSE(TdispMessage):
    CODE = TdispResponse.LOCK_INTERFACE_RESPONSE
    message_type: int = u8(CODE)
    start_interface_nonce: bytes = raw(START_INTERFACE_NONCE_SIZE)


@dataclass(frozen=True)
class DEVICE_INTERFACE_REPORT(TdispMessage):
    CODE = TdispResponse.DEVICE_INTERFACE_REPORT
    message_type: int = u8(CODE)
    portion_length: int = u16()
    remainder_length: int = u16()
    report: bytes = counted("portion_length")


@dataclass(frozen=True)
class DEVICE_INTERFACE_STATE(TdispMessage):
    CODE = TdispResponse.DEVICE_INTERFACE_STATE
    message_type: int = u8(CODE)
    tdi_state: int = u8()


@dataclass(frozen=True)
class START_INTERFACE_RESPONSE(TdispMessage):
    CODE = TdispResponse.START_INTERFACE_RESPONSE
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class STOP_INTERFACE_RESPONSE(TdispMessage):
    CODE = TdispResponse.STOP_INTERFACE_RESPONSE
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class BIND_P2P_STREAM_RESPONSE(TdispMessage):
    CODE = TdispResponse.BIND_P2P_STREAM_RESPONSE
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class UNBIND_P2P_STREAM_RESPONSE(TdispMessage):
    CODE = TdispResponse.UNBIND_P2P_STREAM_RESPONSE
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class SET_MMIO_ATTRIBUTE_RESPONSE(TdispMessage):
    CODE = TdispResponse.SET_MMIO_ATTRIBUTE_RESPONSE
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class VDM_RESPONSE(TdispMessage):
    CODE = TdispResponse.VDM_RESPONSE
    message_type: int = u8(CODE)
    registry_id: int = u8()
    vendor_id_len: int = u8()
    vendor_id: bytes = counted("vendor_id_len")
    vendor_data: bytes = tail()


@dataclass(frozen=True)
class SET_TDISP_CONFIG_RESPONSE(TdispMessage):
    CODE = TdispResponse.SET_TDISP_CONFIG_RESPONSE
    message_type: int = u8(CODE)


@dataclass(frozen=True)
class TDISP_ERROR(TdispMessage):
    CODE = TdispResponse.TDISP_ERROR
    message_type: int = u8(CODE)
    error_code: int = u32()
    error_data: int = u32()
    extended_error_data: bytes = tail()


@dataclass(frozen=True)
class EXTENDED_ERROR_DATA(Struct):
    """TDISP_ERROR extended data for VENDOR_SPECIFIC_ERROR."""

    registry_id: int = u8()
    vendor_id_len: int = u8()
    vendor_id: bytes = counted("vendor_id_len")
    vendor_err_data: bytes = tail()


# -- device interface report -------------------------------------------------------


@dataclass(frozen=True)
class TDI_REPORT_STRUCTURE(Struct):
    """The device interface report (libspdm
    ``pci_tdisp_device_interface_report_struct_t``), returned in portions."""

    interface_info: int = u16()
    reserved: int = u16()
    msi_x_message_control: int = u16()
    lnr_control: int = u16()
    tph_control: int = u32()
    mmio_range_count: int = u32()
    mmio_range: list[MMIO_RANGE] = items(MMIO_RANGE, "mmio_range_count")
    device_specific_info_len: int = u32()
    device_specific_info: bytes = counted("device_specific_info_len")


# -- lookup ------------------------------------------------------------------------

REQUESTS: dict[int, type[TdispMessage]] = {
    cls.CODE: cls
    for cls in (
        GET_TDISP_VERSION, GET_TDISP_CAPABILITIES, LOCK_INTERFACE_REQUEST,
        GET_DEVICE_INTERFACE_REPORT, GET_DEVICE_INTERFACE_STATE, START_INTERFACE_REQUEST,
        STOP_INTERFACE_REQUEST, BIND_P2P_STREAM_REQUEST, UNBIND_P2P_STREAM_REQUEST,
        SET_MMIO_ATTRIBUTE_REQUEST, VDM_REQUEST, SET_TDISP_CONFIG_REQUEST,
    )
}

RESPONSES: dict[int, type[TdispMessage]] = {
    cls.CODE: cls
    for cls in (
        TDISP_VERSION, TDISP_CAPABILITIES, LOCK_INTERFACE_RESPONSE, DEVICE_INTERFACE_REPORT,
        DEVICE_INTERFACE_STATE, START_INTERFACE_RESPONSE, STOP_INTERFACE_RESPONSE,
        BIND_P2P_STREAM_RESPONSE, UNBIND_P2P_STREAM_RESPONSE, SET_MMIO_ATTRIBUTE_RESPONSE,
        VDM_RESPONSE, SET_TDISP_CONFIG_RESPONSE, TDISP_ERROR,
    )
}

# Response code of each request: request code - 0x80.
RESPONSE_FOR: dict[int, type[TdispMessage]] = {code: RESPONSES[code - 0x80] for code in REQUESTS}


def decode(data: bytes, table: dict[int, type[TdispMessage]]) -> TdispMessage:
    """Decode a whole message by its ``message_type`` (DecodeError if unknown)."""
    header, _ = TdispHeader.unpack_from(data)
    cls = table.get(header.message_type)
    if cls is None:
        raise DecodeError(f"unknown TDISP message type {header.message_type:#04x}")
    return cls.unpack(data)


def decode_request(data: bytes) -> TdispMessage:
    return decode(data, REQUESTS)


def decode_response(data: bytes) -> TdispMessage:
    return decode(data, RESPONSES)
