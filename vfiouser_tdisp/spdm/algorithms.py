"""SPDM algorithm sets (DSP0274 §10.4 NEGOTIATE_ALGORITHMS) on top of `cryptography`.

Each family is a table from the specification's bit in the negotiation
bit-mask to the profile name and the primitive that implements it:

* BaseHashAlgo: SHA-256/384/512 (bits 0..2);
* BaseAsymAlgo: RSASSA-3072 (bit 2), ECDSA P-256 (bit 4), ECDSA P-384 (bit 7),
  plus RSASSA-2048/4096 and P-521 for verification of requesters' offers;
* DHE: secp256r1 (bit 3), secp384r1 (bit 4);
* AEAD: AES-128-GCM (bit 0), AES-256-GCM (bit 1), ChaCha20-Poly1305 (bit 2);
* KeySchedule: the SPDM key schedule (bit 0).

Signatures use the SPDM encodings: ECDSA as raw ``r || s`` (each the size of
the curve), RSASSA as PKCS#1 v1.5 with the negotiated base hash.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class CryptoError(Exception):
    """A cryptographic check failed (bad signature, forged MAC, bad public key)."""


@dataclass(frozen=True)
class HashAlgo:
    name: str
    bit: int
    size: int
    measurement_bit: int  # bit in MeasurementHashAlgo

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.name, data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.name).digest()

    def crypto_hash(self) -> hashes.HashAlgorithm:
        algorithms: dict[str, type[hashes.HashAlgorithm]] = {
            "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
        return algorithms[self.name]()  # type: ignore[abstract]

    def hkdf_expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        """RFC 5869 HKDF-Expand (written out: the key schedule tests rebuild it)."""
        out, block, counter = b"", b"", 1
        while len(out) < length:
            block = hmac.new(prk, block + info + bytes([counter]), self.name).digest()
            out += block
            counter += 1
        return out[:length]


HASHES: dict[str, HashAlgo] = {
    "sha256": HashAlgo("sha256", 1 << 0, 32, 1 << 1),
    "sha384": HashAlgo("sha384", 1 << 1, 48, 1 << 2),
    "sha512": HashAlgo("sha512", 1 << 2, 64, 1 << 3),
}
MEASUREMENT_HASH_RAW_BIT_STREAM = 1 << 0


@dataclass(frozen=True)
class AsymAlgo:
    name: str
    bit: int
    signature_size: int
    curve: type[ec.EllipticCurve] | None = None
    rsa_bits: int = 0

    def matches_key(self, key: Any) -> bool:
        if self.curve is not None:
            return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and \
                isinstance(key.curve, self.curve)
        return isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and \
            key.key_size == self.rsa_bits

    def sign(self, key: Any, data: bytes, hash_algo: HashAlgo) -> bytes:
        """Sign ``data`` (hashed inside with ``hash_algo``) in the SPDM encoding."""
        if self.curve is not None:
            der = key.sign(data, ec.ECDSA(hash_algo.crypto_hash()))
            r, s = decode_dss_signature(der)
            half = self.signature_size // 2
            return r.to_bytes(half, "big") + s.to_bytes(half, "big")
        return bytes(key.sign(data, padding.PKCS1v15(), hash_algo.crypto_hash()))

    def verify(self, public_key: Any, signature: bytes, data: bytes, hash_algo: HashAlgo) -> None:
        if len(signature) != self.signature_size:
            raise CryptoError(f"{self.name} signature must be {self.signature_size} bytes")
        try:
            if self.curve is not None:
                half = self.signature_size // 2
                der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                           int.from_bytes(signature[half:], "big"))
                public_key.verify(der, data, ec.ECDSA(hash_algo.crypto_hash()))
            else:
                public_key.verify(signature, data, padding.PKCS1v15(), hash_algo.crypto_hash())
        except InvalidSignature:
            raise CryptoError(f"{self.name} signature does not verify") from None


ASYMS: dict[str, AsymAlgo] = {
    "rsassa-2048": AsymAlgo("rsassa-2048", 1 << 0, 256, rsa_bits=2048),
    "rsassa-3072": AsymAlgo("rsassa-3072", 1 << 2, 384, rsa_bits=3072),
    "ecdsa-p256": AsymAlgo("ecdsa-p256", 1 << 4, 64, ec.SECP256R1),
    "rsassa-4096": AsymAlgo("rsassa-4096", 1 << 5, 512, rsa_bits=4096),
    "ecdsa-p384": AsymAlgo("ecdsa-p384", 1 << 7, 96, ec.SECP384R1),
    "ecdsa-p521": AsymAlgo("ecdsa-p521", 1 << 8, 132, ec.SECP521R1),
}


@dataclass(frozen=True)
class DheAlgo:
    """Ephemeral ECDH; ExchangeData is the public point as ``X || Y``."""

    name: str
    bit: int
    curve: type[ec.EllipticCurve]
    coord_size: int

    @property
    def exchange_size(self) -> int:
        return 2 * self.coord_size

    def generate(self) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        key = ec.generate_private_key(self.curve())
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return key, point[1:]

    def shared_secret(self, key: ec.EllipticCurvePrivateKey, peer_exchange: bytes) -> bytes:
        if len(peer_exchange) != self.exchange_size:
            raise CryptoError(f"{self.name} exchange data must be {self.exchange_size} bytes")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(
                self.curve(), b"\x04" + peer_exchange)
        except ValueError:
            raise CryptoError(f"{self.name} exchange data is not a point on the curve") from None
        return key.exchange(ec.ECDH(), peer)


DHES: dict[str, DheAlgo] = {
    "secp256r1": DheAlgo("secp256r1", 1 << 3, ec.SECP256R1, 32),
    "secp384r1": DheAlgo("secp384r1", 1 << 4, ec.SECP384R1, 48),
}


@dataclass(frozen=True)
class AeadAlgo:
    name: str
    bit: int
    key_size: int
    iv_size: int = 12
    tag_size: int = 16

    def _cipher(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        return ChaCha20Poly1305(key) if self.name == "chacha20-poly1305" else AESGCM(key)

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Ciphertext followed by the 16-byte tag."""
        return self._cipher(key).encrypt(iv, plaintext, aad)

    def decrypt(self, key: bytes, iv: bytes, data: bytes, aad: bytes) -> bytes:
        try:
            return self._cipher(key).decrypt(iv, data, aad)
        except InvalidTag:
            raise CryptoError("AEAD tag does not verify") from None


