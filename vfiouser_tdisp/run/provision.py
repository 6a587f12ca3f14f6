"""`vfiouser-tdisp setup`: QEMU >= 10.1 with vfio-user-pci, a guest kernel, busybox.

Order of preference for QEMU: ``--qemu PATH``, ``$VFIOUSER_TDISP_QEMU``,
``qemu-system-x86_64`` on PATH (only if it lists ``vfio-user-pci``), else a
private Debian trixie tree built with mmdebstrap in the cache, with QEMU from
trixie-backports, run through the tree's own dynamic loader (nothing is
installed on the host system besides mmdebstrap from the host's own release).

The guest kernel is Debian's generic amd64 kernel (newest in trixie-backports,
else trixie) fetched with ``apt-get download`` inside that tree and unpacked
with ``dpkg-deb -x``; only vmlinuz, config and the modules the guest needs are
kept.  The package mirror is read from the machine's own apt configuration.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

STAMP_VERSION = 1
GUEST_MODULES = ["kernel/drivers/char/hw_random/virtio-rng.ko"]
REQUIRED_KERNEL_CONFIG = ["CONFIG_PCI_DOE", "CONFIG_PCI_TSM", "CONFIG_VIRTIO_PCI"]


class ProvisionError(RuntimeError):
    pass


def progress(msg: str) -> None:
    print(f"setup: {msg}", file=sys.stderr, flush=True)


def cache_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("VFIOUSER_TDISP_CACHE"):
        return Path(os.environ["VFIOUSER_TDISP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "vfiouser-tdisp"


# -- apt configuration ------------------------------------------------------------------

def parse_apt_mirrors(sources_list: str = "/etc/apt/sources.list",
                      sources_dir: str = "/etc/apt/sources.list.d") -> list[str]:
    """Debian archive URIs configured on this machine (deb822 and one-line formats).

    Security and third-party repositories are skipped: the first URI whose
    suites name a plain Debian release (or its -updates) is the mirror.
    """
    found: list[str] = []

    def consider(uri: str, suites: list[str]) -> None:
        if any(s.endswith("-security") for s in suites):
            return
        if uri not in found and "debian" in uri and "security" not in uri:
            found.append(uri.rstrip("/"))

    files: list[Path] = []
    if os.path.isfile(sources_list):
        files.append(Path(sources_list))
    if os.path.isdir(sources_dir):
        d = Path(sources_dir)
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    consider(uri, fields.get("suites", "").split())
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                if not line.startswith("deb "):
                    continue
                parts = line.split()[1:]
                if parts and parts[0].startswith("["):
                    while parts and not parts[0].endswith("]"):
                        parts.pop(0)
                    parts.pop(0)
                if len(parts) >= 2:
                    consider(parts[0], [parts[1]])
    return found


# -- QEMU ---------------------------------------------------------------------------------

@dataclass
class QemuInstall:
    """How to run qemu-system-x86_64: argv prefix, extra arguments, environment."""

    prefix: list[str]
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    source: str = "system"
    version: str = ""

    def command(self, args: list[str]) -> list[str]:
        return self.prefix + self.extra_args + args

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        return env


def tree_qemu(tree: Path) -> QemuInstall:
    libdirs = f"{tree}/usr/lib/x86_64-linux-gnu:{tree}/lib/x86_64-linux-gnu"
    return QemuInstall(
        prefix=[f"{tree}/lib64/ld-linux-x86-64.so.2", "--library-path", libdirs,
                f"{tree}/usr/bin/qemu-system-x86_64"],
        extra_args=["-L", f"{tree}/usr/share/qemu", "-L", f"{tree}/usr/share/seabios",
                    "-L", f"{tree}/usr/lib/ipxe/qemu"],
        env={"QEMU_MODULE_DIR": f"{tree}/usr/lib/x86_64-linux-gnu/qemu"},
        source=f"private tree {tree}",
    )


def probe_qemu(q: QemuInstall) -> str | None:
    """Version string if this QEMU runs and has vfio-user-pci, else None."""
    try:
        ver = subprocess.run(q.command(["--version"]), env=q.environ(), capture_output=True,
                             text=True, timeout=20)
        dev = subprocess.run(q.command(["-device", "help"]), env=q.environ(),
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if ver.returncode != 0 or "vfio-user-pci" not in dev.stdout + dev.stderr:
        return None
    m = re.search(r"version (\S+)", ver.stdout)
    return m.group(1) if m else ver.stdout.strip()


def _run(cmd: list[str], what: str) -> None:
    progress(f"{what} ...")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise ProvisionError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_mmdebstrap() -> None:
    if shutil.which("mmdebstrap"):
        return
    if os.geteuid() != 0:
        raise ProvisionError("mmdebstrap is needed to build the private QEMU tree; install "
                             "it (apt-get install mmdebstrap) or pass --qemu PATH")
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap"],
         "installing mmdebstrap from this machine's own apt sources")


def build_tree(dest: Path, mirror: str) -> None:
    """A minimal trixie tree with QEMU (trixie-backports) and static busybox."""
    ensure_mmdebstrap()
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    mode = "root" if os.geteuid() == 0 else "unshare"
    hook = ('chroot "$1" apt-get install -y -q --no-install-recommends -t trixie-backports '
            'qemu-system-x86 busybox-static')
    _run(["mmdebstrap", "--variant=minbase", f"--mode={mode}", "--format=directory",
          f"--customize-hook={hook}", "trixie", str(tmp),
          f"deb {mirror} trixie main", f"deb {mirror} trixie-backports main"],
         f"building a private Debian trixie tree with QEMU from trixie-backports in {dest} "
         "(about a minute)")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


# -- guest kernel ----------------------------------------------------------------------------

def _chroot(tree: Path, cmd: str) -> str:
    proc = subprocess.run(["chroot", str(tree), "sh", "-c", cmd], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise ProvisionError(f"in {tree}: {cmd}: {proc.stderr[-2000:]}")
    return proc.stdout


def resolve_kernel_packages(tree: Path) -> tuple[str, list[str]]:
    """(kernel version, packages holding it) for the newest generic amd64 kernel."""
    for release in ("trixie-backports", "trixie"):
        show = _chroot(tree, f"apt-cache show -t {release} linux-image-amd64 2>/dev/null "
                             "| sed -n '1,/^$/p'")
        m = re.search(r"linux-image-(\S+?-amd64)\b", show)
        if not m:
            continue
        ver = m.group(1)
        image = _chroot(tree, f"apt-cache show linux-image-{ver} | sed -n '1,/^$/p'")
        dep = re.search(r"^Depends: (.*)$", image, re.M)
        pkgs = []
        if dep:
            for alt in dep.group(1).split(","):
                name = alt.split("|")[0].strip().split()[0]
                if name.startswith(("linux-base-", "linux-binary-", "linux-modules-")):
                    pkgs.append(name)
        if not pkgs:  # older layout: the image package holds everything
            pkgs = [f"linux-image-{ver}"]
        return ver, pkgs
    raise ProvisionError("no linux-image-amd64 found in trixie or trixie-backports")


def fetch_kernel(tree: Path, dest: Path) -> str:
    _run(["chroot", str(tree), "apt-get", "update", "-q"], "refreshing the tree's package lists")
    ver, pkgs = resolve_kernel_packages(tree)
    progress(f"downloading guest kernel {ver} ({', '.join(pkgs)})")
    work = tree / "tmp" / "kernel-download"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    _chroot(tree, f"cd /tmp/kernel-download && apt-get download -q {' '.join(pkgs)}")
    unpacked = work / "x"
    for deb in work.glob("*.deb"):
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"unpacking {deb.name}")
    moddirs = list((unpacked / "usr/lib/modules").glob("*")) + list(
        (unpacked / "lib/modules").glob("*"))
    if not moddirs:
        raise ProvisionError("kernel packages contained no modules directory")
    src = moddirs[0]
    kver = src.name
    config = (src / "config").read_text() if (src / "config").exists() else ""
    if not config:
        boot_cfg = list((unpacked / "boot").glob("config-*"))
        config = boot_cfg[0].read_text() if boot_cfg else ""
    for opt in REQUIRED_KERNEL_CONFIG:
        if f"{opt}=y" not in config:
            raise ProvisionError(f"guest kernel {kver} lacks {opt}=y")
    vmlinuz = src / "vmlinuz"
    if not vmlinuz.exists():
        boots = list((unpacked / "boot").glob("vmlinuz-*"))
        if not boots:
            raise ProvisionError("kernel packages contained no vmlinuz")
        vmlinuz = boots[0]
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "modules").mkdir(parents=True)
    shutil.copy(vmlinuz, tmp / "vmlinuz")
    (tmp / "config").write_text(config)
    for rel in GUEST_MODULES:
        for cand in (src / rel, src / (rel + ".xz")):
            if cand.exists():
                data = cand.read_bytes()
                if cand.suffix == ".xz":
                    data = lzma.decompress(data)
                (tmp / "modules" / Path(rel).name).write_bytes(data)
                break
        else:
            raise ProvisionError(f"guest kernel has no {rel}")
    (tmp / "version").write_text(kver + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    shutil.rmtree(work)
    return kver


# -- the whole setup --------------------------------------------------------------------------

@dataclass
class Provisioned:
    cache: str
    qemu_prefix: list[str]
    qemu_extra_args: list[str]
    qemu_env: dict[str, str]
    qemu_source: str
    qemu_version: str
    kernel: str
    kernel_version: str
    modules: str
    busybox: str

    @property
    def qemu(self) -> QemuInstall:
        return QemuInstall(self.qemu_prefix, self.qemu_extra_args, self.qemu_env,
                           self.qemu_source, self.qemu_version)


def find_qemu(explicit: str | None) -> QemuInstall | None:
    for path, source in ((explicit, "--qemu"),
                         (os.environ.get("VFIOUSER_TDISP_QEMU"), "$VFIOUSER_TDISP_QEMU"),
                         (shutil.which("qemu-system-x86_64"), "PATH")):
        if not path:
            continue
        q = QemuInstall([path], source=f"{source}: {path}")
        ver = probe_qemu(q)
        if ver:
            q.version = ver
            return q
        if source != "PATH":
            raise ProvisionError(f"{path} ({source}) does not run or lacks vfio-user-pci")
    return None


def ensure_provisioned(cache: str | None = None, qemu: str | None = None,
                       force: bool = False) -> Provisioned:
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "provisioned.json"
    if stamp.exists() and not force:
        try:
            data = json.loads(stamp.read_text())
            if data.pop("stamp_version", None) == STAMP_VERSION:
                p = Provisioned(**data)
                if (not qemu or qemu in p.qemu_prefix) and Path(p.kernel).exists() \
                        and Path(p.busybox).exists():
                    return p
        except (ValueError, TypeError):
            pass
    tree = root / "tree"
    mirrors = parse_apt_mirrors()
    q = find_qemu(qemu)
    need_tree = q is None or not (tree / "bin/busybox").exists()
    if need_tree and (force or not (tree / "usr/bin/qemu-system-x86_64").exists()):
        if not mirrors:
            raise ProvisionError("no Debian mirror found in this machine's apt configuration")
        build_tree(tree, mirrors[0])
    if q is None:
        q = tree_qemu(tree)
        ver = probe_qemu(q)
        if not ver:
            raise ProvisionError(f"the private QEMU in {tree} does not offer vfio-user-pci")
        q.version = ver
    kdir = root / "kernel"
    if force or not (kdir / "vmlinuz").exists():
        fetch_kernel(tree, kdir)
    p = Provisioned(
        cache=str(root), qemu_prefix=q.prefix, qemu_extra_args=q.extra_args, qemu_env=q.env,
        qemu_source=q.source, qemu_version=q.version, kernel=str(kdir / "vmlinuz"),
        kernel_version=(kdir / "version").read_text().strip(), modules=str(kdir / "modules"),
        busybox=str(tree / "bin/busybox"))
    stamp.write_text(json.dumps({"stamp_version": STAMP_VERSION, **asdict(p)}, indent=2))
    return p


def main_setup(args: argparse.Namespace) -> int:
    try:
        p = ensure_provisioned(args.cache_dir, args.qemu, args.force)
    except ProvisionError as exc:
        print(f"vfiouser-tdisp setup: {exc}", file=sys.stderr)
        return 1
    print(f"cache:  {p.cache}")
    print(f"qemu:   {p.qemu_version} ({p.qemu_source})")
    print(f"kernel: {p.kernel_version} ({p.kernel})")
    print(f"busybox: {p.busybox}")
    return 0


__all__ = ["Provisioned", "ProvisionError", "ensure_provisioned", "main_setup",
           "parse_apt_mirrors", "cache_dir"]
