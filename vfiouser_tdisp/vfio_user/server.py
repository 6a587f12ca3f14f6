"""vfio-user server for one PCI function on one UNIX socket.

Implements what QEMU's ``vfio-user-pci`` client uses (docs/interop/vfio-user.rst):
VERSION negotiation, DMA_MAP/UNMAP, DEVICE_GET_INFO, GET_REGION_INFO (with the
sparse-mmap capability and an fd), GET_IRQ_INFO, SET_IRQS, REGION_READ/WRITE,
REGION_WRITE_MULTI, DEVICE_RESET, and server->client DMA_READ/DMA_WRITE.

The server knows the device only through the interface in ``device.py``.
Concurrency: each listener has an accept thread and each client a connection
thread that blocks in recv and answers inline, strictly in order, with the
device's lock held while the device handles the request.  Replies are sent
after the lock is let go, and a DMA_READ/WRITE the server has to send the
client lets go of it while waiting for the answer: no lock is held across
blocking socket I/O, so a client that stops reading cannot stall the other
functions of its device.  NO_REPLY is honoured on every command, even on
error.  One client at a time; when it disconnects the device is detached
(reset, eventfds and DMA dropped) and the socket accepts the next client.
"""

from __future__ import annotations

import array
import errno
import json
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..events import emit
from ..sockets import BoundSocket, bind_unix_listener, wake_blocked
from ..sockets import prepare_socket_path as prepare_socket_path
from ..wire import DecodeError
from .device import (
    IRQ_INDEX_NAMES,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    DeviceError,
    DmaFault,
    VfioUserDevice,
)
from .dma import DmaTable, MapError
from .messages import (
    HEADER_SIZE,
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_USER_ERROR,
    VFIO_USER_MULTI_DATA,
    VFIO_USER_MULTI_MAX,
    VFIO_USER_NO_REPLY,
    VFIO_USER_REPLY,
    VFIO_USER_TYPE,
    Command,
    VfioDeviceInfo,
    VfioInfoCapHeader,
    VfioIrqInfo,
    VfioIrqSet,
    VfioRegionInfo,
    VfioRegionInfoCapSparseMmap,
    VfioRegionSparseMmapArea,
    VfioUserDmaMap,
    VfioUserDmaRw,
    VfioUserDmaUnmap,
    VfioUserHeader,
    VfioUserRegionAccess,
    VfioUserVersion,
    VfioUserWriteMulti,
    VfioUserWriteOne,
    error_reply,
    header,
    reply,
)

SERVER_MAJOR = 0
SERVER_MINOR = 0
MAX_MSG_FDS = 16
MAX_DATA_XFER = 1 << 20
# A message larger than this is refused (E2BIG) and its body skipped.
MAX_MESSAGE = MAX_DATA_XFER + 4096
# QEMU's vfio-user client gives up on a reply after 5 s (its wait_time
# default, hw/vfio-user/proxy.c); a client that takes longer to answer our
# DMA request is treated the same way: its connection is closed.
DMA_REPLY_TIMEOUT = 5.0
# Requests that arrive while a DMA request waits for its reply are queued;
# beyond this the client is flooding and its connection is closed.
MAX_PENDING_MESSAGES = 64
MAX_PENDING_BYTES = 4 * MAX_MESSAGE
# Receive buffer per connection: large messages arrive over several reads
# instead of pinning a megabyte per idle connection.
RECV_CHUNK = 64 << 10
# Client-supplied strings are cut to this many characters in the event log.
LOG_TEXT_MAX = 256
_FDS_SPACE = socket.CMSG_SPACE(MAX_MSG_FDS * 4)
_EVENTFD_LINK = "anon_inode:[eventfd]"

Message = tuple[VfioUserHeader, bytes, list[int]]
Outgoing = tuple[bytes, list[int]]


class ProtocolError(Exception):
    """A request that gets an error reply: carries the errno."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def clip(text: str, limit: int = LOG_TEXT_MAX) -> str:
    """Client data for the event log: at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} chars)"


