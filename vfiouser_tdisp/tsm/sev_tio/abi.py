"""AMD SEV-TIO: PSP command ids, command buffers, SLA buffers, data objects, status codes,
and the SNP guest messages of the TIO guest interface.

Declared once, with the names of the sources (reference/firmware-abi.md section D):
``enum sev_cmd`` / ``sev_ret_code`` of ``include/linux/psp-sev.h`` and the command
structures of ``drivers/crypto/ccp/sev-dev-tio.c`` ([AMDESE] tsm/tsm-staging; the SEV-TIO
Firmware Interface Specification #58271 rev 0.91 behind them), the guest message types,
layouts and status codes of the phase-2 guest series ([SEV-P2], [OVMM]), and the SNP
guest-message header of the SEV-SNP Firmware ABI (``struct snp_guest_msg_hdr``).  Offsets
are written next to each field; padding is declared as ``raw`` so ``pack()`` lays every
field at its offset.  Behaviour lives in :mod:`.psp`; what no public source defines
lives in :mod:`.model`.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from ...wire import Struct, raw, u8, u16, u32, u64

PAGE_SIZE = 0x1000

# --------------------------------------------------------------------------------------
# PSP commands (enum sev_cmd)                                   firmware-abi.md D.2


class SevCmd(enum.IntEnum):
    SNP_GCTX_CREATE = 0x93        # the guest context page (psp-sev.h)
    SNP_LAUNCH_UPDATE = 0xA1      # only the SECRETS page type is modeled (model.py)
    TIO_STATUS = 0xD0
    TIO_INIT = 0xD1
    TIO_DEV_CREATE = 0xD2
    TIO_DEV_RECLAIM = 0xD3
    TIO_DEV_CONNECT = 0xD4
    TIO_DEV_DISCONNECT = 0xD5
    TIO_DEV_STATUS = 0xD6
    TIO_DEV_MEASUREMENTS = 0xD7
    TIO_DEV_CERTIFICATES = 0xD8
    TIO_TDI_CREATE = 0xDA
    TIO_TDI_RECLAIM = 0xDB
    TIO_TDI_BIND = 0xDC
    TIO_TDI_UNBIND = 0xDD
    TIO_TDI_REPORT = 0xDE
    TIO_TDI_STATUS = 0xDF
    TIO_GUEST_REQUEST = 0xE0
    TIO_ASID_FENCE_CLEAR = 0xE1
    TIO_ASID_FENCE_STATUS = 0xE2
    TIO_TDI_INFO = 0xE3
    TIO_ROLL_KEY = 0xE4


class SevRet(enum.IntEnum):
    """sev_ret_code (psp-sev.h); the TIO codes 0x30..0x3F as in firmware-abi.md D.2."""

    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_LEN = 0x04
    INVALID_ADDRESS = 0x09
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17
    INCORRECT_BUFFER_LENGTH = 0x30
    EXPAND_BUFFER_LENGTH_REQUEST = 0x31
    SPDM_REQUEST = 0x32
    SPDM_ERROR = 0x33
    ERR_IN_DEV_CONN = 0x35
    INVALID_DEV_CTX = 0x36
    INVALID_TDI_CTX = 0x37
    INVALID_TDI = 0x38
    RECLAIM_REQUIRED = 0x39
    IN_USE = 0x3A
    INVALID_DEV_STATE = 0x3B
    INVALID_TDI_STATE = 0x3C
    DEV_CERT_CHANGED = 0x3D
    RESYNC_REQ = 0x3E
    RESPONSE_TOO_LARGE = 0x3F


# --------------------------------------------------------------------------------------
# Scatter-list addresses and buffers (sev-dev-tio.c)

SLA_PAGE_TYPE_DATA = 0
SLA_PAGE_TYPE_SCATTER = 1
SLA_PAGE_SIZE_4K = 0
SLA_PAGE_SIZE_2M = 1
SLA_PFN_SHIFT = 12
SLA_PFN_MASK = (1 << 40) - 1          # pfn = bits [51:12]
SLA_EOL = SLA_PFN_MASK << SLA_PFN_SHIFT   # pfn all ones, type/size 0
SLA_NULL = 0


def make_sla(addr: int, scatter: bool = False) -> int:
    """sla_addr_t for a 4 KiB page: page_type b0, page_size b1 (4K), pfn [51:12]."""
    if addr & (PAGE_SIZE - 1):
        raise ValueError(f"SLA page {addr:#x} is not 4 KiB aligned")
    return (addr & (SLA_PFN_MASK << SLA_PFN_SHIFT)) | \
        (SLA_PAGE_TYPE_SCATTER if scatter else SLA_PAGE_TYPE_DATA)


def sla_page_type(sla: int) -> int:
    return sla & 1


def sla_page_size(sla: int) -> int:
    return (sla >> 1) & 1


def sla_addr(sla: int) -> int:
    return sla & (SLA_PFN_MASK << SLA_PFN_SHIFT)


SLA_BUFFER_FLAG_ENCRYPTION = 1 << 0


@dataclass(frozen=True)
class SlaBufferHdr(Struct):
    """struct sla_buffer_hdr (0x40 bytes) at the start of every SLA buffer."""

    capacity_sz: int = u32()     # 0x00 total capacity of the buffer in bytes
    payload_sz: int = u32()      # 0x04 bytes of BUFFER_PAYLOAD (multiple of 32)
    flags: int = u32()           # 0x08 ENCRYPTION b0
    reserved1: bytes = raw(4)    # 0x0C
    iv: bytes = raw(16)          # 0x10
    authtag: bytes = raw(16)     # 0x20
    reserved2: bytes = raw(16)   # 0x30


SLA_BUFFER_HDR_SIZE = 0x40


class SpdmDobjId(enum.IntEnum):
    NONE = 0
    REQ = 1
    RESP = 2
    CERTIFICATE = 4
    MEASUREMENT = 5
    REPORT = 6


class DobjDataType(enum.IntEnum):
    """spdm_data_type_t: how the host carries a REQ/RESP object (DOE type 1 or 2)."""

    SPDM = 1
    SECURE_SPDM = 2


DOBJ_VERSION = 0x0100   # major 1, minor 0 (dobj_response_init)


@dataclass(frozen=True)
class SpdmDobjHdrReq(Struct):
    """struct spdm_dobj_hdr_req / _resp (0x10): spdm_dobj_hdr + data_type."""

    id: int = u32()              # 0x00 SpdmDobjId.REQ / RESP
    length: int = u32()          # 0x04 object length INCLUDING this header
    version: int = u16(DOBJ_VERSION)  # 0x08 minor [7:0], major [15:8]
    data_type: int = u8()        # 0x0A DobjDataType
    reserved2: bytes = raw(5)    # 0x0B


SPDM_DOBJ_HDR_REQ_SIZE = 0x10


@dataclass(frozen=True)
class SpdmDobjHdrOutput(Struct):
    """struct spdm_dobj_hdr_cert / _meas / _report (0x20)."""

    id: int = u32()              # 0x00 CERTIFICATE / MEASUREMENT / REPORT
    length: int = u32()          # 0x04 including this header, multiple of 32
    version: int = u16(DOBJ_VERSION)  # 0x08
    reserved1: bytes = raw(6)    # 0x0A
    device_id: int = u16()       # 0x10
    segment_id: int = u8()       # 0x12
    type: int = u8()             # 0x13 1: SPDM certificate / measurement / report
    reserved2: bytes = raw(12)   # 0x14


SPDM_DOBJ_HDR_OUTPUT_SIZE = 0x20


@dataclass(frozen=True)
class SpdmCtrl(Struct):
    """struct spdm_ctrl: the four SLA buffers of every SPDM-aware command."""

    req: int = u64()             # +0x00
    resp: int = u64()            # +0x08
    scratch: int = u64()         # +0x10
    output: int = u64()          # +0x18


# --------------------------------------------------------------------------------------
# Command buffers (sev-dev-tio.c, struct sev_data_tio_*)


@dataclass(frozen=True)
class TioStatusCmd(Struct):
    """sev_data_tio_status (0x10)."""

    length: int = u32()          # 0x00
    reserved: bytes = raw(4)     # 0x04
    status_paddr: int = u64()    # 0x08


TIO_STATUS_FLAG_TIO_EN = 1 << 0
TIO_STATUS_FLAG_TIO_INIT_DONE = 1 << 1


@dataclass(frozen=True)
class TioStatus(Struct):
    """struct sev_tio_status (0x40), written by TIO_STATUS."""

    length: int = u32()                  # 0x00
    flags: int = u32()                   # 0x04 tio_en b0, tio_init_done b1
    spdm_req_size_min: int = u32()       # 0x08
    spdm_req_size_max: int = u32()       # 0x0C
    spdm_scratch_size_min: int = u32()   # 0x10
    spdm_scratch_size_max: int = u32()   # 0x14
    spdm_out_size_min: int = u32()       # 0x18
    spdm_out_size_max: int = u32()       # 0x1C
    spdm_rsp_size_min: int = u32()       # 0x20
    spdm_rsp_size_max: int = u32()       # 0x24
    devctx_size: int = u32()             # 0x28
    tdictx_size: int = u32()             # 0x2C
    tio_crypto_alg: int = u32()          # 0x30
    reserved2: bytes = raw(12)           # 0x34


@dataclass(frozen=True)
class TioInitCmd(Struct):
    """sev_data_tio_init (0x10)."""

    length: int = u32()
    reserved: bytes = raw(12)


@dataclass(frozen=True)
class TioDevCreateCmd(Struct):
    """sev_data_tio_dev_create (0x20)."""

    length: int = u32()          # 0x00
    reserved1: bytes = raw(4)    # 0x04
    dev_ctx_sla: int = u64()     # 0x08
    device_id: int = u16()       # 0x10 routing id (BDF)
    root_port_id: int = u16()    # 0x12
    segment_id: int = u8()       # 0x14
    reserved2: bytes = raw(11)   # 0x15


@dataclass(frozen=True)
class TioDevReclaimCmd(Struct):
    """sev_data_tio_dev_reclaim (0x10)."""

    length: int = u32()
    reserved: bytes = raw(4)
    dev_ctx_sla: int = u64()     # 0x08


@dataclass(frozen=True)
class TioDevConnectCmd(Struct):
    """sev_data_tio_dev_connect (0x50)."""

    length: int = u32()          # 0x00
    reserved1: bytes = raw(4)    # 0x04
    spdm_ctrl: bytes = raw(32)   # 0x08 SpdmCtrl
    reserved2: bytes = raw(8)    # 0x28
    dev_ctx_sla: int = u64()     # 0x30
    tc_mask: int = u8()          # 0x38 bit 0 required
    cert_slot: int = u8()        # 0x39
    reserved3: bytes = raw(6)    # 0x3A
    ide_stream_id: bytes = raw(8)  # 0x40 one per traffic class
    reserved4: bytes = raw(8)    # 0x48


TIO_DEV_DISCONNECT_FLAG_FORCE = 1 << 0


@dataclass(frozen=True)
class TioDevDisconnectCmd(Struct):
    """sev_data_tio_dev_disconnect (0x30)."""

    length: int = u32()          # 0x00
    flags: int = u32()           # 0x04 FORCE b0
    spdm_ctrl: bytes = raw(32)   # 0x08
    dev_ctx_sla: int = u64()     # 0x28


@dataclass(frozen=True)
class TioDevStatusCmd(Struct):
    """sev_data_tio_dev_status (0x20); the output structure is [MODEL] (model.py)."""

    length: int = u32()
    reserved1: bytes = raw(4)
    dev_ctx_sla: int = u64()     # 0x08
    status_paddr: int = u64()    # 0x10
    reserved2: bytes = raw(8)    # 0x18


TIO_DEV_MEASUREMENTS_FLAG_RAW = 1 << 0


@dataclass(frozen=True)
class TioDevMeasCmd(Struct):
    """sev_data_tio_dev_meas (0x50)."""

    length: int = u32()          # 0x00
    flags: int = u32()           # 0x04 RAW (raw bitstream) b0
    spdm_ctrl: bytes = raw(32)   # 0x08
    dev_ctx_sla: int = u64()     # 0x28
    meas_nonce: bytes = raw(32)  # 0x30


@dataclass(frozen=True)
class TioDevCertsCmd(Struct):
    """sev_data_tio_dev_certs (0x30); also TIO_ROLL_KEY (sev_data_tio_roll_key)."""

    length: int = u32()
    reserved: bytes = raw(4)
    spdm_ctrl: bytes = raw(32)   # 0x08
    dev_ctx_sla: int = u64()     # 0x28


@dataclass(frozen=True)
class TioTdiCreateCmd(Struct):
    """sev_data_tio_tdi_create (0x30); interface_id = TDISP INTERFACE_ID (12 bytes)."""

    length: int = u32()          # 0x00
    reserved: bytes = raw(4)     # 0x04
    dev_ctx_sla: int = u64()     # 0x08
    tdi_ctx_sla: int = u64()     # 0x10
    function_id: int = u32()     # 0x18 interface_id.function_id (host RID)
    interface_reserved: bytes = raw(8)  # 0x1C
    reserved2: bytes = raw(12)   # 0x24


@dataclass(frozen=True)
class TioTdiReclaimCmd(Struct):
    """sev_data_tio_tdi_reclaim (0x20)."""

    length: int = u32()
    reserved: bytes = raw(4)
    dev_ctx_sla: int = u64()     # 0x08
    tdi_ctx_sla: int = u64()     # 0x10
    reserved2: bytes = raw(8)    # 0x18


TIO_TDI_BIND_FLAG_NO_FW_UPDATE = 1 << 0
TIO_TDI_BIND_FLAG_LOCK_MSIX = 1 << 2
TIO_TDI_BIND_FLAG_BIND_P2P = 1 << 3
TIO_TDI_BIND_FLAG_ALL_REQUEST_REDIRECT = 1 << 4
TIO_TDI_BIND_RUN_FORCE = 1 << 0


@dataclass(frozen=True)
class TioTdiBindCmd(Struct):
    """sev_data_tio_tdi_bind (0x50)."""

    length: int = u32()          # 0x00
    reserved: bytes = raw(4)     # 0x04
    spdm_ctrl: bytes = raw(32)   # 0x08
    dev_ctx_sla: int = u64()     # 0x28
    tdi_ctx_sla: int = u64()     # 0x30
    gctx_paddr: int = u64()      # 0x38
    guest_device_id: int = u16()  # 0x40 the guest's RID of the TDI
    tdisp_lock_if_flags: int = u16()  # 0x42 TIO_TDI_BIND_FLAG_*
    run_flags: int = u16()       # 0x44 TIO_TDI_BIND_RUN_FORCE
    reserved3: bytes = raw(10)   # 0x46


TIO_TDI_UNBIND_FLAG_FORCE = 1 << 0


@dataclass(frozen=True)
class TioTdiUnbindCmd(Struct):
    """sev_data_tio_tdi_unbind / _tdi_report (0x40)."""

    length: int = u32()          # 0x00
    flags: int = u32()           # 0x04 FORCE b0 (unbind); reserved (report)
    spdm_ctrl: bytes = raw(32)   # 0x08
    dev_ctx_sla: int = u64()     # 0x28
    tdi_ctx_sla: int = u64()     # 0x30
    gctx_paddr: int = u64()      # 0x38


@dataclass(frozen=True)
class TioTdiStatusCmd(Struct):
    """TIO_TDI_STATUS / TIO_TDI_INFO: layout not published ([MODEL], model.py): the
    shape of TIO_DEV_STATUS with the TDI context added (0x20)."""

    length: int = u32()
    reserved1: bytes = raw(4)
    dev_ctx_sla: int = u64()     # 0x08
    tdi_ctx_sla: int = u64()     # 0x10
    status_paddr: int = u64()    # 0x18


@dataclass(frozen=True)
class TioGuestRequestCmd(Struct):
    """sev_data_tio_guest_request (0x50)."""

    length: int = u32()          # 0x00
    reserved: bytes = raw(4)     # 0x04
    spdm_ctrl: bytes = raw(32)   # 0x08
    dev_ctx_sla: int = u64()     # 0x28
    tdi_ctx_sla: int = u64()     # 0x30
    gctx_paddr: int = u64()      # 0x38
    req_paddr: int = u64()       # 0x40 the guest's encrypted request page
    res_paddr: int = u64()       # 0x48 the guest's response page


@dataclass(frozen=True)
class TioAsidFenceClearCmd(Struct):
    """sev_data_tio_asid_fence_clear (0x20)."""

    length: int = u32()
    reserved1: bytes = raw(4)
    dev_ctx_sla: int = u64()     # 0x08
    gctx_paddr: int = u64()      # 0x10
    reserved2: bytes = raw(8)    # 0x18


@dataclass(frozen=True)
class TioAsidFenceStatusCmd(Struct):
    """sev_data_tio_asid_fence_status (0x20); *status_pa: DMA [1:0], MMIO [3:2]."""

    length: int = u32()
    reserved1: bytes = raw(4)
    dev_ctx_sla: int = u64()     # 0x08
    asid: int = u32()            # 0x10
    status_pa: int = u64()       # 0x14
    reserved2: bytes = raw(4)    # 0x1C


TIO_FENCE_DMA_NOT_FENCED = 0
TIO_FENCE_DMA_ERROR_FENCED = 1
TIO_FENCE_DMA_DEFAULT_FENCED = 3
TIO_FENCE_MMIO_NOT_FENCED = 0
TIO_FENCE_MMIO_FENCED = 3


@dataclass(frozen=True)
class SnpAddrCmd(Struct):
    """sev_data_snp_addr: SNP_GCTX_CREATE's one argument (0x08)."""

    address: int = u64()


