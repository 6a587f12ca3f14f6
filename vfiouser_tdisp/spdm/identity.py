"""The device's SPDM identity: certificate chains and keys (DSP0274 §10.6, PCIe CMA).

By default a device presents a generated chain -- a root CA, an intermediate
CA and one device leaf per signature algorithm it offers -- cached per
profile and instance in a directory its caller hands down (``identity_dir``;
none = generated in memory, nothing written), so restarts present the same
identity.  Each leaf carries the PCIe CMA SubjectAlternativeName (PCIe r6.1
§6.31.3): an otherName with type-id 2.23.147 whose value is the UTF8String
Linux's CMA code (``pci_cma_construct_san`` in drivers/pci/cma.c) compares
byte for byte::

    Vendor=%04x:Device=%04x:CC=%06x:REV=%02x      always
    :SSVID=%04x:SSID=%04x                         type-0 header, even when zero
    :%016x                                        DSN serial, when non-zero

A user may supply a chain and key instead (PEM or DER).

``SlotIdentity.spdm_chain`` renders the SPDM certificate chain format:
``Length (u16) | Reserved (u16) | RootHash | certificates (DER)``.

This module knows nothing of devices or of the project cache: the device
layer builds the SAN from config space and the entry points resolve the cache
directory (``vfiouser_tdisp.paths``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ..events import emit
from .der import split_der_certificates
from .messages import CertChain, Sizes

ASYM_ALGORITHMS = ("ecdsa-p256", "ecdsa-p384", "rsassa-3072")
SPDM_CHAIN_HASHES = ("sha256", "sha384", "sha512")
OID_PCIE_CMA_SAN = ObjectIdentifier("2.23.147")
VALIDITY = datetime.timedelta(days=20 * 365)


class IdentityError(ValueError):
    """A certificate chain or key cannot serve as the device identity."""


@dataclass(frozen=True)
class PcieSan:
    """The fields of the CMA SAN, as config space holds them.

    ``subsystem_vendor_id``/``subsystem_id`` are None only for a function
    without a type-0 header (no Subsystem IDs there); a type-0 function has
    them even when they read zero, and they are then written as ``0000``.
    ``serial`` is the DSN capability's 64-bit serial; None or 0 (no DSN, or a
    zero serial) leaves it out, as Linux does.
    """

    vendor_id: int
    device_id: int
    class_code: int
    revision: int
    subsystem_vendor_id: int | None = None
    subsystem_id: int | None = None
    serial: int | None = None

    def text(self) -> str:
        out = (f"Vendor={self.vendor_id:04x}:Device={self.device_id:04x}:"
               f"CC={self.class_code:06x}:REV={self.revision:02x}")
        if self.subsystem_vendor_id is not None and self.subsystem_id is not None:
            out += f":SSVID={self.subsystem_vendor_id:04x}:SSID={self.subsystem_id:04x}"
        if self.serial:
            out += f":{self.serial:016x}"
        return out


def _der_utf8string(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + \
        n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x0c" + length + data


def san_extension(san: PcieSan) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.OtherName(OID_PCIE_CMA_SAN, _der_utf8string(san.text()))])


def asym_of_key(key: Any) -> str | None:
    """The SPDM algorithm name a (private or public) key signs with, if supported."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(key.curve.name)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size == 3072:
        return "rsassa-3072"
    return None


def _new_key(asym: str) -> Any:
    if asym == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if asym == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if asym == "rsassa-3072":
        return rsa.generate_private_key(65537, 3072)
    raise IdentityError(f"unsupported signature algorithm {asym!r}; "
                        f"known: {', '.join(ASYM_ALGORITHMS)}")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class SlotIdentity:
    asym: str
    certs: tuple[x509.Certificate, ...]   # root first, leaf last
    key: Any                               # the leaf's private key

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[-1]

    def certs_der(self) -> bytes:
        return b"".join(_der(c) for c in self.certs)

    def spdm_chain(self, hash_name: str) -> bytes:
        if hash_name not in SPDM_CHAIN_HASHES:
            raise ValueError(f"RootHash algorithm {hash_name!r} not one of "
                             f"{', '.join(SPDM_CHAIN_HASHES)}")
        root_hash = hashlib.new(hash_name, _der(self.certs[0])).digest()
        certs = self.certs_der()
        total = 4 + len(root_hash) + len(certs)
        if total > 0xFFFF:
            raise ValueError(f"certificate chain of {total} bytes exceeds 65535")
        return CertChain(root_hash=root_hash, certificates=certs).pack(
            Sizes(hash=len(root_hash)))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vfiouser-tdisp"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _not_before() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _ca(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any,
        path_length: int | None) -> x509.Certificate:
    start = _not_before()
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(issuer.subject if issuer else _name(subject))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + VALIDITY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                              critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def _leaf(label: str, asym: str, key: Any, san: PcieSan, issuer: x509.Certificate,
          issuer_key: Any) -> x509.Certificate:
    start = _not_before()
    return (x509.CertificateBuilder()
            .subject_name(_name(f"vfiouser-tdisp {label} device ({asym})"))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                         False, False), critical=True)
            .add_extension(san_extension(san), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA384()))


