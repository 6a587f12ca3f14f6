"""The spdm-emu TCP listener with several peers at once, on real sockets:
idle and slowloris peers never block the others, and are dropped after the
idle timeout; requests of concurrent peers share one mailbox."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.doe.emu_socket import (
    SOCKET_SPDM_COMMAND_NORMAL,
    SOCKET_TRANSPORT_TYPE_PCI_DOE,
    SpdmEmuClient,
    SpdmEmuServer,
    build_frame,
)
from vfiouser_tdisp.doe.protocols import build_object

IDLE = 1.5


@pytest.fixture
def emu() -> Iterator[SpdmEmuServer]:
    dev = Device(get_profile("dma-test"))
    dev.doe.register(1, 1, lambda p: p[::-1])
    srv = SpdmEmuServer(dev.doe, dev.lock, "127.0.0.1", 0, idle_timeout=IDLE, max_clients=4)
    srv.start()
    yield srv
    srv.close()


def echo(port: int, payload: bytes) -> tuple[bytes, float]:
    t0 = time.monotonic()
    c = SpdmEmuClient("127.0.0.1", port, timeout=5)
    try:
        return c.doe(build_object(1, 1, payload))[8:], time.monotonic() - t0
    finally:
        c.close()


def closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed ``sock`` (EOF or reset)."""
    t0 = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def test_idle_peer_does_not_block_others_and_is_dropped(emu: SpdmEmuServer) -> None:
    idle = socket.create_connection(("127.0.0.1", emu.port))
    try:
        time.sleep(0.1)
        assert echo(emu.port, b"abcd") == (b"dcba", pytest.approx(0, abs=1.0))
        took = closed_by_server(idle, 10)
        assert IDLE * 0.5 < took < IDLE + 3  # dropped after about the idle timeout
    finally:
        idle.close()


def test_slowloris_peer_is_dropped_while_others_are_served(emu: SpdmEmuServer) -> None:
    slow = socket.create_connection(("127.0.0.1", emu.port))
    frame = build_frame(SOCKET_SPDM_COMMAND_NORMAL, SOCKET_TRANSPORT_TYPE_PCI_DOE,
                        build_object(1, 1, b"wxyz"))
    stop = threading.Event()
    sent = []

    def trickle() -> None:  # one byte every 0.2 s: never idle, never done in time
        for b in frame:
            if stop.wait(0.2):
                return
            try:
                slow.send(bytes([b]))
            except OSError:
                return
            sent.append(b)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        for _ in range(3):
            got, took = echo(emu.port, b"1234")
            assert got == b"4321" and took < 1.0
        took = closed_by_server(slow, 15)
        assert took < IDLE + 3
        assert len(sent) < len(frame)  # cut off before it finished its frame
    finally:
        stop.set()
        t.join()
        slow.close()


def test_concurrent_peers_are_all_answered_correctly(emu: SpdmEmuServer) -> None:
    results: dict[int, list[bytes]] = {}

    def peer(i: int) -> None:
        c = SpdmEmuClient("127.0.0.1", emu.port, timeout=10)
        try:
            results[i] = [c.doe(build_object(1, 1, bytes([i, n, 0, 0])))[8:]
                          for n in range(50)]
        finally:
            c.close()

    threads = [threading.Thread(target=peer, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert {i: r for i, r in results.items()} == {
        i: [bytes([0, 0, n, i]) for n in range(50)] for i in range(4)}


def test_peers_beyond_max_clients_are_closed_at_accept(emu: SpdmEmuServer) -> None:
    held = [socket.create_connection(("127.0.0.1", emu.port)) for _ in range(4)]
    try:
        deadline = time.monotonic() + 5
        while emu.client_count < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = socket.create_connection(("127.0.0.1", emu.port))
        assert closed_by_server(extra, 5) < 1.0
        extra.close()
    finally:
        for h in held:
            h.close()
    # the peers' threads see the closes asynchronously: wait for the slots to free
    deadline = time.monotonic() + 5
    while emu.client_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emu.client_count == 0
    assert echo(emu.port, b"okok")[0] == b"koko"  # slots freed


def test_close_with_connected_peers_returns_promptly() -> None:
    dev = Device(get_profile("dma-test"))
    srv = SpdmEmuServer(dev.doe, dev.lock, "127.0.0.1", 0)  # default 60 s idle timeout
    srv.start()
    peers = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    time.sleep(0.1)
    t0 = time.monotonic()
    srv.close()
    assert time.monotonic() - t0 < 2
    for p in peers:
        assert closed_by_server(p, 2) < 2
        p.close()
