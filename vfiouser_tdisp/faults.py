"""Fault injection: the declared faults and the set of armed ones (docs/faults.md).

A fault is a small declared object (:class:`FaultSpec`): its name, the layer
that produces it, its documented effect and its arguments.  Arming one
(``serve --fault NAME[:ARGS]``, or at run time through the control socket,
``vfiouser-tdisp fault``) puts an :class:`ArmedFault` into a
:class:`FaultSet`.  Each layer is handed a :class:`FaultSet` (by default the
process-wide :data:`ARMED`) and asks it, at the exact place it would produce
the fault, whether one fires now (:meth:`FaultSet.take`).  This module sits
below every layer (it imports only events), so no layer imports another to
be faulted.

Events: ``fault.armed`` / ``fault.fired`` / ``fault.cleared``, each with
``name``, ``target`` and ``args`` (docs/events.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .events import emit


class FaultError(ValueError):
    """A fault specification that does not parse (unknown name, bad argument)."""


@dataclass(frozen=True)
class FaultArg:
    name: str
    kind: type  # int, float or str
    default: Any
    help: str


@dataclass(frozen=True)
class FaultSpec:
    name: str
    layer: str       # the layer whose hook produces it
    effect: str      # what the device/firmware does when it fires
    expect: str      # what the kernel/guest is expected to do
    args: tuple[FaultArg, ...] = ()

    def parse_args(self, text: str) -> dict[str, Any]:
        """``a,b,key=value`` -> the arguments by name (positional in declared order)."""
        values: dict[str, Any] = {a.name: a.default for a in self.args}
        by_name = {a.name: a for a in self.args}
        positional = 0
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = item.partition("=")
            if eq:
                arg = by_name.get(key.strip())
                if arg is None:
                    raise FaultError(f"fault {self.name}: no argument {key.strip()!r} "
                                     f"(arguments: {', '.join(by_name) or 'none'})")
            else:
                if positional >= len(self.args):
                    raise FaultError(f"fault {self.name}: too many arguments")
                arg, value = self.args[positional], key
                positional += 1
            try:
                values[arg.name] = _convert(arg.kind, value.strip())
            except ValueError:
                raise FaultError(f"fault {self.name}: {arg.name}={value!r} is not "
                                 f"{arg.kind.__name__}") from None
        missing = [n for n, v in values.items() if v is None]
        if missing:
            raise FaultError(f"fault {self.name}: {', '.join(missing)} required")
        return values


def _convert(kind: type, text: str) -> Any:
    if kind is int:
        return int(text, 0)
    if kind is float:
        return float(text)
    return text


COUNT = FaultArg("count", int, 1, "how many times it fires (0: until cleared)")
# DOE faults can target one data object type (PCIe §6.30.1: 0 discovery, 1 CMA/SPDM,
# 2 secured CMA/SPDM), e.g. to spare the kernel's discovery at enumeration.
DOE_TYPE = FaultArg("type", int, -1, "only exchanges of this data object type (-1: any)")

SPECS: dict[str, FaultSpec] = {s.name: s for s in (
    FaultSpec(
        "spdm-busy", "spdm",
        "the SPDM responder answers the chosen request with ERROR Busy (0x03), "
        "ErrorData 0, leaving its state as it was (DSP0274 ERROR)",
        "the requester sends the request again or gives up (the platform firmware "
        "emulators' requester: up to 8 times, 10 ms apart, then the operation fails)",
        (FaultArg("request", str, None, "request code name (GET_MEASUREMENTS) or number"),
         COUNT)),
    FaultSpec(
        "spdm-not-ready", "spdm",
        "the SPDM responder answers the chosen request with ERROR ResponseNotReady "
        "(0x42) whose ExtendedErrorData is RDTExponent, RequestCode, Token, RDTM "
        "(DSP0274 Table \"ResponseNotReady extended error data\"); RESPOND_IF_READY "
        "with that RequestCode and Token then gets the real response",
        "the requester waits RDT = 2^RDTExponent us and sends RESPOND_IF_READY; "
        "one that cannot fails the request",
        (FaultArg("request", str, None, "request code name or number"),
         FaultArg("rdt_exponent", int, 10, "RDTExponent (RDT = 2^x microseconds)"),
         FaultArg("rdtm", int, 2, "RDTM (worst-case multiplier)"),
         COUNT)),
    FaultSpec(
        "doe-busy", "doe",
        "after GO the DOE mailbox keeps DOE Status.BUSY set and produces no response "
        "until the next ABORT (PCIe r6.x §6.30.2), for the next COUNT exchanges",
        "the kernel's DOE driver polls for Data Object Ready, times out after 1 s, "
        "aborts the mailbox and fails the exchange (-EIO)",
        (COUNT, DOE_TYPE)),
    FaultSpec(
        "doe-error", "doe",
        "GO sets DOE Status.ERROR instead of producing a response, for the next COUNT "
        "exchanges; only ABORT clears it",
        "the kernel's DOE driver sees ERROR, aborts the mailbox and fails the "
        "exchange (-EIO)",
        (COUNT, DOE_TYPE)),
    FaultSpec(
        "doe-delay", "doe",
        "the response of the next COUNT exchanges becomes ready (Data Object Ready) "
        "only SECONDS after GO; BUSY reads set meanwhile",
        "past 1 s (PCI_DOE_TIMEOUT) the kernel's DOE driver aborts and fails the "
        "exchange (-EIO); below it the exchange succeeds late",
        (FaultArg("seconds", float, 1.5, "delay before the response is ready"), COUNT,
         DOE_TYPE)),
    FaultSpec(
        "measurements-change", "device",
        "after AFTER measurement reads the device reports another firmware image's "
        "measurements (index 1 changes) until cleared -- evidence that changes between "
        "connect and lock",
        "the guest's verifier compares the measurements against the reference values "
        "and refuses to accept the device",
        (FaultArg("after", int, 1, "measurement reads answered unchanged first"),)),
    FaultSpec(
        "cert-change", "spdm",
        "after AFTER certificate-chain reads (GET_DIGESTS/GET_CERTIFICATE) slot 0's "
        "chain differs (the leaf certificate's last byte is flipped, so its digest "
        "changes and its signature no longer verifies) until cleared",
        "a digest compare against the chain read at connect fails; a parser that "
        "verifies the chain refuses it",
        (FaultArg("after", int, 1, "chain reads answered unchanged first"),)),
    FaultSpec(
        "report-range", "tdisp",
        "the interface report's first MMIO range points 4 GiB above the BAR it "
        "describes (it disagrees with the BARs) until cleared",
        "the guest's verifier finds a report range outside every BAR and refuses",
        ()),
    FaultSpec(
        "tdi-error", "tdisp",
        "a TDI in RUN moves to ERROR on its own (device-internal error, PCIe r7.0 §11) "
        "at the next TDISP request naming it",
        "GET_DEVICE_INTERFACE_STATE reports ERROR; the TSM/guest see the TDI unusable "
        "and STOP it",
        (COUNT,)),
    FaultSpec(
        "ide-fail", "ide",
        "a SECURE IDE stream (STREAM: its ID, -1 any) leaves SECURE at the next read of "
        "its Status register or the next TDISP request, whichever comes first -- with "
        "WHEN=run (the default) only once a TDI bound to the stream is in RUN, with "
        "WHEN=any at once; Status then reads INSECURE with IDE_FAIL (bit 31) set, the "
        "keys are gone, and a TDI bound to the stream moves to ERROR",
        "the TDI the stream protects is in ERROR: tvm/state error, a refresh fails, "
        "unlock recovers; a reader of the Status register sees IDE_FAIL",
        (FaultArg("stream", int, -1, "stream ID (-1: any)"), COUNT,
         FaultArg("when", str, "run", "run: once a TDI bound to the stream runs; "
                                      "any: whenever the stream is SECURE"))),
    FaultSpec(
        "kp-ack", "ide_km",
        "the next COUNT IDE_KM KEY_PROG are answered with KP_ACK Status STATUS "
        "(1 INCORRECT_LENGTH, 2 UNSUPPORTED_PORT_INDEX, 3 UNSUPPORTED_VALUE, "
        "4 UNSPECIFIED_FAILURE) and the key is not programmed",
        "the key programming step fails; the stream is not enabled",
        (FaultArg("status", int, 4, "KP_ACK Status value"), COUNT)),
    FaultSpec(
        "dma-locked", "tdisp",
        "when a TDI enters CONFIG_LOCKED the device attempts a DMA read of SIZE bytes "
        "at ADDR; the TDISP gate must hold it (tdisp.dma_held) so nothing reaches "
        "guest memory",
        "nothing: the access never leaves the device; the flow continues",
        (FaultArg("addr", int, 0x1000, "guest-physical address"),
         FaultArg("size", int, 64, "bytes"), COUNT)),
    FaultSpec(
        "fw-busy", "firmware",
        "the platform firmware answers the named call busy COUNT more times without "
        "doing anything: RMI_BUSY (CCA RMM), TDX_INTERRUPTED_RESUMABLE (TDX module), "
        "EXPAND_BUFFER_LENGTH_REQUEST asking a page more of output buffer (AMD PSP, "
        "the SPDM-aware TIO commands)",
        "the host side calls again (on the PSP after growing the buffer); the operation "
        "completes as usual",
        (FaultArg("call", str, None, "call name as the platform names it "
                                     "(e.g. PDEV_COMMUNICATE, TDH_SPDM_CONNECT, "
                                     "TIO_DEV_CONNECT)"),
         FaultArg("count", int, 3, "how many extra busy answers"))),
)}


@dataclass
class ArmedFault:
    spec: FaultSpec
    args: dict[str, Any]
    fired: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # the hook's own bookkeeping

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args), "fired": self.fired}


def call_matches(wanted: str, name: str) -> bool:
    """fw-busy's ``call`` against a firmware call name: case and ``.``/``_`` ignored,
    a platform prefix may be left out (PDEV_COMMUNICATE = RMI_PDEV_COMMUNICATE,
    tdh.spdm.connect = TDH_SPDM_CONNECT)."""
    def norm(t: str) -> str:
        return t.upper().replace(".", "_")
    return norm(name) == norm(wanted) or norm(name).endswith("_" + norm(wanted))


def parse_fault(text: str) -> tuple[FaultSpec, dict[str, Any]]:
    """``NAME[:ARGS]`` -> its spec and arguments; :class:`FaultError` if bad."""
    name, _, args = text.partition(":")
    spec = SPECS.get(name.strip())
    if spec is None:
        raise FaultError(f"unknown fault {name!r} (known: {', '.join(SPECS)})")
    return spec, spec.parse_args(args)


class FaultSet:
    """The armed faults of one process (or one test)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[ArmedFault] = []

    def arm(self, text: str) -> ArmedFault:
        spec, args = parse_fault(text)
        fault = ArmedFault(spec, args)
        with self._lock:
            self._armed.append(fault)
        emit("fault.armed", name=spec.name, target=spec.layer, args=args)
        return fault

    def clear(self, name: str | None = None) -> int:
        """Disarm every fault (or every one named ``name``); returns how many."""
        with self._lock:
            gone = [f for f in self._armed if name is None or f.name == name]
            self._armed = [f for f in self._armed if f not in gone]
        for f in gone:
            emit("fault.cleared", name=f.name, target=f.spec.layer, args=f.args)
        return len(gone)

    def armed(self) -> list[ArmedFault]:
        with self._lock:
            return list(self._armed)

    def active(self, name: str) -> bool:
        with self._lock:
            return any(f.name == name for f in self._armed)

    def take(self, name: str, target: str,
             match: Callable[[Mapping[str, Any]], bool] | None = None) -> ArmedFault | None:
        """Does an armed ``name`` fault fire now (at ``target``)?  The first whose
        arguments ``match`` accepts fires: counted, reported as ``fault.fired``, and
        disarmed when its ``count`` is spent (count 0 or absent: until cleared)."""
        with self._lock:
            for fault in self._armed:
                if fault.name != name or (match is not None and not match(fault.args)):
                    continue
                fault.fired += 1
                count = fault.args.get("count", 0)
                if count and fault.fired >= count:
                    self._armed.remove(fault)
                break
            else:
                return None
        emit("fault.fired", name=name, target=target, args=fault.args, fired=fault.fired)
        return fault

    def peek(self, name: str) -> ArmedFault | None:
        """The first armed ``name`` fault, not counted (for faults whose hook keeps
        its own state, e.g. after N reads)."""
        with self._lock:
            return next((f for f in self._armed if f.name == name), None)

    def fired_sticky(self, fault: ArmedFault, target: str) -> None:
        """Report a sticky fault (no count) firing the first time."""
        with self._lock:
            fault.fired += 1
        if fault.fired == 1:
            emit("fault.fired", name=fault.name, target=target, args=fault.args,
                 fired=fault.fired)


ARMED = FaultSet()
"""The process-wide set `serve` arms and every layer consults by default."""


__all__ = ["ARMED", "SPECS", "ArmedFault", "FaultArg", "FaultError", "FaultSet", "FaultSpec",
           "call_matches", "parse_fault"]
