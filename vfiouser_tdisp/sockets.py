"""Socket helpers shared by the transports (vfio-user, spdm-emu)."""

from __future__ import annotations

import socket


def wake_blocked(sock: socket.socket) -> None:
    """Shut a socket down so a thread blocked in accept/recv on it returns."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected or already gone: nothing is blocked on it
