"""Shared pieces for the Arm CCA RMM tests: a device in process with its BARs assigned
(as firmware would), reached through its DOE mailbox registers, and an RMM with the
guest-less host and realm drivers on top."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.doe.driver import DoeDriver
from vfiouser_tdisp.spdm.identity import DeviceIdentity
from vfiouser_tdisp.tsm import platform
from vfiouser_tdisp.tsm.cca.host import CcaHost, CcaRealm
from vfiouser_tdisp.tsm.cca.rmm import Rmm

DOE_CAP = 0x100            # the DSM's DOE capability (device/device.py)
_IDENTITY: dict[str, DeviceIdentity] = {}


def device_identity(cache: Path) -> DeviceIdentity:
    if "id" not in _IDENTITY:
        dev = Device(get_profile("virtio-rng"), identity_options={"identity_dir": cache})
        _IDENTITY["id"] = dev.identity
    return _IDENTITY["id"]


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
    read32, write32 = platform.config_accessors(dev.dsm)
    bars = platform.assign_bars(read32, write32) if assign_bars else {}
    mailbox = DoeDriver(read32, write32, DOE_CAP)
    rmm = Rmm()
    host = CcaHost(rmm, platform.object_transport(mailbox.exchange), layout=layout, pdev_id=0,
                   tdi_id=0, hash_algo=hash_algo)
    return Bench(dev, bars, rmm, host, CcaRealm(host))
