"""SPDM cryptography recomputed independently of the package.

Requests are struct-packed here, transcripts are kept here from the exact
bytes sent and received, and every check uses `cryptography`, hashlib and
hmac directly -- never vfiouser_tdisp.spdm.{algorithms,session,requester} --
so responder and requester cannot agree on the same mistake.

Complements test_spdm_independent.py with: the certificate chain checked
signature by signature; measurement summary hashes (CHALLENGE_AUTH,
KEY_EXCHANGE_RSP) recomputed from the measurement blocks; the transcript
rules (errors never enter A/B/C/L, B ends with CHALLENGE, L1 accumulates
unsigned exchanges and ends with a signed one or another request, L2 inside
a session); SPDM 1.0 signed MEASUREMENTS; the 1.1 opaque-data format in
KEY_EXCHANGE; and a full session (FINISH_RSP, HEARTBEAT_ACK, signed
MEASUREMENTS inside it, END_SESSION_ACK) opened by hand for each algorithm set
and SPDM 1.1-1.3.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vfiouser_tdisp.spdm.responder import SpdmResponder

from .spdm_support import identity, responder

# name -> hash, hash bit, asym bit, signature size, curve, DHE bit, AEAD, AEAD bit, key size
SETS: dict[str, tuple[str, int, int, int, type[ec.EllipticCurve], int, str, int, int]] = {
    "p384-sha384-aes256gcm": ("sha384", 1 << 1, 1 << 7, 96, ec.SECP384R1, 1 << 4, "aes", 1 << 1,
                              32),
    "p256-sha256-aes128gcm": ("sha256", 1 << 0, 1 << 4, 64, ec.SECP256R1, 1 << 3, "aes", 1 << 0,
                              16),
    "rsa3072-sha384-chacha20": ("sha384", 1 << 1, 1 << 2, 384, ec.SECP384R1, 1 << 4, "chacha",
                                1 << 2, 32),
}
ASYM_NAME = {1 << 7: "ecdsa-p384", 1 << 4: "ecdsa-p256", 1 << 2: "rsassa-3072"}
CONTEXT = {"challenge": b"responder-challenge_auth signing",
           "measurements": b"responder-measurements signing",
           "key_exchange": b"responder-key_exchange_rsp signing"}
FLAGS = (1 << 1) | (1 << 2) | (1 << 6) | (1 << 7) | (1 << 9) | (1 << 13) | (1 << 14)
ERROR = 0x7F


def hdr(v: int, code: int, p1: int = 0, p2: int = 0) -> bytes:
    return struct.pack("<BBBB", v, code, p1, p2)


def split_der(blob: bytes) -> list[x509.Certificate]:
    out = []
    while blob:
        assert blob[0] == 0x30
        n = blob[1]
        head, size = (2, n) if n < 0x80 else (2 + (n & 0x7F),
                                              int.from_bytes(blob[2:2 + (n & 0x7F)], "big"))
        out.append(x509.load_der_x509_certificate(blob[:head + size]))
        blob = blob[head + size:]
    return out


class Hand:
    """A requester written out longhand, keeping its own transcripts."""

    def __init__(self, r: SpdmResponder, name: str, v: int) -> None:
        (self.hash_name, self.hash_bit, self.asym_bit, self.S, self.curve, self.dhe_bit,
         self.aead, self.aead_bit, self.key_size) = SETS[name]
        self.r, self.v = r, v
        self.h = hashlib.new(self.hash_name).digest_size
        self.A = b""
        self.B = b""
        self.L = b""
        self.chain = b""

    def H(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_name, data).digest()

    def chash(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self.hash_name == "sha256" else hashes.SHA384()

    def ask(self, req: bytes) -> bytes:
        rsp = self.r.handle_cma(req)
        assert rsp[1] != ERROR, f"ERROR {rsp.hex()} for {req.hex()}"
        return rsp

    def refused(self, req: bytes) -> None:
        rsp = self.r.handle_cma(req)
        assert rsp[1] == ERROR, rsp.hex()

    # -- VCA / identity -----------------------------------------------------------------
    def caps(self, dts: int = 4096) -> bytes:
        if self.v >= 0x12:
            return struct.pack("<BBBBBBHIII", self.v, 0xE1, 0, 0, 0, 12, 0, FLAGS, dts, dts)
        if self.v == 0x11:
            return struct.pack("<BBBBBBHI", self.v, 0xE1, 0, 0, 0, 12, 0, FLAGS)
        return hdr(0x10, 0xE1)

    def negotiate(self) -> bytes:
        structs = b""
        if self.v >= 0x11:
            structs = struct.pack("<BBH", 2, 0x20, self.dhe_bit) + \
                struct.pack("<BBH", 3, 0x20, self.aead_bit) + struct.pack("<BBH", 4, 0x20, 0) + \
                struct.pack("<BBH", 5, 0x20, 1)
        return struct.pack("<BBBBHBBII12sBBBB", self.v, 0xE3, len(structs) // 4, 0,
                           32 + len(structs), 1, 2 if self.v >= 0x12 else 0, self.asym_bit,
                           self.hash_bit, bytes(12), 0, 0, 0, 0) + structs

    def vca(self, noise: bool = False) -> None:
        req = hdr(0x10, 0x84)
        self.A = req + self.ask(req)
        if noise and self.v >= 0x12:
            self.refused(self.caps(dts=41))
        req = self.caps()
        self.A += req + self.ask(req)
        if noise:
            bad = bytearray(self.negotiate())
            bad[4] += 1
            self.refused(bytes(bad))
        req = self.negotiate()
        rsp = self.ask(req)
        assert struct.unpack_from("<II", rsp, 12) == (self.asym_bit, self.hash_bit)
        self.A += req + rsp

    def digests(self) -> bytes:
        req = hdr(self.v, 0x81)
        rsp = self.ask(req)
        self.B += req + rsp
        return rsp[4:4 + self.h]

    def certificate(self, portion: int = 0x200) -> bytes:
        chain, offset = b"", 0
        while True:
            req = struct.pack("<BBBBHH", self.v, 0x82, 0, 0, offset, portion)
            rsp = self.ask(req)
            self.B += req + rsp
            got, remainder = struct.unpack_from("<HH", rsp, 4)
            chain += rsp[8:8 + got]
            offset += got
            if not remainder:
                break
        self.chain = chain
        return chain

    def leaf_key(self):  # type: ignore[no-untyped-def]
        return split_der(self.chain[4 + self.h:])[-1].public_key()

    # -- key schedule (DSP0274 §12: HKDF-Expand with BinConcat info) -------------------
    def expand(self, secret: bytes, length: int, label: bytes, context: bytes = b"") -> bytes:
        info = struct.pack("<H", length) + b"spdm%d.%d " % (self.v >> 4, self.v & 0xF) + \
            label + context
        return HKDFExpand(self.chash(), length, info).derive(secret)

    # -- signatures ---------------------------------------------------------------------
    def verify(self, context: str, transcript: bytes, signature: bytes) -> None:
        if self.v >= 0x12:
            ctx = CONTEXT[context]
            message = (b"dmtf-spdm-v%d.%d.*" % (self.v >> 4, self.v & 0xF)) * 4 + \
                bytes(36 - len(ctx)) + ctx + self.H(transcript)
        else:
            message = transcript
        key = self.leaf_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, message, ec.ECDSA(self.chash()))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, message, padding.PKCS1v15(), self.chash())

    def challenge(self, summary: int = 0) -> bytes:
        """CHALLENGE; verifies CHALLENGE_AUTH over M1 = A || B || C; returns the summary."""
        ctx = os.urandom(8) if self.v >= 0x13 else b""
        req = hdr(self.v, 0x83, 0, summary) + os.urandom(32) + ctx
        rsp = self.ask(req)
        assert rsp[4:4 + self.h] == self.H(self.chain)
        ms = self.h if summary else 0
        pos = 4 + self.h + 32
        summary_hash = rsp[pos:pos + ms]
        (opaque_len,) = struct.unpack_from("<H", rsp, pos + ms)
        end = pos + ms + 2 + opaque_len + len(ctx)
        assert rsp[end - len(ctx):end] == ctx and len(rsp) == end + self.S
        self.verify("challenge", self.A + self.B + req + rsp[:-self.S], rsp[-self.S:])
        self.B = b""
        return summary_hash

    def measurements(self, op: int, signed: bool) -> bytes:
        """GET_MEASUREMENTS; the signed one verifies over L1 and ends it."""
        ctx = os.urandom(8) if self.v >= 0x13 else b""
        if signed:
            slot = b"\0" if self.v >= 0x11 else b""
            req = hdr(self.v, 0xE0, 1, op) + os.urandom(32) + slot + ctx
        else:
            req = hdr(self.v, 0xE0, 0, op) + ctx
        rsp = self.ask(req)
        if not signed:
            self.L += req + rsp
            return rsp
        prefix = self.A if self.v >= 0x12 else b""
        self.verify("measurements", prefix + self.L + req + rsp[:-self.S], rsp[-self.S:])
        self.L = b""
        return rsp


def record_of(rsp: bytes) -> tuple[int, bytes]:
    count = rsp[4]
    size = int.from_bytes(rsp[5:8], "little")
    return count, rsp[8:8 + size]


def blocks_of(record: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos < len(record):
        index, _, size = struct.unpack_from("<BBH", record, pos)
        out[index] = record[pos:pos + 4 + size]
        pos += 4 + size
    return out


# -- the certificate chain -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SETS))
def test_certificate_chain_link_by_link(name: str) -> None:
    hand = Hand(responder(), name, 0x12)
    hand.vca()
    digest = hand.digests()
    chain = hand.certificate(portion=0x100)
    assert digest == hand.H(chain)
    length, reserved = struct.unpack_from("<HH", chain)
    assert (length, reserved) == (len(chain), 0)
    certs = split_der(chain[4 + hand.h:])
    root = identity().root
    assert certs[0] == root and len(certs) >= 2
    assert chain[4:4 + hand.h] == hand.H(root.public_bytes(Encoding.DER))
    for parent, child in zip([certs[0]] + certs, certs, strict=False):
        assert child.issuer == parent.subject
        key = parent.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes,
                       ec.ECDSA(child.signature_hash_algorithm))  # type: ignore[arg-type]
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(),
                       child.signature_hash_algorithm)  # type: ignore[arg-type]
    basic = [c.extensions.get_extension_for_class(x509.BasicConstraints).value for c in certs]
    assert all(b.ca for b in basic[:-1]) and not basic[-1].ca
    leaf = certs[-1].public_key()
    asym = ASYM_NAME[hand.asym_bit]
    if asym == "rsassa-3072":
        assert isinstance(leaf, rsa.RSAPublicKey) and leaf.key_size == 3072
    else:
        assert isinstance(leaf, ec.EllipticCurvePublicKey)
        assert leaf.curve.name == hand.curve.name
    slot = identity().for_asym(asym)
    assert slot is not None and slot.spdm_chain(hand.hash_name) == chain


# -- transcript rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("v", [0x10, 0x11, 0x12, 0x13])
def test_errors_never_enter_the_transcripts(v: int) -> None:
    r = responder()
    hand = Hand(r, "p256-sha256-aes128gcm", v)
    hand.vca(noise=True)
    hand.digests()
    hand.refused(struct.pack("<BBBBHH", v, 0x82, 4, 0, 0, 16))       # slot 4
    hand.refused(struct.pack("<BBBBHH", v, 0x82, 0, 0, 0xF000, 16))  # beyond the chain
    hand.certificate()
    hand.refused(hdr(v, 0x83, 9) + bytes(32) + bytes(8 if v >= 0x13 else 0))  # bad slot
    hand.challenge()
    hand.measurements(1, signed=False)
    hand.refused(hdr(v, 0xE0, 0, 0x77) + bytes(8 if v >= 0x13 else 0))  # no such index
    hand.refused(hdr(v, 0x81) + b"\x05")                                  # garbage
    hand.measurements(2, signed=False)
    hand.measurements(0xFF, signed=True)


def test_challenge_ends_b_and_digests_alone_make_a_b() -> None:
    hand = Hand(responder(), "p384-sha384-aes256gcm", 0x12)
    hand.vca()
    hand.digests()
    hand.certificate()
    hand.challenge()
    hand.challenge()   # M1 = A || C: B ended with the first CHALLENGE
    hand.digests()
    hand.challenge()   # M1 = A || GET_DIGESTS/DIGESTS || C


@pytest.mark.parametrize("v", [0x10, 0x11, 0x12, 0x13])
def test_l1_accumulates_and_ends(v: int) -> None:
    hand = Hand(responder(), "p256-sha256-aes128gcm", v)
    hand.vca()
    hand.digests()
    hand.certificate()
    hand.measurements(0, signed=False)
    hand.measurements(1, signed=False)
    hand.measurements(4, signed=False)
    hand.measurements(3, signed=True)   # L1 = [A] || three unsigned || this one
    hand.measurements(2, signed=True)   # a fresh L1
    hand.measurements(1, signed=False)
    hand.digests()                      # another request: L1 starts again
    hand.L = b""
    hand.measurements(0, signed=True)


def test_measurements_between_certificate_and_challenge_reset_m1() -> None:
    """DSP0274: a GET_MEASUREMENTS (or KEY_EXCHANGE, ...) before CHALLENGE completes
    resets M1, so the CHALLENGE signature covers VCA and C only."""
    hand = Hand(responder(), "p256-sha256-aes128gcm", 0x12)
    hand.vca()
    hand.digests()
    hand.certificate()
    hand.measurements(1, signed=False)
    hand.B = b""
    hand.challenge()


# -- measurement summary hashes ------------------------------------------------------------------
@pytest.mark.parametrize("v", [0x11, 0x12, 0x13])
@pytest.mark.parametrize("name", list(SETS))
def test_challenge_summary_hashes(name: str, v: int) -> None:
    # the record comes from a twin responder, so this connection's transcripts stay plain
    twin = Hand(responder(), name, v)
    twin.vca()
    count, record = record_of(twin.measurements(0xFF, signed=False))
    blocks = blocks_of(record)
    assert count == len(blocks) == 4
    hand = Hand(responder(), name, v)
    hand.vca()
    hand.digests()
    hand.certificate()
    assert hand.challenge(0xFF) == hand.H(record)
    tcb = b"".join(block for index, block in sorted(blocks.items()) if index != 4)
    assert hand.challenge(0x01) == hand.H(tcb)
    assert hand.challenge(0x00) == b""


# -- a whole session by hand ---------------------------------------------------------------------
class Session:
    def __init__(self, hand: Hand, sid: int, hs: bytes, th1: bytes) -> None:
        self.hand, self.sid, self.hs = hand, sid, hs
        self.req = hand.expand(hs, hand.h, b"req hs data", th1)
        self.rsp = hand.expand(hs, hand.h, b"rsp hs data", th1)
        self.req_seq = self.rsp_seq = 0

    def cipher(self, secret: bytes) -> tuple[AESGCM | ChaCha20Poly1305, bytes]:
        hand = self.hand
        key = hand.expand(secret, hand.key_size, b"key")
        iv = hand.expand(secret, 12, b"iv")
        return (AESGCM(key) if hand.aead == "aes" else ChaCha20Poly1305(key)), iv

    @staticmethod
    def nonce(iv: bytes, seq: int) -> bytes:
        return bytes(a ^ b for a, b in zip(iv, struct.pack("<Q", seq) + bytes(4), strict=True))

    def exchange(self, message: bytes) -> bytes:
        cipher, iv = self.cipher(self.req)
        plain = struct.pack("<H", len(message)) + message
        header = struct.pack("<IH", self.sid, len(plain) + 16)
        record = header + cipher.encrypt(self.nonce(iv, self.req_seq), plain, header)
        self.req_seq += 1
        answer = self.hand.r.handle_secured(record)
        sid, length = struct.unpack_from("<IH", answer)
        assert sid == self.sid and length == len(answer) - 6, answer.hex()
        cipher, iv = self.cipher(self.rsp)
        inner = cipher.decrypt(self.nonce(iv, self.rsp_seq), answer[6:], answer[:6])
        self.rsp_seq += 1
        (n,) = struct.unpack_from("<H", inner)
        return inner[2:2 + n]


def opaque_version_list(v: int) -> bytes:
    """DSP0277 SUPPORTED_VERSION_LIST (1.0 and 1.1) in the version's opaque format."""
    data = struct.pack("<BBBHH", 1, 1, 2, 0x1000, 0x1100)
    element = struct.pack("<BBH", 0, 0, len(data)) + data
    element += bytes(-len(element) % 4)
    if v >= 0x12:
        return struct.pack("<B3x", 1) + element
    return struct.pack("<IBB2x", 0x444D5446, 1, 1) + element


