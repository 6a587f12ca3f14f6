"""`vfiouser-tdisp setup`: QEMU >= 10.1 with vfio-user-pci, a guest kernel, busybox.

QEMU is looked for in this order: ``--qemu PATH``, ``$VFIOUSER_TDISP_QEMU``,
``qemu-system-x86_64`` on PATH (only if its ``-device help`` lists
``vfio-user-pci``); otherwise it comes from a private Debian trixie tree built
with mmdebstrap in the cache, with QEMU from trixie-backports, and runs through
the tree's own dynamic loader.  Nothing is installed on the host besides
mmdebstrap from the host's own release, and no apt source is added to it.

The same tree provides static busybox and the apt that fetches the guest kernel:
Debian's generic amd64 kernel (newest in trixie-backports, else trixie), fetched
with ``apt-get download`` and unpacked with ``dpkg-deb -x``.  Its modules tree is
kept (about 110 MB of ``.ko.xz``) so the initramfs can take any module with its
dependencies.  The package mirror is read from this machine's apt configuration.

Everything lands in the cache directory; a stamp records what was provisioned,
so a second ``setup`` only reads it.  Builds go to a temporary directory that is
renamed into place, so an interrupted setup never leaves a half-built tree.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..paths import cache_dir  # re-exported: callers import it from here

STAMP_VERSION = 2
STAMP_NAME = "provisioned.json"
TREE_RELEASE = "trixie"
QEMU_RELEASE = "trixie-backports"
KERNEL_RELEASES = ("trixie-backports", "trixie")
REQUIRED_KERNEL_CONFIG = ("CONFIG_PCI_DOE", "CONFIG_PCI_TSM", "CONFIG_VIRTIO_PCI")
KERNEL_PART_PREFIXES = ("linux-base-", "linux-binary-", "linux-modules-")
QEMU_PROBE_TIMEOUT = 20.0
APT_TIMEOUT = 1800.0  # mmdebstrap / apt-get: generous, but never forever


class ProvisionError(RuntimeError):
    pass


Progress = Callable[[str], None]


def progress(msg: str) -> None:
    print(f"setup: {msg}", file=sys.stderr, flush=True)


# -- apt configuration ------------------------------------------------------------------

@dataclass(frozen=True)
class AptSource:
    """One ``deb`` source of the machine's apt configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...] = ()
    origin: str = ""  # the file it came from


def host_release(os_release: str = "/etc/os-release") -> str | None:
    """The host's Debian codename (``bookworm``), from os-release."""
    try:
        text = Path(os_release).read_text()
    except OSError:
        return None
    fields = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', text, re.M))
    return fields.get("VERSION_CODENAME") or None


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Fields of each stanza (continuation lines and comments dropped)."""
    fields: dict[str, str] = {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if fields:
                yield fields
            fields = {}
        elif line.startswith("#") or line[0] in " \t":
            continue  # comment, or continuation (e.g. an inline Signed-By key block)
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()


def _one_line_sources(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        if rest.startswith("["):  # [arch=amd64 signed-by=...]
            end = rest.find("]")
            if end < 0:
                continue
            rest = rest[end + 1:].strip()
        parts = rest.split()
        if len(parts) >= 2:
            yield parts[0], [parts[1]], parts[2:]


def read_apt_sources(sources_list: str = "/etc/apt/sources.list",
                     sources_dir: str = "/etc/apt/sources.list.d") -> list[AptSource]:
    """Every enabled binary (``deb``) source, in apt's file order."""
    files: list[Path] = []
    if os.path.isfile(sources_list):
        files.append(Path(sources_list))
    if os.path.isdir(sources_dir):
        files += sorted(p for p in Path(sources_dir).iterdir()
                        if p.suffix in (".list", ".sources") and p.is_file())
    out: list[AptSource] = []
    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for st in _deb822_stanzas(text):
                if st.get("enabled", "yes").lower() in ("no", "false", "0"):
                    continue
                if "deb" not in st.get("types", "").split():
                    continue
                for uri in st.get("uris", "").split():
                    out.append(AptSource(uri, tuple(st.get("suites", "").split()),
                                         tuple(st.get("components", "").split()), str(f)))
        else:
            for uri, suites, comps in _one_line_sources(text):
                out.append(AptSource(uri, tuple(suites), tuple(comps), str(f)))
    return out