def is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == _EVENTFD_LINK
    except OSError:
        return False


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class Connection:
    """One client connection to one device, served by its own thread.

    Requests are handled strictly in order as they become complete.  While a
    handler waits for the reply to a DMA_READ or DMA_WRITE it sent, requests
    that arrive meanwhile are queued (bounded) and handled after it, so
    ordering is kept and nothing deadlocks.
    """

    def __init__(self, sock: socket.socket, device: VfioUserDevice, name: str) -> None:
        self.sock = sock
        self.device = device
        self.name = name
        self.buf = bytearray()
        self._rx = bytearray(RECV_CHUNK)
        self.fd_queue: deque[tuple[int, list[int]]] = deque()  # (stream position, fds)
        self.stream_pos = 0  # absolute position of buf[0] in the byte stream
        self.skip = 0  # bytes of an oversized message still to discard
        self.versioned = False
        self.max_xfer = MAX_DATA_XFER
        self.write_multiple = False
        self.dma = DmaTable()
        self.dma.message_read = self._dma_read
        self.dma.message_write = self._dma_write
        self.pending: deque[Message] = deque()
        self.pending_bytes = 0
        self.next_id = 0
        self.closed = False
        self.closing = False  # shutdown requested from another thread
        self.doomed: str | None = None  # why the connection must end after this request
        self.stats = {"requests": 0, "errors": 0}
        sock.setblocking(True)
        self.thread = threading.Thread(target=self.serve, name=f"vfio-user {name}",
                                       daemon=True)

    # -- receiving ---------------------------------------------------------------
    def serve(self) -> None:
        """The connection thread: block in recv, answer inline.

        A thread blocked directly in recvmsg is woken straight by the kernel;
        measured here that is several times cheaper than an event-loop round.
        """
        with self.device.lock:
            self.device.attach(self.dma)
        try:
            while not self.closed:
                self.on_readable()
        finally:
            self.close("server shutdown")

    def on_readable(self) -> None:
        """Read once (blocking), then handle every complete request."""
        try:
            if not self.pending and not self._fill():
                self.close("client disconnected")
                return
            while not self.closed:
                msg = self._next()
                if msg is None:
                    return
                hdr = msg[0]
                if hdr.flags & VFIO_USER_TYPE == VFIO_USER_REPLY:
                    _close_all(msg[2])
                    emit("vfio_user.unexpected_reply", socket=self.name, msg_id=hdr.msg_id)
                    continue
                with self.device.lock:
                    out = self._dispatch(*msg)
                if self.doomed:
                    if out is not None:
                        _close_all(out[1])
                    self.close(self.doomed)
                    return
                if out is not None:
                    self._send(*out)
        except _StreamLost as exc:
            self.close(str(exc))
        except OSError as exc:
            self.close("server shutdown" if self.closing else f"socket error: {exc}")

    def _next(self) -> Message | None:
        if self.pending:
            msg = self.pending.popleft()
            self.pending_bytes -= len(msg[1]) + HEADER_SIZE
            return msg
        return self._parse_one()

    def _fill(self) -> bool:
        """One read; False on end of stream."""
        nbytes, ancdata, _flags, _addr = self.sock.recvmsg_into([self._rx], _FDS_SPACE)
        fds: list[int] = []
        for level, typ, cdata in ancdata:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(cdata[: len(cdata) - len(cdata) % arr.itemsize])
                fds.extend(arr)
        if not nbytes:
            _close_all(fds)
            return False
        if fds:
            self.fd_queue.append((self.stream_pos + len(self.buf), fds))
        self.buf += memoryview(self._rx)[:nbytes]
        return True

    def _take_fds(self, start: int, end: int) -> list[int]:
        fds: list[int] = []
        while self.fd_queue and self.fd_queue[0][0] < end:
            pos, got = self.fd_queue.popleft()
            if pos >= start:
                fds.extend(got)
            else:  # fds for bytes we skipped: nobody can use them
                _close_all(got)
        return fds

    def _consume(self, n: int) -> None:
        if n == len(self.buf):
            # A fresh buffer: one large message must not leave its allocation
            # behind in an idle connection.
            self.buf = bytearray()
        else:
            del self.buf[:n]
        self.stream_pos += n

    def _parse_one(self) -> Message | None:
        """The next complete message in the buffer, or None (never reads)."""
        while True:
            if self.skip:
                n = min(self.skip, len(self.buf))
                _close_all(self._take_fds(self.stream_pos, self.stream_pos + n))
                self._consume(n)
                self.skip -= n
                if self.skip:
                    return None
            if len(self.buf) < HEADER_SIZE:
                return None
            hdr, _ = VfioUserHeader.unpack_from(self.buf)
            size = hdr.msg_size
            if size < HEADER_SIZE:
                # No way to find the next message boundary: the stream is lost.
                emit("vfio_user.protocol_error", socket=self.name,
                     reason=f"message size {size} < header", command=hdr.command)
                raise _StreamLost("malformed header")
            if size > MAX_MESSAGE:
                emit("vfio_user.oversized", socket=self.name, command=hdr.command, size=size)
                _close_all(self._take_fds(self.stream_pos, self.stream_pos + HEADER_SIZE))
                self._consume(HEADER_SIZE)
                self.skip = size - HEADER_SIZE
                if (hdr.flags & VFIO_USER_TYPE) == 0 and not hdr.flags & VFIO_USER_NO_REPLY:
                    self._send(error_reply(hdr, errno.E2BIG))
                continue
            if len(self.buf) < size:
                return None
            payload = bytes(self.buf[HEADER_SIZE:size])
            fds = self._take_fds(self.stream_pos, self.stream_pos + size)
            self._consume(size)
            return hdr, payload, fds

    # -- dispatch ----------------------------------------------------------------
    def _dispatch(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing | None:
        """Handle one request (device lock held); what to send back, if anything."""
        self.stats["requests"] += 1
        no_reply = bool(hdr.flags & VFIO_USER_NO_REPLY)
        try:
            out = self._handle(hdr, payload, fds)
        except ProtocolError as exc:
            return self._fail(hdr, exc, no_reply)
        except DeviceError as exc:
            return self._fail(hdr, ProtocolError(exc.errno, str(exc)), no_reply)
        except DmaFault as exc:
            return self._fail(hdr, ProtocolError(errno.EFAULT, str(exc)), no_reply)
        except (_StreamLost, OSError):
            raise
        except Exception as exc:  # device bug: contain it, keep serving
            emit("vfio_user.handler_crash", socket=self.name, command=hdr.command,
                 error=clip(repr(exc)))
            return self._fail(hdr, ProtocolError(errno.EIO, repr(exc)), no_reply)
        if no_reply:
            _close_all(out[1])
            return None
        return out

    def _fail(self, hdr: VfioUserHeader, exc: ProtocolError, no_reply: bool) -> Outgoing | None:
        self.stats["errors"] += 1
        try:
            cmd = Command(hdr.command).name
        except ValueError:
            cmd = str(hdr.command)
        emit("vfio_user.error_reply", socket=self.name, command=cmd, errno=exc.errno,
             reason=clip(str(exc)), posted=no_reply)
        return None if no_reply else (error_reply(hdr, exc.errno), [])

    def _handle(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        cmd = hdr.command
        try:
            if not self.versioned:
                if cmd == Command.VFIO_USER_VERSION:
                    return self._version(hdr, payload, fds)
                raise ProtocolError(errno.EINVAL, "VERSION must be the first message")
            if cmd == Command.VFIO_USER_VERSION:
                raise ProtocolError(errno.EINVAL, "VERSION was already negotiated")
            handler = self._handlers.get(cmd)
            if handler is None:
                raise ProtocolError(errno.ENOSYS, f"unsupported command {cmd}")
            return handler(self, hdr, payload, fds)
        except DecodeError as exc:
            raise ProtocolError(errno.EINVAL, f"malformed message: {exc}") from None
        finally:
            # Any descriptor a handler did not take ownership of is closed here.
            _close_all(fds)

    # -- individual commands --------------------------------------------------------
    def _version(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        req = VfioUserVersion.unpack(payload)
        if req.major != SERVER_MAJOR:
            raise ProtocolError(errno.ENOTSUP, f"unsupported major version {req.major}")
        caps: dict[str, Any] = {}
        text = req.capabilities.split(b"\0", 1)[0]
        if text:
            try:
                doc = json.loads(text)
                caps = dict(doc.get("capabilities", {}))
            except (ValueError, AttributeError, TypeError):
                raise ProtocolError(errno.EINVAL, "capabilities are not valid JSON") from None
        ours: dict[str, Any] = {"max_msg_fds": MAX_MSG_FDS, "max_data_xfer_size": MAX_DATA_XFER}
        try:
            self.max_xfer = min(MAX_DATA_XFER, int(caps.get("max_data_xfer_size", MAX_DATA_XFER)))
            if "pgsizes" in caps:
                ours["pgsizes"] = int(caps["pgsizes"]) & 4096 or 4096
            if "max_dma_maps" in caps:
                ours["max_dma_maps"] = min(int(caps["max_dma_maps"]), 65535)
                self.dma.max_maps = ours["max_dma_maps"]
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(errno.EINVAL, "capability values must be integers") from None
        if self.max_xfer <= 0:
            raise ProtocolError(errno.EINVAL, "max_data_xfer_size must be positive")
        if caps.get("write_multiple") is True:
            ours["write_multiple"] = True
            self.write_multiple = True
        self.dma.max_xfer = self.max_xfer
        self.versioned = True
        minor = min(req.minor, SERVER_MINOR)
        body = json.dumps({"capabilities": ours}).encode() + b"\0"
        # The client's capabilities are its own text: logged cut short.
        emit("vfio_user.version", socket=self.name, client_major=req.major,
             client_minor=req.minor, client_caps=clip(json.dumps(caps)), reply_caps=ours)
        return reply(hdr, VfioUserVersion(SERVER_MAJOR, minor, body).pack()), []

    def _dma_map(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        req = VfioUserDmaMap.unpack(payload, exact=False)  # argsz may cover more
        if len(fds) > 1:
            raise ProtocolError(errno.EINVAL, "DMA_MAP takes at most one fd")
        fd = fds.pop() if fds else None
        try:
            self.dma.add(req.address, req.size, req.flags, fd, req.offset)  # owns fd now
        except MapError as exc:
            raise ProtocolError(exc.errno, str(exc)) from None
        emit("vfio_user.dma_map", socket=self.name, address=req.address, size=req.size,
             flags=req.flags, fd=fd is not None)
        return reply(hdr), []

    def _dma_unmap(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        req = VfioUserDmaUnmap.unpack(payload)
        if req.flags & ~VFIO_DMA_UNMAP_FLAG_ALL:
            raise ProtocolError(errno.ENOTSUP, "dirty bitmaps are not supported")
        if req.flags & VFIO_DMA_UNMAP_FLAG_ALL:
            n = len(self.dma)
            self.dma.clear()
        else:
            n = self.dma.remove(req.address, req.size)
        emit("vfio_user.dma_unmap", socket=self.name, address=req.address, size=req.size,
             removed=n)
        return reply(hdr, VfioUserDmaUnmap(req.argsz, req.flags, req.address,
                                           req.size).pack()), []

    def _device_get_info(self, hdr: VfioUserHeader, payload: bytes,
                         fds: list[int]) -> Outgoing:
        req = VfioDeviceInfo.unpack(payload)
        if req.argsz < 16:
            raise ProtocolError(errno.EINVAL, "argsz too small")
        info = VfioDeviceInfo(16, VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI,
                              VFIO_PCI_NUM_REGIONS, VFIO_PCI_NUM_IRQS)
        return reply(hdr, info.pack()), []

    def _get_region_info(self, hdr: VfioUserHeader, payload: bytes,
                         fds: list[int]) -> Outgoing:
        req = VfioRegionInfo.unpack(payload, exact=False)
        if req.argsz < 32:
            raise ProtocolError(errno.EINVAL, "argsz too small")
        if req.index >= VFIO_PCI_NUM_REGIONS:
            raise ProtocolError(errno.EINVAL, f"no region {req.index}")
        region = self.device.region_info(req.index)
        flags = 0
        if region.size and region.readable:
            flags |= VFIO_REGION_INFO_FLAG_READ
        if region.size and region.writable:
            flags |= VFIO_REGION_INFO_FLAG_WRITE
        caps = b""
        if region.mmap_areas and region.fd is not None:
            areas = b"".join(VfioRegionSparseMmapArea(off, size).pack()
                             for off, size in region.mmap_areas)
            caps = VfioRegionInfoCapSparseMmap(
                VfioInfoCapHeader(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, 0).pack(),
                len(region.mmap_areas), 0, areas).pack()
            flags |= VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS
        needed = 32 + len(caps)
        if req.argsz < needed:
            # Tell the client how much room the capabilities need (VFIO
            # convention).  QEMU rejects CAPS with cap_offset 0, so the flag
            # only comes with the capabilities themselves.
            info = VfioRegionInfo(needed, flags & ~VFIO_REGION_INFO_FLAG_CAPS, req.index, 0,
                                  region.size, 0)
            return reply(hdr, info.pack()), []
        # The fd holds the region at file offset = region offset: offset 0.
        info = VfioRegionInfo(needed, flags, req.index, 32 if caps else 0, region.size, 0,
                              caps)
        send = [os.dup(region.fd)] if caps and region.fd is not None else []
        return reply(hdr, info.pack()), send

    def _get_irq_info(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        req = VfioIrqInfo.unpack(payload)
        if req.argsz < 16:
            raise ProtocolError(errno.EINVAL, "argsz too small")
        irq = self.device.irq_info(req.index)
        flags = VFIO_IRQ_INFO_EVENTFD
        if irq.maskable:
            flags |= VFIO_IRQ_INFO_MASKABLE
        if irq.automasked:
            flags |= VFIO_IRQ_INFO_AUTOMASKED
        if irq.noresize:
            flags |= VFIO_IRQ_INFO_NORESIZE
        return reply(hdr, VfioIrqInfo(16, flags, req.index, irq.count).pack()), []

    def _set_irqs(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        req = VfioIrqSet.unpack(payload)
        index = req.index
        index_name = IRQ_INDEX_NAMES.get(index, str(index))
        total = self.device.irq_info(index).count
        data_type = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK
        action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK
        if bin(data_type).count("1") != 1 or bin(action).count("1") != 1 or \
                req.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise ProtocolError(errno.EINVAL, f"bad SET_IRQS flags {req.flags:#x}")
        if req.start + req.count > total and not (req.count == 0 and req.start == 0):
            raise ProtocolError(
                errno.EINVAL, f"vectors {req.start}+{req.count} beyond {total} for index {index}")
        if fds and data_type != VFIO_IRQ_SET_DATA_EVENTFD:
            raise ProtocolError(errno.EINVAL, "fds with a SET_IRQS that is not DATA_EVENTFD")
        if fds and len(fds) != req.count:
            raise ProtocolError(errno.EINVAL, f"{len(fds)} fds for {req.count} vectors")
        # Only eventfds: a pipe or a file would make a watcher spin or block
        # and a trigger write into something else.
        bad = [fd for fd in fds if not is_eventfd(fd)]
        if bad:
            raise ProtocolError(errno.EINVAL, f"{len(bad)} of the fds are not eventfds")
        for fd in fds:
            # A client can fill an eventfd's counter so that a blocking write
            # would wait forever (with the device lock held).
            os.set_blocking(fd, False)
        if data_type == VFIO_IRQ_SET_DATA_EVENTFD and action != VFIO_IRQ_SET_ACTION_TRIGGER:
            name = "mask" if action == VFIO_IRQ_SET_ACTION_MASK else "unmask"
            given = list(fds)
            fds.clear()  # ownership passes to the device
            for i in range(req.count):
                self.device.irq_set_action_eventfd(name, index, req.start + i,
                                                   given[i] if given else None)
            emit("vfio_user.set_irqs", socket=self.name, index=index_name, start=req.start,
                 count=req.count, action=f"{name}_eventfd")
            return reply(hdr), []
        if data_type == VFIO_IRQ_SET_DATA_EVENTFD:
            if fds:
                given = list(fds)
                fds.clear()  # ownership passes to the device
                self.device.irq_set_eventfds(index, req.start, given)
            else:
                self.device.irq_clear_eventfds(index, req.start, req.count or total)
            emit("vfio_user.set_irqs", socket=self.name, index=index_name, start=req.start,
                 count=req.count, action="eventfd")
            return reply(hdr), []
        if data_type == VFIO_IRQ_SET_DATA_BOOL:
            if len(req.data) < req.count:
                raise ProtocolError(errno.EINVAL, "DATA_BOOL needs one byte per vector")
            selected = [req.start + i for i in range(req.count) if req.data[i]]
        else:
            selected = list(range(req.start, req.start + req.count))
        if data_type == VFIO_IRQ_SET_DATA_NONE and req.count == 0 and \
                action == VFIO_IRQ_SET_ACTION_TRIGGER:
            self.device.irq_clear_eventfds(index, 0, total)
            return reply(hdr), []
        for v in selected:
            if action == VFIO_IRQ_SET_ACTION_TRIGGER:
                self.device.irq_trigger(index, v)
            elif action == VFIO_IRQ_SET_ACTION_MASK:
                self.device.irq_mask(index, v)
            elif action == VFIO_IRQ_SET_ACTION_UNMASK:
                self.device.irq_unmask(index, v)
        emit("vfio_user.set_irqs", socket=self.name, index=index_name, start=req.start,
             count=req.count, action={VFIO_IRQ_SET_ACTION_TRIGGER: "trigger",
                                      VFIO_IRQ_SET_ACTION_MASK: "mask",
                                      VFIO_IRQ_SET_ACTION_UNMASK: "unmask"}[action])
        return reply(hdr), []

    def _region_read(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        req = VfioUserRegionAccess.unpack(payload)  # trailing bytes are ignored
        if req.count > self.max_xfer:
            raise ProtocolError(errno.E2BIG, f"read of {req.count} bytes exceeds max transfer")
        data = self.device.region_read(req.region, req.offset, req.count)
        return reply(hdr, VfioUserRegionAccess(req.offset, req.region, len(data),
                                               data).pack()), []

    def _region_write(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        req = VfioUserRegionAccess.unpack(payload)
        if req.count != len(req.data):
            raise ProtocolError(errno.EINVAL,
                                f"count {req.count} but {len(req.data)} data bytes")
        if req.count > self.max_xfer:
            raise ProtocolError(errno.E2BIG, f"write of {req.count} bytes exceeds max transfer")
        self.device.region_write(req.region, req.offset, req.data)
        return reply(hdr, VfioUserRegionAccess(req.offset, req.region, req.count).pack()), []

    def _region_write_multi(self, hdr: VfioUserHeader, payload: bytes,
                            fds: list[int]) -> Outgoing:
        if not self.write_multiple:
            raise ProtocolError(errno.ENOTSUP, "write_multiple was not negotiated")
        req = VfioUserWriteMulti.unpack(payload)
        one = VfioUserWriteOne.fixed_size()
        if req.wr_cnt > VFIO_USER_MULTI_MAX or len(req.writes) != req.wr_cnt * one:
            raise ProtocolError(errno.EINVAL, f"bad WRITE_MULTI count {req.wr_cnt}")
        writes = [VfioUserWriteOne.unpack(req.writes[i * one : (i + 1) * one])
                  for i in range(req.wr_cnt)]
        if any(w.count > VFIO_USER_MULTI_DATA for w in writes):
            raise ProtocolError(errno.EINVAL, "WRITE_MULTI entry larger than 8 bytes")
        for w in writes:
            self.device.region_write(w.region, w.offset, w.data[: w.count])
        return reply(hdr, VfioUserWriteMulti(req.wr_cnt).pack()), []

    def _device_reset(self, hdr: VfioUserHeader, payload: bytes, fds: list[int]) -> Outgoing:
        self.device.reset()
        return reply(hdr), []

    _handlers: dict[int, Callable[[Connection, VfioUserHeader, bytes, list[int]], Outgoing]] = {
        Command.VFIO_USER_REGION_READ: _region_read,
        Command.VFIO_USER_REGION_WRITE: _region_write,
        Command.VFIO_USER_DMA_MAP: _dma_map,
        Command.VFIO_USER_DMA_UNMAP: _dma_unmap,
        Command.VFIO_USER_DEVICE_GET_INFO: _device_get_info,
        Command.VFIO_USER_DEVICE_GET_REGION_INFO: _get_region_info,
        Command.VFIO_USER_DEVICE_GET_IRQ_INFO: _get_irq_info,
        Command.VFIO_USER_DEVICE_SET_IRQS: _set_irqs,
        Command.VFIO_USER_REGION_WRITE_MULTI: _region_write_multi,
        Command.VFIO_USER_DEVICE_RESET: _device_reset,
    }

    # -- server -> client requests ----------------------------------------------------
    def request(self, command: Command, payload: bytes) -> tuple[VfioUserHeader, bytes]:
        """Send a request to the client and wait for its reply.

        Called from inside a device handler: the device lock is let go for the
        exchange.  A client that does not answer in time, or floods requests
        meanwhile, gets a DMA fault now and its connection closed after the
        current request.
        """
        if self.closed or self.doomed:
            raise DmaFault("client is gone")
        if threading.current_thread() is not self.thread:
            # Only the connection's thread reads its socket; another reader
            # would steal its requests (and they ours).
            raise DmaFault("DMA through messages is only possible while serving a request")
        with self.device.lock.released():
            try:
                return self._exchange(command, payload)
            except _Doomed as exc:
                self.doomed = str(exc)
                wake_blocked(self.sock)  # nothing more is read or sent
                raise DmaFault(str(exc)) from None
            except _StreamLost as exc:
                self.doomed = str(exc)
                raise DmaFault(str(exc)) from None
            except OSError as exc:
                self.doomed = f"socket error: {exc}"
                raise DmaFault(self.doomed) from None

    def _exchange(self, command: Command, payload: bytes) -> tuple[VfioUserHeader, bytes]:
        self.next_id = (self.next_id + 1) & 0xFFFF
        msg_id = self.next_id
        self._send(header(msg_id, command, HEADER_SIZE + len(payload), 0) + payload)
        deadline = time.monotonic() + DMA_REPLY_TIMEOUT
        while True:
            got = self._parse_one()
            if got is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                    raise _Doomed(f"client did not answer {command.name} within "
                                  f"{DMA_REPLY_TIMEOUT:g} s")
                if not self._fill():
                    raise _StreamLost("client disconnected during DMA")
                continue
            hdr, body, fds = got
            if hdr.flags & VFIO_USER_TYPE != VFIO_USER_REPLY:
                self.pending.append(got)  # handled after the current request
                self.pending_bytes += len(body) + HEADER_SIZE
                if len(self.pending) > MAX_PENDING_MESSAGES or \
                        self.pending_bytes > MAX_PENDING_BYTES:
                    raise _Doomed(f"client sent {len(self.pending)} requests while "
                                  f"{command.name} was outstanding")
                continue
            _close_all(fds)
            if hdr.msg_id != msg_id:
                emit("vfio_user.unexpected_reply", socket=self.name, msg_id=hdr.msg_id)
                continue
            if hdr.flags & VFIO_USER_ERROR:
                raise DmaFault(f"client refused {command.name}: errno {hdr.error_reply}")
            return hdr, body

    def _dma_read(self, addr: int, size: int) -> bytes:
        # QEMU's VFIOUserDMARW is 16 bytes in C: offset, count, 4 bytes padding.
        _hdr, body = self.request(Command.VFIO_USER_DMA_READ,
                                  VfioUserDmaRw(addr, size, bytes(4)).pack())
        try:
            rsp = VfioUserDmaRw.unpack(body)
        except DecodeError as exc:
            raise DmaFault(f"malformed DMA_READ reply: {exc}") from None
        if rsp.count != size or len(rsp.data) < size:
            raise DmaFault(f"short DMA_READ reply ({len(rsp.data)} of {size} bytes)")
        return rsp.data[:size]

    def _dma_write(self, addr: int, data: bytes) -> None:
        self.request(Command.VFIO_USER_DMA_WRITE,
                     VfioUserDmaRw(addr, len(data), data + bytes(4)).pack())

    # -- sending ------------------------------------------------------------------------
    def _send(self, data: bytes, fds: list[int] | None = None) -> None:
        try:
            if fds:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", fds))])
            elif data:
                self.sock.sendall(data)
        finally:
            if fds:
                _close_all(fds)  # the client has its own copies now

    # -- teardown -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Ask the connection thread to end (from any thread) and wait for it."""
        self.closing = True
        wake_blocked(self.sock)
        if threading.current_thread() is not self.thread and self.thread.is_alive():
            self.thread.join(10)

    def close(self, reason: str) -> None:
        """End the connection: detach the device, release every resource."""
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        for _hdr, _payload, fds in self.pending:
            _close_all(fds)
        self.pending.clear()
        for _pos, fds in self.fd_queue:
            _close_all(fds)
        self.fd_queue.clear()
        with self.device.lock:
            self.device.detach(self.dma)
            self.dma.clear()
        # Nothing may keep this connection alive: the table's callbacks point
        # back at it, and the buffers are not needed any more.
        self.dma.message_read = self.dma.message_write = None
        self.buf = bytearray()
        self._rx = bytearray()
        emit("vfio_user.disconnect", socket=self.name, reason=reason, **self.stats)


class _Doomed(Exception):
    """The client broke the rules of a DMA exchange; it is disconnected."""


class _StreamLost(Exception):
    """The byte stream cannot be resynchronised; the connection ends."""


class FunctionServer:
    """Listens on one socket and serves one device to one client at a time.

    An accept thread blocks in ``accept``; each client gets a connection
    thread.  A second client while one is connected is refused.  When the
    client leaves, the device is detached and reset, and only then is the
    next client attached (its connection thread starts after the previous
    one has ended, so a leaving client can never tear down the next one's
    DMA table).
    """

    def __init__(self, device: VfioUserDevice, path: str) -> None:
        self.device = device
        self.path = path
        self.listener: socket.socket | None = None
        self.connection: Connection | None = None
        self.connections_served = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._bound: BoundSocket | None = None

    def start(self) -> None:
        self._bound = bind_unix_listener(self.path, 4)
        self.listener = self._bound.sock
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"vfio-user accept {self.path}")
        self._thread.start()
        emit("vfio_user.listening", socket=self.path, function=self.device.name)

    def _accept_loop(self) -> None:
        assert self.listener is not None
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # listener closed
            conn = self.connection
            if conn is not None and conn.thread.is_alive():
                # A client that just left may still be detaching the device.
                conn.thread.join(0.5)
            busy = conn is not None and conn.thread.is_alive()
            # Not a local that outlives this turn: it would keep the previous
            # connection (and what it holds) alive while accept() blocks.
            conn = None
            if busy:
                emit("vfio_user.rejected", socket=self.path, reason="already has a client")
                client.close()
                continue
            self.connections_served += 1
            emit("vfio_user.connect", socket=self.path, function=self.device.name,
                 count=self.connections_served)
            self.connection = Connection(client, self.device, self.path)
            self.connection.thread.start()

    def close(self) -> None:
        self._stopping = True
        if self.listener is not None:
            wake_blocked(self.listener)
            self.listener.close()
            self.listener = None
            if self._thread is not None:
                self._thread.join(5)
            if self._bound is not None:
                self._bound.unlink()  # only if the path still names our socket
        if self.connection is not None:
            self.connection.shutdown()
        emit("vfio_user.closed", socket=self.path)
