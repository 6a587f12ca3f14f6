"""Platform-neutral pieces of the guest-less firmware drivers (CCA, TDX, SEV-TIO).

- :data:`DoeTransport` and its two carriers: DMTF's spdm-emu socket
  (:func:`socket_transport`, against ``serve --spdm-port`` or any spdm-emu responder) and
  anything that exchanges whole DOE objects (:func:`object_transport`, e.g. a
  :class:`~vfiouser_tdisp.doe.driver.DoeDriver` on a function's config space);
- :class:`ByteArrayMemory`: guest memory for a :class:`~vfiouser_tdisp.firmware.Firmware`
  without a VM, with a page allocator;
- :func:`assign_bars` over a function's :func:`config_accessors` (or any 32-bit config
  accessors, e.g. a vfio-user client's), and :func:`in_process_device`: a device of this
  project in the same process, its BARs assigned as firmware would, reached through its
  DOE mailbox registers;
- :func:`spdm_chain_certificates`: the certificates of an SPDM certificate chain, for the
  guest's check that the device chain starts at its trusted root.

A firmware emulator never touches the device: its host driver carries each object with
one of these transports (docs/firmware-port.md, ARCHITECTURE.md "The platform").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..doe.protocols import PCI_SIG_VENDOR_ID, build_object, parse_object
from ..firmware import GuestMemoryError
from ..spdm.der import split_der_certificates

PAGE_SIZE = 0x1000

# (DOE object type: 1 SPDM, 2 secured SPDM; payload) -> response payload
DoeTransport = Callable[[int, bytes], bytes]


class TransportError(Exception):
    """The responder did not answer a DOE object."""


def socket_transport(client: Any) -> DoeTransport:
    """Over DMTF's spdm-emu socket (:class:`~vfiouser_tdisp.doe.emu_socket.SpdmEmuClient`)."""
    def exchange(object_type: int, payload: bytes) -> bytes:
        rsp = client.doe(build_object(PCI_SIG_VENDOR_ID, object_type, payload))
        if not rsp:
            raise TransportError("the responder answered with an empty frame")
        return parse_object(rsp)[1]
    return exchange


def object_transport(exchange_object: Callable[[bytes], bytes]) -> DoeTransport:
    """Over anything that exchanges whole DOE objects (a DoeDriver on config space)."""
    def exchange(object_type: int, payload: bytes) -> bytes:
        return parse_object(exchange_object(build_object(PCI_SIG_VENDOR_ID, object_type,
                                                         payload)))[1]
    return exchange


class ByteArrayMemory:
    """Guest memory backed by a bytearray, with a bump allocator for pages."""

    def __init__(self, size: int = 4 << 20, base: int = 0x8000_0000) -> None:
        self.base, self.data = base, bytearray(size)
        self._next = base

    def _span(self, addr: int, size: int) -> int:
        off = addr - self.base
        if off < 0 or size < 0 or off + size > len(self.data):
            raise GuestMemoryError(f"{size} bytes at {addr:#x} outside guest memory")
        return off

    def read(self, addr: int, size: int) -> bytes:
        off = self._span(addr, size)
        return bytes(self.data[off:off + size])

    def write(self, addr: int, data: bytes) -> None:
        off = self._span(addr, len(data))
        self.data[off:off + len(data)] = data

    def alloc(self, size: int = PAGE_SIZE, align: int = PAGE_SIZE) -> int:
        addr = (self._next + align - 1) & ~(align - 1)
        self._span(addr, size)
        self._next = addr + size
        return addr


def assign_bars(read32: Callable[[int], int], write32: Callable[[int, int], None],
                base: int = 0xE000_0000) -> dict[int, tuple[int, int]]:
    """Size and place every memory BAR, then set Memory Space and Bus Master Enable, as
    firmware does before a TDI is locked (a TDI is locked only while it decodes)."""
    bars: dict[int, tuple[int, int]] = {}
    index = 0
    while index < 6:
        reg = 0x10 + 4 * index
        write32(reg, 0xFFFF_FFFF)
        low = read32(reg)
        if low == 0:
            index += 1
            continue
        is64 = (low >> 1) & 3 == 2
        mask = low & ~0xF
        if is64:
            write32(reg + 4, 0xFFFF_FFFF)
            mask |= read32(reg + 4) << 32
        size = (~mask + 1) & ((1 << 64) - 1 if is64 else 0xFFFF_FFFF)
        base = (base + size - 1) & ~(size - 1)
        write32(reg, base & 0xFFFF_FFFF)
        if is64:
            write32(reg + 4, base >> 32)
        bars[index] = (base, size)
        base += size
        index += 2 if is64 else 1
    write32(0x04, read32(0x04) | 0x6)
    return bars


def config_accessors(fn: Any) -> tuple[Callable[[int], int], Callable[[int, int], None]]:
    """32-bit little-endian config space accessors of a :class:`~vfiouser_tdisp.pci.function
    .PciFunction` in this process (what a DOE mailbox driver and :func:`assign_bars` use)."""
    def read32(off: int) -> int:
        return int.from_bytes(fn.config.read(off, 4), "little")

    def write32(off: int, value: int) -> None:
        fn.config.write(off, value.to_bytes(4, "little"))
    return read32, write32


def in_process_device(profile: str = "virtio-rng",
                      identity_dir: str | os.PathLike[str] | None = None,
                      identity: Any = None) -> tuple[DoeTransport, Any]:
    """A device of this project in process, reached through its DOE mailbox registers."""
    from ..device.device import Device, get_profile
    from ..doe.driver import DoeDriver

    dev = Device(get_profile(profile), identity=identity,
                 identity_options={"identity_dir": identity_dir})
    read32, write32 = config_accessors(dev.dsm)
    assign_bars(read32, write32)
    _ = dev.identity   # generate before the first exchange
    return object_transport(DoeDriver(read32, write32, 0x100).exchange), dev


def spdm_chain_certificates(chain: bytes) -> list[x509.Certificate]:
    """The DER certificates of an SPDM certificate chain (DSP0274: Length, reserved,
    RootHash, certificates), root first; the RootHash size is found by checking it.
    ValueError if it is not one."""
    for hash_size, algo in ((32, "sha256"), (48, "sha384"), (64, "sha512")):
        try:
            certs = split_der_certificates(chain[4 + hash_size:])
        except ValueError:
            continue
        if certs and hashlib.new(algo, certs[0].public_bytes(Encoding.DER)).digest() == \
                chain[4:4 + hash_size]:
            return certs
    raise ValueError("not an SPDM certificate chain")
