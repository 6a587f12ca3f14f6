"""vfio-user server over a real UNIX socket, driven by the test client."""

from __future__ import annotations

import errno
import mmap
import os
import socket
import stat
import struct
import time
from pathlib import Path

import pytest

from tests.conftest import ServerThread
from vfiouser_tdisp.device.dma_test import DMA_CMD_FROM_DEVICE, DMA_CMD_TO_DEVICE
from vfiouser_tdisp.pci.function import IrqIndex
from vfiouser_tdisp.vfio_user.client import VfioUserClient, VfioUserError
from vfiouser_tdisp.vfio_user.messages import (
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_USER_ERROR,
    VFIO_USER_NO_REPLY,
    Command,
    VfioRegionSparseMmapArea,
)
from vfiouser_tdisp.vfio_user.server import prepare_socket_path

CONFIG = 7


def connect(srv: ServerThread, **kw: int) -> VfioUserClient:
    c = VfioUserClient(srv.paths[0], **kw)
    c.version()
    return c


def test_version_negotiation(dma_server: ServerThread) -> None:
    with VfioUserClient(dma_server.paths[0]) as c:
        caps = c.version(minor=3)
        assert caps["major"] == 0 and caps["minor"] == 0  # reply minor <= request minor
        got = caps["capabilities"]
        assert got["max_msg_fds"] <= 16 and got["max_data_xfer_size"] == 1 << 20
        assert got["write_multiple"] is True
        assert "migration" not in got  # only what we support, a subset of the offer


def test_version_without_write_multiple_is_not_offered_back(dma_server: ServerThread) -> None:
    with VfioUserClient(dma_server.paths[0]) as c:
        got = c.version(caps={"max_msg_fds": 8})["capabilities"]
        assert "write_multiple" not in got


def test_requests_before_version_are_refused(dma_server: ServerThread) -> None:
    with VfioUserClient(dma_server.paths[0]) as c:
        with pytest.raises(VfioUserError) as exc:
            c.device_info()
        assert exc.value.errno == errno.EINVAL
        c.version()  # and the connection still works
        assert c.device_info().num_regions == 9


def test_bad_major_and_bad_json(dma_server: ServerThread) -> None:
    with VfioUserClient(dma_server.paths[0]) as c:
        rep = c.call(Command.VFIO_USER_VERSION, struct.pack("<HH", 1, 0) + b"{}\0", check=False)
        assert rep.header.flags & VFIO_USER_ERROR and rep.header.error_reply == errno.ENOTSUP
        rep = c.call(Command.VFIO_USER_VERSION, struct.pack("<HH", 0, 0) + b"{nope\0",
                     check=False)
        assert rep.header.error_reply == errno.EINVAL
        c.version()