SNP_PAGE_TYPE_SECRETS = 0x5


@dataclass(frozen=True)
class SnpLaunchUpdateCmd(Struct):
    """sev_data_snp_launch_update (0x20); page_size b0, page_type [3:1], imi b4."""

    gctx_paddr: int = u64()      # 0x00
    page_info: int = u32()       # 0x08
    reserved2: bytes = raw(4)    # 0x0C
    address: int = u64()         # 0x10 the page
    vmpl_perms: int = u32()      # 0x18
    reserved3: bytes = raw(4)    # 0x1C


@dataclass(frozen=True)
class SnpSecretsPage(Struct):
    """The head of struct snp_secrets_page (version 2..3): the VM platform communication
    keys the guest seals its messages with."""

    version: int = u32()         # 0x00
    imien: int = u32()           # 0x04
    fms: int = u32()             # 0x08
    reserved1: bytes = raw(4)    # 0x0C
    gosvw: bytes = raw(16)       # 0x10
    vmpck0: bytes = raw(32)      # 0x20
    vmpck1: bytes = raw(32)      # 0x40
    vmpck2: bytes = raw(32)      # 0x60
    vmpck3: bytes = raw(32)      # 0x80


# --------------------------------------------------------------------------------------
# Guest interface (firmware-abi.md D.4): VMGEXITs and guest messages

SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST = 0x80000020
SVM_VMGEXIT_SEV_TIO_OP = 0x80000021
GHCB_HV_FT_SEV_TIO = 1 << 7

TIO_GUEST_REQUEST_PARAM_STATE = 1 << 0
TIO_GUEST_REQUEST_PARAM_REPORT = 1 << 3


class SevTioOp(enum.IntEnum):
    """SEV_TIO_OP action (exitinfo1 >> 32)."""

    BIND = 0
    UNBIND = 1
    RUN = 2
    STOP = 3


class TioMsgType(enum.IntEnum):
    TIO_MSG_TDI_INFO_REQ = 19
    TIO_MSG_TDI_INFO_RSP = 20
    TIO_MSG_MMIO_VALIDATE_REQ = 21
    TIO_MSG_MMIO_VALIDATE_RSP = 22
    TIO_MSG_MMIO_CONFIG_REQ = 23
    TIO_MSG_MMIO_CONFIG_RSP = 24
    TIO_MSG_SDTE_WRITE_REQ = 25
    TIO_MSG_SDTE_WRITE_RSP = 26


TIO_MSG_VERSION = 1


class TdiStatus(enum.IntEnum):
    """TDI_INFO tdi_status as the guest sees it."""

    BOUND = 0
    INVALID = 1
    UNBOUND = 2


