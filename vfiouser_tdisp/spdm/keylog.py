"""Session key log for captures: lets a decoder open secured records in a pcap.

``serve --pcap FILE --pcap-keys KEYS`` appends one JSON line to KEYS whenever
a session direction gets new keys (handshake, data phase after FINISH, every
KEY_UPDATE): ``{"session_id", "direction": "request"|"response", "aead",
"key", "iv"}`` (hex).  Keys are secrets: the file exists only when asked for.

:func:`decrypt_capture` is the matching decoder: it walks the DOE objects of
a capture in order, keeps a sequence number per session direction and moves
to the next logged key of a direction when the current one no longer opens
the records (a key update restarts the sequence at 0).
"""

from __future__ import annotations

import json
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..doe.protocols import PCI_DOE_FEATURE_SSESSION, parse_object
from .algorithms import AEADS, CryptoError
from .session import DirectionKeys


class KeyLogWriter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.stream.write(json.dumps(entry, sort_keys=True) + "\n")
            self.stream.flush()


def key_entry(session_id: int, direction: str, aead: str, keys: DirectionKeys) -> dict[str, Any]:
    return {"session_id": f"{session_id:#010x}", "direction": direction, "aead": aead,
            "key": keys.key.hex(), "iv": keys.iv.hex()}


def load_keylog(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class _Direction:
    keys: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    index: int = 0
    sequence: int = 0

    def try_open(self, record: bytes) -> bytes | None:
        for step in (0, 1):
            idx = self.index + step
            if idx >= len(self.keys):
                return None
            aead_name, key, iv = self.keys[idx]
            seq = self.sequence if step == 0 else 0
            nonce = DirectionKeys(b"", key, iv, seq).nonce()
            try:
                plain = AEADS[aead_name].decrypt(key, nonce, record[6:], record[:6])
            except CryptoError:
                continue
            self.index, self.sequence = idx, seq + 1
            (size,) = struct.unpack_from("<H", plain)
            return plain[2:2 + size]
        return None


def decrypt_capture(packets: list[bytes],
                    entries: list[dict[str, Any]]) -> list[tuple[int, str, bytes]]:
    """(packet index, direction, SPDM message) for every secured record opened."""
    table: dict[tuple[int, str], _Direction] = {}
    for e in entries:
        entry = table.setdefault((int(e["session_id"], 16), e["direction"]), _Direction())
        entry.keys.append((e["aead"], bytes.fromhex(e["key"]), bytes.fromhex(e["iv"])))
    out = []
    for i, packet in enumerate(packets):
        try:
            hdr, payload = parse_object(packet)
        except Exception:
            continue
        if hdr.data_object_type != PCI_DOE_FEATURE_SSESSION or len(payload) < 6:
            continue
        session_id, length = struct.unpack_from("<IH", payload)
        record = payload[:6 + length]
        for direction in ("request", "response"):
            slot = table.get((session_id, direction))
            message = slot.try_open(record) if slot else None
            if message is not None:
                out.append((i, direction, message))
                break
    return out
