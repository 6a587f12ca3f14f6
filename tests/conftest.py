"""Shared fixtures: a real server on a real UNIX socket, run on a background loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfiouser_tdisp.events import LOG, Recorder
from vfiouser_tdisp.server import RunningDevices, start_devices


class ServerThread:
    """Runs ``start_devices`` on an event loop in a thread."""

    def __init__(self, paths: list[str], profile: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.paths = paths
        self.profile = profile
        self.running: RunningDevices | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.running = self.loop.run_until_complete(start_devices(self.paths, self.profile))
        except BaseException as exc:  # surfaced to the test
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self.thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

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
