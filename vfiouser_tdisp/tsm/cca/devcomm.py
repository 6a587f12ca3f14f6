"""Device communication of the RMM: operations as flows, run one exchange per COMMUNICATE.

The RMM never touches the device.  Each PDEV/VDEV operation (connect, session, IDE
stream, TDISP LOCK/REPORT/START/STOP, measurements) is a generator of
:class:`Send` (an SPDM or secured-SPDM object the host must carry to the device's DOE
mailbox), :class:`Cache` (an object the host must keep) and :class:`StreamWait` (the
other end of an IDE stream must be driven first).  The generator is resumed with the
response bytes.  :class:`Operation` maps that onto RMI_PDEV/VDEV_COMMUNICATE and the
``rmi_dev_comm_data`` exit (firmware-abi.md C.3).

:class:`BlockingBridge` turns the project's blocking SPDM / IDE_KM / TDISP requesters
into such flows: the requester runs in a worker thread whose transport hands each DOE
object out of the generator and waits for the response the host brings back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from ...events import emit
from . import model
from .abi import RmiDevCommEnterStatus, RmiDevCommExit, RmiDevCommExitFlags, RmiDevCommObject
from .abi import RmiDevCommProtocol as Proto

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    protocol: Proto
    payload: bytes        # the DOE payload: an SPDM message or a secured-SPDM record


@dataclass(frozen=True)
class Cache:
    obj: RmiDevCommObject
    data: bytes


@dataclass(frozen=True)
class StreamWait:
    pass


Action = Send | Cache | StreamWait
DevFlow = Generator[Action, bytes | None, T]


class DeviceCommError(Exception):
    """The host could not carry an exchange (enter.status = ERROR) or gave up."""


@dataclass
class ExitRecord:
    """What one COMMUNICATE returns to the host (becomes rmi_dev_comm_exit)."""

    flags: RmiDevCommExitFlags = RmiDevCommExitFlags(0)
    request: bytes = b""
    protocol: Proto = Proto.SPDM
    cache_obj: RmiDevCommObject | None = None
    cache_data: bytes = b""

    def pack_exit(self) -> RmiDevCommExit:
        return RmiDevCommExit(
            flags=int(self.flags),
            cache_rsp_offset=0, cache_rsp_len=len(self.cache_data),
            cache_obj_id=int(self.cache_obj) if self.cache_obj is not None else 0,
            protocol=int(self.protocol),
            req_delay=model.DEV_COMM_REQ_DELAY_US if self.request else 0,
            req_len=len(self.request),
            timeout=model.DEV_COMM_TIMEOUT_MS if self.flags & RmiDevCommExitFlags.RSP_WAIT
            else 0)


class Operation:
    """One pending PDEV/VDEV operation, advanced by COMMUNICATE calls.

    ``step`` takes the host's enter status and response and returns the exit; when
    the flow has finished, ``done`` is set and ``result``/``error`` say how.
    """

    def __init__(self, name: str, flow: DevFlow[Any]) -> None:
        self.name = name
        self.flow = flow
        self.started = False
        self.awaiting: Send | None = None      # sent, response not yet back
        self.queued: Send | StreamWait | None = None  # produced, not yet handed out
        self.caches: deque[tuple[RmiDevCommObject, bytes, bool]] = deque()  # obj, piece, first
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        if not self.done:
            self.flow.close()
            self.done = True
            self.error = DeviceCommError("aborted")

    def _advance(self, value: bytes | None, throw: BaseException | None = None) -> None:
        """Run the flow until it sends, waits for a stream, or finishes."""
        try:
            if throw is not None:
                action = self.flow.throw(throw)
            elif not self.started:
                self.started = True
                action = next(self.flow)
            else:
                action = self.flow.send(value)
            while isinstance(action, Cache):
                step = model.DEV_COMM_BUFFER_SIZE
                for i in range(0, max(len(action.data), 1), step):
                    self.caches.append((action.obj, action.data[i:i + step], i == 0))
                action = self.flow.send(None)
            self.queued = action
        except StopIteration as stop:
            self.done, self.result = True, stop.value
        except Exception as exc:  # a device or requester failure ends the operation
            self.done, self.error = True, exc
            emit("rmm.comm_failed", operation=self.name, error=repr(exc))

    def step(self, status: int, response: bytes | None) -> ExitRecord:
        if self.awaiting is not None:
            if status == RmiDevCommEnterStatus.RESPONSE:
                self.awaiting = None
                self._advance(response)
            elif status == RmiDevCommEnterStatus.ERROR:
                self.awaiting = None
                self._advance(None, DeviceCommError("host reported a transport error"))
            else:  # NONE: still waiting for the device
                return ExitRecord(RmiDevCommExitFlags.RSP_WAIT)
        elif self.queued is None and not self.done:
            self._advance(None)
        elif isinstance(self.queued, StreamWait):
            self.queued = None
            self._advance(None)
        out = ExitRecord()
        if self.caches:
            out.cache_obj, out.cache_data, first = self.caches.popleft()
            out.flags |= RmiDevCommExitFlags.RSP_CACHE
            if first:
                out.flags |= RmiDevCommExitFlags.RSP_RESET
            if self.caches:
                out.flags |= RmiDevCommExitFlags.MULTI
                return out
        if self.done:
            return out
        if isinstance(self.queued, Send):
            send, self.queued = self.queued, None
            self.awaiting = send
            out.flags |= RmiDevCommExitFlags.REQ_SEND | RmiDevCommExitFlags.RSP_WAIT
            out.request, out.protocol = send.payload, send.protocol
        elif isinstance(self.queued, StreamWait):
            out.flags |= RmiDevCommExitFlags.STREAM_WAIT
        return out
