"""DMTF spdm-emu's ``spdm_responder_emu`` as an independent responder for the platform
tests (CCA, TDX, SEV-TIO): libspdm with its own IDE_KM and TDISP samples, over its PCI DOE
socket transport.  Built outside the repository: SPDM_RESPONDER_EMU names the binary; its
sample keys are looked up next to it in ../../libspdm/unit_test/sample_key, or in
SPDM_EMU_KEYS.  Without the binary the test is skipped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def dmtf_responder_emu(tmp_path: Path) -> Iterator[int]:
    """The responder listening on 127.0.0.1 (its port yielded); stopped on exit."""
    binary = os.environ.get("SPDM_RESPONDER_EMU")
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip("SPDM_RESPONDER_EMU does not name DMTF's spdm_responder_emu")
    keys = Path(os.environ.get("SPDM_EMU_KEYS") or
                Path(binary).resolve().parents[2] / "libspdm/unit_test/sample_key")
    work = tmp_path / "keys"
    shutil.copytree(keys, work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--trans", "PCI_DOE", "--ip", "127.0.0.1", "--port",
                             str(port)], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # DMTF's server takes one client and stops after it: watch for LISTEN in
        # /proc/net/tcp instead of probing with a connection.
        deadline = time.monotonic() + 10
        listening = f":{port:04X} 00000000:0000 0A"
        while time.monotonic() < deadline and \
                listening not in Path("/proc/net/tcp").read_text():
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