def parse_apt_mirrors(sources_list: str = "/etc/apt/sources.list",
                      sources_dir: str = "/etc/apt/sources.list.d",
                      release: str | None = None) -> list[str]:
    """Debian archive URIs configured on this machine, best first.

    A mirror is the URI of a source whose suites contain the Debian release
    (``release``; None: the host's codename), then those carrying only its
    ``-updates``/``-backports``.  Without a known release (``""``, or no
    codename in os-release), any non-security URI with ``debian`` in it.
    Security archives are never used (they carry no full release).
    """
    if release is None:
        release = host_release()
    sources = [s for s in read_apt_sources(sources_list, sources_dir)
               if not s.uri.startswith("cdrom:")]
    ranked: list[tuple[int, str]] = []
    for s in sources:
        if any(x.endswith("-security") or x.endswith("/updates") for x in s.suites):
            continue
        if release:
            if release in s.suites:
                rank = 0
            elif any(x in (f"{release}-updates", f"{release}-backports") for x in s.suites):
                rank = 1
            else:
                continue
        elif "debian" in s.uri and "security" not in s.uri:
            rank = 0
        else:
            continue
        ranked.append((rank, s.uri.rstrip("/")))
    out: list[str] = []
    for _rank, uri in sorted(ranked, key=lambda r: r[0]):
        if uri not in out:
            out.append(uri)
    return out


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
    """The tree's QEMU, run through the tree's own loader and libraries (no chroot)."""
    libdirs = f"{tree}/usr/lib/x86_64-linux-gnu:{tree}/lib/x86_64-linux-gnu"
    return QemuInstall(
        prefix=[f"{tree}/lib64/ld-linux-x86-64.so.2", "--library-path", libdirs,
                f"{tree}/usr/bin/qemu-system-x86_64"],
        extra_args=["-L", f"{tree}/usr/share/qemu", "-L", f"{tree}/usr/share/seabios",
                    "-L", f"{tree}/usr/lib/ipxe/qemu"],
        env={"QEMU_MODULE_DIR": f"{tree}/usr/lib/x86_64-linux-gnu/qemu"},
        source=f"private tree {tree}",
    )


