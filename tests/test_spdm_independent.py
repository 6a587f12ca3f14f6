"""The responder's cryptography checked by hand: this test builds every request
with struct.pack, keeps its own transcripts and recomputes each step with
`cryptography` primitives alone (no vfiouser_tdisp.spdm algorithms, session
or requester code), so responder and requester cannot share a mistake.

Covered per algorithm set and SPDM version: CHALLENGE_AUTH and MEASUREMENTS
signatures over the DSP0274 transcripts (1.2+: combined prefix), the key
schedule (HKDF-Expand with hand-built BinConcat labels), ResponderVerifyData,
secured records both ways (AAD, IV xor sequence number), data-phase keys from
TH2, and KEY_UPDATE's "traffic upd" derivation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vfiouser_tdisp.spdm.responder import SpdmResponder

from .spdm_support import identity, responder


@dataclass(frozen=True)
class Algs:
    hash_name: str
    hash_bit: int
    asym: str
    asym_bit: int
    sig_size: int
    curve: type[ec.EllipticCurve]
    dhe_bit: int
    aead: str
    aead_bit: int
    key_size: int


SETS = {
    "p384-sha384-aes256": Algs("sha384", 1 << 1, "ecdsa-p384", 1 << 7, 96, ec.SECP384R1,
                               1 << 4, "aes-gcm", 1 << 1, 32),
    "p256-sha256-aes128": Algs("sha256", 1 << 0, "ecdsa-p256", 1 << 4, 64, ec.SECP256R1,
                               1 << 3, "aes-gcm", 1 << 0, 16),
    "rsa3072-sha384-chacha": Algs("sha384", 1 << 1, "rsassa-3072", 1 << 2, 384, ec.SECP384R1,
                                  1 << 4, "chacha", 1 << 2, 32),
}
CONTEXTS = {"challenge": b"responder-challenge_auth signing",
            "measurements": b"responder-measurements signing",
            "key_exchange": b"responder-key_exchange_rsp signing"}


class Hand:
    """A requester written out longhand."""

    def __init__(self, r: SpdmResponder, algs: Algs, version: int) -> None:
        self.r, self.a, self.v = r, algs, version
        self.h = hashlib.new(algs.hash_name).digest_size
        self.A = b""
        self.B = b""

    def H(self, data: bytes) -> bytes:
        return hashlib.new(self.a.hash_name, data).digest()

    def chash(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self.a.hash_name == "sha256" else hashes.SHA384()

    def plain(self, req: bytes) -> bytes:
        rsp = self.r.handle_cma(req)
        assert rsp[1] != 0x7F, f"ERROR {rsp.hex()}"
        return rsp

    def vca(self) -> None:
        v = self.v
        req = struct.pack("<BBBB", 0x10, 0x84, 0, 0)
        rsp = self.plain(req)
        self.A = req + rsp
        flags = (1 << 1) | (1 << 2) | (1 << 6) | (1 << 7) | (1 << 9) | (1 << 13) | (1 << 14)
        if v >= 0x12:
            req = struct.pack("<BBBBBBHIII", v, 0xE1, 0, 0, 0, 12, 0, flags, 4096, 4096)
        else:
            req = struct.pack("<BBBBBBHI", v, 0xE1, 0, 0, 0, 12, 0, flags)
        self.A += req + self.plain(req)
        structs = struct.pack("<BBH", 2, 0x20, self.a.dhe_bit) + \
            struct.pack("<BBH", 3, 0x20, self.a.aead_bit) + struct.pack("<BBH", 4, 0x20, 0) + \
            struct.pack("<BBH", 5, 0x20, 1)
        other = 2 if v >= 0x12 else 0
        req = struct.pack("<BBBBHBBII12sBBBB", v, 0xE3, 4, 0, 32 + len(structs), 1, other,
                          self.a.asym_bit, self.a.hash_bit, bytes(12), 0, 0, 0, 0) + structs
        rsp = self.plain(req)
        base_asym, base_hash = struct.unpack_from("<II", rsp, 12)
        assert (base_asym, base_hash) == (self.a.asym_bit, self.a.hash_bit)
        self.A += req + rsp

    def certificate(self) -> bytes:
        req = struct.pack("<BBBB", self.v, 0x81, 0, 0)
        rsp = self.plain(req)
        self.B = req + rsp
        chain, offset = b"", 0
        while True:
            req = struct.pack("<BBBBHH", self.v, 0x82, 0, 0, offset, 0x300)
            rsp = self.plain(req)
            self.B += req + rsp
            portion, remainder = struct.unpack_from("<HH", rsp, 4)
            chain += rsp[8:8 + portion]
            offset += portion
            if remainder == 0:
                break
        assert rsp[4 + 4:] and self.H(chain) == self.B[4 + 4:4 + 4 + self.h]  # DIGESTS
        self.chain = chain
        return chain

    def leaf_key(self):  # type: ignore[no-untyped-def]
        body, certs = self.chain[4 + self.h:], []
        while body:
            n = body[1]
            head, size = (2, n) if n < 0x80 else (2 + (n & 0x7F),
                                                  int.from_bytes(body[2:2 + (n & 0x7F)], "big"))
            certs.append(x509.load_der_x509_certificate(body[:head + size]))
            body = body[head + size:]
        root = identity().root
        assert certs[0] == root
        assert self.chain[4:4 + self.h] == self.H(root.public_bytes(Encoding.DER))
        for parent, child in zip(certs, certs[1:], strict=False):
            child.verify_directly_issued_by(parent)
        return certs[-1].public_key()

    def verify(self, context: str, transcript: bytes, signature: bytes) -> None:
        if self.v >= 0x12:
            prefix = (b"dmtf-spdm-v%d.%d.*" % (self.v >> 4, self.v & 0xF)) * 4
            ctx = CONTEXTS[context]
            message = prefix + bytes(36 - len(ctx)) + ctx + self.H(transcript)
        else:
            message = transcript
        key = self.leaf_key()
        if self.a.asym.startswith("ecdsa"):
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, message, ec.ECDSA(self.chash()))
        else:
            key.verify(signature, message, padding.PKCS1v15(), self.chash())

    # -- key schedule, by hand --------------------------------------------------------
    def bin(self, length: int, label: bytes, context: bytes = b"") -> bytes:
        version = b"spdm%d.%d " % (self.v >> 4, self.v & 0xF)
        return length.to_bytes(2, "little") + version + label + context

    def expand(self, secret: bytes, length: int, label: bytes, context: bytes = b"") -> bytes:
        return HKDFExpand(self.chash(), length, self.bin(length, label, context)).derive(secret)

    def keys(self, secret: bytes) -> tuple[bytes, bytes]:
        return (self.expand(secret, self.a.key_size, b"key"), self.expand(secret, 12, b"iv"))

    def seal(self, sid: int, secret: bytes, seq: int, message: bytes) -> bytes:
        key, iv = self.keys(secret)
        plain = struct.pack("<H", len(message)) + message
        header = struct.pack("<IH", sid, len(plain) + 16)
        nonce = bytes(a ^ b for a, b in zip(iv, struct.pack("<Q", seq) + bytes(4),
                                            strict=True))
        cipher = AESGCM(key) if self.a.aead == "aes-gcm" else ChaCha20Poly1305(key)
        return header + cipher.encrypt(nonce, plain, header)

    def open(self, sid: int, secret: bytes, seq: int, record: bytes) -> bytes:
        key, iv = self.keys(secret)
        got_sid, length = struct.unpack_from("<IH", record)
        assert got_sid == sid and length == len(record) - 6
        nonce = bytes(a ^ b for a, b in zip(iv, struct.pack("<Q", seq) + bytes(4),
                                            strict=True))
        cipher = AESGCM(key) if self.a.aead == "aes-gcm" else ChaCha20Poly1305(key)
        plain = cipher.decrypt(nonce, record[6:], record[:6])
        (n,) = struct.unpack_from("<H", plain)
        return plain[2:2 + n]


@pytest.mark.parametrize("version", [0x11, 0x12, 0x13])
@pytest.mark.parametrize("name", list(SETS))
def test_handshake_recomputed_by_hand(name: str, version: int) -> None:
    a = SETS[name]
    r = responder()
    hand = Hand(r, a, version)
    hand.vca()
    chain = hand.certificate()
    h, S = hand.h, a.sig_size
    ctx_len = 8 if version >= 0x13 else 0

    # CHALLENGE_AUTH over M1 = A || B || C
    req = struct.pack("<BBBB", version, 0x83, 0, 0) + os.urandom(32) + os.urandom(ctx_len)
    rsp = hand.plain(req)
    assert rsp[4:4 + h] == hand.H(chain)
    hand.verify("challenge", hand.A + hand.B + req + rsp[:-S], rsp[-S:])

    # an unsigned then a signed GET_MEASUREMENTS: L1 covers both
    u_req = struct.pack("<BBBB", version, 0xE0, 0, 1) + os.urandom(ctx_len)
    u_rsp = hand.plain(u_req)
    s_req = struct.pack("<BBBB", version, 0xE0, 1, 0xFF) + os.urandom(32) + b"\0" + \
        os.urandom(ctx_len)
    s_rsp = hand.plain(s_req)
    prefix = hand.A if version >= 0x12 else b""
    hand.verify("measurements", prefix + u_req + u_rsp + s_req + s_rsp[:-S], s_rsp[-S:])

    # KEY_EXCHANGE: our own ECDHE key, the signature over A || H(chain) || K
    mine = ec.generate_private_key(a.curve())
    point = mine.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    opaque = b""
    if version >= 0x12:  # general opaque data table, one SUPPORTED_VERSION_LIST element
        element = struct.pack("<BBBH", 1, 1, 1, 0x1100)
        opaque = struct.pack("<B3xBBH", 1, 0, 0, len(element)) + element
        opaque += bytes(-len(opaque) % 4)
    req_sid = 0x1234
    ke = struct.pack("<BBBBHBB", version, 0xE4, 0, 0, req_sid, 0, 0) + os.urandom(32) + \
        point + struct.pack("<H", len(opaque)) + opaque
    rsp = hand.plain(ke)
    rsp_sid = struct.unpack_from("<H", rsp, 4)[0]
    pos = 8 + 32
    peer = rsp[pos:pos + len(point)]
    pos += len(point)
    (opaque_len,) = struct.unpack_from("<H", rsp, pos)
    rsp_opaque = rsp[pos + 2:pos + 2 + opaque_len]
    pos += 2 + opaque_len
    assert len(rsp) == pos + S + h
    if version >= 0x12:  # the version selection element selects 1.1
        assert rsp_opaque[4:8] == struct.pack("<BBH", 0, 0, 4)
        assert rsp_opaque[8:12] == struct.pack("<BBH", 1, 0, 0x1100)
    transcript = hand.A + hand.H(chain) + ke + rsp[:pos]
    hand.verify("key_exchange", transcript, rsp[pos:pos + S])
    transcript += rsp[pos:pos + S]
    th1 = hand.H(transcript)
    shared = mine.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(
        a.curve(), b"\x04" + peer))
    hs = hmac.new(bytes(h), shared, a.hash_name).digest()
    req_hs = hand.expand(hs, h, b"req hs data", th1)
    rsp_hs = hand.expand(hs, h, b"rsp hs data", th1)
    fin_rsp = hand.expand(rsp_hs, h, b"finished")
    assert rsp[pos + S:] == hmac.new(fin_rsp, th1, a.hash_name).digest()
    transcript += rsp[pos + S:]

    # FINISH under the request handshake key (sequence 0), FINISH_RSP under the response one
    sid = req_sid | (rsp_sid << 16)
    header = struct.pack("<BBBB", version, 0xE5, 0, 0)
    fin_req = hand.expand(req_hs, h, b"finished")
    finish = header + hmac.new(fin_req, hand.H(transcript + header), a.hash_name).digest()
    finish_rsp = hand.open(sid, rsp_hs, 0, r.handle_secured(hand.seal(sid, req_hs, 0, finish)))
    assert finish_rsp == struct.pack("<BBBB", version, 0x65, 0, 0)
    th2 = hand.H(transcript + finish + finish_rsp)

    # data phase keys from TH2: a HEARTBEAT both ways
    salt1 = hand.expand(hs, h, b"derived")
    master = hmac.new(salt1, bytes(h), a.hash_name).digest()
    req_data = hand.expand(master, h, b"req app data", th2)
    rsp_data = hand.expand(master, h, b"rsp app data", th2)
    hb = struct.pack("<BBBB", version, 0xE8, 0, 0)
    ack = hand.open(sid, rsp_data, 0, r.handle_secured(hand.seal(sid, req_data, 0, hb)))
    assert ack == struct.pack("<BBBB", version, 0x68, 0, 0)

    # KEY_UPDATE UpdateKey (old key, seq 1) then VerifyNewKey under the updated key (seq 0)
    ku = struct.pack("<BBBB", version, 0xE9, 1, 0x5A)
    ack = hand.open(sid, rsp_data, 1, r.handle_secured(hand.seal(sid, req_data, 1, ku)))
    assert ack == struct.pack("<BBBB", version, 0x69, 1, 0x5A)
    new_req = hand.expand(req_data, h, b"traffic upd")
    verify = struct.pack("<BBBB", version, 0xE9, 3, 0x5B)
    ack = hand.open(sid, rsp_data, 2, r.handle_secured(hand.seal(sid, new_req, 0, verify)))
    assert ack == struct.pack("<BBBB", version, 0x69, 3, 0x5B)

    # UpdateAllKeys (DSP0274 1.1.1/1.2 §10.21 "KEY_UPDATE", KeyOperation 2): the request
    # goes under the current request key; the responder updates both directions
    # before answering, so KEY_UPDATE_ACK already comes under the new response key,
    # with a sequence number starting again at 0 (DSP0277 §"sequence number": a new
    # key starts its own count).  VerifyNewKey then comes under the new request key.
    ku = struct.pack("<BBBB", version, 0xE9, 2, 0x01)
    req2 = hand.expand(new_req, h, b"traffic upd")
    rsp2 = hand.expand(rsp_data, h, b"traffic upd")
    ack = hand.open(sid, rsp2, 0, r.handle_secured(hand.seal(sid, new_req, 1, ku)))
    assert ack == struct.pack("<BBBB", version, 0x69, 2, 0x01)
    verify = struct.pack("<BBBB", version, 0xE9, 3, 0x02)
    ack = hand.open(sid, rsp2, 1, r.handle_secured(hand.seal(sid, req2, 0, verify)))
    assert ack == struct.pack("<BBBB", version, 0x69, 3, 0x02)
    ack = hand.open(sid, rsp2, 2, r.handle_secured(hand.seal(sid, req2, 1, hb)))
    assert ack == struct.pack("<BBBB", version, 0x68, 0, 0)


def test_spdm_1_0_challenge_signs_the_transcript_itself() -> None:
    a = SETS["p256-sha256-aes128"]
    r = responder()
    hand = Hand(r, a, 0x10)
    # 1.0: GET_CAPABILITIES is the bare header, NEGOTIATE_ALGORITHMS has no AlgStructs
    req = struct.pack("<BBBB", 0x10, 0x84, 0, 0)
    hand.A = req + hand.plain(req)
    req = struct.pack("<BBBB", 0x10, 0xE1, 0, 0)
    hand.A += req + hand.plain(req)
    req = struct.pack("<BBBBHBBII12sBBBB", 0x10, 0xE3, 0, 0, 32, 1, 0, a.asym_bit,
                      a.hash_bit, bytes(12), 0, 0, 0, 0)
    hand.A += req + hand.plain(req)
    hand.v = 0x10
    hand.certificate()
    req = struct.pack("<BBBB", 0x10, 0x83, 0, 0) + os.urandom(32)
    rsp = hand.plain(req)
    hand.verify("challenge", hand.A + hand.B + req + rsp[:-64], rsp[-64:])
