"""A hostile or careless vfio-user client cannot crash, leak or wedge the server.

Real sockets, real memfds and eventfds; the server runs in this process, so a
SIGBUS or a leaked descriptor shows up here.  Protocol references are QEMU's
docs/interop/vfio-user.rst ("Header": NO_REPLY; "VFIO_USER_DMA_MAP": the fd
and its offset; "VFIO_USER_DEVICE_SET_IRQS": eventfds).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import mmap
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerThread
from vfiouser_tdisp.device.backend import FunctionBackend
from vfiouser_tdisp.device.device import Device, DeviceProfile
from vfiouser_tdisp.device.dma_test import DMA_CMD_FROM_DEVICE, DMA_CMD_TO_DEVICE
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.locks import DeviceLock
from vfiouser_tdisp.pci.function import (
    Bar,
    BarKind,
    DmaError,
    IrqIndex,
    MemoryArea,
    PciFunction,
)
from vfiouser_tdisp.vfio_user import server as server_mod
from vfiouser_tdisp.vfio_user.client import VfioUserClient, VfioUserError
from vfiouser_tdisp.vfio_user.device import DeviceError, IrqInfo, RegionInfo
from vfiouser_tdisp.vfio_user.messages import (
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_USER_ERROR,
    VFIO_USER_NO_REPLY,
    Command,
    VfioRegionInfo,
    VfioRegionSparseMmapArea,
)
from vfiouser_tdisp.vfio_user.server import FunctionServer

RW = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE
STATUS_DONE, STATUS_ERROR = 1, 2
VFIO_PCI_MSIX_IRQ_INDEX = 2


def connect(path: str, **kw: int) -> VfioUserClient:
    c = VfioUserClient(path, **kw)
    c.version()
    return c


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fd_count() -> int:
    """A baseline: earlier tests' devices (their BAR memfds) collected first."""
    gc.collect()
    return fd_count()


