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
from dataclasses import dataclass
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


def _publish(built: Path, ko: Path) -> None:
    """Put a built module in the cache in one step: readers see the old file or the
    whole new one, never a partial copy."""
    ko.parent.mkdir(parents=True, exist_ok=True)
    part = ko.with_name(ko.name + ".partial")
    shutil.copy(built, part)
    os.replace(part, ko)


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
            _publish(work / f"{MODULE_NAME}.ko", ko)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"{MODULE_NAME}.ko for {kver} built in {time.monotonic() - started:.1f} s "
            f"({ko.stat().st_size} bytes): {ko}")
        return ko


# -- your own kernel (run --kernel IMAGE --kernel-build DIR) ----------------------------------
# What the module needs built into the kernel: the PCI/TSM core and DOE (pci_tsm_*,
# pci_tsm_doe_transfer), the TSM class (tsm_register) and loadable modules.
REQUIRED_CONFIG = ("CONFIG_MODULES", "CONFIG_PCI_DOE", "CONFIG_PCI_TSM", "CONFIG_TSM")


@dataclass(frozen=True)
class UserKernel:
    """A kernel the user built: the image to boot, its build tree, its release."""

    image: Path
    build: Path
    release: str


def image_release(image: Path) -> str:
    """The release of an x86 bzImage: the setup header (Linux x86 boot protocol,
    Documentation/arch/x86/boot.rst) has "HdrS" at 0x202 and, at 0x20E, the offset - 0x200
    of a NUL-terminated version string whose first word is the release."""
    try:
        with open(image, "rb") as f:
            head = f.read(0x8000)
    except OSError as exc:
        raise ProvisionError(f"--kernel {image}: {exc.strerror or exc}") from None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise ProvisionError(f"--kernel {image}: not an x86 bzImage (no HdrS header)")
    off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    text = head[off:off + 256].split(b"\0")[0].decode("ascii", "replace")
    if not text.strip():
        raise ProvisionError(f"--kernel {image}: no kernel version string in its header")
    return text.split()[0]


def tree_config(build: Path) -> dict[str, str]:
    cfg: dict[str, str] = {}
    for line in (build / ".config").read_text(errors="replace").splitlines():
        name, eq, value = line.partition("=")
        if eq and name.startswith("CONFIG_"):
            cfg[name] = value
    return cfg


def check_user_kernel(image: Path, build: Path) -> UserKernel:
    """The one-line refusals of `run --kernel IMAGE --kernel-build DIR`."""
    if not (build / "Makefile").is_file():
        raise ProvisionError(f"--kernel-build {build}: not a kernel build tree (no Makefile)")
    if not (build / ".config").is_file():
        raise ProvisionError(f"--kernel-build {build}: no .config (configure and build the "
                             "kernel there first)")
    if not (build / "Module.symvers").is_file():
        raise ProvisionError(f"--kernel-build {build}: no Module.symvers (build the kernel "
                             "there first: the module links against its exported symbols)")
    cfg = tree_config(build)
    missing = [o for o in REQUIRED_CONFIG if cfg.get(o) != "y"]
    if missing:
        raise ProvisionError(f"--kernel-build {build}: the kernel lacks {', '.join(missing)} "
                             "(the guest module needs them built in, =y)")
    rel_file = build / "include/config/kernel.release"
    if not rel_file.is_file():
        raise ProvisionError(f"--kernel-build {build}: no include/config/kernel.release "
                             "(build the kernel there first)")
    tree_release = rel_file.read_text().strip()
    release = image_release(image)
    if release != tree_release:
        raise ProvisionError(f"--kernel {image} is release {release} but --kernel-build "
                             f"{build} is {tree_release}")
    return UserKernel(image.absolute(), build.absolute(), release)


def _srctree(build: Path, root: Path | None) -> Path | None:
    """The source tree a build tree belongs to: itself, its ``source`` link (O= builds),
    or the tree its Makefile includes (Debian's split headers).  ``root``: the private
    tree absolute paths in the Makefile are relative to, if it is built in there."""
    if (build / "include/linux/pci-tsm.h").exists():
        return build
    if (build / "source").is_dir():
        return (build / "source").resolve()
    for line in (build / "Makefile").read_text(errors="replace").splitlines():
        if line.startswith("include ") and line.rstrip().endswith("/Makefile"):
            inc = Path(line.split(None, 1)[1].strip()).parent
            return (root / inc.relative_to("/")) if root and inc.is_absolute() else inc
    return None


def tree_hash(build: Path, root: Path | None = None) -> str:
    """Hash over what the module's build depends on in a kernel tree: its .config, its
    Module.symvers and the pci-tsm.h the devsec detection reads (16 hex digits)."""
    h = hashlib.sha256()
    src = _srctree(build, root)
    for p in (build / ".config", build / "Module.symvers",
              (src / "include/linux/pci-tsm.h") if src else None):
        data = p.read_bytes() if p is not None and p.exists() else b""
        h.update(f"{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def ensure_user_module(prov: Provisioned, build: Path, release: str,
                       src: Path | None = None, log: Progress = progress) -> Path:
    """vtfw.ko built against the user's kernel tree ``build`` with that tree's own
    configuration (``make -C DIR M=... modules``), cached under
    <cache>/module/<release>/<source hash>-<tree hash>/.  A tree inside the private build
    tree (<cache>/modbuild, e.g. another linux-headers package) is built there with that
    tree's compiler, like the Debian build; any other tree with this machine's make and
    compiler, as the kernel was built."""
    src = src or module_source()
    root = Path(prov.cache)
    tree = root / BUILD_TREE
    chroot = _inside(build, tree)
    digest = f"{source_hash(src)}-{tree_hash(build, tree if chroot else None)}"
    ko = cached_module(root, release, digest)
    if ko.exists():
        return ko
    with _locked(root):
        if ko.exists():
            return ko
        started = time.monotonic()
        base = tree / "tmp" if chroot else None
        work = Path(tempfile.mkdtemp(prefix=f"{MODULE_NAME}-", dir=base))
        try:
            for p in source_files(src):
                shutil.copy(p, work / p.name)
            if chroot:
                kdir = "/" + str(build.resolve().relative_to(tree.resolve()))
                wdir = "/" + str(work.relative_to(tree))
                script = (f'mount -t proc proc "{tree}/proc" && '
                          f'chroot "{tree}" sh -c "make -C {kdir} M={wdir} modules && '
                          f'strip --strip-debug {wdir}/{MODULE_NAME}.ko"')
                _run(["unshare", "--mount", "--fork", "sh", "-c", script],
                     f"building {MODULE_NAME}.ko against {build}", log, timeout=BUILD_TIMEOUT)
            else:
                _run(["make", "-C", str(build), f"M={work}", "modules"],
                     f"building {MODULE_NAME}.ko against {build}", log, timeout=BUILD_TIMEOUT)
                if shutil.which("strip"):
                    _run(["strip", "--strip-debug", str(work / f"{MODULE_NAME}.ko")],
                         f"stripping {MODULE_NAME}.ko", log)
            _publish(work / f"{MODULE_NAME}.ko", ko)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"{MODULE_NAME}.ko for {release} ({build}) built in "
            f"{time.monotonic() - started:.1f} s: {ko}")
        return ko


__all__ = ["REQUIRED_CONFIG", "UserKernel", "cached_module", "check_user_kernel",
           "ensure_module", "ensure_user_module", "image_release", "module_source",
           "source_hash", "tree_hash"]
