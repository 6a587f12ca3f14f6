"""Shared pieces for the platform tests (CCA, TDX, SEV-TIO): our device behind DMTF's
spdm-emu socket, ``serve --platform`` as its own process, DMTF's ``spdm_responder_emu`` as
an independent responder, and the detail of a step of the platform flow run in a VM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient
from vfiouser_tdisp.run.platform import PlatformRun
from vfiouser_tdisp.server import RunningDevices, start_devices
from vfiouser_tdisp.tsm.platform import DoeTransport, assign_bars, socket_transport
from vfiouser_tdisp.vfio_user.client import VfioUserClient


@contextmanager
def attached_guest(path: str) -> Iterator[VfioUserClient]:
    """A vfio-user client playing the guest: it assigns the BARs (Memory Space and Bus
    Master Enable on) as the guest's firmware would, then stays attached until exit."""
    with VfioUserClient(path) as fn0:
        fn0.version()
        assign_bars(fn0.config_read32, fn0.config_write32)
        yield fn0


@contextmanager
def over_spdm_emu(sock_dir: Path, cache: Path) -> Iterator[tuple[DoeTransport, RunningDevices]]:
    """A virtio-rng device served with ``--spdm-port``: its BARs assigned over vfio-user
    first, as a guest's firmware would, then a DOE transport over DMTF's socket protocol
    to it.  Yields (transport, the running devices); everything is closed on exit."""
    running = start_devices([str(sock_dir / "dev.sock")], "virtio-rng", spdm_port=0,
                            identity_options={"identity_dir": str(cache)})
    try:
        with attached_guest(str(sock_dir / "dev.sock")):
            client = SpdmEmuClient("127.0.0.1", running.spdm_servers[0].port)
            try:
                yield socket_transport(client), running
            finally:
                client.close()
    finally:
        running.close()


@contextmanager
def serve_platform(sock_dir: Path, platform: str) -> Iterator[str]:
    """``serve --platform PLATFORM --quiet`` in its own process; yields the device's socket
    path once it and the firmware port's (PATH.fwport) are listening; SIGTERM on exit."""
    path = str(sock_dir / "dev.sock")
    proc = subprocess.Popen([sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", path,
                             "--platform", platform, "--quiet"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (Path(path).exists() and Path(path + ".fwport").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
            time.sleep(0.05)
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


@contextmanager
def dmtf_responder_emu(tmp_path: Path) -> Iterator[int]:
    """DMTF spdm-emu's ``spdm_responder_emu`` (libspdm with its own IDE_KM and TDISP
    samples) listening on 127.0.0.1 over its PCI DOE socket transport; its port yielded,
    stopped on exit.  Built outside the repository: SPDM_RESPONDER_EMU names the binary,
    its sample keys are looked up next to it in ../../libspdm/unit_test/sample_key or in
    SPDM_EMU_KEYS; without the binary the test is skipped."""
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


def step_detail(pr: PlatformRun, name: str) -> str:
    """The detail of the guest step ``name``, which must have been reported and passed
    (the console's tail in the failure message)."""
    got = {n: (ok, d) for n, ok, d in pr.results}
    assert name in got, f"{name} not reported"
    ok, detail = got[name]
    assert ok, f"{name}: {detail}\n{pr.main.run.console[-4000:]}"
    return detail
