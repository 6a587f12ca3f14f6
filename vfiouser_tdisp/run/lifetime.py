"""Children that die with their parent.

``run`` starts ``serve`` and QEMU in their own sessions (so a Ctrl-C in the
terminal reaches ``run``, which stops them in order).  When ``run`` itself is
killed with SIGKILL (a CI timeout kills the job's process group), nothing would
stop them: ``serve`` would listen forever and QEMU run until the guest powers
off.  Linux's PR_SET_PDEATHSIG (prctl(2)) makes the kernel send a signal to
the child when the thread that forked it exits; it survives execve (for
non-setuid programs), so it is set in the child between fork and exec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                   ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that has the child receive ``sig`` when this process's
    forking thread exits.  Call it in the thread that starts the child.

    If the parent is already gone when the child gets there (it died between
    fork and prctl), the child exits at once instead of running orphaned.
    """
    parent = os.getpid()

    def preexec() -> None:
        # Runs in the forked child: only the prepared ctypes call, no imports.
        if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


__all__ = ["PR_SET_PDEATHSIG", "die_with_parent"]
