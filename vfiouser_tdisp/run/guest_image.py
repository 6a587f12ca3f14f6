"""The guest image outside a checkout: where an installed package keeps its
guest-scripts/, and `vfiouser-tdisp initramfs`, which builds the image `run`
boots for a QEMU command of the user's own."""

from __future__ import annotations

import argparse
import importlib.metadata
import site
import sys
from pathlib import Path

DATA_DIR = "share/vfiouser-tdisp/guest-scripts"  # pyproject's [tool.setuptools.data-files]


def installed_guest_scripts(prefix: str = sys.prefix) -> Path:
    """guest-scripts/ as installed data files, whatever the install scheme.

    The distribution's RECORD names every installed file relative to its
    site-packages, so ``locate_file`` finds the data files of a ``pip install
    --user``, ``--prefix P``, ``--target`` or venv install alike.  Failing that,
    ``<prefix>/share/...`` under ``prefix`` and the user base.
    """
    try:
        dist = importlib.metadata.distribution("vfiouser-tdisp")
        for entry in dist.files or ():
            if entry.as_posix().endswith(f"{DATA_DIR}/init"):
                found = Path(str(dist.locate_file(entry))).resolve().parent
                if (found / "init").is_file():
                    return found
    except importlib.metadata.PackageNotFoundError:
        pass
    for base in (prefix, site.getuserbase()):
        candidate = Path(base) / DATA_DIR
        if (candidate / "init").is_file():
            return candidate
    return Path(prefix) / DATA_DIR  # not found: building the image names the missing file


def main_initramfs(args: argparse.Namespace) -> int:
    """`vfiouser-tdisp initramfs --out FILE` (busybox and modules from the
    provisioned cache, guest-scripts/ from this package)."""
    from .initramfs import build_initramfs
    from .provision import cache_dir, read_stamp

    prov = read_stamp(cache_dir(args.cache_dir))
    if prov is None or prov.missing():
        print(f"vfiouser-tdisp initramfs: nothing provisioned in {cache_dir(args.cache_dir)}: "
              "run `vfiouser-tdisp setup` first", file=sys.stderr)
        return 1
    try:
        out = build_initramfs(prov.busybox, prov.modules, Path(args.out))
    except OSError as exc:
        print(f"vfiouser-tdisp initramfs: {exc}", file=sys.stderr)
        return 1
    print(f"{out} (kernel {prov.kernel_version}: {prov.kernel})")
    return 0


__all__ = ["DATA_DIR", "installed_guest_scripts", "main_initramfs"]
