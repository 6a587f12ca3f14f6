"""IDE_KM responder: PCI-SIG vendor-defined protocol 0 (PCIe r6.x §6.33.4).

Messages travel as SPDM VENDOR_DEFINED payloads inside a secured session;
the caller strips the protocol_id byte, so a message here starts with its
``object_id``.  Layouts follow the spec (and DMTF libspdm's pci_idekm.h)::

    QUERY          object_id | rsvd | port_index
    QUERY_RESP     object_id | rsvd | port_index | dev_func_num | bus_num |
                   segment | max_port_index | IDE capability registers...
    KEY_PROG       object_id | rsvd[2] | stream_id | rsvd | key_sub_stream |
                   port_index | key[32] | ifv[8]
    KP_ACK         object_id | rsvd[2] | stream_id | status | key_sub_stream |
                   port_index
    K_SET_GO/STOP  object_id | rsvd[2] | stream_id | rsvd | key_sub_stream |
                   port_index
    K_GOSTOP_ACK   same as K_SET_GO

key_sub_stream: bit0 key set (K0/K1), bit1 direction (RX 0 / TX 1),
bits 7:4 sub-stream (PR 0, NPR 1, CPL 2).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from ..events import emit
from ..faults import ARMED, FaultSet
from ..wire import DecodeError, Struct, raw, tail, u8, u16
from .capability import IdeCapability, KeyDirection, KeySubstream


class IdeKmObject(enum.IntEnum):
    QUERY = 0x00
    QUERY_RESP = 0x01
    KEY_PROG = 0x02
    KP_ACK = 0x03
    K_SET_GO = 0x04
    K_SET_STOP = 0x05
    K_GOSTOP_ACK = 0x06


class KpAckStatus(enum.IntEnum):
    SUCCESS = 0
    INCORRECT_LENGTH = 1
    UNSUPPORTED_PORT_INDEX = 2
    UNSUPPORTED_VALUE = 3
    UNSPECIFIED_FAILURE = 4


@dataclass(frozen=True)
class QUERY(Struct):
    object_id: int = u8(IdeKmObject.QUERY)
    reserved: int = u8()
    port_index: int = u8()


@dataclass(frozen=True)
class QUERY_RESP(Struct):
    object_id: int = u8(IdeKmObject.QUERY_RESP)
    reserved: int = u8()
    port_index: int = u8()
    dev_func_num: int = u8()
    bus_num: int = u8()
    segment: int = u8()
    max_port_index: int = u8()
    ide_registers: bytes = tail()


@dataclass(frozen=True)
class KEY_PROG(Struct):
    object_id: int = u8(IdeKmObject.KEY_PROG)
    reserved: int = u16()
    stream_id: int = u8()
    reserved2: int = u8()
    key_sub_stream: int = u8()
    port_index: int = u8()
    key: bytes = raw(32)
    ifv: bytes = raw(8)


@dataclass(frozen=True)
class KP_ACK(Struct):
    object_id: int = u8(IdeKmObject.KP_ACK)
    reserved: int = u16()
    stream_id: int = u8()
    status: int = u8()
    key_sub_stream: int = u8()
    port_index: int = u8()


@dataclass(frozen=True)
class K_SET(Struct):
    """K_SET_GO, K_SET_STOP and K_GOSTOP_ACK share this layout."""

    object_id: int = u8()
    reserved: int = u16()
    stream_id: int = u8()
    reserved2: int = u8()
    key_sub_stream: int = u8()
    port_index: int = u8()


class IdeKmError(Exception):
    """A message that cannot be answered with an IDE_KM object."""


def split_key_sub_stream(value: int) -> tuple[int, KeyDirection, KeySubstream]:
    key_set = value & 0x1
    direction = KeyDirection((value >> 1) & 0x1)
    sub = KeySubstream(value >> 4)  # ValueError for sub-streams 3..15
    return key_set, direction, sub


class IdeKmResponder:
    """Answers IDE_KM for one device: port 0 is the function's IDE capability."""

    def __init__(self, ports: list[IdeCapability], bus: int = 0, devfn: int = 0,
                 segment: int = 0, debug_keys: bool = False, function_name: str = "") -> None:
        if not ports:
            raise ValueError("IDE_KM needs at least one port")
        self.ports = ports
        self.bus = bus
        self.devfn = devfn
        self.segment = segment
        self.debug_keys = debug_keys
        self.function_name = function_name
        # Fault injection (faults.py): kp-ack.
        self.faults: FaultSet = ARMED

    @property
    def max_port_index(self) -> int:
        return len(self.ports) - 1

    def handle(self, message: bytes) -> bytes:
        if not message:
            raise IdeKmError("empty IDE_KM message")
        obj = message[0]
        try:
            if obj == IdeKmObject.QUERY:
                return self._query(QUERY.unpack(message))
            if obj == IdeKmObject.KEY_PROG:
                return self._key_prog(message)
            if obj in (IdeKmObject.K_SET_GO, IdeKmObject.K_SET_STOP):
                return self._k_set(K_SET.unpack(message))
        except DecodeError as exc:
            raise IdeKmError(f"malformed IDE_KM object {obj:#x}: {exc}") from None
        raise IdeKmError(f"unsupported IDE_KM object {obj:#x}")

    def _query(self, req: QUERY) -> bytes:
        if req.port_index > self.max_port_index:
            raise IdeKmError(f"QUERY for port {req.port_index} of {self.max_port_index + 1}")
        dump = self.ports[req.port_index].register_dump()
        emit("ide_km.query", function=self.function_name, port=req.port_index)
        return QUERY_RESP(IdeKmObject.QUERY_RESP, 0, req.port_index, self.devfn, self.bus,
                          self.segment, self.max_port_index, dump).pack()

    def _key_prog(self, message: bytes) -> bytes:
        head, _ = K_SET.unpack_partial(message)  # KEY_PROG starts like K_SET

        def ack(status: KpAckStatus) -> bytes:
            emit("ide_km.key_prog", function=self.function_name, stream_id=head.stream_id,
                 port=head.port_index,
                 key_sub_stream=head.key_sub_stream, status=status.name)
            return KP_ACK(IdeKmObject.KP_ACK, 0, head.stream_id, status, head.key_sub_stream,
                          head.port_index).pack()

        if len(message) != KEY_PROG.fixed_size():
            return ack(KpAckStatus.INCORRECT_LENGTH)
        req = KEY_PROG.unpack(message)
        fault = self.faults.take("kp-ack", f"{self.function_name}:stream{req.stream_id}")
        if fault is not None:  # answered with the armed failure status, key not taken
            status = fault.args["status"] & 0xFF
            emit("ide_km.key_prog", function=self.function_name, stream_id=head.stream_id,
                 port=head.port_index, key_sub_stream=head.key_sub_stream,
                 status=KpAckStatus(status).name if status in KpAckStatus._value2member_map_
                 else status)
            return KP_ACK(IdeKmObject.KP_ACK, 0, head.stream_id, status,
                          head.key_sub_stream, head.port_index).pack()
        if req.port_index > self.max_port_index:
            return ack(KpAckStatus.UNSUPPORTED_PORT_INDEX)
        try:
            key_set, direction, sub = split_key_sub_stream(req.key_sub_stream)
        except ValueError:
            return ack(KpAckStatus.UNSUPPORTED_VALUE)
        if req.key_sub_stream & 0x0C:  # reserved bits 3:2
            return ack(KpAckStatus.UNSUPPORTED_VALUE)
        self.ports[req.port_index].key_prog(req.stream_id, key_set, sub, direction, req.key,
                                            req.ifv)
        if self.debug_keys:
            emit("ide_km.key_debug", function=self.function_name, stream_id=req.stream_id,
                 key=req.key.hex(),
                 ifv=req.ifv.hex())
        else:  # a fingerprint lets logs correlate keys without revealing them
            emit("ide_km.key_fingerprint", function=self.function_name, stream_id=req.stream_id,
                 sha256_prefix=hashlib.sha256(req.key).hexdigest()[:8])
        return ack(KpAckStatus.SUCCESS)

    def _k_set(self, req: K_SET) -> bytes:
        if req.port_index > self.max_port_index:
            raise IdeKmError(f"K_SET for port {req.port_index} of {self.max_port_index + 1}")
        try:
            key_set, direction, sub = split_key_sub_stream(req.key_sub_stream)
        except ValueError:
            raise IdeKmError(f"bad key_sub_stream {req.key_sub_stream:#x}") from None
        port = self.ports[req.port_index]
        go = req.object_id == IdeKmObject.K_SET_GO
        if go:
            applied = port.key_set_go(req.stream_id, key_set, sub, direction)
        else:
            port.key_set_stop(req.stream_id, key_set, sub, direction)
            applied = True
        emit("ide_km.k_set_go" if go else "ide_km.k_set_stop", function=self.function_name,
             stream_id=req.stream_id,
             key_set=key_set, direction=direction.name, sub_stream=sub.name, applied=applied)
        return K_SET(IdeKmObject.K_GOSTOP_ACK, 0, req.stream_id, 0, req.key_sub_stream,
                     req.port_index).pack()