AEADS: dict[str, AeadAlgo] = {
    "aes-128-gcm": AeadAlgo("aes-128-gcm", 1 << 0, 16),
    "aes-256-gcm": AeadAlgo("aes-256-gcm", 1 << 1, 32),
    "chacha20-poly1305": AeadAlgo("chacha20-poly1305", 1 << 2, 32),
}

# What a device offers unless its profile says otherwise, most preferred first.
DEFAULT_HASHES = ("sha384", "sha256", "sha512")
DEFAULT_ASYMS = ("ecdsa-p384", "ecdsa-p256", "rsassa-3072")
DEFAULT_DHES = ("secp384r1", "secp256r1")
DEFAULT_AEADS = ("aes-256-gcm", "aes-128-gcm", "chacha20-poly1305")

KEY_SCHEDULE_SPDM = 1 << 0
MEASUREMENT_SPEC_DMTF = 1 << 0


def mask(names: tuple[str, ...] | list[str], table: dict[str, Any]) -> int:
    """The negotiation bit-mask for ``names`` (unknown names raise KeyError)."""
    bits = 0
    for name in names:
        bits |= table[name].bit
    return bits


def select(preferred: tuple[str, ...] | list[str], offered: int, table: dict[str, Any]) -> Any:
    """The first of ``preferred`` whose bit is in ``offered``, or None."""
    for name in preferred:
        if table[name].bit & offered:
            return table[name]
    return None


def by_bit(bit: int, table: dict[str, Any]) -> Any:
    for algo in table.values():
        if algo.bit == bit:
            return algo
    return None
