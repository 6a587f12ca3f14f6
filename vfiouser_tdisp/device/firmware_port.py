"""The firmware port: a paravirtual PCI function that carries firmware calls.

It stands in for the instructions a TCG guest cannot execute (SMC to the Arm
RMM, SEAMCALL/TDCALL, the PSP mailbox).  A doorbell write in a call window
becomes one :class:`~vfiouser_tdisp.firmware.FirmwareCall` handed to the
:class:`~vfiouser_tdisp.firmware.Firmware` the caller attached; the firmware
reaches the buffers the call names by this function's DMA.  The register file,
the IDs and the completion rules are docs/firmware-port.md (port ABI 1.0);
the guest side is guest-module/vtfw-port.c.

BAR0 (32-bit, 4 KiB)::

    0x000 MAGIC "VTFP"   0x004 PORT_VERSION   0x008 ABI_ID   0x00C ABI_VERSION
    0x010 NUM_WINDOWS    0x014 WINDOW_BASE    0x018 WINDOW_STRIDE
    0x01C NUM_ARGS       0x020 NUM_RESULTS
    window c at 0x100 + c * 0x200 (c = CallClass):
      +0x00 FID (u64)  +0x08 DOORBELL  +0x0C STATUS  +0x10 SEQ  +0x14 NRES  +0x18 ERROR
      +0x20 ARG0..15 (u64)  +0xA0 RES0..15 (u64)
"""

from __future__ import annotations

import enum
import struct

from ..events import emit
from ..firmware import CallClass, Firmware, FirmwareCall, GuestMemoryError
from ..pci.caps import PcieCapability, PmCapability
from ..pci.function import Bar, BarKind, DmaError, PciFunction, RegisterArea
from .personality import Personality

PORT_MAGIC = 0x50465456          # bytes "VTFP"
PORT_VERSION = 0x0001_0000       # 1.0
WINDOW_BASE = 0x100
WINDOW_STRIDE = 0x200
NUM_ARGS = 16
NUM_RESULTS = 16
BAR_SIZE = 0x1000

# header registers (u32)
REG_MAGIC = 0x00
REG_PORT_VERSION = 0x04
REG_ABI_ID = 0x08
REG_ABI_VERSION = 0x0C
REG_NUM_WINDOWS = 0x10
REG_WINDOW_BASE = 0x14
REG_WINDOW_STRIDE = 0x18
REG_NUM_ARGS = 0x1C
REG_NUM_RESULTS = 0x20

# window registers, relative to the window base
WIN_FID = 0x00
WIN_DOORBELL = 0x08
WIN_STATUS = 0x0C
WIN_SEQ = 0x10
WIN_NRES = 0x14
WIN_ERROR = 0x18
WIN_ARGS = 0x20
WIN_RESULTS = WIN_ARGS + 8 * NUM_ARGS

DOORBELL_CALL = 1
U64 = (1 << 64) - 1


class PortStatus(enum.IntFlag):
    BUSY = 1 << 0
    DONE = 1 << 1
    ERROR = 1 << 2
    OVERRUN = 1 << 3   # a doorbell arrived while the window was busy; it started nothing


class PortError(enum.IntEnum):
    NONE = 0
    DMA = 1            # the firmware's access to guest memory failed
    FIRMWARE = 2       # the emulator failed or returned something that is not registers
    NO_FIRMWARE = 3    # nothing attached behind the port
    BAD_DOORBELL = 4   # DOORBELL written with a value other than 1


def window_offset(cls: CallClass) -> int:
    return WINDOW_BASE + int(cls) * WINDOW_STRIDE


class PortMemory:
    """Guest memory as the firmware sees it: this function's DMA, by physical address."""

    def __init__(self, function: PciFunction) -> None:
        self.function = function

    def _check(self, addr: int, size: int) -> None:
        if not self.function.bus_master:
            raise GuestMemoryError("bus mastering is disabled on the firmware port")
        if addr < 0 or size < 0 or addr + size > 1 << 64:
            raise GuestMemoryError(f"bad guest address {addr:#x}+{size:#x}")

    def read(self, addr: int, size: int) -> bytes:
        self._check(addr, size)
        if size == 0:
            return b""
        try:
            return self.function.dma.read(addr, size)
        except DmaError as exc:
            raise GuestMemoryError(str(exc)) from None

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        if not data:
            return
        try:
            self.function.dma.write(addr, bytes(data))
        except DmaError as exc:
            raise GuestMemoryError(str(exc)) from None


