"""`vfiouser-tdisp serve`: run devices on vfio-user sockets until told to stop.

Each ``--socket PATH`` gets its own device built from the profile.  Function 0
is served at PATH; further functions of a multi-function profile at
``PATH.fnN`` (attach them to QEMU in the same slot with ``addr=S.N``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from dataclasses import dataclass, field

from .device.device import Device, get_profile
from .events import LOG, HumanSink, JsonLinesSink, emit
from .vfio_user.server import FunctionServer


def function_socket_path(path: str, fn: int) -> str:
    return path if fn == 0 else f"{path}.fn{fn}"


@dataclass
class RunningDevices:
    devices: list[Device] = field(default_factory=list)
    servers: list[FunctionServer] = field(default_factory=list)

    def close(self) -> None:
        """Stop listening and drop clients."""
        for srv in self.servers:
            srv.close()


def start_devices(paths: list[str], profile_name: str) -> RunningDevices:
    profile = get_profile(profile_name)
    running = RunningDevices()
    try:
        for i, path in enumerate(paths):
            dev = Device(profile, instance=i)
            running.devices.append(dev)
            lock = threading.RLock()  # one per device: its functions share state
            for fn_no, fn in enumerate(dev.functions):
                srv = FunctionServer(fn, function_socket_path(path, fn_no), lock)
                srv.start()
                running.servers.append(srv)
    except BaseException:
        running.close()
        raise
    return running


def serve_forever(paths: list[str], profile_name: str) -> None:
    running = start_devices(paths, profile_name)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    emit("server.ready", sockets=[s.path for s in running.servers], profile=profile_name)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        running.close()
        emit("server.stopped")


def main_serve(args: argparse.Namespace) -> int:
    try:
        get_profile(args.profile)
    except KeyError as exc:
        print(f"vfiouser-tdisp serve: {exc.args[0]}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.events:
            stream = stack.enter_context(open(args.events, "a", encoding="utf-8"))
            stack.callback(LOG.subscribe(JsonLinesSink(stream)))
        if not args.quiet:
            stack.callback(LOG.subscribe(HumanSink(sys.stderr, kinds=(
                "server.", "vfio_user.connect", "vfio_user.disconnect", "vfio_user.listening",
                "vfio_user.error_reply", "vfio_user.protocol_error", "device.", "doe.error",
                "function.reset"))))
        try:
            serve_forever(args.socket, args.profile)
        except (FileExistsError, PermissionError, OSError) as exc:
            print(f"vfiouser-tdisp serve: {exc}", file=sys.stderr)
            return 1
    return 0
