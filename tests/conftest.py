"""Shared fixtures: a real server on a real UNIX socket, run on a background loop.

Every test gets its own empty cache directory ($VFIOUSER_TDISP_CACHE), so no
test writes device identity keys (or anything else) into the user's real
cache, and no test sees what another left there.  The provisioned QEMU /
guest kernel / busybox tree is read-only input to the VM tests: it stays where
`vfiouser-tdisp setup` put it, found through :data:`PROVISIONED_CACHE`
(resolved once, from the environment the test run started with).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.run.provision import Provisioned, ProvisionError, cache_dir, ensure_provisioned
from vfiouser_tdisp.server import RunningDevices, start_devices

# Where `setup` provisioned QEMU and the guest (the user's cache, or the one
# $VFIOUSER_TDISP_CACHE named when pytest started): resolved before any test
# replaces the variable.
PROVISIONED_CACHE: Path = cache_dir()


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cache for this test (and the servers it starts)."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("VFIOUSER_TDISP_CACHE", str(path))
    return path


class ServerThread:
    """Runs ``start_devices`` (accept and connection threads) for a test."""

    def __init__(self, paths: list[str], profile: str) -> None:
        self.paths = paths
        self.profile = profile
        self.running: RunningDevices | None = None

    def start(self) -> ServerThread:
        self.running = start_devices(self.paths, self.profile)
        return self

    def stop(self) -> None:
        if self.running is not None:
            self.running.close()

    @property
    def device(self):  # type: ignore[no-untyped-def]
        assert self.running is not None
        return self.running.devices[0]


@pytest.fixture(scope="module")
def prov() -> Provisioned:
    """The provisioned QEMU / guest kernel / busybox tree; a VM test fails without it."""
    try:
        return ensure_provisioned(PROVISIONED_CACHE)
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")


def _recording() -> Iterator[Recorder]:
    """Every event emitted while the test runs."""
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    yield rec
    unsubscribe()


events = pytest.fixture(_recording, name="events")
recorder = pytest.fixture(_recording, name="recorder")   # the name the platform tests use


@pytest.fixture
def sock_dir(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be long.
    short = Path(f"/tmp/vt-{os.getpid()}-{abs(hash(str(tmp_path))) % 10**8}")
    short.mkdir(exist_ok=True)
    yield short
    for p in short.iterdir():
        p.unlink()
    short.rmdir()


@pytest.fixture
def dma_server(sock_dir: Path) -> Iterator[ServerThread]:
    srv = ServerThread([str(sock_dir / "dev.sock")], "dma-test").start()
    yield srv
    srv.stop()
