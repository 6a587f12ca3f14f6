"""`run --shell` / `run --shell-only`: the guest's console on the user's terminal.

With ``--shell`` the flow runs as usual (no tamper boot), then the guest's /init hands
its console to a shell (``vtdisp.shell=1``; guest-scripts/shell_env.sh loads the guest
module and puts the ``vt-*`` helper commands on PATH); ``--shell-only`` skips the flow
(``vtdisp.checks=none``) and goes straight to that shell.  Leaving the shell powers the
guest off, QEMU exits and `run` goes on (the step lines and report.html for ``--shell``).

QEMU's serial port and its monitor share stdio (``mux=on``: Ctrl-A c switches, Ctrl-A x
quits QEMU); Ctrl-C goes to the guest (``signal=off``); everything the guest prints is
also logged to ``console.log`` so the results are parsed as usual.  A session gets a
deadline too (:data:`SHELL_DEADLINE`), and the terminal's settings are restored
whatever happens to QEMU.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import IO

from .lifetime import die_with_parent
from .qemu import kill_group

SHELL_DEADLINE = 3600.0  # an interactive session ends (QEMU killed) after an hour
MODES = ("after", "only")


def shell_mode(args: object) -> str:
    """"after" (--shell), "only" (--shell-only) or "" from `run`'s arguments."""
    if getattr(args, "shell_only", False):
        return "only"
    return "after" if getattr(args, "shell", False) else ""


def terminal_problem(stdin: IO[str] | None = None) -> str | None:
    """Why the guest's console cannot be put on this terminal (None: it can)."""
    stream = stdin if stdin is not None else sys.stdin
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return "stdin is not a file"
    if not os.isatty(fd):
        return "stdin is not a terminal (the guest's console needs one)"
    return None


def shell_append(append: str, mode: str) -> str:
    """The guest's kernel options for ``mode``: the flow or no checks, then the shell."""
    if mode == "only":
        append = append.replace("vtdisp.checks=platform", "vtdisp.checks=none")
    return append + " vtdisp.shell=1"


def console_on_stdio(args: list[str], console_log: str) -> list[str]:
    """QEMU ``args`` with the serial port (``-serial file:LOG``) moved to stdio, muxed
    with the monitor, and still logged to ``console_log``."""
    out = list(args)
    i = out.index("-serial")
    chardev = f"stdio,id=vtcon,mux=on,signal=off,logfile={console_log}"
    out[i:i + 2] = ["-chardev", chardev, "-serial", "chardev:vtcon",
                    "-mon", "chardev=vtcon,mode=readline"]
    return out


def run_on_terminal(cmd: list[str], env: Mapping[str, str] | None,
                    deadline: float = SHELL_DEADLINE) -> tuple[int | None, bytes]:
    """Run QEMU with this process's stdin/stdout (the terminal) for at most
    ``deadline`` s; its stderr is captured.  Returns (exit code or None, stderr)."""
    saved = None
    with contextlib.suppress(ImportError, OSError):
        import termios

        saved = termios.tcgetattr(sys.stdin.fileno())
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=dict(env) if env is not None else None,
                                stdin=None, stdout=None, stderr=err,
                                start_new_session=True, preexec_fn=die_with_parent())
        try:
            rc: int | None = proc.wait(deadline)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:
                kill_group(proc)
            if saved is not None:  # QEMU put the terminal in raw mode
                with contextlib.suppress(OSError):
                    import termios

                    termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        err.seek(0)
        return rc, err.read()


__all__ = ["MODES", "SHELL_DEADLINE", "console_on_stdio", "run_on_terminal", "shell_append",
           "shell_mode", "terminal_problem"]
