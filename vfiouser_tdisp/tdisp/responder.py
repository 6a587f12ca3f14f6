"""TDISP 1.0 responder: one TDI per function, its state machine and its enforcement.

Implements the DSM side of PCIe r6.1+ §11 (TEE Device Interface Security
Protocol; clauses below cite r7.0 by section and figure -- subsection numbers
moved between revisions).  Bytes in, bytes out: :meth:`TdispResponder.handle`
takes a TDISP message (header first; the PCI-SIG protocol_id byte already
stripped) and returns the response or a TDISP_ERROR.  :func:`pci_sig_vendor_handler` is what
the SPDM responder registers for the PCI-SIG vendor-defined protocols: it
demands a secured session and dispatches by protocol_id to TDISP (1) or
IDE_KM (0).

TDI state machine (PCIe r7.0 §11, Figure 11-5 "TDISP State Machine"), one
table (:data:`TDI_TRANSITIONS`)::

    CONFIG_UNLOCKED --LOCK_INTERFACE_REQUEST--> CONFIG_LOCKED --START_INTERFACE_REQUEST--> RUN
    CONFIG_LOCKED / RUN --security-relevant change--> ERROR
    CONFIG_LOCKED / RUN / ERROR --STOP_INTERFACE_REQUEST--> CONFIG_UNLOCKED

    RUN --BIND/UNBIND_P2P_STREAM, SET_MMIO_ATTRIBUTE--> RUN
    any --VDM_REQUEST--> same;  CONFIG_UNLOCKED --SET_TDISP_CONFIG--> CONFIG_UNLOCKED

Requests that the table does not list for the current state are answered
with INVALID_INTERFACE_STATE; requests for unknown interfaces with
INVALID_INTERFACE; unknown message types with UNSUPPORTED_REQUEST.

While a TDI is CONFIG_LOCKED or RUN the function's TDISP-relevant
configuration is watched (config-space writes, MSI-X table writes, resets,
IDE stream state, firmware updates); a change moves the TDI to ERROR.  In
CONFIG_LOCKED and ERROR the TDI issues no DMA (a gate on ``fn.dma``).
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..events import emit
from ..faults import ARMED, FaultSet
from ..fsm import StateMachine
from ..ide.capability import IdeStreamState
from ..ide.km import IdeKmError
from ..pci.function import (
    PCI_BASE_ADDRESS_0,
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    BarKind,
    DmaError,
    PciFunction,
)
from ..wire import DecodeError
from . import messages as m
from .messages import (
    FUNCTION_ID_RID_MASK,
    FUNCTION_ID_SEGMENT_MASK,
    FUNCTION_ID_SEGMENT_SHIFT,
    FUNCTION_ID_SEGMENT_VALID,
    PCI_PROTOCOL_ID_IDE_KM,
    PCI_PROTOCOL_ID_TDISP,
    START_INTERFACE_NONCE_SIZE,
    TDISP_VERSION_10,
    LockInterfaceFlags,
    TdispErrorCode,
    TdispMessage,
    TdispRequest,
    TdiState,
)
from .report import (
    FirstPageEncoding,
    NonTeeRange,
    TdispConfigurationRecord,
    build_report,
    configuration_digest,
    configuration_record,
    shifted_report,
)

# -- the TDI state machine -------------------------------------------------------------

U, L, R, E = TdiState.CONFIG_UNLOCKED, TdiState.CONFIG_LOCKED, TdiState.RUN, TdiState.ERROR


class Enforcement(enum.Enum):
    """Device-side triggers: security-relevant changes while the TDI is locked."""

    BAR_CHANGE = "bar_change"
    MEMORY_SPACE_DISABLED = "memory_space_disabled"
    BUS_MASTER_DISABLED = "bus_master_disabled"
    RESET = "reset"
    MSIX_CHANGE = "msix_change"
    IDE_STREAM_INSECURE = "ide_stream_insecure"
    FIRMWARE_UPDATE = "firmware_update"
    DEVICE_ERROR = "device_error"  # an internal error of the device (fault tdi-error)


CONVENTIONAL_RESET = "conventional_reset"

_QUERIES = (TdispRequest.GET_TDISP_VERSION, TdispRequest.GET_TDISP_CAPABILITIES,
            TdispRequest.GET_DEVICE_INTERFACE_STATE)

# (state, trigger) -> next state.  Triggers are request names (a self-loop means
# "legal, no state change") and Enforcement values.  Anything absent is illegal.
TDI_TRANSITIONS: dict[tuple[TdiState, str], TdiState] = {
    **{(s, q.name): s for s in TdiState for q in _QUERIES},
    (U, TdispRequest.LOCK_INTERFACE_REQUEST.name): L,
    # STOP on an unlocked TDI is accepted and changes nothing, so a TSM's
    # teardown path need not know whether the lock ever happened.
    (U, TdispRequest.STOP_INTERFACE_REQUEST.name): U,
    (L, TdispRequest.GET_DEVICE_INTERFACE_REPORT.name): L,
    (L, TdispRequest.START_INTERFACE_REQUEST.name): R,
    (L, TdispRequest.STOP_INTERFACE_REQUEST.name): U,
    (R, TdispRequest.GET_DEVICE_INTERFACE_REPORT.name): R,
    (R, TdispRequest.STOP_INTERFACE_REQUEST.name): U,
    (E, TdispRequest.STOP_INTERFACE_REQUEST.name): U,
    # PCIe r7.0 §11: P2P stream binding and MMIO attribute updates act on a
    # TDI in RUN; VDMs are accepted in every state; the DSM configuration (XT
    # mode) may change only while its TDIs are unlocked.
    (R, TdispRequest.BIND_P2P_STREAM_REQUEST.name): R,
    (R, TdispRequest.UNBIND_P2P_STREAM_REQUEST.name): R,
    (R, TdispRequest.SET_MMIO_ATTRIBUTE_REQUEST.name): R,
    **{(s, TdispRequest.VDM_REQUEST.name): s for s in TdiState},
    (U, TdispRequest.SET_TDISP_CONFIG_REQUEST.name): U,
    **{(s, t.value): E for s in (L, R) for t in Enforcement},
    **{(s, CONVENTIONAL_RESET): U for s in TdiState},
}

SUPPORTED_REQUESTS = frozenset(TdispRequest)

SUPPORTED_LOCK_FLAGS = (LockInterfaceFlags.NO_FW_UPDATE
                        | LockInterfaceFlags.SYSTEM_CACHE_LINE_SIZE
                        | LockInterfaceFlags.LOCK_MSIX
                        | LockInterfaceFlags.BIND_P2P
                        | LockInterfaceFlags.ALL_REQUEST_REDIRECT)
SUPPORTED_DSM_CONFIG = m.DsmConfig.XT_MODE_ENABLE | m.DsmConfig.XT_BIT_FOR_LOCKED_MSIX

# A VDM handler gets the TDI and the vendor data, returns the response's vendor data.
VdmHandler = Callable[["Tdi", bytes], bytes]

SUPPORTED_VERSIONS = bytes([TDISP_VERSION_10])

# SPDM ERROR codes the vendor handler asks for (DSP0274 ERROR response).
SPDM_ERROR_INVALID_REQUEST = 0x01
SPDM_ERROR_UNSUPPORTED_REQUEST = 0x07
SPDM_ERROR_SESSION_REQUIRED = 0x0B


class TdispFailure(Exception):
    """A request that is answered with TDISP_ERROR."""

    def __init__(self, code: TdispErrorCode, detail: str = "", error_data: int = 0,
                 extended: bytes = b"") -> None:
        super().__init__(f"{code.name}: {detail}" if detail else code.name)
        self.code = code
        self.detail = detail
        self.error_data = error_data
        self.extended = extended


# -- collaborators (structural, so tdisp/ depends on no assembly code) ------------------


class NonTeeSource(Protocol):
    """A personality: which BAR ranges hold no TEE data, and how to scrub state."""

    def non_tee_ranges(self) -> list[NonTeeRange]: ...

    def updatable_ranges(self) -> list[NonTeeRange]: ...

    def reset(self, cause: str) -> None: ...


class IdeStreams(Protocol):
    """The DSM's IDE capability as far as TDISP needs it."""

    insecure_listeners: list[Callable[[int], None]]
    stream_running: Callable[[int], bool] | None

    def stream_state(self, stream_id: int) -> IdeStreamState | None: ...

    def inject_fail(self) -> bool: ...  # fault ide-fail (faults.py)


