"""IDE extended capability (PCIe r6.x §7.9.26) and the device's IDE stream model.

Register map (offsets from the capability start)::

    +0x00  ID 0x0030 | ver 1 | next
    +0x04  IDE Capability   LINK 0 | SELECTIVE 1 | FLOWTHROUGH 2 | PARTIAL_HDR 3 |
                            AGGREGATION 4 | PCRC 5 | IDE_KM 6 | SEL_CFG 7 | ALG[12:8] |
                            LINK_TC_NUM[15:13] (n-1) | SEL_NUM[23:16] (n-1) | TEE_LIMITED 24
    +0x08  IDE Control      FLOWTHROUGH_IDE bit2 (RW)
    +0x0C  Link IDE stream blocks, 8 bytes each, LINK_TC_NUM+1 of them (if LINK):
             +0 CTL  EN 0 | TX_AGGR_NPR[3:2] | PR[5:4] | CPL[7:6] | PCRC_EN 8 |
                     PART_ENC[13:10] | ALG[18:14] | TC[21:19] | ID[31:24]      (RW)
             +4 STS  STATE[3:0] (0 INSECURE, 2 SECURE) | IDE_FAIL 31          (RO)
    then    Selective IDE stream blocks, 20 + 12 * ASSOC_NUM bytes each:
             +0x00 SEL_CAP  ASSOC_NUM[3:0]                                     (RO)
             +0x04 SEL_CTL  EN 0 | ... | PCRC_EN 8 | CFG_EN 9 | PART_ENC[13:10] |
                            ALG[18:14] | TC[21:19] | DEFAULT 22 | TEE_LIMITED 23 |
                            ID[31:24]                                          (RW)
             +0x08 SEL_STS  STATE[3:0] | IDE_FAIL 31                           (RO)
             +0x0C RID_1    LIMIT[23:8]                                        (RW)
             +0x10 RID_2    VALID 0 | BASE[23:8] | SEG[31:24]                  (RW)
             +0x14+12i ADDR_1  VALID 0 | BASE_LOW[19:8] | LIMIT_LOW[31:20]    (RW)
             +0x18+12i ADDR_2  LIMIT_HIGH                                      (RW)
             +0x1C+12i ADDR_3  BASE_HIGH                                       (RW)

A stream reads SECURE as soon as its enable bit is set if all six keys of its
stream ID (PR/NPR/CPL x RX/TX) were programmed with IDE_KM KEY_PROG and
started with K_SET_GO -- Linux's ``pci_ide_stream_enable`` reads the state
right after setting EN.  Enabling without keys stays INSECURE; K_SET_STOP or
clearing EN returns it to INSECURE.  Every change is an event.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..events import emit
from ..faults import ARMED, FaultSet
from ..fsm import StateMachine
from ..pci.config import Capability, Reg

PCI_EXT_CAP_ID_IDE = 0x30
PCI_IDE_CAP = 0x04
PCI_IDE_CTL = 0x08
PCI_IDE_LINK_STREAM_0 = 0x0C

PCI_IDE_CAP_LINK = 0x1
PCI_IDE_CAP_SELECTIVE = 0x2
PCI_IDE_CAP_IDE_KM = 0x40
PCI_IDE_CAP_TEE_LIMITED = 0x1000000
PCI_IDE_CTL_EN = 0x1
PCI_IDE_SEL_CTL_ID_SHIFT = 24

IDE_STATE_INSECURE = 0
IDE_STATE_SECURE = 2
# Stream Status bit 31: an IDE Fail (integrity check failure) was seen/signalled.
PCI_IDE_STS_IDE_FAIL = 0x80000000


class KeySubstream(enum.IntEnum):
    PR = 0
    NPR = 1
    CPL = 2


class KeyDirection(enum.IntEnum):
    RX = 0
    TX = 1


class IdeStreamState(enum.Enum):
    INSECURE = IDE_STATE_INSECURE
    SECURE = IDE_STATE_SECURE


IDE_STREAM_TRANSITIONS: dict[tuple[IdeStreamState, str], IdeStreamState] = {
    (IdeStreamState.INSECURE, "enable_keyed"): IdeStreamState.SECURE,
    (IdeStreamState.SECURE, "disable"): IdeStreamState.INSECURE,
    (IdeStreamState.SECURE, "key_stop"): IdeStreamState.INSECURE,
    (IdeStreamState.SECURE, "reset"): IdeStreamState.INSECURE,
    # An integrity check failure (PCIe §6.33.5, fault ide-fail): the stream leaves
    # SECURE and its keys are gone; only new keys and a re-enable bring it back.
    (IdeStreamState.SECURE, "ide_fail"): IdeStreamState.INSECURE,
}

ALL_KEY_SLOTS = [(sub, d) for sub in KeySubstream for d in KeyDirection]


@dataclass
class StreamKeys:
    """The keys one stream ID received over IDE_KM (never logged in clear)."""

    programmed: dict[tuple[int, KeySubstream, KeyDirection], tuple[bytes, bytes]] = field(
        default_factory=dict)  # (key_set, sub, dir) -> (key, ifv)
    active: dict[tuple[KeySubstream, KeyDirection], int] = field(default_factory=dict)

    def complete(self) -> bool:
        return all(slot in self.active for slot in ALL_KEY_SLOTS)


class IdeStream:
    """One link or selective stream register block."""

    def __init__(self, kind: str, index: int, ctl_rel: int, owner: IdeCapability) -> None:
        self.kind = kind
        self.index = index
        self.ctl_rel = ctl_rel
        self.owner = owner
        self.secure_id = -1  # stream ID it went SECURE with (registers may be reset)
        self.ide_fail = False  # Status bit 31, set when an IDE Fail took it out of SECURE
        self.fsm: StateMachine[IdeStreamState] = StateMachine(
            "ide_stream", IDE_STREAM_TRANSITIONS, IdeStreamState.INSECURE,
            stream=f"{kind}{index}", function=owner.function_name)

    @property
    def ctl(self) -> int:
        return self.owner.get(self.ctl_rel)

    @property
    def enabled(self) -> bool:
        return bool(self.ctl & PCI_IDE_CTL_EN)

    @property
    def stream_id(self) -> int:
        return self.ctl >> PCI_IDE_SEL_CTL_ID_SHIFT

    def evaluate(self, cause: str) -> None:
        """Move the state machine to what the registers and keys now say."""
        keys = self.owner.keys.get(self.stream_id)
        secure_now = self.enabled and keys is not None and keys.complete()
        state = self.fsm.state
        if secure_now and state is IdeStreamState.INSECURE:
            self.secure_id = self.stream_id
            self.ide_fail = False
            self.fsm.fire("enable_keyed", cause=cause, stream_id=self.stream_id)
        elif not secure_now and state is IdeStreamState.SECURE:
            trigger = cause if (state, cause) in IDE_STREAM_TRANSITIONS else "disable"
            self.fsm.fire(trigger, cause=cause, stream_id=self.secure_id)
            for listener in self.owner.insecure_listeners:
                listener(self.secure_id)


    def fail(self) -> None:
        """An IDE Fail: SECURE -> INSECURE with IDE_FAIL set, the keys dropped."""
        self.ide_fail = True
        self.owner.keys.pop(self.secure_id, None)
        self.fsm.fire("ide_fail", cause="ide_fail", stream_id=self.secure_id)
        for listener in self.owner.insecure_listeners:
            listener(self.secure_id)


def _fails_stream(stream_id: int, running: Callable[[int], bool] | None
                  ) -> Callable[[Mapping[str, Any]], bool]:
    """ide-fail's arguments name ``stream_id`` (``stream`` -1: any) and, with
    ``when=run``, a TDI bound to it runs (``running``; without a TDISP layer
    attached every SECURE stream counts)."""
    def match(args: Mapping[str, Any]) -> bool:
        if args["stream"] not in (-1, stream_id):
            return False
        return args.get("when", "run") == "any" or running is None or running(stream_id)
    return match


class IdeCapability(Capability):
    CAP_ID = PCI_EXT_CAP_ID_IDE
    EXTENDED = True
    VERSION = 1
    NAME = "ide"

    def __init__(self, link_streams: int = 0, selective_streams: int = 1,
                 assoc_blocks: int = 1, tee_limited: bool = True,
                 function_name: str = "") -> None:
        if not 0 <= link_streams <= 8 or not 1 <= selective_streams <= 256:
            raise ValueError("IDE supports 0..8 link and 1..256 selective streams")
        if not 0 <= assoc_blocks <= 15:
            raise ValueError("ASSOC_NUM is 0..15")
        self.link_count = link_streams
        self.sel_count = selective_streams
        self.assoc_blocks = assoc_blocks
        self.tee_limited = tee_limited
        self.function_name = function_name
        self.sel_size = 20 + 12 * assoc_blocks
        size = PCI_IDE_LINK_STREAM_0 + 8 * link_streams + self.sel_size * selective_streams
        super().__init__(size)
        self.keys: dict[int, StreamKeys] = {}
        # Fault injection (faults.py): ide-fail.
        self.faults: FaultSet = ARMED
        self.insecure_listeners: list[Callable[[int], None]] = []
        # Set by the TDISP layer: does a TDI bound to this stream ID run (ide-fail
        # with when=run fires only then)?
        self.stream_running: Callable[[int], bool] | None = None
        self.streams: list[IdeStream] = []
        for i in range(link_streams):
            self.streams.append(IdeStream("link", i, PCI_IDE_LINK_STREAM_0 + 8 * i, self))
        for i in range(selective_streams):
            self.streams.append(IdeStream("selective", i, self.sel_base(i) + 4, self))
        self.dynamic_dwords = {s.ctl_rel for s in self.streams} | {
            s.ctl_rel + 4 for s in self.streams}

    def sel_base(self, i: int) -> int:
        return PCI_IDE_LINK_STREAM_0 + 8 * self.link_count + self.sel_size * i

    @property
    def cap_value(self) -> int:
        cap = PCI_IDE_CAP_SELECTIVE | PCI_IDE_CAP_IDE_KM
        if self.link_count:
            cap |= PCI_IDE_CAP_LINK | ((self.link_count - 1) << 13)
        cap |= (self.sel_count - 1) << 16
        if self.tee_limited:
            cap |= PCI_IDE_CAP_TEE_LIMITED
        return cap

    def registers(self) -> Iterable[Reg]:
        regs = [Reg("IDECapability", PCI_IDE_CAP, 4, self.cap_value),
                Reg("IDEControl", PCI_IDE_CTL, 4, 0, rw=0x4)]
        for i in range(self.link_count):
            base = PCI_IDE_LINK_STREAM_0 + 8 * i
            regs += [Reg(f"LinkCtl{i}", base, 4, 0, rw=0xFFFFFFFD),
                     Reg(f"LinkSts{i}", base + 4, 4, 0)]
        for i in range(self.sel_count):
            base = self.sel_base(i)
            regs += [Reg(f"SelCap{i}", base, 4, self.assoc_blocks),
                     Reg(f"SelCtl{i}", base + 4, 4, 0, rw=0xFFFFFFFD),
                     Reg(f"SelSts{i}", base + 8, 4, 0),
                     Reg(f"SelRid1_{i}", base + 0x0C, 4, 0, rw=0x00FFFF00),
                     Reg(f"SelRid2_{i}", base + 0x10, 4, 0, rw=0xFFFFFF01)]
            for a in range(self.assoc_blocks):
                ab = base + 0x14 + 12 * a
                regs += [Reg(f"SelAddr1_{i}_{a}", ab, 4, 0, rw=0xFFF0FF01),
                         Reg(f"SelAddr2_{i}_{a}", ab + 4, 4, 0, rw=0xFFFFFFFF),
                         Reg(f"SelAddr3_{i}_{a}", ab + 8, 4, 0, rw=0xFFFFFFFF)]
        return regs

    def _stream_at(self, rel: int) -> IdeStream | None:
        for s in self.streams:
            if rel in (s.ctl_rel, s.ctl_rel + 4):
                return s
        return None

    def read_dword(self, rel: int, stored: int) -> int:
        s = self._stream_at(rel)
        if s is not None and rel == s.ctl_rel + 4:  # status register
            self.inject_fail([s])
            return s.fsm.state.value | (PCI_IDE_STS_IDE_FAIL if s.ide_fail else 0)
        return stored

    def inject_fail(self, streams: list[IdeStream] | None = None) -> bool:
        """Fault ide-fail: a SECURE stream (of ``streams``, default all) it names
        fails now; True if one did.  Asked where the stream's state is observed: its
        Status register, and the device's TDISP layer before each request."""
        for s in self.streams if streams is None else streams:
            if s.fsm.state is not IdeStreamState.SECURE:
                continue
            if self.faults.take("ide-fail", f"{self.function_name}:{s.kind}{s.index}",
                                _fails_stream(s.secure_id, self.stream_running)):
                s.fail()
                return True
        return False

    def write_dword(self, rel: int, old: int, new: int, value: int, byte_mask: int) -> int:
        s = self._stream_at(rel)
        if s is not None and rel == s.ctl_rel:
            self.set(rel, new)  # store first so evaluate() sees the new CTL
            s.evaluate("disable" if not new & PCI_IDE_CTL_EN else "register_write")
        return new

    # -- IDE_KM side -----------------------------------------------------------
    def key_prog(self, stream_id: int, key_set: int, sub: KeySubstream, direction: KeyDirection,
                 key: bytes, ifv: bytes) -> None:
        # A new key takes effect at the next K_SET_GO for its key set (key
        # refresh programs the idle set, then switches with K_SET_GO).
        keys = self.keys.setdefault(stream_id, StreamKeys())
        keys.programmed[(key_set, sub, direction)] = (key, ifv)

    def key_set_go(self, stream_id: int, key_set: int, sub: KeySubstream,
                   direction: KeyDirection) -> bool:
        keys = self.keys.get(stream_id)
        if keys is None or (key_set, sub, direction) not in keys.programmed:
            return False
        keys.active[(sub, direction)] = key_set
        self._evaluate_id(stream_id, "key_go")
        return True

    def key_set_stop(self, stream_id: int, key_set: int, sub: KeySubstream,
                     direction: KeyDirection) -> None:
        keys = self.keys.get(stream_id)
        if keys is not None and keys.active.get((sub, direction)) == key_set:
            del keys.active[(sub, direction)]
        self._evaluate_id(stream_id, "key_stop")

    def _evaluate_id(self, stream_id: int, cause: str) -> None:
        for s in self.streams:
            if s.stream_id == stream_id:
                s.evaluate(cause)

    def register_dump(self) -> bytes:
        """IDE registers from the capability register through the last block
        (the QUERY_RESP payload)."""
        assert self.space is not None
        return self.space.read(self.offset + PCI_IDE_CAP, self.size - PCI_IDE_CAP)

    def stream_state(self, stream_id: int) -> IdeStreamState | None:
        for s in self.streams:
            if s.stream_id == stream_id and s.enabled:
                return s.fsm.state
        return None

    def reset(self) -> None:
        self.keys.clear()
        for s in self.streams:
            if s.fsm.state is IdeStreamState.SECURE:
                s.fsm.fire("reset", stream_id=s.secure_id)
                for listener in self.insecure_listeners:
                    listener(s.secure_id)
        emit("ide.reset", function=self.function_name)
