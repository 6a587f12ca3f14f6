"""Intel TDX Connect and P-SEAMLDR ABI: leaf numbers, status codes, structures.

Declared once with the specification's names (a Python name is the spec name with
``.`` written ``_``; :func:`spec_name` turns it back), from the public sources that
``reference/firmware-abi.md`` section B summarises:

* host SEAMCALL leaves 128-144 and their registers: Linux ``arch/x86/virt/vmx/tdx/tdx.h``
  and ``tdx.c`` of the TDX Connect series ([TDXC1]/[ITDX]); TDH.SYS.* and TDH.VP.ENTER
  leaves: Linux ``arch/x86/virt/vmx/tdx/tdx.h``;
* TDX status codes: [TDXC1] (TDX_SPDM_REQUEST, TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH,
  TDX_INTERRUPTED_RESUMABLE) and the [ISTG] guest code (TDI_NOT_PRESENT,
  TDI_INVALID_METADATA, OPERAND_INVALID, OPERAND_BUSY, as the upper 32 bits);
* TDCALL leaves 67/68/70/71, TDG.TDI.RD field ids, the GHCI TDCM VMCALL: [ISTG];
* P-SEAMLDR leaves, status codes, ``seamldr_info``, ``seamldr_params``: [PSL] and
  Linux ``arch/x86/include/asm/seamldr.h`` / ``seamldr.c`` (v7.2);
* the update image header ``tdx_image_header`` (version 0x200, "TDX-BLOB"): Linux
  ``seamldr.c`` (v7.2, "x86/virt/seamldr: ... v10").

Every structure is a frozen dataclass on the shared codec with its offsets in
comments; padding is declared so ``pack()`` lays each field at its offset.  What no
public source defines (host TDI calls, dev_info layout, sigstruct) is in
:mod:`.model`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ...wire import Struct, raw, tail, u8, u16, u32, u64

PAGE_SIZE = 0x1000


def spec_name(leaf: enum.Enum) -> str:
    """``TDH_SPDM_CREATE`` -> ``TDH.SPDM.CREATE`` (the name the specification uses)."""
    return leaf.name.replace("_", ".")


# ---------------------------------------------------------------------------------------------
# Host SEAMCALL leaves (RAX).  Arguments in RCX, RDX, R8, R9, R10, R11, R12, R13, R14, R15;
# results RAX (status) then the same registers.


class SeamcallLeaf(enum.IntEnum):
    TDH_VP_ENTER = 0             # Linux tdx.h; used here for TDG.VP.VMCALL exits [MODEL]
    TDH_SYS_RD = 34              # Linux tdx.h: read a global metadata field
    TDH_SYS_LP_INIT = 35
    TDH_SYS_SHUTDOWN = 52        # TD-preserving update, step 1 (handoff data)
    TDH_SYS_UPDATE = 53          # TD-preserving update, last step (restore from handoff)
    TDH_IOMMU_SETUP = 128        # firmware-abi.md B.4 (Linux tdx.h, [TDXC1]/[ITDX])
    TDH_IOMMU_CLEAR = 129
    TDH_SPDM_CREATE = 130
    TDH_SPDM_DELETE = 131
    TDH_IDE_STREAM_CREATE = 132
    TDH_IDE_STREAM_BLOCK = 133
    TDH_IDE_STREAM_DELETE = 134
    TDH_IDE_STREAM_KM = 135
    TDH_SPDM_CONNECT = 142
    TDH_SPDM_DISCONNECT = 143
    TDH_SPDM_MNG = 144


# P-SEAMLDR leaves: SEAMCALL with RAX bit 63 set (firmware-abi.md B.1, [PSL], Linux seamldr.c)
class SeamldrLeaf(enum.IntEnum):
    SEAMLDR_INFO = 0x8000_0000_0000_0000
    SEAMLDR_INSTALL = 0x8000_0000_0000_0001
    SEAMLDR_SHUTDOWN = 0x8000_0000_0000_0002
    SEAMLDR_SEAMINFO = 0x8000_0000_0000_0003
    SEAMLDR_CLEANUP = 0x8000_0000_0000_0004


# TDCALL leaves (RAX) the TD issues (firmware-abi.md B.6, [ISTG]).  TDG.VP.VMCALL is leaf 0.
class TdcallLeaf(enum.IntEnum):
    TDG_VP_VMCALL = 0
    TDG_TDI_RD = 67              # Linux: TDG_TDI_READ
    TDG_TDI_START = 68
    TDG_DMAR_ACCEPT = 70
    TDG_MMIO_ACCEPT = 71


# ---------------------------------------------------------------------------------------------
# Status codes (RAX).  A TDX status carries the class in bits 63:32; for operand errors the
# low 32 bits name the operand (the register number, OperandId).


class TdxStatus(enum.IntEnum):
    TDX_SUCCESS = 0
    TDX_INTERRUPTED_RESUMABLE = 0x8000_0003_0000_0000          # call the same leaf again
    TDX_OPERAND_BUSY = 0x8000_0200_0000_0000                    # [ISTG] OPERAND_BUSY 0x80000200
    TDX_OPERAND_INVALID = 0xC000_0100_0000_0000                 # [ISTG] INVALID_OPERAND 0xc0000100
    TDX_TDI_NOT_PRESENT = 0xC000_0F40_0000_0000                 # [ISTG] TDCALL_TDI_NOT_PRESENT
    TDX_TDI_INVALID_METADATA = 0xC000_0F41_0000_0000            # [ISTG] TDI_INVALID_METADATA
    TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH = 0xC000_0F45_0000_0000  # [TDXC1]
    TDX_SPDM_REQUEST = 0xC000_0F57_0000_0000                    # [TDXC1]: send req, call again


STATUS_CLASS_MASK = 0xFFFF_FFFF_0000_0000


class OperandId(enum.IntEnum):
    """The low 32 bits of an operand error: which register was wrong."""

    RAX = 0
    RCX = 1
    RDX = 2
    R8 = 8
    R9 = 9
    R10 = 10
    R11 = 11
    R12 = 12
    R13 = 13
    R14 = 14
    R15 = 15


ARG_REGISTERS = ("RCX", "RDX", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")


def operand_status(status: TdxStatus, operand: OperandId) -> int:
    return int(status) | int(operand)


# P-SEAMLDR status codes ([PSL] pseamldr_api_defs.h, firmware-abi.md B.1)
class SeamldrStatus(enum.IntEnum):
    SEAMLDR_SUCCESS = 0
    EBADPARAM = 0x8000_0000_0000_0000
    EBADCALL = 0x8000_0000_0000_0003
    EBADHANDOFF = 0x8000_0000_0000_0004
    ECLEANUPREQ = 0x8000_0000_0000_0005
    EUNSUPPORTED = 0x8000_0000_0000_0006
    ENOMEM = 0x8000_0000_0001_0002
    EUNSPECERR = 0x8000_0000_0001_0003
    EUNSUPCPU = 0x8000_0000_0001_0004
    EBADSIG = 0x8000_0000_0002_0000
    EBADHASH = 0x8000_0000_0002_0001
    EINTERRUPT = 0x8000_0000_0003_0000
    ENOENTROPY = 0x8000_0000_0003_0001


# ---------------------------------------------------------------------------------------------
# TDX Connect host calls: operations and argument encodings (firmware-abi.md B.4)


class SpdmMngOp(enum.IntEnum):
    """TDH.SPDM.MNG RDX."""

    HEARTBEAT = 0
    KEY_UPDATE = 1
    RECOLLECT = 2


class IdeStreamKmOp(enum.IntEnum):
    """TDH.IDE.STREAM.KM R8 ([TDXC1] tdx-host.c enum tdx_ide_stream_km_op)."""

    SETUP = 0
    REFRESH = 1
    STOP = 2


# func_id: RID[15:0] | segment[23:16] | segment-valid bit 24 ([ITDX])
FUNC_ID_SEGMENT_SHIFT = 16
FUNC_ID_SEGMENT_VALID = 1 << 24
FUNC_ID_RESERVED_MASK = ~((1 << 25) - 1) & 0xFFFF_FFFF_FFFF_FFFF

# stream_info (TDH.IDE.STREAM.CREATE RCX): RP_DEVFN[7:0], TYPE bit 8 (1 = selective) ([ITDX])
STREAM_INFO_RP_DEVFN_MASK = 0xFF
STREAM_INFO_TYPE_SELECTIVE = 1 << 8

# hpa_array_t (Linux tdx.c): bits 51:12 the page frame, bits 63:55 array_size = entries - 1
# when the address is a root page listing the pages (u64 each), else a single page.
HPA_ARRAY_PFN_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)
HPA_ARRAY_SIZE_SHIFT = 55
NO_PAGE = 0xFFFF_FFFF_FFFF_FFFF     # Linux passes -1 for an absent optional page


def hpa_array(first_page: int, entries: int = 1) -> int:
    """Encode an hpa_array_t: one page, or a root page listing ``entries`` pages."""
    return (first_page & HPA_ARRAY_PFN_MASK) | ((entries - 1) << HPA_ARRAY_SIZE_SHIFT
                                               if entries > 1 else 0)


# spdm_config_info_t ([ITDX]); vmm_spdm_cap bits
VMM_SPDM_CAP_HBEAT = 1 << 13
VMM_SPDM_CAP_KEY_UPD = 1 << 14


@dataclass(frozen=True)
class SpdmConfigInfo(Struct):
    """spdm_config_info_t: the head of the TDH.SPDM.CONNECT config page."""

    vmm_spdm_cap: int = u32()            # 0x00
    spdm_session_policy: int = u8()      # 0x04
    certificate_slot_mask: int = u8()    # 0x05 (Linux: 0xff)
    raw_bitstream_requested: int = u8()  # 0x06


# Global metadata field ids for TDH.SYS.RD (Linux tdx_global_metadata.c)
class SysMetadataField(enum.IntEnum):
    MINOR_VERSION = 0x0800_0001_0000_0003
    MAJOR_VERSION = 0x0800_0001_0000_0004
    UPDATE_VERSION = 0x0800_0001_0000_0005
    TDX_FEATURES0 = 0x0A00_0003_0000_0008


TDX_FEATURES0_TD_PRESERVING = 1 << 1    # Linux tdx.h


# VMX exit reason TDH.VP.ENTER reports when the TD issued TDG.VP.VMCALL (Linux vmx.h)
EXIT_REASON_TDCALL = 77
EXIT_REASON_EXTERNAL_INTERRUPT = 1

# ---------------------------------------------------------------------------------------------
# TD side (firmware-abi.md B.6, [ISTG])


class TdiRdField(enum.IntEnum):
    """TDG.TDI.RD RDX.  TDISP_STATE and BIND_SESSION_ID are public; the rest: model.py."""

    TDISP_STATE = 2
    BIND_SESSION_ID = 5


class TdTdiState(enum.IntEnum):
    """The TDI state as TDG.TDI.RD(TDISP_STATE) reports it to the TD."""

    UNLOCKED = 0
    LOCKED = 1
    RUN = 2
    ERROR = 3


# TDG.VP.VMCALL: R10 = 0 (a GHCI call), R11 = sub-function; status back in R10
TDG_VP_VMCALL_TDCM = 0x10007


class VmcallStatus(enum.IntEnum):
    """R10 after TDG.VP.VMCALL (GHCI)."""

    TDG_VP_VMCALL_SUCCESS = 0
    TDG_VP_VMCALL_RETRY = 1
    TDG_VP_VMCALL_INVALID_OPERAND = 0x8000_0000_0000_0000


class TdcmOperation(enum.IntEnum):
    CHECK_TEEIO_SUPP = 1
    BIND = 2
    GET_DEV_INFO = 3
    GET_TDI_REPORT = 4
    START_TDI = 5
    GET_TDI_STATE = 6
    UNBIND = 7


class TdcmStatus(enum.IntEnum):
    WAIT = 0
    COMPLETED = 1
    ERROR = 2


class TdcmError(enum.IntEnum):
    NONE = 0
    TDX_MODULE = 10
    TDXIO_DEVICE = 11
    SPDM_MESSAGE = 12
    IDE_KM_MESSAGE = 13
    TDISP_MESSAGE = 14
    INVALID_STATE = 15


MAX_TDI_REPORT_SIZE = 16 * PAGE_SIZE


@dataclass(frozen=True)
class TdvmcallTdcm(Struct):
    """struct tdvmcall_tdcm ([ISTG] tdx_connect.c): the shared buffer at R13."""

    operation: int = u16()      # 0x00
    version: int = u8()         # 0x02
    rsvd0: int = u8()           # 0x03
    rsvd1: int = u32()          # 0x04
    status: int = u8()          # 0x08
    error: int = u8()           # 0x09
    rsvd2: int = u16()          # 0x0A
    rsvd3: int = u32()          # 0x0C
    data_length: int = u32()    # 0x10
    data: bytes = tail()        # 0x14


TDCM_HEADER_SIZE = 0x14

# ---------------------------------------------------------------------------------------------
# P-SEAMLDR structures

SEAMLDR_INFO_SIZE = 256
SEAMLDR_INFO_ALIGN = 256
SEAMLDR_MAX_NR_SIG_PAGES = 1
SEAMLDR_MAX_NR_MODULE_PAGES = 496


class SeamldrScenario(enum.IntEnum):
    LOAD = 0
    UPDATE = 1


@dataclass(frozen=True)
class SeamldrInfo(Struct):
    """seamldr_info (256 B, 256-aligned); [PSL] names, Linux names in comments."""

    version: int = u32()                # 0x00
    attributes: int = u32()             # 0x04 (bit 31 is_debug)
    vendor_id: int = u32()              # 0x08
    build_date: int = u32()             # 0x0C (yyyymmdd)
    build_num: int = u16()              # 0x10
    minor: int = u16()                  # 0x12 minor_version
    major: int = u16()                  # 0x14 major_version
    reserved_0: int = u16()             # 0x16 Linux: update_version
    acm_x2apic: int = u32()             # 0x18 acm_x2apicid
    num_remaining_updates: int = u32()  # 0x1C
    # seamextend (0x20..0xA7); Linux: seam_info[128] then seam_ready, seam_debug, p_seam_ready
    valid: int = u64()                  # 0x20
    minor_svn: int = u8()               # 0x28 tee_tcb_svn[0]
    major_svn: int = u8()               # 0x29 tee_tcb_svn[1]
    last_patch_se_svn: int = u8()       # 0x2A tee_tcb_svn[2]
    tee_tcb_svn_rsvd: bytes = raw(13)   # 0x2B
    mrseam: bytes = raw(48)             # 0x38
    mrsigner: bytes = raw(48)           # 0x68
    seam_attributes: int = u64()        # 0x98
    seam_ready: int = u8()              # 0xA0
    system_under_debug: int = u8()      # 0xA1 Linux: seam_debug
    p_seamldr_ready: int = u8()         # 0xA2 Linux: p_seam_ready
    seamextend_rsvd: bytes = raw(5)     # 0xA3
    features0: int = u64()              # 0xA8 (bit 0 s4_mig_api, bit 1 cleanup_supported)
    reserved_2: bytes = raw(80)         # 0xB0


@dataclass(frozen=True)
class SeamldrParams(Struct):
    """seamldr_params (4 KiB) ([PSL], Linux seamldr.c)."""

    version: int = u32()                # 0x000 (0)
    scenario: int = u32()               # 0x004 (LOAD 0, UPDATE 1)
    sigstruct_pa: int = u64()           # 0x008 Linux: sigstruct_pages_pa_list[1]
    reserved: bytes = raw(104)          # 0x010
    num_module_pages: int = u64()       # 0x078 (1..496)
    mod_pages_pa_list: bytes = raw(SEAMLDR_MAX_NR_MODULE_PAGES * 8)  # 0x080

    def module_pages(self) -> list[int]:
        n = min(self.num_module_pages, SEAMLDR_MAX_NR_MODULE_PAGES)
        return [int.from_bytes(self.mod_pages_pa_list[8 * i:8 * i + 8], "little")
                for i in range(n)]

    @staticmethod
    def page_list(pages: list[int]) -> bytes:
        return b"".join(p.to_bytes(8, "little") for p in pages).ljust(
            SEAMLDR_MAX_NR_MODULE_PAGES * 8, b"\0")


TDX_IMAGE_VERSION_2 = 0x200
TDX_IMAGE_SIGNATURE = b"TDX-BLOB"
TDX_IMAGE_HEADER_SIZE = PAGE_SIZE


@dataclass(frozen=True)
class TdxImageHeader(Struct):
    """struct tdx_image_header (Linux seamldr.c, 4 KiB): the update image's first page;
    the sigstruct pages and then the module pages follow."""

    version: int = u16()                # 0x00 (0x200)
    checksum: int = u16()               # 0x02
    signature: bytes = raw(8)           # 0x04 "TDX-BLOB"
    sigstruct_nr_pages: int = u32()     # 0x0C (<= 1)
    module_nr_pages: int = u32()        # 0x10 (<= 496)
    reserved: bytes = raw(4076)         # 0x14 (all zero)