class MmioValidateStatus(enum.IntEnum):
    """MMIO_VALIDATE response status ([SEV-P2], 2026)."""

    SUCCESS = 0
    INVALID_TDI = 1
    TDI_UNBOUND = 2
    NOT_ASSIGNED = 3
    NOT_IO = 4
    NOT_UNIFORM = 5
    NOT_IMMUTABLE = 6
    NOT_MAPPED = 7
    NOT_REPORTED = 8
    OUT_OF_RANGE = 9
    NOT_4K = 10


class SdteWriteStatus(enum.IntEnum):
    SUCCESS = 0
    INVALID_TDI = 1
    TDI_NOT_BOUND = 2
    RESERVED = 3


MEAS_DIGEST_INFO_VALID = 1 << 0
MEAS_DIGEST_INFO_FRESH = 1 << 1
MMIO_VALIDATE_FLAG_VALIDATED = 1 << 0
MMIO_VALIDATE_FLAG_FORCE_VALIDATED = 1 << 1
MMIO_VALIDATE_RSP_FLAG_CHANGED = 1 << 0
MMIO_CONFIG_FLAG_MSIX_TABLE = 1 << 0
MMIO_CONFIG_FLAG_MSIX_PBA = 1 << 1
MMIO_CONFIG_FLAG_NON_TEE_MEM = 1 << 2
MMIO_CONFIG_FLAG_MEM_ATTR_UPDATABLE = 1 << 3


