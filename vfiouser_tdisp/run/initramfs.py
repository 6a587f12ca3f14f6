"""Build the guest's initramfs in pure Python: a gzip'd cpio (newc) archive.

Contents: static busybox with its applet links, ``/init`` and the other
``guest-scripts/`` files, and the kernel modules the guest needs.  The output
is deterministic (fixed mtimes and inode numbers) so it can be cached.
"""

from __future__ import annotations

import gzip
import io
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

GUEST_SCRIPTS = Path(__file__).resolve().parents[2] / "guest-scripts"


@dataclass(frozen=True)
class Entry:
    path: str  # without leading slash
    mode: int
    data: bytes = b""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _newc_header(ino: int, e: Entry, nlink: int) -> bytes:
    name = e.path.encode() + b"\0"
    fields = [ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(name), 0]
    head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    out = head + name
    out += b"\0" * (-len(out) % 4)
    return out


def cpio_newc(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    for ino, e in enumerate(entries, start=1):
        buf.write(_newc_header(ino, e, 2 if e.is_dir else 1))
        buf.write(e.data)
        buf.write(b"\0" * (-len(e.data) % 4))
    buf.write(_newc_header(0, Entry("TRAILER!!!", 0), 1))
    return buf.getvalue()


def parse_cpio_newc(data: bytes) -> list[Entry]:
    """Read back an archive written by :func:`cpio_newc` (used by the tests)."""
    out: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out.append(Entry(name, mode, body))


def busybox_applets(busybox: str) -> list[str]:
    proc = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                          timeout=30, check=True)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def build_initramfs(busybox: str, modules_dir: str, out: Path,
                    scripts_dir: Path = GUEST_SCRIPTS) -> Path:
    entries: list[Entry] = []
    dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
            "etc", "lib", "lib/modules", "guest-scripts"]
    for d in dirs:
        entries.append(Entry(d, stat.S_IFDIR | 0o755))
    entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes()))
    for applet in busybox_applets(busybox):
        rel = applet.lstrip("/")
        if rel == "bin/busybox" or rel.count("/") > 2:
            continue
        depth = rel.count("/")
        target = "../" * (depth - 1) + "bin/busybox" if depth > 1 else "busybox"
        if rel.startswith("bin/"):
            target = "busybox"
        entries.append(Entry(rel, stat.S_IFLNK | 0o777, target.encode()))
    for mod in sorted(Path(modules_dir).glob("*.ko")):
        entries.append(Entry(f"lib/modules/{mod.name}", stat.S_IFREG | 0o644, mod.read_bytes()))
    for script in sorted(scripts_dir.iterdir()):
        if script.is_file():
            mode = 0o755 if script.stat().st_mode & 0o111 else 0o644
            entries.append(Entry(f"guest-scripts/{script.name}", stat.S_IFREG | mode,
                                 script.read_bytes()))
    init = (scripts_dir / "init").read_bytes()
    entries.append(Entry("init", stat.S_IFREG | 0o755, init))
    seen: set[str] = set()
    unique = []
    for e in entries:
        if e.path not in seen:
            seen.add(e.path)
            unique.append(e)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(cpio_newc(unique), compresslevel=6, mtime=0))
    return out
