"""The DOE mailbox through its two transports: config registers over the
vfio-user socket (as a guest drives them) and the DMTF spdm-emu TCP socket,
with every object captured as pcap LINKTYPE_PCI_DOE (292)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiouser_tdisp.doe.capture import LINKTYPE_PCI_DOE, read_pcap
from vfiouser_tdisp.doe.driver import DoeDriver, DoeTransferError
from vfiouser_tdisp.doe.emu_socket import (
    SOCKET_SPDM_COMMAND_NORMAL,
    SOCKET_SPDM_COMMAND_SHUTDOWN,
    SOCKET_SPDM_COMMAND_TEST,
    SOCKET_SPDM_COMMAND_UNKNOWN,
    SOCKET_TRANSPORT_TYPE_MCTP,
    SpdmEmuClient,
)
from vfiouser_tdisp.doe.protocols import DoeHeader, build_object
from vfiouser_tdisp.server import RunningDevices, start_devices
from vfiouser_tdisp.vfio_user.client import VfioUserClient

DOE_OFFSET = 0x100


@pytest.fixture
def served(sock_dir: Path) -> Iterator[tuple[RunningDevices, Path]]:
    pcap = sock_dir / "doe.pcap"
    running = start_devices([str(sock_dir / "d.sock")], "dma-test", spdm_port=0,
                            pcap=str(pcap))
    # An echo protocol of type 1 so that the dispatcher has something to route.
    running.devices[0].doe.register(1, 1, lambda payload: payload[::-1])
    yield running, pcap
    running.close()


def test_discovery_and_exchange_through_config_registers(served, sock_dir) -> None:  # type: ignore[no-untyped-def]
    running, _pcap = served
    with VfioUserClient(str(sock_dir / "d.sock")) as c:
        c.version()
        drv = DoeDriver(c.config_read32, c.config_write32, DOE_OFFSET)
        drv.abort()
        assert drv.discover() == [(1, 0), (1, 1), (1, 2)]
        assert drv.call(1, 1, b"abcdefgh") == b"hgfedcba"
        with pytest.raises(DoeTransferError):  # unsupported type: ERROR bit
            drv.call(1, 0x77, b"\0" * 4)
        assert drv.status() & 0x4 == 0  # the driver aborted: error cleared
        assert drv.call(1, 1, b"1234") == b"4321"  # and the mailbox works again


def test_spdm_emu_socket(served) -> None:  # type: ignore[no-untyped-def]
    running, _pcap = served
    emu = running.spdm_servers[0]
    client = SpdmEmuClient("127.0.0.1", emu.port)
    try:
        cmd, _tr, body = client.call(SOCKET_SPDM_COMMAND_TEST, b"Client Hello!\0")
        assert cmd == SOCKET_SPDM_COMMAND_TEST and body.startswith(b"Server Hello!")
        rsp = client.doe(build_object(1, 0, struct.pack("<BBH", 0, 2, 0)))  # discovery
        hdr = DoeHeader.unpack(rsp[:8])
        assert (hdr.vendor_id, hdr.data_object_type, hdr.length_dw) == (1, 0, 3)
        assert rsp[8:] == struct.pack("<HBB", 1, 0, 1)
        assert client.doe(build_object(1, 1, b"wxyz"))[8:] == b"zyxw"
        assert client.doe(build_object(1, 9, b"wxyz")) == b""  # unsupported: empty reply
        assert client.doe(b"\x01\x00") == b""  # not even a DOE header
        cmd, _tr, _b = client.call(0x1234)
        assert cmd == SOCKET_SPDM_COMMAND_UNKNOWN
        assert client.call(SOCKET_SPDM_COMMAND_NORMAL, b"",
                           transport=SOCKET_TRANSPORT_TYPE_MCTP)[2] == b""
        assert client.call(SOCKET_SPDM_COMMAND_SHUTDOWN)[0] == SOCKET_SPDM_COMMAND_SHUTDOWN
        assert client.sock.recv(1) == b""  # server closed after SHUTDOWN
    finally:
        client.close()
    again = SpdmEmuClient("127.0.0.1", emu.port)  # and accepts the next client
    try:
        assert again.doe(build_object(1, 1, b"1234"))[8:] == b"4321"
    finally:
        again.close()


def test_pcap_holds_both_directions_of_both_transports(served, sock_dir) -> None:  # type: ignore[no-untyped-def]
    running, pcap = served
    with VfioUserClient(str(sock_dir / "d.sock")) as c:
        c.version()
        DoeDriver(c.config_read32, c.config_write32, DOE_OFFSET).call(1, 1, b"viaconfg")
    client = SpdmEmuClient("127.0.0.1", running.spdm_servers[0].port)
    client.doe(build_object(1, 1, b"viasockt"))
    client.close()
    linktype, packets = read_pcap(pcap.read_bytes())
    assert linktype == LINKTYPE_PCI_DOE
    payloads = [p[8:] for p in packets]
    assert payloads == [b"viaconfg", b"gfnocaiv", b"viasockt", b"tkcosaiv"]
    for p in packets:
        assert DoeHeader.unpack(p[:8]).length_dw * 4 == len(p)