@dataclass(frozen=True)
class TioMsgTdiInfoReq(Struct):
    guest_device_id: int = u16()  # 0x00
    reserved: bytes = raw(14)     # 0x02


@dataclass(frozen=True)
class TioMsgTdiInfoRsp(Struct):
    """192 bytes."""

    guest_device_id: int = u16()  # 0x00
    tdi_status: int = u16()       # 0x02 TdiStatus
    reserved1: bytes = raw(12)    # 0x04
    meas_digest_info: int = u32()  # 0x10 valid b0, fresh b1
    lock_flags: int = u32()       # 0x14 the LOCK_INTERFACE flags of the bind
    spdm_algos: int = u64()       # 0x18
    certs_digest: bytes = raw(48)  # 0x20
    meas_digest: bytes = raw(48)   # 0x50
    interface_report_digest: bytes = raw(48)  # 0x80
    tdi_report_count: int = u64()  # 0xB0
    reserved2: bytes = raw(8)      # 0xB8


@dataclass(frozen=True)
class TioMsgMmioValidateReq(Struct):
    """48 bytes."""

    guest_device_id: int = u16()  # 0x00
    reserved1: bytes = raw(14)    # 0x02
    subrange_base: int = u64()    # 0x10 guest physical address
    subrange_page_count: int = u32()  # 0x18
    range_offset: int = u32()     # 0x1C pages from the range's first page
    flags: int = u16()            # 0x20 validated b0, force_validated b1
    range_id: int = u16()         # 0x22
    reserved2: bytes = raw(12)    # 0x24


