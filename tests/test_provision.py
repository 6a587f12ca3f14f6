"""Provisioning: apt mirror discovery, cache location, QEMU detection, kernel
package resolution, the stamp.  Nothing here downloads anything."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from vfiouser_tdisp.run.provision import (
    Provisioned,
    ProvisionError,
    QemuInstall,
    cache_dir,
    check_kernel_config,
    dependency_names,
    ensure_provisioned,
    find_qemu,
    host_release,
    kernel_parts,
    parse_apt_mirrors,
    probe_qemu,
    read_apt_sources,
    read_stamp,
    write_stamp,
)

from .conftest import PROVISIONED_CACHE

REPO = Path(__file__).resolve().parents[1]

DEB822 = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 Version: GnuPG v2
 URIs: http://not-a-field.example.org/debian
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm
Components: main
"""


def _apt_dir(tmp_path: Path, files: dict[str, str]) -> tuple[str, str]:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return str(tmp_path / "sources.list"), str(d)


def test_deb822_mirror_is_the_entry_naming_the_release(tmp_path: Path) -> None:
    lst, d = _apt_dir(tmp_path, {
        "debian.sources": DEB822,
        "vendor.sources": "Types: deb\nURIs: https://vendor.example.com/apt\nSuites: stable\n",
        "off.sources": "Enabled: no\nTypes: deb\nURIs: http://off.example.org/debian\n"
                       "Suites: bookworm\n",
    })
    assert parse_apt_mirrors(lst, d, release="bookworm") == ["http://mirror.example.org/debian"]
    # The continuation lines of the inline key are not fields.
    uris = [s.uri for s in read_apt_sources(lst, d)]
    assert "http://not-a-field.example.org/debian" not in uris
    assert "http://src.example.org/debian" not in uris  # deb-src only
    assert "http://off.example.org/debian" not in uris  # Enabled: no
    # Another release finds nothing here rather than guessing.
    assert parse_apt_mirrors(lst, d, release="trixie") == []


def test_one_line_mirror_with_options_and_comments(tmp_path: Path) -> None:
    lst = tmp_path / "sources.list"
    lst.write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb-src http://src.example.org/debian bookworm main\n"
        "deb http://security.example.org/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://ftp.example.org/debian/ "
        "bookworm main  # trailing comment\n")
    assert parse_apt_mirrors(str(lst), str(tmp_path / "none"), release="bookworm") == [
        "http://ftp.example.org/debian"]


def test_release_entry_ranks_before_updates_only_entry(tmp_path: Path) -> None:
    lst, d = _apt_dir(tmp_path, {
        "a.list": "deb http://updates.example.org/debian bookworm-updates main\n",
        "b.sources": "Types: deb\nURIs: http://main.example.org/debian/\nSuites: bookworm\n",
    })
    assert parse_apt_mirrors(lst, d, release="bookworm") == [
        "http://main.example.org/debian", "http://updates.example.org/debian"]


def test_unknown_release_falls_back_to_debian_uris(tmp_path: Path) -> None:
    lst, d = _apt_dir(tmp_path, {
        "x.list": "deb http://vendor.example.com/apt stable main\n"
                  "deb http://m.example.org/debian-security sid-security main\n"
                  "deb http://m.example.org/debian sid main\n"})
    assert parse_apt_mirrors(lst, d, release="") == ["http://m.example.org/debian"]
    assert parse_apt_mirrors(lst, d, release="sid") == ["http://m.example.org/debian"]


