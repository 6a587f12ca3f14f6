"""Human rendering of events: what `serve` prints on a terminal and `events` prints.

One line per protocol exchange (an SPDM request and its response, a TDISP or
IDE_KM message), per state change, per connection and per error; chatty
events (DMA mappings, doorbells, DOE busy/ready) only with ``verbose``, which
also appends every field.  Events this module has no words for are printed
with their fields, so a new event is never silently dropped.  docs/events.md
catalogues every event.

The renderer keeps a little state: a failure's detail arrives in its own event
(``spdm.request_failed``, ``tdisp.error``, ``ide_km.key_fingerprint``) just
before the event that closes the exchange, and is folded into that line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from .events import Event

Formatter = Callable[["Renderer", Event], "str | None"]

# Shown only with verbose: many per second, or repeated by a concise line.
DETAIL_ONLY = frozenset({
    "spdm.request", "spdm.error_response", "spdm.request_failed", "spdm.measurements",
    "spdm.challenge", "spdm.chunk.large_request", "spdm.chunk.large_response",
    "spdm.requester.negotiated", "spdm.requester.session",
    "doe.transition", "tdisp.error", "tdisp.locked", "tdisp.dsm_config",
    "ide_km.key_fingerprint", "ide_km.key_debug", "ide.reset",
    "vfio_user.version", "vfio_user.dma_map", "vfio_user.dma_unmap", "vfio_user.set_irqs",
    "vfio_user.closed", "virtio.status", "virtio.queue_enabled", "virtio.used", "virtio.reset",
    "firmware_port.call", "rmm.call", "tdx.call", "psp.command",
    "spdm.chunk.transition",
})


def _short(name: Any) -> str:
    """``virtio-rng.0.spdm`` -> ``virtio-rng.0`` (the device, as lines name it)."""
    text = str(name)
    return text[:-len(".spdm")] if text.endswith(".spdm") else text


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ",".join(_value(x) for x in v) or "[]"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    text = str(v)
    return json.dumps(text) if not text or any(c in text for c in " \t\n\"'=") else text


def fields_text(event: Event) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in event.items() if k not in ("time", "event"))


class Renderer:
    """Turns events into lines; ``render`` returns None for an event not shown."""

    def __init__(self, verbose: bool = False, kinds: tuple[str, ...] = ()) -> None:
        self.verbose = verbose
        self.kinds = kinds
        self._detail: dict[tuple[str, str], str] = {}

    def render(self, event: Event) -> str | None:
        kind = str(event.get("event", "?"))
        if self.kinds and not kind.startswith(self.kinds):
            return None
        rest = fields_text(event)
        fmt = FORMATS.get(kind)
        if fmt is None and kind.endswith(".transition"):
            fmt = _transition
        if fmt is None:
            # No words for this event: its name and fields (detail-only ones hidden).
            if kind in DETAIL_ONLY and not self.verbose:
                return None
            return f"{stamp(event.get('time'))} {kind}{' ' + rest if rest else ''}"
        text = fmt(self, event)  # also run when hidden: it may keep a detail for later
        if not self.verbose:
            if text is None or kind in DETAIL_ONLY:
                return None
            return f"{stamp(event.get('time'))} {text}"
        return f"{stamp(event.get('time'))} {text or kind}  [{kind}{' ' + rest if rest else ''}]"

    def _keep(self, key: tuple[str, str], text: str) -> None:
        self._detail[key] = text

    def _take(self, key: tuple[str, str], form: str = ": {}") -> str:
        text = self._detail.pop(key, "")
        return form.format(text) if text else ""


def stamp(t: Any) -> str:
    """Local wall-clock time with milliseconds."""
    if not isinstance(t, (int, float)):
        return "--:--:--.---"
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


# -- one formatter per event -------------------------------------------------------------

def _spdm_response(r: Renderer, e: Event) -> str | None:
    request, response = e.get("request"), e.get("response")
    dev = _short(e.get("endpoint"))
    detail = r._take(("spdm", dev))
    if response == "ERROR":
        return f"SPDM {dev}: {request} -> ERROR {e.get('error')}{detail}"
    if request == "VENDOR_DEFINED_REQUEST" and not r.verbose:
        return None  # the TDISP / IDE_KM line inside says what it was
    session = f" [session {e['session_id']}]" if e.get("session_id") else ""
    return f"SPDM {dev}: {request} -> {response}{session}"


def _spdm_request_failed(r: Renderer, e: Event) -> str | None:
    if e.get("detail"):
        r._keep(("spdm", _short(e.get("endpoint"))), str(e["detail"]))
    return f"SPDM {_short(e.get('endpoint'))}: {e.get('request')} failed: {e.get('error')}"


def _tdisp_error(r: Renderer, e: Event) -> str | None:
    if e.get("detail"):
        r._keep(("tdisp", str(e.get("function_id"))), str(e["detail"]))
    return f"TDISP fn {e.get('function_id')}: {e.get('message')} failed: {e.get('error')}"


def _tdisp_request(r: Renderer, e: Event) -> str | None:
    detail = r._take(("tdisp", str(e.get("function_id"))))
    return (f"TDISP fn {e.get('function_id')}: {e.get('message')} -> "
            f"{e.get('result')}{detail}")


def _key_fingerprint(r: Renderer, e: Event) -> str | None:
    r._keep(("ide_km", f"{e.get('function')}/{e.get('stream_id')}"),
            f"key sha256 {e.get('sha256_prefix')}")
    return f"IDE_KM {e.get('function')}: stream {e.get('stream_id')} key sha256 " \
           f"{e.get('sha256_prefix')}"


def _key_prog(r: Renderer, e: Event) -> str | None:
    key = r._take(("ide_km", f"{e.get('function')}/{e.get('stream_id')}"), " ({})")
    return (f"IDE_KM {e.get('function')}: KEY_PROG stream {e.get('stream_id')} "
            f"port {e.get('port')} key_sub_stream {_hex(e.get('key_sub_stream'))} -> KP_ACK "
            f"{e.get('status')}{key}")


def _k_set(r: Renderer, e: Event) -> str | None:
    obj = "K_SET_GO" if e["event"].endswith("go") else "K_SET_STOP"
    applied = "" if e.get("applied", True) else " (not applied)"
    return (f"IDE_KM {e.get('function')}: {obj} stream {e.get('stream_id')} "
            f"{e.get('direction')} {e.get('sub_stream')} key set {e.get('key_set')} -> "
            f"K_GOSTOP_ACK{applied}")


def _hex(v: Any) -> str:
    return f"{v:#04x}" if isinstance(v, int) else str(v)


def _transition(r: Renderer, e: Event) -> str | None:
    machine = str(e["event"])[:-len(".transition")]
    where = next((str(e[k]) for k in ("function", "endpoint", "mailbox", "session_id")
                  if e.get(k) is not None), "")
    stream = f" {e['stream']}" if e.get("stream") else ""
    forced = " (forced)" if e.get("forced") else ""
    return (f"state {machine} {_short(where)}{stream}: {e.get('old')} -> {e.get('new')} "
            f"on {e.get('trigger')}{forced}")


def _f(template: str) -> Formatter:
    """A formatter from a str.format template over the event's fields."""
    def fmt(r: Renderer, e: Event) -> str | None:
        return template.format_map(_Fields(e))
    return fmt


