"""Intel TDX Connect: the TDX module emulator (host SEAMCALLs, TDCALLs), the P-SEAMLDR
(TD-preserving module updates), update images, and guest-less host and TD drivers.
See docs/platform-tdx.md."""

from .abi import SeamcallLeaf, SeamldrLeaf, SeamldrStatus, TdcallLeaf, TdxStatus
from .model import HostTdiLeaf
from .module import TdxModule


def make_firmware() -> TdxModule:
    """What ``serve --platform tdx`` puts behind the firmware port (docs/firmware-port.md)."""
    return TdxModule()


__all__ = ["HostTdiLeaf", "SeamcallLeaf", "SeamldrLeaf", "SeamldrStatus", "TdcallLeaf",
           "TdxModule", "TdxStatus", "make_firmware"]
