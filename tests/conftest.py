"""Shared fixtures: a real server on a real UNIX socket, run on a background loop."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.server import RunningDevices, start_devices
from vfiouser_tdisp.vfio_user.server import Reactor


class ServerThread:
    """Runs a reactor with ``start_devices`` in a background thread."""

    def __init__(self, paths: list[str], profile: str) -> None:
        self.paths = paths
        self.profile = profile
        self.reactor = Reactor()
        self.running: RunningDevices | None = None
        self.thread = threading.Thread(target=self.reactor.run, daemon=True)

    def start(self) -> ServerThread:
        self.running = start_devices(self.reactor, self.paths, self.profile)
        self.thread.start()
        return self

    def call(self, func):  # type: ignore[no-untyped-def]
        """Run ``func`` on the reactor thread and return its result."""
        done = threading.Event()
        box: list[object] = []

        def run() -> None:
            box.append(func())
            done.set()

        self.reactor.call_soon(run)
        assert done.wait(10)
        return box[0]

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.close)
        self.reactor.stop()
        self.thread.join(10)
        self.reactor.close()

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
