"""Arm CCA: the RMM emulator (RMI/RSI for device assignment), the RHI layouts, and the
guest-less host and realm drivers.  See docs/platform-cca.md."""

from .abi import RmiFid, RmiPdevState, RmiStatus, RmiVdevState, RsiFid, RsiStatus
from .rhi import DEFAULT_LAYOUT, LAYOUTS, RhiLayout
from .rmm import Rmm


def make_firmware(rhi_layout: str = DEFAULT_LAYOUT) -> Rmm:
    """What ``serve --platform cca [--rhi-layout L]`` puts behind the firmware port
    (docs/firmware-port.md)."""
    return Rmm(rhi_layout=rhi_layout)


__all__ = ["LAYOUTS", "RhiLayout", "RmiFid", "RmiPdevState", "RmiStatus", "RmiVdevState",
           "Rmm", "RsiFid", "RsiStatus", "make_firmware"]
