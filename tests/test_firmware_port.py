"""The firmware port on bytes, over a real vfio-user socket (docs/firmware-port.md).

The firmware behind the port here is a small but real Firmware: it echoes its
arguments, copies guest memory and answers unknown FIDs with SMCCC
NOT_SUPPORTED; what is under test is the port (registers, doorbell, DMA,
errors), not a platform.  Register offsets and values are written out as the
ABI document gives them, not taken from the module under test.
"""

from __future__ import annotations

import io
import struct
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.platform_support import serve_platform
from vfiouser_tdisp.device.backend import FunctionBackend
from vfiouser_tdisp.device.firmware_port import build_firmware_port
from vfiouser_tdisp.firmware import CallClass, FirmwareCall, GuestMemory
from vfiouser_tdisp.run.qemu import main_qemu_args
from vfiouser_tdisp.tsm.cca import Rmm
from vfiouser_tdisp.vfio_user.client import VfioUserClient
from vfiouser_tdisp.vfio_user.messages import Command
from vfiouser_tdisp.vfio_user.server import FunctionServer

CONFIG = 7
HOST = 0x100   # window of CallClass.HOST
GUEST = 0x300  # window of CallClass.GUEST
FID, DOORBELL, STATUS, SEQ, NRES, ERROR, ARGS, RES = 0x00, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x20, 0xA0
BUSY, DONE, ERR, OVERRUN = 1, 2, 4, 8
SMCCC_NOT_SUPPORTED = 0xFFFF_FFFF_FFFF_FFFF

FID_ECHO = 0xC400_0001      # results: (0, cls, fid, *args)
FID_COPY = 0xC400_0002      # copy x2 bytes from x0 to x1; result (0, crc)
FID_RAISE = 0xC400_0003     # emulator bug
FID_BAD_RESULT = 0xC400_0004
FID_REENTER = 0xC400_0005   # rings the doorbell of its own window while running


class EchoFirmware:
    abi_id = 0x20414343  # "CCA "
    abi_version = 0x0002_0000

    def __init__(self) -> None:
        self.calls: list[FirmwareCall] = []
        self.port = None  # set by the test that re-enters

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        self.calls.append(call)
        if call.fid == FID_ECHO:
            return (0, int(call.cls), call.fid, *call.args[:13])
        if call.fid == FID_COPY:
            src, dst, n = call.args[:3]
            data = mem.read(src, n)
            mem.write(dst, data[::-1])
            return (0, sum(data) & 0xFFFF)
        if call.fid == FID_RAISE:
            raise ZeroDivisionError("emulator bug")
        if call.fid == FID_BAD_RESULT:
            return (1 << 64,)
        if call.fid == FID_REENTER:
            assert self.port is not None
            self.port._write(HOST + DOORBELL, struct.pack("<I", 1))
            return (0, 0x1234)
        return (SMCCC_NOT_SUPPORTED,)


@pytest.fixture
def port(sock_dir: Path) -> Iterator[tuple[VfioUserClient, EchoFirmware, object]]:
    fw = EchoFirmware()
    fn, personality = build_firmware_port(fw)
    srv = FunctionServer(FunctionBackend(fn), str(sock_dir / "fw.sock"))
    srv.start()
    c = VfioUserClient(str(sock_dir / "fw.sock"))
    c.version()
    c.config_write32(4, 0x6)  # memory space + bus master
    try:
        yield c, fw, personality
    finally:
        c.close()
        srv.close()


def rd32(c: VfioUserClient, off: int) -> int:
    return int(struct.unpack("<I", c.region_read(0, off, 4))[0])


def rd64(c: VfioUserClient, off: int) -> int:
    return int(struct.unpack("<Q", c.region_read(0, off, 8))[0])


def wr64(c: VfioUserClient, off: int, value: int) -> None:
    c.region_write(0, off, struct.pack("<Q", value), posted=True)


def call(c: VfioUserClient, win: int, fid: int, *args: int) -> tuple[int, int]:
    """Write args, FID, ring (posted, as QEMU does), then read STATUS and ERROR."""
    for i, a in enumerate(args):
        wr64(c, win + ARGS + 8 * i, a)
    wr64(c, win + FID, fid)
    c.region_write(0, win + DOORBELL, struct.pack("<I", 1), posted=True)
    return rd32(c, win + STATUS), rd32(c, win + ERROR)


def test_identity_in_config_space(port) -> None:  # type: ignore[no-untyped-def]
    c, _fw, _p = port
    ids = c.region_read(CONFIG, 0, 0x40)
    vendor, device = struct.unpack_from("<HH", ids, 0)
    assert (vendor, device) == (0x1AF4, 0x10FC)  # QEMU pci-ids.rst experimental range
    assert ids[8] == 1 and ids[9:12] == bytes([0, 0, 0xFF])  # rev 1, class FF0000
    assert struct.unpack_from("<HH", ids, 0x2C) == (0x1AF4, 0x10FC)
    # BAR0: 4 KiB 32-bit memory (sizing: all ones reads back the size mask)
    c.config_write32(0x10, 0xFFFFFFFF)
    assert rd32_cfg(c, 0x10) == 0xFFFFF000
    # PCIe capability present, Device Capabilities TEE-IO (bit 30) clear:
    cap = ids[0x34]
    seen = []
    while cap:
        hdr = c.region_read(CONFIG, cap, 8)
        seen.append(hdr[0])
        if hdr[0] == 0x10:
            assert not struct.unpack_from("<I", hdr, 4)[0] & (1 << 30)
        cap = hdr[1]
    assert 0x10 in seen and 0x01 in seen


