"""Build the guest's initramfs in pure Python: a gzip'd cpio (newc) archive.

Contents: static busybox with an absolute symlink per applet, ``/init`` and the
other ``guest-scripts/`` files, and the kernel modules the guest needs with
their dependencies, decompressed (busybox insmod wants plain ``.ko``) at
``/lib/modules/<uname -r>/<path>.ko`` next to a ``modules.dep`` for them, so
busybox ``modprobe`` works in the guest.  Out-of-tree modules built for the
guest kernel (the guest module, run/module_build.py) go to ``extra/``.  The
output is deterministic (sorted entries, fixed inode numbers, zero mtimes, gzip
mtime 0).
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..wire import Struct, raw, u16, u32, u64


def _guest_scripts() -> Path:
    """The repository's guest-scripts/ (source checkout or editable install), else
    the copy a wheel installs under <prefix>/share/vfiouser-tdisp/guest-scripts."""
    source = Path(__file__).resolve().parents[2] / "guest-scripts"
    if source.is_dir():
        return source
    from .guest_image import installed_guest_scripts  # --user, --prefix, venv: see there

    return installed_guest_scripts(sys.prefix)


GUEST_SCRIPTS = _guest_scripts()
# Modules every guest carries; checks load them with `modprobe` (lib.sh: load_module).
GUEST_MODULES: tuple[str, ...] = ("virtio_rng",)
ROOT_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
             "etc", "lib", "lib/modules", "mnt", "root", "var", "guest-scripts")


@dataclass(frozen=True)
class Entry:
    path: str  # without leading slash
    mode: int
    data: bytes = b""  # file contents, or a symlink's target

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


# -- cpio (newc) --------------------------------------------------------------------------

def _newc_header(ino: int, e: Entry, nlink: int) -> bytes:
    name = e.path.encode() + b"\0"
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    fields = [ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(name), 0]
    out = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + name
    return out + b"\0" * (-len(out) % 4)


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """The archive (uncompressed), entries in the given order, then the trailer."""
    buf = io.BytesIO()
    for ino, e in enumerate(entries, start=1):
        buf.write(_newc_header(ino, e, 2 if e.is_dir else 1))
        buf.write(e.data)
        buf.write(b"\0" * (-len(e.data) % 4))
    buf.write(_newc_header(0, Entry("TRAILER!!!", 0), 1))
    return buf.getvalue()


def parse_cpio_newc(data: bytes) -> list[Entry]:
    """Read back a newc archive (the kernel's rules: 4-byte alignment, trailer)."""
    out: list[Entry] = []
    pos = 0
    while True:
        if len(data) < pos + 110:
            raise ValueError(f"cpio archive truncated at {pos} (no trailer)")
        if data[pos:pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        if data[pos + namesize - 1] != 0:
            raise ValueError(f"cpio name {name!r} is not NUL-terminated")
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        if len(body) != filesize:
            raise ValueError(f"cpio entry {name!r} is truncated")
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out.append(Entry(name, mode, body))


# -- kernel modules ------------------------------------------------------------------------

def read_module(path: Path) -> bytes:
    """A module's ELF image (``.ko.xz`` decompressed with lzma)."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise ValueError(f"{path}: unsupported module compression")


@dataclass(frozen=True)
class Elf64_Ehdr(Struct):
    """The ELF64 file header (System V gABI, "ELF Header"), little-endian."""

    e_ident: bytes = raw(16)
    e_type: int = u16()
    e_machine: int = u16()
    e_version: int = u32()
    e_entry: int = u64()
    e_phoff: int = u64()
    e_shoff: int = u64()
    e_flags: int = u32()
    e_ehsize: int = u16()
    e_phentsize: int = u16()
    e_phnum: int = u16()
    e_shentsize: int = u16()
    e_shnum: int = u16()
    e_shstrndx: int = u16()


@dataclass(frozen=True)
class Elf64_Shdr(Struct):
    """An ELF64 section header (gABI "Sections")."""

    sh_name: int = u32()
    sh_type: int = u32()
    sh_flags: int = u64()
    sh_addr: int = u64()
    sh_offset: int = u64()
    sh_size: int = u64()
    sh_link: int = u32()
    sh_info: int = u32()
    sh_addralign: int = u64()
    sh_entsize: int = u64()


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a module (``key=value`` strings) as a dict."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 module")
    ehdr, _ = Elf64_Ehdr.unpack_from(elf)

    def section(i: int) -> tuple[int, int, int]:  # name offset, file offset, size
        sh, _ = Elf64_Shdr.unpack_from(elf, ehdr.e_shoff + i * ehdr.e_shentsize)
        return sh.sh_name, sh.sh_offset, sh.sh_size

    _n, stroff, _s = section(ehdr.e_shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(ehdr.e_shnum):
        name_off, off, size = section(i)
        end = elf.index(b"\0", stroff + name_off)
        if elf[stroff + name_off:end] != b".modinfo":
            continue
        for item in elf[off:off + size].split(b"\0"):
            if b"=" in item:
                k, v = item.decode(errors="replace").split("=", 1)
                info.setdefault(k, []).append(v)
    return info


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _plain(rel: str) -> str:
    """The path of a module once decompressed."""
    return re.sub(r"\.(xz|gz)$", "", rel)


def _module_name(rel: str) -> str:
    base = rel.rsplit("/", 1)[-1]
    return _norm(re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base))


class ModuleTree:
    """A kernel's modules directory (``/lib/modules/<ver>`` as Debian ships it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._paths: dict[str, str] | None = None
        self._dep: dict[str, list[str]] | None = None

    @property
    def paths(self) -> dict[str, str]:
        """Module name (``_`` form) -> path relative to the root."""
        if self._paths is None:
            self._paths = {}
            kernel = self.root / "kernel"
            for p in sorted(kernel.rglob("*.ko*")) if kernel.is_dir() else []:
                rel = p.relative_to(self.root).as_posix()
                self._paths.setdefault(_module_name(rel), rel)
        return self._paths

    def _modules_dep(self) -> dict[str, list[str]]:
        if self._dep is None:
            self._dep = {}
            f = self.root / "modules.dep"
            if f.exists():
                for line in f.read_text().splitlines():
                    if ":" in line:
                        mod, deps = line.split(":", 1)
                        self._dep[_module_name(mod)] = [_module_name(d) for d in deps.split()]
        return self._dep

    def depends(self, name: str) -> list[str]:
        """Direct dependencies (from modules.dep, else the module's modinfo)."""
        name = _norm(name)
        dep = self._modules_dep()
        if name in dep:
            return dep[name]
        rel = self.paths.get(name)
        if rel is None:
            raise KeyError(f"kernel module {name} not found under {self.root}")
        info = modinfo(read_module(self.root / rel))
        return [_norm(d) for v in info.get("depends", []) for d in v.split(",") if d]

    def closure(self, names: Iterable[str]) -> list[str]:
        """``names`` and everything they need, dependencies first (load order)."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(n: str) -> None:
            n = _norm(n)
            if n in order or n in visiting:
                return
            visiting.add(n)
            for d in self.depends(n):
                visit(d)
            visiting.discard(n)
            order.append(n)

        for n in names:
            visit(n)
        return order


def module_entries(modules_dir: str | Path, names: Iterable[str], kver: str) -> list[Entry]:
    """Decompressed modules (with dependencies) and a ``modules.dep`` for them."""
    tree = ModuleTree(modules_dir)
    base = f"lib/modules/{kver}"
    entries: list[Entry] = []
    dep_lines: list[str] = []
    order = tree.closure(names)
    for name in order:
        rel = tree.paths[name]
        plain = _plain(rel)
        entries.append(Entry(f"{base}/{plain}", stat.S_IFREG | 0o644,
                             read_module(tree.root / rel)))
        # modules.dep lists the full closure, the one loaded last first.
        deps = [_plain(tree.paths[d]) for d in reversed(tree.closure([name])[:-1])]
        dep_lines.append(f"{plain}: {' '.join(deps)}".rstrip())
    entries.append(Entry(f"{base}/modules.dep", stat.S_IFREG | 0o644,
                         ("\n".join(dep_lines) + "\n").encode()))
    entries.append(Entry(f"{base}/modules.order", stat.S_IFREG | 0o644,
                         "".join(_plain(tree.paths[n]) + "\n" for n in order).encode()))
    return entries


# -- the archive -----------------------------------------------------------------------------

def busybox_applets(busybox: str | Path) -> list[str]:
    """Install paths of busybox's applets (``bin/sh``, ``sbin/insmod``, ...)."""
    proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                          timeout=30, check=True)
    return sorted({line.strip().lstrip("/") for line in proc.stdout.splitlines()
                   if line.strip()})


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def initramfs_entries(busybox: str | Path, modules_dir: str | Path | None,
                      scripts_dir: Path = GUEST_SCRIPTS,
                      modules: Iterable[str] = GUEST_MODULES,
                      kver: str | None = None,
                      extra_modules: Iterable[Path] = (),
                      extra_files: Mapping[str, tuple[int, bytes]] | None = None) -> list[Entry]:
    """Every entry of the archive, directories before their contents, sorted.
    ``extra_files``: path (no leading slash) -> (permission bits, contents)."""
    files: dict[str, Entry] = {}
    files["bin/busybox"] = Entry("bin/busybox", stat.S_IFREG | 0o755,
                                 Path(busybox).read_bytes())
    for rel in busybox_applets(busybox):
        if rel in ("bin/busybox", "linuxrc") or "/" not in rel:
            continue
        files[rel] = Entry(rel, stat.S_IFLNK | 0o777, b"/bin/busybox")
    for script in sorted(scripts_dir.iterdir()):
        if script.is_file() and not script.name.startswith("."):
            mode = 0o755 if script.stat().st_mode & 0o111 or script.name == "init" else 0o644
            files[f"guest-scripts/{script.name}"] = Entry(
                f"guest-scripts/{script.name}", stat.S_IFREG | mode, script.read_bytes())
    files["init"] = Entry("init", stat.S_IFREG | 0o755, (scripts_dir / "init").read_bytes())
    if modules_dir is not None:
        mdir = Path(modules_dir)
        if kver is None:
            version = mdir / "version"
            kver = version.read_text().strip() if version.exists() else mdir.name
        for e in module_entries(mdir, modules, kver):
            files[e.path] = e
        base = f"lib/modules/{kver}"
        for ko in extra_modules:  # no dependencies on other modules: built-in symbols only
            rel = f"extra/{ko.name}"
            files[f"{base}/{rel}"] = Entry(f"{base}/{rel}", stat.S_IFREG | 0o644,
                                           ko.read_bytes())
            for index in ("modules.dep", "modules.order"):
                old = files[f"{base}/{index}"]
                line = f"{rel}:\n" if index == "modules.dep" else f"{rel}\n"
                files[old.path] = Entry(old.path, old.mode, old.data + line.encode())
    for path, (perm, data) in (extra_files or {}).items():
        files[path] = Entry(path, stat.S_IFREG | perm, data)
    dirs = set(ROOT_DIRS)
    for path in files:
        dirs.update(_parents(path))
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries += files.values()
    # Parents sort before children ("a" < "a/b"); the kernel needs that order.
    return sorted(entries, key=lambda e: e.path.split("/"))


def build_initramfs(busybox: str | Path, modules_dir: str | Path | None, out: Path,
                    scripts_dir: Path = GUEST_SCRIPTS,
                    modules: Iterable[str] = GUEST_MODULES,
                    extra_modules: Iterable[Path] = (),
                    extra_files: Mapping[str, tuple[int, bytes]] | None = None) -> Path:
    """Write the gzip'd cpio to ``out`` (deterministic: same inputs, same bytes)."""
    entries = initramfs_entries(busybox, modules_dir, scripts_dir, modules,
                                extra_modules=extra_modules, extra_files=extra_files)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0))
    tmp.replace(out)
    return out


__all__ = ["Entry", "GUEST_MODULES", "GUEST_SCRIPTS", "ModuleTree", "build_initramfs",
           "busybox_applets", "cpio_newc", "initramfs_entries", "modinfo", "module_entries",
           "parse_cpio_newc", "read_module"]
