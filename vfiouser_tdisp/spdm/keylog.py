"""Session key log for captures: lets a decoder open secured records in a pcap.

``serve --pcap FILE --pcap-keys KEYS`` appends JSON lines to KEYS (one
object per line, keys sorted, all values hex strings):

* once per session, when KEY_EXCHANGE succeeds, the ECDHE shared secret
  (DSP0274 key schedule input, "DHE secret"; for the curves here the
  x-coordinate of the shared point, 32 or 48 bytes)::

      {"dhe_secret": "<hex>", "session_id": "0x<8 hex>"}

  DMTF spdm-dump derives every key of the session from it (``--dhe_secret
  HEX``, once per session, in the order the sessions were opened);

* whenever a session direction gets new keys (handshake, data phase after
  FINISH, every KEY_UPDATE) the direction's AEAD key and IV::

      {"aead": "aes-256-gcm", "direction": "request"|"response",
       "iv": "<hex>", "key": "<hex>", "session_id": "0x<8 hex>"}

The file holds secrets: it exists only when asked for, is created 0600 (the
mode given at creation, never following a symlink) and re-moded 0600 if it
already existed.

:func:`decrypt_capture` is the matching decoder for the per-direction lines:
it walks the DOE objects of a capture in order, keeps a sequence number per
session direction and moves to the next logged key of a direction when the
current one no longer opens the records (a key update restarts the sequence
at 0).
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..doe.capture import open_private_file
from ..doe.protocols import PCI_DOE_FEATURE_SSESSION, parse_object
from ..wire import DecodeError
from .algorithms import AEADS, CryptoError
from .session import DirectionKeys, SecuredPlaintext, SecuredRecordHeader

KEYLOG_FILE_MODE = 0o600


class KeyLogWriter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> KeyLogWriter:
        """Append to the key log at ``path``: created 0600, no symlink followed."""
        raw = open_private_file(path, KEYLOG_FILE_MODE, append=True)
        return cls(io.TextIOWrapper(raw, encoding="utf-8"))

    def close(self) -> None:
        self.stream.close()

    def __call__(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.stream.write(json.dumps(entry, sort_keys=True) + "\n")
            self.stream.flush()


def key_entry(session_id: int, direction: str, aead: str, keys: DirectionKeys) -> dict[str, Any]:
    return {"session_id": f"{session_id:#010x}", "direction": direction, "aead": aead,
            "key": keys.key.hex(), "iv": keys.iv.hex()}


def dhe_entry(session_id: int, dhe_secret: bytes) -> dict[str, Any]:
    """The line spdm-dump needs: the session's ECDHE shared secret."""
    return {"session_id": f"{session_id:#010x}", "dhe_secret": dhe_secret.hex()}


def dhe_secrets(entries: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(session id, hex secret) per session, in the order the sessions opened."""
    return [(int(e["session_id"], 16), e["dhe_secret"]) for e in entries if "dhe_secret" in e]


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
            try:
                return SecuredPlaintext.unpack(plain).application_data
            except DecodeError:   # authentic but with a bad ApplicationDataLength
                return plain[2:]
        return None


def decrypt_capture(packets: list[bytes],
                    entries: list[dict[str, Any]]) -> list[tuple[int, str, bytes]]:
    """(packet index, direction, SPDM message) for every secured record opened."""
    table: dict[tuple[int, str], _Direction] = {}
    for e in entries:
        if "direction" not in e:
            continue
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
        header, _ = SecuredRecordHeader.unpack_partial(payload)
        record = payload[:6 + header.length]
        for direction in ("request", "response"):
            slot = table.get((header.session_id, direction))
            message = slot.try_open(record) if slot else None
            if message is not None:
                out.append((i, direction, message))
                break
    return out
