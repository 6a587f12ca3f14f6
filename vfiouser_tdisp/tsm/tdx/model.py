"""[MODEL] Everything this TDX module / P-SEAMLDR emulator decides that no public source defines.

One place, so a reader sees at a glance what is invented and what it is based on
(firmware-abi.md section F.1-F.3 lists the unknowns; docs/platform-tdx.md repeats this
list for users).  Nothing outside this module hard-codes one of these choices, so a
published ABI replaces this file, not the emulator.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from ...tdisp import messages as t
from ...wire import Struct, raw, u16, u32, u64
from .abi import PAGE_SIZE, SeamldrStatus

# -- the firmware port ------------------------------------------------------------------------
# The port ABI's platform fourcc "TDX " (docs/firmware-port.md) and our own version 1.0 of
# this emulator's call interface (not an Intel number).
ABI_ID = 0x2058_4454
ABI_VERSION = 0x0001_0000
# Registers: FirmwareCall.args = RCX, RDX, R8, R9, R10, R11, R12, R13, R14, R15 (ARGn);
# results = RAX, then the same registers in the same order.  A SEAMCALL and a TDCALL both
# return every register of that list (unchanged ones as passed) so a caller can read any.


# -- host TDI calls -----------------------------------------------------------------------------
# [MODEL] The TDX Connect host calls that bind a TDI to a TD, start/stop it and map its
# MMIO / DMA are not in any public code (firmware-abi.md B.5, F.1).  Names and leaves reuse
# the slots of the obsolete TDX-IO prototype ([TDXIO-PROTO]: DEVIF_CREATE 137 .. DEVIF_RESPONSE
# 140, DMAR_ADD 150 .. DMAR_REMOVE 153, MMIO_MAP 158 .. MMIO_UNMAP 160), which the current
# numbering leaves unused.  Registers (all device-talking calls loop on TDX_SPDM_REQUEST like
# TDH.SPDM.CONNECT: RCX out = request length, DOE objects with their header in the pages):
#   TDH.TDI.BIND    RCX spdm_id, RDX func_id (the TDI), R8 TD handle (non-zero), R9 rsp page,
#                   R10 req page, R11 stream_id, R12 report out (hpa_array_t; 0 or -1:
#                   none)  -> RCX bind session id, RDX report length on SUCCESS; the
#                   interface report is written to R12's pages when it fits.
#                   Device: GET_VERSION, GET_CAPABILITIES, LOCK_INTERFACE, GET_DEVICE_INTERFACE_
#                   REPORT (kept: TDCM GET_TDI_REPORT and the report hash), state CONFIG_LOCKED.
#   TDH.TDI.START   RCX spdm_id, RDX func_id, R8 rsp page, R9 req page.  Needs the TD's
#                   TDG.TDI.START first.  Device: START_INTERFACE (nonce from the lock) -> RUN.
#   TDH.TDI.STOP    RCX spdm_id, RDX func_id, R8 rsp page, R9 req page.  Device:
#                   STOP_INTERFACE.  Always ends UNLOCKED (the TD's access is withdrawn
#                   whatever the device answers), mappings and accepts dropped.
#   TDH.TDI.UNBIND  RCX spdm_id, RDX func_id.  Only UNLOCKED TDIs; forgets the binding.
#   TDH.MMIO.MAP    RCX func_id, RDX GPA, R8 HPA, R9 page count: map device MMIO pages into the
#                   TD's private space, pending the TD's TDG.MMIO.ACCEPT.  HPA pages must lie
#                   in one MMIO range of the locked report.
#   TDH.MMIO.UNMAP  RCX func_id, RDX GPA, R8 page count.
#   TDH.DMAR.ADD    RCX func_id: let the TDI DMA into TD private memory, pending TDG.DMAR.ACCEPT.
#   TDH.DMAR.REMOVE RCX func_id.
#   TDH.TDI.STATE   RCX spdm_id, RDX func_id, R8 rsp page, R9 req page -> RCX the TD's
#                   view (TdTdiState 0-3) after asking the device.  Device:
#                   GET_DEVICE_INTERFACE_STATE.  A LOCKED / RUN TDI whose device answers
#                   another state (ERROR after a BAR moved, PCIe r7.0 11) goes to ERROR:
#                   TDG.TDI.RD shows 3 from then on.  Serves TDCM GET_TDI_STATE.
#   TDH.TDI.REPORT  RCX spdm_id, RDX func_id, R8 rsp page, R9 req page, R10 report out
#                   (hpa_array_t) -> RCX report length.  Only LOCKED / RUN TDIs.  Device:
#                   GET_DEVICE_INTERFACE_REPORT, then GET_DEVICE_INTERFACE_STATE.  The
#                   device in ERROR refuses the report (TDISP_ERROR); its state says
#                   ERROR: the TDI goes to ERROR and the call ends TDX_DEVICE_ERROR |
#                   TDISP.  A report other than the one locked is an ERROR too (TDISP
#                   keeps it fixed while locked).  Serves TDCM GET_TDI_REPORT, so the TD
#                   asking again is the module asking the device again.
#   Leaves 136 and 141 are the free slots around the TDI group in the current numbering.
class HostTdiLeaf(enum.IntEnum):
    TDH_TDI_STATE = 136
    TDH_TDI_BIND = 137
    TDH_TDI_START = 138
    TDH_TDI_STOP = 139
    TDH_TDI_UNBIND = 140
    TDH_TDI_REPORT = 141
    TDH_DMAR_ADD = 150
    TDH_DMAR_REMOVE = 153
    TDH_MMIO_MAP = 158
    TDH_MMIO_UNMAP = 160


# -- TD-side fields and TDCM payloads ---------------------------------------------------------
# TDG.TDI.RD field ids besides the public TDISP_STATE 2 / BIND_SESSION_ID 5 (OpenHCL names the
# fields, not their numbers).  Hash fields are SHA-384 (48 bytes) written at the GPA in R8;
# RCX returns the byte count.
class TdiRdModelField(enum.IntEnum):
    TDISP_VERSION = 1           # RCX = TDISP version byte the device answered (0x10)
    REPORT_HASH = 3             # SHA-384 of the interface report the module read at bind
    DEVICE_INFO_HASH = 4        # SHA-384 of the dev_info blob (DevInfoHeader + objects)


HASH = "sha384"
HASH_SIZE = 48
# TDCM header version the host accepts and answers with.
TDCM_VERSION = 0
# TDCM R12 "device id": the TDI's func_id (RID | segment << 16 | seg-valid bit 24).
# Payloads (data[]):
#   CHECK_TEEIO_SUPP  answer u32: 1 = TEE-IO supported for this device, 0 = not
#   BIND              no payload either way
#   GET_DEV_INFO      answer: the dev_info blob (see DevInfoHeader)
#   GET_TDI_REPORT    answer: the TDISP interface report (TDI_REPORT_STRUCTURE)
#   START_TDI, UNBIND no payload
#   GET_TDI_STATE     answer u32: the TdTdiState
# The host answers asynchronously, as the GHCI TDCM is meant to be: TDG.VP.VMCALL returns at
# once (R10 SUCCESS, buffer status WAIT); the host picks the request up with TDH.VP.ENTER
# (exit reason 77 TDCALL, RCX/R10..R15 as the TD set them), serves it and writes
# status COMPLETED/ERROR into the shared buffer, which the TD polls.  TDH.VP.ENTER with no
# VMCALL pending reports exit reason 1 (external interrupt).  One TD, one VCPU: every TDCALL
# through the port acts for that TD (one VM plays host and TD); TD handles are not checked.


@dataclass(frozen=True)
class DevInfoHeader(Struct):
    """The head of the TDH.SPDM.CONNECT ``spdm_out`` buffer (dev_info); the certificate
    chain, the VCA transcript and the signed MEASUREMENTS response follow in that order."""

    version: int = u32(1)       # 0x00
    hash_algo: int = u32()      # 0x04 SPDM BaseHashAlgo selected (bit mask, DSP0274)
    cert_slot: int = u32()      # 0x08
    cert_chain_len: int = u32()  # 0x0C
    vca_len: int = u32()        # 0x10
    meas_len: int = u32()       # 0x14
    _rsvd: bytes = raw(8)       # 0x18


DEV_INFO_VERSION = 1

# -- device protocol choices ------------------------------------------------------------------
# LOCK_INTERFACE flags (firmware-abi.md F.7: AMD's defaults): NO_FW_UPDATE; default stream =
# the SPDM context's IDE stream; MMIO reporting offset 0 (report pages are host-physical).
LOCK_FLAGS = int(t.LockInterfaceFlags.NO_FW_UPDATE)
MMIO_REPORTING_OFFSET = 0
REPORT_PAGE_SHIFT = 12
# TDH.SPDM.CONNECT: VCA, GET_DIGESTS, GET_CERTIFICATE (the lowest slot of the config's
# certificate_slot_mask), chain checked, KEY_EXCHANGE + FINISH, then signed GET_MEASUREMENTS
# (all blocks) inside the session.  TDH.SPDM.MNG RECOLLECT repeats digests, certificate and
# measurements and rewrites dev_info.  IDE: KM SETUP = QUERY, 6x KEY_PROG, 6x K_SET_GO (the
# root port's half is keyed without traffic: QEMU's root port has no IDE capability);
# REFRESH = the same with the other key set; STOP = 6x K_SET_STOP.

# -- statuses the public sources do not give --------------------------------------------------
# Chosen in a range (0xC0000FFx) no public TDX code uses, so they cannot be mistaken for real
# ones.  Low 32 bits as for operand errors (the register), or the DeviceErrorKind.
TDX_DEVICE_ERROR = 0xC000_0FF0_0000_0000        # the device failed the exchange
TDX_OBJECT_STATE_INCORRECT = 0xC000_0FF1_0000_0000  # handle valid, object in the wrong state
TDX_MODULE_SHUT_DOWN = 0xC000_0FF2_0000_0000    # TDH.SYS.SHUTDOWN done, update not finished


class DeviceErrorKind(enum.IntEnum):
    TRANSPORT = 1               # the host gave no/invalid response object (bad DOE header)
    SPDM = 2                    # SPDM ERROR, bad signature, chain does not verify
    IDE_KM = 3
    TDISP = 4                   # TDISP_ERROR or an unexpected TDI state


# The extension is "queue depth one" ([TDXC1]): while a device-talking call is pending on one
# object, a call of another leaf or on another object returns TDX_OPERAND_BUSY | RCX.
# Preemption: TdxModule(preempt_every=N) returns TDX_INTERRUPTED_RESUMABLE (no progress)
# on every N-th call of a device-talking leaf (0: never, the default).
# Key refresh: after KEY_REFRESH_AFTER secured objects in a session, the next device-talking
# call on that SPDM context other than TDH.SPDM.MNG(KEY_UPDATE) returns
# TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH; the host runs MNG(KEY_UPDATE) and calls again.
KEY_REFRESH_AFTER = 1 << 20
# A response page whose DOE header is invalid (length 0, beyond the page, wrong vendor)
# is the host's way of saying "the DOE transfer failed": the operation ends with
# TDX_DEVICE_ERROR | TRANSPORT.
DOE_PAGE_SIZE = PAGE_SIZE

# -- P-SEAMLDR ----------------------------------------------------------------------------------
# seamldr_info contents of this P-SEAMLDR (its own version 2.0.00, Intel vendor id).
SEAMLDR_VERSION = (2, 0, 0)     # major, minor, update_version
SEAMLDR_VENDOR_ID = 0x8086
SEAMLDR_BUILD_DATE = 20260601
SEAMLDR_BUILD_NUM = 1
NUM_UPDATES = 4                 # num_remaining_updates after "boot"
# The TDX module "installed at boot": its version (TDH.SYS.RD MAJOR/MINOR/UPDATE_VERSION).
BOOT_MODULE_VERSION = (1, 5, 20)
# SEAMLDR.INSTALL checks, in order: params (version 0, scenario UPDATE -- LOAD is a boot-time
# scenario -- 1..496 module pages, page-aligned readable pages) -> EBADPARAM; the module
# must have been shut down (TDH.SYS.SHUTDOWN: handoff data) -> EBADHANDOFF; no updates left
# -> UPDATES_EXHAUSTED; sigstruct magic/layout/signature -> EBADSIG; SHA-384 of the module
# pages != sigstruct.module_hash or page count != sigstruct.module_nr_pages -> EBADHASH;
# major version differs from the running module's ("compatible version", Linux seamldr.c)
# -> EUNSUPPORTED.  All these leave the old module in place (shut down): TDH.SYS.UPDATE then
# resumes it from its handoff data (Linux would mark the module failed; we keep the
# platform usable so a bad image can be tested, and say so in docs/platform-tdx.md).
# Success: the new image is loaded, num_remaining_updates decremented once per update (the
# INSTALL on the other CPUs with the same params is SUCCESS and changes nothing),
# TDH.SYS.LP.INIT per CPU, TDH.SYS.UPDATE restores every SPDM context, IDE stream and TDI
# from the handoff data: a TD-preserving update.
UPDATES_EXHAUSTED = SeamldrStatus.EBADCALL

# Sigstruct (one page).  The real SEAM sigstruct is an Intel-signed 2 KiB structure whose
# verification is not public; this one has the same role and is checked the same way.
SIGSTRUCT_MAGIC = b"VTDXSIG1"


@dataclass(frozen=True)
class Sigstruct(Struct):
    magic: bytes = raw(8, SIGSTRUCT_MAGIC)  # 0x000
    major_version: int = u16()              # 0x008
    minor_version: int = u16()              # 0x00A
    update_version: int = u16()             # 0x00C
    build_num: int = u16()                  # 0x00E
    build_date: int = u32()                 # 0x010
    module_nr_pages: int = u32()            # 0x014
    module_svn: int = u64()                 # 0x018
    module_hash: bytes = raw(48)            # 0x020 SHA-384 of the module pages
    signer_key: bytes = raw(97)             # 0x050 ECDSA P-384 public key, SEC1 uncompressed
    _rsvd: bytes = raw(0x100 - 0x50 - 97)   # 0x0B1
    signature: bytes = raw(96)              # 0x100 r || s over bytes 0x000..0x0FF
    _pad: bytes = raw(PAGE_SIZE - 0x160)    # 0x160


SIGNED_SIZE = 0x100
# The signer the P-SEAMLDR trusts: a lab key, derived from a published seed so that
# `vfiouser-tdisp tdx-blob` can sign images anyone can rebuild.  Not a secret, on purpose.
_SIGNER_SEED = b"vfiouser-tdisp emulated P-SEAMLDR lab signing key"


def signer_key() -> ec.EllipticCurvePrivateKey:
    order = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AE"
                "CEC196ACCC52973", 16)
    scalar = int.from_bytes(hashlib.sha384(_SIGNER_SEED).digest(), "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


# Update image checksum.  Linux v7.2 does not check tdx_image_header.checksum (seamldr.c
# checks length, version 0x200, page limits, "TDX-BLOB" and the zero reserved bytes only)
# and never hands the header to the P-SEAMLDR; the algorithm is not public.  tdx-blob writes,
# and `tdx-blob --check` verifies: the 16-bit value that makes the sum of all little-endian
# 16-bit words of the whole image (checksum included) 0 modulo 2^16.
def image_checksum(image_without_checksum: bytes) -> int:
    data = image_without_checksum + (b"\0" if len(image_without_checksum) % 2 else b"")
    total = sum(int.from_bytes(data[i:i + 2], "little") for i in range(0, len(data), 2))
    return (-total) & 0xFFFF


# Module image pages of the boot module: deterministic filler (its hash is mrseam).
def boot_module_pages(count: int = 2) -> bytes:
    return b"".join(hashlib.sha384(b"boot module page %d" % i).digest() * (PAGE_SIZE // 48)
                    + bytes(PAGE_SIZE % 48) for i in range(count))


__all__ = ["ABI_ID", "ABI_VERSION", "DevInfoHeader", "DeviceErrorKind", "HostTdiLeaf",
           "Sigstruct", "TdiRdModelField", "image_checksum", "signer_key"]