def open_fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def wait_until(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def run_dma(c: VfioUserClient, addr: int, length: int, cmd: int) -> int:
    """dma-test: program DMA_ADDR/LEN, start DMA_CMD, return STATUS."""
    c.config_write32(4, 0x6)  # memory space + bus master
    c.region_write(0, 4, struct.pack("<III", addr & 0xFFFFFFFF, addr >> 32, length))
    c.region_write(0, 0x10, struct.pack("<I", cmd))
    return int(struct.unpack("<I", c.region_read(0, 0x14, 4))[0])


def dma_map_fd(c: VfioUserClient, iova: int, size: int, fd: int, offset: int = 0,
               check: bool = True) -> int:
    """DMA_MAP with an fd (VfioUserDmaMap: argsz, flags, offset, address, size).
    Our copy of ``fd`` is closed once sent, as QEMU keeps only its own."""
    try:
        rep = c.call(Command.VFIO_USER_DMA_MAP,
                     struct.pack("<IIQQQ", 32, RW, offset, iova, size), fds=[fd], check=False)
    finally:
        os.close(fd)
    if check and rep.header.flags & VFIO_USER_ERROR:
        raise VfioUserError(Command.VFIO_USER_DMA_MAP, rep.header.error_reply)
    return rep.header.error_reply if rep.header.flags & VFIO_USER_ERROR else 0


def session_count(srv: ServerThread) -> int:
    assert srv.running is not None
    return srv.running.servers[0].connections_served


def wait_detached(srv: ServerThread) -> None:
    """Until the server has finished with its last client."""
    assert srv.running is not None
    fs = srv.running.servers[0]
    assert wait_until(lambda: fs.connection is None or not fs.connection.thread.is_alive())


# -- 1. client memory that shrinks under a DMA mapping --


def test_dma_into_a_shrunken_unsealed_memfd_is_a_dma_error_not_sigbus(
        dma_server: ServerThread) -> None:
    with connect(dma_server.paths[0]) as c:
        ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(ram, 0x10000)
        os.pwrite(ram, b"before-the-shrink", 0x2000)
        dma_map_fd(c, 0x100000, 0x10000, os.dup(ram))
        assert run_dma(c, 0x102000, 17, DMA_CMD_TO_DEVICE) == STATUS_DONE
        assert c.region_read(2, 0, 17) == b"before-the-shrink"
        os.ftruncate(ram, 0x1000)  # the client takes the pages away
        # Reading and writing the vanished pages: a DMA error for this device.
        assert run_dma(c, 0x102000, 16, DMA_CMD_TO_DEVICE) == STATUS_DONE | STATUS_ERROR
        assert run_dma(c, 0x104000, 16, DMA_CMD_FROM_DEVICE) == STATUS_DONE | STATUS_ERROR
        assert os.fstat(ram).st_size == 0x1000  # the DMA write did not grow it back
        # What is still there still works, and so does the server.
        os.pwrite(ram, b"still-here", 0x800)
        assert run_dma(c, 0x100800, 10, DMA_CMD_TO_DEVICE) == STATUS_DONE
        assert c.region_read(2, 0, 10) == b"still-here"
        os.close(ram)
    with connect(dma_server.paths[0]) as c2:
        assert c2.config_read32(0) == 0x10F01B36


def test_dma_map_beyond_the_end_of_the_file_is_einval(dma_server: ServerThread) -> None:
    with connect(dma_server.paths[0]) as c:
        ram = os.memfd_create("small", os.MFD_CLOEXEC)
        os.ftruncate(ram, 0x2000)
        assert dma_map_fd(c, 0x100000, 0x2000, os.dup(ram), offset=0x1000,
                          check=False) == errno.EINVAL
        assert dma_map_fd(c, 0x100000, 0x3000, os.dup(ram), check=False) == errno.EINVAL
        pipe_r, pipe_w = os.pipe()
        assert dma_map_fd(c, 0x100000, 0x1000, pipe_r, check=False) == errno.EINVAL
        os.close(pipe_w)
        dma_map_fd(c, 0x100000, 0x2000, os.dup(ram))  # the whole file is fine
        os.close(ram)


def test_sealed_memfd_like_qemus_memory_backend_works_and_cannot_shrink(
        dma_server: ServerThread) -> None:
    """QEMU's memory-backend-memfd seals F_SEAL_GROW|F_SEAL_SHRINK|F_SEAL_SEAL by default."""
    with connect(dma_server.paths[0]) as c:
        ram = os.memfd_create("qemu-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(ram, 0x10000)
        fcntl.fcntl(ram, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        os.pwrite(ram, b"sealed-ram", 0x3000)
        dma_map_fd(c, 0x100000, 0x10000, os.dup(ram))
        assert run_dma(c, 0x103000, 10, DMA_CMD_TO_DEVICE) == STATUS_DONE
        assert c.region_read(2, 0, 10) == b"sealed-ram"
        c.region_write(2, 0, b"from-device")
        assert run_dma(c, 0x105000, 11, DMA_CMD_FROM_DEVICE) == STATUS_DONE
        assert os.pread(ram, 11, 0x5000) == b"from-device"
        with pytest.raises(PermissionError):
            os.ftruncate(ram, 0x1000)
        os.close(ram)


# -- 2. every received fd is owned or closed --


def test_refused_dma_maps_with_fds_leave_no_fd_behind(dma_server: ServerThread) -> None:
    baseline = settled_fd_count()
    c = VfioUserClient(dma_server.paths[0])
    c.version(caps={"max_dma_maps": 1})
    ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(ram, 0x4000)
    dma_map_fd(c, 0x1000, 0x1000, os.dup(ram))  # the one map the limit allows
    refusals = {
        "size 0": (0x10000, 0),
        "overlap": (0x1000, 0x1000),
        "address wrap": ((1 << 64) - 0x1000, 0x2000),
        "over the map limit": (0x20000, 0x1000),
    }
    for i in range(100):
        iova, size = list(refusals.values())[i % 4]
        assert dma_map_fd(c, iova, size, os.dup(ram), check=False) in (
            errno.EINVAL, errno.EEXIST, errno.ENOSPC)
    # Other requests that carry fds they do not take: closed as well.
    for cmd in (Command.VFIO_USER_REGION_READ, Command.VFIO_USER_DEVICE_GET_INFO):
        c.call(cmd, struct.pack("<QII", 0, 7, 4) if cmd == Command.VFIO_USER_REGION_READ
               else struct.pack("<IIII", 16, 0, 0, 0), fds=[ram], check=False)
    assert c.config_read32(0) == 0x10F01B36
    os.close(ram)
    c.close()
    wait_detached(dma_server)
    assert wait_until(lambda: fd_count() == baseline), (fd_count(), baseline)


def test_fds_of_a_connection_that_dies_mid_message_are_closed(dma_server: ServerThread) -> None:
    baseline = settled_fd_count()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(dma_server.paths[0])
    ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    # A DMA_MAP header promising 48 bytes, the fd, and then only half of it.
    s.sendmsg([struct.pack("<HHIII", 1, Command.VFIO_USER_DMA_MAP, 48, 0, 0) + bytes(8)],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", ram))])
    os.close(ram)
    time.sleep(0.1)
    s.close()
    wait_detached(dma_server)
    assert wait_until(lambda: fd_count() == baseline), (fd_count(), baseline)


# -- 3. a leaving client never tears down the next one's DMA --


def test_200_immediate_reconnects_every_session_has_working_dma(
        dma_server: ServerThread) -> None:
    failures = []
    for i in range(200):
        with connect(dma_server.paths[0], memory_size=0x2000) as c:
            tag = f"session-{i:04d}".encode()
            c.dma_map(0x100000, 0x2000, share_fd=True)
            c.memory[0:len(tag)] = tag
            status = run_dma(c, 0x100000, len(tag), DMA_CMD_TO_DEVICE)
            if status != STATUS_DONE or c.region_read(2, 0, len(tag)) != tag:
                failures.append(i)
        # no pause: the next client connects while this one is being torn down
    assert failures == []
    assert session_count(dma_server) == 200


# -- 4. a DMA request the client does not answer --


def test_dma_reply_timeout_is_qemus_and_closes_the_silent_client(
        dma_server: ServerThread, monkeypatch: pytest.MonkeyPatch, events: Recorder) -> None:
    assert server_mod.DMA_REPLY_TIMEOUT == 5.0  # QEMU's vfio-user wait_time (5000 ms)
    monkeypatch.setattr(server_mod, "DMA_REPLY_TIMEOUT", 0.5)
    c = connect(dma_server.paths[0])
    c.dma_map(0x200000, 0x1000, share_fd=False)  # reached by DMA_READ/WRITE messages
    c.config_write32(4, 0x6)
    c.region_write(0, 4, struct.pack("<III", 0x200000, 0, 16))
    c.region_write(0, 0x10, struct.pack("<I", DMA_CMD_TO_DEVICE), posted=True)
    first = c.recv_message()  # the server's DMA_READ, which we never answer
    assert first.header.command == Command.VFIO_USER_DMA_READ
    c.sock.settimeout(5)
    assert c.sock.recv(4096) == b""  # closed by the server after its timeout
    c.close()
    assert wait_until(lambda: any("did not answer VFIO_USER_DMA_READ" in e["reason"]
                                  for e in events.of("vfio_user.disconnect")))
    with connect(dma_server.paths[0]) as c2:
        assert c2.config_read32(0) == 0x10F01B36


def test_requests_queued_behind_an_unanswered_dma_request_are_bounded(
        dma_server: ServerThread, events: Recorder) -> None:
    c = connect(dma_server.paths[0])
    c.dma_map(0x200000, 0x1000, share_fd=False)
    c.config_write32(4, 0x6)
    c.region_write(0, 4, struct.pack("<III", 0x200000, 0, 16))
    c.region_write(0, 0x10, struct.pack("<I", DMA_CMD_TO_DEVICE), posted=True)
    assert c.recv_message().header.command == Command.VFIO_USER_DMA_READ
    read = struct.pack("<QII", 0, 7, 4)
    sent = 0
    c.sock.settimeout(5)
    try:
        for _ in range(10 * server_mod.MAX_PENDING_MESSAGES):
            c.send(Command.VFIO_USER_REGION_READ, read)
            sent += 1
    except OSError:
        pass  # the server hung up while we were still flooding
    # The server closed the connection without waiting for the DMA timeout.
    t = time.monotonic()
    while True:
        try:
            data = c.sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
    assert time.monotonic() - t < 3
    c.close()
    assert wait_until(lambda: any("while VFIO_USER_DMA_READ was outstanding" in e["reason"]
                                  for e in events.of("vfio_user.disconnect")))
    with connect(dma_server.paths[0]) as c2:
        assert c2.config_read32(0) == 0x10F01B36


# -- 5. no lock held across blocking socket I/O --


@pytest.fixture
def two_function_device(sock_dir: Path) -> Iterator[tuple[Device, list[str]]]:
    dev = Device(DeviceProfile("dma-test-2fn", "dma-test", functions=2))
    paths = [str(sock_dir / f"fn{i}.sock") for i in range(2)]
    servers = [FunctionServer(dev.backend(i), p) for i, p in enumerate(paths)]
    for s in servers:
        s.start()
    yield dev, paths
    for s in servers:
        s.close()


def lock_free_within(dev: Device, seconds: float) -> bool:
    got = threading.Event()

    def take() -> None:
        with dev.lock:
            got.set()

    threading.Thread(target=take, daemon=True).start()
    return got.wait(seconds)


def test_unanswered_dma_request_does_not_stall_the_sibling_function(
        two_function_device: tuple[Device, list[str]]) -> None:
    dev, paths = two_function_device
    a = connect(paths[0])
    a.dma_map(0x200000, 0x1000, share_fd=False)
    a.config_write32(4, 0x6)
    a.region_write(0, 4, struct.pack("<III", 0x200000, 0, 16))
    a.region_write(0, 0x10, struct.pack("<I", DMA_CMD_TO_DEVICE), posted=True)
    assert a.recv_message().header.command == Command.VFIO_USER_DMA_READ  # left unanswered
    assert lock_free_within(dev, 1.0)  # what the spdm-emu port and watchers take
    with connect(paths[1]) as b:
        t = time.monotonic()
        assert b.config_read32(0) == 0x10F01B36
        assert time.monotonic() - t < 1.0
    a.close()


def test_client_that_stops_reading_replies_does_not_stall_the_sibling(
        two_function_device: tuple[Device, list[str]]) -> None:
    dev, paths = two_function_device
    a = connect(paths[0])
    a.sock.setblocking(False)
    big_read = struct.pack("<QII", 0, 2, 0x10000)  # 64 KiB of BAR2 per reply
    for _ in range(200):  # ~13 MB of replies nobody reads
        try:
            a.send(Command.VFIO_USER_REGION_READ, big_read)
        except BlockingIOError:
            break
    time.sleep(0.3)  # the server is now blocked sending to a
    assert lock_free_within(dev, 1.0)
    with connect(paths[1]) as b:
        assert b.config_read32(0) == 0x10F01B36
    a.close()


# -- 6. SET_IRQS takes eventfds only --


@pytest.mark.parametrize("kind", ["pipe", "dev-zero", "regular-file", "memfd"])
@pytest.mark.parametrize("action", [VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK])
def test_set_irqs_with_a_non_eventfd_is_einval_and_leaks_nothing(
        dma_server: ServerThread, tmp_path: Path, kind: str, action: int) -> None:
    gc.collect()
    before = open_fds()
    extra: list[int] = []
    if kind == "pipe":
        fd, w = os.pipe()
        extra.append(w)
    elif kind == "dev-zero":
        fd = os.open("/dev/zero", os.O_RDONLY)
    elif kind == "regular-file":
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    else:
        fd = os.memfd_create("not-an-eventfd")
    with connect(dma_server.paths[0]) as c:
        baseline_threads = threading.active_count()
        with pytest.raises(VfioUserError) as exc:
            c.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD | action, 0, 1,
                       fds=[fd])
        assert exc.value.errno == errno.EINVAL
        assert threading.active_count() == baseline_threads  # no watcher started
        efd = os.eventfd(0, os.EFD_NONBLOCK)  # a real eventfd is still taken
        c.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD
                   | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[efd])
        os.close(efd)
    for f in [fd, *extra]:
        os.close(f)
    wait_detached(dma_server)
    assert wait_until(lambda: open_fds().items() <= before.items()), {
        k: v for k, v in open_fds().items() if before.get(k) != v}


def test_unmask_eventfd_watcher_runs_under_the_device_lock(dma_server: ServerThread) -> None:
    dev = dma_server.device
    irqs = dev.dsm.irqs
    with connect(dma_server.paths[0]) as c:
        unmask = os.eventfd(0, os.EFD_NONBLOCK)
        c.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD
                   | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, fds=[unmask])
        irqs.mask(IrqIndex.MSIX, 0, 1)
        with dev.lock:
            os.eventfd_write(unmask, 1)
            time.sleep(0.5)  # the watcher has seen it but must wait for the lock
            assert 0 in irqs.masked[IrqIndex.MSIX]
        assert wait_until(lambda: 0 not in irqs.masked[IrqIndex.MSIX], 5)
        os.close(unmask)


# -- 7. NO_REPLY on every command --


@pytest.mark.parametrize("command,payload", [
    (Command.VFIO_USER_DEVICE_GET_REGION_INFO, struct.pack("<IIIIQQ", 64, 0, 2, 0, 0, 0)
     + bytes(32)),
    (Command.VFIO_USER_DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)),
    (Command.VFIO_USER_DEVICE_GET_IRQ_INFO, struct.pack("<IIII", 16, 0, 2, 0)),
    (Command.VFIO_USER_REGION_READ, struct.pack("<QII", 0, 7, 4)),
    (Command.VFIO_USER_DEVICE_RESET, b""),
    (Command.VFIO_USER_DMA_UNMAP, struct.pack("<IIQQ", 24, 0, 0x1000, 0x1000)),
    (Command.VFIO_USER_VERSION, b"\0\0\0\0{}\0"),  # an error, still silent
])
def test_no_reply_is_honoured_on_every_command(
        dma_server: ServerThread, command: int, payload: bytes) -> None:
    gc.collect()
    before = open_fds()
    with connect(dma_server.paths[0]) as c:
        c.send(command, payload, flags=VFIO_USER_NO_REPLY)
        mid = c.send(Command.VFIO_USER_DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
        rep = c.recv_message()  # the very next message is the second request's reply
        assert rep.header.msg_id == mid and rep.header.command == \
            Command.VFIO_USER_DEVICE_GET_INFO
        assert rep.fds == []
    wait_detached(dma_server)
    assert wait_until(lambda: open_fds().items() <= before.items())


# -- 8. a closed connection frees its memory at once --


def test_closed_connection_is_freed_without_the_garbage_collector(
        dma_server: ServerThread) -> None:
    assert dma_server.running is not None
    fs = dma_server.running.servers[0]
    gc.disable()
    try:
        with connect(dma_server.paths[0]) as c:
            c.dma_map(0x200000, 0x1000, share_fd=False)  # message DMA: table -> connection
            c.dma_map(0x100000, 0x1000, share_fd=True)
            assert run_dma(c, 0x200000, 16, DMA_CMD_TO_DEVICE) == STATUS_DONE
            conn = fs.connection
            assert conn is not None and len(conn._rx) <= 64 << 10  # no 1 MiB per client
            ref = weakref.ref(conn)
            del conn
        wait_detached(dma_server)
        with connect(dma_server.paths[0]) as c2:  # the server now holds the new one
            assert c2.config_read32(0) == 0x10F01B36
            assert wait_until(lambda: ref() is None, 5)
    finally:
        gc.enable()


# -- 12. client strings in the event log are capped --


def test_a_huge_version_string_is_capped_in_the_event_log(
        dma_server: ServerThread, events: Recorder) -> None:
    caps = {"max_msg_fds": 8, "junk": "x" * 1_000_000}
    body = json.dumps({"capabilities": caps}).encode() + b"\0"
    with VfioUserClient(dma_server.paths[0]) as c:
        c.call(Command.VFIO_USER_VERSION, struct.pack("<HH", 0, 0) + body)
        assert c.config_read32(0) == 0x10F01B36
    (ev,) = events.of("vfio_user.version")
    assert len(json.dumps(ev)) < 2048


# -- the device interface: an mmap-able area not at BAR offset 0 --


def test_mmap_area_at_a_bar_offset_is_announced_at_that_offset(sock_dir: Path) -> None:
    fn = PciFunction("offset-test", 0x1B36, 0x10F1, 0xFF0000)
    bar = fn.add_bar(Bar(2, 0x4000, BarKind.MEM32))
    bar.add(0x2000, MemoryArea(0x1000, "window"))
    path = str(sock_dir / "offset.sock")
    srv = FunctionServer(FunctionBackend(fn), path)
    srv.start()
    try:
        with connect(path) as c:
            short, _ = c.region_info(2)
            info, fds = c.region_info(2, argsz=short.argsz)
            assert len(fds) == 1
            area = VfioRegionSparseMmapArea.unpack(info.caps[16:32])
            assert (area.offset, area.size) == (0x2000, 0x1000)
            # vfio-user.rst: the client maps the fd at region offset + area offset.
            mem = mmap.mmap(fds[0], area.size, offset=info.offset + area.offset)
            mem[0x10:0x1A] = b"via-mmap!!"
            assert c.region_read(2, 0x2010, 10) == b"via-mmap!!"
            c.region_write(2, 0x2100, b"via-socket")
            assert mem[0x100:0x10A] == b"via-socket"
            mem.close()
            os.close(fds[0])
            assert isinstance(info, VfioRegionInfo)
    finally:
        srv.close()


def test_a_full_eventfd_counter_does_not_block_the_device(dma_server: ServerThread) -> None:
    """eventfd(2): a write that would overflow the counter blocks unless O_NONBLOCK."""
    with connect(dma_server.paths[0]) as c:
        efd = os.eventfd(0)  # blocking, as a careless client might pass it
        os.eventfd_write(efd, 0xFFFFFFFFFFFFFFFE)  # the largest value the counter holds
        c.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD
                   | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[efd])
        c.config_write32(0x10, 0)  # any request: then trigger vector 0 from the client side
        c.call(Command.VFIO_USER_DEVICE_SET_IRQS,
               struct.pack("<IIIII", 20, 1 | VFIO_IRQ_SET_ACTION_TRIGGER,
                           VFIO_PCI_MSIX_IRQ_INDEX, 0, 1))
        assert lock_free_within(dma_server.device, 1.0)
        assert c.config_read32(0) == 0x10F01B36
        os.close(efd)


