"""Structured events: one JSON object per line, the project's only log format.

Every layer reports what happened through :func:`emit`.  Sinks (a JSON-lines
file, a human renderer on stderr, an in-memory list for tests) subscribe to the
process-wide :class:`EventLog`.  Human output is rendered from the same events
(render.py); docs/events.md catalogues every event and its fields.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

Event = dict[str, Any]
Sink = Callable[[Event], None]


class EventLog:
    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()
        # One event reaches every sink before the next one starts, so the JSON
        # lines and the terminal show the same order whichever threads emit.
        # Reentrant: a sink may emit.
        self._deliver = threading.RLock()

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        with self._lock:
            self._sinks.append(sink)

        def unsubscribe() -> None:
            with self._lock:
                if sink in self._sinks:
                    self._sinks.remove(sink)

        return unsubscribe

    def emit(self, kind: str, **fields: Any) -> Event:
        with self._deliver:
            event: Event = {"time": round(time.time(), 6), "event": kind, **fields}
            for sink in list(self._sinks):
                sink(event)
        return event


LOG = EventLog()


def emit(kind: str, **fields: Any) -> Event:
    """Record one event (``kind`` is dotted, e.g. ``doe.abort``)."""
    return LOG.emit(kind, **fields)


class JsonLinesSink:
    """Appends events to a file, one JSON object per line, flushed each time."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        self.stream.write(json.dumps(event, default=_json_default, sort_keys=False) + "\n")
        self.stream.flush()


EVENT_LOG_MODE = 0o600  # events may name keys (--debug-ide-keys): the owner's only


def open_event_log(path: str | os.PathLike[str]) -> IO[str]:
    """Open ``path`` for appending events, created with mode 0600.

    A symlink as the last component is refused (O_NOFOLLOW), so the server
    never writes through a link someone planted; anything but a regular file
    (a FIFO, a device) is refused too.  An existing file keeps its mode: it is
    the user's, and nothing here chmods a file it did not create.
    """
    flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
             | os.O_NONBLOCK)
    try:
        fd = os.open(path, flags, EVENT_LOG_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "is a symlink; refusing to follow it", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)  # O_NONBLOCK only kept a FIFO from blocking the open
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


class HumanSink:
    """Renders events as short lines for a terminal (the words are in render.py:
    one line per protocol exchange; ``verbose`` adds chatty events and fields)."""

    def __init__(self, stream: IO[str] | None = None, kinds: tuple[str, ...] = (),
                 verbose: bool = False) -> None:
        from .render import Renderer  # render.py reads events; imported late, no cycle

        self.stream = stream or sys.stderr
        self.renderer = Renderer(verbose, kinds)

    def __call__(self, event: Event) -> None:
        line = self.renderer.render(event)
        if line is not None:
            self.stream.write(line + "\n")
            self.stream.flush()


class Recorder:
    """Collects events in memory (used by tests and by the run command)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e["event"] == kind]


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if hasattr(value, "name"):
        return value.name
    return str(value)
