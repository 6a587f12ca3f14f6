"""The Arm CCA Realm Management Monitor, as far as device assignment needs it.

RMI (host calls) and RSI (realm calls) from firmware-abi.md C.2-C.6, a table from
call number to handler, and the PDEV / VDEV / IDE stream / VDEV DMA state machines
as one enum plus one transition table each (:mod:`vfiouser_tdisp.fsm`).  The RMM
implements :class:`vfiouser_tdisp.firmware.Firmware`: the firmware port (or the
Python host driver) hands it one call at a time with the guest memory the call's
buffers live in.  It never touches the device: see :mod:`.devcomm`.
What the public specifications leave open is decided in :mod:`.model`.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ...events import emit
from ...faults import ARMED, FaultSet, call_matches
from ...firmware import CallClass, FirmwareCall, GuestMemory, GuestMemoryError
from ...fsm import StateMachine
from ...wire import DecodeError
from . import model, ops
from .abi import (
    DIGEST_FIELD,
    GRANULE_SIZE,
    REC_NR_GPRS,
    RMI_ADDR_DESC_ADDR_MASK,
    RMI_ADDR_DESC_COUNT_MASK,
    RMI_ADDR_DESC_COUNT_SHIFT,
    RMI_ADDR_DESC_SIZE_MASK,
    RMI_ADDR_DESC_STATE_UNDELEGATED,
    RMI_DEV_COMM_ENTER_OFFSET,
    RMI_DEV_COMM_EXIT_OFFSET,
    RMI_DONATE_COUNT_SHIFT,
    RMI_FEATURE_REGISTER_1_HASH_SHA_256,
    RMI_FEATURE_REGISTER_1_HASH_SHA_512,
    RMI_FEATURE_REGISTER_2_DA,
    RMI_OP_MEM_REQ_DONATE,
    RMI_OP_MEM_REQ_NONE,
    RMI_PDEV_FLAGS_CATEGORY_MASK,
    RMI_PDEV_FLAGS_CATEGORY_SHIFT,
    RMI_PDEV_FLAGS_SPDM,
    RMI_REC_RUN_ENTER_GPRS,
    RMI_REC_RUN_EXIT,
    RMI_STREAM_PARAMS_ADDR_RANGE_OFFSET,
    RMI_STREAM_PARAMS_MAX_ADDR_RANGES,
    RMI_VDEV_MEASURE_FLAGS_RAW,
    RMI_VDEV_PARAMS_ADDR_RANGE_OFFSET,
    RMI_VDEV_PARAMS_MAX_ADDR_RANGES,
    RSI_ACCEPT,
    RSI_FEATURE_REGISTER_0_DA,
    RSI_HOST_CALL_ALIGN,
    RSI_REJECT,
    RSI_VDEV_INFO_ALIGN,
    RSI_VDEV_VALIDATE_MAPPING_FLAGS_COHERENT,
    RSI_VDEV_VALIDATE_MAPPING_FLAGS_LIMITED_ORDER,
    RecExitHostCall,
    RmiAddressRange,
    RmiDevCommEnter,
    RmiDevCommExitFlags,
    RmiDevCommObject,
    RmiFid,
    RmiHashAlgo,
    RmiPdevCategory,
    RmiPdevParams,
    RmiPdevState,
    RmiPdevStreamParams,
    RmiPublicKeyParams,
    RmiRecExitReason,
    RmiSignatureAlgorithm,
    RmiStatus,
    RmiStreamType,
    RmiVdevMeasureParams,
    RmiVdevParams,
    RmiVdevState,
    RsiDevMemFormat,
    RsiFid,
    RsiHostCall,
    RsiStatus,
    RsiVdevInfo,
    rsi_state_of,
)
from .devcomm import DevFlow, Operation
from .rhi import DEFAULT_LAYOUT, LAYOUTS

Result = tuple[int, ...]

# -- state machines -----------------------------------------------------------------------
P = RmiPdevState
PDEV_TRANSITIONS: dict[tuple[RmiPdevState, str], RmiPdevState] = {
    (P.NEW, "identity_done"): P.NEEDS_KEY,        # endpoint: VCA + certificate cached
    (P.NEW, "rp_ready"): P.READY,                 # root port category: nothing to say
    (P.NEEDS_KEY, "set_pubkey"): P.HAS_KEY,
    (P.HAS_KEY, "session_done"): P.READY,
    (P.NEW, "comm_error"): P.ERROR,
    (P.HAS_KEY, "comm_error"): P.ERROR,
    (P.READY, "comm_error"): P.ERROR,
    (P.NEW, "abort"): P.ERROR,
    (P.HAS_KEY, "abort"): P.ERROR,
    (P.READY, "abort"): P.ERROR,
    (P.NEW, "stopped"): P.STOPPED,
    (P.NEEDS_KEY, "stopped"): P.STOPPED,
    (P.HAS_KEY, "stopped"): P.STOPPED,
    (P.READY, "stopped"): P.STOPPED,
    (P.ERROR, "stopped"): P.STOPPED,
}

V = RmiVdevState
VDEV_TRANSITIONS: dict[tuple[RmiVdevState, str], RmiVdevState] = {
    (V.NEW, "unlocked"): V.UNLOCKED,
    (V.UNLOCKED, "locked"): V.LOCKED,
    (V.LOCKED, "report"): V.LOCKED,
    (V.STARTED, "report"): V.STARTED,
    (V.LOCKED, "measured"): V.LOCKED,
    (V.STARTED, "measured"): V.STARTED,
    (V.LOCKED, "started"): V.STARTED,
    (V.LOCKED, "unlocked"): V.UNLOCKED,
    (V.STARTED, "unlocked"): V.UNLOCKED,
    (V.ERROR, "unlocked"): V.UNLOCKED,
    **{(s, "comm_error"): V.ERROR for s in (V.NEW, V.UNLOCKED, V.LOCKED, V.STARTED, V.ERROR)},
    **{(s, "abort"): V.ERROR for s in (V.NEW, V.UNLOCKED, V.LOCKED, V.STARTED, V.ERROR)},
}


class StreamState(enum.Enum):
    """An IDE stream between an endpoint PDEV and a root port PDEV (RMM-internal)."""

    CONNECTING = "CONNECTING"
    KEYED = "KEYED"
    CONNECTED = "CONNECTED"
    DISCONNECTING = "DISCONNECTING"
    DISCONNECTED = "DISCONNECTED"


S = StreamState
STREAM_TRANSITIONS: dict[tuple[StreamState, str], StreamState] = {
    (S.CONNECTING, "keyed"): S.KEYED,
    (S.KEYED, "complete"): S.CONNECTED,
    (S.CONNECTED, "disconnect"): S.DISCONNECTING,
    (S.DISCONNECTING, "disconnected"): S.DISCONNECTED,
    (S.CONNECTING, "comm_error"): S.DISCONNECTED,
    (S.DISCONNECTING, "comm_error"): S.DISCONNECTED,
}


class SroState(enum.Enum):
    """A stateful RMI operation waiting for the host (RMM 2.0 SRO; model.py)."""

    DONATE = "DONATE"           # waiting for RMI_OP_MEM_DONATE
    CONTINUE = "CONTINUE"       # all memory there: waiting for RMI_OP_CONTINUE
    DONE = "DONE"
    CANCELLED = "CANCELLED"


SRO_TRANSITIONS: dict[tuple[SroState, str], SroState] = {
    (SroState.DONATE, "donated_part"): SroState.DONATE,
    (SroState.DONATE, "donated_all"): SroState.CONTINUE,
    (SroState.CONTINUE, "continued"): SroState.DONE,
    (SroState.DONATE, "cancel"): SroState.CANCELLED,
    (SroState.CONTINUE, "cancel"): SroState.CANCELLED,
}


class VdevDma(enum.IntEnum):
    """RmmVdevDmaState."""

    DISABLED = 0
    ENABLED = 1


DMA_TRANSITIONS: dict[tuple[VdevDma, str], VdevDma] = {
    (VdevDma.DISABLED, "dma_enable"): VdevDma.ENABLED,
    (VdevDma.ENABLED, "dma_disable"): VdevDma.DISABLED,
    (VdevDma.ENABLED, "tdi_left_run"): VdevDma.DISABLED,
}

# -- firmware objects -----------------------------------------------------------------------


class Granule(enum.Enum):
    DELEGATED = "DELEGATED"
    RD = "RD"
    REC = "REC"
    PDEV = "PDEV"
    PDEV_AUX = "PDEV_AUX"       # donated to a PDEV through the SRO (model.py)
    VDEV = "VDEV"


@dataclass
class Sro:
    """A PDEV_CREATE that waits for memory (model.py "PDEV memory")."""

    handle: int
    pdev: int
    finish: Callable[[list[int]], None]
    wanted: int
    fsm: StateMachine[SroState]
    donated: list[int] = field(default_factory=list)

    @property
    def outstanding(self) -> int:
        return self.wanted - len(self.donated)

    def request(self) -> tuple[int, int]:
        """(request kind, donate request) as the INCOMPLETE answer carries them."""
        if self.outstanding == 0:
            return (RMI_OP_MEM_REQ_NONE, 0)
        # 4 KiB granules (size 0), delegated (state 0), not necessarily contiguous
        return (RMI_OP_MEM_REQ_DONATE, self.outstanding << RMI_DONATE_COUNT_SHIFT)


@dataclass
class HostCall:
    ipa: int
    imm: int
    gprs: tuple[int, ...]
    reported: bool = False


@dataclass
class Realm:
    rd: int
    recs: list[int] = field(default_factory=list)
    vdevs: dict[int, Vdev] = field(default_factory=dict)   # by vdev_id


@dataclass
class Rec:
    addr: int
    realm: Realm
    host_call: HostCall | None = None


@dataclass
class Stream:
    handle: int
    ep: Pdev
    rp: Pdev
    keys: ops.StreamKeys
    params: RmiPdevStreamParams
    fsm: StateMachine[StreamState]


@dataclass
class Pdev:
    addr: int
    params: RmiPdevParams
    category: RmiPdevCategory
    fsm: StateMachine[RmiPdevState]
    ctx: ops.SpdmContext | None
    op: Operation | None = None
    op_done: Callable[[Operation], object] | None = None
    pubkey: RmiPublicKeyParams | None = None
    aux: list[int] = field(default_factory=list)    # granules donated through the SRO
    stream: Stream | None = None
    vdevs: list[Vdev] = field(default_factory=list)
    # what the digests are over: the VCA and certificate chain the RMM itself exchanged
    objects: dict[RmiDevCommObject, bytes] = field(default_factory=dict)

    @property
    def state(self) -> RmiPdevState:
        return self.fsm.state

    def busy(self) -> bool:
        return self.op is not None or any(v.op is not None for v in self.vdevs)


@dataclass
class Vdev:
    addr: int
    realm: Realm
    pdev: Pdev
    params: RmiVdevParams
    ranges: list[tuple[int, int]]
    fsm: StateMachine[RmiVdevState]
    dma: StateMachine[VdevDma]
    op: Operation | None = None
    op_done: Callable[[Operation], object] | None = None
    start_nonce: bytes = b""
    lock_nonce: int = 0
    meas_nonce: int = 0
    report_nonce: int = 0
    report: bytes = b""
    measurements: bytes = b""
    validated: list[tuple[int, int, int]] = field(default_factory=list)  # ipa, top, pa

    @property
    def state(self) -> RmiVdevState:
        return self.fsm.state

    @property
    def function_id(self) -> int:
        return self.params.tdi_id & 0xFFFF


# -- the RMM ----------------------------------------------------------------------------------

class Rmm:
    """Arm CCA RMM emulator (a :class:`vfiouser_tdisp.firmware.Firmware`)."""

    abi_id = model.ABI_ID
    abi_version = model.ABI_VERSION

    def __init__(self, name: str = "rmm", rhi_layout: str = DEFAULT_LAYOUT) -> None:
        self.name = name
        # Fault injection (faults.py): fw-busy answers RMI_BUSY.
        self.faults: FaultSet = ARMED
        # the layout the realm's host calls are named in (events): the RMM passes them
        # on untouched, the host answers them (rhi.py)
        self.rhi_layout = LAYOUTS[rhi_layout]
        self.granules: dict[int, Granule] = {}
        self.realms: dict[int, Realm] = {}
        self.recs: dict[int, Rec] = {}
        self.pdevs: dict[int, Pdev] = {}
        self.vdevs: dict[int, Vdev] = {}
        self.streams: dict[int, Stream] = {}
        self._stream_handles = itertools.count(1)
        self.sros: dict[int, Sro] = {}
        self._sro_handles = itertools.count(model.SRO_HANDLE_BASE)
        self.nonce = model.NonceSource()
        self._lock = threading.RLock()
        self.rmi: dict[int, Callable[[GuestMemory, tuple[int, ...]], Result]] = {
            RmiFid.RMI_VERSION: self.rmi_version,
            RmiFid.RMI_FEATURES: self.rmi_features,
            RmiFid.RMI_GRANULE_DELEGATE: self.rmi_granule_delegate,
            RmiFid.RMI_GRANULE_UNDELEGATE: self.rmi_granule_undelegate,
            RmiFid.RMI_REALM_CREATE: self.rmi_realm_create,
            RmiFid.RMI_REALM_DESTROY: self.rmi_realm_destroy,
            RmiFid.RMI_REC_CREATE: self.rmi_rec_create,
            RmiFid.RMI_REC_DESTROY: self.rmi_rec_destroy,
            RmiFid.RMI_REC_ENTER: self.rmi_rec_enter,
            RmiFid.RMI_PDEV_CREATE: self.rmi_pdev_create,
            RmiFid.RMI_PDEV_COMMUNICATE: self.rmi_pdev_communicate,
            RmiFid.RMI_PDEV_GET_STATE: self.rmi_pdev_get_state,
            RmiFid.RMI_PDEV_SET_PUBKEY: self.rmi_pdev_set_pubkey,
            RmiFid.RMI_PDEV_STOP: self.rmi_pdev_stop,
            RmiFid.RMI_PDEV_DESTROY: self.rmi_pdev_destroy,
            RmiFid.RMI_PDEV_ABORT: self.rmi_pdev_abort,
            RmiFid.RMI_PDEV_STREAM_CONNECT: self.rmi_pdev_stream_connect,
            RmiFid.RMI_PDEV_STREAM_COMPLETE: self.rmi_pdev_stream_complete,
            RmiFid.RMI_PDEV_STREAM_DISCONNECT: self.rmi_pdev_stream_disconnect,
            RmiFid.RMI_PDEV_STREAM_KEY_REFRESH: self.rmi_not_supported,
            RmiFid.RMI_PDEV_STREAM_KEY_PURGE: self.rmi_not_supported,
            RmiFid.RMI_OP_MEM_DONATE: self.rmi_op_mem_donate,
            RmiFid.RMI_OP_CONTINUE: self.rmi_op_continue,
            RmiFid.RMI_OP_CANCEL: self.rmi_op_cancel,
            RmiFid.RMI_OP_MEM_RECLAIM: self.rmi_not_supported,
            RmiFid.RMI_VDEV_CREATE: self.rmi_vdev_create,
            RmiFid.RMI_VDEV_COMMUNICATE: self.rmi_vdev_communicate,
            RmiFid.RMI_VDEV_LOCK: self.rmi_vdev_lock,
            RmiFid.RMI_VDEV_GET_INTERFACE_REPORT: self.rmi_vdev_get_interface_report,
            RmiFid.RMI_VDEV_GET_MEASUREMENTS: self.rmi_vdev_get_measurements,
            RmiFid.RMI_VDEV_START: self.rmi_vdev_start,
            RmiFid.RMI_VDEV_UNLOCK: self.rmi_vdev_unlock,
            RmiFid.RMI_VDEV_DESTROY: self.rmi_vdev_destroy,
            RmiFid.RMI_VDEV_GET_STATE: self.rmi_vdev_get_state,
            RmiFid.RMI_VDEV_ABORT: self.rmi_vdev_abort,
            RmiFid.RMI_VDEV_COMPLETE: self.rmi_vdev_complete,
        }
        self.rsi: dict[int, Callable[[GuestMemory, tuple[int, ...]], Result]] = {
            RsiFid.RSI_VERSION: self.rsi_version,
            RsiFid.RSI_FEATURES: self.rsi_features,
            RsiFid.RSI_HOST_CALL: self.rsi_host_call,
            RsiFid.RSI_VDEV_GET_INFO: self.rsi_vdev_get_info,
            RsiFid.RSI_VDEV_VALIDATE_MAPPING: self.rsi_vdev_validate_mapping,
            RsiFid.RSI_VDEV_DMA_ENABLE: self.rsi_vdev_dma_enable,
            RsiFid.RSI_VDEV_DMA_DISABLE: self.rsi_vdev_dma_disable,
        }

    # -- the Firmware interface ---------------------------------------------------------------
    def call(self, call: FirmwareCall, mem: GuestMemory) -> Result:
        table = self.rmi if call.cls is CallClass.HOST else self.rsi
        handler = table.get(call.fid)
        if handler is None:
            # SMCCC: an unknown function id answers NOT_SUPPORTED (-1) in x0.
            emit("rmm.call", cls=call.cls.name, fid=f"{call.fid:#x}", status="NOT_SUPPORTED")
            return (0xFFFF_FFFF_FFFF_FFFF,)
        args = tuple(call.args) + (0,) * (8 - len(call.args))
        with self._lock:
            try:
                if call.cls is CallClass.HOST and self.faults.take(
                        "fw-busy", f"{self.name}:{RmiFid(call.fid).name}",
                        lambda a: call_matches(a["call"], RmiFid(call.fid).name)):
                    # RMI_BUSY: nothing done, the host calls again (RMM spec B4).
                    result: Result = (RmiStatus.RMI_BUSY,)
                else:
                    result = handler(mem, args)
            except GuestMemoryError as exc:
                emit("rmm.memory_error", fid=f"{call.fid:#x}", error=str(exc))
                result = ((RmiStatus.RMI_ERROR_INPUT if call.cls is CallClass.HOST
                           else RsiStatus.RSI_ERROR_INPUT),)
        name = (RmiFid(call.fid).name if call.cls is CallClass.HOST
                else RsiFid(call.fid).name)
        status_enum = RmiStatus if call.cls is CallClass.HOST else RsiStatus
        emit("rmm.call", cls=call.cls.name, call=name,
             args=[f"{a:#x}" for a in call.args],
             status=status_enum(result[0]).name
             if result[0] in status_enum._value2member_map_ else result[0])
        return tuple(int(r) for r in result)

    # -- helpers ------------------------------------------------------------------------------
    def _ns_page(self, addr: int) -> bool:
        """A granule-aligned address the host still owns (not delegated to the RMM)."""
        return addr % GRANULE_SIZE == 0 and addr not in self.granules

    def _granule(self, addr: int, kind: Granule) -> bool:
        return addr % GRANULE_SIZE == 0 and self.granules.get(addr) is kind

    def _hash(self, pdev: Pdev, data: bytes) -> bytes:
        algo = "sha512" if pdev.params.hash_algo == RmiHashAlgo.RMI_HASH_SHA_512 else "sha256"
        return hashlib.new(algo, data).digest()

    def _guest_realm(self) -> Realm | None:
        return next(reversed(self.realms.values()), None)

    # -- version, features, granules, realms, RECs --------------------------------------------
    def rmi_version(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        ok = a[0] >> 16 == model.RMI_ABI_VERSION >> 16
        return (RmiStatus.RMI_SUCCESS if ok else RmiStatus.RMI_ERROR_INPUT,
                model.RMI_ABI_VERSION, model.RMI_ABI_VERSION)

    def rmi_features(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        value = {1: RMI_FEATURE_REGISTER_1_HASH_SHA_256 | RMI_FEATURE_REGISTER_1_HASH_SHA_512,
                 2: RMI_FEATURE_REGISTER_2_DA}.get(a[0], 0)
        return (RmiStatus.RMI_SUCCESS, value)

    def rmi_granule_delegate(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        if not self._ns_page(a[0]):
            return (RmiStatus.RMI_ERROR_INPUT,)
        self.granules[a[0]] = Granule.DELEGATED
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_granule_undelegate(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        if not self._granule(a[0], Granule.DELEGATED):
            return (RmiStatus.RMI_ERROR_INPUT,)
        del self.granules[a[0]]
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_realm_create(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        rd, params = a[0], a[1]
        if not self._granule(rd, Granule.DELEGATED) or not self._ns_page(params):
            return (RmiStatus.RMI_ERROR_INPUT,)
        self.granules[rd] = Granule.RD
        self.realms[rd] = Realm(rd)
        emit("rmm.realm", rd=f"{rd:#x}", op="create")
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_realm_destroy(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        realm = self.realms.get(a[0])
        if realm is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if realm.recs or realm.vdevs:
            return (RmiStatus.RMI_ERROR_REALM,)
        del self.realms[a[0]]
        self.granules[a[0]] = Granule.DELEGATED
        emit("rmm.realm", rd=f"{a[0]:#x}", op="destroy")
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_rec_create(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        rd, rec, params = a[0], a[1], a[2]
        realm = self.realms.get(rd)
        if realm is None or not self._granule(rec, Granule.DELEGATED) or \
                not self._ns_page(params):
            return (RmiStatus.RMI_ERROR_INPUT,)
        self.granules[rec] = Granule.REC
        self.recs[rec] = Rec(rec, realm)
        realm.recs.append(rec)
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_rec_destroy(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        rec = self.recs.pop(a[0], None)
        if rec is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        rec.realm.recs.remove(a[0])
        self.granules[a[0]] = Granule.DELEGATED
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_rec_enter(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        """[MODEL] the host's half of a host call (see model.py "REC exits")."""
        rec, run = self.recs.get(a[0]), a[1]
        if rec is None or not self._ns_page(run):
            return (RmiStatus.RMI_ERROR_INPUT,)
        call = rec.host_call
        if call is not None and call.reported:
            gprs = struct.unpack(f"<{REC_NR_GPRS}Q",
                                 mem.read(run + RMI_REC_RUN_ENTER_GPRS, 8 * REC_NR_GPRS))
            answer = RsiHostCall(imm=call.imm, gprs=struct.pack(f"<{REC_NR_GPRS}Q", *gprs))
            mem.write(call.ipa, answer.pack())
            rec.host_call = call = None
            emit("rmm.host_call", rec=f"{rec.addr:#x}", op="complete", status=gprs[0])
        if call is not None:
            call.reported = True
            exit_ = RecExitHostCall(exit_reason=RmiRecExitReason.RMI_EXIT_HOST_CALL,
                                    gprs=struct.pack(f"<{REC_NR_GPRS}Q", *call.gprs),
                                    imm=call.imm)
        else:
            exit_ = RecExitHostCall(exit_reason=RmiRecExitReason.RMI_EXIT_IRQ)
        mem.write(run + RMI_REC_RUN_EXIT, exit_.pack())
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_not_supported(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        return (RmiStatus.RMI_ERROR_NOT_SUPPORTED,)

    # -- PDEV ---------------------------------------------------------------------------------
    def rmi_pdev_create(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        addr, params_addr = a[0], a[1]
        if not self._granule(addr, Granule.DELEGATED) or not self._ns_page(params_addr):
            return (RmiStatus.RMI_ERROR_INPUT,)
        try:
            params = RmiPdevParams.unpack(mem.read(params_addr, GRANULE_SIZE))
        except DecodeError:
            return (RmiStatus.RMI_ERROR_INPUT,)
        cat_bits = (params.flags & RMI_PDEV_FLAGS_CATEGORY_MASK) >> RMI_PDEV_FLAGS_CATEGORY_SHIFT
        spdm = bool(params.flags & RMI_PDEV_FLAGS_SPDM)
        known = RMI_PDEV_FLAGS_SPDM | RMI_PDEV_FLAGS_CATEGORY_MASK
        if params.flags & ~known or cat_bits not in RmiPdevCategory._value2member_map_ or \
                params.hash_algo not in (RmiHashAlgo.RMI_HASH_SHA_256,
                                         RmiHashAlgo.RMI_HASH_SHA_512) or \
                params.routing_id > 0xFFFF or params.id_index > 7 or \
                not params.rid_base < params.rid_top <= 0x10000:
            return (RmiStatus.RMI_ERROR_INPUT,)
        category = RmiPdevCategory(cat_bits)
        # An endpoint is reached through SPDM; a root port is programmed directly.
        if spdm != (category is not RmiPdevCategory.RP):
            return (RmiStatus.RMI_ERROR_INPUT,)
        if category is RmiPdevCategory.EP_OFF_CHIP and model.PDEV_AUX_GRANULES:
            # the PDEV needs memory first: an SRO the host feeds (model.py)
            self.granules[addr] = Granule.PDEV
            sro = Sro(next(self._sro_handles), addr,
                      lambda aux: self._pdev_created(addr, params, category, aux),
                      model.PDEV_AUX_GRANULES,
                      StateMachine("rmm.sro", SRO_TRANSITIONS, SroState.DONATE,
                                   command="PDEV_CREATE", pdev=f"pdev@{addr:#x}"))
            self.sros[sro.handle] = sro
            return (RmiStatus.RMI_INCOMPLETE, sro.handle, *sro.request())
        self._pdev_created(addr, params, category, [])
        return (RmiStatus.RMI_SUCCESS,)

    def _pdev_created(self, addr: int, params: RmiPdevParams, category: RmiPdevCategory,
                      aux: list[int]) -> None:
        spdm = bool(params.flags & RMI_PDEV_FLAGS_SPDM)
        name = f"pdev@{addr:#x}"
        pdev = Pdev(addr, params, category,
                    StateMachine("rmm.pdev", PDEV_TRANSITIONS, RmiPdevState.NEW, pdev=name),
                    ops.SpdmContext(name) if spdm else None)
        self.granules[addr] = Granule.PDEV
        self.pdevs[addr] = pdev
        pdev.aux = aux
        for g in aux:
            self.granules[g] = Granule.PDEV_AUX
        emit("rmm.pdev.created", pdev=name, category=category.name,
             pdev_id=f"{params.pdev_id:#x}", id_index=params.id_index)
        if pdev.ctx is not None:
            ctx = pdev.ctx

            def identity_done(op: Operation) -> None:
                pdev.objects[RmiDevCommObject.VCA] = bytes(ctx.spdm.message_a)
                pdev.objects[RmiDevCommObject.CERTIFICATE] = ctx.spdm.conn.cert_chain
                pdev.fsm.fire("identity_done")
            self._start(pdev, "identity", ops.identity(ctx, params.id_index), identity_done)
        else:
            self._start(pdev, "rp_ready", _nothing(), lambda op: pdev.fsm.fire("rp_ready"))

    # -- stateful RMI operations (SRO) --------------------------------------------------------
    def _sro(self, handle: int) -> Sro | None:
        sro = self.sros.get(handle)
        return sro if sro is not None and sro.fsm.state in (SroState.DONATE,
                                                           SroState.CONTINUE) else None

    def rmi_op_mem_donate(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        """OP_MEM_DONATE(handle, list, count): granules named by address descriptors."""
        sro, lst, count = self._sro(a[0]), a[1], a[2]
        if sro is None or sro.fsm.state is not SroState.DONATE or lst % 8 or \
                not 0 < count <= GRANULE_SIZE // 8 or \
                not self._ns_page(lst & ~(GRANULE_SIZE - 1)):
            return (RmiStatus.RMI_ERROR_INPUT, 0)
        try:
            descs = struct.unpack(f"<{count}Q", mem.read(lst, 8 * count))
        except GuestMemoryError:
            return (RmiStatus.RMI_ERROR_INPUT, 0)
        granules: list[int] = []
        for d in descs:
            n = (d & RMI_ADDR_DESC_COUNT_MASK) >> RMI_ADDR_DESC_COUNT_SHIFT
            base = d & RMI_ADDR_DESC_ADDR_MASK
            if d & RMI_ADDR_DESC_SIZE_MASK or d & RMI_ADDR_DESC_STATE_UNDELEGATED or n == 0:
                return (RmiStatus.RMI_ERROR_INPUT, 0)   # 4 KiB, delegated, not empty
            granules += [base + i * GRANULE_SIZE for i in range(n)]
        taken = granules[:sro.outstanding]
        if len(set(taken)) != len(taken) or \
                not all(self._granule(g, Granule.DELEGATED) for g in taken):
            return (RmiStatus.RMI_ERROR_INPUT, 0)
        for g in taken:
            self.granules[g] = Granule.PDEV_AUX
        sro.donated += taken
        sro.fsm.fire("donated_all" if sro.outstanding == 0 else "donated_part",
                     donated=len(taken), outstanding=sro.outstanding)
        return (RmiStatus.RMI_INCOMPLETE, len(taken), *sro.request())

    def rmi_op_continue(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        sro = self._sro(a[0])
        if sro is None or a[1] != 0:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if sro.fsm.state is SroState.DONATE:   # memory still missing: ask again
            return (RmiStatus.RMI_INCOMPLETE, sro.handle, *sro.request())
        sro.fsm.fire("continued")
        del self.sros[sro.handle]
        sro.finish(sro.donated)
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_op_cancel(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        sro = self._sro(a[0])
        if sro is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        sro.fsm.fire("cancel")
        del self.sros[sro.handle]
        for g in [*sro.donated, sro.pdev]:
            self.granules[g] = Granule.DELEGATED
        return (RmiStatus.RMI_SUCCESS,)

    def _start(self, obj: Pdev | Vdev, name: str, flow: DevFlow[object],
               done: Callable[[Operation], object]) -> None:
        obj.op = Operation(name, flow)
        obj.op_done = done
        emit("rmm.operation", object=f"{obj.addr:#x}", operation=name, phase="start")

    def _pdev(self, addr: int) -> Pdev | None:
        return self.pdevs.get(addr) if addr % GRANULE_SIZE == 0 else None

    def rmi_pdev_get_state(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        pdev = self._pdev(a[0])
        if pdev is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        return (RmiStatus.RMI_SUCCESS, pdev.state)

    def _communicate(self, mem: GuestMemory, obj: Pdev | Vdev, data_addr: int) -> Result:
        op = obj.op
        if not self._ns_page(data_addr):
            return (RmiStatus.RMI_ERROR_INPUT,)
        enter = RmiDevCommEnter.unpack(
            mem.read(data_addr + RMI_DEV_COMM_ENTER_OFFSET, RmiDevCommEnter.fixed_size()))
        if enter.status > 2 or not self._ns_page(enter.req_addr) or \
                not self._ns_page(enter.resp_addr) or enter.req_addr == enter.resp_addr or \
                enter.resp_len > model.DEV_COMM_MAX_RESP_LEN:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if op is None:
            return (RmiStatus.RMI_ERROR_DEVICE,)
        response = mem.read(enter.resp_addr, enter.resp_len) \
            if enter.status == 1 and op.awaiting is not None else None
        out = op.step(enter.status, response)
        if out.cache_data or out.cache_obj is not None:
            mem.write(enter.resp_addr, out.cache_data)
        if out.request:
            mem.write(enter.req_addr, out.request)
        mem.write(data_addr + RMI_DEV_COMM_EXIT_OFFSET, out.pack_exit().pack())
        emit("rmm.communicate", object=f"{obj.addr:#x}", operation=op.name,
             flags="|".join(f.name or "" for f in RmiDevCommExitFlags if f & out.flags) or "0",
             req_len=len(out.request),
             protocol=out.protocol.name if out.request else None,
             cache=out.cache_obj.name if out.cache_obj is not None else None)
        if op.done and not op.caches:
            obj.op = None
            done, obj.op_done = obj.op_done, None
            emit("rmm.operation", object=f"{obj.addr:#x}", operation=op.name,
                 phase="failed" if op.error else "done",
                 error=repr(op.error) if op.error else None)
            if op.error is not None:
                self._failed(obj, op)
            elif done is not None:
                try:
                    done(op)
                except Exception as exc:  # a check after the exchange failed
                    emit("rmm.comm_failed", operation=op.name, error=repr(exc))
                    op.error = exc
                    self._failed(obj, op)
        return (RmiStatus.RMI_SUCCESS,)

    def _failed(self, obj: Pdev | Vdev, op: Operation) -> None:
        if isinstance(obj, Pdev):
            if obj.stream is not None and obj.stream.fsm.can("comm_error"):
                self._drop_stream(obj.stream, "comm_error")
            if op.name == "stop":
                obj.fsm.fire("stopped", cause="stop failed")
            elif obj.fsm.can("comm_error"):
                obj.fsm.fire("comm_error", operation=op.name)
        else:
            self._vdev_error(obj, "comm_error", op.name)

    def _vdev_error(self, vdev: Vdev, trigger: str, cause: str) -> None:
        vdev.fsm.fire(trigger, operation=cause)
        if vdev.dma.can("tdi_left_run"):
            vdev.dma.fire("tdi_left_run")

    def rmi_pdev_communicate(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        pdev = self._pdev(a[0])
        if pdev is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if pdev.op is None and any(v.op is not None for v in pdev.vdevs):
            return (RmiStatus.RMI_BUSY,)
        return self._communicate(mem, pdev, a[1])

    def rmi_pdev_set_pubkey(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        pdev = self._pdev(a[0])
        if pdev is None or not self._ns_page(a[1]):
            return (RmiStatus.RMI_ERROR_INPUT,)
        if pdev.state is not RmiPdevState.NEEDS_KEY or pdev.op is not None:
            return (RmiStatus.RMI_ERROR_DEVICE,)
        params = RmiPublicKeyParams.unpack(mem.read(a[1], GRANULE_SIZE))
        if params.algo not in RmiSignatureAlgorithm._value2member_map_ or \
                not 0 < params.key_len <= 1024 or params.metadata_len > 1024:
            return (RmiStatus.RMI_ERROR_INPUT,)
        assert pdev.ctx is not None
        key = params.key[:params.key_len]
        meta = params.metadata[:params.metadata_len]
        if not ops.public_key_matches(pdev.ctx.leaf_key, params.algo, key, meta):
            emit("rmm.pubkey_mismatch", pdev=f"{pdev.addr:#x}")
            return (RmiStatus.RMI_ERROR_INPUT,)
        pdev.pubkey = params
        pdev.fsm.fire("set_pubkey", algo=RmiSignatureAlgorithm(params.algo).name)
        ctx = pdev.ctx
        self._start(pdev, "session", ops.session(ctx),
                    lambda op: pdev.fsm.fire("session_done"))
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_pdev_stop(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        pdev = self._pdev(a[0])
        if pdev is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if pdev.busy():
            return (RmiStatus.RMI_BUSY,)
        if pdev.state is RmiPdevState.STOPPED or pdev.vdevs or pdev.stream is not None:
            return (RmiStatus.RMI_ERROR_DEVICE,)
        flow = ops.stop(pdev.ctx) if pdev.ctx is not None else _nothing()
        self._start(pdev, "stop", flow, lambda op: pdev.fsm.fire("stopped"))
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_pdev_destroy(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        pdev = self._pdev(a[0])
        if pdev is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if pdev.state is not RmiPdevState.STOPPED or pdev.busy():
            return (RmiStatus.RMI_ERROR_DEVICE,)
        del self.pdevs[pdev.addr]
        for g in [pdev.addr, *pdev.aux]:   # the donated granules too (model.py)
            self.granules[g] = Granule.DELEGATED
        emit("rmm.pdev.destroyed", pdev=f"{pdev.addr:#x}")
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_pdev_abort(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        pdev = self._pdev(a[0])
        if pdev is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if pdev.op is not None:
            op, pdev.op, pdev.op_done = pdev.op, None, None
            op.cancel()
            if op.name == "stop":
                pdev.fsm.fire("stopped", cause="abort")
            elif pdev.fsm.can("abort"):
                if pdev.stream is not None and pdev.stream.fsm.can("comm_error"):
                    self._drop_stream(pdev.stream, "comm_error")
                pdev.fsm.fire("abort", operation=op.name)
        return (RmiStatus.RMI_SUCCESS,)

    # -- IDE streams ----------------------------------------------------------------------------
    def rmi_pdev_stream_connect(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        if not self._ns_page(a[0]):
            return (RmiStatus.RMI_ERROR_INPUT,)
        params = RmiPdevStreamParams.unpack(mem.read(a[0], RmiPdevStreamParams.fixed_size()))
        ep, rp = self._pdev(params.pdev_1), self._pdev(params.pdev_2)
        if ep is None or rp is None or params.flags != 0 or params.ide_sid > 0xFF or \
                params.num_addr_range > RMI_STREAM_PARAMS_MAX_ADDR_RANGES or \
                ep.category is RmiPdevCategory.RP or rp.category is not RmiPdevCategory.RP:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if params.stream_type != RmiStreamType.NCOH:
            return (RmiStatus.RMI_ERROR_NOT_SUPPORTED,)
        if ep.busy() or rp.busy():
            return (RmiStatus.RMI_BUSY,)
        if ep.state is not RmiPdevState.READY or rp.state is not RmiPdevState.READY or \
                ep.stream is not None or rp.stream is not None:
            return (RmiStatus.RMI_ERROR_DEVICE,)
        mem.read(a[0] + RMI_STREAM_PARAMS_ADDR_RANGE_OFFSET,
                 RmiAddressRange.fixed_size() * params.num_addr_range)
        handle = next(self._stream_handles)
        stream = Stream(handle, ep, rp, ops.new_stream_keys(params.ide_sid), params,
                        StateMachine("rmm.stream", STREAM_TRANSITIONS, StreamState.CONNECTING,
                                     handle=handle, ide_sid=params.ide_sid))
        self.streams[handle] = stream
        ep.stream = rp.stream = stream
        assert ep.ctx is not None

        def half_done(op: Operation) -> None:
            if stream.keys.ep_programmed and stream.keys.rp_programmed and \
                    ep.op is None and rp.op is None:
                stream.fsm.fire("keyed")
        self._start(ep, "stream_connect", ops.stream_connect_ep(ep.ctx, stream.keys), half_done)
        self._start(rp, "stream_connect", ops.stream_connect_rp(stream.keys), half_done)
        emit("rmm.stream", handle=handle, op="connect", ide_sid=params.ide_sid)
        return (RmiStatus.RMI_SUCCESS, handle)

    def rmi_pdev_stream_complete(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        stream = self.streams.get(a[0])
        if stream is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if not stream.fsm.can("complete"):
            return (RmiStatus.RMI_ERROR_DEVICE,)
        stream.fsm.fire("complete")
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_pdev_stream_disconnect(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        stream = self.streams.get(a[0])
        if stream is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        ep = stream.ep
        if ep.busy():
            return (RmiStatus.RMI_BUSY,)
        if not stream.fsm.can("disconnect") or ep.vdevs:
            return (RmiStatus.RMI_ERROR_DEVICE,)
        stream.fsm.fire("disconnect")
        assert ep.ctx is not None
        self._start(ep, "stream_disconnect", ops.stream_disconnect_ep(ep.ctx, stream.keys),
                    lambda op: self._drop_stream(stream, "disconnected"))
        return (RmiStatus.RMI_SUCCESS,)

    def _drop_stream(self, stream: Stream, trigger: str) -> None:
        stream.fsm.fire(trigger)
        stream.ep.stream = stream.rp.stream = None
        for end in (stream.ep, stream.rp):
            if end.op is not None and end.op.name == "stream_connect":
                end.op.cancel()
                end.op = end.op_done = None
        self.streams.pop(stream.handle, None)

    # -- VDEV -----------------------------------------------------------------------------------
    def _vdev(self, a: tuple[int, ...]) -> tuple[Vdev | None, RmiStatus]:
        """(rd, pdev, vdev) must name a VDEV of that realm and PDEV."""
        realm, pdev, vdev = self.realms.get(a[0]), self._pdev(a[1]), self.vdevs.get(a[2])
        if realm is None or pdev is None or vdev is None or vdev.realm is not realm or \
                vdev.pdev is not pdev:
            return None, RmiStatus.RMI_ERROR_INPUT
        return vdev, RmiStatus.RMI_SUCCESS

    def rmi_vdev_create(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        rd, pdev_addr, addr, params_addr = a[0], a[1], a[2], a[3]
        realm, pdev = self.realms.get(rd), self._pdev(pdev_addr)
        if realm is None or pdev is None or not self._granule(addr, Granule.DELEGATED) or \
                not self._ns_page(params_addr):
            return (RmiStatus.RMI_ERROR_INPUT,)
        params = RmiVdevParams.unpack(mem.read(params_addr, RmiVdevParams.fixed_size()))
        if params.flags != 0 or params.num_addr_range > RMI_VDEV_PARAMS_MAX_ADDR_RANGES or \
                not pdev.params.rid_base <= params.tdi_id < pdev.params.rid_top or \
                params.vdev_id in realm.vdevs:
            return (RmiStatus.RMI_ERROR_INPUT,)
        raw = mem.read(params_addr + RMI_VDEV_PARAMS_ADDR_RANGE_OFFSET,
                       RmiAddressRange.fixed_size() * params.num_addr_range)
        ranges = []
        for i in range(params.num_addr_range):
            r, _ = RmiAddressRange.unpack_from(raw, i * RmiAddressRange.fixed_size())
            if r.base % GRANULE_SIZE or r.top % GRANULE_SIZE or r.base >= r.top:
                return (RmiStatus.RMI_ERROR_INPUT,)
            ranges.append((r.base, r.top))
        if pdev.busy():
            return (RmiStatus.RMI_BUSY,)
        if pdev.state is not RmiPdevState.READY or pdev.stream is None or \
                pdev.stream.fsm.state is not StreamState.CONNECTED:
            return (RmiStatus.RMI_ERROR_DEVICE,)
        name = f"vdev@{addr:#x}"
        vdev = Vdev(addr, realm, pdev, params, ranges,
                    StateMachine("rmm.vdev", VDEV_TRANSITIONS, RmiVdevState.NEW, vdev=name,
                                 vdev_id=f"{params.vdev_id:#x}"),
                    StateMachine("rmm.vdev_dma", DMA_TRANSITIONS, VdevDma.DISABLED, vdev=name))
        self.granules[addr] = Granule.VDEV
        self.vdevs[addr] = vdev
        realm.vdevs[params.vdev_id] = vdev
        pdev.vdevs.append(vdev)
        emit("rmm.vdev.created", vdev=name, vdev_id=f"{params.vdev_id:#x}",
             tdi_id=f"{params.tdi_id:#x}", ranges=[f"{b:#x}-{t:#x}" for b, t in ranges])
        assert pdev.ctx is not None
        self._start(vdev, "unlock", ops.vdev_init(pdev.ctx, vdev.function_id),
                    lambda op: vdev.fsm.fire("unlocked"))
        return (RmiStatus.RMI_SUCCESS,)

    def _vdev_op_check(self, a: tuple[int, ...], allowed: tuple[RmiVdevState, ...]
                       ) -> tuple[Vdev | None, Result | None]:
        vdev, status = self._vdev(a)
        if vdev is None:
            return None, (status,)
        if vdev.pdev.busy():
            return None, (RmiStatus.RMI_BUSY,)
        if vdev.state not in allowed or vdev.pdev.state is not RmiPdevState.READY:
            return None, (RmiStatus.RMI_ERROR_DEVICE,)
        return vdev, None

    def rmi_vdev_communicate(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, status = self._vdev(a)
        if vdev is None:
            return (status,)
        if vdev.op is None and vdev.pdev.busy():
            return (RmiStatus.RMI_BUSY,)
        return self._communicate(mem, vdev, a[3])

    def rmi_vdev_lock(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, err = self._vdev_op_check(a, (RmiVdevState.UNLOCKED,))
        if vdev is None:
            assert err is not None
            return err
        assert vdev.pdev.ctx is not None and vdev.pdev.stream is not None
        v = vdev

        def locked(op: Operation) -> None:
            v.start_nonce = op.result
            v.lock_nonce = self.nonce()
            v.meas_nonce = v.report_nonce = 0
            v.report = v.measurements = b""
            v.validated.clear()
            v.fsm.fire("locked", lock_nonce=v.lock_nonce)
        self._start(vdev, "lock", ops.vdev_lock(vdev.pdev.ctx, vdev.function_id,
                                                vdev.pdev.stream.keys.stream_id), locked)
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_vdev_get_interface_report(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, err = self._vdev_op_check(a, (RmiVdevState.LOCKED, RmiVdevState.STARTED))
        if vdev is None:
            assert err is not None
            return err
        assert vdev.pdev.ctx is not None
        v = vdev

        def reported(op: Operation) -> None:
            v.report = op.result
            ops.report_ranges(v.report)
            v.report_nonce = self.nonce()
            v.fsm.fire("report", report_nonce=v.report_nonce)
        self._start(vdev, "report", ops.vdev_report(vdev.pdev.ctx, vdev.function_id), reported)
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_vdev_get_measurements(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, err = self._vdev_op_check(a, (RmiVdevState.LOCKED, RmiVdevState.STARTED))
        if not self._ns_page(a[3]):
            return (RmiStatus.RMI_ERROR_INPUT,)
        if vdev is None:
            assert err is not None
            return err
        params = RmiVdevMeasureParams.unpack(mem.read(a[3], RmiVdevMeasureParams.fixed_size()))
        if params.flags & ~RMI_VDEV_MEASURE_FLAGS_RAW:
            return (RmiStatus.RMI_ERROR_INPUT,)
        assert vdev.pdev.ctx is not None
        v = vdev

        def measured(op: Operation) -> None:
            v.measurements = op.result
            v.meas_nonce = self.nonce()
            v.fsm.fire("measured", meas_nonce=v.meas_nonce, nonce=params.nonce.hex())
        self._start(vdev, "measurements",
                    ops.vdev_measurements(vdev.pdev.ctx,
                                          bool(params.flags & RMI_VDEV_MEASURE_FLAGS_RAW),
                                          params.nonce),
                    measured)
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_vdev_start(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, err = self._vdev_op_check(a, (RmiVdevState.LOCKED,))
        if vdev is None:
            assert err is not None
            return err
        assert vdev.pdev.ctx is not None
        v = vdev
        self._start(vdev, "start", ops.vdev_start(vdev.pdev.ctx, vdev.function_id,
                                                  vdev.start_nonce),
                    lambda op: v.fsm.fire("started"))
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_vdev_unlock(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, err = self._vdev_op_check(
            a, (RmiVdevState.LOCKED, RmiVdevState.STARTED, RmiVdevState.ERROR))
        if vdev is None:
            assert err is not None
            return err
        assert vdev.pdev.ctx is not None
        v = vdev
        if v.dma.can("tdi_left_run"):
            v.dma.fire("tdi_left_run")

        def unlocked(op: Operation) -> None:
            v.validated.clear()
            v.fsm.fire("unlocked", device_confirmed=op.result)
        self._start(vdev, "unlock", ops.vdev_stop(vdev.pdev.ctx, vdev.function_id), unlocked)
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_vdev_destroy(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, status = self._vdev(a)
        if vdev is None:
            return (status,)
        if vdev.state not in (RmiVdevState.NEW, RmiVdevState.UNLOCKED) or \
                (vdev.op is not None and vdev.state is not RmiVdevState.NEW):
            return (RmiStatus.RMI_ERROR_DEVICE,)
        if vdev.op is not None:
            vdev.op.cancel()
            vdev.op = vdev.op_done = None
        del self.vdevs[vdev.addr]
        del vdev.realm.vdevs[vdev.params.vdev_id]
        vdev.pdev.vdevs.remove(vdev)
        self.granules[vdev.addr] = Granule.DELEGATED
        emit("rmm.vdev.destroyed", vdev=f"{vdev.addr:#x}")
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_vdev_get_state(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev = self.vdevs.get(a[0])
        if vdev is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        return (RmiStatus.RMI_SUCCESS, vdev.state)

    def rmi_vdev_abort(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev = self.vdevs.get(a[0])
        if vdev is None:
            return (RmiStatus.RMI_ERROR_INPUT,)
        if vdev.op is not None:
            op, vdev.op, vdev.op_done = vdev.op, None, None
            op.cancel()
            self._vdev_error(vdev, "abort", op.name)
        return (RmiStatus.RMI_SUCCESS,)

    def rmi_vdev_complete(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        rec, vdev = self.recs.get(a[0]), self.vdevs.get(a[1])
        if rec is None or vdev is None or vdev.realm is not rec.realm:
            return (RmiStatus.RMI_ERROR_INPUT,)
        # [MODEL] no VDEV_REQUEST exit is ever pending (model.py "REC exits").
        return (RmiStatus.RMI_ERROR_REC,)

    # -- RSI ------------------------------------------------------------------------------------
    def rsi_version(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        ok = a[0] >> 16 == model.RSI_ABI_VERSION >> 16
        return (RsiStatus.RSI_SUCCESS if ok else RsiStatus.RSI_ERROR_INPUT,
                model.RSI_ABI_VERSION, model.RSI_ABI_VERSION)

    def rsi_features(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        return (RsiStatus.RSI_SUCCESS, RSI_FEATURE_REGISTER_0_DA if a[0] == 0 else 0)

    def rsi_host_call(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        realm = self._guest_realm()
        if realm is None or not realm.recs:
            return (RsiStatus.RSI_ERROR_STATE,)
        if a[0] % RSI_HOST_CALL_ALIGN:
            return (RsiStatus.RSI_ERROR_INPUT,)
        rec = self.recs[realm.recs[0]]
        if rec.host_call is not None:
            return (RsiStatus.RSI_ERROR_STATE,)
        hc = RsiHostCall.unpack(mem.read(a[0], RsiHostCall.fixed_size()))
        gprs = struct.unpack(f"<{REC_NR_GPRS}Q", hc.gprs)
        rec.host_call = HostCall(a[0], hc.imm, gprs)
        emit("rmm.host_call", rec=f"{rec.addr:#x}", op="exit", imm=hc.imm,
             fid=f"{gprs[0]:#x}", layout=self.rhi_layout.name,
             rhi=self.rhi_layout.call_name(gprs[0]),
             **self.rhi_layout.call_args(gprs[0], gprs))
        return (RsiStatus.RSI_INCOMPLETE,)

    def _rsi_vdev(self, vdev_id: int) -> tuple[Vdev | None, RsiStatus]:
        realm = self._guest_realm()
        if realm is None:
            return None, RsiStatus.RSI_ERROR_STATE
        vdev = realm.vdevs.get(vdev_id)
        return vdev, RsiStatus.RSI_SUCCESS if vdev else RsiStatus.RSI_ERROR_INPUT

    def vdev_info(self, vdev: Vdev) -> RsiVdevInfo:
        pdev = vdev.pdev

        def digest(data: bytes) -> bytes:
            return self._hash(pdev, data).ljust(DIGEST_FIELD, b"\0") if data \
                else bytes(DIGEST_FIELD)
        key = b""
        if pdev.pubkey is not None:
            key = pdev.pubkey.key[:pdev.pubkey.key_len] + \
                pdev.pubkey.metadata[:pdev.pubkey.metadata_len]
        return RsiVdevInfo(
            flags=0, cert_id=pdev.params.id_index, hash_algo=pdev.params.hash_algo,
            lock_nonce=vdev.lock_nonce, meas_nonce=vdev.meas_nonce,
            report_nonce=vdev.report_nonce, format_type=RsiDevMemFormat.TDISP,
            format_version=model.TDISP_FORMAT_VERSION, state=rsi_state_of(vdev.state),
            vca_digest=digest(pdev.objects.get(RmiDevCommObject.VCA, b"")),
            cert_digest=digest(pdev.objects.get(RmiDevCommObject.CERTIFICATE, b"")),
            pubkey_digest=digest(key), meas_digest=digest(vdev.measurements),
            report_digest=digest(vdev.report))

    def rsi_vdev_get_info(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, status = self._rsi_vdev(a[0])
        if vdev is None:
            return (status,)
        if a[1] % RSI_VDEV_INFO_ALIGN:
            return (RsiStatus.RSI_ERROR_INPUT,)
        mem.write(a[1], self.vdev_info(vdev).pack())
        return (RsiStatus.RSI_SUCCESS,)

    def _nonces_current(self, vdev: Vdev, lock: int, meas: int, report: int) -> bool:
        return (lock, meas, report) == (vdev.lock_nonce, vdev.meas_nonce, vdev.report_nonce)

    def rsi_vdev_validate_mapping(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev_id, ipa_base, ipa_top, pa_base, flags, lock, meas, report = a[:8]
        vdev, status = self._rsi_vdev(vdev_id)
        if vdev is None:
            return (status,)
        known = RSI_VDEV_VALIDATE_MAPPING_FLAGS_COHERENT | \
            RSI_VDEV_VALIDATE_MAPPING_FLAGS_LIMITED_ORDER
        if ipa_base % GRANULE_SIZE or ipa_top % GRANULE_SIZE or pa_base % GRANULE_SIZE or \
                ipa_base >= ipa_top or flags & ~known:
            return (RsiStatus.RSI_ERROR_INPUT,)
        if vdev.state not in (RmiVdevState.LOCKED, RmiVdevState.STARTED) or \
                not vdev.report or not self._nonces_current(vdev, lock, meas, report):
            return (RsiStatus.RSI_ERROR_DEVICE,)
        pa_top = pa_base + (ipa_top - ipa_base)
        in_report = any(b <= pa_base and pa_top <= t for b, t in ops.report_ranges(vdev.report))
        in_host = not vdev.ranges or any(b <= pa_base and pa_top <= t for b, t in vdev.ranges)
        accepted = in_report and in_host
        if accepted:
            vdev.validated.append((ipa_base, ipa_top, pa_base))
        emit("rmm.validate_mapping", vdev_id=f"{vdev_id:#x}", ipa=f"{ipa_base:#x}-{ipa_top:#x}",
             pa=f"{pa_base:#x}", result="ACCEPT" if accepted else "REJECT")
        return (RsiStatus.RSI_SUCCESS, ipa_top if accepted else ipa_base,
                RSI_ACCEPT if accepted else RSI_REJECT)

    def rsi_vdev_dma_enable(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev_id, flags, _non_ats_plane, lock, meas, report = a[:6]
        vdev, status = self._rsi_vdev(vdev_id)
        if vdev is None:
            return (status,)
        if flags != 0:
            return (RsiStatus.RSI_ERROR_INPUT,)
        if vdev.state is not RmiVdevState.STARTED or \
                not self._nonces_current(vdev, lock, meas, report):
            return (RsiStatus.RSI_ERROR_DEVICE,)
        if vdev.dma.can("dma_enable"):
            vdev.dma.fire("dma_enable")
        return (RsiStatus.RSI_SUCCESS,)

    def rsi_vdev_dma_disable(self, mem: GuestMemory, a: tuple[int, ...]) -> Result:
        vdev, status = self._rsi_vdev(a[0])
        if vdev is None:
            return (status,)
        if vdev.dma.can("dma_disable"):
            vdev.dma.fire("dma_disable")
        return (RsiStatus.RSI_SUCCESS,)


def _nothing() -> DevFlow[None]:
    """An operation with no device traffic (root ports, stop without a session)."""
    return
    yield