def probe_qemu(q: QemuInstall, timeout: float = QEMU_PROBE_TIMEOUT) -> str | None:
    """Version string if this QEMU runs and offers vfio-user-pci, else None.

    Both probes run with a deadline (``subprocess.run`` kills the child at it).
    """
    try:
        ver = subprocess.run(q.command(["--version"]), env=q.environ(), capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        dev = subprocess.run(q.command(["-device", "help"]), env=q.environ(),
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if ver.returncode != 0 or not re.search(r'"vfio-user-pci"', dev.stdout + dev.stderr):
        return None
    m = re.search(r"version (\S+)", ver.stdout)
    return m.group(1).rstrip(",") if m else ver.stdout.strip()


def wanted_qemu(explicit: str | None) -> tuple[str, str] | None:
    """(path, where it came from) the user asked for, if any."""
    if explicit:
        return explicit, "--qemu"
    env = os.environ.get("VFIOUSER_TDISP_QEMU")
    if env:
        return env, "$VFIOUSER_TDISP_QEMU"
    return None


def find_qemu(explicit: str | None) -> QemuInstall | None:
    """A usable QEMU outside the cache, or None (then the private tree provides one).

    An explicit choice that does not work is an error, never a silent fallback.
    """
    want = wanted_qemu(explicit)
    if want is not None:
        path, source = want
        resolved = shutil.which(path) or path
        q = QemuInstall([os.path.abspath(resolved)], source=f"{source}: {resolved}")
        ver = probe_qemu(q)
        if not ver:
            raise ProvisionError(f"{path} ({source}) does not run or lacks vfio-user-pci "
                                 "(QEMU >= 10.1 is needed)")
        q.version = ver
        return q
    on_path = shutil.which("qemu-system-x86_64")
    if on_path:
        q = QemuInstall([on_path], source=f"PATH: {on_path}")
        ver = probe_qemu(q)
        if ver:
            q.version = ver
            return q
        progress(f"{on_path} has no vfio-user-pci (QEMU >= 10.1 needed); "
                 "using a private QEMU instead")
    return None


# -- running the package tools ------------------------------------------------------------

def _run(cmd: list[str], what: str, log: Progress = progress,
         relay: Callable[[str], bool] | None = None, timeout: float = APT_TIMEOUT) -> str:
    """Run ``cmd`` with a deadline; relay the lines ``relay`` picks as progress.

    Returns the output; raises ProvisionError with its tail on failure.
    """
    log(f"{what} ...")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    timer = threading.Timer(timeout, lambda: _killpg(proc))
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if relay is not None and relay(line):
                log(f"  {line}")
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # interrupted (Ctrl-C): don't leave apt running
            _killpg(proc)
            proc.wait()
    output = "\n".join(lines)
    if rc != 0:
        why = f"killed after {timeout:.0f} s" if rc < 0 else f"exit {rc}"
        raise ProvisionError(f"{what} failed ({why}):\n{output[-3000:]}")
    if time.monotonic() - started >= 5:
        log(f"{what}: done in {time.monotonic() - started:.0f} s")
    return output


def _killpg(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)


def _chroot(tree: Path, script: str, what: str, log: Progress = progress) -> str:
    return _run(["chroot", str(tree), "sh", "-c", script], what, log)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ProvisionError(
            f"{what} needs root (mmdebstrap --mode=root and chroot). Run `vfiouser-tdisp "
            "setup` as root once with the same --cache-dir/$VFIOUSER_TDISP_CACHE, or "
            "provide everything yourself: a QEMU >= 10.1 with vfio-user-pci (--qemu), "
            "and a cache made by a root setup.")


def ensure_mmdebstrap(log: Progress = progress) -> None:
    if shutil.which("mmdebstrap"):
        return
    if os.geteuid() != 0:
        raise ProvisionError("mmdebstrap is missing: install it (apt-get install mmdebstrap) "
                             "or pass --qemu PATH to a QEMU >= 10.1 with vfio-user-pci")
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap"],
         "installing mmdebstrap from this machine's own apt sources", log)
    if not shutil.which("mmdebstrap"):
        raise ProvisionError("apt-get installed mmdebstrap but it is not on PATH")


# -- the private tree ---------------------------------------------------------------------

def tree_has_qemu(tree: Path) -> bool:
    return (tree / "usr/bin/qemu-system-x86_64").exists()


def tree_ready(tree: Path, need_qemu: bool) -> bool:
    return (tree / "bin/busybox").exists() and (tree / "usr/bin/apt-get").exists() \
        and (not need_qemu or tree_has_qemu(tree))


def _replace_dir(new: Path, dest: Path) -> None:
    """Put the finished ``new`` at ``dest`` (the old one, if any, is removed after)."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def build_tree(dest: Path, mirror: str, with_qemu: bool = True,
               log: Progress = progress) -> None:
    """A minimal trixie tree with static busybox and, if asked, QEMU (trixie-backports)."""
    _need_root("building the private Debian tree")
    ensure_mmdebstrap(log)
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    pkgs = "qemu-system-x86 busybox-static" if with_qemu else "busybox-static"
    hook = (f'chroot "$1" apt-get install -y -q --no-install-recommends -t {QEMU_RELEASE} '
            f'{pkgs}')
    what = (f"building a private Debian {TREE_RELEASE} tree with "
            + ("QEMU from trixie-backports and " if with_qemu else "")
            + f"busybox in {dest} (about a minute)")
    try:
        _run(["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
              f"--customize-hook={hook}", TREE_RELEASE, str(tmp),
              f"deb {mirror} {TREE_RELEASE} main", f"deb {mirror} {QEMU_RELEASE} main"],
             what, log, relay=lambda line: line.startswith("I: "))
        if not tree_ready(tmp, with_qemu):
            raise ProvisionError(f"mmdebstrap finished but {tmp} lacks busybox"
                                 + (" or QEMU" if with_qemu else ""))
        _replace_dir(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- guest kernel --------------------------------------------------------------------------

def _stanza_field(stanza: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", stanza, re.M)
    return m.group(1).strip() if m else ""


def dependency_names(depends: str) -> list[str]:
    """Package names of a Depends field (first alternative of each, no versions)."""
    out = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        if first:
            out.append(first.split()[0].split(":")[0])
    return out


def kernel_parts(image_package: str, image_depends: str) -> list[str]:
    """The packages that hold a ``linux-image-<abi>`` kernel's files.

    Since Debian 7.x kernels, ``linux-image-<abi>`` is a meta package over
    ``linux-base-``/``linux-binary-``/``linux-modules-<abi>``; older ones hold
    everything themselves.
    """
    parts = [n for n in dependency_names(image_depends) if n.startswith(KERNEL_PART_PREFIXES)]
    return parts or [image_package]


def resolve_kernel_packages(tree: Path, log: Progress = progress) -> tuple[str, list[str]]:
    """(kernel ABI such as ``7.3.4+deb13-amd64``, packages holding its files): the
    generic amd64 kernel of trixie-backports, else trixie."""
    for release in KERNEL_RELEASES:
        proc = subprocess.run(["chroot", str(tree), "apt-cache", "show",
                               f"linux-image-amd64/{release}"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or not proc.stdout.strip():
            continue
        meta = proc.stdout.split("\n\n")[0]
        images = [n for n in dependency_names(_stanza_field(meta, "Depends"))
                  if re.fullmatch(r"linux-image-.+-amd64", n)]
        if not images:
            continue
        image = images[0]
        abi = image.removeprefix("linux-image-")
        version = _stanza_field(meta, "Version")
        show = subprocess.run(["chroot", str(tree), "apt-cache", "show", f"{image}={version}"],
                              capture_output=True, text=True, timeout=120)
        stanza = show.stdout.split("\n\n")[0] if show.returncode == 0 else ""
        parts = kernel_parts(image, _stanza_field(stanza, "Depends"))
        log(f"guest kernel: {image} {version} from {release} ({', '.join(parts)})")
        return abi, parts
    raise ProvisionError(f"no linux-image-amd64 in {' or '.join(KERNEL_RELEASES)} "
                         "(is the mirror reachable?)")


def check_kernel_config(config: str, kver: str) -> None:
    missing = [opt for opt in REQUIRED_KERNEL_CONFIG
               if not re.search(rf"^{opt}=y$", config, re.M)]
    if missing:
        raise ProvisionError(f"guest kernel {kver} lacks {', '.join(o + '=y' for o in missing)}"
                             " (the device's DOE/TSM support needs them)")


def fetch_kernel(tree: Path, kernels: Path, log: Progress = progress) -> Path:
    """Download and unpack the guest kernel; returns ``kernels/<abi>`` holding
    vmlinuz, config, System.map, modules.* and ``kernel/`` (the .ko.xz tree)."""
    _need_root("fetching the guest kernel inside the private tree")
    _chroot(tree, "apt-get update -q", "refreshing the private tree's package lists", log)
    abi, pkgs = resolve_kernel_packages(tree, log)
    work = tree / "tmp" / "vfiouser-tdisp-kernel"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tmp = kernels / f".{abi}.partial"
    try:
        _chroot(tree, "cd /tmp/vfiouser-tdisp-kernel && apt-get download -q "
                      "-o APT::Sandbox::User=root " + " ".join(pkgs),
                f"downloading {', '.join(pkgs)}", log)
        unpacked = work / "x"
        for deb in sorted(work.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"unpacking {deb.name}",
                 lambda _msg: None)
        candidates = [p for p in sorted((unpacked / "usr/lib/modules").glob("*"))
                      + sorted((unpacked / "lib/modules").glob("*")) if p.is_dir()]
        if not candidates:
            raise ProvisionError(f"{', '.join(pkgs)} contained no modules directory")
        src = candidates[0]
        kver = src.name
        boot = unpacked / "boot"
        for name in ("vmlinuz", "config", "System.map"):  # pre-7.x layout: /boot/<name>-<ver>
            if not (src / name).exists() and (boot / f"{name}-{kver}").exists():
                shutil.copy(boot / f"{name}-{kver}", src / name)
        if not (src / "vmlinuz").exists():
            raise ProvisionError(f"{', '.join(pkgs)} contained no vmlinuz")
        config = (src / "config").read_text() if (src / "config").exists() else ""
        check_kernel_config(config, kver)
        if tmp.exists():
            shutil.rmtree(tmp)
        kernels.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(tmp))
        (tmp / "version").write_text(kver + "\n")
        dest = kernels / kver
        _replace_dir(tmp, dest)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def find_kernel(kernels: Path) -> Path | None:
    """The newest complete kernel directory already in the cache."""
    found = [d for d in kernels.glob("*") if not d.name.startswith(".")
             and (d / "vmlinuz").exists() and (d / "version").exists()
             and (d / "kernel").is_dir()]
    if not found:
        return None
    return max(found, key=lambda d: d.stat().st_mtime)


# -- the whole setup --------------------------------------------------------------------------

@dataclass
class Provisioned:
    """What ``setup`` provisioned (also the stamp's content)."""

    cache: str
    qemu_prefix: list[str]
    qemu_extra_args: list[str]
    qemu_env: dict[str, str]
    qemu_source: str
    qemu_version: str
    kernel: str            # vmlinuz
    kernel_version: str    # uname -r of the guest
    modules: str           # the kernel's modules dir (modules.*, kernel/**/*.ko.xz)
    busybox: str           # static busybox
    kernel_config: str = ""

    @property
    def qemu(self) -> QemuInstall:
        return QemuInstall(self.qemu_prefix, self.qemu_extra_args, self.qemu_env,
                           self.qemu_source, self.qemu_version)

    def missing(self) -> list[str]:
        """Paths this record names that no longer exist."""
        paths = [self.qemu_prefix[0] if self.qemu_prefix else "", self.kernel,
                 self.busybox, self.modules]
        return [p for p in paths if not p or not os.path.exists(p)]


def read_stamp(root: Path) -> Provisioned | None:
    try:
        data = json.loads((root / STAMP_NAME).read_text())
        if data.pop("stamp_version", None) != STAMP_VERSION:
            return None
        return Provisioned(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_stamp(root: Path, p: Provisioned) -> None:
    tmp = root / f".{STAMP_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps({"stamp_version": STAMP_VERSION, **asdict(p)}, indent=2) + "\n")
    os.replace(tmp, root / STAMP_NAME)


def _stamp_usable(p: Provisioned, qemu: str | None) -> bool:
    if p.missing():
        return False
    want = wanted_qemu(qemu)
    if want is None:
        return True
    resolved = os.path.abspath(shutil.which(want[0]) or want[0])
    return p.qemu_prefix == [resolved]


def _check_writable(root: Path, found: Provisioned | None) -> None:
    """Provisioning writes into ``root``; say plainly when this user cannot.

    The multi-user path (docs/provisioning.md): root runs ``setup --cache-dir
    DIR`` once, other users then only read DIR, which needs a complete stamp
    whose files they can read.  Anything else ends here with one line.
    """
    try:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create the cache {root}: {exc.strerror}") from None
    if os.access(root, os.W_OK):
        return
    uid = os.getuid()
    if found is None:
        why = "it holds no provisioned.json"
    else:
        missing = found.missing()
        why = (f"{missing[0]} is missing or not readable by uid {uid}" if missing
               else "it was provisioned for another QEMU")
    raise ProvisionError(
        f"the cache {root} (owned by uid {root.stat().st_uid}) is not usable: {why}, and "
        f"uid {uid} may not write to it. Run `vfiouser-tdisp setup --cache-dir {root}` as "
        f"its owner, with every path in it readable by this user, or use a cache of your own "
        f"(--cache-dir)")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One setup at a time per cache (tests and runs may start in parallel)."""
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another setup working in {root} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_provisioned(cache: str | os.PathLike[str] | None = None, qemu: str | None = None,
                       force: bool = False, log: Progress = progress) -> Provisioned:
    """Provision what is missing (everything with ``force``) and return it.

    Fast when the stamp is valid: no subprocess, no network.
    """
    root = cache_dir(cache)
    if not force:
        p = read_stamp(root)
        if p is not None and _stamp_usable(p, qemu):
            return p
    _check_writable(root, read_stamp(root))
    with _locked(root):
        if not force:  # another process may have finished while we waited
            p = read_stamp(root)
            if p is not None and _stamp_usable(p, qemu):
                return p
        return _provision(root, qemu, force, log)


def _provision(root: Path, qemu: str | None, force: bool, log: Progress) -> Provisioned:
    tree = root / "tree"
    q = find_qemu(qemu)
    need_qemu = q is None
    if force or not tree_ready(tree, need_qemu):
        mirrors = parse_apt_mirrors()
        if not mirrors:
            raise ProvisionError("no Debian mirror found in this machine's apt configuration "
                                 "(/etc/apt/sources.list, /etc/apt/sources.list.d/)")
        log(f"mirror (from this machine's apt configuration): {mirrors[0]}")
        # Keep QEMU in the tree if it is there already, even when an external one is used.
        build_tree(tree, mirrors[0], with_qemu=need_qemu or tree_has_qemu(tree), log=log)
    if q is None:
        q = tree_qemu(tree)
        ver = probe_qemu(q)
        if not ver:
            raise ProvisionError(f"the private QEMU in {tree} does not offer vfio-user-pci")
        q.version = ver
    kernels = root / "kernel"
    kdir = None if force else find_kernel(kernels)
    if kdir is None:
        kdir = fetch_kernel(tree, kernels, log)
    p = Provisioned(
        cache=str(root), qemu_prefix=q.prefix, qemu_extra_args=q.extra_args, qemu_env=q.env,
        qemu_source=q.source, qemu_version=q.version, kernel=str(kdir / "vmlinuz"),
        kernel_version=(kdir / "version").read_text().strip(), modules=str(kdir),
        busybox=str(tree / "bin/busybox"), kernel_config=str(kdir / "config"))
    write_stamp(root, p)
    _drop_old_layout(root, kdir)
    return p


def _drop_old_layout(root: Path, keep: Path) -> None:
    """Stamp v1 kept vmlinuz and flat modules directly in ``kernel/``."""
    kernels = root / "kernel"
    for name in ("vmlinuz", "config", "version"):
        with contextlib.suppress(OSError):
            (kernels / name).unlink()
    old_modules = kernels / "modules"
    if old_modules.is_dir() and old_modules != keep:
        shutil.rmtree(old_modules, ignore_errors=True)


def describe(p: Provisioned) -> list[str]:
    return [f"cache:   {p.cache}",
            f"qemu:    {p.qemu_version} ({p.qemu_source})",
            f"kernel:  {p.kernel_version} ({p.kernel})",
            f"modules: {p.modules}",
            f"busybox: {p.busybox}"]


def main_setup(args: argparse.Namespace) -> int:
    started = time.monotonic()
    root = cache_dir(args.cache_dir)
    before = read_stamp(root)
    try:
        p = ensure_provisioned(args.cache_dir, args.qemu, bool(args.force))
    except ProvisionError as exc:
        print(f"vfiouser-tdisp setup: {exc}", file=sys.stderr)
        return 1
    fresh = before != p or bool(args.force)
    print("provisioned in %.0f s:" % (time.monotonic() - started) if fresh
          else "already provisioned (nothing to do):")
    for line in describe(p):
        print("  " + line)
    from .module_build import ensure_module  # the guest module, cached per kernel + sources

    try:
        print(f"  module:  {ensure_module(p)}")
    except ProvisionError as exc:
        print(f"vfiouser-tdisp setup: guest module: {exc}", file=sys.stderr)
        return 1
    from .guest_tools import OPENSSL, ensure_openssl  # the relying party's openssl

    try:
        ensure_openssl(p)
        print(f"  openssl: {Path(p.cache) / 'modbuild' / OPENSSL} (for the guest)")
    except ProvisionError as exc:
        print(f"vfiouser-tdisp setup: openssl for the guest: {exc}", file=sys.stderr)
        return 1
    from .qemu import accel_decision  # qemu.py imports this module

    accel, why = accel_decision(p.qemu, p.kernel, "auto", p.cache)
    print(f"  accel:   {accel} ({why})")
    return 0


__all__ = ["AptSource", "Provisioned", "ProvisionError", "QemuInstall", "cache_dir",
           "ensure_provisioned", "find_qemu", "main_setup", "parse_apt_mirrors",
           "probe_qemu", "read_apt_sources", "resolve_kernel_packages"]
