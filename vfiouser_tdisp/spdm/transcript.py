"""SPDM transcripts (DSP0274 1.2/1.3 §10.x "message_a/b/c/k/f/l"), one object for both roles.

The requester and the responder each keep a :class:`Transcript` built from the
bytes they sent and received; neither trusts the other's hashes, so a
disagreement shows up as a signature or verify-data failure.

* A (VCA) = GET_VERSION/VERSION || GET_CAPABILITIES/CAPABILITIES ||
  NEGOTIATE_ALGORITHMS/ALGORITHMS (§10.3-10.5).
* B = GET_DIGESTS/DIGESTS and GET_CERTIFICATE/CERTIFICATE exchanged outside a
  session; C = CHALLENGE || CHALLENGE_AUTH without its signature.
  M1/M2 = A || B || C is what CHALLENGE_AUTH signs; B and C start again after
  a CHALLENGE_AUTH and when any request in :data:`messages.RESETS_M1`
  succeeds before a CHALLENGE completes.
* L1/L2 = [A, from 1.2] || every GET_MEASUREMENTS/MEASUREMENTS since the last
  signed MEASUREMENTS; L1 outside a session, L2 per session.  Any other request
  that succeeds starts L1/L2 again (§10.11, "measurement transcript").
* K = A || Hash(certificate chain) || KEY_EXCHANGE || KEY_EXCHANGE_RSP (with
  signature, then ResponderVerifyData); TH1 = Hash(K up to the signature)
  for the handshake keys.  F adds FINISH and FINISH_RSP; TH2 = Hash(K || F)
  for the data keys.  In HANDSHAKE_IN_THE_CLEAR mode ResponderVerifyData moves
  from KEY_EXCHANGE_RSP to FINISH_RSP, and the transcript follows the bytes.

From 1.2 a signature covers ``combined_spdm_prefix || Hash(transcript)``
(:func:`signing_message`); before 1.2 the transcript itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import messages as m
from .algorithms import HashAlgo

SIGNING_CONTEXT = {
    "challenge_auth": b"responder-challenge_auth signing",
    "measurements": b"responder-measurements signing",
    "key_exchange_rsp": b"responder-key_exchange_rsp signing",
    "finish": b"requester-finish signing",
}


def signing_message(version: int, context: str, transcript_hash: bytes) -> bytes:
    """What a 1.2+ signature covers (DSP0274 1.2 §15 "signature generation"):
    "dmtf-spdm-v1.x.*" four times, the context right-aligned in 36 bytes with
    zero padding in front, then Hash(transcript)."""
    prefix = (b"dmtf-spdm-v%d.%d.*" % (version >> 4, version & 0xF)) * 4
    ctx = SIGNING_CONTEXT[context]
    return prefix + bytes(36 - len(ctx)) + ctx + transcript_hash


@dataclass
class SessionTranscript:
    """K and F of one session, and its measurement transcript L2."""

    data: bytearray
    message_l: bytearray = field(default_factory=bytearray)

    def add(self, *parts: bytes) -> None:
        for part in parts:
            self.data += part

    def hash(self, hash_algo: HashAlgo, *more: bytes) -> bytes:
        """Hash(transcript || more): TH1 / TH2 and the FINISH verify-data input."""
        return hash_algo.digest(bytes(self.data) + b"".join(more))


@dataclass
class Transcript:
    """A, B/C and L1 of one connection, as one role saw them."""

    message_a: bytearray = field(default_factory=bytearray)
    message_b: bytearray = field(default_factory=bytearray)
    message_l: bytearray = field(default_factory=bytearray)

    # -- VCA -----------------------------------------------------------------------------
    def reset(self, get_version: bytes = b"", version: bytes = b"") -> None:
        """GET_VERSION starts everything again (§10.3)."""
        self.message_a = bytearray(get_version + version)
        self.message_b.clear()
        self.message_l.clear()

    def add_vca(self, request: bytes, response: bytes) -> None:
        self.message_a += request + response

    # -- M1/M2 ---------------------------------------------------------------------------
    def add_b(self, request: bytes, response: bytes) -> None:
        """GET_DIGESTS/GET_CERTIFICATE outside a session (inside one they are not in B)."""
        self.message_b += request + response

    def challenge_message(self, request: bytes, unsigned_response: bytes) -> bytes:
        """M1/M2 = A || B || C (C without the signature)."""
        return bytes(self.message_a + self.message_b) + request + unsigned_response

    def challenge_done(self) -> None:
        self.message_b.clear()

    # -- L1/L2 ---------------------------------------------------------------------------
    def measurement_log(self, session: SessionTranscript | None) -> bytearray:
        return session.message_l if session is not None else self.message_l

    def measurements_message(self, version: int, session: SessionTranscript | None,
                             request: bytes, unsigned_response: bytes) -> bytes:
        """L1/L2 including this exchange, for a signed MEASUREMENTS."""
        prefix = bytes(self.message_a) if version >= m.V12 else b""
        return prefix + bytes(self.measurement_log(session)) + request + unsigned_response

    def add_unsigned_measurements(self, session: SessionTranscript | None, request: bytes,
                                  response: bytes) -> None:
        self.measurement_log(session).extend(request + response)

    def request_succeeded(self, code: int, session: SessionTranscript | None) -> None:
        """Reset rules once a request ``code`` got its (non-ERROR) response.

        GET_MEASUREMENTS keeps L1/L2 (the caller adds or signs it); chunk
        transfer requests are transport, not transcript; anything else starts
        L1/L2 again.  Requests in RESETS_M1 drop B (a CHALLENGE must follow
        the digests/certificate it covers without them in between).
        """
        if code not in (m.GET_MEASUREMENTS_CODE, m.CHUNK_GET_CODE, m.CHUNK_SEND_CODE,
                        m.RESPOND_IF_READY_CODE):
            self.measurement_log(session).clear()
        if code in m.RESETS_M1:
            self.message_b.clear()

    # -- K/F -----------------------------------------------------------------------------
    def key_exchange(self, cert_chain_hash: bytes, request: bytes,
                     unsigned_response: bytes) -> SessionTranscript:
        """K up to KEY_EXCHANGE_RSP's signature (what the signature covers)."""
        return SessionTranscript(bytearray(self.message_a) + cert_chain_hash + request +
                                 unsigned_response)
