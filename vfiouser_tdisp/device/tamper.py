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

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..events import emit
from ..tdisp import messages as m

if TYPE_CHECKING:
    from .device import Device

KINDS = ("measurements", "report")
REPORT_SHIFT_PAGES = 1 << 20  # 4 GiB in 4 KiB pages


def shifted_report(report: m.TDI_REPORT_STRUCTURE) -> m.TDI_REPORT_STRUCTURE:
    """The report with its first MMIO range moved REPORT_SHIFT_PAGES up."""
    if not report.mmio_range:
        return report
    first = report.mmio_range[0]
    moved = dataclasses.replace(first, first_page=first.first_page + REPORT_SHIFT_PAGES)
    return dataclasses.replace(report, mmio_range=[moved, *report.mmio_range[1:]])


def apply_tamper(dev: Device, kinds: Iterable[str]) -> None:
    for kind in kinds:
        if kind == "measurements":
            dev.measurements.tampered = True
        elif kind == "report":
            dev.tdisp.report_filter = shifted_report
        else:
            raise ValueError(f"unknown tamper kind {kind!r} (known: {', '.join(KINDS)})")
        emit("device.tamper", device=dev.profile.name, instance=dev.instance, evidence=kind)


__all__ = ["KINDS", "apply_tamper", "shifted_report"]
