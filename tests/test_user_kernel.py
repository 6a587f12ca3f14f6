"""`run --kernel IMAGE --kernel-build DIR`: the one-line refusals (no VM), and the RHI
layout check of `run` against events of the RMM reading host calls in a layout.

The builds themselves (the Debian tree given as a user tree, and copies of it whose
pci-tsm.h carries the proposed devsec accept / run operation) are in
tests/test_guest_module.py (they need the provisioned build tree); a user kernel booted
through `run` is in tests/test_platform_options_vm.py.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import pytest

from tests.cca_support import bench
from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.run.job import GuestRun
from vfiouser_tdisp.run.module_build import check_user_kernel, image_release
from vfiouser_tdisp.run.platform import Boot, rhi_layout_check, user_kernel
from vfiouser_tdisp.run.provision import Provisioned, ProvisionError
from vfiouser_tdisp.tsm.cca.rmm import Rmm

CONFIG = "CONFIG_MODULES=y\nCONFIG_PCI_DOE=y\nCONFIG_PCI_TSM=y\nCONFIG_TSM=y\n"


def bzimage(path: Path, version: str) -> Path:
    """A file with the x86 boot protocol's setup header (Documentation/arch/x86/boot.rst):
    "HdrS" at 0x202, kernel_version at 0x20E = offset of the string - 0x200."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x800 - 0x200)
    text = f"{version} (someone@example) #1 SMP PREEMPT_DYNAMIC".encode()
    data[0x800:0x800 + len(text)] = text
    path.write_bytes(bytes(data))
    return path


def tree(path: Path, release: str = "7.9.0-test", config: str = CONFIG,
         symvers: bool = True) -> Path:
    (path / "include/config").mkdir(parents=True)
    (path / "Makefile").write_text("# a kernel tree\n")
    (path / ".config").write_text(config)
    (path / "include/config/kernel.release").write_text(release + "\n")
    if symvers:
        (path / "Module.symvers").write_text("")
    return path


def test_release_from_the_setup_header(tmp_path: Path) -> None:
    assert image_release(bzimage(tmp_path / "bz", "7.9.0-test")) == "7.9.0-test"
    (tmp_path / "elf").write_bytes(b"\x7fELF" + bytes(0x400))
    with pytest.raises(ProvisionError, match="not an x86 bzImage"):
        image_release(tmp_path / "elf")


def test_a_good_tree_is_taken(tmp_path: Path) -> None:
    uk = check_user_kernel(bzimage(tmp_path / "bz", "7.9.0-test"), tree(tmp_path / "k"))
    assert uk.release == "7.9.0-test" and uk.build == (tmp_path / "k").absolute()


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: (p / "k").mkdir(), "not a kernel build tree"),
    (lambda p: tree(p / "k", symvers=False), "no Module.symvers"),
    (lambda p: tree(p / "k", config="CONFIG_MODULES=y\nCONFIG_PCI_DOE=y\nCONFIG_TSM=m\n"),
     "lacks CONFIG_PCI_TSM, CONFIG_TSM"),
    (lambda p: tree(p / "k", release="6.12.0"), "is release 7.9.0-test but --kernel-build"),
])
def test_refusals_name_what_is_wrong(tmp_path: Path, make, why: str) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path)
    with pytest.raises(ProvisionError, match=why) as exc:
        check_user_kernel(bzimage(tmp_path / "bz", "7.9.0-test"), tmp_path / "k")
    assert "\n" not in str(exc.value)


def test_other_release_needs_its_modules(tmp_path: Path) -> None:
    prov = Provisioned(cache=str(tmp_path), qemu_prefix=[], qemu_extra_args=[], qemu_env={},
                       qemu_source="", qemu_version="", kernel="", kernel_version="7.3.4-x",
                       modules=str(tmp_path), busybox="")
    args = argparse.Namespace(kernel=str(bzimage(tmp_path / "bz", "7.9.0-test")),
                              kernel_build=str(tree(tmp_path / "k")), kernel_modules=None)
    with pytest.raises(ProvisionError, match="give --kernel-modules /lib/modules/7.9.0-test"):
        user_kernel(prov, args)
    args.kernel_modules = str(tmp_path)
    with pytest.raises(ProvisionError, match="no modules.dep"):
        user_kernel(prov, args)
    args.kernel = None
    with pytest.raises(ProvisionError, match="go together"):
        user_kernel(prov, args)


@pytest.mark.parametrize(("guest", "rmm", "ok"), [
    ("rhi-1.0-bet1", "rhi-1.0-bet1", True), ("linux-rfc-v4", "linux-rfc-v4", True),
    ("linux-rfc-v4", "rhi-1.0-bet1", False), ("rhi-1.0-bet1", "linux-rfc-v4", False)])
def test_rhi_layout_check(tmp_path: Path, guest: str, rmm: str, ok: bool) -> None:
    """The realm (here the Python one) in layout ``guest``, the RMM reading the host
    calls in ``rmm``: run's rhi_layout check passes only when they agree."""
    b = bench(tmp_path, layout=guest)
    b.rmm.rhi_layout = Rmm(rhi_layout=rmm).rhi_layout
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    try:
        b.host.connect()
        b.host.bind(0x10)
        b.realm.lock(0x10)
    finally:
        unsubscribe()
    name, passed, detail = rhi_layout_check(Boot(GuestRun(), list(rec.events)), rmm)
    assert name == "rhi_layout" and passed is ok, detail
