"""RHI device-assignment host calls: the two published layouts (firmware-abi.md C.7).

The realm sends RHI calls through RSI_HOST_CALL (gprs[0] = function id, gprs[1..]
arguments); the *host* answers them (gprs[0] = status, gprs[1] = value).  Two layouts
are published and they disagree:

* ``rhi-1.0-bet1`` -- Arm's RHI 1.0-bet1 as the cca-rmm-acs tests it (default);
* ``linux-rfc-v4`` -- the Linux RFC v4 guest (``arch/arm64/include/asm/rhi.h``).

They differ in the GET_MEASUREMENTS / GET_INTERFACE_REPORT numbers, the object ids,
the OBJECT_READ register order and the measurement parameter block.  Everything
layout-specific is a field of :class:`RhiLayout`; the host's handlers (host.py) and
the realm side read only that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ...wire import Struct, raw, u64
from .abi import RhiDaFeature, RmiDevCommObject


class RhiObject(enum.Enum):
    """The objects a realm can read, independent of their number in a layout."""

    VCA = "VCA"
    CERTIFICATE = "CERTIFICATE"
    MEASUREMENT = "MEASUREMENT"
    INTERFACE_REPORT = "INTERFACE_REPORT"
    EXTENSION_EVIDENCE = "EXTENSION_EVIDENCE"


# Which host cache object (rmi_dev_comm_exit.cache_obj_id) serves each RHI object.
CACHE_OBJECT = {
    RhiObject.VCA: RmiDevCommObject.VCA,
    RhiObject.CERTIFICATE: RmiDevCommObject.CERTIFICATE,
    RhiObject.MEASUREMENT: RmiDevCommObject.MEASUREMENTS,
    RhiObject.INTERFACE_REPORT: RmiDevCommObject.INTERFACE_REPORT,
}


@dataclass(frozen=True)
class AcsMeasureParams(Struct):
    """[MODEL] RHI 1.0-bet1 GET_MEASUREMENTS parameters (unpublished): read like
    rmi_vdev_measure_params -- flags (RAW b0) @0, nonce[32] @0x100."""

    flags: int = u64()
    _pad_08: bytes = raw(0xF8)
    nonce: bytes = raw(32)


@dataclass(frozen=True)
class LinuxMeasureParams(Struct):
    """Linux RFC v4 ``struct rhi_vdev_measurement_params`` (768 B): flags (SIGNED b0,
    RAW b1, EXCHANGE b2) @0, indices[32] @0x100, nonce[32] @0x200."""

    flags: int = u64()
    _pad_08: bytes = raw(0xF8)
    indices: bytes = raw(32)
    _pad_120: bytes = raw(0xE0)
    nonce: bytes = raw(32)
    _pad_220: bytes = raw(0xE0)


@dataclass(frozen=True)
class RhiLayout:
    name: str
    get_measurements: int
    get_interface_report: int
    objects: dict[int, RhiObject]
    # OBJECT_READ: which gpr (1-based argument index) holds what
    read_buffer: int
    read_max_len: int
    read_offset: int
    measure_params: type[Struct]
    measure_raw_bit: int
    base_features: int

    def object_id(self, obj: RhiObject) -> int:
        return next(k for k, v in self.objects.items() if v is obj)


RHI_1_0_BET1 = RhiLayout(
    name="rhi-1.0-bet1",
    get_measurements=0xC5000052,
    get_interface_report=0xC5000053,
    objects={0: RhiObject.VCA, 1: RhiObject.CERTIFICATE, 2: RhiObject.MEASUREMENT,
             3: RhiObject.INTERFACE_REPORT, 4: RhiObject.EXTENSION_EVIDENCE},
    read_buffer=3, read_max_len=4, read_offset=5,
    measure_params=AcsMeasureParams, measure_raw_bit=1 << 0,
    base_features=int(RhiDaFeature.OBJECT_SIZE | RhiDaFeature.OBJECT_READ |
                      RhiDaFeature.VDEV_CONTINUE | RhiDaFeature.GET_MEASUREMENTS |
                      RhiDaFeature.GET_INTERFACE_REPORT | RhiDaFeature.SET_TDI_STATE |
                      RhiDaFeature.ABORT),
)

LINUX_RFC_V4 = RhiLayout(
    name="linux-rfc-v4",
    get_measurements=0xC5000053,
    get_interface_report=0xC5000052,
    objects={1: RhiObject.CERTIFICATE, 2: RhiObject.MEASUREMENT,
             3: RhiObject.INTERFACE_REPORT, 4: RhiObject.VCA},
    read_buffer=5, read_max_len=4, read_offset=3,
    measure_params=LinuxMeasureParams, measure_raw_bit=1 << 1,
    base_features=RHI_1_0_BET1.base_features,
)

LAYOUTS = {layout.name: layout for layout in (RHI_1_0_BET1, LINUX_RFC_V4)}
DEFAULT_LAYOUT = RHI_1_0_BET1.name