@dataclass(frozen=True)
class TioMsgMmioValidateRsp(Struct):
    """48 bytes."""

    guest_device_id: int = u16()  # 0x00
    status: int = u16()           # 0x02 MmioValidateStatus
    reserved1: bytes = raw(12)    # 0x04
    subrange_base: int = u64()    # 0x10
    subrange_page_count: int = u32()  # 0x18
    range_offset: int = u32()     # 0x1C
    flags: int = u16()            # 0x20 changed b0
    range_id: int = u16()         # 0x22
    reserved2: bytes = raw(12)    # 0x24


@dataclass(frozen=True)
class TioMsgMmioConfigReq(Struct):
    """16 bytes."""

    guest_device_id: int = u16()  # 0x00
    reserved1: bytes = raw(2)     # 0x02
    flags: int = u16()            # 0x04 non_tee_mem b2
    range_id: int = u16()         # 0x06
    write: int = u32()            # 0x08 0: read the attributes, 1: write flags
    reserved2: bytes = raw(4)     # 0x0C


@dataclass(frozen=True)
class TioMsgMmioConfigRsp(Struct):
    """16 bytes."""

    guest_device_id: int = u16()  # 0x00
    status: int = u16()           # 0x02
    flags: int = u16()            # 0x04 msix_table b0, msix_pba b1, non_tee_mem b2, updatable b3
    range_id: int = u16()         # 0x06
    write: int = u32()            # 0x08
    reserved: bytes = raw(4)      # 0x0C


@dataclass(frozen=True)
class TioMsgSdteWriteReq(Struct):
    """80 bytes."""

    guest_device_id: int = u16()  # 0x00
    reserved: bytes = raw(14)     # 0x02
    sdte: bytes = raw(64)         # 0x10 the secure device table entry


