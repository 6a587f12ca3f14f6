"""The TSM side of the device protocols: IDE_KM and TDISP requesters.

Both are PCI-SIG vendor-defined protocols carried in SPDM
VENDOR_DEFINED_REQUEST messages (registry 3 = PCI-SIG, vendor ID 0x0001,
then ``protocol_id``: 0 IDE_KM, 1 TDISP) inside a secured session.  The
platform-firmware emulators (TDX module, RMM, PSP) drive a device through
these classes; the tests use them as the device's independent counterpart.

Like :mod:`..spdm.requester`, every message is available as a flow (the
``*_flow`` methods: a generator yielding one :class:`~..spdm.requester.SpdmRequest`
-- here always a secured record when the channel has a session -- and
``.send()`` the response payload, returning the parsed answer), so an emulator
can run KEY_PROG, K_SET_GO, LOCK_INTERFACE, GET_DEVICE_INTERFACE_REPORT or
START_INTERFACE one DOE object at a time.  The plain methods are
``drive(flow)`` over the SPDM requester's transport.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

from ..ide import km
from ..ide.capability import KeyDirection, KeySubstream
from ..spdm.messages import REGISTRY_ID_PCISIG
from ..spdm.requester import RequesterSession, SpdmFlow, SpdmRequester
from ..tdisp import messages as t
from ..wire import DecodeError

PCI_SIG_VENDOR_ID = b"\x01\x00"
PROTOCOL_IDE_KM = 0
PROTOCOL_TDISP = 1


class TsmProtocolError(Exception):
    """The device answered with an error (TDISP_ERROR, failed KP_ACK, ...)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


T = TypeVar("T")


@dataclass
class PciSigChannel:
    """PCI-SIG vendor-defined messages over one SPDM session."""

    spdm: SpdmRequester
    session: RequesterSession | None

    def call_flow(self, protocol_id: int, message: bytes) -> SpdmFlow[bytes]:
        answer = yield from self.spdm.vendor_request_flow(
            REGISTRY_ID_PCISIG, PCI_SIG_VENDOR_ID, bytes([protocol_id]) + message, self.session)
        if not answer or answer[0] != protocol_id:
            raise TsmProtocolError(f"answer for protocol {answer[:1].hex()}, "
                                   f"expected {protocol_id}")
        return answer[1:]

    def call(self, protocol_id: int, message: bytes) -> bytes:
        return self.run(self.call_flow(protocol_id, message))

    def run(self, flow: SpdmFlow[T]) -> T:
        """A flow to its end over the SPDM requester's own transport."""
        return self.spdm.run(flow)


def key_sub_stream(key_set: int, direction: KeyDirection, sub: KeySubstream) -> int:
    return (int(sub) << 4) | (int(direction) << 1) | key_set


ALL_SUBSTREAMS = [(sub, direction) for sub in (KeySubstream.PR, KeySubstream.NPR,
                                               KeySubstream.CPL)
                  for direction in (KeyDirection.RX, KeyDirection.TX)]


