"""The call interface between a firmware port and a platform-firmware emulator.

Real platforms reach their security firmware by instructions a TCG guest cannot
execute (SMC for the Arm RMM, SEAMCALL/TDCALL for the TDX module, the PSP
mailbox for AMD).  This project replaces them with a paravirtual PCI function,
the *firmware port* (device layer), which turns a doorbell write into one
:class:`FirmwareCall` and hands it to a :class:`Firmware` implementation (the
RMM, TDX module or PSP emulator in ``tsm/``).  The port is a lower layer than
the emulators, so this interface lives below both and neither imports the
other: the caller that assembles a device hands the firmware down.

Buffers named by a call (RMI parameter pages, dev_comm_data, request/response
pages) live in guest memory; the firmware reaches them through
:class:`GuestMemory`, which the port backs with the device's DMA, as real
firmware reaches the pages the host hands it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class CallClass(enum.IntEnum):
    """Who is calling: the host kernel or the confidential guest (TVM)."""

    HOST = 0   # RMI, host SEAMCALLs, PSP host commands
    GUEST = 1  # RSI and RHI (through RSI_HOST_CALL), TDCALL/TDG, SNP guest requests


class GuestMemoryError(Exception):
    """A guest-memory access failed (unmapped address, DMA refused)."""


class GuestMemory(Protocol):
    def read(self, addr: int, size: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


@dataclass(frozen=True)
class FirmwareCall:
    cls: CallClass
    fid: int                # function id / leaf / command number as the platform numbers it
    args: tuple[int, ...]   # argument registers (u64 each), in the platform's order


class Firmware(Protocol):
    """A platform-firmware emulator as the firmware port sees it."""

    abi_id: int        # identifies the platform ABI to the guest module
    abi_version: int

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        """Run one call; return the result registers, status first."""
        ...
