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
from vfiouser_tdisp.device.identity import device_san, identity_for_device
from vfiouser_tdisp.spdm.identity import (
    OID_PCIE_CMA_SAN,
    DeviceIdentity,
    IdentityError,
    PcieSan,
    SlotIdentity,
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
    # pci_cma_construct_san(): the serial is bare %016llx, no "DSN=".
    assert SAN.text() == ("Vendor=1af4:Device=1044:CC=ff0000:REV=01:SSVID=1af4:SSID=0004:"
                          "5644545000000001")
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
        assert isinstance(pub, cls)
        assert isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        assert pub.key_size == bits
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


def test_added_algorithm_keeps_root_and_cached_leaves(tmp_path: Path) -> None:
    a = DeviceIdentity.generated(SAN, ("ecdsa-p256",), cache_dir=tmp_path, label="y")
    b = DeviceIdentity.generated(SAN, ("ecdsa-p256", "ecdsa-p384"), cache_dir=tmp_path,
                                 label="y")
    a256, b256, b384 = a.for_asym("ecdsa-p256"), b.for_asym("ecdsa-p256"), b.for_asym("ecdsa-p384")
    assert a256 is not None and b256 is not None and b384 is not None
    assert b.root == a.root and b256.leaf == a256.leaf and b256.certs[1] == b384.certs[1]
    assert b256.key.public_key() == a256.key.public_key()
    b384.leaf.verify_directly_issued_by(b384.certs[1])
    assert {p.name for p in (tmp_path / "y").iterdir()} == {
        "root.pem", "root.key.pem", "intermediate.pem", "intermediate.key.pem",
        "leaf-ecdsa-p256.pem", "leaf-ecdsa-p256.key.pem",
        "leaf-ecdsa-p384.pem", "leaf-ecdsa-p384.key.pem"}
    # No caching: a fresh identity every time.
    c = DeviceIdentity.generated(SAN, ("ecdsa-p256",), cache_dir=None, label="y")
    assert c.root != a.root


def test_spdm_chain_limits(ident: DeviceIdentity) -> None:
    slot = ident.for_asym("rsassa-3072")
    assert slot is not None
    with pytest.raises(ValueError, match="RootHash"):
        slot.spdm_chain("md5")
    big = SlotIdentity(slot.asym, slot.certs[:1] + slot.certs[1:] * 100, slot.key)
    with pytest.raises(ValueError, match="65535"):
        big.spdm_chain("sha256")


def test_device_san_from_config_space() -> None:
    # Linux drivers/pci/cma.c pci_cma_construct_san(): "Vendor=%04hx:Device=%04hx:
    # CC=%06x:REV=%02hhx", then for PCI_HEADER_TYPE_NORMAL always ":SSVID=%04hx:
    # SSID=%04hx" (zero included), then ":%016llx" when pci_get_dsn() is non-zero.
    # dma-test: Subsystem IDs read 0000; DSN of function 0 of instance 1.
    dev = Device(get_profile("dma-test"), instance=1)
    assert device_san(dev).text() == \
        "Vendor=1b36:Device=10f0:CC=ff0000:REV=01:SSVID=0000:SSID=0000:5644545000000101"
    dev = Device(get_profile("virtio-rng"))
    assert device_san(dev).text() == \
        "Vendor=1af4:Device=1044:CC=ff0000:REV=01:SSVID=1af4:SSID=0004:5644545000000001"


def test_san_text_format_of_linux_cma() -> None:
    # Each optional part as pci_cma_construct_san() writes it.
    assert PcieSan(0x8086, 0x0B25, 0x010802, 0x0A, 0, 0, 0).text() == \
        "Vendor=8086:Device=0b25:CC=010802:REV=0a:SSVID=0000:SSID=0000"  # DSN 0: left out
    assert PcieSan(0x8086, 0x0B25, 0x010802, 0x0A, None, None, None).text() == \
        "Vendor=8086:Device=0b25:CC=010802:REV=0a"  # not a type-0 header, no DSN
    assert PcieSan(0xABCD, 0x1, 0x1, 0x0, 0xFFFF, 0x2, 0x1).text() == \
        "Vendor=abcd:Device=0001:CC=000001:REV=00:SSVID=ffff:SSID=0002:0000000000000001"
    # The longest name fits Linux's CMA_NAME_MAX buffer (sizeof of its template).
    longest = PcieSan(0xFFFF, 0xFFFF, 0xFFFFFF, 0xFF, 0xFFFF, 0xFFFF, (1 << 64) - 1).text()
    assert len(longest) + 1 == len("Vendor=1234:Device=1234:CC=123456:"
                                   "REV=12:SSVID=1234:SSID=1234:1234567890123456") + 1


def test_leaf_san_der_is_the_cma_othername() -> None:
    # RFC 5280 §4.2.1.6 GeneralName otherName [0] { type-id OID, value [0] EXPLICIT
    # UTF8String }; PCIe r6.1 §6.31.3 type-id 2.23.147; Linux compares the UTF8String
    # value byte for byte.  Expected DER written out for this device:
    dev = Device(get_profile("virtio-rng"))
    ident = identity_for_device(dev)  # in memory: no cache given
    slot = ident.for_asym("ecdsa-p384")
    assert slot is not None
    text = b"Vendor=1af4:Device=1044:CC=ff0000:REV=01:SSVID=1af4:SSID=0004:5644545000000001"
    assert len(text) == 0x4E
    expected = (b"\x30\x59"                   # SEQUENCE (GeneralNames), 0x59 bytes
                b"\xa0\x57"                   # [0] otherName
                b"\x06\x03\x67\x81\x13"       # OID 2.23.147 (2*40+23, 147 = 81 13)
                b"\xa0\x50"                   # [0] EXPLICIT
                b"\x0c\x4e" + text)           # UTF8String
    ext = slot.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ext.value.public_bytes() == expected


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


@pytest.mark.parametrize("pem", [True, False], ids=["pem", "der"])
def test_user_key_traditional_and_encrypted(ident: DeviceIdentity, tmp_path: Path,
                                            pem: bool) -> None:
    slot = ident.for_asym("ecdsa-p256")
    assert slot is not None
    chain, key = _files(tmp_path, list(slot.certs), slot.key, pem)
    key.write_bytes(slot.key.private_bytes(PEM if pem else DER,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    got = DeviceIdentity.from_files(chain, key).for_asym("ecdsa-p256")
    assert got is not None and got.key.public_key() == slot.key.public_key()
    key.write_bytes(slot.key.private_bytes(PEM if pem else DER,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"pw")))
    assert DeviceIdentity.from_files(chain, key, password=b"pw").for_asym("ecdsa-p256")
    with pytest.raises(IdentityError, match="not a private key"):
        DeviceIdentity.from_files(chain, key)


def test_user_chain_errors(ident: DeviceIdentity, tmp_path: Path) -> None:
    p384, p256 = ident.for_asym("ecdsa-p384"), ident.for_asym("ecdsa-p256")
    assert p384 is not None and p256 is not None
    chain, key = _files(tmp_path, list(p384.certs), p256.key, True)
    with pytest.raises(IdentityError, match="does not match the leaf"):
        DeviceIdentity.from_files(chain, key)
    chain, key = _files(tmp_path, [p384.certs[0], p256.leaf], p256.key, True)
    with pytest.raises(IdentityError, match="not issued by"):
        DeviceIdentity.from_files(chain, key)
    for bad_key in (ed25519.Ed25519PrivateKey.generate(), rsa.generate_private_key(65537, 2048),
                    ec.generate_private_key(ec.SECP521R1())):
        chain, key = _files(tmp_path, list(p384.certs), bad_key, True)
        with pytest.raises(IdentityError, match="key type"):
            DeviceIdentity.from_files(chain, key)
    chain, key = _files(tmp_path, list(p384.certs[1:]), p384.key, True)  # no root
    with pytest.raises(IdentityError, match="no self-signed root"):
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
    assert {"root.pem", "root.der", "intermediate.pem", "chain.der", "leaf.pem"} <= names
    dev = Device(get_profile("virtio-rng"),
                 identity_options={"identity_dir": str(cache / "identity")})
    slot = dev.identity.for_asym("ecdsa-p256")
    assert slot is not None
    assert (out / "chain.der").read_bytes() == slot.spdm_chain("sha256")
    assert x509.load_der_x509_certificate((out / "root.der").read_bytes()) == dev.identity.root
    assert leaf_san_text(slot.leaf) == device_san(dev).text()
    assert (out / "root.pem").stat().st_mode & 0o777 == 0o644
    for name in ("ecdsa-p384", "ecdsa-p256", "rsassa-3072"):
        other = dev.identity.for_asym(name)
        assert other is not None
        assert (out / f"chain-{name}.der").read_bytes() == other.spdm_chain("sha256")
        assert x509.load_pem_x509_certificate((out / f"leaf-{name}.pem").read_bytes()) == \
            other.leaf
    # Defaults: the profile's first algorithm and hash, as slot 0 of serve.
    profile = get_profile("virtio-rng")
    assert main(["certs", "--out", str(out), "--cache-dir", str(cache)]) == 0
    first = dev.identity.for_asym(profile.spdm_asym[0])
    assert first is not None
    assert (out / "chain.der").read_bytes() == first.spdm_chain(profile.spdm_hash[0])
    assert main(["certs", "--out", str(out), "--cache-dir", str(cache),
                 "--asym", "rsassa-2048"]) == 2
    assert main(["certs", "--out", str(out), "--cache-dir", str(cache),
                 "--cert-chain", str(out / "leaf.pem")]) == 2  # chain without key


def test_identity_for_device_needs_both_files(tmp_path: Path) -> None:
    dev = Device(get_profile("dma-test"))
    with pytest.raises(IdentityError, match="go together"):
        identity_for_device(dev, chain_file=tmp_path / "x")


def test_certs_out_verifies_with_openssl_as_documented(tmp_path: Path) -> None:
    """docs/identity.md: `openssl verify -CAfile root.pem -untrusted intermediate.pem
    leaf.pem` -- run exactly so, by OpenSSL (an independent X.509 verifier)."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    out = tmp_path / "out"
    assert main(["certs", "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    done = subprocess.run(
        [openssl, "verify", "-CAfile", "root.pem", "-untrusted", "intermediate.pem",
         "leaf.pem"], cwd=out, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "leaf.pem: OK"
    # Without the intermediate the leaf does not chain: the file is what makes it work.
    done = subprocess.run([openssl, "verify", "-CAfile", "root.pem", "leaf.pem"], cwd=out,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    # intermediate.pem is the intermediate CA that issued the leaf.
    inter = x509.load_pem_x509_certificates((out / "intermediate.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((out / "leaf.pem").read_bytes())
    assert len(inter) == 1 and leaf.issuer == inter[0].subject
    assert inter[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_user_chain_without_intermediate_still_verifies(tmp_path: Path) -> None:
    """A user chain of root and leaf only: the documented command works as written."""
    import datetime
    import shutil
    import subprocess

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    root_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), \
        ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(name("user root")).issuer_name(
        name("user root")).public_key(root_key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA384()))
    leaf = (x509.CertificateBuilder().subject_name(name("user leaf")).issuer_name(
        root.subject).public_key(leaf_key.public_key()).serial_number(2)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
        .sign(root_key, hashes.SHA384()))
    chain, key = _files(tmp_path, [root, leaf], leaf_key, True)
    ident = DeviceIdentity.from_files(chain, key)
    out = tmp_path / "out"
    ident.export(out, asym="ecdsa-p256", hash_name="sha256")
    done = subprocess.run(
        [openssl, "verify", "-CAfile", "root.pem", "-untrusted", "intermediate.pem",
         "leaf.pem"], cwd=out, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_identity_cache_dirs_are_private_under_umask_000(tmp_path: Path) -> None:
    # issue 9 item 11: the identity cache holds private keys; its directories are created
    # 0700 whatever the umask, key files 0600, certificates 0644.
    import os

    old = os.umask(0)
    try:
        DeviceIdentity.generated(SAN, ("ecdsa-p256",), cache_dir=tmp_path / "a" / "b",
                                 label="u")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755  # the cache above: shared
    for d in (tmp_path / "a" / "b", tmp_path / "a" / "b" / "u"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert (tmp_path / "a/b/u/leaf-ecdsa-p256.key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a/b/u/leaf-ecdsa-p256.pem").stat().st_mode & 0o777 == 0o644


def test_spdm_identity_imports_no_upper_layer() -> None:
    # STYLE.md: lower layers never import upper ones; the cache dir is handed down.
    import subprocess
    import sys

    code = ("import sys, vfiouser_tdisp.spdm.identity as i; "
            "print(sorted(m for m in sys.modules if m.startswith(('vfiouser_tdisp.run', "
            "'vfiouser_tdisp.device', 'vfiouser_tdisp.server'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    assert not hasattr(__import__("vfiouser_tdisp.spdm.identity").spdm.identity,
                       "default_identity_dir")
