"""Config space semantics on bytes: register masks, byte enables, capability
chains, BAR sizing, Command, PCIe DEVCAP and FLR (PCIe r6.x §7.5)."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest

from vfiouser_tdisp.device.device import Device, DeviceProfile, get_profile
from vfiouser_tdisp.device.virtio_rng import (
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
)
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.pci.caps import PcieCapability
from vfiouser_tdisp.pci.config import Capability, ConfigAccessError, ConfigSpace, Reg
from vfiouser_tdisp.pci.function import (
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    Bar,
    BarKind,
    PciFunction,
)

PCI_CAP_ID_PM, PCI_CAP_ID_VNDR, PCI_CAP_ID_EXP, PCI_CAP_ID_MSIX = 0x01, 0x09, 0x10, 0x11
PCI_EXT_CAP_ID_DSN, PCI_EXT_CAP_ID_DOE, PCI_EXT_CAP_ID_IDE = 0x03, 0x2E, 0x30


def r32(cfg: ConfigSpace, off: int) -> int:
    return int(struct.unpack("<I", cfg.read(off, 4))[0])


def w32(cfg: ConfigSpace, off: int, value: int) -> None:
    cfg.write(off, struct.pack("<I", value))


def r16(cfg: ConfigSpace, off: int) -> int:
    return int(struct.unpack("<H", cfg.read(off, 2))[0])


def std_caps(cfg: ConfigSpace) -> list[tuple[int, int]]:
    """(offset, id) along the list from 0x34, as pci_find_capability walks it."""
    out: list[tuple[int, int]] = []
    pos = cfg.read(0x34, 1)[0] & ~3
    while pos and len(out) < 48:
        out.append((pos, cfg.read(pos, 1)[0]))
        pos = cfg.read(pos + 1, 1)[0] & ~3
    assert pos == 0, "capability list loops"
    return out


def ext_caps(cfg: ConfigSpace) -> list[tuple[int, int, int]]:
    """(offset, id, version) along the extended list from 0x100."""
    out: list[tuple[int, int, int]] = []
    pos = 0x100
    while pos and len(out) < 960:
        hdr = r32(cfg, pos)
        if hdr == 0:
            break
        out.append((pos, hdr & 0xFFFF, (hdr >> 16) & 0xF))
        pos = (hdr >> 20) & ~3
    assert pos == 0 or r32(cfg, pos) == 0, "extended capability list loops"
    return out


class SampleCap(Capability):
    """One dword of each kind, plus a dword with a write hook."""

    CAP_ID = 0x09
    NAME = "test"

    def __init__(self) -> None:
        super().__init__(16)
        self.dynamic_dwords = {0x0C}
        self.hooked: list[tuple[int, int, int]] = []

    def registers(self) -> Iterable[Reg]:
        return [
            Reg("ro", 0x04, 4, 0x12345678),
            Reg("mixed", 0x08, 4, 0x0000AA00, rw=0x0000FFFF, w1c=0xFF000000),
            Reg("hooked", 0x0C, 4, 0, rw=0xFFFFFFFF),
        ]

    def write_dword(self, rel: int, old: int, new: int, value: int, byte_mask: int) -> int:
        self.hooked.append((value, byte_mask, new))
        return new

    def read_dword(self, rel: int, stored: int) -> int:
        return stored ^ 0xFFFFFFFF


@pytest.fixture
def space() -> tuple[ConfigSpace, SampleCap]:
    cfg = ConfigSpace()
    cap = SampleCap()
    cfg.add_capability(cap)
    return cfg, cap


@pytest.fixture
def dev() -> Device:
    return Device(get_profile("virtio-rng"))


# -- register semantics ---------------------------------------------------------------------


def test_ro_rw_rw1c_bits(space: tuple[ConfigSpace, SampleCap]) -> None:
    cfg, cap = space
    base = cap.offset
    w32(cfg, base + 4, 0xFFFFFFFF)
    assert r32(cfg, base + 4) == 0x12345678  # RO ignores writes
    cfg.data[base + 0x0B] = 0xF0  # hardware latched status bits
    w32(cfg, base + 8, 0x10FF1234)  # RW low half stores; W1C clears bit 28 only
    assert r32(cfg, base + 8) == 0xE0001234
    w32(cfg, base + 8, 0x00000000)  # writing 0 to W1C bits leaves them
    assert r32(cfg, base + 8) == 0xE0000000
    w32(cfg, base + 8, 0xFFFFFFFF)
    assert r32(cfg, base + 8) == 0x0000FFFF


def test_byte_enables(space: tuple[ConfigSpace, SampleCap]) -> None:
    cfg, cap = space
    base = cap.offset + 8
    cfg.write(base + 1, b"\x56")  # one byte: the others keep their value
    assert r32(cfg, base) == 0x00005600
    cfg.write(base, b"\x34\x12")
    assert r32(cfg, base) == 0x00001234
    cfg.write(base + 1, b"\xAB\xCD")  # 2 bytes straddling the RW/RO boundary
    assert r32(cfg, base) == 0x0000AB34
    assert cfg.read(base + 1, 1) == b"\xAB" and cfg.read(base + 1, 2) == b"\xAB\x00"


def test_hooks_see_raw_value_and_byte_mask(space: tuple[ConfigSpace, SampleCap]) -> None:
    cfg, cap = space
    hooked = cap.offset + 0x0C
    cfg.write(hooked + 1, b"\x5A")
    cfg.write(hooked + 2, b"\x01\x02")
    w32(cfg, hooked, 0xCAFEF00D)
    assert cap.hooked == [(0x5A00, 0xFF00, 0x5A00), (0x02010000, 0xFFFF0000, 0x02015A00),
                          (0xCAFEF00D, 0xFFFFFFFF, 0xCAFEF00D)]
    assert r32(cfg, hooked) == 0xCAFEF00D ^ 0xFFFFFFFF  # reads go through read_dword
    assert cfg.read(hooked + 3, 1) == b"\x35"  # ... also for a partial read


def test_unaligned_and_large_accesses_split_into_dwords(
        space: tuple[ConfigSpace, SampleCap]) -> None:
    cfg, cap = space
    base = cap.offset
    cfg.write(base + 7, b"\xFF\xEE\xDD")  # last byte of RO dword, two of the mixed one
    assert r32(cfg, base + 4) == 0x12345678 and r32(cfg, base + 8) == 0x0000DDEE
    cfg.write(base + 4, bytes(range(1, 13)))  # three dwords in one access
    assert r32(cfg, base + 4) == 0x12345678
    assert r32(cfg, base + 8) == 0x00000605
    assert cap.hooked[-1] == (0x0C0B0A09, 0xFFFFFFFF, 0x0C0B0A09)
    odd = cfg.read(base + 3, 6)  # unaligned read across dwords
    assert odd == cfg.read(base, 12)[3:9]


def test_whole_space_and_bounds(dev: Device) -> None:
    cfg = dev.dsm.config
    whole = cfg.read(0, 4096)
    assert len(whole) == 4096
    assert whole[:4] == struct.pack("<HH", 0x1AF4, 0x1044)
    assert whole[0x100:0x104] == cfg.read(0x100, 4)
    assert cfg.read(4095, 1) == whole[4095:]
    for offset, length in ((4094, 4), (4096, 1), (0, 4097), (-1, 2)):
        with pytest.raises(ConfigAccessError):
            cfg.read(offset, length)
        with pytest.raises(ConfigAccessError):
            cfg.write(offset, bytes(length if length > 0 else 1))


def test_capability_declaration_errors() -> None:
    cfg = ConfigSpace()
    cfg.add_capability(SampleCap(), 0x40)
    with pytest.raises(ValueError):
        cfg.add_capability(SampleCap(), 0x44)  # overlaps
    with pytest.raises(ValueError):
        cfg.add_capability(SampleCap(), 0x3C)  # inside the header
    with pytest.raises(ValueError):
        cfg.add_capability(SampleCap(), 0xF8)  # runs past 0xFF


# -- the device's header and capability chains --------------------------------------------


def test_header_identity_is_read_only(dev: Device) -> None:
    cfg = dev.dsm.config
    before = cfg.read(0, 0x40)
    for off in (0x00, 0x08, 0x2C, 0x34):
        w32(cfg, off, 0xFFFFFFFF)
    assert r32(cfg, 0x00) == 0x10441AF4
    assert r32(cfg, 0x08) == 0xFF000001  # class 0xff0000, revision 1
    assert r32(cfg, 0x2C) == 0x00041AF4
    assert cfg.read(0x34, 1) == before[0x34:0x35]
    assert cfg.read(0x0E, 1) == b"\x00"  # single-function type-0 header
    cfg.write(0x3C, b"\x0B\x07")  # interrupt line RW, pin RO
    assert cfg.read(0x3C, 2) == b"\x0B\x01"


def test_standard_capability_chain(dev: Device) -> None:
    cfg = dev.dsm.config
    assert r16(cfg, 0x06) & 0x10  # Status: Capabilities List
    caps = std_caps(cfg)
    ids = [i for _o, i in caps]
    assert ids[:3] == [PCI_CAP_ID_PM, PCI_CAP_ID_EXP, PCI_CAP_ID_MSIX]
    assert ids[3:] == [PCI_CAP_ID_VNDR] * 4
    assert all(o >= 0x40 and o % 4 == 0 for o, _i in caps)
    vendor = {cfg.read(o + 3, 1)[0]: o for o, i in caps if i == PCI_CAP_ID_VNDR}
    assert set(vendor) == {VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_ISR_CFG,
                           VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG}
    notify = vendor[VIRTIO_PCI_CAP_NOTIFY_CFG]
    assert cfg.read(notify + 2, 1) == b"\x14"  # cap_len 20: has notify_off_multiplier
    assert cfg.read(vendor[VIRTIO_PCI_CAP_COMMON_CFG] + 2, 1) == b"\x10"
    pm = caps[0][0]
    assert r16(cfg, pm + 2) & 0x7 == 0x3  # PM version 3


def test_extended_capability_chain(dev: Device) -> None:
    caps = ext_caps(dev.dsm.config)
    assert caps[0] == (0x100, PCI_EXT_CAP_ID_DOE, 2)
    ids = [i for _o, i, _v in caps]
    assert ids == [PCI_EXT_CAP_ID_DOE, PCI_EXT_CAP_ID_IDE, PCI_EXT_CAP_ID_DSN]
    dsn = caps[-1][0]
    serial = get_profile("virtio-rng").serial
    assert dev.dsm.config.read(dsn + 4, 8) == struct.pack("<Q", serial)


def test_second_function_has_no_doe() -> None:
    d = Device(DeviceProfile("two", "virtio-rng", functions=2))
    assert d.dsm.config.read(0x0E, 1)[0] & 0x80  # multi-function
    fn1 = [i for _o, i, _v in ext_caps(d.functions[1].config)]
    assert fn1 == [PCI_EXT_CAP_ID_DSN]
    dsn0 = ext_caps(d.dsm.config)[-1][0]
    dsn1 = ext_caps(d.functions[1].config)[-1][0]
    assert d.dsm.config.read(dsn0 + 4, 8) != d.functions[1].config.read(dsn1 + 4, 8)


# -- BARs and Command ---------------------------------------------------------------------------


def test_bar_sizing_all_kinds() -> None:
    fn = PciFunction("t", 0x1234, 0x5678, 0xFF0000)
    fn.add_bar(Bar(0, 0x100, BarKind.IO))
    fn.add_bar(Bar(1, 0x1000, BarKind.MEM32))
    fn.add_bar(Bar(2, 0x100000, BarKind.MEM64, prefetchable=True))
    fn.add_bar(Bar(4, 0x10000, BarKind.MEM32, prefetchable=True))
    cfg = fn.config
    initial = [r32(cfg, 0x10 + 4 * i) for i in range(6)]
    assert initial == [0x1, 0x0, 0xC, 0x0, 0x8, 0x0]  # type bits only
    for i in range(6):
        w32(cfg, 0x10 + 4 * i, 0xFFFFFFFF)
    sized = [r32(cfg, 0x10 + 4 * i) for i in range(6)]
    assert sized == [0xFFFFFF01, 0xFFFFF000, 0xFFF0000C, 0xFFFFFFFF, 0xFFFF0008, 0x0]
    w32(cfg, 0x10, 0xC000)
    w32(cfg, 0x18, 0xFE10_0000)
    w32(cfg, 0x1C, 0x0000_0004)
    assert fn.bar_address(0) == 0xC000
    assert fn.bar_address(2) == 0x4_FE10_0000
    w32(cfg, 0x14, 0xFEB0_0FFF)  # low bits inside the BAR size are RO 0
    assert fn.bar_address(1) == 0xFEB0_0000
    with pytest.raises(ValueError):
        fn.bar_address(3)  # upper half of BAR2, not a BAR of its own
    with pytest.raises(ValueError):
        Bar(3, 0x1000, BarKind.MEM64)  # 64-bit BARs start at an even index
    with pytest.raises(ValueError):
        Bar(0, 0x1800)  # not a power of two


def test_device_bar_sizing(dev: Device) -> None:
    cfg = dev.dsm.config
    for i in range(6):
        w32(cfg, 0x10 + 4 * i, 0xFFFFFFFF)
    sized = [r32(cfg, 0x10 + 4 * i) for i in range(6)]
    assert sized[0:2] == [0xFFFFC004, 0xFFFFFFFF]  # BAR0: 16 KiB, 64-bit
    assert sized[2:4] == [0xFFFFF000, 0x00000000]  # BAR2: 4 KiB, 32-bit; BAR3 unused
    assert sized[4:6] == [0xFFFF000C, 0xFFFFFFFF]  # BAR4: 64 KiB, 64-bit prefetchable
    assert r32(cfg, 0x30) == 0  # no expansion ROM, even after a sizing write
    w32(cfg, 0x30, 0xFFFFF800)
    assert r32(cfg, 0x30) == 0


def test_command_register(dev: Device) -> None:
    fn = dev.dsm
    assert r16(fn.config, 0x04) == 0 and not fn.bus_master and not fn.memory_enabled
    fn.config.write(0x04, b"\xFF\xFF")
    assert r16(fn.config, 0x04) == 0x0547  # IO MEM BM PERR SERR INTxDisable
    assert fn.bus_master and fn.memory_enabled
    fn.config.write(0x04, struct.pack("<H", PCI_COMMAND_MEMORY))
    assert fn.memory_enabled and not fn.bus_master
    fn.config.write(0x04, struct.pack("<H", PCI_COMMAND_MASTER))
    assert fn.bus_master and not fn.memory_enabled


def test_status_register_rw1c(dev: Device) -> None:
    cfg = dev.dsm.config
    cfg.data[0x07] = 0xF9  # latched errors
    cfg.write(0x06, struct.pack("<H", 0x0100))  # clears Master Data Parity Error only
    assert r16(cfg, 0x06) == 0xF810
    cfg.write(0x06, struct.pack("<H", 0xFFFF))  # Capabilities List is RO
    assert r16(cfg, 0x06) == 0x0010


# -- PCIe capability and FLR ---------------------------------------------------------------


def pcie_offset(dev: Device) -> int:
    return next(o for o, i in std_caps(dev.dsm.config) if i == PCI_CAP_ID_EXP)


def test_pcie_devcap_flr_and_tee_io(dev: Device) -> None:
    cfg = dev.dsm.config
    pcie = pcie_offset(dev)
    assert r16(cfg, pcie + 2) & 0xF == 2  # capability version 2
    assert (r16(cfg, pcie + 2) >> 4) & 0xF == 0  # PCI Express Endpoint
    devcap = r32(cfg, pcie + 4)
    assert devcap & (1 << 28) and devcap & (1 << 30)
    w32(cfg, pcie + 4, 0)
    assert r32(cfg, pcie + 4) == devcap  # RO
    no_tee = Device(DeviceProfile("plain", "virtio-rng", tee_io=False))
    assert not r32(no_tee.dsm.config, pcie_offset(no_tee) + 4) & (1 << 30)


def test_pcie_devsta_rw1c(dev: Device) -> None:
    cfg = dev.dsm.config
    pcie = pcie_offset(dev)
    cfg.data[pcie + 0x0A] = 0x0F
    cfg.write(pcie + 0x0A, b"\x05\x00")
    assert cfg.read(pcie + 0x0A, 1) == b"\x0A"


def test_flr_resets_bars_and_command_and_device_keeps_working(
        dev: Device, events: Recorder) -> None:
    fn = dev.dsm
    cfg = fn.config
    pcie = pcie_offset(dev)
    msix = next(o for o, i in std_caps(cfg) if i == PCI_CAP_ID_MSIX)
    w32(cfg, 0x10, 0xFE00_0000)
    w32(cfg, 0x18, 0xFE10_0000)
    cfg.write(0x04, struct.pack("<H", PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER))
    cfg.write(msix + 2, struct.pack("<H", 0x8001))
    fn.region_write(0, 0x14, bytes([VIRTIO_CONFIG_S_ACKNOWLEDGE]))  # virtio status
    cfg.write(pcie + 8, struct.pack("<H", 0x0000))  # clear some DEVCTL bits first

    cfg.write(pcie + 8, struct.pack("<H", 0x8000))  # Initiate Function Level Reset

    assert r32(cfg, 0x10) == 0x4 and r32(cfg, 0x18) == 0x0
    assert r16(cfg, 0x04) == 0
    assert not r16(cfg, msix + 2) & 0x8000
    assert r16(cfg, pcie + 8) == 0x2810  # DEVCTL reset value; FLR bit reads 0
    assert fn.region_read(0, 0x14, 1) == b"\x00"  # the personality was reset too
    assert [e["cause"] for e in events.of("function.reset")] == ["flr"]
    # ... and the function works again: BARs program, registers respond, DOE answers.
    w32(cfg, 0x10, 0xFE00_0000)
    cfg.write(0x04, struct.pack("<H", PCI_COMMAND_MEMORY))
    assert fn.bar_address(0) == 0xFE00_0000
    fn.region_write(0, 0x14, bytes([VIRTIO_CONFIG_S_ACKNOWLEDGE]))
    assert fn.region_read(0, 0x14, 1) == bytes([VIRTIO_CONFIG_S_ACKNOWLEDGE])
    assert dev.doe.exchange(struct.pack("<III", 0x00000001, 3, 0))[8:] == b"\x01\x00\x00\x01"


def test_flr_not_offered_is_ignored() -> None:
    cfg = ConfigSpace()
    pcie = PcieCapability(flr=False)
    cfg.add_capability(pcie)
    calls: list[int] = []
    pcie.on_flr = lambda: calls.append(1)
    assert not r32(cfg, pcie.offset + 4) & (1 << 28)
    cfg.write(pcie.offset + 8, struct.pack("<H", 0x8000))
    assert calls == [] and not r16(cfg, pcie.offset + 8) & 0x8000


def test_reset_restores_every_reset_value(dev: Device) -> None:
    cfg = dev.dsm.config
    image = cfg.read(0, 4096)
    for off in range(0, 4096, 4):
        if off not in range(0x100, 0x118):  # leave the DOE mailbox registers alone
            w32(cfg, off, 0xFFFFFFFF)
    assert cfg.read(0, 4096) != image
    cfg.reset()
    assert cfg.read(0, 4096) == image
