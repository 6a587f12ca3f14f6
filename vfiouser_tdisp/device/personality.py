"""Device personalities: what a function *does*, declared in one small class.

The security machinery (DOE, SPDM, IDE, TDISP) is generic; a personality says
which IDs the function has, which BARs, how many MSI-X vectors and what the
registers inside the BARs do.  Register a new one with :func:`register` and
select it by name with ``--profile``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, ClassVar

from ..pci.function import PciFunction

if TYPE_CHECKING:
    from .device import DeviceProfile


class Personality:
    NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str] = ""
    VENDOR_ID: ClassVar[int]
    DEVICE_ID: ClassVar[int]
    CLASS_CODE: ClassVar[int]
    REVISION: ClassVar[int] = 0
    SUBSYSTEM_VENDOR_ID: ClassVar[int] = 0
    SUBSYSTEM_ID: ClassVar[int] = 0
    # guest-scripts/check_<name>.sh run by `vfiouser-tdisp run` for this personality
    GUEST_CHECKS: ClassVar[tuple[str, ...]] = (
        "device", "ids", "tee_io", "doe_features", "doe_dmesg", "doe_spdm", "ide_cap")

    def __init__(self) -> None:
        self.function: PciFunction | None = None
        # The profile the device was built from (set before build(); its
        # ``extra`` table carries settings of the personality's own).
        self.profile: DeviceProfile | None = None

    def build(self, fn: PciFunction) -> None:
        """Declare BARs, MSI-X and personality capabilities on ``fn``."""
        raise NotImplementedError

    def reset(self, cause: str) -> None:
        """Return the personality's own state to power-on values."""

    def non_tee_ranges(self) -> list[tuple[int, int, int]]:
        """(bar, offset, size) ranges that hold no TEE data (for TDISP reports)."""
        return []

    def updatable_ranges(self) -> list[tuple[int, int, int]]:
        """(bar, offset, size) ranges whose TEE/non-TEE attribute a TSM may change
        in RUN with SET_MMIO_ATTRIBUTE_REQUEST (reported IS_MEM_ATTR_UPDATABLE)."""
        return []


_REGISTRY: dict[str, type[Personality]] = {}


def register(cls: type[Personality]) -> type[Personality]:
    _REGISTRY[cls.NAME] = cls
    return cls


def personality_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_personality(name: str) -> type[Personality]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown personality {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


BUILTIN_MODULES = ("dma_test", "virtio_rng")


def _load_builtin() -> None:
    """Import the built-in personality modules (they register themselves)."""
    for name in BUILTIN_MODULES:
        full = f"{__package__}.{name}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full)
