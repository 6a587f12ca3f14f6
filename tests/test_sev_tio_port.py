"""The PSP behind the firmware port (docs/firmware-port.md): PSP host commands in the HOST
window (FID = command id, ARG0 = the command buffer's guest-physical address, RES0 = the
SEV status), every buffer reached by the port's DMA over a real vfio-user socket; and
`serve --platform sev-tio`.  Register offsets as the port ABI gives them."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.platform_support import serve_platform
from vfiouser_tdisp.device.backend import FunctionBackend
from vfiouser_tdisp.device.firmware_port import build_firmware_port
from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.firmware import GuestMemoryError
from vfiouser_tdisp.tsm.platform import in_process_device
from vfiouser_tdisp.tsm.sev_tio.abi import SevCmd, SevRet, TioStatus
from vfiouser_tdisp.tsm.sev_tio.host import SevTioHost
from vfiouser_tdisp.tsm.sev_tio.psp import Psp
from vfiouser_tdisp.vfio_user.client import VfioUserClient
from vfiouser_tdisp.vfio_user.server import FunctionServer
from vfiouser_tdisp.wire import Struct

HOST = 0x100
FID, DOORBELL, STATUS, NRES, ERROR, ARGS, RES = 0x00, 0x08, 0x0C, 0x14, 0x18, 0x20, 0xA0
DONE = 2
IOVA = 0x4000_0000
SIZE = 8 << 20


def rd32(c: VfioUserClient, off: int) -> int:
    return int(struct.unpack("<I", c.region_read(0, off, 4))[0])


def rd64(c: VfioUserClient, off: int) -> int:
    return int(struct.unpack("<Q", c.region_read(0, off, 8))[0])


def ring(c: VfioUserClient, fid: int, arg0: int) -> int:
    c.region_write(0, HOST + ARGS, struct.pack("<Q", arg0), posted=True)
    c.region_write(0, HOST + FID, struct.pack("<Q", fid), posted=True)
    c.region_write(0, HOST + DOORBELL, struct.pack("<I", 1), posted=True)
    assert (rd32(c, HOST + STATUS), rd32(c, HOST + ERROR), rd32(c, HOST + NRES)) == (DONE, 0, 1)
    return rd64(c, HOST + RES)


class ClientMemory:
    """The guest's RAM as the vfio-user client (QEMU) shares it: the port reaches it by
    DMA, the host driver writes it directly."""

    def __init__(self, c: VfioUserClient) -> None:
        self.c, self._next = c, IOVA

    def _off(self, addr: int, size: int) -> int:
        if addr < IOVA or addr + size > IOVA + SIZE:
            raise GuestMemoryError(f"{addr:#x}")
        return addr - IOVA

    def read(self, addr: int, size: int) -> bytes:
        off = self._off(addr, size)
        return bytes(self.c.memory[off:off + size])

    def write(self, addr: int, data: bytes) -> None:
        off = self._off(addr, len(data))
        self.c.memory[off:off + len(data)] = data

    def alloc(self, size: int = 0x1000, align: int = 0x1000) -> int:
        addr = (self._next + align - 1) & ~(align - 1)
        self._off(addr, size)
        self._next = addr + size
        return addr


class PortHost(SevTioHost):
    """The ccp host sequence issuing every PSP command through the port's HOST window."""

    def __init__(self, c: VfioUserClient, psp: Psp, transport: object) -> None:
        super().__init__(psp, transport, ClientMemory(c))  # type: ignore[arg-type]
        self.c = c

    def call(self, cmd: SevCmd, buf: Struct) -> SevRet:
        self.mem.write(self.cmdbuf, buf.pack())
        return SevRet(ring(self.c, cmd, self.cmdbuf))


@pytest.fixture
def port(sock_dir: Path) -> Iterator[tuple[VfioUserClient, Psp]]:
    psp = Psp()
    fn, _ = build_firmware_port(psp)
    srv = FunctionServer(FunctionBackend(fn), str(sock_dir / "psp.sock"))
    srv.start()
    c = VfioUserClient(str(sock_dir / "psp.sock"), memory_size=SIZE)
    c.version()
    c.config_write32(4, 0x6)            # memory space + bus master
    c.dma_map(IOVA, SIZE, mem_offset=0)
    try:
        yield c, psp
    finally:
        c.close()
        srv.close()


def test_header_and_tio_status_through_the_port(port: tuple[VfioUserClient, Psp]) -> None:
    c, _ = port
    assert (rd32(c, 0x008), rd32(c, 0x00C)) == (0x54564553, 0x00010000)   # "SEVT" 1.0
    cmd, page = IOVA, IOVA + 0x1000
    c.memory[0:16] = struct.pack("<IIQ", 0x10, 0, page)
    assert ring(c, SevCmd.TIO_STATUS, cmd) == 0
    st = TioStatus.unpack(bytes(c.memory[0x1000:0x1040]))
    assert (st.length, st.flags) == (0x40, 0b01)
    assert ring(c, 0xD9, cmd) == SevRet.INVALID_COMMAND
    assert ring(c, SevCmd.TIO_STATUS, 0x10) == SevRet.INVALID_ADDRESS   # not mapped


def test_connect_and_bind_through_the_port(port: tuple[VfioUserClient, Psp],
                                           tmp_path: Path) -> None:
    """The whole DEV_CONNECT / TDI_BIND / UNBIND / DISCONNECT sequence with every command
    rung on the port and every buffer read and written by the port's DMA."""
    c, psp = port
    transport, _dev = in_process_device(identity_dir=str(tmp_path))
    host = PortHost(c, psp, transport)
    host.init()
    host.create_guest()
    host.assign(0x0100, 0)
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    try:
        host.connect()
        tdi = host.bind(0x0100)
        host.run(0x0100)
        assert host.tdi_status(0x0100).state == 4          # RUN
        host.unbind(0x0100)
        host.disconnect()
    finally:
        unsubscribe()
    assert tdi.evidence and host.objects_sent > 25
    statuses = [e["status"] for e in rec.of("psp.command")]
    assert len(statuses) > host.objects_sent and set(statuses) == {"SUCCESS", "SPDM_REQUEST"}


def test_serve_platform_sev_tio_serves_the_psp(sock_dir: Path) -> None:
    """`serve --platform sev-tio`: the port on PATH.fwport with the PSP behind it."""
    with serve_platform(sock_dir, "sev-tio") as path:
        with VfioUserClient(path + ".fwport", memory_size=0x2000) as c:
            c.version()
            c.config_write32(4, 0x6)
            c.dma_map(IOVA, 0x2000, mem_offset=0)
            assert rd32(c, 0x008) == 0x54564553
            c.memory[0:16] = struct.pack("<IIQ", 0x10, 0, IOVA + 0x1000)
            assert ring(c, SevCmd.TIO_STATUS, IOVA) == 0
            assert struct.unpack_from("<II", c.memory, 0x1000) == (0x40, 0b01)
            c.memory[0:16] = struct.pack("<I12x", 0x10)
            assert ring(c, SevCmd.TIO_INIT, IOVA) == 0
            assert ring(c, SevCmd.TIO_INIT, IOVA) == SevRet.INVALID_PLATFORM_STATE