def test_host_release_from_os_release(tmp_path: Path) -> None:
    f = tmp_path / "os-release"
    f.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
    assert host_release(str(f)) == "bookworm"
    f.write_text('NAME="Something"\n')
    assert host_release(str(f)) is None
    assert host_release(str(tmp_path / "missing")) is None


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFIOUSER_TDISP_CACHE", str(tmp_path / "explicit-env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert cache_dir() == tmp_path / "explicit-env"
    monkeypatch.delenv("VFIOUSER_TDISP_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "vfiouser-tdisp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vfiouser-tdisp"


def test_kernel_package_resolution_from_depends_fields() -> None:
    # The 7.x layout: linux-image-<abi> is a meta package over three parts.
    depends = ("dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, "
               "linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), "
               "linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), "
               "linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)")
    assert dependency_names(depends)[0] == "dracut"
    assert kernel_parts("linux-image-7.3.4+deb13-amd64", depends) == [
        "linux-base-7.3.4+deb13-amd64", "linux-binary-7.3.4+deb13-amd64",
        "linux-modules-7.3.4+deb13-amd64"]
    # The older layout: the image package holds everything itself.
    old = "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"
    assert kernel_parts("linux-image-6.12.107+deb13-amd64", old) == [
        "linux-image-6.12.107+deb13-amd64"]


def test_kernel_config_must_have_doe_and_tsm() -> None:
    good = "CONFIG_PCI_DOE=y\nCONFIG_PCI_TSM=y\nCONFIG_VIRTIO_PCI=y\n"
    check_kernel_config(good, "7.3")
    with pytest.raises(ProvisionError, match="CONFIG_PCI_TSM=y"):
        check_kernel_config("CONFIG_PCI_DOE=y\n# CONFIG_PCI_TSM is not set\n"
                            "CONFIG_VIRTIO_PCI=y\n", "6.12")
    with pytest.raises(ProvisionError, match="CONFIG_PCI_DOE=y"):
        check_kernel_config("CONFIG_PCI_DOE=m\nCONFIG_PCI_TSM=y\nCONFIG_VIRTIO_PCI=y\n", "x")


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_explicit_qemu_that_is_not_one_is_an_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFIOUSER_TDISP_QEMU", raising=False)
    old = _executable(tmp_path / "qemu-7.2", "#!/bin/sh\necho 'QEMU emulator version 7.2.0'\n")
    with pytest.raises(ProvisionError, match="lacks vfio-user-pci"):
        find_qemu(str(old))
    monkeypatch.setenv("VFIOUSER_TDISP_QEMU", str(tmp_path / "does-not-exist"))
    with pytest.raises(ProvisionError, match=r"\$VFIOUSER_TDISP_QEMU"):
        find_qemu(None)


def test_qemu_probe_has_a_deadline(tmp_path: Path) -> None:
    hung = _executable(tmp_path / "hung-qemu", "#!/bin/sh\nexec sleep 60\n")
    t = time.monotonic()
    assert probe_qemu(QemuInstall([str(hung)]), timeout=1.0) is None
    assert time.monotonic() - t < 10


def _provisioned() -> Provisioned:
    p = read_stamp(PROVISIONED_CACHE)
    if p is None or p.missing():
        pytest.skip("not provisioned (run `vfiouser-tdisp setup`)")
    return p


def test_provisioned_qemu_is_found_through_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _provisioned()
    # A wrapper script around the provisioned QEMU, as a user's own build would be.
    env = " ".join(f"{k}={v}" for k, v in p.qemu_env.items())
    wrapper = _executable(tmp_path / "qemu-system-x86_64", "#!/bin/sh\nexec env "
                          f"{env} {' '.join(p.qemu.command([]))} \"$@\"\n")
    monkeypatch.setenv("VFIOUSER_TDISP_QEMU", str(wrapper))
    q = find_qemu(None)
    assert q is not None and q.prefix == [str(wrapper)]
    assert "VFIOUSER_TDISP_QEMU" in q.source
    major, minor = (int(x) for x in q.version.split(".")[:2])
    assert (major, minor) >= (10, 1)


def test_stamp_round_trip_and_fast_path(tmp_path: Path) -> None:
    p = _provisioned()
    root = tmp_path / "cache"
    root.mkdir()
    copy = Provisioned(**{**p.__dict__, "cache": str(root)})
    write_stamp(root, copy)
    assert read_stamp(root) == copy
    t = time.monotonic()
    assert ensure_provisioned(root) == copy  # valid stamp: no subprocess, no network
    assert time.monotonic() - t < 0.5
    (root / "provisioned.json").write_text('{"stamp_version": 1, "cache": "x"}')
    assert read_stamp(root) is None  # an older stamp is not trusted
    gone = Provisioned(**{**p.__dict__, "kernel": str(tmp_path / "no-vmlinuz")})
    assert gone.missing() == [str(tmp_path / "no-vmlinuz")]


def test_no_mirror_host_or_url_in_the_run_code() -> None:
    files = list((REPO / "vfiouser_tdisp" / "run").glob("*.py")) + [
        f for f in (REPO / "guest-scripts").iterdir() if f.is_file()]
    for f in files:
        text = f.read_text()
        assert not re.search(r"\b(https?|ftp)://", text), f"{f} contains a URL"
        assert "deb.debian.org" not in text, f


def test_guest_scripts_are_posix_sh_syntax() -> None:
    sh = "/bin/sh"
    if not os.path.exists(sh):
        pytest.skip("no /bin/sh")
    for f in sorted((REPO / "guest-scripts").iterdir()):
        proc = subprocess.run([sh, "-n", str(f)], capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, f"{f.name}: {proc.stderr}"


def test_tests_keep_identity_keys_out_of_the_real_cache(private_cache: Path) -> None:
    """conftest's autouse fixture: a device identity generated by a test lands in
    the test's own cache, never in the provisioned (user's) one."""
    from vfiouser_tdisp.device.device import Device, get_profile
    from vfiouser_tdisp.device.identity import identity_for_device
    from vfiouser_tdisp.paths import identity_dir

    real = PROVISIONED_CACHE / "identity"
    before = sorted(p.name for p in real.rglob("*")) if real.exists() else []
    assert cache_dir() == private_cache != PROVISIONED_CACHE
    # the default identity cache, as serve and run resolve it
    identity_for_device(Device(get_profile("virtio-rng")), identity_dir=identity_dir())
    assert any((private_cache / "identity").rglob("*"))
    after = sorted(p.name for p in real.rglob("*")) if real.exists() else []
    assert after == before