class CallWindow:
    """The registers of one call class; latched at the doorbell."""

    def __init__(self, cls: CallClass) -> None:
        self.cls = cls
        self.reset()

    def reset(self) -> None:
        self.regs = bytearray(WINDOW_STRIDE)

    def u32(self, off: int) -> int:
        return int.from_bytes(self.regs[off : off + 4], "little")

    def set_u32(self, off: int, value: int) -> None:
        self.regs[off : off + 4] = value.to_bytes(4, "little")

    def u64(self, off: int) -> int:
        return int.from_bytes(self.regs[off : off + 8], "little")

    @property
    def status(self) -> PortStatus:
        return PortStatus(self.u32(WIN_STATUS))

    @status.setter
    def status(self, value: PortStatus) -> None:
        self.set_u32(WIN_STATUS, int(value))

    def args(self) -> tuple[int, ...]:
        return tuple(self.u64(WIN_ARGS + 8 * i) for i in range(NUM_ARGS))

    def finish(self, results: tuple[int, ...], error: PortError) -> None:
        """Store the outcome; keeps OVERRUN, clears BUSY."""
        self.regs[WIN_RESULTS : WIN_RESULTS + 8 * NUM_RESULTS] = bytes(8 * NUM_RESULTS)
        for i, value in enumerate(results):
            self.regs[WIN_RESULTS + 8 * i : WIN_RESULTS + 8 * i + 8] = value.to_bytes(8, "little")
        self.set_u32(WIN_NRES, len(results))
        self.set_u32(WIN_ERROR, int(error))
        self.set_u32(WIN_SEQ, (self.u32(WIN_SEQ) + 1) & 0xFFFF_FFFF)
        status = PortStatus.DONE | (self.status & PortStatus.OVERRUN)
        if error is not PortError.NONE:
            status |= PortStatus.ERROR
        self.status = status