def rd32_cfg(c: VfioUserClient, off: int) -> int:
    return int(struct.unpack("<I", c.region_read(CONFIG, off, 4))[0])


def test_header_registers(port) -> None:  # type: ignore[no-untyped-def]
    c, _fw, _p = port
    head = c.region_read(0, 0, 0x24)
    assert head[:4] == b"VTFP"
    assert struct.unpack("<8I", head[4:]) == (0x00010000, 0x20414343, 0x00020000, 2, 0x100,
                                               0x200, 16, 16)
    c.region_write(0, 0, b"XXXX")  # read-only
    assert c.region_read(0, 0, 4) == b"VTFP"
    assert c.region_read(0, 0x500, 16) == bytes(16)  # past the windows
    assert c.region_read(0, 0x24, 4) == bytes(4)     # reserved header space


def test_call_through_doorbell_host_and_guest(port) -> None:  # type: ignore[no-untyped-def]
    c, fw, _p = port
    args = [0x1111_0000_0000_0000 + i for i in range(11)]
    assert call(c, HOST, FID_ECHO, *args) == (DONE, 0)
    assert rd32(c, HOST + NRES) == 16 and rd32(c, HOST + SEQ) == 1
    res = struct.unpack("<16Q", c.region_read(0, HOST + RES, 128))
    assert res[:3] == (0, 0, FID_ECHO) and list(res[3:14]) == args
    assert fw.calls[-1] == FirmwareCall(CallClass.HOST, FID_ECHO, tuple(args) + (0,) * 5)
    # the guest window is separate: its own class, its own registers and SEQ
    assert call(c, GUEST, FID_ECHO, 7) == (DONE, 0)
    assert rd64(c, GUEST + RES + 8) == 1 and rd64(c, GUEST + RES + 24) == 7
    assert rd32(c, GUEST + SEQ) == 1 and rd32(c, HOST + SEQ) == 1
    assert rd64(c, HOST + ARGS) == args[0]  # untouched by the guest call
    # 32-bit halves, low first, as lo_hi_writeq does
    c.region_write(0, HOST + ARGS, struct.pack("<I", 0xDDCCBBAA), posted=True)
    c.region_write(0, HOST + ARGS + 4, struct.pack("<I", 0x44332211), posted=True)
    assert call(c, HOST, FID_ECHO) == (DONE, 0)
    assert rd64(c, HOST + RES + 24) == 0x44332211_DDCCBBAA
    assert rd32(c, HOST + DOORBELL) == 0  # write-only


def test_results_are_read_only_and_fewer_results_read_zero(port) -> None:  # type: ignore[no-untyped-def]
    c, _fw, _p = port
    call(c, HOST, FID_ECHO, *range(1, 12))
    c.region_write(0, HOST + RES, struct.pack("<Q", 99))
    c.region_write(0, HOST + STATUS, struct.pack("<I", 0))
    assert rd64(c, HOST + RES + 16) == FID_ECHO and rd32(c, HOST + STATUS) == DONE
    assert call(c, HOST, 0xC4FF_FFFF) == (DONE, 0)  # unknown FID: the firmware's own status
    assert rd32(c, HOST + NRES) == 1
    assert rd64(c, HOST + RES) == SMCCC_NOT_SUPPORTED
    assert c.region_read(0, HOST + RES + 8, 120) == bytes(120)


def test_firmware_dma_reads_and_writes_guest_memory(port) -> None:  # type: ignore[no-untyped-def]
    c, _fw, _p = port
    c.dma_map(0x4000_0000, 0x2000, mem_offset=0)                      # shared memfd
    c.dma_map(0x4000_2000, 0x1000, mem_offset=0x2000, share_fd=False)  # DMA_READ/WRITE messages
    c.memory[0x1FF0:0x2010] = bytes(range(32))
    # source spans the fd mapping and the message mapping; destination is message-only
    assert call(c, HOST, FID_COPY, 0x4000_1FF0, 0x4000_2100, 32) == (DONE, 0)
    assert c.memory[0x2100:0x2120] == bytes(range(32))[::-1]
    assert rd64(c, HOST + RES + 8) == sum(range(32))
    assert c.dma_requests >= 2