def test_message_dma_from_another_thread_is_a_dma_error(dma_server: ServerThread) -> None:
    """Only the connection thread reads the socket: a DMA_READ from elsewhere would
    race it for the reply."""
    fn = dma_server.device.dsm
    with connect(dma_server.paths[0]) as c:
        c.dma_map(0x200000, 0x1000, share_fd=False)
        c.config_write32(4, 0x6)
        with pytest.raises(DmaError, match="only possible while serving"):
            fn.dma.read(0x200000, 4)
        c.memory[0:4] = b"ok!!"
        assert run_dma(c, 0x200000, 4, DMA_CMD_TO_DEVICE) == STATUS_DONE
        assert c.region_read(2, 0, 4) == b"ok!!"


def test_set_irqs_event_names_the_index(dma_server: ServerThread, events: Recorder) -> None:
    with connect(dma_server.paths[0]) as c:
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        c.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_DATA_EVENTFD
                   | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[efd])
        os.close(efd)
    assert [e["index"] for e in events.of("vfio_user.set_irqs")] == ["MSIX"]


def test_device_lock_released_lets_others_in_and_restores_the_depth() -> None:
    lock = DeviceLock()
    other_got_it = threading.Event()
    other_may_leave = threading.Event()

    def other() -> None:
        with lock:
            other_got_it.set()
            other_may_leave.wait(5)

    with lock, lock:  # held twice, as a nested handler would
        t = threading.Thread(target=other)
        with lock.released():
            t.start()
            assert other_got_it.wait(5)
            other_may_leave.set()
        t.join(5)
        assert lock.held()  # taken back, both levels
    assert not lock.held()
    with lock.released():  # not held: passes straight through
        assert not lock.held()
    with pytest.raises(RuntimeError):
        lock.release()


