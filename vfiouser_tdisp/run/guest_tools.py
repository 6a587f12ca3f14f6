"""Programs the guest's relying party needs beyond busybox: ``openssl`` and its libraries.

They come from the private Debian trixie tree the guest module is built in
(run/module_build.py, ``<cache>/modbuild``), never from the host: its
``openssl`` package (installed there when the tree is made, or added once to
an older tree with the tree's own apt), the shared libraries it needs
(DT_NEEDED, followed recursively) and the dynamic loader (PT_INTERP).  The
initramfs gets them at the tree's paths, so the loader finds the libraries in
its default directories.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from .module_build import BUILD_TREE
from .provision import Progress, Provisioned, ProvisionError, _need_root, _run, progress

OPENSSL = "usr/bin/openssl"
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64")
PT_INTERP = 3
SHT_DYNAMIC = 6
DT_NEEDED = 1
DT_STRTAB = 5


def _inside(tree: Path, path: str, depth: int = 0) -> Path:
    """``path`` (absolute, as seen inside ``tree``) resolved to a regular file of the
    tree: symbolic links are followed inside the tree, absolute ones included."""
    if depth > 16:
        raise ProvisionError(f"symbolic link loop at {path} in {tree}")
    cur = tree
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        nxt = cur / part
        if nxt.is_symlink():
            target = os.readlink(nxt)
            rest = "/".join(parts[i + 1:])
            if target.startswith("/"):
                base = target
            else:
                base = "/" + str((cur / target).relative_to(tree)) if cur != tree \
                    else "/" + target
                base = os.path.normpath(base)
            return _inside(tree, base + ("/" + rest if rest else ""), depth + 1)
        cur = nxt
    return cur


def elf_interp_and_needed(data: bytes) -> tuple[str | None, list[str]]:
    """(PT_INTERP, DT_NEEDED names) of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 0x36)
    interp = None
    for i in range(e_phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
                for i in range(e_shnum)]
    needed: list[str] = []
    for sh in sections:
        if sh[1] != SHT_DYNAMIC:
            continue
        strtab = sections[sh[6]]  # sh_link: the string table of the dynamic section
        str_off = strtab[4]
        for k in range(sh[5] // 16):
            tag, val = struct.unpack_from("<qQ", data, sh[4] + 16 * k)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                end = data.index(b"\0", str_off + val)
                needed.append(data[str_off + val:end].decode())
    return interp, needed


def program_files(tree: Path, program: str) -> dict[str, bytes]:
    """``program`` (a path in ``tree``), its libraries and the loader, by their path in
    the tree (no leading slash)."""
    out: dict[str, bytes] = {}
    todo: list[tuple[str, Path]] = [(program, _inside(tree, "/" + program))]
    while todo:
        rel, real = todo.pop()
        if rel in out:
            continue
        data = real.read_bytes()
        out[rel] = data
        interp, needed = elf_interp_and_needed(data)
        if interp and interp.lstrip("/") not in out:
            todo.append((interp.lstrip("/"), _inside(tree, interp)))
        for name in needed:
            for d in LIB_DIRS:
                cand = tree / d / name
                if cand.exists() or cand.is_symlink():
                    todo.append((f"{d}/{name}", _inside(tree, f"/{d}/{name}")))
                    break
            else:
                raise ProvisionError(f"{name} (needed by {rel}) is not in {tree}")
    return out


def ensure_openssl(prov: Provisioned, log: Progress = progress) -> dict[str, bytes]:
    """openssl and what it needs to run, from the module build tree (installed there
    with the tree's own apt on first use)."""
    tree = Path(prov.cache) / BUILD_TREE
    if not (tree / "usr/bin/apt-get").exists():
        raise ProvisionError(f"no module build tree in {tree}: run `vfiouser-tdisp setup` "
                             "(the guest module's build makes it)")
    if not (tree / OPENSSL).exists():
        _need_root("adding openssl to the module build tree")
        script = (f'mount -t proc proc "{tree}/proc" && chroot "{tree}" apt-get update -q && '
                  f'chroot "{tree}" apt-get install -y -q --no-install-recommends openssl')
        _run(["unshare", "--mount", "--fork", "sh", "-c", script],
             f"adding openssl to {tree}", log, timeout=600)
        if not (tree / OPENSSL).exists():
            raise ProvisionError(f"apt-get finished but {tree / OPENSSL} is missing")
    return program_files(tree, OPENSSL)


__all__ = ["elf_interp_and_needed", "ensure_openssl", "program_files"]
