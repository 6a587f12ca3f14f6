"""Arm CCA: the RMM emulator (RMI/RSI for device assignment), the RHI layouts, and the
guest-less host and realm drivers.  See docs/platform-cca.md."""

from .abi import RmiFid, RmiPdevState, RmiStatus, RmiVdevState, RsiFid, RsiStatus
from .rhi import LAYOUTS, RhiLayout
from .rmm import Rmm


def make_firmware() -> Rmm:
    """What ``serve --platform cca`` puts behind the firmware port (docs/firmware-port.md)."""
    return Rmm()


__all__ = ["LAYOUTS", "RhiLayout", "RmiFid", "RmiPdevState", "RmiStatus", "RmiVdevState",
           "Rmm", "RsiFid", "RsiStatus", "make_firmware"]
