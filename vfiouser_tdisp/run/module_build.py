"""Build the guest module (``guest-module/``, vtfw.ko) against the guest kernel.

The build runs in a private Debian trixie tree of its own (``<cache>/modbuild``),
made with mmdebstrap like the QEMU tree (provision.py) and never touching the
host's apt: ``linux-headers-<kernel release>`` from trixie-backports, plus
binutils and make, which ``--no-install-recommends`` would leave out (gcc then
fails with "cannot execute 'as'").  objtool reads /proc, so ``make`` runs under
``unshare --mount`` with proc mounted in the tree and chroot.  The stripped
module is cached under ``<cache>/module/<release>/<source hash>/vtfw.ko``: a
second call with the same kernel release and the same sources only hashes the
sources.  One build at a time per cache (a lock file).

Kept out of the QEMU tree on purpose: the headers, compiler and binutils add
about 250 MB that QEMU does not need, and rebuilding one never disturbs the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .provision import (
    QEMU_RELEASE,
    TREE_RELEASE,
    Progress,
    Provisioned,
    ProvisionError,
    _need_root,
    _replace_dir,
    _run,
    ensure_mmdebstrap,
    parse_apt_mirrors,
    progress,
)

MODULE_NAME = "vtfw"
BUILD_TREE = "modbuild"
MODULE_CACHE = "module"
SOURCE_SUFFIXES = (".c", ".h")
SOURCE_FILES = ("Kbuild", "Makefile")
BUILD_TIMEOUT = 600.0


def module_source() -> Path:
    """The repository's guest-module/ (source checkout or editable install), else the
    copy a wheel installs under <prefix>/share/vfiouser-tdisp/guest-module."""
    source = Path(__file__).resolve().parents[2] / "guest-module"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "vfiouser-tdisp" / "guest-module"


def source_files(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.is_file()
                  and (p.suffix in SOURCE_SUFFIXES or p.name in SOURCE_FILES))


def source_hash(src: Path) -> str:
    """Hash over the names and contents of the module's sources (16 hex digits)."""
    h = hashlib.sha256()
    for p in source_files(src):
        data = p.read_bytes()
        h.update(f"{p.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def headers_package(kver: str) -> str:
    return f"linux-headers-{kver}"


def build_tree_ready(tree: Path, kver: str) -> bool:
    return (tree / "usr/src" / headers_package(kver) / "Makefile").exists() \
        and (tree / "usr/bin/make").exists() and (tree / "usr/bin/as").exists()


def build_module_tree(tree: Path, kver: str, mirror: str, log: Progress = progress) -> None:
    """mmdebstrap a trixie tree with the kernel's headers, binutils and make."""
    _need_root("building the module build tree")
    ensure_mmdebstrap(log)
    tmp = tree.with_name(f".{tree.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    # openssl: the guest's relying party takes it from this tree (run/guest_tools.py)
    pkgs = f"{headers_package(kver)} binutils make openssl"
    hook = (f'chroot "$1" apt-get install -y -q --no-install-recommends -t {QEMU_RELEASE} '
            f'{pkgs}')
    try:
        _run(["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
              f"--customize-hook={hook}", TREE_RELEASE, str(tmp),
              f"deb {mirror} {TREE_RELEASE} main", f"deb {mirror} {QEMU_RELEASE} main"],
             f"building the module build tree ({pkgs}) in {tree} (under a minute)", log,
             relay=lambda line: line.startswith("I: "))
        if not build_tree_ready(tmp, kver):
            raise ProvisionError(f"mmdebstrap finished but {tmp} lacks the headers of {kver}, "
                                 "make or as")
        _replace_dir(tmp, tree)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_in_tree(tree: Path, kver: str, workdir: str, log: Progress) -> None:
    """make modules + strip inside the tree, /proc mounted for objtool, in a private
    mount namespace (the mount vanishes with it, also when the build is killed)."""
    kdir = f"/usr/src/{headers_package(kver)}"
    script = (f'mount -t proc proc "{tree}/proc" && '
              f'chroot "{tree}" sh -c "make -C {kdir} M={workdir} modules && '
              f'strip --strip-debug {workdir}/{MODULE_NAME}.ko"')
    _run(["unshare", "--mount", "--fork", "sh", "-c", script],
         f"building {MODULE_NAME}.ko against {kver}", log, timeout=BUILD_TIMEOUT)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".module-build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_module(root: Path, kver: str, digest: str) -> Path:
    return root / MODULE_CACHE / kver / digest / f"{MODULE_NAME}.ko"


def ensure_module(prov: Provisioned, src: Path | None = None,
                  log: Progress = progress) -> Path:
    """The guest module built for ``prov``'s kernel: from the cache, else built now."""
    src = src or module_source()
    if not (src / "Kbuild").exists():
        raise ProvisionError(f"no guest module sources in {src}")
    root = Path(prov.cache)
    kver = prov.kernel_version
    digest = source_hash(src)
    ko = cached_module(root, kver, digest)
    if ko.exists():
        return ko
    with _locked(root):
        if ko.exists():  # another process built it while we waited
            return ko
        tree = root / BUILD_TREE
        if not build_tree_ready(tree, kver):
            mirrors = parse_apt_mirrors()
            if not mirrors:
                raise ProvisionError("no Debian mirror found in this machine's apt "
                                     "configuration")
            build_module_tree(tree, kver, mirrors[0], log)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"{MODULE_NAME}-", dir=tree / "tmp"))
        try:
            for p in source_files(src):
                shutil.copy(p, work / p.name)
            _make_in_tree(tree, kver, "/" + str(work.relative_to(tree)), log)
            ko.parent.mkdir(parents=True, exist_ok=True)
            part = ko.with_name(ko.name + ".partial")
            shutil.copy(work / f"{MODULE_NAME}.ko", part)
            os.replace(part, ko)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"{MODULE_NAME}.ko for {kver} built in {time.monotonic() - started:.1f} s "
            f"({ko.stat().st_size} bytes): {ko}")
        return ko


__all__ = ["cached_module", "ensure_module", "module_source", "source_hash"]
