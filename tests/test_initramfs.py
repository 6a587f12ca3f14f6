"""The guest initramfs: cpio (newc) format, kernel module metadata and
dependencies, and the archive built from the provisioned busybox and kernel."""

from __future__ import annotations

import gzip
import lzma
import stat
import struct
from pathlib import Path

import pytest

from vfiouser_tdisp.run.initramfs import (
    GUEST_SCRIPTS,
    Entry,
    ModuleTree,
    build_initramfs,
    cpio_newc,
    modinfo,
    module_entries,
    parse_cpio_newc,
    read_module,
)
from vfiouser_tdisp.run.provision import Provisioned, read_stamp

from .conftest import PROVISIONED_CACHE


def test_newc_layout_by_hand() -> None:
    data = cpio_newc([Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    # Header: magic + 13 fields of 8 hex digits; then the name, NUL, pad to 4.
    assert data[:6] == b"070701"
    fields = [int(data[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
    ino, mode, uid, gid, nlink, mtime, size = fields[:7]
    assert (ino, mode, uid, gid, nlink, mtime, size) == (1, 0o100755, 0, 0, 1, 0, 10)
    assert fields[11] == len(b"init\0")
    assert data[110:115] == b"init\0" and (110 + 5 + 1) % 4 == 0  # one pad byte
    assert data[116:126] == b"#!/bin/sh\n"
    assert data[126:128] == b"\0\0"  # file data padded to 4
    assert data[128:134] == b"070701" and b"TRAILER!!!\0" in data[128:]
    assert len(data) % 4 == 0


def test_cpio_round_trip_every_kind() -> None:
    entries = [Entry("bin", stat.S_IFDIR | 0o755),
               Entry("bin/busybox", stat.S_IFREG | 0o755, bytes(range(256)) * 3 + b"x"),
               Entry("bin/sh", stat.S_IFLNK | 0o777, b"/bin/busybox"),
               Entry("empty", stat.S_IFREG | 0o644),
               Entry("a-name-of-odd-length.txt", stat.S_IFREG | 0o600, b"abc")]
    data = cpio_newc(entries)
    assert parse_cpio_newc(data) == entries
    with pytest.raises(ValueError, match="magic"):
        parse_cpio_newc(b"070707" + data[6:])
    with pytest.raises(ValueError, match="truncated"):
        parse_cpio_newc(data[:200])


def _elf_with_modinfo(strings: list[str]) -> bytes:
    """A minimal relocatable ELF64 with sections: null, .shstrtab, .modinfo."""
    shstr = b"\0.shstrtab\0.modinfo\0"
    info = b"".join(s.encode() + b"\0" for s in strings)
    body_off = 64
    info_off = body_off + len(shstr)
    shoff = (info_off + len(info) + 7) & ~7
    header = bytearray(64)
    header[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0,
                     64, 3, 1)

    def sh(name: int, typ: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, typ, 0, 0, off, size, 0, 0, 1, 0)

    image = bytes(header) + shstr + info
    image += bytes(shoff - len(image))
    image += sh(0, 0, 0, 0) + sh(1, 3, body_off, len(shstr)) + sh(11, 1, info_off, len(info))
    return image


def test_modinfo_reads_the_modinfo_section() -> None:
    elf = _elf_with_modinfo(["license=GPL", "depends=a,b-c", "alias=x", "alias=y", "name=m"])
    info = modinfo(elf)
    assert info["depends"] == ["a,b-c"] and info["alias"] == ["x", "y"]
    with pytest.raises(ValueError):
        modinfo(b"not an elf at all" + bytes(64))


def _fake_modules(root: Path, mods: dict[str, str]) -> None:
    """``name -> depends``, written as .ko.xz under kernel/ as Debian ships them."""
    for name, deps in mods.items():
        f = root / "kernel" / "drivers" / f"{name.replace('_', '-')}.ko.xz"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(lzma.compress(_elf_with_modinfo([f"depends={deps}", f"name={name}"])))


def test_dependencies_from_modinfo_in_load_order(tmp_path: Path) -> None:
    _fake_modules(tmp_path, {"top_mod": "mid_a,mid_b", "mid_a": "base", "mid_b": "base",
                             "base": "", "unused": "base"})
    tree = ModuleTree(tmp_path)
    assert tree.paths["top_mod"] == "kernel/drivers/top-mod.ko.xz"
    order = tree.closure(["top-mod"])  # either spelling of the name
    assert order[-1] == "top_mod" and order[0] == "base" and set(order) == {
        "top_mod", "mid_a", "mid_b", "base"}
    entries = {e.path: e for e in module_entries(tmp_path, ["top_mod"], "9.9")}
    ko = entries["lib/modules/9.9/kernel/drivers/top-mod.ko"]
    assert ko.data.startswith(b"\x7fELF")  # decompressed for busybox insmod
    dep = entries["lib/modules/9.9/modules.dep"].data.decode().splitlines()
    top = next(line for line in dep if line.startswith("kernel/drivers/top-mod.ko:"))
    assert top.split(": ")[1].split()[-1] == "kernel/drivers/base.ko"  # loaded first
    assert "kernel/drivers/base.ko:" in dep
    assert "unused" not in "".join(entries)


def test_modules_dep_wins_when_present(tmp_path: Path) -> None:
    _fake_modules(tmp_path, {"x": "y", "y": "", "z": ""})
    (tmp_path / "modules.dep").write_text("kernel/drivers/x.ko.xz: kernel/drivers/z.ko.xz\n")
    assert ModuleTree(tmp_path).closure(["x"]) == ["z", "x"]
    with pytest.raises(KeyError, match="nope"):
        ModuleTree(tmp_path).closure(["nope"])


def _provisioned() -> Provisioned:
    p = read_stamp(PROVISIONED_CACHE)
    if p is None or p.missing():
        pytest.skip("not provisioned (run `vfiouser-tdisp setup`)")
    return p


def test_initramfs_from_the_provisioned_busybox_and_kernel(tmp_path: Path) -> None:
    p = _provisioned()
    out = build_initramfs(p.busybox, p.modules, tmp_path / "initrd.gz")
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == bytes(4)  # gzip, mtime 0
    entries = parse_cpio_newc(gzip.decompress(raw))
    by_path = {e.path: e for e in entries}
    assert len(by_path) == len(entries)  # no duplicates
    # Every parent directory comes before what it holds (the kernel needs that).
    seen: set[str] = set()
    for e in entries:
        parent = e.path.rsplit("/", 1)[0] if "/" in e.path else ""
        assert not parent or parent in seen, e.path
        seen.add(e.path)
    init = by_path["init"]
    assert init.mode == stat.S_IFREG | 0o755
    assert init.data == (GUEST_SCRIPTS / "init").read_bytes()
    assert by_path["bin/busybox"].data == Path(p.busybox).read_bytes()
    assert by_path["bin/busybox"].mode == stat.S_IFREG | 0o755
    for applet in ("bin/sh", "sbin/insmod", "sbin/modprobe", "sbin/poweroff", "usr/bin/od",
                   "usr/bin/hexdump", "bin/dd"):
        assert by_path[applet].mode == stat.S_IFLNK | 0o777, applet
        assert by_path[applet].data == b"/bin/busybox", applet
    for script in GUEST_SCRIPTS.iterdir():
        assert by_path[f"guest-scripts/{script.name}"].data == script.read_bytes()
    assert by_path["guest-scripts/lib.sh"].mode & 0o777 == 0o644
    for d in ("dev", "proc", "sys", "tmp"):
        assert stat.S_ISDIR(by_path[d].mode)
    base = f"lib/modules/{p.kernel_version}"
    rng = by_path[f"{base}/kernel/drivers/char/hw_random/virtio-rng.ko"]
    assert rng.data == read_module(
        Path(p.modules) / "kernel/drivers/char/hw_random/virtio-rng.ko.xz")
    assert modinfo(rng.data)["name"] == ["virtio_rng"]
    assert modinfo(rng.data)["vermagic"][0].startswith(p.kernel_version + " ")
    assert b"kernel/drivers/char/hw_random/virtio-rng.ko:" in by_path[f"{base}/modules.dep"].data
    # Deterministic: the same inputs give the same bytes.
    again = build_initramfs(p.busybox, p.modules, tmp_path / "again.gz")
    assert again.read_bytes() == raw


def test_real_module_dependencies(tmp_path: Path) -> None:
    p = _provisioned()
    order = ModuleTree(p.modules).closure(["vfio_pci"])
    assert order[-1] == "vfio_pci"
    assert order.index("vfio") < order.index("vfio_pci_core") < order.index("vfio_pci")
