"""A small synchronous vfio-user client (what QEMU does, minus the VM).

Used by the tests, the benchmarks and tools that poke a running server.  It
owns a "guest memory" memfd: DMA_MAP can share it by fd, or map it without an
fd so that the server has to use DMA_READ/DMA_WRITE, which this client answers
while it waits for its own replies.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ..wire import DecodeError
from .messages import (
    HEADER_SIZE,
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_USER_ERROR,
    VFIO_USER_NO_REPLY,
    VFIO_USER_REPLY,
    VFIO_USER_TYPE,
    Command,
    VfioDeviceInfo,
    VfioIrqInfo,
    VfioIrqSet,
    VfioRegionInfo,
    VfioUserDmaMap,
    VfioUserDmaRw,
    VfioUserDmaUnmap,
    VfioUserHeader,
    VfioUserRegionAccess,
    VfioUserVersion,
)


class VfioUserError(Exception):
    def __init__(self, command: int, err: int) -> None:
        name = Command(command).name if command in Command._value2member_map_ else command
        super().__init__(f"{name} failed: {os.strerror(err)} ({err})")
        self.command = command
        self.errno = err


@dataclass
class Reply:
    header: VfioUserHeader
    payload: bytes
    fds: list[int]


class VfioUserClient:
    def __init__(self, path: str, memory_size: int = 1 << 20, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.next_id = 0
        self.buf = bytearray()
        self._rx = bytearray(1 << 20)
        self._rxv = memoryview(self._rx)
        self.fds: list[int] = []
        self.memory_size = memory_size
        self.memfd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, memory_size)
        self.memory = mmap.mmap(self.memfd, memory_size)
        self.maps: list[tuple[int, int, int]] = []  # (iova, size, memory offset)
        self.dma_requests = 0

    # -- framing ---------------------------------------------------------------------
    def send(self, command: int, payload: bytes = b"", flags: int = 0,
             fds: list[int] | None = None, msg_id: int | None = None,
             size: int | None = None) -> int:
        if msg_id is None:
            self.next_id = (self.next_id + 1) & 0xFFFF
            msg_id = self.next_id
        total = HEADER_SIZE + len(payload) if size is None else size
        data = VfioUserHeader(msg_id, command, total, flags, 0).pack() + payload
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array("i", fds))])
        else:
            self.sock.sendall(data)
        return msg_id

    def _fill(self) -> None:
        n, anc, _f, _a = self.sock.recvmsg_into([self._rx], socket.CMSG_SPACE(16 * 4))
        if not n:
            raise ConnectionError("server closed the connection")
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                self.fds.extend(arr)
        self.buf += self._rxv[:n]

    def recv_message(self) -> Reply:
        while len(self.buf) < HEADER_SIZE:
            self._fill()
        hdr, _ = VfioUserHeader.unpack_from(self.buf)
        while len(self.buf) < hdr.msg_size:
            self._fill()
        payload = bytes(self.buf[HEADER_SIZE : hdr.msg_size])
        del self.buf[: hdr.msg_size]
        fds, self.fds = self.fds, []
        return Reply(hdr, payload, fds)

    def wait_reply(self, msg_id: int) -> Reply:
        while True:
            msg = self.recv_message()
            if msg.header.flags & VFIO_USER_TYPE == VFIO_USER_REPLY:
                if msg.header.msg_id != msg_id:
                    raise AssertionError(f"reply {msg.header.msg_id} while waiting for {msg_id}")
                return msg
            self._serve_request(msg)

    def call(self, command: int, payload: bytes = b"", fds: list[int] | None = None,
             check: bool = True) -> Reply:
        rep = self.wait_reply(self.send(command, payload, fds=fds))
        if check and rep.header.flags & VFIO_USER_ERROR:
            raise VfioUserError(command, rep.header.error_reply)
        return rep

    def poll_requests(self, timeout: float = 0.5) -> int:
        """Serve server->client requests arriving within ``timeout``; returns how many."""
        served = 0
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    msg = self.recv_message()
                except TimeoutError:
                    return served
                self._serve_request(msg)
                served += 1
        finally:
            self.sock.settimeout(old)

    # -- server->client DMA ---------------------------------------------------------------
    def _translate(self, iova: int, size: int) -> int:
        for base, length, off in self.maps:
            if base <= iova and iova + size <= base + length:
                return off + iova - base
        raise KeyError(iova)

    def _serve_request(self, msg: Reply) -> None:
        hdr = msg.header
        self.dma_requests += 1
        try:
            req = VfioUserDmaRw.unpack(msg.payload)
            off = self._translate(req.offset, req.count)
            if hdr.command == Command.VFIO_USER_DMA_READ:
                data = self.memory[off : off + req.count]
                body = VfioUserDmaRw(req.offset, req.count, data + bytes(4)).pack()
            elif hdr.command == Command.VFIO_USER_DMA_WRITE:
                if len(req.data) < req.count:
                    raise KeyError(req.count)
                self.memory[off : off + req.count] = req.data[: req.count]
                body = b""
            else:
                raise KeyError(hdr.command)
        except (KeyError, DecodeError):
            self.sock.sendall(VfioUserHeader(hdr.msg_id, hdr.command, HEADER_SIZE,
                                             VFIO_USER_REPLY | VFIO_USER_ERROR, 14).pack())
            return
        if not hdr.flags & VFIO_USER_NO_REPLY:
            self.sock.sendall(VfioUserHeader(hdr.msg_id, hdr.command, HEADER_SIZE + len(body),
                                             VFIO_USER_REPLY, 0).pack() + body)

    # -- commands ---------------------------------------------------------------------------
    def version(self, caps: dict[str, Any] | None = None, minor: int = 0) -> dict[str, Any]:
        if caps is None:
            caps = {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "pgsizes": 4096,
                    "max_dma_maps": 65535, "write_multiple": True,
                    "migration": {"pgsize": 4096, "max_bitmap_size": 256 << 20}}
        body = json.dumps({"capabilities": caps}).encode() + b"\0"
        rep = self.call(Command.VFIO_USER_VERSION, VfioUserVersion(0, minor, body).pack())
        ver = VfioUserVersion.unpack(rep.payload)
        result: dict[str, Any] = json.loads(ver.capabilities.rstrip(b"\0"))
        result["major"], result["minor"] = ver.major, ver.minor
        return result

    def device_info(self) -> VfioDeviceInfo:
        rep = self.call(Command.VFIO_USER_DEVICE_GET_INFO, VfioDeviceInfo(16).pack())
        return VfioDeviceInfo.unpack(rep.payload)

    def region_info(self, index: int, argsz: int = 32) -> tuple[VfioRegionInfo, list[int]]:
        payload = VfioRegionInfo(argsz, 0, index).pack() + bytes(argsz - 32)
        rep = self.call(Command.VFIO_USER_DEVICE_GET_REGION_INFO, payload)
        return VfioRegionInfo.unpack(rep.payload), rep.fds

    def irq_info(self, index: int) -> VfioIrqInfo:
        rep = self.call(Command.VFIO_USER_DEVICE_GET_IRQ_INFO, VfioIrqInfo(16, 0, index).pack())
        return VfioIrqInfo.unpack(rep.payload)

    def set_irqs(self, index: int, flags: int, start: int, count: int,
                 fds: list[int] | None = None, data: bytes = b"") -> None:
        payload = VfioIrqSet(20 + len(data), flags, index, start, count, data).pack()
        self.call(Command.VFIO_USER_DEVICE_SET_IRQS, payload, fds=fds)

    def region_read(self, region: int, offset: int, count: int) -> bytes:
        rep = self.call(Command.VFIO_USER_REGION_READ,
                        VfioUserRegionAccess(offset, region, count).pack())
        return VfioUserRegionAccess.unpack(rep.payload).data

    def region_write(self, region: int, offset: int, data: bytes, posted: bool = False) -> None:
        payload = VfioUserRegionAccess(offset, region, len(data), data).pack()
        if posted:
            self.send(Command.VFIO_USER_REGION_WRITE, payload, flags=VFIO_USER_NO_REPLY)
        else:
            self.call(Command.VFIO_USER_REGION_WRITE, payload)

    def config_read32(self, offset: int) -> int:
        return int(struct.unpack("<I", self.region_read(7, offset, 4))[0])

    def config_write32(self, offset: int, value: int) -> None:
        self.region_write(7, offset, struct.pack("<I", value))

    def dma_map(self, iova: int, size: int, mem_offset: int = 0, share_fd: bool = True,
                flags: int = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) -> None:
        if mem_offset + size > self.memory_size:
            raise ValueError("mapping beyond the client's memory")
        payload = VfioUserDmaMap(32, flags, mem_offset if share_fd else 0, iova, size).pack()
        fds = [self.memfd] if share_fd else None
        self.call(Command.VFIO_USER_DMA_MAP, payload, fds=fds)
        self.maps.append((iova, size, mem_offset))

    def dma_unmap(self, iova: int, size: int, flags: int = 0) -> None:
        self.call(Command.VFIO_USER_DMA_UNMAP, VfioUserDmaUnmap(24, flags, iova, size).pack())
        self.maps = [m for m in self.maps if not (m[0] >= iova and m[0] + m[1] <= iova + size)]

    def reset(self) -> None:
        self.call(Command.VFIO_USER_DEVICE_RESET)

    def close(self) -> None:
        self.sock.close()
        self.memory.close()
        os.close(self.memfd)
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> VfioUserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