def test_dma_errors_give_error_status(port) -> None:  # type: ignore[no-untyped-def]
    c, fw, _p = port
    c.dma_map(0x4000_0000, 0x1000)
    # unmapped source
    assert call(c, HOST, FID_COPY, 0x9000_0000, 0x4000_0000, 16) == (DONE | ERR, 1)
    assert rd32(c, HOST + NRES) == 0 and rd64(c, HOST + RES) == 0
    # read-only mapping refused for the write
    c.dma_map(0x5000_0000, 0x1000, mem_offset=0x1000, flags=1)  # READ only
    assert call(c, HOST, FID_COPY, 0x4000_0000, 0x5000_0000, 16) == (DONE | ERR, 1)
    # bus mastering off: no DMA at all
    c.config_write32(4, 0x2)
    assert call(c, HOST, FID_COPY, 0x4000_0000, 0x4000_0100, 16) == (DONE | ERR, 1)
    c.config_write32(4, 0x6)
    assert call(c, HOST, FID_COPY, 0x4000_0000, 0x4000_0100, 16) == (DONE, 0)
    assert len(fw.calls) == 4


def test_bad_doorbell_firmware_faults_and_no_firmware(port, sock_dir: Path) -> None:  # type: ignore[no-untyped-def]
    c, fw, _p = port
    wr64(c, HOST + FID, FID_ECHO)
    c.region_write(0, HOST + DOORBELL, struct.pack("<I", 2), posted=True)
    assert (rd32(c, HOST + STATUS), rd32(c, HOST + ERROR)) == (DONE | ERR, 4)
    assert fw.calls == []
    assert call(c, HOST, FID_RAISE) == (DONE | ERR, 2)
    assert call(c, HOST, FID_BAD_RESULT) == (DONE | ERR, 2)
    assert call(c, HOST, FID_ECHO, 5) == (DONE, 0)  # and the port keeps serving
    assert rd32(c, HOST + SEQ) == 4
    fn, _port = build_firmware_port(None)
    srv = FunctionServer(FunctionBackend(fn), str(sock_dir / "none.sock"))
    srv.start()
    try:
        with VfioUserClient(str(sock_dir / "none.sock")) as c2:
            c2.version()
            assert struct.unpack("<II", c2.region_read(0, 8, 8)) == (0, 0)
            assert call(c2, GUEST, FID_ECHO) == (DONE | ERR, 3)
    finally:
        srv.close()


def test_doorbell_while_busy_starts_nothing(port) -> None:  # type: ignore[no-untyped-def]
    c, fw, personality = port
    fw.port = personality
    assert call(c, HOST, FID_REENTER, 42) == (DONE | OVERRUN, 0)
    assert len(fw.calls) == 1                # the second doorbell ran no call
    assert rd64(c, HOST + RES + 8) == 0x1234  # the running call's results are intact
    assert rd32(c, HOST + SEQ) == 1
    assert call(c, HOST, FID_ECHO, 1) == (DONE, 0)  # the next call clears OVERRUN


def test_arguments_latched_while_busy(port) -> None:  # type: ignore[no-untyped-def]
    c, fw, personality = port

    class Writer(EchoFirmware):
        def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
            personality._write(HOST + ARGS, struct.pack("<Q", 0xBAD))
            return super().call(call, mem)

    personality.firmware = Writer()
    assert call(c, HOST, FID_ECHO, 0x600D) == (DONE, 0)
    assert rd64(c, HOST + RES + 24) == 0x600D and rd64(c, HOST + ARGS) == 0x600D


def test_reset_clears_windows(port) -> None:  # type: ignore[no-untyped-def]
    c, _fw, _p = port
    call(c, HOST, FID_ECHO, 9)
    c.call(Command.VFIO_USER_DEVICE_RESET)
    assert c.region_read(0, HOST, 0x120) == bytes(0x120)
    assert c.region_read(0, 0, 4) == b"VTFP"


def test_serve_platform_cca_serves_the_port(sock_dir: Path) -> None:
    """`serve --platform cca`: the DSM on PATH, the port with the RMM on PATH.fwport."""
    with serve_platform(sock_dir, "cca") as path:
        with VfioUserClient(path + ".fwport") as c:
            c.version()
            assert c.region_read(0, 0, 4) == b"VTFP"
            assert rd32(c, 0x08) == Rmm.abi_id and rd32(c, 0x0C) == Rmm.abi_version
            # RMI_VERSION (0xC4000150) reaches the RMM and its answer comes back
            assert call(c, HOST, 0xC4000150, 0x10001) == (DONE, 0)
            assert rd64(c, HOST + RES) == 0 and rd32(c, HOST + NRES) == 3
            # an RSI call from the guest window: RSI_VERSION (0xC4000190)
            assert call(c, GUEST, 0xC4000190, 0x10001) == (DONE, 0)
        with VfioUserClient(path) as c:  # the device is still its own function
            c.version()
            assert struct.unpack("<HH", c.region_read(CONFIG, 0, 4)) == (0x1AF4, 0x1044)


def test_qemu_args_with_platform_prints_the_port() -> None:
    out = io.StringIO()
    main_qemu_args(Namespace(socket="/run/d.sock", bus="rp0", profile="virtio-rng",
                             platform="cca"), out)
    text = out.getvalue()
    assert '"path":"/run/d.sock.fwport"' in text and '"x-msg-timeout":60000' in text
    assert "pcie-root-port,id=rp9" in text
