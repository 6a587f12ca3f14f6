"""The device's SPDM measurements (DSP0274 §10.11, DMTF measurement format).

Index  DMTF type                       content
1      0x01 mutable firmware            digest of the firmware identity (package,
                                        personality, firmware version)
2      0x06 firmware version number     raw: the version string
3      0x02 hardware configuration      digest of what the hardware is: IDs, BAR
                                        sizes/kinds, capability chains, IDE counts
4      0x03 firmware configuration      digest of the TDISP-relevant configuration
                                        (TdispResponder.configuration_digest():
                                        BAR addresses, command, MSI-X, lock state)

Indices 1-3 are TCB components (the TCB summary hash covers them); 4 changes
with the device's configuration, so a TSM sees a BAR reprogrammed or a TDI
locked in its measurement.  A profile adds blocks of its own from index 5
(``[[measurements]]`` in a profile file).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..faults import ARMED, FaultSet
from ..spdm.algorithms import HashAlgo
from ..spdm.messages import MeasurementBlock
from ..wire import Struct, tail, u8, u16, u32, u64

if TYPE_CHECKING:
    from .device import Device

FIRMWARE_IDENTITY = b"vfiouser-tdisp virtual TDISP device firmware"


# The hardware configuration record (ours: only its digest leaves the device) is
# the device record, then per function its record, its BARs and its capabilities.
@dataclass(frozen=True)
class HwDeviceRecord(Struct):
    functions: int = u8()
    ide_link_streams: int = u8()
    ide_selective_streams: int = u8()
    ide_assoc_blocks: int = u8()


@dataclass(frozen=True)
class HwFunctionRecord(Struct):
    vendor_id: int = u16()
    device_id: int = u16()
    class_code: int = u32()
    revision: int = u8()
    subsystem_vendor_id: int = u16()
    subsystem_id: int = u16()
    devfn: int = u8()


@dataclass(frozen=True)
class HwBarRecord(Struct):
    index: int = u8()
    size: int = u64()
    kind: bytes = tail()   # BarKind name


@dataclass(frozen=True)
class HwCapabilityRecord(Struct):
    cap_id: int = u16()
    offset: int = u16()
    size: int = u16()
    extended: int = u8()


class DeviceMeasurements:
    def __init__(self, device: Device) -> None:
        self.device = device
        # `serve --tamper measurements` (device/tamper.py): a firmware image other
        # than the one the device's reference values describe.
        self.tampered = False
        # Fault injection (faults.py): measurements-change.
        self.faults: FaultSet = ARMED

    def _changed(self) -> bool:
        """One measurement read: has an armed measurements-change fault taken effect
        (more than its ``after`` reads so far)?"""
        fault = self.faults.peek("measurements-change")
        if fault is None:
            return False
        fault.state["reads"] = fault.state.get("reads", 0) + 1
        if fault.state["reads"] <= fault.args["after"]:
            return False
        self.faults.fired_sticky(fault, f"{self.device.profile.name}{self.device.instance}")
        return True

    def firmware_image(self, changed: bool = False) -> bytes:
        p = self.device.profile
        parts = [FIRMWARE_IDENTITY, p.personality.encode(), p.firmware_version.encode()]
        return b"|".join(parts + [b"tampered"] if self.tampered or changed else parts)

    def hardware_configuration(self) -> bytes:
        out = bytearray()
        p = self.device.profile
        out += HwDeviceRecord(p.functions, p.ide_link_streams, p.ide_selective_streams,
                              p.ide_assoc_blocks).pack()
        for fn in self.device.functions:
            out += HwFunctionRecord(fn.vendor_id, fn.device_id, fn.class_code, fn.revision,
                                    fn.subsystem_vendor_id, fn.subsystem_id, fn.devfn).pack()
            for bar in fn.bars:
                if bar is not None:
                    out += HwBarRecord(bar.index, bar.size, bar.kind.name.encode()).pack()
            for cap in fn.config.capabilities:
                out += HwCapabilityRecord(cap.CAP_ID, cap.offset, cap.size,
                                          int(cap.EXTENDED)).pack()
        return bytes(out)

    def tdisp_configuration(self) -> bytes:
        return self.device.tdisp.configuration_digest()

    def measurement_blocks(self, hash_algo: HashAlgo | None,
                           raw_requested: bool) -> list[MeasurementBlock]:
        def value(data: bytes) -> tuple[bytes, bool]:
            if hash_algo is None or raw_requested:
                return data, True
            return hash_algo.digest(data), False

        blocks = []
        changed = self._changed()
        for index, vtype, data, tcb in (
            (1, 0x01, self.firmware_image(changed), True),
            (3, 0x02, self.hardware_configuration(), True),
            (4, 0x03, self.tdisp_configuration(), False),
        ):
            v, is_raw = value(data)
            blocks.append(MeasurementBlock(index, vtype, v, is_raw, tcb))
        version = self.device.profile.firmware_version.encode()
        blocks.insert(1, MeasurementBlock(2, 0x06, version, True, True))
        for spec in sorted(self.device.profile.measurements, key=lambda s: s.index):
            if spec.raw:
                blocks.append(MeasurementBlock(spec.index, spec.value_type, spec.data, True,
                                               spec.tcb))
            else:
                v, is_raw = value(spec.data)
                blocks.append(MeasurementBlock(spec.index, spec.value_type, v, is_raw, spec.tcb))
        return blocks


def digest(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()
