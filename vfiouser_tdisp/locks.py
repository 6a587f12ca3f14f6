"""The device lock: one per physical device, taken around every request.

Functions of one device share state (DOE on function 0 drives the TDIs of all
functions), so every transport that reaches a device (vfio-user connections of
each function, the spdm-emu socket, interrupt eventfd watchers) holds the
device's lock while it handles a request.  It is reentrant, and it can be let
go for the duration of blocking I/O (:meth:`DeviceLock.released`): a request
that has to wait on a client's socket must not stall the other transports.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType


class DeviceLock:
    """A reentrant lock that its owner can release completely for a while."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return
        self._lock.acquire()
        self._owner = me
        self._depth = 1

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise RuntimeError("device lock released by a thread that does not hold it")
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()

    def held(self) -> bool:
        """True when the calling thread holds the lock."""
        return self._owner == threading.get_ident()

    def __enter__(self) -> DeviceLock:
        self.acquire()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Let go of the lock (however deeply held) and take it back after.

        Used around blocking socket I/O in the middle of a request.  A caller
        that does not hold the lock passes straight through.
        """
        if self._owner != threading.get_ident():
            yield
            return
        depth = self._depth
        self._depth = 0
        self._owner = None
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._owner = threading.get_ident()
            self._depth = depth
