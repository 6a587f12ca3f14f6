"""Standard PCI capabilities of the endpoint: PM, MSI-X, PCI Express, DSN.

Register layouts follow PCIe r6.x §7.5.2 (PM), §7.7.2 (MSI-X), §7.5.3 (PCIe
capability) and §7.9.3 (Device Serial Number); bit names follow Linux
include/uapi/linux/pci_regs.h.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import IntEnum

from .config import Capability, Reg

PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_EXT_CAP_ID_DSN = 0x03


class PmCapability(Capability):
    """Power Management (version 3).

    ::

        31            16 15     8 7      0
        +---------------+--------+--------+
        |      PMC      |  next  |  0x01  |  +0x00
        +---------------+--------+--------+
        |  data | bse   |       PMCSR     |  +0x04
        +---------------+-----------------+

    PMCSR: PowerState[1:0] RW, No_Soft_Reset bit3 RO=1, PME_En bit8 RW,
    PME_Status bit15 RW1C.
    """

    CAP_ID = PCI_CAP_ID_PM
    NAME = "pm"

    def __init__(self) -> None:
        super().__init__(8)

    def registers(self) -> Iterable[Reg]:
        return [
            Reg("PMC", 2, 2, 0x0003),
            Reg("PMCSR", 4, 2, 0x0008, rw=0x0103, w1c=0x8000),
        ]


class MsixCapability(Capability):
    """MSI-X (table and PBA live in a BAR).

    ::

        31 30 29    27     16 15     8 7      0
        +--+--+-------+-------+--------+--------+
        |En|FM|  rsvd | N - 1 |  next  |  0x11  |  +0x00  Message Control
        +--+--+-------+-------+--------+--------+
        |        Table Offset          | BIR    |  +0x04  (BIR in [2:0])
        +------------------------------+--------+
        |         PBA Offset           | BIR    |  +0x08
        +------------------------------+--------+

    Message Control: Table Size [10:0] RO, Function Mask bit14 RW,
    MSI-X Enable bit15 RW.
    """

    CAP_ID = PCI_CAP_ID_MSIX
    NAME = "msix"
    ENABLE = 0x8000
    FUNCTION_MASK = 0x4000

    def __init__(self, vectors: int, table_bar: int, table_offset: int,
                 pba_bar: int, pba_offset: int) -> None:
        super().__init__(12)
        if not 1 <= vectors <= 2048:
            raise ValueError("MSI-X supports 1..2048 vectors")
        if table_offset % 8 or pba_offset % 8:
            raise ValueError("MSI-X table and PBA offsets must be 8-byte aligned")
        self.vectors = vectors
        self.table_bar = table_bar
        self.table_offset = table_offset
        self.pba_bar = pba_bar
        self.pba_offset = pba_offset

    def registers(self) -> Iterable[Reg]:
        return [
            Reg("MessageControl", 2, 2, self.vectors - 1,
                rw=self.ENABLE | self.FUNCTION_MASK),
            Reg("TableOffsetBIR", 4, 4, self.table_offset | self.table_bar),
            Reg("PBAOffsetBIR", 8, 4, self.pba_offset | self.pba_bar),
        ]

    @property
    def table_size(self) -> int:
        return self.vectors * 16

    @property
    def pba_size(self) -> int:
        return ((self.vectors + 63) // 64) * 8

    @property
    def enabled(self) -> bool:
        return bool(self.get(2, 2) & self.ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self.get(2, 2) & self.FUNCTION_MASK)


class PcieDevicePortType(IntEnum):
    ENDPOINT = 0x0
    LEGACY_ENDPOINT = 0x1
    RC_INTEGRATED_ENDPOINT = 0x9


PCI_EXP_DEVCAP_FLR = 1 << 28
PCI_EXP_DEVCAP_TEE = 1 << 30
PCI_EXP_DEVCTL_BCR_FLR = 1 << 15
PCI_EXP_DEVCAP = 0x04
PCI_EXP_DEVCTL = 0x08


class PcieCapability(Capability):
    """PCI Express capability, version 2 (0x3C bytes).

    ::

        +0x00  ID 0x10 | next | PCIe Capabilities (ver 2, device/port type)
        +0x04  Device Capabilities   (MPS 128B, FLR bit28, TEE-IO bit30)
        +0x08  Device Control (RW; bit15 Initiate FLR) | Device Status (RW1C [3:0])
        +0x0C  Link Capabilities     (2.5 GT/s x1)
        +0x10  Link Control (RW)     | Link Status (2.5 GT/s x1)
        +0x24  Device Capabilities 2
        +0x28  Device Control 2 (RW) | Device Status 2
        +0x2C  Link Capabilities 2   (2.5 GT/s supported)
        +0x30  Link Control 2 (RW)   | Link Status 2

    Writing Initiate FLR calls ``on_flr``; the bit always reads 0.
    """

    CAP_ID = PCI_CAP_ID_EXP
    NAME = "pcie"

    def __init__(self, port_type: PcieDevicePortType = PcieDevicePortType.ENDPOINT,
                 flr: bool = True, tee_io: bool = True) -> None:
        super().__init__(0x3C)
        self.port_type = port_type
        self.flr = flr
        self.tee_io = tee_io
        self.on_flr: Callable[[], None] | None = None
        self.dynamic_dwords = {PCI_EXP_DEVCTL}

    def registers(self) -> Iterable[Reg]:
        devcap = 0
        if self.flr:
            devcap |= PCI_EXP_DEVCAP_FLR
        if self.tee_io:
            devcap |= PCI_EXP_DEVCAP_TEE
        return [
            Reg("PCIeCapabilities", 2, 2, 0x0002 | (self.port_type << 4)),
            Reg("DeviceCapabilities", 0x04, 4, devcap),
            # DEVCTL: correctable..fatal reporting [3:0], relaxed ordering bit4,
            # MPS [7:5], ext tag bit8, no snoop bit11, MRRS [14:12], FLR bit15
            Reg("DeviceControl", 0x08, 2, 0x2810, rw=0xFFFF),
            Reg("DeviceStatus", 0x0A, 2, 0, w1c=0x000F),
            Reg("LinkCapabilities", 0x0C, 4, 0x00000011),
            Reg("LinkControl", 0x10, 2, 0, rw=0x0FFB),
            Reg("LinkStatus", 0x12, 2, 0x0011),
            Reg("DeviceCapabilities2", 0x24, 4, 0),
            Reg("DeviceControl2", 0x28, 2, 0, rw=0x041F),
            Reg("LinkCapabilities2", 0x2C, 4, 0x00000002),
            Reg("LinkControl2", 0x30, 2, 0x0001, rw=0x0FFF),
        ]

    def write_dword(self, rel: int, old: int, new: int, value: int, byte_mask: int) -> int:
        if rel == PCI_EXP_DEVCTL and new & PCI_EXP_DEVCTL_BCR_FLR:
            new &= ~PCI_EXP_DEVCTL_BCR_FLR
            if self.flr and self.on_flr is not None:
                self.on_flr()
                # FLR resets the capability itself; return what reset left there.
                return self.get(rel)
        return new

    @property
    def devcap(self) -> int:
        return self.get(PCI_EXP_DEVCAP)


class DsnCapability(Capability):
    """Device Serial Number extended capability (0x0003, version 1).

    ::

        +0x00  ID 0x0003 | ver 1 | next
        +0x04  Serial Number, lower dword
        +0x08  Serial Number, upper dword
    """

    CAP_ID = PCI_EXT_CAP_ID_DSN
    EXTENDED = True
    NAME = "dsn"

    def __init__(self, serial: int) -> None:
        super().__init__(12)
        self.serial = serial

    def registers(self) -> Iterable[Reg]:
        return [
            Reg("SerialLow", 4, 4, self.serial & 0xFFFFFFFF),
            Reg("SerialHigh", 8, 4, self.serial >> 32),
        ]


class VendorCapability(Capability):
    """Vendor-specific capability (ID 0x09) with a fixed RO body.

    ``body`` starts at byte 2 (after ID and next): byte 2 is the capability
    length, as PCI requires for vendor capabilities.
    """

    CAP_ID = PCI_CAP_ID_VNDR
    NAME = "vendor"

    def __init__(self, body: bytes, name: str = "vendor") -> None:
        size = (2 + len(body) + 3) & ~3
        super().__init__(size)
        self.body = body
        self.NAME = name  # type: ignore[misc]

    def registers(self) -> Iterable[Reg]:
        return [Reg(f"{self.NAME}[{i}]", 2 + i, 1, b) for i, b in enumerate(self.body)]
