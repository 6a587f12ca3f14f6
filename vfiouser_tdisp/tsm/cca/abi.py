"""Arm CCA device-assignment ABI: call numbers, status codes, states, structures.

Declared once, with the specification's names, from TF-RMM ``smc-rmi.h`` /
``smc-rsi.h`` (main @9a7f8ef4, RMM 1.1-alp17 / 2.0-bet0 DA), the Arm RHI 1.0-bet1
ACS ``val_rhi.h`` and the Linux RFC v4 guest ``rhi.h`` as summarised in
``reference/firmware-abi.md`` section C.  Offsets of every structure are the
documented ones; padding is declared as ``raw`` fields so that ``pack()`` lays
each field at its offset.  Behaviour lives in :mod:`.rmm`; what no public
specification defines lives in :mod:`.model`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ...wire import Struct, raw, u8, u16, u32, u64

GRANULE_SIZE = 0x1000

# --------------------------------------------------------------------------------------
# RMI (host -> RMM), SMC64 fast calls, FID = 0xC4000150 + offset   (firmware-abi.md C.2)


class RmiFid(enum.IntEnum):
    RMI_VERSION = 0xC4000150
    RMI_GRANULE_DELEGATE = 0xC4000151
    RMI_GRANULE_UNDELEGATE = 0xC4000152
    RMI_REALM_CREATE = 0xC4000158
    RMI_REALM_DESTROY = 0xC4000159
    RMI_REC_CREATE = 0xC400015A
    RMI_REC_DESTROY = 0xC400015B
    RMI_REC_ENTER = 0xC400015C
    RMI_FEATURES = 0xC4000165
    RMI_PDEV_ABORT = 0xC4000174
    RMI_PDEV_COMMUNICATE = 0xC4000175
    RMI_PDEV_CREATE = 0xC4000176
    RMI_PDEV_DESTROY = 0xC4000177
    RMI_PDEV_GET_STATE = 0xC4000178
    RMI_PDEV_STREAM_KEY_REFRESH = 0xC400017A
    RMI_PDEV_SET_PUBKEY = 0xC400017B
    RMI_PDEV_STOP = 0xC400017C
    RMI_VDEV_ABORT = 0xC4000185
    RMI_VDEV_COMMUNICATE = 0xC4000186
    RMI_VDEV_CREATE = 0xC4000187
    RMI_VDEV_DESTROY = 0xC4000188
    RMI_VDEV_GET_STATE = 0xC4000189
    RMI_VDEV_UNLOCK = 0xC400018A
    RMI_VDEV_COMPLETE = 0xC400018E
    RMI_VDEV_GET_INTERFACE_REPORT = 0xC40001D0
    RMI_VDEV_GET_MEASUREMENTS = 0xC40001D1
    RMI_VDEV_LOCK = 0xC40001D2
    RMI_VDEV_START = 0xC40001D3
    RMI_PDEV_STREAM_CONNECT = 0xC4000204
    RMI_PDEV_STREAM_DISCONNECT = 0xC4000205
    RMI_PDEV_STREAM_COMPLETE = 0xC4000206
    RMI_PDEV_STREAM_KEY_PURGE = 0xC4000207


class RmiStatus(enum.IntEnum):
    RMI_SUCCESS = 0
    RMI_ERROR_INPUT = 1
    RMI_ERROR_REALM = 2
    RMI_ERROR_REC = 3
    RMI_ERROR_RTT = 4
    RMI_ERROR_NOT_SUPPORTED = 5
    RMI_ERROR_DEVICE = 6
    RMI_ERROR_RTT_AUX = 7
    RMI_ERROR_PSMMU_ST = 8
    RMI_ERROR_DPT = 9
    RMI_BUSY = 10
    RMI_ERROR_GLOBAL = 11
    RMI_ERROR_TRACKING = 12
    RMI_INCOMPLETE = 13
    RMI_BLOCKED = 14
    RMI_ERROR_GPT = 15
    RMI_ERROR_GRANULE = 16


class RmiPdevState(enum.IntEnum):
    """RmiPdevState (firmware-abi.md C.4)."""

    NEW = 0
    NEEDS_KEY = 1
    HAS_KEY = 2
    READY = 3
    STOPPED = 4
    ERROR = 5


class RmiVdevState(enum.IntEnum):
    """RmiVdevState (firmware-abi.md C.5)."""

    NEW = 0
    UNLOCKED = 1
    LOCKED = 2
    STARTED = 3
    ERROR = 4
    KEY_REFRESH = 5   # only with VDEV_KROU, which this RMM does not advertise
    KEY_PURGE = 6


class RmiPdevCategory(enum.IntEnum):
    """rmi_pdev_params.flags[2:1]."""

    RP = 0
    EP_OFF_CHIP = 1
    EP_ON_CHIP = 2


RMI_PDEV_FLAGS_SPDM = 1 << 0
RMI_PDEV_FLAGS_CATEGORY_SHIFT = 1
RMI_PDEV_FLAGS_CATEGORY_MASK = 0b11 << RMI_PDEV_FLAGS_CATEGORY_SHIFT


class RmiHashAlgo(enum.IntEnum):
    RMI_HASH_SHA_256 = 0
    RMI_HASH_SHA_512 = 1
    RMI_HASH_SHA_384 = 2


class RmiSignatureAlgorithm(enum.IntEnum):
    RMI_SIGNATURE_ALGORITHM_RSASSA_3072 = 0
    RMI_SIGNATURE_ALGORITHM_ECDSA_P256 = 1
    RMI_SIGNATURE_ALGORITHM_ECDSA_P384 = 2


class RmiDevCommEnterStatus(enum.IntEnum):
    NONE = 0
    RESPONSE = 1
    ERROR = 2


class RmiDevCommExitFlags(enum.IntFlag):
    REQ_CACHE = 1 << 0
    RSP_CACHE = 1 << 1
    REQ_SEND = 1 << 2
    RSP_WAIT = 1 << 3
    RSP_RESET = 1 << 4
    MULTI = 1 << 5
    STREAM_WAIT = 1 << 6


class RmiDevCommObject(enum.IntEnum):
    VCA = 0
    CERTIFICATE = 1
    MEASUREMENTS = 2
    INTERFACE_REPORT = 3


class RmiDevCommProtocol(enum.IntEnum):
    SPDM = 0
    SECURE_SPDM = 1


class RmiStreamType(enum.IntEnum):
    NON_TEE = 0
    NCOH = 1
    COH = 2
    NCOH_SYS = 3
    COH_SYS = 4


class RmiRecExitReason(enum.IntEnum):
    RMI_EXIT_SYNC = 0
    RMI_EXIT_IRQ = 1
    RMI_EXIT_FIQ = 2
    RMI_EXIT_PSCI = 3
    RMI_EXIT_RIPAS_CHANGE = 4
    RMI_EXIT_HOST_CALL = 5
    RMI_EXIT_SERROR = 6
    RMI_EXIT_S2AP_CHANGE = 7
    RMI_EXIT_VDEV_REQUEST = 8
    RMI_EXIT_DEV_MEM_MAP = 9
    RMI_EXIT_VDEV_P2P_BINDING = 10


# RMI feature register 2 (RMI_FEATURES index 2) and register 1 hash bits
RMI_FEATURE_REGISTER_2_DA = 1 << 0
RMI_FEATURE_REGISTER_2_DA_COH = 1 << 1
RMI_FEATURE_REGISTER_2_VSMMU = 1 << 2
RMI_FEATURE_REGISTER_2_ATS = 1 << 3
RMI_FEATURE_REGISTER_2_MAX_VDEVS_ORDER_SHIFT = 4
RMI_FEATURE_REGISTER_2_VDEV_KROU = 1 << 8
RMI_FEATURE_REGISTER_2_NON_TEE_STREAM = 1 << 9
RMI_FEATURE_REGISTER_1_HASH_SHA_256 = 1 << 3
RMI_FEATURE_REGISTER_1_HASH_SHA_512 = 1 << 4
RMI_FEATURE_REGISTER_1_HASH_SHA_384 = 1 << 5

# --------------------------------------------------------------------------------------
# RMI structures (firmware-abi.md C.3; offsets in bytes, each structure one 4 KiB granule)


@dataclass(frozen=True)
class RmiAddressRange(Struct):
    base: int = u64()
    top: int = u64()   # exclusive


@dataclass(frozen=True)
class RmiPdevParams(Struct):
    """rmi_pdev_params (4 KiB)."""

    flags: int = u64()          # 0x00: SPDM b0, category [2:1]
    hb_base: int = u64()        # 0x08
    pdev_id: int = u64()        # 0x10 (BDF)
    routing_id: int = u64()     # 0x18 (<= 0xFFFF)
    id_index: int = u64()       # 0x20 (certificate slot)
    rid_base: int = u32()       # 0x28
    _pad_2c: bytes = raw(4)
    rid_top: int = u64()        # 0x30 (exclusive)
    hash_algo: int = u8()       # 0x38
    _pad_39: bytes = raw(GRANULE_SIZE - 0x39)


@dataclass(frozen=True)
class RmiPublicKeyParams(Struct):
    """rmi_public_key_params (4 KiB)."""

    key: bytes = raw(1024)      # 0x000
    metadata: bytes = raw(1024)  # 0x400
    key_len: int = u64()        # 0x800
    metadata_len: int = u64()   # 0x808
    algo: int = u8()            # 0x810
    _pad_811: bytes = raw(GRANULE_SIZE - 0x811)


RMI_DEV_COMM_ENTER_OFFSET = 0x000
RMI_DEV_COMM_EXIT_OFFSET = 0x800


@dataclass(frozen=True)
class RmiDevCommEnter(Struct):
    """rmi_dev_comm_data.enter @0x000."""

    status: int = u8()          # 0x00
    _pad_01: bytes = raw(7)
    req_addr: int = u64()       # 0x08
    resp_addr: int = u64()      # 0x10
    resp_len: int = u64()       # 0x18


@dataclass(frozen=True)
class RmiDevCommExit(Struct):
    """rmi_dev_comm_data.exit @0x800."""

    flags: int = u64()              # 0x00
    cache_req_offset: int = u64()   # 0x08
    cache_req_len: int = u64()      # 0x10
    cache_rsp_offset: int = u64()   # 0x18
    cache_rsp_len: int = u64()      # 0x20
    cache_obj_id: int = u8()        # 0x28
    _pad_29: bytes = raw(7)
    protocol: int = u8()            # 0x30
    _pad_31: bytes = raw(7)
    req_delay: int = u64()          # 0x38
    req_len: int = u64()            # 0x40
    timeout: int = u64()            # 0x48


RMI_VDEV_PARAMS_MAX_ADDR_RANGES = 8
RMI_VDEV_PARAMS_ADDR_RANGE_OFFSET = 0x200


@dataclass(frozen=True)
class RmiVdevParams(Struct):
    """rmi_vdev_params: the fixed head; addr_range[] sits at 0x200."""

    flags: int = u64()          # 0x00 (must be 0)
    vdev_id: int = u64()        # 0x08 (Linux: the guest RID)
    tdi_id: int = u64()         # 0x10 (host RID, inside [rid_base, rid_top))
    _pad_18: bytes = raw(8)
    vsmmu_addr: int = u64()     # 0x20
    vsid: int = u64()           # 0x28
    num_addr_range: int = u64()  # 0x30 (<= 8)


RMI_STREAM_PARAMS_MAX_ADDR_RANGES = 16
RMI_STREAM_PARAMS_ADDR_RANGE_OFFSET = 0x100


@dataclass(frozen=True)
class RmiPdevStreamParams(Struct):
    """rmi_pdev_stream_params: the fixed head; addr_range[] sits at 0x100."""

    flags: int = u64()          # 0x00
    stream_type: int = u8()     # 0x08
    _pad_09: bytes = raw(7)
    pdev_1: int = u64()         # 0x10 (endpoint)
    pdev_2: int = u64()         # 0x18 (root port)
    ide_sid: int = u64()        # 0x20
    num_addr_range: int = u64()  # 0x28 (<= 16)


RMI_VDEV_MEASURE_FLAGS_RAW = 1 << 0


@dataclass(frozen=True)
class RmiVdevMeasureParams(Struct):
    """rmi_vdev_measure_params (4 KiB): flags @0, nonce[32] @0x100."""

    flags: int = u64()
    _pad_08: bytes = raw(0xF8)
    nonce: bytes = raw(32)


REC_NR_GPRS = 31
RMI_REC_RUN_ENTER_GPRS = 0x200
RMI_REC_RUN_EXIT = 0x800
RMI_REC_RUN_EXIT_GPRS = 0xA00
RMI_REC_RUN_EXIT_IMM = 0xE00


@dataclass(frozen=True)
class RecExitHostCall(Struct):
    """The part of rmi_rec_run.exit a host call fills: exit_reason @0x800 ... imm @0xE00
    (laid out from exit_reason; gprs at exit+0x200, imm at exit+0x600)."""

    exit_reason: int = u64()
    _pad_08: bytes = raw(0x1F8)
    gprs: bytes = raw(8 * REC_NR_GPRS)
    _pad_2f8: bytes = raw(0x600 - 0x200 - 8 * REC_NR_GPRS)
    imm: int = u32()

# --------------------------------------------------------------------------------------
# RSI (realm -> RMM), FID = 0xC4000190 + offset   (firmware-abi.md C.6)


class RsiFid(enum.IntEnum):
    RSI_VERSION = 0xC4000190
    RSI_FEATURES = 0xC4000191
    RSI_HOST_CALL = 0xC4000199
    RSI_VDEV_DMA_ENABLE = 0xC400019C
    RSI_VDEV_GET_INFO = 0xC400019D
    RSI_VDEV_VALIDATE_MAPPING = 0xC400019F
    RSI_VDEV_DMA_DISABLE = 0xC40001A4


class RsiStatus(enum.IntEnum):
    RSI_SUCCESS = 0
    RSI_ERROR_INPUT = 1
    RSI_ERROR_STATE = 2
    RSI_INCOMPLETE = 3
    RSI_ERROR_UNKNOWN = 4
    RSI_ERROR_DEVICE = 5


RSI_FEATURE_REGISTER_0_DA = 1 << 0
RSI_FEATURE_REGISTER_0_MRO = 1 << 1
RSI_FEATURE_REGISTER_0_ATS = 1 << 2

RSI_ACCEPT = 0
RSI_REJECT = 1
RSI_VDEV_VALIDATE_MAPPING_FLAGS_COHERENT = 1 << 0
RSI_VDEV_VALIDATE_MAPPING_FLAGS_LIMITED_ORDER = 1 << 1


class RsiVdevState(enum.IntEnum):
    """rsi_vdev_info.state."""

    UNLOCKED = 0
    LOCKED = 1
    STARTED = 2
    ERROR = 3


class RsiHashAlgo(enum.IntEnum):
    RSI_HASH_SHA_256 = 0
    RSI_HASH_SHA_512 = 1


class RsiDevMemFormat(enum.IntEnum):
    IMPDEF = 0
    TDISP = 1


RSI_HOST_CALL_SIZE = 0x100
RSI_HOST_CALL_ALIGN = 0x100


@dataclass(frozen=True)
class RsiHostCall(Struct):
    """rsi_host_call (256 B): imm @0, gprs[31] @8."""

    imm: int = u16()
    _pad_02: bytes = raw(6)
    gprs: bytes = raw(8 * REC_NR_GPRS)


RSI_VDEV_INFO_SIZE = 0x200
RSI_VDEV_INFO_ALIGN = 0x200
DIGEST_FIELD = 64


@dataclass(frozen=True)
class RsiVdevInfo(Struct):
    """rsi_vdev_info (512 B), TF-RMM main layout.  RMM 2.0-bet1 renames (id_index,
    identity_digest, protocol_data_digest) are aliased onto these offsets
    (firmware-abi.md C.6 [MODEL])."""

    flags: int = u64()            # 0x00 (VSMMU b0)
    cert_id: int = u64()          # 0x08 (2.0-bet1: id_index)
    hash_algo: int = u8()         # 0x10
    _pad_11: bytes = raw(7)
    lock_nonce: int = u64()       # 0x18
    meas_nonce: int = u64()       # 0x20
    report_nonce: int = u64()     # 0x28
    format_type: int = u8()       # 0x30
    _pad_31: bytes = raw(7)
    format_version: int = u64()   # 0x38 (major [31:16], minor [15:0])
    state: int = u8()             # 0x40
    _pad_41: bytes = raw(0x3F)
    vca_digest: bytes = raw(DIGEST_FIELD)      # 0x80  (2.0-bet1: protocol_data_digest)
    cert_digest: bytes = raw(DIGEST_FIELD)     # 0xC0  (2.0-bet1: identity_digest)
    pubkey_digest: bytes = raw(DIGEST_FIELD)   # 0x100
    meas_digest: bytes = raw(DIGEST_FIELD)     # 0x140
    report_digest: bytes = raw(DIGEST_FIELD)   # 0x180
    vsmmu_addr: int = u64()       # 0x1C0
    vsmmu_vsid: int = u64()       # 0x1C8
    _pad_1d0: bytes = raw(0x30)

# --------------------------------------------------------------------------------------
# RHI DA host calls (realm -> host through RSI_HOST_CALL), FID = 0xC5000000 + n
# (firmware-abi.md C.7).  Numbers that the two published layouts share are here; the
# ones they disagree on are in rhi.py (RhiLayout).

RHI_DA_VERSION = 0xC500004A
RHI_DA_FEATURES = 0xC500004B
RHI_DA_OBJECT_SIZE = 0xC500004C
RHI_DA_OBJECT_READ = 0xC500004D
RHI_DA_VDEV_CONTINUE = 0xC5000051
RHI_DA_VDEV_SET_TDI_STATE = 0xC5000054
RHI_DA_VDEV_P2P_UNBIND = 0xC5000055
RHI_DA_VDEV_ABORT = 0xC5000056
RHI_DA_VERSION_1_0 = 0x10000
RHI_NOT_SUPPORTED = 0xFFFF_FFFF_FFFF_FFFF


class RhiDaFeature(enum.IntFlag):
    OBJECT_SIZE = 1 << 0
    OBJECT_READ = 1 << 1
    VDEV_CONTINUE = 1 << 2
    GET_MEASUREMENTS = 1 << 3
    GET_INTERFACE_REPORT = 1 << 4
    SET_TDI_STATE = 1 << 5
    P2P_UNBIND = 1 << 6
    ABORT = 1 << 7


class RhiDaStatus(enum.IntEnum):
    SUCCESS = 0
    INCOMPLETE = 1
    DATA_NOT_AVAILABLE = 2
    INVALID_VDEV_ID = 3
    INVALID_OBJECT = 4
    INPUT = 5
    DEVICE = 6
    INVALID_OFFSET = 7
    ACCESS_FAILED = 8
    BUSY = 9
    ABORTED_OPERATION_HAD_COMPLETED = 10
    OBJECT_UNSUPPORTED = 11


class RhiTdiState(enum.IntEnum):
    CONFIG_UNLOCKED = 0
    CONFIG_LOCKED = 1
    RUN = 2


def rsi_state_of(state: RmiVdevState) -> RsiVdevState:
    """What the realm sees of a VDEV's state (rsi_vdev_info.state)."""
    return {
        RmiVdevState.NEW: RsiVdevState.UNLOCKED,
        RmiVdevState.UNLOCKED: RsiVdevState.UNLOCKED,
        RmiVdevState.LOCKED: RsiVdevState.LOCKED,
        RmiVdevState.STARTED: RsiVdevState.STARTED,
        RmiVdevState.ERROR: RsiVdevState.ERROR,
        RmiVdevState.KEY_REFRESH: RsiVdevState.STARTED,
        RmiVdevState.KEY_PURGE: RsiVdevState.STARTED,
    }[state]
