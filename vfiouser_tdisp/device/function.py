"""Compatibility: the PCI function model lives in :mod:`vfiouser_tdisp.pci.function`."""

from ..pci.function import *  # noqa: F403
from ..pci.function import (  # noqa: F401
    NUM_REGIONS,
    PCI_BASE_ADDRESS_0,
    REGION_CONFIG,
    REGION_ROM,
    Bar,
    BarKind,
    DmaError,
    DmaSpace,
    GatedDma,
    Interrupts,
    IrqIndex,
    MemoryArea,
    NoDma,
    PciFunction,
    RegionAccessError,
    RegisterArea,
)