class DeviceLike(Protocol):
    functions: list[PciFunction]
    personalities: list[Any]
    ide: Any


# -- one TDI ------------------------------------------------------------------------


@dataclass(frozen=True)
class LockState:
    """What LOCK_INTERFACE_REQUEST fixed for a TDI until STOP."""

    flags: LockInterfaceFlags
    default_stream_id: int
    mmio_reporting_offset: int
    bind_p2p_address_mask: int
    nonce: bytes
    report: bytes  # TDI_REPORT_STRUCTURE as of the lock
    ide_stream: int | None  # the IDE stream the TDI depends on, if known


class Tdi:
    """The TEE Device Interface of one function."""

    def __init__(self, responder: TdispResponder, fn: PciFunction,
                 personality: NonTeeSource | None) -> None:
        self.responder = responder
        self.function = fn
        self.personality = personality
        self.lock: LockState | None = None
        self.tsm_caps: int | None = None
        self.p2p_streams: dict[int, int] = {}  # bound P2P stream id -> stream_config
        self.fsm: StateMachine[TdiState] = StateMachine(
            "tdi", TDI_TRANSITIONS, TdiState.CONFIG_UNLOCKED, function=fn.name)
        self._hooks: list[tuple[list[Any], Any]] = []
        self._hook(fn.config.listeners, self._on_config_write)
        self._hook(fn.msix_table_listeners, self._on_msix_table_write)
        self._hook(fn.reset_hooks, self._on_reset)
        self._hook(fn.dma_gates, self._dma_gate)

    def _hook(self, hooks: list[Any], hook: Any) -> None:
        hooks.append(hook)
        self._hooks.append((hooks, hook))

    def detach(self) -> None:
        for hooks, hook in self._hooks:
            if hook in hooks:
                hooks.remove(hook)
        self._hooks.clear()

    @property
    def state(self) -> TdiState:
        return self.fsm.state

    @property
    def function_id(self) -> int:
        return m.make_function_id(self.responder.bus, self.function.devfn,
                                  self.responder.segment)

    @property
    def locked(self) -> bool:
        return self.state in (TdiState.CONFIG_LOCKED, TdiState.RUN)

    def fire(self, trigger: str, cause: str, **detail: Any) -> None:
        old = self.state
        new = self.fsm.fire(trigger, cause=cause, function_id=f"{self.function_id:#x}",
                            **detail)
        if new is TdiState.CONFIG_LOCKED and old is not new:
            self._dma_while_locked()
        if new is TdiState.CONFIG_UNLOCKED:
            self.lock = None
            self.p2p_streams.clear()
            if trigger == TdispRequest.STOP_INTERFACE_REQUEST.name:
                self._scrub()

    def enforce(self, trigger: Enforcement, cause: str, **detail: Any) -> bool:
        """Move a locked TDI to ERROR; returns whether it moved."""
        if not self.fsm.can(trigger.value):
            return False
        self.fire(trigger.value, cause, **detail)
        return True

    def _scrub(self) -> None:
        # PCIe r7.0 §11 (TDI state machine): returning to CONFIG_UNLOCKED must not
        # leak TDI data to the untrusted host, so the personality drops its state.
        if self.personality is not None and self.responder.scrub_on_stop:
            self.personality.reset("tdisp_stop")
            emit("tdisp.scrub", function=self.function.name)

    # -- enforcement hooks (each clause cited) --------------------------------------
    def _on_config_write(self, dw: int, old: int, new: int, byte_mask: int) -> None:
        if old == new or not self.locked:
            return
        fn = self.function
        if PCI_BASE_ADDRESS_0 <= dw < PCI_BASE_ADDRESS_0 + 24:
            # PCIe r7.0 §11, Figure 11-5: a change to the TDISP-relevant
            # configuration (BARs, PCIe §7.5.1.2.1) of a CONFIG_LOCKED/RUN TDI
            # moves it to ERROR.
            self.enforce(Enforcement.BAR_CHANGE, f"BAR{(dw - PCI_BASE_ADDRESS_0) // 4} "
                         f"{old:#010x} -> {new:#010x}")
        elif dw == PCI_COMMAND & ~3:
            # PCIe r7.0 §11, Figure 11-5: clearing Memory Space Enable or Bus
            # Master Enable (Command register, PCIe §7.5.1.1.3) of a
            # CONFIG_LOCKED/RUN TDI moves it to ERROR.
            if old & PCI_COMMAND_MEMORY and not new & PCI_COMMAND_MEMORY:
                self.enforce(Enforcement.MEMORY_SPACE_DISABLED, "Memory Space Enable cleared")
            elif old & PCI_COMMAND_MASTER and not new & PCI_COMMAND_MASTER:
                self.enforce(Enforcement.BUS_MASTER_DISABLED, "Bus Master Enable cleared")
        elif self.lock is not None and self.lock.flags & LockInterfaceFlags.LOCK_MSIX \
                and fn.msix is not None and fn.msix.offset <= dw < fn.msix.offset + fn.msix.size:
            # PCIe r7.0 §11, LOCK_INTERFACE_REQUEST flag LOCK_MSIX: the MSI-X
            # capability (PCIe §7.7.2) is part of the locked configuration;
            # a change moves the TDI to ERROR.
            self.enforce(Enforcement.MSIX_CHANGE, f"MSI-X capability dword {dw:#x} "
                         f"{old:#010x} -> {new:#010x}")

    def _on_msix_table_write(self, offset: int, data: bytes) -> None:
        # PCIe r7.0 §11, LOCK_INTERFACE_REQUEST flag LOCK_MSIX: the MSI-X table
        # and PBA (PCIe §7.7.2) are locked with the TDI; a write is a change.
        if self.lock is not None and self.lock.flags & LockInterfaceFlags.LOCK_MSIX:
            self.enforce(Enforcement.MSIX_CHANGE, f"MSI-X table write at {offset:#x}",
                         data=data.hex())

    def _on_reset(self, cause: str) -> None:
        # PCIe r7.0 §11, Figure 11-5: an FLR (PCIe §6.6.2) of a CONFIG_LOCKED/RUN
        # TDI moves it to ERROR; the TSM must STOP it.  Other resets of the
        # function ("device_reset", "disconnect") wipe the same configuration
        # and are treated the same way.
        self.enforce(Enforcement.RESET, cause)

    def _dma_while_locked(self) -> None:
        """Fault dma-locked: the device tries a DMA read right after the lock; the
        gate below must hold it, so nothing reaches guest memory."""
        fault = self.responder.faults.take("dma-locked", self.function.name)
        if fault is None:
            return
        try:
            self.function.dma.read(fault.args["addr"], fault.args["size"])
        except DmaError as exc:
            emit("tdisp.dma_refused", function=self.function.name, reason=str(exc))
        else:  # a gate that let it through is a defect the events must show
            emit("tdisp.dma_leaked", function=self.function.name, address=fault.args["addr"])

    def _dma_gate(self, direction: str, addr: int, size: int) -> str | None:
        # PCIe r7.0 §11 (TDI states): in CONFIG_LOCKED the TDI issues no DMA
        # until the TSM starts it (RUN); in ERROR it issues none at all.
        state = self.state
        if state in (TdiState.CONFIG_LOCKED, TdiState.ERROR):
            emit("tdisp.dma_held", function=self.function.name, state=state.name,
                 direction=direction, address=addr, size=size)
            return f"TDI {state.name}"
        return None

    # -- measurement ----------------------------------------------------------------
    def configuration_record(self) -> TdispConfigurationRecord:
        lock = self.lock
        return configuration_record(
            self.function, function_id=self.function_id,
            lock_flags=int(lock.flags) if lock else 0,
            default_stream_id=lock.default_stream_id if lock else 0,
            mmio_reporting_offset=lock.mmio_reporting_offset if lock else 0,
            bind_p2p_address_mask=lock.bind_p2p_address_mask if lock else 0)

    def configuration_digest(self) -> bytes:
        return configuration_digest([self.configuration_record()])


