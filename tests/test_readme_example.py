"""The README's "own QEMU" recipe, run as written: initramfs, serve, qemu-args,
the printed command boots the guest with the device, the checks pass."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import PROVISIONED_CACHE

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 420.0  # TCG boot plus every check, on a loaded machine


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- readme-example: own-qemu -->\n```sh\n(.*?)```\n<!-- /readme-example -->",
                  text, re.S)
    assert m, "the README lost its marked own-QEMU example"
    return m.group(1)


def test_readme_example_is_the_documented_command_sequence() -> None:
    script = readme_example()
    for needed in ("vfiouser-tdisp initramfs --out initrd.gz",
                   "vfiouser-tdisp qemu-args --socket /tmp/vtdisp.sock --initrd initrd.gz",
                   "sh vm.sh"):
        assert needed in script


@pytest.mark.vm
def test_readme_own_qemu_example_boots_the_guest() -> None:
    if not (PROVISIONED_CACHE / "provisioned.json").exists():
        pytest.skip("not provisioned")
    if os.path.exists("/tmp/vtdisp.sock"):
        pytest.skip("/tmp/vtdisp.sock is in use (the README's path)")
    bindir = str(Path(sys.executable).parent)  # where `vfiouser-tdisp` is installed
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               VFIOUSER_TDISP_CACHE=str(PROVISIONED_CACHE))
    with tempfile.TemporaryDirectory(prefix="vt-readme-") as cwd:
        proc = subprocess.Popen(["bash", "-e", "-c", readme_example()], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            tail = out.decode(errors="replace")[-3000:]
            pytest.fail(f"not done within {DEADLINE:.0f} s:\n{tail}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-3000:]
        results = re.findall(r"VTDISP-RESULT (\S+) (PASS|FAIL)", text)
        assert ("device", "PASS") in results, text[-3000:]
        assert all(ok == "PASS" for _n, ok in results), text[-3000:]
        done = re.search(r"VTDISP-DONE (\d+) (\d+)", text)
        assert done and done.group(2) == "0" and int(done.group(1)) == len(results)
        assert (Path(cwd) / "events.jsonl").stat().st_size > 0
        assert (Path(cwd) / "initrd.gz").exists()
    assert not os.path.exists("/tmp/vtdisp.sock")  # `kill %1` stopped the server cleanly
