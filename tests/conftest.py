"""Shared fixtures: a real server on a real UNIX socket, run on a background loop."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.server import RunningDevices, start_devices


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


@pytest.fixture
def events() -> Iterator[Recorder]:
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    yield rec
    unsubscribe()


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