# -- the responder ------------------------------------------------------------------


@dataclass
class _InjectedError:
    code: TdispErrorCode
    request: TdispRequest | None
    count: int
    error_data: int
    extended: bytes


class TdispResponder:
    """The DSM's TDISP responder for a set of functions (one TDI each).

    ``bus``/``segment`` give the INTERFACE_ID the TDIs answer to (RID =
    bus:devfn; a request carrying a valid segment must match ``segment``,
    which is reported only when not None).  ``personalities`` (parallel to
    ``functions``) supply non-TEE ranges and the scrub on STOP.  With ``ide``
    the TDI depends on the IDE stream named by DEFAULT_STREAM_ID when it is
    SECURE at lock time (and LOCK fails unless it is, with
    ``require_secure_stream``).
    """

    def __init__(
        self,
        functions: Sequence[PciFunction],
        *,
        personalities: Sequence[NonTeeSource | None] | None = None,
        bus: int = 0,
        segment: int | None = None,
        encoding: FirstPageEncoding = FirstPageEncoding.PAGE_NUMBER,
        ide: IdeStreams | None = None,
        require_secure_stream: bool = False,
        dma_capable: bool = True,
        nonce_source: Callable[[int], bytes] = os.urandom,
        max_report_portion: int = 0xFFFF,
        scrub_on_stop: bool = True,
        dev_addr_width: int = 64,
    ) -> None:
        if personalities is not None and len(personalities) != len(functions):
            raise ValueError("personalities must parallel functions")
        if not 0 < max_report_portion <= 0xFFFF:
            raise ValueError("max_report_portion must be 1..65535")
        self.bus = bus
        self.segment = segment
        self.encoding = encoding
        self.ide = ide
        self.require_secure_stream = require_secure_stream
        self.dma_capable = dma_capable
        self.nonce_source = nonce_source
        self.max_report_portion = max_report_portion
        self.scrub_on_stop = scrub_on_stop
        self.dev_addr_width = dev_addr_width
        self._faults: list[_InjectedError] = []
        # Fault injection (faults.py): report-range, tdi-error, dma-locked.
        self.faults: FaultSet = ARMED
        # `serve --tamper report` (device/tamper.py): alters each report at LOCK.
        self.report_filter: Callable[[m.TDI_REPORT_STRUCTURE], m.TDI_REPORT_STRUCTURE] | None \
            = None
        self.dsm_config = m.DsmConfig(0)
        self.vdm_handlers: dict[tuple[int, bytes], VdmHandler] = {}
        self.tdis: list[Tdi] = [
            Tdi(self, fn, personalities[i] if personalities is not None else None)
            for i, fn in enumerate(functions)
        ]
        if ide is not None:
            ide.insecure_listeners.append(self.ide_stream_insecure)
            ide.stream_running = self.stream_running
        self._handlers: dict[TdispRequest, Callable[[Tdi, Any], TdispMessage]] = {
            TdispRequest.GET_TDISP_VERSION: self._get_version,
            TdispRequest.GET_TDISP_CAPABILITIES: self._get_capabilities,
            TdispRequest.LOCK_INTERFACE_REQUEST: self._lock_interface,
            TdispRequest.GET_DEVICE_INTERFACE_REPORT: self._get_report,
            TdispRequest.GET_DEVICE_INTERFACE_STATE: self._get_state,
            TdispRequest.START_INTERFACE_REQUEST: self._start_interface,
            TdispRequest.STOP_INTERFACE_REQUEST: self._stop_interface,
            TdispRequest.BIND_P2P_STREAM_REQUEST: self._bind_p2p,
            TdispRequest.UNBIND_P2P_STREAM_REQUEST: self._unbind_p2p,
            TdispRequest.SET_MMIO_ATTRIBUTE_REQUEST: self._set_mmio_attribute,
            TdispRequest.VDM_REQUEST: self._vdm,
            TdispRequest.SET_TDISP_CONFIG_REQUEST: self._set_tdisp_config,
        }
        # Every TDI answers one VDM of its own vendor (PCI-SIG registry): its
        # identity and state as JSON, for tools that talk to the device.
        for fn in {t.function.vendor_id for t in self.tdis}:
            self.register_vdm(m.RegistryId.PCISIG, fn.to_bytes(2, "little"), _tdi_info_vdm)

    @classmethod
    def for_device(cls, device: DeviceLike, **options: Any) -> TdispResponder:
        """One TDI per function of an assembled ``Device``, wired to its IDE."""
        return cls(device.functions, personalities=device.personalities,
                   ide=getattr(device, "ide", None), **options)

    def close(self) -> None:
        for tdi in self.tdis:
            tdi.detach()
        if self.ide is not None and self.ide_stream_insecure in self.ide.insecure_listeners:
            self.ide.insecure_listeners.remove(self.ide_stream_insecure)
        if self.ide is not None and self.ide.stream_running == self.stream_running:
            self.ide.stream_running = None

    # -- lookup ---------------------------------------------------------------------
    def find(self, function_id: int) -> Tdi | None:
        if function_id & ~(FUNCTION_ID_RID_MASK | FUNCTION_ID_SEGMENT_MASK
                           | FUNCTION_ID_SEGMENT_VALID):
            return None  # reserved bits 31:25 set: not an interface we know
        if function_id & FUNCTION_ID_SEGMENT_VALID:
            seg = (function_id & FUNCTION_ID_SEGMENT_MASK) >> FUNCTION_ID_SEGMENT_SHIFT
            if seg != (self.segment or 0):
                return None
        rid = function_id & FUNCTION_ID_RID_MASK
        for tdi in self.tdis:
            if rid == ((self.bus & 0xFF) << 8) | tdi.function.devfn:
                return tdi
        return None

    def tdi_for(self, fn: PciFunction) -> Tdi:
        for tdi in self.tdis:
            if tdi.function is fn:
                return tdi
        raise KeyError(fn.name)

    # -- device-side events -----------------------------------------------------------
    def stream_running(self, stream_id: int) -> bool:
        """Does a TDI bound to IDE stream ``stream_id`` (default or P2P) run?"""
        return any(t.state is TdiState.RUN and t.lock is not None and
                   (t.lock.ide_stream == stream_id or stream_id in t.p2p_streams)
                   for t in self.tdis)

    def ide_stream_insecure(self, stream_id: int) -> None:
        """Called by the IDE layer when a stream leaves SECURE (PCIe §6.33)."""
        for tdi in self.tdis:
            # PCIe r7.0 §11, Figure 11-5 with §6.33 (IDE): a TDI whose IDE
            # stream leaves Secure can no longer protect TEE traffic: ERROR.
            if tdi.lock is not None and tdi.lock.ide_stream == stream_id:
                tdi.enforce(Enforcement.IDE_STREAM_INSECURE,
                            f"IDE stream {stream_id} left SECURE", stream_id=stream_id)
            elif tdi.lock is not None and stream_id in tdi.p2p_streams:
                # The same clause for a bound P2P stream: peer traffic of the TDI
                # would leave the TEE unprotected.
                tdi.enforce(Enforcement.IDE_STREAM_INSECURE,
                            f"P2P IDE stream {stream_id} left SECURE", stream_id=stream_id)

    def firmware_update(self) -> list[Tdi]:
        """A firmware update of the device happened; returns the TDIs it errored."""
        hit = []
        for tdi in self.tdis:
            # PCIe r7.0 §11, LOCK_INTERFACE_REQUEST flag NO_FW_UPDATE: firmware
            # must not change while locked; if it does, the TDI is in ERROR.
            if tdi.lock is not None and tdi.lock.flags & LockInterfaceFlags.NO_FW_UPDATE:
                if tdi.enforce(Enforcement.FIRMWARE_UPDATE, "firmware update"):
                    hit.append(tdi)
        emit("tdisp.firmware_update", errored=[t.function.name for t in hit])
        return hit

    def conventional_reset(self) -> None:
        """Conventional reset of the device (PCIe §6.6.1): every TDI unlocks."""
        for tdi in self.tdis:
            if tdi.state is not TdiState.CONFIG_UNLOCKED:
                tdi.fire(CONVENTIONAL_RESET, "conventional reset")

    def configuration_digest(self) -> bytes:
        """SHA-384 of every TDI's TDISP-relevant configuration (for SPDM measurements)."""
        return configuration_digest(t.configuration_record() for t in self.tdis)

    # -- fault injection (for TSM error paths) -------------------------------------------
    def inject_error(self, code: TdispErrorCode, *, request: TdispRequest | None = None,
                     count: int = 1, error_data: int = 0, extended: bytes = b"") -> None:
        """Answer the next ``count`` requests (of type ``request``, or any) with
        TDISP_ERROR ``code`` -- e.g. BUSY to exercise a TSM's retry loop."""
        self._faults.append(_InjectedError(code, request, count, error_data, extended))

    def _take_fault(self, request: TdispRequest) -> _InjectedError | None:
        for fault in self._faults:
            if fault.request is None or fault.request is request:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- bytes in, bytes out -------------------------------------------------------------
    def handle(self, message: bytes) -> bytes:
        """Answer one TDISP request (header first); never raises."""
        function_id = 0
        known = m.REQUESTS.get(message[1]) if len(message) > 1 else None
        name = known.__name__ if known else (f"{message[1]:#04x}" if len(message) > 1 else "?")
        try:
            try:
                header, _ = m.TdispHeader.unpack_from(message)
            except DecodeError as exc:
                raise TdispFailure(TdispErrorCode.INVALID_REQUEST, str(exc)) from None
            function_id = header.function_id
            response = self._dispatch(header, message)
            result = type(response).__name__
        except TdispFailure as failure:
            result = failure.code.name
            emit("tdisp.error", message=name, function_id=f"{function_id:#x}",
                 error=failure.code.name, detail=failure.detail)
            response = m.TDISP_ERROR(function_id=function_id, error_code=failure.code,
                                     error_data=failure.error_data,
                                     extended_error_data=failure.extended)
        except Exception as exc:  # a bug answers UNSPECIFIED instead of killing the transport
            result = TdispErrorCode.UNSPECIFIED.name
            emit("tdisp.internal_error", message=name, error=repr(exc))
            response = m.TDISP_ERROR(function_id=function_id,
                                     error_code=TdispErrorCode.UNSPECIFIED)
        emit("tdisp.request", message=name, function_id=f"{function_id:#x}", result=result)
        return response.pack()

    def _dispatch(self, header: TdispMessage, message: bytes) -> TdispMessage:
        if header.version != TDISP_VERSION_10:
            raise TdispFailure(TdispErrorCode.VERSION_MISMATCH,
                               f"version {header.version:#x}, supported 0x10")
        try:
            request = TdispRequest(header.message_type)
        except ValueError:
            raise TdispFailure(TdispErrorCode.UNSUPPORTED_REQUEST,
                               f"message type {header.message_type:#x}") from None
        if request not in SUPPORTED_REQUESTS:
            raise TdispFailure(TdispErrorCode.UNSUPPORTED_REQUEST, request.name)
        tdi = self.find(header.function_id)
        if tdi is None:
            raise TdispFailure(TdispErrorCode.INVALID_INTERFACE,
                               f"no TDI with function_id {header.function_id:#x}")
        if tdi.state is TdiState.RUN and self.ide is not None:
            # fault ide-fail: the stream failed while the TDI ran (IDE_FAIL); the IDE
            # layer tells ide_stream_insecure, which errors the TDI bound to it
            self.ide.inject_fail()
        if tdi.state is TdiState.RUN and self.faults.take("tdi-error", tdi.function.name):
            tdi.enforce(Enforcement.DEVICE_ERROR, "device internal error (injected)")
        fault = self._take_fault(request)
        if fault is not None:
            raise TdispFailure(fault.code, "injected", fault.error_data, fault.extended)
        try:
            req = m.REQUESTS[request].unpack(message)
        except DecodeError as exc:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST, str(exc)) from None
        if not tdi.fsm.can(request.name):
            raise TdispFailure(TdispErrorCode.INVALID_INTERFACE_STATE,
                               f"{request.name} in {tdi.state.name}")
        response = self._handlers[request](tdi, req)
        if TDI_TRANSITIONS[(tdi.state, request.name)] is not tdi.state:
            tdi.fire(request.name, request.name)
        return response

    # -- request handlers (legality already checked against the table) -------------------
    def _get_version(self, tdi: Tdi, req: m.GET_TDISP_VERSION) -> TdispMessage:
        return m.TDISP_VERSION(function_id=req.function_id,
                               version_num_entry=SUPPORTED_VERSIONS)

    def _get_capabilities(self, tdi: Tdi, req: m.GET_TDISP_CAPABILITIES) -> TdispMessage:
        tdi.tsm_caps = req.tsm_caps
        bitmap = 0
        for r in SUPPORTED_REQUESTS:
            bitmap |= 1 << (r - TdispRequest.GET_TDISP_VERSION)
        return m.TDISP_CAPABILITIES(
            function_id=req.function_id, dsm_caps=int(m.DsmCaps.XT_MODE_SUPPORTED),
            req_msg_supported=bitmap.to_bytes(16, "little"),
            lock_interface_flags_supported=int(SUPPORTED_LOCK_FLAGS),
            dev_addr_width=self.dev_addr_width, num_req_this=1, num_req_all=1)

    def _lock_interface(self, tdi: Tdi, req: m.LOCK_INTERFACE_REQUEST) -> TdispMessage:
        fn = tdi.function
        unsupported = req.flags & ~int(SUPPORTED_LOCK_FLAGS)
        if unsupported:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               f"unsupported lock flags {unsupported:#x}")
        if req.mmio_reporting_offset & (m.PAGE_SIZE - 1):
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               "MMIO_REPORTING_OFFSET is not 4 KiB aligned")
        # PCIe r7.0 §11, LOCK_INTERFACE_REQUEST: the DSM checks that the TDI is
        # configured (decoding enabled, BARs assigned) before locking it.
        if not fn.memory_enabled:
            raise TdispFailure(TdispErrorCode.INVALID_DEVICE_CONFIGURATION,
                               "Memory Space Enable is clear")
        for index, bar in enumerate(fn.bars):
            if bar is not None and bar.kind is not BarKind.IO and fn.bar_address(index) == 0:
                raise TdispFailure(TdispErrorCode.INVALID_DEVICE_CONFIGURATION,
                                   f"BAR{index} is not programmed")
        ide_stream: int | None = req.default_stream_id
        if self.ide is not None:
            secure = self.ide.stream_state(req.default_stream_id) is IdeStreamState.SECURE
            if not secure and self.require_secure_stream:
                raise TdispFailure(TdispErrorCode.INVALID_DEVICE_CONFIGURATION,
                                   f"IDE stream {req.default_stream_id} is not SECURE")
            ide_stream = req.default_stream_id if secure else None
        try:
            nonce = self.nonce_source(START_INTERFACE_NONCE_SIZE)
        except Exception as exc:
            raise TdispFailure(TdispErrorCode.INSUFFICIENT_ENTROPY, repr(exc)) from None
        if len(nonce) != START_INTERFACE_NONCE_SIZE:
            raise TdispFailure(TdispErrorCode.INSUFFICIENT_ENTROPY, "short nonce")
        flags = LockInterfaceFlags(req.flags)
        report = build_report(
            fn, lock_flags=int(flags), mmio_reporting_offset=req.mmio_reporting_offset,
            encoding=self.encoding, dma_capable=self.dma_capable,
            non_tee=tdi.personality.non_tee_ranges() if tdi.personality else (),
            updatable=tdi.personality.updatable_ranges() if tdi.personality else (),
            xt_mode=bool(self.dsm_config & m.DsmConfig.XT_MODE_ENABLE))
        if self.report_filter is not None:
            report = self.report_filter(report)
        if self.faults.take("report-range", fn.name):
            report = shifted_report(report)
        tdi.lock = LockState(flags, req.default_stream_id, req.mmio_reporting_offset,
                             req.bind_p2p_address_mask, nonce, report.pack(), ide_stream)
        emit("tdisp.locked", function=fn.name, flags=int(flags),
             default_stream_id=req.default_stream_id, ide_stream=ide_stream,
             mmio_reporting_offset=req.mmio_reporting_offset,
             ranges=report.mmio_range_count)
        return m.LOCK_INTERFACE_RESPONSE(function_id=req.function_id,
                                         start_interface_nonce=nonce)

    def _get_report(self, tdi: Tdi, req: m.GET_DEVICE_INTERFACE_REPORT) -> TdispMessage:
        assert tdi.lock is not None
        report = tdi.lock.report
        if req.length == 0 or req.offset >= len(report):
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               f"offset {req.offset} length {req.length} of {len(report)}")
        portion = report[req.offset : req.offset + min(req.length, self.max_report_portion)]
        return m.DEVICE_INTERFACE_REPORT(
            function_id=req.function_id,
            remainder_length=len(report) - req.offset - len(portion), report=portion)

    def _get_state(self, tdi: Tdi, req: m.GET_DEVICE_INTERFACE_STATE) -> TdispMessage:
        return m.DEVICE_INTERFACE_STATE(function_id=req.function_id, tdi_state=tdi.state)

    def _start_interface(self, tdi: Tdi, req: m.START_INTERFACE_REQUEST) -> TdispMessage:
        assert tdi.lock is not None
        if not hmac.compare_digest(req.start_interface_nonce, tdi.lock.nonce):
            raise TdispFailure(TdispErrorCode.INVALID_NONCE, "nonce differs from LOCK's")
        return m.START_INTERFACE_RESPONSE(function_id=req.function_id)

    def _stop_interface(self, tdi: Tdi, req: m.STOP_INTERFACE_REQUEST) -> TdispMessage:
        return m.STOP_INTERFACE_RESPONSE(function_id=req.function_id)

    def _bind_p2p(self, tdi: Tdi, req: m.BIND_P2P_STREAM_REQUEST) -> TdispMessage:
        assert tdi.lock is not None
        # PCIe r7.0 §11, BIND_P2P_STREAM_REQUEST: only for a TDI locked with
        # BIND_P2P, for a Selective IDE stream that is established (SECURE).
        if not tdi.lock.flags & LockInterfaceFlags.BIND_P2P:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST, "locked without BIND_P2P")
        if req.stream_config & ~int(m.StreamConfig.XT_ENABLE):
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               f"reserved stream_config bits {req.stream_config:#x}")
        if req.stream_config & m.StreamConfig.XT_ENABLE and \
                not self.dsm_config & m.DsmConfig.XT_MODE_ENABLE:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST, "XT_ENABLE without XT mode")
        if req.p2p_stream_id in tdi.p2p_streams:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               f"P2P stream {req.p2p_stream_id} already bound")
        if self.ide is None or \
                self.ide.stream_state(req.p2p_stream_id) is not IdeStreamState.SECURE:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               f"IDE stream {req.p2p_stream_id} is not SECURE")
        tdi.p2p_streams[req.p2p_stream_id] = req.stream_config
        emit("tdisp.p2p_bind", function=tdi.function.name, stream_id=req.p2p_stream_id,
             stream_config=req.stream_config)
        return m.BIND_P2P_STREAM_RESPONSE(function_id=req.function_id)

    def _unbind_p2p(self, tdi: Tdi, req: m.UNBIND_P2P_STREAM_REQUEST) -> TdispMessage:
        if tdi.p2p_streams.pop(req.p2p_stream_id, None) is None:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               f"P2P stream {req.p2p_stream_id} is not bound")
        emit("tdisp.p2p_unbind", function=tdi.function.name, stream_id=req.p2p_stream_id)
        return m.UNBIND_P2P_STREAM_RESPONSE(function_id=req.function_id)

    def _set_mmio_attribute(self, tdi: Tdi, req: m.SET_MMIO_ATTRIBUTE_REQUEST) -> TdispMessage:
        assert tdi.lock is not None
        report = m.TDI_REPORT_STRUCTURE.unpack(tdi.lock.report)
        ranges = list(report.mmio_range)
        i = next((k for k, r in enumerate(ranges)
                  if (r.first_page, r.number_of_pages, r.range_id)
                  == (req.first_page, req.number_of_pages, req.range_id)), None)
        if i is None:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               "the range is not one of the reported MMIO ranges")
        r = ranges[i]
        # PCIe r7.0 §11, SET_MMIO_ATTRIBUTE_REQUEST: only ranges reported with
        # IS_MEM_ATTR_UPDATABLE, and only their IS_NON_TEE_MEM attribute changes.
        if not r.range_attributes & m.MmioRangeAttributes.IS_MEM_ATTR_UPDATABLE:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST, "range is not updatable")
        fixed = ~int(m.MmioRangeAttributes.IS_NON_TEE_MEM) & 0xFFFF
        if (req.range_attributes ^ r.range_attributes) & fixed:
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               "only IS_NON_TEE_MEM may change")
        ranges[i] = r.replace(range_attributes=req.range_attributes)
        tdi.lock = dataclasses.replace(tdi.lock, report=report.replace(mmio_range=ranges).pack())
        emit("tdisp.mmio_attribute", function=tdi.function.name, range_id=req.range_id,
             first_page=req.first_page, non_tee=bool(
                 req.range_attributes & m.MmioRangeAttributes.IS_NON_TEE_MEM))
        return m.SET_MMIO_ATTRIBUTE_RESPONSE(function_id=req.function_id)

    def register_vdm(self, registry_id: int, vendor_id: bytes, handler: VdmHandler) -> None:
        self.vdm_handlers[(int(registry_id), bytes(vendor_id))] = handler

    def _vdm(self, tdi: Tdi, req: m.VDM_REQUEST) -> TdispMessage:
        handler = self.vdm_handlers.get((req.registry_id, req.vendor_id))
        if handler is None:
            raise TdispFailure(TdispErrorCode.UNSUPPORTED_REQUEST,
                               f"no VDM for registry {req.registry_id} "
                               f"vendor {req.vendor_id.hex()}")
        data = handler(tdi, req.vendor_data)
        return m.VDM_RESPONSE(function_id=req.function_id, registry_id=req.registry_id,
                              vendor_id=req.vendor_id, vendor_data=data)

    def _set_tdisp_config(self, tdi: Tdi, req: m.SET_TDISP_CONFIG_REQUEST) -> TdispMessage:
        if req.dsm_config & ~int(SUPPORTED_DSM_CONFIG):
            raise TdispFailure(TdispErrorCode.INVALID_REQUEST,
                               f"unsupported dsm_config bits {req.dsm_config:#x}")
        busy = [t.function.name for t in self.tdis if t.state is not TdiState.CONFIG_UNLOCKED]
        if busy:  # the configuration is the DSM's: every TDI must be unlocked
            raise TdispFailure(TdispErrorCode.INVALID_INTERFACE_STATE,
                               f"TDIs not unlocked: {', '.join(busy)}")
        self.dsm_config = m.DsmConfig(req.dsm_config)
        emit("tdisp.dsm_config", dsm_config=int(self.dsm_config))
        return m.SET_TDISP_CONFIG_RESPONSE(function_id=req.function_id)


