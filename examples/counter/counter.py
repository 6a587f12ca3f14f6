"""An example personality: a doorbell counter, written outside the package.

Loaded by ``counter.toml`` (``personality_file = "counter.py"``); run it with

    vfiouser-tdisp serve --socket /tmp/counter.sock --profile examples/counter/counter.toml

The profile gives the IDs, a 4 KiB BAR2 holding the MSI-X table (4 vectors), a
64 KiB memory BAR4, the SPDM algorithms and one more measurement; this class
declares only what is its own: BAR0 and what its registers do.

BAR0 (32-bit, 4 KiB)::

    0x00  MAGIC     RO  the profile's extra.magic (default 0x434e5452, "CNTR")
    0x04  SCRATCH   RW
    0x08  COUNT     RO  doorbell writes since reset
    0x0C  DOORBELL  WO  writing V counts and raises MSI-X vector V (if V < vectors)

Everything else in BAR0 reads as zero and ignores writes.
"""

from __future__ import annotations

import struct

from vfiouser_tdisp.device.personality import Personality, register
from vfiouser_tdisp.events import emit
from vfiouser_tdisp.pci.function import Bar, BarKind, IrqIndex, PciFunction, RegisterArea

MAGIC, SCRATCH, COUNT, DOORBELL = 0x00, 0x04, 0x08, 0x0C
DEFAULT_MAGIC = 0x434E5452


@register
class Counter(Personality):
    NAME = "example-counter"
    DESCRIPTION = "doorbell counter with MSI-X (examples/counter)"
    # Defaults; the profile's vendor_id / device_id / class_code override them.
    VENDOR_ID = 0x1B36
    DEVICE_ID = 0x10F1
    CLASS_CODE = 0xFF0000
    # No stock driver binds to it: run only the generic guest checks.
    GUEST_CHECKS = ("device", "ids", "tee_io", "doe_features", "ide_cap")

    def __init__(self) -> None:
        super().__init__()
        self.scratch = 0
        self.count = 0

    def build(self, fn: PciFunction) -> None:
        bar0 = fn.add_bar(Bar(0, 0x1000, BarKind.MEM32))
        bar0.add(0, RegisterArea(0x10, self._read, self._write))

    @property
    def magic(self) -> int:
        value = (self.profile.extra if self.profile else {}).get("magic", DEFAULT_MAGIC)
        return int(value) & 0xFFFF_FFFF  # type: ignore[call-overload]

    def _read(self, offset: int, size: int) -> bytes:
        regs = struct.pack("<IIII", self.magic, self.scratch, self.count, 0)
        return regs[offset:offset + size]

    def _write(self, offset: int, data: bytes) -> None:
        regs = bytearray(struct.pack("<IIII", self.magic, self.scratch, self.count, 0))
        regs[offset:offset + len(data)] = data
        _, self.scratch, _, doorbell = struct.unpack("<IIII", regs)
        if offset <= DOORBELL < offset + len(data):
            self.count += 1
            fn = self.function
            assert fn is not None
            vectors = fn.msix.vectors if fn.msix else 0
            if doorbell < vectors:
                fn.irqs.trigger(IrqIndex.MSIX, doorbell)
            emit("example_counter.doorbell", function=fn.name, vector=doorbell,
                 count=self.count)

    def reset(self, cause: str) -> None:
        self.scratch = 0
        self.count = 0
