"""Shared pieces for the Arm CCA RMM tests: a device in process with its BARs assigned
(as firmware would), reached through its DOE mailbox registers, and an RMM with the
guest-less host and realm drivers on top."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.device.function import PciFunction
from vfiouser_tdisp.doe.driver import DoeDriver
from vfiouser_tdisp.spdm.identity import DeviceIdentity
from vfiouser_tdisp.tsm.cca.host import CcaHost, CcaRealm, object_transport
from vfiouser_tdisp.tsm.cca.rmm import Rmm

DOE_CAP = 0x100            # the DSM's DOE capability (device/device.py)
BAR_BASE = 0xE000_0000
_IDENTITY: dict[str, DeviceIdentity] = {}


def device_identity(cache: Path) -> DeviceIdentity:
    if "id" not in _IDENTITY:
        dev = Device(get_profile("virtio-rng"), identity_options={"identity_dir": cache})
        _IDENTITY["id"] = dev.identity
    return _IDENTITY["id"]


def program_bars(read32, write32) -> dict[int, tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Size and place every BAR, then set Memory Space and Bus Master Enable."""
    bars: dict[int, tuple[int, int]] = {}
    base, index = BAR_BASE, 0
    while index < 6:
        reg = 0x10 + 4 * index
        write32(reg, 0xFFFFFFFF)
        low = read32(reg)
        if low == 0:
            index += 1
            continue
        is64 = (low >> 1) & 3 == 2
        size_mask = low & ~0xF
        if is64:
            write32(reg + 4, 0xFFFFFFFF)
            size_mask |= read32(reg + 4) << 32
            size = (~size_mask + 1) & ((1 << 64) - 1)
        else:
            size = (~size_mask + 1) & 0xFFFFFFFF
        base = (base + size - 1) & ~(size - 1)
        write32(reg, base & 0xFFFFFFFF)
        if is64:
            write32(reg + 4, base >> 32)
        bars[index] = (base, size)
        base += size
        index += 2 if is64 else 1
    write32(0x04, read32(0x04) | 0x6)
    return bars


def config_accessors(fn: PciFunction):  # type: ignore[no-untyped-def]
    def read32(off: int) -> int:
        return int.from_bytes(fn.config.read(off, 4), "little")

    def write32(off: int, value: int) -> None:
        fn.config.write(off, value.to_bytes(4, "little"))
    return read32, write32


@dataclass
class Bench:
    device: Device
    bars: dict[int, tuple[int, int]]
    rmm: Rmm
    host: CcaHost
    realm: CcaRealm


def bench(cache: Path, *, layout: str = "rhi-1.0-bet1", hash_algo: int = 0,
          assign_bars: bool = True) -> Bench:
    dev = Device(get_profile("virtio-rng"), identity=device_identity(cache))
    read32, write32 = config_accessors(dev.dsm)
    bars = program_bars(read32, write32) if assign_bars else {}
    mailbox = DoeDriver(read32, write32, DOE_CAP)
    rmm = Rmm()
    host = CcaHost(rmm, object_transport(mailbox.exchange), layout=layout, pdev_id=0,
                   tdi_id=0, hash_algo=hash_algo)
    return Bench(dev, bars, rmm, host, CcaRealm(host))