class _Fields(dict[str, Any]):
    def __init__(self, e: Event) -> None:
        super().__init__({k: _value(v) if isinstance(v, (list, tuple, type(None))) else v
                          for k, v in e.items()})
        if "endpoint" in self:
            self["endpoint"] = _short(self["endpoint"])

    def __missing__(self, key: str) -> str:
        return "?"


FORMATS: dict[str, Formatter] = {
    "server.ready": _f("server ready on {sockets} (profile {profile})"),
    "server.stopping": _f("server stopping ({signal})"),
    "server.stopped": _f("server stopped"),
    "device.created": _f("device {profile}.{instance}: functions {functions}"),
    "identity.generated": _f("identity {label}: generated {asym} chain ({san})"),
    "vfio_user.listening": _f("vfio-user: {function} listening on {socket}"),
    "vfio_user.connect": _f("vfio-user: client connected to {socket} ({function})"),
    "vfio_user.disconnect": _f("vfio-user: {socket} client gone ({reason})"),
    "vfio_user.rejected": _f("vfio-user: {socket} refused a client ({reason})"),
    "vfio_user.error_reply": _f("vfio-user: {socket} command {command} -> errno {errno}"),
    "vfio_user.protocol_error": _f("vfio-user: {socket} protocol error"),
    "vfio_user.handler_crash": _f("vfio-user: {socket} command {command} crashed"),
    "vfio_user.oversized": _f("vfio-user: {socket} command {command}: {size} bytes, too large"),
    "vfio_user.unexpected_reply": _f("vfio-user: {socket} unexpected reply {msg_id}"),
    "spdm_emu.listening": _f("spdm-emu socket: listening on {host}:{port}"),
    "spdm_emu.connect": _f("spdm-emu socket {port}: {peer} connected"),
    "spdm_emu.disconnect": _f("spdm-emu socket {port}: {peer} gone ({reason})"),
    "spdm_emu.rejected": _f("spdm-emu socket {port}: refused {peer}"),
    "spdm_emu.error": _f("spdm-emu socket {port}: {reason}"),
    "doe.error": _f("DOE {mailbox}: error ({reason})"),
    "doe.overflow": _f("DOE {mailbox}: request exceeds {max_dw} dwords"),
    "doe.unsupported": _f("DOE {mailbox}: unsupported object {vendor_id}:{type}"),
    "doe.handler_error": _f("DOE {mailbox}: type {type} handler failed"),
    "spdm.request": _f("SPDM {endpoint}: {request} (version {version})"),
    "spdm.response": _spdm_response,
    "spdm.request_failed": _spdm_request_failed,
    "spdm.error_response": _f("SPDM {endpoint}: ERROR {code} (data {data})"),
    "spdm.malformed": _f("SPDM {endpoint}: malformed request of {size} bytes"),
    "spdm.secured.rejected": _f("SPDM {endpoint}: secured record rejected ({reason})"),
    "spdm.session.opened": _f("SPDM {endpoint}: session {session_id} opened"),
    "spdm.session.closed": _f("SPDM {endpoint}: session {session_id} closed ({cause})"),
    "spdm.session.finish_failed": _f("SPDM {endpoint}: session {session_id} FINISH failed"),
    "spdm.session.key_update": _f("SPDM session {session_id}: {role} {direction} keys "
                                  "updated"),
    "spdm.vendor_handler_error": _f("SPDM {endpoint}: vendor handler failed ({error})"),
    "tdisp.request": _tdisp_request,
    "tdisp.error": _tdisp_error,
    "tdisp.internal_error": _f("TDISP {message}: internal error {error}"),
    "tdisp.scrub": _f("TDISP {function}: TDI state scrubbed"),
    "tdisp.dma_held": _f("TDISP {function}: DMA held back in {state}"),
    "tdisp.firmware_update": _f("TDISP firmware update: TDIs {errored} to ERROR"),
    "tdisp.p2p_bind": _f("TDISP {function}: P2P stream {stream_id} bound"),
    "tdisp.p2p_unbind": _f("TDISP {function}: P2P stream {stream_id} unbound"),
    "tdisp.mmio_attribute": _f("TDISP {function}: MMIO range {range_id} attributes set"),
    "pci_sig.unsupported_protocol": _f("PCI-SIG vendor request: protocol {protocol_id} "
                                       "unsupported"),
    "pci_sig.session_required": _f("PCI-SIG vendor request: protocol {protocol_id} needs a "
                                   "session"),
    "pci_sig.ide_km_error": _f("IDE_KM: {error}"),
    "ide_km.query": _f("IDE_KM {function}: QUERY port {port} -> QUERY_RESP"),
    "ide_km.key_prog": _key_prog,
    "ide_km.key_fingerprint": _key_fingerprint,
    "ide_km.k_set_go": _k_set,
    "ide_km.k_set_stop": _k_set,
    "function.reset": _f("{function}: reset ({cause})"),
    "irq.dropped": _f("{function}: {index} vector {vector} dropped"),
    "virtio.dma_blocked": _f("virtio {function}: queue {queue} DMA blocked"),
    "virtio.needs_reset": _f("virtio {function}: queue {queue} broken, NEEDS_RESET"),
    "virtio.features_refused": _f("virtio {function}: driver features refused"),
    "dma_test.error": _f("dma-test {function}: {error}"),
    "capture.truncated": _f("capture: DOE object of {size} bytes cut to {kept}"),
}


