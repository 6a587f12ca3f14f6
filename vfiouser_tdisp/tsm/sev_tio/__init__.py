"""AMD SEV-TIO: the PSP emulator (TIO commands, TIO guest messages), its guest-less host
and SNP-guest drivers.  See docs/platform-sev-tio.md."""

from .abi import MmioValidateStatus, SevCmd, SevRet, TioMsgType
from .psp import Psp


def make_firmware() -> Psp:
    """What ``serve --platform sev-tio`` puts behind the firmware port (docs/firmware-port.md)."""
    return Psp()


__all__ = ["MmioValidateStatus", "Psp", "SevCmd", "SevRet", "TioMsgType", "make_firmware"]