class IdeKmRequester:
    def __init__(self, channel: PciSigChannel) -> None:
        self.channel = channel

    def query_flow(self, port_index: int = 0) -> SpdmFlow[km.QUERY_RESP]:
        rsp = yield from self.channel.call_flow(PROTOCOL_IDE_KM,
                                                km.QUERY(port_index=port_index).pack())
        try:
            return km.QUERY_RESP.unpack(rsp)
        except DecodeError as exc:
            raise TsmProtocolError(f"QUERY_RESP: {exc}") from None

    def query(self, port_index: int = 0) -> km.QUERY_RESP:
        return self.channel.run(self.query_flow(port_index))

    def key_prog_flow(self, stream_id: int, key_set: int, direction: KeyDirection,
                      sub: KeySubstream, key: bytes, ifv: bytes,
                      port_index: int = 0) -> SpdmFlow[km.KP_ACK]:
        msg = km.KEY_PROG(stream_id=stream_id,
                          key_sub_stream=key_sub_stream(key_set, direction, sub),
                          port_index=port_index, key=key, ifv=ifv).pack()
        rsp = yield from self.channel.call_flow(PROTOCOL_IDE_KM, msg)
        try:
            ack = km.KP_ACK.unpack(rsp)
        except DecodeError as exc:
            raise TsmProtocolError(f"KP_ACK: {exc}") from None
        if ack.status != km.KpAckStatus.SUCCESS:
            raise TsmProtocolError(f"KP_ACK {km.KpAckStatus(ack.status).name}", ack.status)
        return ack

    def key_prog(self, stream_id: int, key_set: int, direction: KeyDirection,
                 sub: KeySubstream, key: bytes, ifv: bytes, port_index: int = 0) -> km.KP_ACK:
        return self.channel.run(self.key_prog_flow(stream_id, key_set, direction, sub, key,
                                                   ifv, port_index))

    def k_set_flow(self, go: bool, stream_id: int, key_set: int, direction: KeyDirection,
                   sub: KeySubstream, port_index: int = 0) -> SpdmFlow[km.K_SET]:
        obj = km.IdeKmObject.K_SET_GO if go else km.IdeKmObject.K_SET_STOP
        msg = km.K_SET(object_id=obj, stream_id=stream_id,
                       key_sub_stream=key_sub_stream(key_set, direction, sub),
                       port_index=port_index).pack()
        rsp = yield from self.channel.call_flow(PROTOCOL_IDE_KM, msg)
        try:
            ack = km.K_SET.unpack(rsp)
        except DecodeError as exc:
            raise TsmProtocolError(f"K_GOSTOP_ACK: {exc}") from None
        if ack.object_id != km.IdeKmObject.K_GOSTOP_ACK or ack.stream_id != stream_id:
            raise TsmProtocolError("K_GOSTOP_ACK does not match")
        return ack

    def k_set(self, go: bool, stream_id: int, key_set: int, direction: KeyDirection,
              sub: KeySubstream, port_index: int = 0) -> km.K_SET:
        return self.channel.run(self.k_set_flow(go, stream_id, key_set, direction, sub,
                                                port_index))

    def program_stream_flow(self, stream_id: int, key_set: int = 0, port_index: int = 0
                            ) -> SpdmFlow[dict[tuple[KeySubstream, KeyDirection], bytes]]:
        """KEY_PROG the six keys (PR/NPR/CPL x RX/TX), then K_SET_GO each."""
        keys = {}
        for sub, direction in ALL_SUBSTREAMS:
            keys[(sub, direction)] = os.urandom(32)
            yield from self.key_prog_flow(stream_id, key_set, direction, sub,
                                          keys[(sub, direction)], os.urandom(8), port_index)
        for sub, direction in ALL_SUBSTREAMS:
            yield from self.k_set_flow(True, stream_id, key_set, direction, sub, port_index)
        return keys

    def program_stream(self, stream_id: int, key_set: int = 0,
                       port_index: int = 0) -> dict[tuple[KeySubstream, KeyDirection], bytes]:
        return self.channel.run(self.program_stream_flow(stream_id, key_set, port_index))

    def stop_stream_flow(self, stream_id: int, key_set: int = 0,
                         port_index: int = 0) -> SpdmFlow[None]:
        for sub, direction in ALL_SUBSTREAMS:
            yield from self.k_set_flow(False, stream_id, key_set, direction, sub, port_index)

    def stop_stream(self, stream_id: int, key_set: int = 0, port_index: int = 0) -> None:
        self.channel.run(self.stop_stream_flow(stream_id, key_set, port_index))