@dataclass(frozen=True)
class TioMsgSdteWriteRsp(Struct):
    """16 bytes."""

    guest_device_id: int = u16()  # 0x00
    status: int = u16()           # 0x02 SdteWriteStatus
    reserved: bytes = raw(12)     # 0x04


@dataclass(frozen=True)
class Sdte(Struct):
    """The secure DTE (64 bytes) as far as the guest sets it: V @0 b0, IR b61, IW b62;
    VMPL @24 [50:49]; vTOM_en @40 b0, virtual_tom [31:1]; the other qwords 0."""

    qw0: int = u64()              # 0x00 V b0, IR b61, IW b62
    qw1: int = u64()              # 0x08
    qw2: int = u64()              # 0x10
    qw3: int = u64()              # 0x18 VMPL [50:49]
    qw4: int = u64()              # 0x20
    qw5: int = u64()              # 0x28 vTOM_en b0, virtual_tom [31:1]
    qw6: int = u64()              # 0x30
    qw7: int = u64()              # 0x38


SDTE_V = 1 << 0
SDTE_IR = 1 << 61
SDTE_IW = 1 << 62
SDTE_VMPL_SHIFT = 49
SDTE_VTOM_EN = 1 << 0

# Evidence blobs returned with a TDI_INFO request (param REPORT) in a GUID table.
GUID_MEASUREMENTS = uuid.UUID("5caa80c6-12ef-401a-b364-ec59a93abe3f")
GUID_CERTIFICATES = uuid.UUID("078ccb75-2644-49e8-afe7-5686c5cf72f1")
GUID_REPORT = uuid.UUID("70dc5b0e-0cc0-4cd5-97bb-ff0ba25bf320")


# --------------------------------------------------------------------------------------
# SNP guest message framing (SEV-SNP Firmware ABI, struct snp_guest_msg_hdr)

SNP_AEAD_AES_256_GCM = 1
SNP_MSG_HDR_VERSION = 1
SNP_MSG_HDR_SIZE = 0x60
SNP_MSG_AAD_OFFSET = 0x30          # the AAD is the header from `algo` to its end
SNP_AUTHTAG_LEN = 16               # AES-GCM tag in authtag[0:16]


@dataclass(frozen=True)
class SnpGuestMsgHdr(Struct):
    """struct snp_guest_msg_hdr (0x60)."""

    authtag: bytes = raw(32)     # 0x00
    msg_seqno: int = u64()       # 0x20
    rsvd1: bytes = raw(8)        # 0x28
    algo: int = u8()             # 0x30 SNP_AEAD_AES_256_GCM
    hdr_version: int = u8()      # 0x31
    hdr_sz: int = u16()          # 0x32
    msg_type: int = u8()         # 0x34
    msg_version: int = u8()      # 0x35
    msg_sz: int = u16()          # 0x36
    rsvd2: bytes = raw(4)        # 0x38
    msg_vmpck: int = u8()        # 0x3C
    rsvd3: bytes = raw(35)       # 0x3D


# The request/response structure of each guest message type.
TIO_MSG_REQUESTS: dict[TioMsgType, type[Struct]] = {
    TioMsgType.TIO_MSG_TDI_INFO_REQ: TioMsgTdiInfoReq,
    TioMsgType.TIO_MSG_MMIO_VALIDATE_REQ: TioMsgMmioValidateReq,
    TioMsgType.TIO_MSG_MMIO_CONFIG_REQ: TioMsgMmioConfigReq,
    TioMsgType.TIO_MSG_SDTE_WRITE_REQ: TioMsgSdteWriteReq,
}
TIO_MSG_RESPONSES: dict[TioMsgType, type[Struct]] = {
    TioMsgType.TIO_MSG_TDI_INFO_RSP: TioMsgTdiInfoRsp,
    TioMsgType.TIO_MSG_MMIO_VALIDATE_RSP: TioMsgMmioValidateRsp,
    TioMsgType.TIO_MSG_MMIO_CONFIG_RSP: TioMsgMmioConfigRsp,
    TioMsgType.TIO_MSG_SDTE_WRITE_RSP: TioMsgSdteWriteRsp,
}
