"""DMTF spdm-emu socket transport for a device's DOE mailbox.

The de-facto way to attach an external SPDM requester (DMTF spdm-emu's
requester, QEMU's ``spdm-socket`` backend): TCP, each frame is::

    u32 command | u32 transport type | u32 payload size   (all big-endian)
    payload

Commands: NORMAL 0x0001, CONTINUE 0xFFFD, SHUTDOWN 0xFFFE, TEST 0xDEAD
("Client Hello!" / "Server Hello!"), and out-of-band commands the owner of the
server registers (``oob``): OOB_ENCAP_KEY_UPDATE 0x8001 (payload: session ID,
u32 little-endian) asks the device to start a KEY_UPDATE of its own key in that
session, fetched by the requester with GET_ENCAPSULATED_REQUEST.

With transport 2 (PCI DOE) a NORMAL payload is a whole DOE data object, header
included; it goes through the same :class:`DoeDispatcher` as the config-space
mailbox (discovery included), so both transports reach one responder and one
capture.

DMTF's tools write each frame in several small ``send()`` calls; with Nagle on
their side and delayed ACKs on ours every message would stall ~40 ms, so
accepted sockets get TCP_NODELAY and TCP_QUICKACK (re-armed after every
receive), and each frame is written with a single call.

Several requesters may be connected at once, each served by its own thread.
They share one mailbox, so their requests are serialized per device (the
device lock is held for one DOE exchange, never across socket I/O).  A peer
that sends nothing for ``idle_timeout`` seconds, or takes longer than that to
deliver one frame (slowloris), or does not read its reply within that time, is
disconnected; at most ``max_clients`` are served at once, further ones are
closed at accept.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping

from ..events import emit
from ..sockets import wake_blocked
from .protocols import DoeDispatcher, DoeError

SOCKET_SPDM_COMMAND_NORMAL = 0x0001
SOCKET_SPDM_COMMAND_CONTINUE = 0xFFFD
SOCKET_SPDM_COMMAND_SHUTDOWN = 0xFFFE
SOCKET_SPDM_COMMAND_UNKNOWN = 0xFFFF
SOCKET_SPDM_COMMAND_TEST = 0xDEAD
SOCKET_SPDM_COMMAND_OOB_ENCAP_KEY_UPDATE = 0x8001
SOCKET_TRANSPORT_TYPE_NONE = 0
SOCKET_TRANSPORT_TYPE_MCTP = 1
SOCKET_TRANSPORT_TYPE_PCI_DOE = 2
DEFAULT_SPDM_PORT = 2323
MAX_FRAME = (1 << 18) * 4 + 8  # the largest DOE object
_FRAME = struct.Struct(">III")
IDLE_TIMEOUT = 60.0  # s without a frame (or to finish one) before a peer is dropped
MAX_CLIENTS = 16


class _PeerTimeout(Exception):
    """The peer was idle, or too slow to deliver a frame."""


def _quickack(sock: socket.socket) -> None:
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass


def build_frame(command: int, transport: int, payload: bytes = b"") -> bytes:
    return _FRAME.pack(command, transport, len(payload)) + payload


class SpdmEmuServer:
    """Serves one DOE dispatcher to spdm-emu clients, each on its own thread."""

    def __init__(self, dispatcher: DoeDispatcher, lock: threading.RLock,
                 host: str = "127.0.0.1", port: int = DEFAULT_SPDM_PORT,
                 oob: Mapping[int, Callable[[bytes], bytes]] | None = None, *,
                 idle_timeout: float = IDLE_TIMEOUT, max_clients: int = MAX_CLIENTS) -> None:
        self.dispatcher = dispatcher
        # command -> handler(payload) -> reply payload, run under the device lock
        self.oob = dict(oob or {})
        self.lock = lock
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._clients_lock = threading.Lock()  # guards _clients only
        self._clients: dict[socket.socket, threading.Thread] = {}

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(8)
        self.port = sock.getsockname()[1]
        self.listener = sock
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"spdm-emu {self.port}")
        self._thread.start()
        emit("spdm_emu.listening", host=self.host, port=self.port,
             mailbox=self.dispatcher.name)

    @property
    def client_count(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def _accept_loop(self) -> None:
        assert self.listener is not None
        while not self._stopping:
            try:
                client, peer = self.listener.accept()
            except OSError:
                return
            name = f"{peer[0]}:{peer[1]}"
            with self._clients_lock:
                full = len(self._clients) >= self.max_clients or self._stopping
                if not full:
                    thread = threading.Thread(target=self._client_thread, args=(client, name),
                                              daemon=True, name=f"spdm-emu {self.port} {name}")
                    self._clients[client] = thread
                    thread.start()  # under the lock: close() never sees it unstarted
            if full:
                emit("spdm_emu.rejected", port=self.port, peer=name,
                     reason=f"{self.max_clients} clients already connected")
                client.close()

    def _client_thread(self, client: socket.socket, name: str) -> None:
        emit("spdm_emu.connect", port=self.port, peer=name)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _quickack(client)
            reason = self._serve(client)
        except _PeerTimeout as exc:
            reason = str(exc)
        except OSError as exc:
            reason = "server shutdown" if self._stopping else f"socket error: {exc}"
        finally:
            with self._clients_lock:
                self._clients.pop(client, None)
            client.close()
        emit("spdm_emu.disconnect", port=self.port, peer=name, reason=reason)

    def _recv_exact(self, sock: socket.socket, n: int, deadline: float | None,
                    what: str) -> bytes | None:
        """``n`` bytes, all before ``deadline`` (monotonic; None: the idle timeout
        from now, restarted by the first byte)."""
        buf = bytearray()
        while len(buf) < n:
            if deadline is None:
                wait = self.idle_timeout
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise _PeerTimeout(f"{what} not complete within {self.idle_timeout:g} s")
            sock.settimeout(wait)
            try:
                chunk = sock.recv(n - len(buf))
            except TimeoutError:
                raise _PeerTimeout(f"idle for {self.idle_timeout:g} s" if deadline is None
                                   else f"{what} not complete within "
                                        f"{self.idle_timeout:g} s") from None
            if not chunk:
                return None
            if deadline is None:
                deadline = time.monotonic() + self.idle_timeout
            buf += chunk
            _quickack(sock)
        return bytes(buf)

    def _serve(self, sock: socket.socket) -> str:
        while True:
            # The idle clock runs until the first byte of a frame; from then
            # on the whole frame must arrive within one idle_timeout.
            head = self._recv_exact(sock, _FRAME.size, None, "frame header")
            if head is None:
                return "client disconnected"
            frame_deadline = time.monotonic() + self.idle_timeout
            command, transport, size = _FRAME.unpack(head)
            if size > MAX_FRAME:
                emit("spdm_emu.error", port=self.port, reason=f"frame of {size} bytes")
                return "oversized frame"
            payload = (self._recv_exact(sock, size, frame_deadline, "frame payload")
                       if size else b"")
            if payload is None:
                return "client disconnected mid-frame"
            reply, done = self.handle_frame(command, transport, payload)
            sock.settimeout(self.idle_timeout)  # a peer that never reads its reply
            try:
                sock.sendall(reply)  # one call per frame
            except TimeoutError:
                raise _PeerTimeout(f"reply not read within {self.idle_timeout:g} s") from None
            if done:
                return "shutdown"

    def handle_frame(self, command: int, transport: int, payload: bytes) -> tuple[bytes, bool]:
        """Answer one frame; returns (reply frame, connection finished)."""
        if command == SOCKET_SPDM_COMMAND_TEST:
            return build_frame(command, transport, b"Server Hello!\0"), False
        if command == SOCKET_SPDM_COMMAND_SHUTDOWN:
            return build_frame(command, transport), True
        if command == SOCKET_SPDM_COMMAND_CONTINUE:
            return build_frame(command, transport), False
        if command in self.oob:
            with self.lock:
                reply = self.oob[command](payload)
            return build_frame(command, transport, reply), False
        if command != SOCKET_SPDM_COMMAND_NORMAL:
            emit("spdm_emu.error", port=self.port, reason=f"unknown command {command:#x}")
            return build_frame(SOCKET_SPDM_COMMAND_UNKNOWN, transport), False
        if transport != SOCKET_TRANSPORT_TYPE_PCI_DOE:
            emit("spdm_emu.error", port=self.port,
                 reason=f"transport {transport} is not PCI DOE")
            return build_frame(command, transport), False
        try:
            with self.lock:
                response = self.dispatcher.exchange(payload)
        except DoeError as exc:
            # The mailbox would set its ERROR bit; on the socket: an empty reply.
            emit("spdm_emu.error", port=self.port, reason=str(exc))
            return build_frame(command, transport), False
        return build_frame(command, transport, response), False

    def close(self) -> None:
        self._stopping = True
        if self.listener is not None:
            wake_blocked(self.listener)
            self.listener.close()
            self.listener = None
        if self._thread is not None:
            self._thread.join(5)
        with self._clients_lock:
            clients = list(self._clients.items())
        for client, _thread in clients:
            wake_blocked(client)
        end = time.monotonic() + 5
        for _client, thread in clients:
            thread.join(max(0.0, end - time.monotonic()))


class SpdmEmuClient:
    """Requester side of the socket protocol (tests, tools)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, command: int, payload: bytes = b"",
             transport: int = SOCKET_TRANSPORT_TYPE_PCI_DOE) -> tuple[int, int, bytes]:
        self.sock.sendall(build_frame(command, transport, payload))
        head = self._exact(_FRAME.size)
        cmd, tr, size = _FRAME.unpack(head)
        return cmd, tr, self._exact(size) if size else b""

    def doe(self, request_object: bytes) -> bytes:
        _cmd, _tr, body = self.call(SOCKET_SPDM_COMMAND_NORMAL, request_object)
        return body

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()

