"""./vt: one venv per checkout in a shared cache, installed once, under a lock."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # installs two venvs


def checkout_copy(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    for name in filter(None, files):
        rel = Path(os.fsdecode(name))
        if (ROOT / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    return dst


def vt(checkout: Path, cache: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, VFIOUSER_TDISP_CACHE=str(cache))
    env.pop("VIRTUAL_ENV", None)
    return subprocess.Popen([str(checkout / "vt"), *args], cwd=checkout, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(p: subprocess.Popen[str]) -> str:
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-2000:]
    assert out == "vfiouser-tdisp 0.1.0\n"
    return err


def test_two_checkouts_share_a_cache_without_reinstalling_each_other(tmp_path: Path) -> None:
    a = checkout_copy(tmp_path / "a")
    b = checkout_copy(tmp_path / "b")
    cache = tmp_path / "cache"
    # Two at once in one checkout: the lock lets one install, the other waits.
    first = [vt(a, cache, "--version"), vt(a, cache, "--version")]
    errs = [finish(p) for p in first]
    assert sum("vt: installing" in e for e in errs) == 1
    assert "vt: installing" in finish(vt(b, cache, "--version"))
    for checkout in (a, b, a, b):  # neither reinstalls over the other
        assert "vt: installing" not in finish(vt(checkout, cache, "--version"))
    venvs = sorted(p.name for p in (cache / "venvs").iterdir() if p.is_dir())
    assert len(venvs) == 2
    assert {(cache / "venvs" / v / ".checkout").read_text().strip() for v in venvs} == {
        str(a), str(b)}
