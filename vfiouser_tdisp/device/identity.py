"""The identity a device presents, and the ``certs`` command that exports it.

The leaf's PCIe CMA SAN is read from the DSM's config space the way Linux
reads it before comparing (``pci_cma_construct_san``, drivers/pci/cma.c):
Vendor/Device/Revision/Class Code from the header, Subsystem IDs when the
header is type 0, the serial from the Device Serial Number extended
capability (``pci_get_dsn``).  The cache directory is the caller's: entry
points resolve it with :mod:`vfiouser_tdisp.paths` and hand it down.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..pci.config import ConfigSpace
from ..spdm.identity import DeviceIdentity, IdentityError, PcieSan, leaf_san_text

if TYPE_CHECKING:
    from .device import Device

PCI_EXT_CAP_ID_DSN = 0x0003
PCI_HEADER_TYPE_MASK = 0x7F
PCI_HEADER_TYPE_NORMAL = 0


def _dsn(config: ConfigSpace) -> int | None:
    """The DSN capability's serial, walking the extended capability list from
    0x100 (PCIe r6.x §7.6.3, §7.9.3), as pci_get_dsn does."""
    offset, seen = 0x100, set()
    while offset and offset not in seen and offset + 12 <= 0x1000:
        seen.add(offset)
        header = config.get(offset, 4)
        if header == 0 or header == 0xFFFFFFFF:
            return None
        if header & 0xFFFF == PCI_EXT_CAP_ID_DSN:
            return config.get(offset + 4, 4) | (config.get(offset + 8, 4) << 32)
        offset = (header >> 20) & 0xFFC
    return None


def san_from_config(config: ConfigSpace) -> PcieSan:
    """The CMA SAN fields as config space holds them."""
    type0 = config.get(0x0E, 1) & PCI_HEADER_TYPE_MASK == PCI_HEADER_TYPE_NORMAL
    return PcieSan(
        vendor_id=config.get(0x00, 2), device_id=config.get(0x02, 2),
        class_code=config.get(0x09, 3), revision=config.get(0x08, 1),
        subsystem_vendor_id=config.get(0x2C, 2) if type0 else None,
        subsystem_id=config.get(0x2E, 2) if type0 else None,
        serial=_dsn(config))


def device_san(device: Device) -> PcieSan:
    return san_from_config(device.dsm.config)


def identity_for_device(device: Device, *,
                        identity_dir: str | os.PathLike[str] | None = None,
                        chain_file: str | os.PathLike[str] | None = None,
                        key_file: str | os.PathLike[str] | None = None) -> DeviceIdentity:
    """The identity ``serve`` presents for ``device`` (and ``certs`` exports).

    ``identity_dir``: where generated identities are cached (see
    :func:`vfiouser_tdisp.paths.identity_dir`); None generates one in memory.
    """
    if (chain_file is None) != (key_file is None):
        raise IdentityError("a certificate chain and its key go together")
    if chain_file is not None and key_file is not None:
        return DeviceIdentity.from_files(Path(chain_file), Path(key_file))
    return DeviceIdentity.generated(
        device_san(device), device.profile.spdm_asym,
        cache_dir=Path(identity_dir) if identity_dir is not None else None,
        label=f"{device.profile.name}.{device.instance}")


def main_certs(args: Any) -> int:
    """``vfiouser-tdisp certs``: export what ``serve`` with the same options presents."""
    from ..paths import identity_dir
    from ..spdm.algorithms import HASHES
    from .device import Device, get_profile

    profile = get_profile(args.profile)
    device = Device(profile)
    try:
        identity = identity_for_device(device, identity_dir=identity_dir(args.cache_dir),
                                       chain_file=args.cert_chain, key_file=args.cert_key)
        asym = args.asym or next((a for a in profile.spdm_asym if identity.for_asym(a)), None)
        hash_name = args.hash or profile.spdm_hash[0]
        if asym is None or identity.for_asym(asym) is None:
            raise IdentityError(f"no chain for {args.asym or 'any profile algorithm'}; the "
                                f"identity has {', '.join(identity.slots)}")
        if hash_name not in HASHES:
            raise IdentityError(f"unknown hash {hash_name!r}; known: {', '.join(HASHES)}")
        written = identity.export(Path(args.out), asym=asym, hash_name=hash_name)
    except IdentityError as exc:
        print(f"vfiouser-tdisp certs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vfiouser-tdisp certs: {exc}", file=sys.stderr)
        return 1
    leaf = identity.for_asym(asym)
    assert leaf is not None
    print(f"{profile.name}: slot 0 = {asym} chain, RootHash {hash_name}")
    print(f"PCIe SAN: {leaf_san_text(leaf.leaf) or '(none: user-supplied chain)'}")
    for path in written:
        print(f"  {path}")
    print(f"check: openssl verify -CAfile {args.out}/root.pem -untrusted "
          f"{args.out}/intermediate.pem {args.out}/leaf.pem")
    return 0
