"""Packaging: the sdist carries docs/ and guest-scripts/, installs print no
setuptools deprecation warnings, and an installed command finds its guest
scripts with `pip install --user` (temporary HOME) or into any prefix."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vfiouser_tdisp.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
# The interpreter the venv was made from: `--user` installs are refused inside a venv,
# and it does not see this checkout's editable install.
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
LOOKUP = "from vfiouser_tdisp.run.initramfs import GUEST_SCRIPTS; print(GUEST_SCRIPTS)"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files of this checkout, copied (builds write into the tree)."""
    dst = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    for name in filter(None, files):
        path = Path(os.fsdecode(name))
        if not (ROOT / path).exists():
            continue
        (dst / path).parent.mkdir(parents=True, exist_ok=True)
        (dst / path).write_bytes((ROOT / path).read_bytes())
        (dst / path).chmod((ROOT / path).stat().st_mode & 0o777)
    return dst


def pip_install(python: str, source: Path, *args: str, env: dict[str, str]) -> str:
    r = subprocess.run([python, "-m", "pip", "install", "-v", "--no-deps", "--no-cache-dir",
                        "--disable-pip-version-check", *args, str(source)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def no_deprecation(log: str) -> None:
    bad = [ln for ln in log.splitlines()
           if "SetuptoolsDeprecationWarning" in ln or "License classifiers are deprecated" in ln
           or "`project.license` as a TOML table is deprecated" in ln]
    assert bad == [], bad


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == "vfiouser-tdisp 0.1.0\n"


def test_sdist_carries_docs_guest_scripts_and_license(source: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path),
                        str(source)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    no_deprecation(r.stdout + r.stderr)
    (sdist,) = tmp_path.glob("vfiouser_tdisp-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(next(n for n in tar.getnames()
                                        if n.count("/") == 1 and n.endswith("/PKG-INFO")))
        assert pkg_info is not None
        meta = pkg_info.read().decode()
    for want in ("LICENSE", "README.md", "docs/provisioning.md", "guest-scripts/init",
                 "guest-scripts/lib.sh", "guest-scripts/check_device.sh"):
        assert want in names, want
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert "Project-URL" not in meta and "Home-page" not in meta  # no public home yet


def test_user_install_finds_its_guest_scripts(source: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONUSERBASE=str(home / ".local"))
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    log = pip_install(BASE_PYTHON, source, "--user", env=env)
    no_deprecation(log)
    r = subprocess.run([BASE_PYTHON, "-c", LOOKUP], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    found = Path(r.stdout.strip())
    assert found == home / ".local" / "share" / "vfiouser-tdisp" / "guest-scripts"
    assert (found / "init").read_bytes() == (ROOT / "guest-scripts" / "init").read_bytes()


def test_prefix_install_finds_its_guest_scripts(source: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("PYTHONPATH", None)
    pip_install(BASE_PYTHON, source, "--prefix", str(prefix), env=env)
    (site_packages,) = prefix.glob("lib/python3*/site-packages")
    r = subprocess.run([BASE_PYTHON, "-c", LOOKUP], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(env, PYTHONPATH=str(site_packages)),
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == prefix / "share" / "vfiouser-tdisp" / "guest-scripts"