def _tdi_info_vdm(tdi: Tdi, data: bytes) -> bytes:
    """The built-in VDM: JSON with the TDI's function, IDs, state and P2P bindings."""
    fn = tdi.function
    return json.dumps({"function": fn.name, "vendor_id": fn.vendor_id,
                       "device_id": fn.device_id, "devfn": fn.devfn,
                       "state": tdi.state.name, "p2p_streams": sorted(tdi.p2p_streams),
                       "request": data.hex()}, sort_keys=True).encode()


# -- the PCI-SIG vendor-defined protocol handler ---------------------------------------


class VendorRequestContext(Protocol):
    """What the SPDM layer passes with a vendor-defined request."""

    @property
    def session_id(self) -> int | None: ...


class VendorRequestError(Exception):
    """Default exception asking SPDM for an ERROR response with ``code``."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"SPDM error {code:#x}: {detail}")
        self.code = code
        self.detail = detail


VendorHandler = Callable[[VendorRequestContext, bytes], bytes]


def pci_sig_vendor_handler(
    tdisp: Callable[[bytes], bytes],
    ide_km: Callable[[bytes], bytes] | None = None,
    *,
    vendor_error: Callable[[int], Exception] = VendorRequestError,
    require_session: bool = True,
) -> VendorHandler:
    """The handler to register for standard_id 3 (PCI-SIG), vendor_id 0x0001.

    The payload starts with the protocol_id byte; TDISP (1) and IDE_KM (0)
    handlers get the message after it and their answer goes back behind the
    same byte.  Both protocols must run inside a secured SPDM session (TDISP
    §11.3, IDE_KM §6.33.4): outside one the request is refused with SPDM
    ERROR SessionRequired.  ``vendor_error`` builds the exception the SPDM
    responder turns into an ERROR (pass the SPDM layer's ``VendorError``).
    """
    protocols: dict[int, Callable[[bytes], bytes]] = {PCI_PROTOCOL_ID_TDISP: tdisp}
    if ide_km is not None:
        protocols[PCI_PROTOCOL_ID_IDE_KM] = ide_km

    def handler(ctx: VendorRequestContext, payload: bytes) -> bytes:
        if not payload:
            raise vendor_error(SPDM_ERROR_INVALID_REQUEST)
        protocol_id = payload[0]
        handle = protocols.get(protocol_id)
        if handle is None:
            emit("pci_sig.unsupported_protocol", protocol_id=protocol_id)
            raise vendor_error(SPDM_ERROR_UNSUPPORTED_REQUEST)
        if require_session and ctx.session_id is None:
            emit("pci_sig.session_required", protocol_id=protocol_id)
            raise vendor_error(SPDM_ERROR_SESSION_REQUIRED)
        try:
            answer = handle(bytes(payload[1:]))
        except IdeKmError as exc:
            emit("pci_sig.ide_km_error", error=str(exc))
            raise vendor_error(SPDM_ERROR_INVALID_REQUEST) from None
        return bytes([protocol_id]) + answer

    return handler

