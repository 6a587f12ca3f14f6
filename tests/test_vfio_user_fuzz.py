"""Random and malformed vfio-user messages never break the server."""

from __future__ import annotations

import gc
import os
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerThread
from vfiouser_tdisp.vfio_user.client import VfioUserClient
from vfiouser_tdisp.vfio_user.messages import VFIO_USER_NO_REPLY, VFIO_USER_REPLY, Command

commands = st.sampled_from([int(c) for c in Command] + [0, 16, 200, 0xFFFF])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=commands, payload=st.binary(max_size=96), posted=st.booleans())
def test_random_requests_get_a_reply_or_silence_and_server_survives(
        dma_server: ServerThread, command: int, payload: bytes, posted: bool) -> None:
    with VfioUserClient(dma_server.paths[0], timeout=5) as c:
        c.version()
        if command == Command.VFIO_USER_DEVICE_RESET:
            payload = b""
        flags = VFIO_USER_NO_REPLY if posted else 0
        mid = c.send(command, payload, flags=flags)
        if not posted:
            rep = c.wait_reply(mid)
            assert rep.header.flags & 0xF == VFIO_USER_REPLY
            for fd in rep.fds:
                os.close(fd)
        # The connection still answers correctly afterwards.
        assert c.config_read32(0) == 0x10F01B36
        c.config_write32(4, 0)  # leave the device in a known state


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 5000), count=st.integers(0, 5000), region=st.integers(0, 12))
def test_random_region_reads_are_bounded(dma_server: ServerThread, offset: int, count: int,
                                         region: int) -> None:
    with VfioUserClient(dma_server.paths[0], timeout=5) as c:
        c.version()
        rep = c.call(Command.VFIO_USER_REGION_READ, struct.pack("<QII", offset, region, count),
                     check=False)
        size = {0: 0x1000, 2: 0x10000, 4: 0x1000, 7: 4096}.get(region, 0)
        ok = size and count and offset + count <= size
        if ok:
            assert len(rep.payload) == 16 + count
        else:
            assert rep.header.error_reply != 0 or count == 0


def _open_fds() -> set[tuple[str, str]]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass
    return out


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=commands, payload=st.binary(max_size=64), posted=st.booleans(),
       kinds=st.lists(st.sampled_from(["eventfd", "memfd", "pipe"]), max_size=3))
def test_random_requests_carrying_fds_leave_no_fd_behind(
        dma_server: ServerThread, command: int, payload: bytes, posted: bool,
        kinds: list[str]) -> None:
    gc.collect()
    before = _open_fds()
    fds: list[int] = []
    for kind in kinds:
        if kind == "eventfd":
            fds.append(os.eventfd(0, os.EFD_NONBLOCK))
        elif kind == "memfd":
            fds.append(os.memfd_create("fuzz"))
            os.ftruncate(fds[-1], 0x2000)
        else:
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
    with VfioUserClient(dma_server.paths[0], timeout=5) as c:
        c.version()
        if command == Command.VFIO_USER_DEVICE_RESET:
            payload = b""
        mid = c.send(command, payload, flags=VFIO_USER_NO_REPLY if posted else 0,
                     fds=fds or None)
        for fd in fds:
            os.close(fd)
        if not posted:
            for fd in c.wait_reply(mid).fds:
                os.close(fd)
        assert c.config_read32(0) == 0x10F01B36
    assert dma_server.running is not None
    fs = dma_server.running.servers[0]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
            (fs.connection is not None and fs.connection.thread.is_alive())
            or not _open_fds() <= before):
        time.sleep(0.01)
    assert _open_fds() <= before
