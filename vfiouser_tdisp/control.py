"""The control socket of `serve --control SOCK`: arm, list and clear faults at run time.

Protocol (one connection per command): the client sends one JSON object on one
line and reads one JSON object back on one line.

    {"op": "arm", "faults": ["doe-busy:2", ...]}   -> {"ok": true, "armed": [...]}
    {"op": "list"}                                  -> {"ok": true, "armed": [...],
                                                        "known": [...]}
    {"op": "clear", "name": NAME or null}           -> {"ok": true, "cleared": N}

An error is ``{"ok": false, "error": TEXT}``; nothing is armed by a request
that has an error (all its faults are parsed first).  The socket is created
with mode 0600 in a private umask (only the owner can arm faults).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from typing import Any

from .events import emit
from .faults import ARMED, SPECS, FaultError, FaultSet, parse_fault

MAX_REQUEST = 64 * 1024


def handle_request(faults: FaultSet, request: Any) -> dict[str, Any]:
    """One decoded request -> its reply (never raises)."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    op = request.get("op")
    if op == "arm":
        texts = request.get("faults")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return {"ok": False, "error": "arm: faults must be a list of strings"}
        try:
            for text in texts:  # all parsed before any is armed
                parse_fault(text)
        except FaultError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "armed": [faults.arm(t).describe() for t in texts]}
    if op == "list":
        return {"ok": True, "armed": [f.describe() for f in faults.armed()],
                "known": sorted(SPECS)}
    if op == "clear":
        name = request.get("name")
        if name is not None and name not in SPECS:
            return {"ok": False, "error": f"unknown fault {name!r}"}
        return {"ok": True, "cleared": faults.clear(name)}
    return {"ok": False, "error": f"unknown op {op!r} (arm, list, clear)"}


class ControlServer:
    """Accepts control connections on a UNIX socket in a daemon thread."""

    def __init__(self, path: str, faults: FaultSet = ARMED) -> None:
        self.path = path
        self.faults = faults
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        self._sock.listen(4)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()
        emit("control.listening", path=self.path)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                try:
                    line = _read_line(conn)
                    try:
                        request = json.loads(line)
                    except ValueError as exc:
                        reply: dict[str, Any] = {"ok": False, "error": f"bad JSON: {exc}"}
                    else:
                        reply = handle_request(self.faults, request)
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except (OSError, ValueError) as exc:
                    emit("control.error", error=str(exc))

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too long")
    return buf.split(b"\n", 1)[0]


def send(path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Client side: one request to the control socket at ``path``, its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(_read_line(s) or b"null")
    if not isinstance(reply, dict):
        raise ValueError("no reply from the control socket")
    return reply


def main_fault(args: Any) -> int:
    """`vfiouser-tdisp fault`: arm (NAME[:ARGS] ...), --list, --clear [NAME]."""
    import sys

    if args.names:
        for spec in SPECS.values():
            names = ",".join(a.name for a in spec.args)
            print(f"{spec.name}{':' + names if names else ''}  [{spec.layer}]  {spec.effect}")
        return 0
    if not args.control:
        print("vfiouser-tdisp fault: --control SOCK is required", file=sys.stderr)
        return 2
    if args.list:
        request: dict[str, Any] = {"op": "list"}
    elif args.clear is not None:
        request = {"op": "clear", "name": args.clear or None}
    elif args.faults:
        request = {"op": "arm", "faults": args.faults}
    else:
        print("vfiouser-tdisp fault: name a fault to arm, or --list / --clear",
              file=sys.stderr)
        return 2
    try:
        reply = send(args.control, request)
    except (OSError, ValueError) as exc:
        print(f"vfiouser-tdisp fault: {args.control}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"vfiouser-tdisp fault: {reply.get('error')}", file=sys.stderr)
        return 2
    if "cleared" in reply:
        print(f"cleared {reply['cleared']}")
    for fault in reply.get("armed", []):
        args_text = ",".join(f"{k}={v}" for k, v in fault["args"].items())
        print(f"{fault['name']}:{args_text}  fired {fault['fired']}")
    return 0


__all__ = ["ControlServer", "handle_request", "main_fault", "send"]