class _RegisterFile:
    """A device written straight to the interface (vfio_user/device.py), no PciFunction:
    region 0 is 16 bytes of registers; anything else is refused with ENODEV."""

    def __init__(self) -> None:
        self.name = "register-file"
        self.lock = DeviceLock()
        self.regs = bytearray(16)
        self.attached: object | None = None
        self.resets = 0

    def region_info(self, index: int) -> RegionInfo:
        return RegionInfo(16 if index == 0 else 0)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        self._check(index, offset, count)
        return bytes(self.regs[offset : offset + count])

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self._check(index, offset, len(data))
        self.regs[offset : offset + len(data)] = data

    def _check(self, index: int, offset: int, count: int) -> None:
        if index != 0 or offset + count > 16:
            raise DeviceError(errno.ENODEV, "no such register")

    def irq_info(self, index: int) -> IrqInfo:
        return IrqInfo(0)

    def irq_set_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        raise AssertionError("no vectors")

    def irq_clear_eventfds(self, index: int, start: int, count: int) -> None:
        pass

    def irq_set_action_eventfd(self, action: str, index: int, vector: int,
                               fd: int | None) -> None:
        raise AssertionError("no vectors")

    def irq_trigger(self, index: int, vector: int) -> None:
        pass

    def irq_mask(self, index: int, vector: int) -> None:
        pass

    def irq_unmask(self, index: int, vector: int) -> None:
        pass

    def attach(self, dma: object) -> None:
        self.attached = dma

    def detach(self, dma: object) -> None:
        if self.attached is dma:
            self.attached = None

    def reset(self) -> None:
        self.resets += 1


