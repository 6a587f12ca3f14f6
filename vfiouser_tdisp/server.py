"""`vfiouser-tdisp serve`: run devices on vfio-user sockets until told to stop.

Each ``--socket PATH`` gets its own device built from the profile.  Function 0
is served at PATH; further functions of a multi-function profile at
``PATH.fnN`` (attach them to QEMU in the same slot with ``addr=S.N``).
``--spdm-port`` also serves each device's DOE mailbox over the DMTF spdm-emu
socket protocol; ``--pcap`` captures every DOE object.  ``--platform`` adds the
firmware port (docs/firmware-port.md) with that platform's firmware emulator
behind it, on ``PATH.fwport`` of the first socket.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .device.backend import FunctionBackend
from .device.device import Device, get_profile
from .device.firmware_port import build_firmware_port
from .device.tamper import apply_tamper
from .doe.capture import PcapWriter
from .doe.emu_socket import SOCKET_SPDM_COMMAND_OOB_ENCAP_KEY_UPDATE, SpdmEmuServer
from .events import LOG, HumanSink, JsonLinesSink, emit, open_event_log
from .faults import ARMED
from .firmware import Firmware
from .paths import identity_dir
from .sockets import private_umask
from .spdm.identity import IdentityError
from .spdm.keylog import KeyLogWriter
from .spdm.responder import SpdmResponder
from .vfio_user.server import FunctionServer


def encap_key_update(spdm: SpdmResponder) -> Callable[[bytes], bytes]:
    """spdm-emu OOB_ENCAP_KEY_UPDATE: payload = session ID (u32 LE); echoed empty."""
    def handler(payload: bytes) -> bytes:
        session_id = int.from_bytes(payload[:4], "little")
        armed = len(payload) >= 4 and spdm.request_key_update(session_id)
        emit("spdm_emu.encap_key_update", session_id=f"{session_id:#010x}", armed=armed)
        return b""
    return handler


def function_socket_path(path: str, fn: int) -> str:
    return path if fn == 0 else f"{path}.fn{fn}"


def numbered(path: str, i: int) -> str:
    return path if i == 0 else f"{path}.{i}"


# --platform NAME -> the firmware emulator served behind the firmware port
PLATFORMS = {"cca": "vfiouser_tdisp.tsm.cca:make_firmware",
             "tdx": "vfiouser_tdisp.tsm.tdx:make_firmware",
             "sev-tio": "vfiouser_tdisp.tsm.sev_tio:make_firmware"}


def firmware_port_path(path: str) -> str:
    return f"{path}.fwport"


def platform_firmware(name: str, **options: Any) -> Firmware:
    """The platform's firmware emulator; ``options`` go to its factory (e.g. cca:
    ``rhi_layout``)."""
    module, _, factory = PLATFORMS[name].partition(":")
    return getattr(importlib.import_module(module), factory)(  # type: ignore[no-any-return]
        **options)


@dataclass
class RunningDevices:
    devices: list[Device] = field(default_factory=list)
    servers: list[FunctionServer] = field(default_factory=list)
    spdm_servers: list[SpdmEmuServer] = field(default_factory=list)
    captures: list[IO[Any]] = field(default_factory=list)

    def close(self) -> None:
        """Stop listening and drop clients."""
        for srv in self.servers:
            srv.close()
        for emu in self.spdm_servers:
            emu.close()
        for f in self.captures:
            f.close()


def start_devices(paths: list[str], profile_name: str, spdm_port: int | None = None,
                  spdm_host: str = "127.0.0.1", pcap: str | None = None, *,
                  pcap_keys: str | None = None,
                  identity_options: dict[str, Any] | None = None,
                  debug_ide_keys: bool = False,
                  firmware: Firmware | None = None,
                  tamper: Sequence[str] = ()) -> RunningDevices:
    """Build one device per socket path and start serving it.

    Device ``i`` gets the spdm-emu port ``spdm_port + i`` and the capture file
    ``pcap`` (``pcap.i`` for i > 0), its session keys in ``pcap_keys`` (``.i``).
    ``identity_options`` go to :func:`identity_for_device` (chain_file,
    key_file, identity_dir; no identity_dir: generated in memory).  The SPDM
    identity is loaded (or generated) here, before the guest can ask: a key
    generation inside a DOE exchange would exceed the kernel's 1 s DOE timeout.
    With ``firmware``, the firmware port is served on
    ``firmware_port_path(paths[0])`` with it behind.  ``tamper`` names evidence
    every device alters (device/tamper.py).
    """
    profile = get_profile(profile_name)
    running = RunningDevices()
    try:
        for i, path in enumerate(paths):
            dev = Device(profile, instance=i, identity_options=identity_options,
                         debug_ide_keys=debug_ide_keys)
            running.devices.append(dev)
            if firmware is not None:
                # The platform's firmware names a TDI by the RID the guest enumerates
                # it at; vfio-user does not carry the bus number a function captures
                # from configuration writes (PCIe r6.x 2.2.6.2).  `qemu-args
                # --platform` puts device i behind its own root port: bus 1 + i.
                dev.tdisp.bus = 1 + i
            apply_tamper(dev, tamper)
            spdm = dev.spdm
            if pcap:
                writer = PcapWriter.create(numbered(pcap, i))
                running.captures.append(writer.stream)
                dev.doe.observers.append(writer.observer)
            if pcap_keys:
                keylog = KeyLogWriter.open(numbered(pcap_keys, i))
                running.captures.append(keylog.stream)
                spdm.key_sink = keylog
            if spdm_port is not None:
                emu = SpdmEmuServer(dev.doe, dev.lock, spdm_host,  # type: ignore[arg-type]
                                    spdm_port + i if spdm_port else 0,
                                    oob={SOCKET_SPDM_COMMAND_OOB_ENCAP_KEY_UPDATE:
                                         encap_key_update(spdm)})
                emu.start()
                running.spdm_servers.append(emu)
            for fn_no in range(len(dev.functions)):
                srv = FunctionServer(dev.backend(fn_no), function_socket_path(path, fn_no))
                srv.start()
                running.servers.append(srv)
        if firmware is not None:
            port_fn, _port = build_firmware_port(firmware)
            srv = FunctionServer(FunctionBackend(port_fn), firmware_port_path(paths[0]))
            srv.start()
            running.servers.append(srv)
    except BaseException:
        running.close()
        raise
    return running


def serve_forever(paths: list[str], profile_name: str, spdm_port: int | None = None,
                  spdm_host: str = "127.0.0.1", pcap: str | None = None, *,
                  pcap_keys: str | None = None,
                  identity_options: dict[str, Any] | None = None,
                  debug_ide_keys: bool = False, platform: str | None = None,
                  tamper: Sequence[str] = (),
                  platform_options: dict[str, Any] | None = None,
                  faults: Sequence[str] = (), control: str | None = None) -> None:
    # The stop signals are taken synchronously with sigwait() in this thread, never
    # by a handler: a Python handler runs between two bytecodes of the main
    # thread, and one that takes a lock (Event.set) while the main thread is
    # inside Event.wait holding that lock deadlocks the process.  The signals are
    # blocked before any thread starts, so every thread inherits the mask and
    # the kernel leaves them pending for sigwait (also one that arrives while the
    # devices are still starting).
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        for text in faults:  # armed before the first exchange (docs/faults.md)
            ARMED.arm(text)
        running = start_devices(paths, profile_name, spdm_port, spdm_host, pcap,
                                pcap_keys=pcap_keys, identity_options=identity_options,
                                debug_ide_keys=debug_ide_keys, tamper=tamper,
                                firmware=platform_firmware(platform, **(platform_options or {}))
                                if platform else None)
        control_server = None
        try:
            if control:
                from .control import ControlServer
                control_server = ControlServer(control)
                control_server.start()
            emit("server.ready", sockets=[s.path for s in running.servers],
                 profile=profile_name, spdm_ports=[e.port for e in running.spdm_servers])
            signum = signal.sigwait(stop_signals)
            emit("server.stopping", signal=signal.Signals(signum).name)
        finally:
            if control_server is not None:
                control_server.close()
            running.close()
            emit("server.stopped")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def main_serve(args: argparse.Namespace) -> int:
    private_umask()
    try:
        get_profile(args.profile)
    except KeyError as exc:
        print(f"vfiouser-tdisp serve: {exc.args[0]}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.events:
            try:
                stream = stack.enter_context(open_event_log(args.events))
            except OSError as exc:
                print(f"vfiouser-tdisp serve: --events {args.events}: "
                      f"{exc.strerror or exc}", file=sys.stderr)
                return 1
            stack.callback(LOG.subscribe(JsonLinesSink(stream)))
        if not args.quiet:  # one line per exchange; -v: every event with its fields
            stack.callback(LOG.subscribe(HumanSink(
                sys.stderr, verbose=getattr(args, "verbose", False))))
        if bool(args.cert_chain) != bool(args.cert_key):
            print("vfiouser-tdisp serve: --cert-chain and --cert-key go together",
                  file=sys.stderr)
            return 2
        if args.spdm_port and args.spdm_port + len(args.socket) - 1 > 65535:
            print(f"vfiouser-tdisp serve: --spdm-port {args.spdm_port} leaves no port for "
                  f"device {len(args.socket) - 1} (device i listens on PORT+i)",
                  file=sys.stderr)
            return 2
        identity = {"chain_file": args.cert_chain, "key_file": args.cert_key,
                    "identity_dir": identity_dir(args.cache_dir)}
        try:
            serve_forever(args.socket, args.profile, args.spdm_port, args.spdm_host, args.pcap,
                          pcap_keys=args.pcap_keys, identity_options=identity,
                          debug_ide_keys=args.debug_ide_keys,
                          platform=getattr(args, "platform", None),
                          tamper=getattr(args, "tamper", None) or (),
                          platform_options={"rhi_layout": args.rhi_layout}
                          if getattr(args, "rhi_layout", None) else None,
                          faults=getattr(args, "fault", None) or (),
                          control=getattr(args, "control", None))
        except IdentityError as exc:
            print(f"vfiouser-tdisp serve: {exc}", file=sys.stderr)
            return 2
        except (FileExistsError, PermissionError, OSError) as exc:
            print(f"vfiouser-tdisp serve: {exc}", file=sys.stderr)
            return 1
    return 0