def test_device_info_region_info_irq_info(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        info = c.device_info()
        assert info.flags == 3  # RESET | PCI
        assert (info.num_regions, info.num_irqs) == (9, 5)
        sizes = {i: c.region_info(i)[0].size for i in range(9)}
        assert sizes == {0: 0x1000, 1: 0, 2: 0x10000, 3: 0, 4: 0x1000, 5: 0, 6: 0,
                         7: 4096, 8: 0}
        assert c.irq_info(2).count == 2  # MSI-X vectors
        assert c.irq_info(0).count == 1
        with pytest.raises(VfioUserError) as exc:
            c.region_info(9)
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(VfioUserError):
            c.irq_info(7)


def test_sparse_mmap_region_passes_an_fd_that_maps_the_bar(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        short, fds = c.region_info(2)
        assert short.argsz > 32 and fds == []  # too small: told how much room is needed
        assert not short.flags & VFIO_REGION_INFO_FLAG_CAPS
        info, fds = c.region_info(2, argsz=short.argsz)
        assert info.flags & VFIO_REGION_INFO_FLAG_MMAP and info.flags & VFIO_REGION_INFO_FLAG_CAPS
        assert len(fds) == 1 and info.cap_offset == 32
        cap_id, _ver, _next, nr = struct.unpack_from("<HHII", info.caps)
        area = VfioRegionSparseMmapArea.unpack(info.caps[16:32])
        assert (cap_id, nr, area.offset, area.size) == (1, 1, 0, 0x10000)
        mem = mmap.mmap(fds[0], area.size, offset=info.offset + area.offset)
        mem[0x100:0x104] = b"MMAP"
        assert c.region_read(2, 0x100, 4) == b"MMAP"  # same memory through messages
        c.region_write(2, 0x200, b"SOCK")
        assert mem[0x200:0x204] == b"SOCK"
        mem.close()
        os.close(fds[0])


def test_config_space_and_bar_access(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        assert c.config_read32(0) == 0x10F01B36
        whole = c.region_read(CONFIG, 0, 4096)  # QEMU reads it all at once
        assert len(whole) == 4096 and whole[:4] == struct.pack("<I", 0x10F01B36)
        c.config_write32(0x10, 0xFFFFFFFF)
        assert c.config_read32(0x10) == 0xFFFFF000  # 4 KiB 32-bit BAR sizing
        c.region_write(0, 0, struct.pack("<I", 0xCAFEF00D))
        assert c.region_read(0, 0, 4) == struct.pack("<I", 0xCAFEF00D)


@pytest.mark.parametrize("region,offset,count", [
    (CONFIG, 4096, 4), (CONFIG, 4094, 4), (0, 0x1000, 4), (1, 0, 4), (6, 0, 4), (42, 0, 4),
])
def test_bad_region_access_is_einval_and_server_keeps_serving(
        dma_server: ServerThread, region: int, offset: int, count: int) -> None:
    with connect(dma_server) as c:
        with pytest.raises(VfioUserError) as exc:
            c.region_read(region, offset, count)
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(VfioUserError):
            c.region_write(region, offset, bytes(count))
        assert c.config_read32(0) == 0x10F01B36


def test_posted_writes_get_no_reply(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        c.region_write(0, 0, struct.pack("<I", 7), posted=True)
        c.region_write(42, 0, b"\0\0\0\0", posted=True)  # a bad posted write: still silent
        mid = c.send(Command.VFIO_USER_REGION_READ, struct.pack("<QII", 0, 0, 4))
        rep = c.recv_message()  # the very next message must be the read's reply
        assert rep.header.msg_id == mid and rep.payload[16:] == struct.pack("<I", 7)


def test_unknown_command_and_malformed_payload(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        rep = c.call(99, b"", check=False)
        assert rep.header.error_reply == errno.ENOSYS
        rep = c.call(Command.VFIO_USER_REGION_READ, b"\0" * 3, check=False)
        assert rep.header.error_reply == errno.EINVAL
        rep = c.call(Command.VFIO_USER_DEVICE_GET_IRQ_INFO, b"\0" * 5, check=False)
        assert rep.header.error_reply == errno.EINVAL
        # count disagreeing with the data
        rep = c.call(Command.VFIO_USER_REGION_WRITE, struct.pack("<QII", 0, 0, 8) + b"abcd",
                     check=False)
        assert rep.header.error_reply == errno.EINVAL
        assert c.config_read32(0) == 0x10F01B36


def test_oversized_message_is_refused_and_skipped(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        big = 3 << 20
        mid = c.send(Command.VFIO_USER_REGION_WRITE,
                     struct.pack("<QII", 0, 0, big - 32) + bytes(big - 32))
        rep = c.wait_reply(mid)
        assert rep.header.error_reply == errno.E2BIG
        assert c.config_read32(0) == 0x10F01B36


def test_read_larger_than_max_transfer_is_e2big(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        with pytest.raises(VfioUserError) as exc:
            c.region_read(2, 0, (1 << 20) + 4)
        assert exc.value.errno == errno.E2BIG


def test_header_smaller_than_16_drops_connection_then_next_client_works(
        dma_server: ServerThread, events) -> None:  # type: ignore[no-untyped-def]
    c = connect(dma_server)
    c.send(Command.VFIO_USER_REGION_READ, b"", size=8)
    c.sock.settimeout(5)
    assert c.sock.recv(16) == b""  # server closed
    c.close()
    with connect(dma_server) as c2:
        assert c2.config_read32(0) == 0x10F01B36
    assert any(e["event"] == "vfio_user.protocol_error" for e in events.events)


def _program_dma(c: VfioUserClient, addr: int, length: int, cmd: int) -> int:
    c.config_write32(4, 0x6)  # memory space + bus master
    c.region_write(0, 4, struct.pack("<III", addr & 0xFFFFFFFF, addr >> 32, length))
    c.region_write(0, 0x10, struct.pack("<I", cmd))
    return int(struct.unpack("<I", c.region_read(0, 0x14, 4))[0])


def test_dma_through_shared_fd(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        c.dma_map(0x100000, 0x10000, mem_offset=0, share_fd=True)
        c.memory[0:16] = b"shared-memory-ok"
        assert _program_dma(c, 0x100000, 16, DMA_CMD_TO_DEVICE) == 1
        assert c.region_read(2, 0, 16) == b"shared-memory-ok"
        c.region_write(2, 0, b"device->guest!!!")
        assert _program_dma(c, 0x100020, 16, DMA_CMD_FROM_DEVICE) == 1
        assert c.memory[0x20:0x30] == b"device->guest!!!"
        assert c.dma_requests == 0  # no DMA messages were needed


def test_dma_through_messages_when_no_fd(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        c.dma_map(0x200000, 0x20000, mem_offset=0x20000, share_fd=False)
        c.memory[0x20000:0x20010] = b"message-dma-read"
        assert _program_dma(c, 0x200000, 16, DMA_CMD_TO_DEVICE) == 1
        assert c.region_read(2, 0, 16) == b"message-dma-read"
        assert _program_dma(c, 0x200100, 16, DMA_CMD_FROM_DEVICE) == 1
        assert c.memory[0x20100:0x20110] == b"message-dma-read"
        assert c.dma_requests == 2


def test_dma_spanning_fd_and_message_mappings(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        c.dma_map(0x300000, 0x1000, mem_offset=0, share_fd=True)
        c.dma_map(0x301000, 0x1000, mem_offset=0x1000, share_fd=False)
        c.memory[0xFF8:0x1008] = b"ABCDEFGHIJKLMNOP"
        assert _program_dma(c, 0x300FF8, 16, DMA_CMD_TO_DEVICE) == 1
        assert c.region_read(2, 0, 16) == b"ABCDEFGHIJKLMNOP"


def test_dma_to_unmapped_or_unmapped_later_fails_cleanly(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        assert _program_dma(c, 0x900000, 16, DMA_CMD_TO_DEVICE) == 3  # done | error
        c.dma_map(0x100000, 0x1000)
        c.dma_unmap(0x100000, 0x1000)
        assert _program_dma(c, 0x100000, 16, DMA_CMD_TO_DEVICE) == 3
        with pytest.raises(VfioUserError) as exc:  # overlapping map is refused
            c.dma_map(0x100000, 0x1000)
            c.dma_map(0x100800, 0x1000)
        assert exc.value.errno == errno.EEXIST


def test_dma_refused_without_bus_master(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        c.dma_map(0x100000, 0x1000)
        c.config_write32(4, 0x2)
        c.region_write(0, 4, struct.pack("<III", 0x100000, 0, 4))
        c.region_write(0, 0x10, struct.pack("<I", DMA_CMD_TO_DEVICE))
        assert struct.unpack("<I", c.region_read(0, 0x14, 4))[0] == 3


def test_msix_eventfd_trigger_mask_pending_unmask(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        c.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[efd])
        c.set_irqs(2, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)
        assert os.eventfd_read(efd) == 1
        c.set_irqs(2, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, 0, 1)
        c.set_irqs(2, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, data=b"\1")
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)
        pba = c.region_read(4, 0x800, 8)
        assert pba[0] & 1  # pending bit while masked
        c.set_irqs(2, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)
        assert os.eventfd_read(efd) == 1
        assert c.region_read(4, 0x800, 8)[0] & 1 == 0
        with pytest.raises(VfioUserError) as exc:
            c.set_irqs(2, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 1, 5)
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(VfioUserError):  # two data types at once
            c.set_irqs(2, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL
                       | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)
        os.close(efd)


def test_mask_and_unmask_through_eventfds(dma_server: ServerThread) -> None:
    """ACTION_MASK/UNMASK with DATA_EVENTFD (QEMU's KVM INTx resampling path):
    signalling the eventfd masks / unmasks, a pending vector then fires."""
    with connect(dma_server) as c:
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        mask_fd, unmask_fd = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        c.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[efd])
        c.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_MASK, 0, 1,
                   fds=[os.dup(mask_fd)])
        c.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1,
                   fds=[os.dup(unmask_fd)])
        irqs = dma_server.device.dsm.irqs
        os.eventfd_write(mask_fd, 1)
        deadline = time.monotonic() + 5
        while 0 not in irqs.masked[IrqIndex.MSIX] and time.monotonic() < deadline:
            time.sleep(0.01)
        c.set_irqs(2, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)  # masked: pending
        os.eventfd_write(unmask_fd, 1)
        while time.monotonic() < deadline:
            try:
                assert os.eventfd_read(efd) == 1  # delivered on unmask
                break
            except BlockingIOError:
                time.sleep(0.01)
        else:
            pytest.fail("the unmask eventfd did not deliver the pending vector")
        # dropping the unmask eventfd (no fds) stops its watcher
        c.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1)
        assert ("unmask", IrqIndex.MSIX, 0) not in irqs.action_fds
        for fd in (efd, mask_fd, unmask_fd):
            os.close(fd)


def test_device_raises_msix_after_dma(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        c.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, fds=[efd])
        c.dma_map(0x100000, 0x1000)
        _program_dma(c, 0x100000, 8, DMA_CMD_TO_DEVICE)
        assert os.eventfd_read(efd) == 1
        os.close(efd)


def test_write_multi(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        entries = [struct.pack("<QII", 0x0, 0, 4) + struct.pack("<I", 0x11111111) + bytes(4),
                   struct.pack("<QII", 0x10, 2, 8) + b"multi!!!"]
        payload = struct.pack("<Q", 2) + b"".join(entries)
        c.send(Command.VFIO_USER_REGION_WRITE_MULTI, payload, flags=VFIO_USER_NO_REPLY)
        assert c.region_read(0, 0, 4) == struct.pack("<I", 0x11111111)
        assert c.region_read(2, 0x10, 8) == b"multi!!!"
        rep = c.call(Command.VFIO_USER_REGION_WRITE_MULTI, struct.pack("<Q", 3) + entries[0],
                     check=False)
        assert rep.header.error_reply == errno.EINVAL


def test_device_reset_restores_registers(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        c.config_write32(4, 0x6)
        c.config_write32(0x10, 0xFE000000)
        c.region_write(0, 0, struct.pack("<I", 5))
        c.reset()
        assert c.config_read32(4) & 0xFFFF == 0
        assert c.config_read32(0x10) == 0
        assert c.region_read(0, 0, 4) == bytes(4)


def test_disconnect_resets_device_and_socket_accepts_next_client(
        dma_server: ServerThread, events) -> None:  # type: ignore[no-untyped-def]
    c = connect(dma_server)
    c.config_write32(4, 0x6)
    c.region_write(0, 0, struct.pack("<I", 9))
    c.close()
    deadline = time.time() + 5
    while not any(e["event"] == "vfio_user.disconnect" for e in events.events):
        assert time.time() < deadline
        time.sleep(0.01)
    with connect(dma_server) as c2:
        assert c2.config_read32(4) & 0xFFFF == 0
        assert c2.region_read(0, 0, 4) == bytes(4)


def test_second_concurrent_client_is_rejected(dma_server: ServerThread) -> None:
    with connect(dma_server) as c:
        other = socket.socket(socket.AF_UNIX)
        other.connect(dma_server.paths[0])
        other.settimeout(5)
        assert other.recv(1) == b""
        other.close()
        assert c.config_read32(0) == 0x10F01B36


def test_socket_is_0600(dma_server: ServerThread) -> None:
    st = os.stat(dma_server.paths[0])
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_existing_regular_file_is_not_overwritten(sock_dir: Path) -> None:
    victim = sock_dir / "precious"
    victim.write_text("keep me")
    with pytest.raises(FileExistsError):
        ServerThread([str(victim)], "dma-test").start()
    assert victim.read_text() == "keep me"


def test_live_socket_is_not_stolen_but_stale_one_is_replaced(
        dma_server: ServerThread, sock_dir: Path) -> None:
    with pytest.raises(FileExistsError):
        prepare_socket_path(dma_server.paths[0])
    stale = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    prepare_socket_path(str(stale))
    assert not stale.exists()


def test_several_devices_in_one_process(sock_dir: Path) -> None:
    paths = [str(sock_dir / "a.sock"), str(sock_dir / "b.sock")]
    srv = ServerThread(paths, "dma-test").start()
    try:
        with VfioUserClient(paths[0]) as a, VfioUserClient(paths[1]) as b:
            a.version()
            b.version()
            a.region_write(0, 0, struct.pack("<I", 1))
            b.region_write(0, 0, struct.pack("<I", 2))
            assert a.region_read(0, 0, 4) == struct.pack("<I", 1)
            assert b.region_read(0, 0, 4) == struct.pack("<I", 2)
    finally:
        srv.stop()