def leaf_san_text(cert: x509.Certificate) -> str | None:
    """The PCIe CMA SAN text of a certificate, if it has one."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    for name in ext.value.get_values_for_type(x509.OtherName):
        if name.type_id == OID_PCIE_CMA_SAN and name.value[:1] == b"\x0c":
            n = name.value[1]
            head = 2 if n < 0x80 else 2 + (n & 0x7F)
            return name.value[head:].decode()
    return None


def _make_dirs(path: Path, mode: int) -> None:
    """mkdir -p with ``mode`` on every directory it creates (Path.mkdir gives
    missing parents the umask's default, 0777 under umask 000)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)  # mkdir's mode is filtered by the umask


def _write(path: Path, data: bytes, private: bool = False, dir_mode: int = 0o700) -> None:
    _make_dirs(path.parent, dir_mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp makes 0600; certificates are public (a verifier reads them).
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _pem_key(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class DeviceIdentity:
    def __init__(self, root: x509.Certificate, slots: dict[str, SlotIdentity]) -> None:
        self.root = root
        self.slots = slots

    def for_asym(self, asym: str) -> SlotIdentity | None:
        return self.slots.get(asym)

    # -- generated ---------------------------------------------------------------------
    @classmethod
    def generated(cls, san: PcieSan, asym: Sequence[str], *, cache_dir: Path | None,
                  label: str) -> DeviceIdentity:
        """Load from, or generate into, ``cache_dir/label`` (the keys stay
        there 0600 in 0700 directories); ``cache_dir`` None: in memory only."""
        for a in asym:
            if a not in ASYM_ALGORITHMS:
                raise IdentityError(f"unsupported signature algorithm {a!r}")
        where = Path(cache_dir) / label if cache_dir is not None else None
        if cache_dir is not None and where is not None:
            # Private keys live here: the identity directories are 0700; missing
            # ancestors (the project cache, shared with provisioning) 0755.
            _make_dirs(Path(cache_dir).parent, 0o755)
            _make_dirs(where, 0o700)
        cas = cls._load_cas(where) if where is not None else None
        if cas is None:
            root_key = ec.generate_private_key(ec.SECP384R1())
            root = _ca(f"vfiouser-tdisp {label} root CA", root_key, None, root_key, None)
            inter_key = ec.generate_private_key(ec.SECP384R1())
            inter = _ca(f"vfiouser-tdisp {label} intermediate CA", inter_key, root,
                        root_key, 0)
            if where is not None:
                _write(where / "root.key.pem", _pem_key(root_key), private=True)
                _write(where / "root.pem", _pem_cert(root))
                _write(where / "intermediate.key.pem", _pem_key(inter_key), private=True)
                _write(where / "intermediate.pem", _pem_cert(inter))
            fresh = True
        else:
            root, inter, inter_key = cas
            fresh = False
        slots = {}
        for a in asym:
            slot = None if fresh or where is None else cls._load_leaf(where, a, san, inter)
            if slot is None:
                key = _new_key(a)
                leaf = _leaf(label, a, key, san, inter, inter_key)
                if where is not None:
                    _write(where / f"leaf-{a}.key.pem", _pem_key(key), private=True)
                    _write(where / f"leaf-{a}.pem", _pem_cert(leaf))
                slot = SlotIdentity(a, (root, inter, leaf), key)
                emit("identity.generated", label=label, asym=a, san=san.text())
            else:
                slot = SlotIdentity(a, (root, inter, slot.leaf), slot.key)
            slots[a] = slot
        return cls(root, slots)

    @staticmethod
    def _load_cas(where: Path) -> tuple[x509.Certificate, x509.Certificate, Any] | None:
        try:
            root = x509.load_pem_x509_certificate((where / "root.pem").read_bytes())
            inter = x509.load_pem_x509_certificate((where / "intermediate.pem").read_bytes())
            inter_key = serialization.load_pem_private_key(
                (where / "intermediate.key.pem").read_bytes(), None)
            inter.verify_directly_issued_by(root)
            if inter.public_key() != inter_key.public_key():
                return None
            return root, inter, inter_key
        except Exception:  # unreadable, unparsable or not linked: regenerate
            return None

    @staticmethod
    def _load_leaf(where: Path, asym: str, san: PcieSan,
                   inter: x509.Certificate) -> SlotIdentity | None:
        try:
            leaf = x509.load_pem_x509_certificate((where / f"leaf-{asym}.pem").read_bytes())
            key = serialization.load_pem_private_key(
                (where / f"leaf-{asym}.key.pem").read_bytes(), None)
            leaf.verify_directly_issued_by(inter)
        except Exception:
            return None
        if leaf.public_key() != key.public_key() or asym_of_key(key) != asym or \
                leaf_san_text(leaf) != san.text():
            return None
        return SlotIdentity(asym, (leaf,), key)

    # -- user supplied -----------------------------------------------------------------
    @classmethod
    def from_files(cls, chain_file: Path | str, key_file: Path | str, *,
                   password: bytes | None = None) -> DeviceIdentity:
        chain_file, key_file = Path(chain_file), Path(key_file)
        try:
            data = chain_file.read_bytes()
            key_data = key_file.read_bytes()
        except OSError as exc:
            raise IdentityError(f"{exc.filename}: {exc.strerror}") from None
        certs = _load_certs(data, chain_file)
        try:
            if b"-----BEGIN" in key_data:
                key = serialization.load_pem_private_key(key_data, password)
            else:
                key = serialization.load_der_private_key(key_data, password)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"{key_file}: not a private key ({exc})") from None
        # Normalise to root first: the root is the self-issued certificate.
        if len(certs) > 1 and certs[0].issuer == certs[0].subject:
            pass
        elif len(certs) > 1 and certs[-1].issuer == certs[-1].subject:
            certs.reverse()
        if certs[0].issuer != certs[0].subject:
            raise IdentityError(f"{chain_file}: the chain has no self-signed root at either "
                                "end")
        for parent, child in zip(certs, certs[1:], strict=False):
            try:
                child.verify_directly_issued_by(parent)
            except Exception as exc:
                raise IdentityError(f"{chain_file}: {child.subject.rfc4514_string()} is not "
                                    f"issued by {parent.subject.rfc4514_string()} ({exc})") \
                    from None
        try:
            certs[0].verify_directly_issued_by(certs[0])
        except Exception as exc:
            raise IdentityError(f"{chain_file}: root signature does not verify ({exc})") \
                from None
        asym = asym_of_key(key)
        if asym is None:
            raise IdentityError(f"{key_file}: key type not usable for SPDM here (need EC "
                                "P-256/P-384 or RSA 3072)")
        if certs[-1].public_key() != key.public_key():  # type: ignore[union-attr]
            raise IdentityError(f"{key_file}: the key does not match the leaf certificate "
                                f"{certs[-1].subject.rfc4514_string()}")
        return cls(certs[0], {asym: SlotIdentity(asym, tuple(certs), key)})

    # -- export ------------------------------------------------------------------------
    def export(self, out_dir: Path | str, *, asym: str, hash_name: str) -> list[Path]:
        out_dir = Path(out_dir)
        slot = self.for_asym(asym)
        if slot is None:
            raise IdentityError(f"no chain for {asym}; have {', '.join(self.slots)}")
        written = []

        def put(name: str, data: bytes) -> None:
            _write(out_dir / name, data, dir_mode=0o755)
            written.append(out_dir / name)

        # The CAs between root and leaf, for `openssl verify -CAfile root.pem
        # -untrusted intermediate.pem leaf.pem`.  A chain with none (root and
        # leaf only) gets the root here: openssl refuses an empty -untrusted
        # file, and an untrusted copy of the trusted root changes nothing.
        between = slot.certs[1:-1] or slot.certs[:1]
        put("root.pem", _pem_cert(self.root))
        put("root.der", _der(self.root))
        put("intermediate.pem", b"".join(_pem_cert(c) for c in between))
        put("chain.der", slot.spdm_chain(hash_name))
        put("leaf.pem", _pem_cert(slot.leaf))
        for name, other in self.slots.items():
            put(f"chain-{name}.der", other.spdm_chain(hash_name))
            put(f"leaf-{name}.pem", _pem_cert(other.leaf))
        return written


def _load_certs(data: bytes, path: Path) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = split_der_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"{path}: not a PEM or DER certificate chain ({exc})") from None
    if not certs:
        raise IdentityError(f"{path}: no certificate")
    return certs
