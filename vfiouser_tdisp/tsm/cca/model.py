"""[MODEL] Everything this RMM emulator decides that no public specification defines.

One place, so that a reader can see at a glance what is invented and on what it is
based (firmware-abi.md section F.4 lists the unknowns; docs/platform-cca.md repeats
this list for users).  Nothing outside this module may hard-code one of these choices.
"""

from __future__ import annotations

import itertools
import threading

from ...tdisp import messages as t

# -- the firmware port -----------------------------------------------------------------
# ABI identifier and version the firmware port shows the guest module for this RMM: the
# port ABI's platform fourcc "CCA " (little-endian, docs/firmware-port.md) and 1.0 (our own
# numbering of this emulator's call interface, not an Arm number).
ABI_ID = 0x2041_4343
ABI_VERSION = 0x0001_0000

# RMI_VERSION / RSI_VERSION answers: the DA ABI of TF-RMM main is "1.1" (alp17 DA) with
# 2.0-bet0 pieces; we report 1.1 for both lower and higher revision.
RMI_ABI_VERSION = (1 << 16) | 1
RSI_ABI_VERSION = (1 << 16) | 1

# -- granules and realms ---------------------------------------------------------------
# The RMM tracks granules only as far as the DA calls need: a granule is NS until
# RMI_GRANULE_DELEGATE, then becomes RD / REC / PDEV / VDEV when an object is created in
# it.  Realm parameters (rmi_realm_params) and REC parameters are not read: every realm
# has DA enabled.  RSI calls arriving through the port act for the *guest realm*: the
# realm created last that still exists (one VM plays host and TVM here).
# There is no stage-2 model: any guest address is "protected" for RSI purposes.

# -- device communication --------------------------------------------------------------
# Size of the request and response buffers the host names in rmi_dev_comm_enter (each
# must be granule aligned).  The RMM never writes more than this into either.
DEV_COMM_BUFFER_SIZE = 0x4000
# Largest resp_len accepted on entry (bytes).
DEV_COMM_MAX_RESP_LEN = DEV_COMM_BUFFER_SIZE
# rmi_dev_comm_exit.timeout for RSP_WAIT (milliseconds) and req_delay (microseconds).
DEV_COMM_TIMEOUT_MS = 5000
DEV_COMM_REQ_DELAY_US = 0
#
# Object cache.  The host keeps what an exit's REQ_CACHE / RSP_CACHE flags point at and
# serves it to the realm later (RHI OBJECT_READ).  TF-RMM caches slices of the plain
# SPDM messages; objects that arrive inside a secured session are encrypted on the wire,
# so this RMM writes the *plaintext object* into the response buffer before the exit
# that flags it (RSP_CACHE, cache_rsp_offset 0), in pieces of at most
# DEV_COMM_BUFFER_SIZE, appended in order.  The first piece of each object also carries
# RSP_RESET: "drop what you hold for cache_obj_id, then keep this piece" (a new report or
# measurement replaces the old one).  REQ_CACHE is never used.  The objects:
#   VCA             the VCA transcript: GET_VERSION .. ALGORITHMS as exchanged (DSP0274
#                   "VCA" = message A)
#   CERTIFICATE     the SPDM certificate chain of slot id_index (Length, RootHash, DER
#                   certificates), as returned by GET_CERTIFICATE
#   MEASUREMENTS    the whole MEASUREMENTS response message (signed, in the session)
#   INTERFACE_REPORT  the TDISP device interface report (TDI_REPORT_STRUCTURE)
# Each digest in rsi_vdev_info is the hash (pdev hash_algo) of the whole object.
# pubkey_digest = hash(key[:key_len] || metadata[:metadata_len]) of RMI_PDEV_SET_PUBKEY.
#
# An exit that asks the host to cache a piece but sends nothing sets MULTI: "call
# COMMUNICATE again".  STREAM_WAIT: the endpoint's IDE stream setup waits for the root
# port PDEV's COMMUNICATE.  The host's loop ends at an exit with none of REQ_SEND,
# RSP_WAIT, MULTI, STREAM_WAIT.
#
# A COMMUNICATE that fails (device answered ERROR, a signature or the chain does not
# verify, the host reports enter.status = ERROR) still returns RMI_SUCCESS; the PDEV or
# VDEV moves to ERROR, which the host sees with GET_STATE.
#
# PDEV_ABORT / VDEV_ABORT drop the operation in flight; the object moves to ERROR (the
# SPDM/TDISP state on the device is unknown after an abandoned exchange).  With nothing
# in flight they succeed and change nothing.
# VDEV_UNLOCK always ends UNLOCKED, even when the device does not confirm
# STOP_INTERFACE (the event says so): the realm's access is withdrawn either way, so a
# VDEV in ERROR can always be unlocked and destroyed.
# PDEV_STOP is accepted in any state but STOPPED (TF-RMM); with a session it ends it
# (END_SESSION) during the next COMMUNICATE.
#
# RMI_PDEV_STREAM_CONNECT(params_ptr) -> x1 = stream handle;
# RMI_PDEV_STREAM_COMPLETE(handle) and RMI_PDEV_STREAM_DISCONNECT(handle): the handle
# is the only argument.  Keys: the RMM draws one key set per stream, programs the
# endpoint through IDE_KM (QUERY, 6x KEY_PROG, then 6x K_SET_GO once the root port has
# its keys) and "programs" the root port without any traffic (QEMU's root port has no
# IDE capability), during the root port PDEV's COMMUNICATE.  Only NCOH streams.
# PDEV_STREAM_KEY_REFRESH / KEY_PURGE: RMI_ERROR_NOT_SUPPORTED (as TF-RMM for purge).