@pytest.mark.parametrize("v", [0x11, 0x12, 0x13])
@pytest.mark.parametrize("name", list(SETS))
def test_session_by_hand(name: str, v: int) -> None:
    twin = Hand(responder(), name, v)
    twin.vca()
    _, record = record_of(twin.measurements(0xFF, signed=False))

    r = responder()
    hand = Hand(r, name, v)
    hand.vca()
    hand.digests()
    chain = hand.certificate()
    hand.challenge()
    h, S = hand.h, hand.S

    mine = ec.generate_private_key(hand.curve())
    point = mine.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    opaque = opaque_version_list(v)
    req_sid = 0xBEEF
    ke = struct.pack("<BBBBHBB", v, 0xE4, 0xFF, 0, req_sid, 0, 0) + os.urandom(32) + point + \
        struct.pack("<H", len(opaque)) + opaque
    rsp = hand.ask(ke)
    (rsp_sid,) = struct.unpack_from("<H", rsp, 4)
    pos = 8 + 32
    peer = rsp[pos:pos + len(point)]
    pos += len(point)
    assert rsp[pos:pos + h] == hand.H(record)           # MeasurementSummaryHash, type ALL
    pos += h
    (opaque_len,) = struct.unpack_from("<H", rsp, pos)
    selection = rsp[pos + 2:pos + 2 + opaque_len]
    pos += 2 + opaque_len
    assert len(rsp) == pos + S + h
    head = 4 if v >= 0x12 else 8
    assert selection[head:head + 8] == struct.pack("<BBHBBH", 0, 0, 4, 1, 0, 0x1100)
    transcript = hand.A + hand.H(chain) + ke + rsp[:pos]
    hand.verify("key_exchange", transcript, rsp[pos:pos + S])
    transcript += rsp[pos:pos + S]
    th1 = hand.H(transcript)
    shared = mine.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(
        hand.curve(), b"\x04" + peer))
    hs = hmac.new(bytes(h), shared, hand.hash_name).digest()   # HKDF-Extract(0, DHE secret)
    sess = Session(hand, req_sid | (rsp_sid << 16), hs, th1)
    finished_rsp = hand.expand(sess.rsp, h, b"finished")
    assert rsp[pos + S:] == hmac.new(finished_rsp, th1, hand.hash_name).digest()
    transcript += rsp[pos + S:]

    finish = hdr(v, 0xE5)
    finished_req = hand.expand(sess.req, h, b"finished")
    finish += hmac.new(finished_req, hand.H(transcript + finish), hand.hash_name).digest()
    finish_rsp = sess.exchange(finish)
    assert finish_rsp == hdr(v, 0x65)
    th2 = hand.H(transcript + finish + finish_rsp)

    master = hmac.new(hand.expand(hs, h, b"derived"), bytes(h), hand.hash_name).digest()
    sess.req = hand.expand(master, h, b"req app data", th2)
    sess.rsp = hand.expand(master, h, b"rsp app data", th2)
    sess.req_seq = sess.rsp_seq = 0
    assert sess.exchange(hdr(v, 0xE8)) == hdr(v, 0x68)

    # L2 inside the session: [A] || unsigned || signed, signed by the same key
    ctx = os.urandom(8) if v >= 0x13 else b""
    unsigned = hdr(v, 0xE0, 0, 2) + ctx
    u_rsp = sess.exchange(unsigned)
    signed = hdr(v, 0xE0, 1, 0xFF) + os.urandom(32) + b"\0" + ctx
    s_rsp = sess.exchange(signed)
    prefix = hand.A if v >= 0x12 else b""
    hand.verify("measurements", prefix + unsigned + u_rsp + signed + s_rsp[:-S], s_rsp[-S:])

    assert sess.exchange(hdr(v, 0xEC)) == hdr(v, 0x6C)
    assert not r.sessions
