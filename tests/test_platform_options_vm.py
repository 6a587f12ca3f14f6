"""`run` with its options (issue 10): `--rhi-layout linux-rfc-v4` (the RMM and the
guest module in the Linux RFC v4 RHI numbering) and `--kernel IMAGE --kernel-build
DIR` (your own kernel).  The user-kernel boot is given Debian's own kernel image and
headers tree as the "user" inputs: it proves the plumbing (the module built against
the tree named, with that tree's configuration and cached by release and tree, that
kernel booted), not another kernel version.  One boot each, without the tamper boot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vfiouser_tdisp.run.platform import GUEST_STEPS, PlatformRun, run_platform, user_kernel
from vfiouser_tdisp.run.provision import Provisioned

pytestmark = pytest.mark.vm


def _all_pass(pr: PlatformRun) -> None:
    failed = [(n, d) for n, ok, d in pr.results if not ok]
    assert not failed, f"{failed}\n{pr.main.run.console[-3000:]}"
    assert {n for n, _ok, _d in pr.results} >= set(GUEST_STEPS) | {"rhi_layout"}


def test_linux_rfc_v4_layout(prov: Provisioned, tmp_path: Path) -> None:
    pr = run_platform(prov, tmp_path, timeout=240, tamper=False, log=False,
                      rhi_layout="linux-rfc-v4")
    _all_pass(pr)
    detail = next(d for n, _ok, d in pr.results if n == "rhi_layout")
    assert "read in linux-rfc-v4" in detail
    calls = [e for e in pr.main.of("rmm.host_call") if e.get("op") == "exit"]
    # the Linux numbering on the wire: GET_MEASUREMENTS 0xC5000053, GET_INTERFACE_REPORT
    # 0xC5000052, the VCA as object 4 (firmware-abi.md C.7)
    fids = {e["rhi"]: e["fid"] for e in calls}
    assert fids["VDEV_GET_MEASUREMENTS"] == "0xc5000053"
    assert fids["VDEV_GET_INTERFACE_REPORT"] == "0xc5000052"
    assert "VCA" in {e.get("object") for e in calls if e["rhi"] == "OBJECT_READ"}


def test_user_kernel_and_tree(prov: Provisioned, tmp_path: Path) -> None:
    build = Path(prov.cache) / "modbuild/usr/src" / f"linux-headers-{prov.kernel_version}"
    args = argparse.Namespace(kernel=prov.kernel, kernel_build=str(build),
                              kernel_modules=None)
    mine, ko = user_kernel(prov, args)
    assert mine.kernel == str(Path(prov.kernel).absolute())
    assert ko.parent.name.count("-") == 1     # <source hash>-<tree hash>
    assert ko.parent.parent.name == prov.kernel_version
    assert b"vermagic=" + prov.kernel_version.encode() in ko.read_bytes()
    pr = run_platform(mine, tmp_path, timeout=240, tamper=False, log=False, module=ko)
    _all_pass(pr)
    # the QEMU command line booted the image given as --kernel
    assert f"-kernel {mine.kernel}" in (tmp_path / "flow" / "qemu-cmdline.txt").read_text()
