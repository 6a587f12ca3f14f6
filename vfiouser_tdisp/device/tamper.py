"""`serve --tamper`: a device whose evidence is not what its owner vouches for.

For the relying party's negative path (issue 10): the evidence is altered at
its source, the device, so the platform firmware attests it faithfully (its
digests match) and only the verifier's own checks can refuse it:

* ``measurements`` -- the device reports the measurements of another firmware
  image (index 1 changes), so they differ from the reference values;
* ``report`` -- the interface report's first MMIO range points 4 GiB above
  where the function's BAR is, so it lies outside every BAR the guest sees.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..events import emit
from ..tdisp.report import REPORT_SHIFT_PAGES, shifted_report

if TYPE_CHECKING:
    from .device import Device

KINDS = ("measurements", "report")


def apply_tamper(dev: Device, kinds: Iterable[str]) -> None:
    for kind in kinds:
        if kind == "measurements":
            dev.measurements.tampered = True
        elif kind == "report":
            dev.tdisp.report_filter = shifted_report
        else:
            raise ValueError(f"unknown tamper kind {kind!r} (known: {', '.join(KINDS)})")
        emit("device.tamper", device=dev.profile.name, instance=dev.instance, evidence=kind)


__all__ = ["KINDS", "REPORT_SHIFT_PAGES", "apply_tamper", "shifted_report"]