# -- TDISP ------------------------------------------------------------------------------
# LOCK_INTERFACE_REQUEST flags the RMM sets (firmware-abi.md F.7: AMD's defaults):
# NO_FW_UPDATE; the default stream is the PDEV's connected IDE stream; the MMIO
# reporting offset is 0, so report ranges are the device's host-physical BAR pages.
LOCK_FLAGS = int(t.LockInterfaceFlags.NO_FW_UPDATE)
MMIO_REPORTING_OFFSET = 0
# mmio_range.first_page is read as a 4 KiB page number (how Linux parses it).
REPORT_PAGE_SHIFT = 12
# rsi_vdev_info.format_version for TDISP 1.0 (major [31:16], minor [15:0]).
TDISP_FORMAT_VERSION = 1 << 16
# The SPDM requester draws its own GET_MEASUREMENTS nonce; the 32-byte nonce of
# rmi_vdev_measure_params is recorded in the VDEV_GET_MEASUREMENTS event, not sent.

# -- nonces ---------------------------------------------------------------------------------
# lock_nonce, meas_nonce and report_nonce are u64 values; each LOCK, GET_MEASUREMENTS,
# GET_INTERFACE_REPORT draws the next value of one RMM-wide counter (never 0, never
# repeated), so a value from before any later event is always stale.


class NonceSource:
    def __init__(self) -> None:
        self._next = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return next(self._next)


# -- REC exits (host calls) ------------------------------------------------------------------
# A TCG guest cannot take a REC exit, so RSI_HOST_CALL is split:
#  1. the realm calls RSI_HOST_CALL(ipa) -> RSI_INCOMPLETE: "the REC exited to the host";
#  2. the host calls RMI_REC_ENTER(rec, run_ptr): the RMM reports the exit in
#     rmi_rec_run.exit (exit_reason HOST_CALL, gprs, imm);
#  3. the host serves the RHI call and calls RMI_REC_ENTER again with the answer in
#     rmi_rec_run.enter.gprs: the RMM copies gprs[0..30] into the realm's rsi_host_call and
#     reports exit_reason IRQ (nothing else pending);
#  4. the realm reads the answer from its rsi_host_call.
# RSI VDEV calls name the VDEV by its vdev_id (rmi_vdev_params.vdev_id); the RMM resolves
# it without a VDEV_REQUEST exit, so RMI_VDEV_COMPLETE never has an exit to complete
# (RMI_ERROR_REC).  RSI_VDEV_VALIDATE_MAPPING needs no DEV_MEM_MAP exit: there is no
# stage 2; the RMM checks the range against the locked interface report and the
# VDEV's address ranges.

# -- RHI --------------------------------------------------------------------------------------
# The ACS layout (RHI 1.0-bet1) does not publish the GET_MEASUREMENTS parameter block; it
# is read like rmi_vdev_measure_params (flags RAW b0 @0, nonce[32] @0x100).  The Linux
# RFC v4 layout uses its own (flags @0, indices[32] @0x100, nonce[32] @0x200).
# Operations that need the device (SET_TDI_STATE, GET_MEASUREMENTS, GET_INTERFACE_REPORT)
# answer INCOMPLETE with a handle; RHI_DA_VDEV_CONTINUE(handle) runs the host's
# COMMUNICATE loop to the end and answers SUCCESS (or DEVICE).
# SET_TDI_STATE(CONFIG_LOCKED) on a VDEV the host already locked answers SUCCESS.
