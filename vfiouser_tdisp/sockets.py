"""Socket helpers shared by the transports (vfio-user, spdm-emu).

A UNIX socket path is a shared name in the file system, so the server is
careful with it: an existing socket is only removed when a connect() proves
nobody listens on it (ECONNREFUSED; a busy listener whose backlog is full
answers EAGAIN and is alive), the socket is created 0600 through the umask, and
on exit the path is only unlinked while it still names the very socket we
bound (same device and inode), never a file someone put there since.
:func:`private_umask` keeps what the server creates its owner's.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import stat
from dataclasses import dataclass


def private_umask() -> int:
    """Clear group/other bits from the process umask; returns the old one.

    Everything ``serve`` creates is its owner's: the identity cache (private
    keys, and directories made by the identity layer with the umask's mode),
    sockets, captures, key logs.  Under ``umask 000`` those directories would
    otherwise be 0777.  Set once at start-up, before any thread runs.
    """
    old = os.umask(0o077)
    os.umask(old | 0o077)
    return old


def wake_blocked(sock: socket.socket) -> None:
    """Shut a socket down so a thread blocked in accept/recv on it returns."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected or already gone: nothing is blocked on it


def socket_is_stale(path: str) -> bool:
    """True only if connecting to the socket at ``path`` is refused.

    A non-blocking connect() to a UNIX stream socket fails with ECONNREFUSED
    when no socket is bound to the name any more (the server died), and with
    EAGAIN when a live listener's backlog is full: that one is busy, not stale.
    Any other outcome (connected, EACCES, ...) is not proof of staleness.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        err = probe.connect_ex(path)
    finally:
        probe.close()
    return err == errno.ECONNREFUSED


def prepare_socket_path(path: str) -> None:
    """Refuse to clobber a non-socket file or a live socket; remove a stale one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to overwrite it")
    if not socket_is_stale(path):
        raise FileExistsError(f"{path} is a socket another server is listening on")
    with_same_inode_unlink(path, (st.st_dev, st.st_ino))


@dataclass(frozen=True)
class BoundSocket:
    """A listening UNIX socket and the (device, inode) of the file it created."""

    sock: socket.socket
    path: str
    ident: tuple[int, int]

    def unlink(self) -> bool:
        """Remove the socket file if the path still names it; True if removed."""
        return with_same_inode_unlink(self.path, self.ident)


def bind_unix_listener(path: str, backlog: int = 4) -> BoundSocket:
    """Bind and listen on ``path`` (created 0600), after :func:`prepare_socket_path`."""
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound and listening under a temporary name first, then linked into place: a
    # client that sees the path (QEMU, a script polling for it) never finds a socket
    # that is not listening yet (ECONNREFUSED).  link() never replaces a file that
    # appeared at the path meanwhile.
    tmp = os.path.join(os.path.dirname(path) or ".", f".vt{secrets.token_hex(3)}")
    try:
        old_umask = os.umask(0o177)  # created 0600: no chmod of a path afterwards
        try:
            sock.bind(tmp)
        finally:
            os.umask(old_umask)
        try:
            sock.listen(backlog)
            st = os.lstat(tmp)
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except BaseException:
        sock.close()
        raise
    return BoundSocket(sock, path, (st.st_dev, st.st_ino))


def with_same_inode_unlink(path: str, ident: tuple[int, int]) -> bool:
    """Unlink ``path`` only if it is a socket with this (device, inode)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) != ident:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