# -- the `events` command -----------------------------------------------------------------

def read_events(stream: IO[str]) -> Iterator[Event | str]:
    """Events from a JSON-lines stream; a line that is no event comes back as the text."""
    for line in stream:
        if line.strip():
            yield _parse(line)


def follow_path(path: str, poll: float = 0.2) -> Iterator[Event | str]:
    """Like ``tail -F``: events appended to ``path``, waiting for it to exist and
    starting over when it is replaced or truncated (``run`` starts a fresh
    events.jsonl each time)."""
    while True:
        try:
            stream = open(path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            time.sleep(poll)
            continue
        with stream:
            ident = os.fstat(stream.fileno())
            partial = ""
            while True:
                chunk = stream.readline()
                if chunk:
                    partial += chunk
                    if partial.endswith("\n"):
                        line, partial = partial, ""
                        if line.strip():
                            yield _parse(line)
                    continue
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_dev, now.st_ino) != (ident.st_dev, ident.st_ino) \
                        or now.st_size < stream.tell():
                    break  # replaced, removed or truncated: reopen from the start
                time.sleep(poll)


def _parse(line: str) -> Event | str:
    try:
        event = json.loads(line)
    except ValueError:
        return line.rstrip("\n")
    return event if isinstance(event, dict) and "event" in event else line.rstrip("\n")


def main_events(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """`vfiouser-tdisp events FILE [--follow] [-v] [--kind PREFIX]`."""
    out = out or sys.stdout
    renderer = Renderer(args.verbose, tuple(args.kind or ()))
    bad = 0
    with contextlib.ExitStack() as stack:
        if args.follow:
            if os.path.exists(args.file) and not os.path.isfile(args.file):
                print(f"vfiouser-tdisp events: {args.file}: --follow needs a regular file",
                      file=sys.stderr)
                return 2
            items = follow_path(args.file)
        else:
            try:
                stream = stack.enter_context(
                    open(args.file, encoding="utf-8", errors="replace"))
            except OSError as exc:
                print(f"vfiouser-tdisp events: {args.file}: {exc.strerror or exc}",
                      file=sys.stderr)
                return 1
            items = read_events(stream)
        try:
            for item in items:
                if isinstance(item, str):
                    bad += 1
                    print(f"vfiouser-tdisp events: not an event: {item[:80]}", file=sys.stderr)
                    continue
                line = renderer.render(item)
                if line is not None:
                    out.write(line + "\n")
                    out.flush()
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:  # `events FILE | head`
            return 0
    return 1 if bad else 0