def test_any_device_implementing_the_interface_is_served(sock_dir: Path) -> None:
    dev = _RegisterFile()
    path = str(sock_dir / "regs.sock")
    srv = FunctionServer(dev, path)
    srv.start()
    try:
        with connect(path) as c:
            c.region_write(0, 4, b"\x11\x22\x33\x44")
            assert c.region_read(0, 0, 8) == b"\0\0\0\0\x11\x22\x33\x44"
            with pytest.raises(VfioUserError) as exc:
                c.region_read(3, 0, 4)
            assert exc.value.errno == errno.ENODEV  # the device's own errno
            info, fds = c.region_info(0)
            assert info.size == 16 and fds == []
            c.reset()
            assert dev.resets == 1 and dev.attached is not None
        assert wait_until(lambda: dev.attached is None)
    finally:
        srv.close()


def test_the_bar_memfd_a_client_receives_cannot_be_shrunk(dma_server: ServerThread) -> None:
    with connect(dma_server.paths[0]) as c:
        short, _ = c.region_info(2)
        _info, fds = c.region_info(2, argsz=short.argsz)
        (fd,) = fds
        with pytest.raises(PermissionError):  # F_SEAL_SHRINK (memfd_create(2))
            os.ftruncate(fd, 0)
        with pytest.raises(PermissionError):  # F_SEAL_GROW
            os.ftruncate(fd, 1 << 30)
        os.close(fd)
        c.region_write(2, 0xFFF0, b"still mapped")
        assert c.region_read(2, 0xFFF0, 12) == b"still mapped"