class TdispRequester:
    def __init__(self, channel: PciSigChannel) -> None:
        self.channel = channel

    def call_flow(self, request: t.TdispMessage) -> SpdmFlow[t.TdispMessage]:
        answer = yield from self.channel.call_flow(PROTOCOL_TDISP, request.pack())
        try:
            rsp = t.decode_response(answer)
        except DecodeError as exc:
            raise TsmProtocolError(f"TDISP response: {exc}") from None
        if isinstance(rsp, t.TDISP_ERROR):
            code = rsp.error_code
            known = code in {int(c) for c in t.TdispErrorCode}
            name = t.TdispErrorCode(code).name if known else f"{code:#x}"
            raise TsmProtocolError(f"{type(request).__name__}: TDISP_ERROR {name}", code)
        expected = t.RESPONSE_FOR[request.message_type]
        if not isinstance(rsp, expected) or rsp.function_id != request.function_id:
            raise TsmProtocolError(f"{type(rsp).__name__} answers {type(request).__name__}")
        return rsp

    def call(self, request: t.TdispMessage) -> t.TdispMessage:
        return self.channel.run(self.call_flow(request))

    def version_flow(self, function_id: int) -> SpdmFlow[t.TDISP_VERSION]:
        rsp = yield from self.call_flow(t.GET_TDISP_VERSION(function_id=function_id))
        assert isinstance(rsp, t.TDISP_VERSION)
        return rsp

    def version(self, function_id: int) -> t.TDISP_VERSION:
        return self.channel.run(self.version_flow(function_id))

    def capabilities_flow(self, function_id: int,
                          tsm_caps: int = 0) -> SpdmFlow[t.TDISP_CAPABILITIES]:
        rsp = yield from self.call_flow(t.GET_TDISP_CAPABILITIES(function_id=function_id,
                                                                 tsm_caps=tsm_caps))
        assert isinstance(rsp, t.TDISP_CAPABILITIES)
        return rsp

    def capabilities(self, function_id: int, tsm_caps: int = 0) -> t.TDISP_CAPABILITIES:
        return self.channel.run(self.capabilities_flow(function_id, tsm_caps))

    def lock_flow(self, function_id: int, *, flags: int = 0, default_stream_id: int = 0,
                  mmio_reporting_offset: int = 0,
                  bind_p2p_address_mask: int = 0) -> SpdmFlow[bytes]:
        """LOCK_INTERFACE_REQUEST; returns the START_INTERFACE_NONCE."""
        rsp = yield from self.call_flow(t.LOCK_INTERFACE_REQUEST(
            function_id=function_id, flags=flags, default_stream_id=default_stream_id,
            mmio_reporting_offset=mmio_reporting_offset,
            bind_p2p_address_mask=bind_p2p_address_mask))
        assert isinstance(rsp, t.LOCK_INTERFACE_RESPONSE)
        return rsp.start_interface_nonce

    def lock(self, function_id: int, *, flags: int = 0, default_stream_id: int = 0,
             mmio_reporting_offset: int = 0, bind_p2p_address_mask: int = 0) -> bytes:
        return self.channel.run(self.lock_flow(
            function_id, flags=flags, default_stream_id=default_stream_id,
            mmio_reporting_offset=mmio_reporting_offset,
            bind_p2p_address_mask=bind_p2p_address_mask))

    def report_flow(self, function_id: int, portion: int = 0x400) -> SpdmFlow[bytes]:
        """The whole device interface report, read in portions."""
        out, offset = bytearray(), 0
        while True:
            rsp = yield from self.call_flow(t.GET_DEVICE_INTERFACE_REPORT(
                function_id=function_id, offset=offset, length=portion))
            assert isinstance(rsp, t.DEVICE_INTERFACE_REPORT)
            out += rsp.report
            offset += rsp.portion_length
            if rsp.remainder_length == 0:
                return bytes(out)
            if rsp.portion_length == 0:
                raise TsmProtocolError("empty report portion")

    def report(self, function_id: int, portion: int = 0x400) -> bytes:
        return self.channel.run(self.report_flow(function_id, portion))

    def state_flow(self, function_id: int) -> SpdmFlow[t.TdiState]:
        rsp = yield from self.call_flow(t.GET_DEVICE_INTERFACE_STATE(function_id=function_id))
        assert isinstance(rsp, t.DEVICE_INTERFACE_STATE)
        return t.TdiState(rsp.tdi_state)

    def state(self, function_id: int) -> t.TdiState:
        return self.channel.run(self.state_flow(function_id))

    def start_flow(self, function_id: int, nonce: bytes) -> SpdmFlow[None]:
        yield from self.call_flow(t.START_INTERFACE_REQUEST(function_id=function_id,
                                                            start_interface_nonce=nonce))

    def start(self, function_id: int, nonce: bytes) -> None:
        self.channel.run(self.start_flow(function_id, nonce))

    def stop_flow(self, function_id: int) -> SpdmFlow[None]:
        yield from self.call_flow(t.STOP_INTERFACE_REQUEST(function_id=function_id))

    def stop(self, function_id: int) -> None:
        self.channel.run(self.stop_flow(function_id))


def parse_report(report: bytes) -> t.TDI_REPORT_STRUCTURE:
    try:
        return t.TDI_REPORT_STRUCTURE.unpack(report)
    except DecodeError as exc:
        raise TsmProtocolError(f"device interface report: {exc}") from None
