"""DOE data-object protocols and the dispatcher (PCIe r6.x §6.30.1-2).

A DOE object is ``DW0 = VID[15:0] | TYPE[23:16]``, ``DW1 = LENGTH[17:0]`` (in
dwords, header included, 0 meaning 2^18) followed by the payload.  The
:class:`DoeDispatcher` owns the protocols a mailbox supports, answers
Discovery itself (index chain 0 -> 1 -> 2 -> 0) and hands every other object's
payload to the registered handler.  Transports (the DOE capability in config
space, the spdm-emu TCP socket) call :meth:`DoeDispatcher.exchange` with whole
objects; observers (pcap capture) see every object in both directions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..events import emit
from ..wire import DecodeError, Struct, u8, u16, u32

PCI_SIG_VENDOR_ID = 0x0001
PCI_DOE_FEATURE_DISCOVERY = 0
PCI_DOE_FEATURE_CMA = 1
PCI_DOE_FEATURE_SSESSION = 2

DOE_MAX_LENGTH_DW = 1 << 18


class DoeError(Exception):
    """The object cannot be handled: the mailbox sets its ERROR bit."""


@dataclass(frozen=True)
class DoeHeader(Struct):
    vendor_id: int = u16()
    data_object_type: int = u8()
    reserved: int = u8()
    length: int = u32()  # LENGTH[17:0] in dwords, 0 means 2^18

    @property
    def length_dw(self) -> int:
        n = self.length & 0x3FFFF
        return DOE_MAX_LENGTH_DW if n == 0 else n


@dataclass(frozen=True)
class DiscoveryRequest(Struct):
    index: int = u8()
    version: int = u8()
    reserved: int = u16()


@dataclass(frozen=True)
class DiscoveryResponse(Struct):
    vendor_id: int = u16()
    data_object_protocol: int = u8()
    next_index: int = u8()


class DoeProtocolHandler(Protocol):
    """A protocol carried in DOE objects: payload in, payload out."""

    def __call__(self, payload: bytes) -> bytes: ...


ObjectObserver = Callable[[str, bytes], None]


def build_object(vendor_id: int, object_type: int, payload: bytes) -> bytes:
    if len(payload) % 4:
        payload = payload + bytes(4 - len(payload) % 4)
    length_dw = 2 + len(payload) // 4
    if length_dw > DOE_MAX_LENGTH_DW:
        raise DoeError(f"object of {length_dw} DW exceeds 2^18")
    hdr = DoeHeader(vendor_id, object_type, 0, length_dw & 0x3FFFF)
    return hdr.pack() + payload


def parse_object(data: bytes) -> tuple[DoeHeader, bytes]:
    """Split a whole object into header and payload, checking LENGTH."""
    if len(data) % 4:
        raise DoeError("object is not a whole number of dwords")
    try:
        hdr, used = DoeHeader.unpack_from(data)
    except DecodeError as exc:
        raise DoeError(str(exc)) from None
    if hdr.length & ~0x3FFFF:
        raise DoeError(f"reserved LENGTH bits set: {hdr.length:#x}")
    if hdr.length_dw < 2 or hdr.length_dw * 4 != len(data):
        raise DoeError(f"LENGTH {hdr.length_dw} DW does not match {len(data) // 4} DW written")
    return hdr, data[used:]


class DoeDispatcher:
    """The protocols one DOE instance supports, Discovery first."""

    def __init__(self, name: str = "doe") -> None:
        self.name = name
        self._protocols: list[tuple[int, int]] = [(PCI_SIG_VENDOR_ID, PCI_DOE_FEATURE_DISCOVERY)]
        self._handlers: dict[tuple[int, int], DoeProtocolHandler] = {}
        self.observers: list[ObjectObserver] = []

    def register(self, vendor_id: int, object_type: int, handler: DoeProtocolHandler) -> None:
        key = (vendor_id, object_type)
        if key == (PCI_SIG_VENDOR_ID, PCI_DOE_FEATURE_DISCOVERY):
            raise ValueError("Discovery is built in")
        if key not in self._protocols:
            self._protocols.append(key)
        self._handlers[key] = handler

    def declare(self, vendor_id: int, object_type: int) -> None:
        """Advertise a protocol in discovery before its responder is attached.

        Objects of a declared protocol with no handler get the mailbox ERROR
        (and a ``doe.unsupported`` event), like any object nobody answers.
        """
        key = (vendor_id, object_type)
        if key not in self._protocols:
            self._protocols.append(key)

    @property
    def protocols(self) -> list[tuple[int, int]]:
        return list(self._protocols)

    def discovery(self, payload: bytes) -> bytes:
        try:
            req = DiscoveryRequest.unpack(payload)
        except DecodeError as exc:
            raise DoeError(f"bad discovery request: {exc}") from None
        if req.index >= len(self._protocols):
            raise DoeError(f"discovery index {req.index} out of range")
        vid, typ = self._protocols[req.index]
        nxt = req.index + 1 if req.index + 1 < len(self._protocols) else 0
        return DiscoveryResponse(vid, typ, nxt).pack()

    def exchange(self, request: bytes) -> bytes:
        """Handle one whole request object; returns the whole response object.

        Raises :class:`DoeError` for anything the mailbox must answer with ERROR.
        """
        for obs in self.observers:
            obs("request", request)
        hdr, payload = parse_object(request)
        key = (hdr.vendor_id, hdr.data_object_type)
        if key == (PCI_SIG_VENDOR_ID, PCI_DOE_FEATURE_DISCOVERY):
            rsp_payload = self.discovery(payload)
        else:
            handler = self._handlers.get(key)
            if handler is None:
                emit("doe.unsupported", mailbox=self.name, vendor_id=hdr.vendor_id,
                     type=hdr.data_object_type)
                raise DoeError(f"unsupported object vid {hdr.vendor_id:#x} "
                               f"type {hdr.data_object_type}")
            try:
                rsp_payload = handler(payload)
            except DoeError:
                raise
            except Exception as exc:  # a protocol layer bug must not kill the mailbox
                emit("doe.handler_error", mailbox=self.name, type=hdr.data_object_type,
                     error=repr(exc))
                raise DoeError(f"handler failed: {exc!r}") from exc
        response = build_object(hdr.vendor_id, hdr.data_object_type, rsp_payload)
        for obs in self.observers:
            obs("response", response)
        return response
