"""Device identity: generated chains (links, SAN, SPDM chain format, cache),
user-supplied chains (PEM/DER, order, validation) and the `certs` command."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from vfiouser_tdisp.cli import main
from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.spdm.identity import (
    OID_PCIE_CMA_SAN,
    DeviceIdentity,
    IdentityError,
    PcieSan,
    device_san,
    identity_for_device,
    leaf_san_text,
)

SAN = PcieSan(0x1AF4, 0x1044, 0xFF0000, 1, 0x1AF4, 0x0004, 0x5644545000000001)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("identity")


@pytest.fixture(scope="module")
def ident(cache: Path) -> DeviceIdentity:
    return DeviceIdentity.generated(SAN, ("ecdsa-p384", "ecdsa-p256", "rsassa-3072"),
                                    cache_dir=cache, label="t.0")


def test_san_text() -> None:
    assert SAN.text() == ("Vendor=1af4:Device=1044:CC=ff0000:REV=01:SSVID=1af4:SSID=0004:"
                          "DSN=5644545000000001")
    assert PcieSan(0x8086, 0x1, 0x10802, 0x2).text() == \
        "Vendor=8086:Device=0001:CC=010802:REV=02"


def test_generated_chain_links_keys_and_san(ident: DeviceIdentity) -> None:
    ident.root.verify_directly_issued_by(ident.root)
    kinds = {"ecdsa-p384": (ec.EllipticCurvePublicKey, 384),
             "ecdsa-p256": (ec.EllipticCurvePublicKey, 256),
             "rsassa-3072": (rsa.RSAPublicKey, 3072)}
    for name, (cls, bits) in kinds.items():
        slot = ident.for_asym(name)
        assert slot is not None and slot.certs[0] == ident.root and len(slot.certs) == 3
        for parent, child in zip(slot.certs, slot.certs[1:], strict=False):
            child.verify_directly_issued_by(parent)
        pub = slot.leaf.public_key()
        assert isinstance(pub, cls) and pub.key_size == bits
        assert slot.key.public_key() == pub
        san = slot.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        (other,) = san.value.get_values_for_type(x509.OtherName)
        assert other.type_id == OID_PCIE_CMA_SAN
        text = SAN.text().encode()
        assert other.value == b"\x0c" + bytes([len(text)]) + text  # DER UTF8String
        bc = slot.leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.value.ca is False
    assert ident.for_asym("rsassa-2048") is None


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
def test_spdm_chain_format(ident: DeviceIdentity, hash_name: str) -> None:
    slot = ident.for_asym("ecdsa-p256")
    assert slot is not None
    chain = slot.spdm_chain(hash_name)
    size = hashlib.new(hash_name).digest_size
    assert int.from_bytes(chain[:2], "little") == len(chain)
    assert chain[2:4] == b"\0\0"
    assert chain[4:4 + size] == hashlib.new(hash_name, ident.root.public_bytes(DER)).digest()
    assert chain[4 + size:] == b"".join(c.public_bytes(DER) for c in slot.certs)


def test_cache_reuse_and_added_algorithm(ident: DeviceIdentity, cache: Path) -> None:
    again = DeviceIdentity.generated(SAN, ("ecdsa-p384",), cache_dir=cache, label="t.0")
    slot, first = again.for_asym("ecdsa-p384"), ident.for_asym("ecdsa-p384")
    assert slot is not None and first is not None
    assert slot.leaf == first.leaf and again.root == ident.root
    other_san = PcieSan(0x1AF4, 0x1044, 0xFF0000, 2)
    changed = DeviceIdentity.generated(other_san, ("ecdsa-p384",), cache_dir=cache, label="t.0")
    new = changed.for_asym("ecdsa-p384")
    assert new is not None and new.leaf != first.leaf  # SAN changed: new leaf, same root
    assert changed.root == ident.root and leaf_san_text(new.leaf) == other_san.text()
    assert oct((cache / "t.0" / "root.key.pem").stat().st_mode & 0o777) == "0o600"


def test_corrupt_cache_regenerates(tmp_path: Path) -> None:
    a = DeviceIdentity.generated(SAN, ("ecdsa-p256",), cache_dir=tmp_path, label="x")
    (tmp_path / "x" / "intermediate.pem").write_text("garbage")
    b = DeviceIdentity.generated(SAN, ("ecdsa-p256",), cache_dir=tmp_path, label="x")
    assert a.root != b.root
    slot = b.for_asym("ecdsa-p256")
    assert slot is not None
    slot.certs[1].verify_directly_issued_by(b.root)


def _files(tmp_path: Path, certs: list[x509.Certificate], key: object, pem: bool) -> tuple[Path, Path]:  # noqa: E501
    chain, keyf = tmp_path / "chain", tmp_path / "key"
    chain.write_bytes(b"".join(c.public_bytes(PEM if pem else DER) for c in certs))
    keyf.write_bytes(key.private_bytes(  # type: ignore[attr-defined]
        PEM if pem else DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return chain, keyf


@pytest.mark.parametrize("pem", [True, False], ids=["pem", "der"])
@pytest.mark.parametrize("leaf_first", [False, True], ids=["root-first", "leaf-first"])
def test_user_supplied_chain(ident: DeviceIdentity, tmp_path: Path, pem: bool,
                             leaf_first: bool) -> None:
    slot = ident.for_asym("ecdsa-p384")
    assert slot is not None
    certs = list(slot.certs)[::-1] if leaf_first else list(slot.certs)
    chain, key = _files(tmp_path, certs, slot.key, pem)
    user = DeviceIdentity.from_files(chain, key)
    assert list(user.slots) == ["ecdsa-p384"]
    got = user.for_asym("ecdsa-p384")
    assert got is not None and got.certs == slot.certs and user.root == ident.root


def test_user_chain_errors(ident: DeviceIdentity, tmp_path: Path) -> None:
    p384, p256 = ident.for_asym("ecdsa-p384"), ident.for_asym("ecdsa-p256")
    assert p384 is not None and p256 is not None
    chain, key = _files(tmp_path, list(p384.certs), p256.key, True)
    with pytest.raises(IdentityError, match="does not match the leaf"):
        DeviceIdentity.from_files(chain, key)
    chain, key = _files(tmp_path, [p384.certs[0], p256.leaf], p256.key, True)
    with pytest.raises(IdentityError, match="not issued by"):
        DeviceIdentity.from_files(chain, key)
    chain, key = _files(tmp_path, list(p384.certs), ed25519.Ed25519PrivateKey.generate(), True)
    with pytest.raises(IdentityError, match="key type"):
        DeviceIdentity.from_files(chain, key)
    (tmp_path / "bad").write_bytes(b"\x30\x03abc")
    with pytest.raises(IdentityError, match="not a PEM or DER"):
        DeviceIdentity.from_files(tmp_path / "bad", key)
    with pytest.raises(IdentityError, match="No such file"):
        DeviceIdentity.from_files(tmp_path / "missing", key)


def test_certs_command_writes_what_serve_presents(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    assert main(["certs", "--profile", "virtio-rng", "--out", str(out), "--cache-dir",
                 str(cache), "--asym", "ecdsa-p256", "--hash", "sha256"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"root.pem", "root.der", "chain.der", "leaf.pem"} <= names
    dev = Device(get_profile("virtio-rng"), identity_options={"cache_dir": str(cache)})
    slot = dev.identity.for_asym("ecdsa-p256")
    assert slot is not None
    assert (out / "chain.der").read_bytes() == slot.spdm_chain("sha256")
    assert x509.load_der_x509_certificate((out / "root.der").read_bytes()) == dev.identity.root
    assert leaf_san_text(slot.leaf) == device_san(dev).text()
    assert main(["certs", "--out", str(out), "--cache-dir", str(cache),
                 "--cert-chain", str(out / "leaf.pem")]) == 2  # chain without key


def test_identity_for_device_needs_both_files(tmp_path: Path) -> None:
    dev = Device(get_profile("dma-test"))
    with pytest.raises(IdentityError, match="go together"):
        identity_for_device(dev, chain_file=tmp_path / "x")