class FirmwarePort(Personality):
    """The firmware port function (port ABI 1.0, docs/firmware-port.md)."""

    NAME = "firmware-port"
    DESCRIPTION = "paravirtual firmware port: firmware calls by doorbell, buffers by DMA"
    # QEMU's pci-ids.rst: 1af4:10f0..10ff "available for experimental usage
    # without registration"; no stock driver binds it (virtio-pci refuses > 0x107f).
    VENDOR_ID = 0x1AF4
    DEVICE_ID = 0x10FC
    CLASS_CODE = 0xFF0000
    REVISION = 1
    SUBSYSTEM_VENDOR_ID = 0x1AF4
    SUBSYSTEM_ID = 0x10FC
    GUEST_CHECKS = ()

    def __init__(self, firmware: Firmware | None) -> None:
        super().__init__()
        self.firmware = firmware
        self.windows = {cls: CallWindow(cls) for cls in CallClass}

    def build(self, fn: PciFunction) -> None:
        bar0 = fn.add_bar(Bar(0, BAR_SIZE, BarKind.MEM32))
        bar0.add(0, RegisterArea(BAR_SIZE, self._read, self._write))
        self.memory = PortMemory(fn)

    # -- registers ----------------------------------------------------------------------
    def _header(self) -> bytes:
        fw = self.firmware
        abi_id = fw.abi_id if fw is not None else 0
        abi_version = fw.abi_version if fw is not None else 0
        return struct.pack("<9I", PORT_MAGIC, PORT_VERSION, abi_id & 0xFFFF_FFFF,
                           abi_version & 0xFFFF_FFFF, len(CallClass), WINDOW_BASE,
                           WINDOW_STRIDE, NUM_ARGS, NUM_RESULTS)

    def _locate(self, offset: int) -> tuple[CallWindow, int] | None:
        if offset < WINDOW_BASE:
            return None
        index, rel = divmod(offset - WINDOW_BASE, WINDOW_STRIDE)
        try:
            return self.windows[CallClass(index)], rel
        except ValueError:
            return None

    def _read(self, offset: int, size: int) -> bytes:
        out = bytearray()
        for pos in range(offset, offset + size):  # an access may straddle nothing but bytes
            if pos < WINDOW_BASE:
                header = self._header()
                out.append(header[pos] if pos < len(header) else 0)
                continue
            hit = self._locate(pos)
            if hit is None:
                out.append(0)
                continue
            win, rel = hit
            out.append(0 if WIN_DOORBELL <= rel < WIN_DOORBELL + 4 else win.regs[rel])
        return bytes(out)

    def _write(self, offset: int, data: bytes) -> None:
        hit = self._locate(offset)
        if hit is None or hit[1] + len(data) > WINDOW_STRIDE:
            return  # header, space past the windows, or straddling two windows: ignored
        win, rel = hit
        end = rel + len(data)
        if rel < WIN_DOORBELL + 4 and end > WIN_DOORBELL:
            if rel != WIN_DOORBELL:
                return  # the doorbell is rung by an access that starts at it
            self._doorbell(win, int.from_bytes(data[:4], "little"))
            return
        if WIN_FID <= rel and end <= WIN_FID + 8 or WIN_ARGS <= rel and end <= WIN_RESULTS:
            if PortStatus.BUSY in win.status:
                return  # latched at the doorbell: the running call keeps its arguments
            win.regs[rel:end] = data
        # STATUS, SEQ, NRES, ERROR, RESn and reserved bytes are read-only

    # -- calls --------------------------------------------------------------------------
    def _doorbell(self, win: CallWindow, value: int) -> None:
        if PortStatus.BUSY in win.status:
            win.status = win.status | PortStatus.OVERRUN
            emit("firmware_port.overrun", window=win.cls.name)
            return
        win.status = PortStatus.BUSY  # clears DONE, ERROR and OVERRUN
        if value != DOORBELL_CALL:
            win.finish((), PortError.BAD_DOORBELL)
            emit("firmware_port.error", window=win.cls.name, error="BAD_DOORBELL", value=value)
            return
        if self.firmware is None:
            win.finish((), PortError.NO_FIRMWARE)
            emit("firmware_port.error", window=win.cls.name, error="NO_FIRMWARE")
            return
        call = FirmwareCall(win.cls, win.u64(WIN_FID), win.args())
        try:
            results = tuple(self.firmware.call(call, self.memory))
        except GuestMemoryError as exc:
            win.finish((), PortError.DMA)
            emit("firmware_port.error", window=win.cls.name, fid=f"{call.fid:#x}",
                 error="DMA", reason=str(exc))
            return
        except Exception as exc:  # emulator bug: contain it, keep serving
            win.finish((), PortError.FIRMWARE)
            emit("firmware_port.error", window=win.cls.name, fid=f"{call.fid:#x}",
                 error="FIRMWARE", reason=repr(exc))
            return
        if not results or len(results) > NUM_RESULTS or not all(
                isinstance(r, int) and 0 <= r <= U64 for r in results):
            win.finish((), PortError.FIRMWARE)
            emit("firmware_port.error", window=win.cls.name, fid=f"{call.fid:#x}",
                 error="FIRMWARE", reason=f"bad result registers {results!r}"[:200])
            return
        win.finish(results, PortError.NONE)
        emit("firmware_port.call", window=win.cls.name, fid=f"{call.fid:#x}",
             status=f"{results[0]:#x}")

    def reset(self, cause: str) -> None:
        for win in self.windows.values():
            win.reset()


def build_firmware_port(firmware: Firmware | None,
                        name: str = "firmware-port") -> tuple[PciFunction, FirmwarePort]:
    """The port as a PCIe Endpoint function: PM, PCI Express without TEE-IO (the
    port is no TDISP device, so the kernel offers no ``tsm/`` on it), BAR0."""
    port = FirmwarePort(firmware)
    fn = PciFunction(name=name, vendor_id=port.VENDOR_ID, device_id=port.DEVICE_ID,
                     class_code=port.CLASS_CODE, revision=port.REVISION,
                     subsystem_vendor_id=port.SUBSYSTEM_VENDOR_ID,
                     subsystem_id=port.SUBSYSTEM_ID)
    fn.config.add_capability(PmCapability())
    pcie = PcieCapability(tee_io=False)
    fn.config.add_capability(pcie)
    fn.pcie = pcie
    port.function = fn
    port.build(fn)

    def on_flr() -> None:
        fn.reset("flr")

    pcie.on_flr = on_flr
    fn.reset_hooks.append(port.reset)
    emit("device.created", profile=port.NAME, instance=0, functions=[fn.name])
    return fn, port
