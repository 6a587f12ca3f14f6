"""[MODEL] Everything this PSP emulator decides that no public source defines.

One place, so a reader sees at a glance what is invented and on what it is based
(reference/firmware-abi.md D.3 and F.5 list the unknowns; docs/platform-sev-tio.md repeats
this list for users).  Nothing outside this module hard-codes one of these choices.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ...tdisp import messages as t
from ...wire import Struct, raw, u8, u16, u32, u64

# -- the firmware port ------------------------------------------------------------------
# Platform fourcc "SEVT" (little-endian) from the port ABI's table; 1.0 is our own
# numbering of this emulator's call interface, not an AMD number.
ABI_ID = 0x5456_4553
ABI_VERSION = 0x0001_0000
# A HOST call: fid = the PSP command id (SevCmd), args[0] = the guest-physical address of
# the command buffer (what the PSP's CMDBUF_ADDR registers carry).  Result: (status,).
# The command buffer's `length` must equal the size of the command's structure
# (Linux sev_tio_cmd_buffer_len), else INVALID_LEN.  A buffer the PSP cannot reach is
# INVALID_ADDRESS.  Unknown command ids: INVALID_COMMAND.
# A GUEST call: fid = the VMGEXIT exit code (SVM_VMGEXIT_SEV_TIO_OP / _GUEST_REQUEST),
# args = the GHCB registers (RAX, RBX, RCX, RDX; SEV_TIO_OP: exitinfo1).  On hardware
# these exits go to the hypervisor, not the PSP: the PSP hands them to the hypervisor
# attached to it (Psp.hypervisor, the guest-less host driver here) and answers
# UNSUPPORTED when there is none.

# -- TIO_STATUS ------------------------------------------------------------------------
# Buffer sizes the PSP reports (bytes).  The request and response buffers hold the
# 0x40-byte SLA buffer header, the 0x10-byte data object header and the SPDM message;
# the largest SPDM message this PSP sends or accepts fits in SPDM_REQ_SIZE_MAX - 0x50.
SPDM_REQ_SIZE_MIN = 0x1000
SPDM_REQ_SIZE_MAX = 0x4000
SPDM_RSP_SIZE_MIN = 0x1000
SPDM_RSP_SIZE_MAX = 0x4000
# The scratch buffer is the PSP's working space for the SPDM session; this PSP keeps its
# state internally but requires the capacity real firmware would.
SPDM_SCRATCH_SIZE_MIN = 0x2000
SPDM_SCRATCH_SIZE_MAX = 0x4000
SPDM_OUT_SIZE_MIN = 0x1000
SPDM_OUT_SIZE_MAX = 0x10000
DEVCTX_SIZE = 0x1000
TDICTX_SIZE = 0x1000
# tio_crypto_alg: bit 0 = AES-256-GCM IDE keys (our encoding).
TIO_CRYPTO_ALG = 0x1
# TIO is enabled at SNP_INIT_EX time on hardware; this PSP starts with tio_en = 1.

# -- contexts ---------------------------------------------------------------------------
# The device / TDI context pages are firmware-owned; this PSP keeps the contexts in its
# own memory, keyed by the context's SLA, and writes nothing into the pages.  A context
# SLA is valid from its CREATE to its RECLAIM; any other value: INVALID_DEV_CTX /
# INVALID_TDI_CTX.  CREATE with an SLA already in use: IN_USE.  A context buffer whose
# header capacity is below DEVCTX_SIZE / TDICTX_SIZE: INCORRECT_BUFFER_LENGTH.


class PlatformState(enum.Enum):
    UNINIT = "uninit"              # TIO enabled, TIO_INIT not yet run
    INIT = "init"                  # after TIO_INIT


PLATFORM_TABLE: dict[tuple[PlatformState, str], PlatformState] = {
    (PlatformState.UNINIT, "tio_init"): PlatformState.INIT,
}


class DevState(enum.Enum):
    """Device context states (firmware-abi.md D.3 [INF]; the names are ours)."""

    CREATED = "created"            # after DEV_CREATE, or after DEV_DISCONNECT
    CONNECTING = "connecting"      # DEV_CONNECT's SPDM_REQUEST loop is running
    CONNECTED = "connected"        # SPDM session up, IDE stream keyed
    DISCONNECTING = "disconnecting"
    ERROR = "error"                # a connect/disconnect failed: only RECLAIM helps


class TdiState(enum.Enum):
    """TDI context states (D.3 [INF]; names ours)."""

    UNBOUND = "unbound"            # after TDI_CREATE or TDI_UNBIND
    BINDING = "binding"            # TDI_BIND's loop (LOCK_INTERFACE, report)
    LOCKED = "locked"              # bound to a guest, TDISP CONFIG_LOCKED
    STARTING = "starting"          # TDI_BIND with RUN_FORCE on a LOCKED TDI
    RUN = "run"                    # TDISP RUN
    UNBINDING = "unbinding"        # TDI_UNBIND's loop (STOP_INTERFACE)
    ERROR = "error"                # a bind/start/unbind failed: only RECLAIM helps


class GuestState(enum.Enum):
    CREATED = "created"            # SNP_GCTX_CREATE
    LAUNCHED = "launched"          # its secrets page (VMPCKs) written


# Device, TDI and guest transitions; every one is an event (<name>.transition).
DEV_TABLE: dict[tuple[DevState, str], DevState] = {
    (DevState.CREATED, "connect"): DevState.CONNECTING,
    (DevState.CONNECTING, "connected"): DevState.CONNECTED,
    (DevState.CONNECTING, "failed"): DevState.ERROR,
    (DevState.CONNECTED, "disconnect"): DevState.DISCONNECTING,
    (DevState.CONNECTED, "failed"): DevState.ERROR,      # the chain changed underneath
    (DevState.DISCONNECTING, "disconnected"): DevState.CREATED,
    (DevState.DISCONNECTING, "failed"): DevState.ERROR,
    (DevState.CONNECTED, "force_disconnect"): DevState.CREATED,
    (DevState.CONNECTING, "force_disconnect"): DevState.CREATED,
    (DevState.DISCONNECTING, "force_disconnect"): DevState.CREATED,
    (DevState.ERROR, "force_disconnect"): DevState.CREATED,
}
TDI_TABLE: dict[tuple[TdiState, str], TdiState] = {
    (TdiState.UNBOUND, "bind"): TdiState.BINDING,
    (TdiState.BINDING, "locked"): TdiState.LOCKED,
    (TdiState.BINDING, "start"): TdiState.STARTING,
    (TdiState.LOCKED, "start"): TdiState.STARTING,
    (TdiState.STARTING, "started"): TdiState.RUN,
    (TdiState.BINDING, "failed"): TdiState.ERROR,
    (TdiState.STARTING, "failed"): TdiState.ERROR,
    # a TDI_REPORT the device refuses (its TDI went to ERROR, e.g. a BAR moved while RUN)
    (TdiState.LOCKED, "failed"): TdiState.ERROR,
    (TdiState.RUN, "failed"): TdiState.ERROR,
    (TdiState.LOCKED, "unbind"): TdiState.UNBINDING,
    (TdiState.RUN, "unbind"): TdiState.UNBINDING,
    (TdiState.UNBINDING, "unbound"): TdiState.UNBOUND,
    (TdiState.UNBINDING, "failed"): TdiState.ERROR,
    (TdiState.LOCKED, "force_unbind"): TdiState.UNBOUND,
    (TdiState.RUN, "force_unbind"): TdiState.UNBOUND,
    (TdiState.ERROR, "force_unbind"): TdiState.UNBOUND,
    (TdiState.BINDING, "force_unbind"): TdiState.UNBOUND,
    (TdiState.STARTING, "force_unbind"): TdiState.UNBOUND,
    (TdiState.UNBINDING, "force_unbind"): TdiState.UNBOUND,
}
GUEST_TABLE: dict[tuple[GuestState, str], GuestState] = {
    (GuestState.CREATED, "secrets"): GuestState.LAUNCHED,
}

# The TDI state the hypervisor returns in RDX of SEV_TIO_GUEST_REQUEST (param STATE):
# TDISP CONFIG_UNLOCKED 0, CONFIG_LOCKED 1, RUN 2, ERROR 3 (firmware-abi.md D.6 [INF]);
# the transient states answer the state they leave.
TDISP_STATE_OF: dict[TdiState, int] = {
    TdiState.UNBOUND: 0, TdiState.BINDING: 0, TdiState.LOCKED: 1, TdiState.STARTING: 1,
    TdiState.RUN: 2, TdiState.UNBINDING: 2, TdiState.ERROR: 3,
}

# State rules beyond the tables (status codes as sev_ret_code names):
# - DEV_CONNECT on CREATED starts the loop; on CONNECTED/CONNECTING-by-another-command:
#   INVALID_DEV_STATE; on ERROR: RECLAIM_REQUIRED.
# - DEV_DISCONNECT on CONNECTED; without FORCE while a TDI of the device is bound:
#   IN_USE; with FORCE from any state (TDIs are force-unbound, no SPDM traffic).
# - DEV_RECLAIM while TDI contexts of the device exist: IN_USE; on CONNECTED:
#   INVALID_DEV_STATE (disconnect first).
# - TDI_CREATE needs a CONNECTED device (INVALID_DEV_STATE); TDI_BIND on an ERROR TDI:
#   RECLAIM_REQUIRED; TDI_RECLAIM of a bound TDI: INVALID_TDI_STATE.
# - While a command's SPDM_REQUEST loop is pending on a device context, only the same
#   command on the same contexts resumes it (the SLAs of its buffers may change, as the
#   host may expand them); any other command on that device: INVALID_DEV_STATE, except
#   DEV_DISCONNECT with FORCE, which abandons the loop.
# - DEV_CONNECT again after a DEV_DISCONNECT (same device context) must find the same
#   certificate chain as the first connect: else DEV_CERT_CHANGED (device to ERROR).

# -- what the PSP says to the device, in which order ------------------------------------
# DEV_CONNECT: GET_VERSION/CAPABILITIES/NEGOTIATE_ALGORITHMS, GET_DIGESTS,
#   GET_CERTIFICATE(cert_slot) (chain checked: links and leaf key, not a trust anchor,
#   which is the guest's business), KEY_EXCHANGE + FINISH, signed GET_MEASUREMENTS (all
#   blocks) in the session, IDE_KM QUERY, KEY_PROG x6 (key set 0, stream
#   ide_stream_id[0]), K_SET_GO x6.  The root port's half is keyed without traffic
#   (QEMU's root port has no IDE capability).
# DEV_DISCONNECT: K_SET_STOP x6, END_SESSION (none with FORCE).
# DEV_CERTIFICATES: GET_CERTIFICATE again; DEV_MEASUREMENTS: signed GET_MEASUREMENTS (the
#   requester draws its own nonce; meas_nonce is recorded in the event).
# TIO_ROLL_KEY: KEY_PROG x6 on the other key set, K_SET_GO x6.
# TDI_BIND: TDISP GET_VERSION, GET_CAPABILITIES, LOCK_INTERFACE (the command's
#   tdisp_lock_if_flags, default stream = ide_stream_id[0], MMIO reporting offset 0),
#   GET_DEVICE_INTERFACE_REPORT, GET_DEVICE_INTERFACE_STATE (must be CONFIG_LOCKED).
#   With run_flags RUN_FORCE: START_INTERFACE (on a LOCKED TDI this is how SEV_TIO_OP RUN
#   reaches the device: the hypervisor re-issues TDI_BIND with RUN_FORCE).
# TDI_UNBIND: STOP_INTERFACE (none with FORCE).  TDI_REPORT: the report again.
MMIO_REPORTING_OFFSET = 0
LOCK_FLAGS_ALLOWED = int(t.LockInterfaceFlags.NO_FW_UPDATE | t.LockInterfaceFlags.LOCK_MSIX
                         | t.LockInterfaceFlags.BIND_P2P
                         | t.LockInterfaceFlags.ALL_REQUEST_REDIRECT)

# -- output buffer ---------------------------------------------------------------------
# After a command completes, its objects are written into the output buffer back to back,
# each a 0x20-byte header + data; the header's length is header + data exactly (so the
# blob keeps its size) and the next object starts at the next 32-byte boundary.
# DEV_CONNECT: CERTIFICATE, MEASUREMENT; DEV_CERTIFICATES: CERTIFICATE;
# DEV_MEASUREMENTS: MEASUREMENT; TDI_BIND and TDI_REPORT: REPORT.  payload_sz = their total.
# CERTIFICATE = the SPDM certificate chain
# (Length, RootHash, DER certificates); MEASUREMENT = the whole MEASUREMENTS response;
# REPORT = TDI_REPORT_STRUCTURE.  If they do not fit: EXPAND_BUFFER_LENGTH_REQUEST with
# the capacity needed (page-rounded) written into the output buffer's capacity_sz, as
# Linux's sla_expand reads it; the re-issued command writes the objects without talking
# to the device again.  Same for a scratch buffer below SPDM_SCRATCH_SIZE_MIN.
OUTPUT_TYPE_SPDM = 1

# -- DEV_STATUS / TDI_STATUS / TDI_INFO (layouts not published) -------------------------
# DEV_STATUS writes DevStatusOut, TDI_STATUS writes TdiStatusOut (below), TDI_INFO the
# 192-byte TIO_MSG_TDI_INFO_RSP the guest would get.

# -- the guest -------------------------------------------------------------------------
# SNP_GCTX_CREATE(gctx_paddr) creates a guest context; SNP_LAUNCH_UPDATE with page type
# SECRETS writes the secrets page (version 3, VMPCK0..3 drawn at random) at `address`.
# The guest's ASID is its 1-based creation index.
SECRETS_PAGE_VERSION = 3
# Guest messages are sealed with VMPCK0..3 (msg_vmpck says which); each key has its own
# sequence counter.  A message that fails authentication, uses a number other than the
# next one, or has the wrong type or size: TIO_GUEST_REQUEST answers INVALID_PARAM, writes
# no response, and the counter does not move (SNP guest-request rules).
# guest_device_id in a message must be the guest_device_id the TDI was bound with, and the
# TDI the command names must be bound to the command's guest context; else the message
# answers INVALID_TDI.
# MMIO_VALIDATE: a guest physical address equals the report's address (no nested paging
# here; MMIO_REPORTING_OFFSET 0), so subrange_base must be the range's first page +
# range_offset pages (else NOT_MAPPED).  Checks in order: TDI known (INVALID_TDI), bound
# (TDI_UNBOUND), base 4K-aligned (NOT_4K), range_id reported (NOT_REPORTED), range is TEE
# memory and not MSI-X table/PBA (NOT_ASSIGNED), page count > 0 and offset + count within
# the range (OUT_OF_RANGE), base matches (NOT_MAPPED).  Invalidation (validated = 0) and
# SDTE writes with V = 0 are allowed on an unbound TDI while its context exists, so a guest
# can tear down after STOP.
# MMIO_CONFIG: read (write = 0) returns the range's attributes; write sets non_tee_mem only
# on a range the report marks IS_MEM_ATTR_UPDATABLE (else NOT_IMMUTABLE).  Status codes as
# MMIO_VALIDATE's.
# TDI_INFO digests are SHA-384 of the certificate chain, the MEASUREMENTS response and the
# interface report as the PSP received them; spdm_algos = BaseAsymAlgo | BaseHashAlgo << 32
# of the connection.  meas_digest_info: VALID, and FRESH when the measurements were taken
# after the TDI was bound.
# Evidence (param REPORT): the hypervisor returns the three objects in the guest's shared
# data pages as a GUID table of {guid[16], u32 offset, u32 length} entries ended by a zero
# entry (the SNP extended-report certificate table format), objects after it.
GUID_ENTRY_SIZE = 24


# -- DEV_STATUS / TDI_STATUS outputs (layouts not published) -----------------------------


@dataclass(frozen=True)
class DevStatusOut(Struct):
    """TIO_DEV_STATUS output at status_paddr (0x40)."""

    length: int = u32()          # 0x00
    state: int = u32()           # 0x04 index of DevState (CREATED 0 .. ERROR 4)
    tdi_count: int = u32()       # 0x08 TDI contexts of the device
    stream_id: int = u8()        # 0x0C IDE stream of TC0
    key_set: int = u8()          # 0x0D IDE key set in use
    cert_slot: int = u8()        # 0x0E
    reserved: bytes = raw(1)     # 0x0F
    certs_digest: bytes = raw(48)  # 0x10 SHA-384 of the chain of the first connect


@dataclass(frozen=True)
class TdiStatusOut(Struct):
    """TIO_TDI_STATUS output at status_paddr (0x20)."""

    length: int = u32()          # 0x00
    state: int = u8()            # 0x04 index of TdiState (UNBOUND 0 .. ERROR 6)
    guest_status: int = u8()     # 0x05 TdiStatus as TDI_INFO shows it
    guest_device_id: int = u16()  # 0x06
    report_count: int = u64()    # 0x08
    gctx_paddr: int = u64()      # 0x10
    reserved: bytes = raw(8)     # 0x18
