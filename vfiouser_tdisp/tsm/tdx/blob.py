"""TDX module update images ("TDX-BLOB", tdx_image version 0x200): build, break, parse.

Layout (Linux ``arch/x86/virt/vmx/tdx/seamldr.c``, v7.2): one 4 KiB ``tdx_image_header``,
then ``sigstruct_nr_pages`` (<= 1) sigstruct pages, then ``module_nr_pages`` (<= 496)
module pages.  :func:`parse_image` applies exactly the kernel's checks (what a user
space update through ``/sys/class/firmware/tdx_module`` meets before the P-SEAMLDR sees
anything) and returns the pieces the kernel puts in ``seamldr_params``; the P-SEAMLDR
then checks the sigstruct and the module ([MODEL] :mod:`.model`).

:func:`build_image` makes a valid image signed with the emulated P-SEAMLDR's lab key, and
each entry of :data:`BREAKAGES` a deliberately broken one, with the error it must meet.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .abi import (
    PAGE_SIZE,
    SEAMLDR_MAX_NR_MODULE_PAGES,
    SEAMLDR_MAX_NR_SIG_PAGES,
    TDX_IMAGE_HEADER_SIZE,
    TDX_IMAGE_SIGNATURE,
    TDX_IMAGE_VERSION_2,
    SeamldrStatus,
    TdxImageHeader,
)
from .model import SIGNED_SIZE, Sigstruct, image_checksum, signer_key


class ImageError(ValueError):
    """The kernel would refuse the image before SEAMLDR.INSTALL (-EINVAL)."""


def sign_sigstruct(sig: Sigstruct, key: ec.EllipticCurvePrivateKey | None = None) -> Sigstruct:
    key = key or signer_key()
    pub = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    unsigned = sig.replace(signer_key=pub, signature=bytes(96))
    der = key.sign(unsigned.pack()[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return unsigned.replace(signature=r.to_bytes(48, "big") + s.to_bytes(48, "big"))


def module_payload(pages: int, seed: bytes | None = None) -> bytes:
    """``pages`` pages of module "code" (random unless a seed is given)."""
    if seed is None:
        return os.urandom(pages * PAGE_SIZE)
    out = bytearray()
    i = 0
    while len(out) < pages * PAGE_SIZE:
        out += hashlib.sha384(seed + i.to_bytes(4, "little")).digest()
        i += 1
    return bytes(out[:pages * PAGE_SIZE])


def assemble(header: TdxImageHeader, sigstruct: bytes, module: bytes,
             fix_checksum: bool = True) -> bytes:
    body = header.replace(checksum=0).pack() + sigstruct + module
    if not fix_checksum:
        return header.pack() + sigstruct + module
    return header.replace(checksum=image_checksum(body)).pack() + sigstruct + module


def build_image(version: tuple[int, int, int], *, module_pages: int = 2,
                seed: bytes | None = None, build_date: int = 20261129,
                build_num: int = 1, svn: int = 1) -> bytes:
    """A valid update image for module ``version`` = (major, minor, update)."""
    module = module_payload(module_pages, seed)
    sig = sign_sigstruct(Sigstruct(
        major_version=version[0], minor_version=version[1], update_version=version[2],
        build_num=build_num, build_date=build_date, module_nr_pages=module_pages,
        module_svn=svn, module_hash=hashlib.sha384(module).digest()))
    header = TdxImageHeader(version=TDX_IMAGE_VERSION_2, signature=TDX_IMAGE_SIGNATURE,
                            sigstruct_nr_pages=1, module_nr_pages=module_pages)
    return assemble(header, sig.pack(), module)


@dataclass(frozen=True)
class Pieces:
    """What the kernel passes on: the sigstruct pages and the module pages."""

    header: TdxImageHeader
    sigstruct: bytes
    module: bytes


def parse_image(image: bytes) -> Pieces:
    """Linux ``init_seamldr_params()`` (v7.2): the checks, in the kernel's order."""
    if len(image) < TDX_IMAGE_HEADER_SIZE:
        raise ImageError("image shorter than its header")
    header = TdxImageHeader.unpack(image[:TDX_IMAGE_HEADER_SIZE])
    sig_len = header.sigstruct_nr_pages * PAGE_SIZE
    mod_len = header.module_nr_pages * PAGE_SIZE
    if TDX_IMAGE_HEADER_SIZE + sig_len + mod_len != len(image):
        raise ImageError("header page counts do not match the image size")
    if header.version != TDX_IMAGE_VERSION_2:
        raise ImageError(f"tdx_image version {header.version:#x}, not 0x200")
    if header.sigstruct_nr_pages > SEAMLDR_MAX_NR_SIG_PAGES or \
            header.module_nr_pages > SEAMLDR_MAX_NR_MODULE_PAGES:
        raise ImageError("too many sigstruct or module pages")
    if header.signature != TDX_IMAGE_SIGNATURE:
        raise ImageError("signature is not TDX-BLOB")
    if any(header.reserved):
        raise ImageError("reserved bytes are not zero")
    start = TDX_IMAGE_HEADER_SIZE
    return Pieces(header, image[start:start + sig_len], image[start + sig_len:])


def checksum_ok(image: bytes) -> bool:
    """[MODEL] checksum rule of :func:`.model.image_checksum` (Linux does not check it)."""
    if len(image) < TDX_IMAGE_HEADER_SIZE:
        return False
    header = TdxImageHeader.unpack(image[:TDX_IMAGE_HEADER_SIZE])
    body = header.replace(checksum=0).pack() + image[TDX_IMAGE_HEADER_SIZE:]
    return image_checksum(body) == header.checksum


# -- deliberately broken images --------------------------------------------------------------
Breaker = Callable[[bytes], bytes]


def _header(image: bytes) -> TdxImageHeader:
    return TdxImageHeader.unpack(image[:TDX_IMAGE_HEADER_SIZE])


def _with_header(image: bytes, fix_checksum: bool = True, **changes: object) -> bytes:
    h = _header(image).replace(**changes)
    sig_end = TDX_IMAGE_HEADER_SIZE + h.sigstruct_nr_pages * PAGE_SIZE
    rest = image[TDX_IMAGE_HEADER_SIZE:]
    return assemble(h, rest[:sig_end - TDX_IMAGE_HEADER_SIZE],
                    rest[sig_end - TDX_IMAGE_HEADER_SIZE:], fix_checksum)


def _sigstruct(image: bytes) -> Sigstruct:
    return Sigstruct.unpack(image[TDX_IMAGE_HEADER_SIZE:TDX_IMAGE_HEADER_SIZE + PAGE_SIZE])


def _with_sigstruct(image: bytes, sig: Sigstruct) -> bytes:
    h = _header(image)
    return assemble(h, sig.pack(), image[TDX_IMAGE_HEADER_SIZE + PAGE_SIZE:])


def _flip_module_byte(image: bytes) -> bytes:
    out = bytearray(image)
    out[TDX_IMAGE_HEADER_SIZE + PAGE_SIZE] ^= 0x01
    h = _header(bytes(out))
    return assemble(h, bytes(out[TDX_IMAGE_HEADER_SIZE:TDX_IMAGE_HEADER_SIZE + PAGE_SIZE]),
                    bytes(out[TDX_IMAGE_HEADER_SIZE + PAGE_SIZE:]))


def _bad_signature(image: bytes) -> bytes:
    sig = _sigstruct(image)
    broken = bytearray(sig.signature)
    broken[-1] ^= 0x01
    return _with_sigstruct(image, sig.replace(signature=bytes(broken)))


def _foreign_signer(image: bytes) -> bytes:
    return _with_sigstruct(image, sign_sigstruct(_sigstruct(image),
                                                 ec.generate_private_key(ec.SECP384R1())))


def _other_major(image: bytes) -> bytes:
    sig = _sigstruct(image)
    return _with_sigstruct(image, sign_sigstruct(sig.replace(
        major_version=sig.major_version + 1)))


def _truncated(image: bytes) -> bytes:
    return image[:-PAGE_SIZE]


@dataclass(frozen=True)
class Breakage:
    make: Breaker
    # What refuses it: "kernel" (-EINVAL before INSTALL, Linux seamldr.c), a SeamldrStatus
    # from SEAMLDR.INSTALL, or "none" (Linux accepts it; only `tdx-blob --check` notices).
    refused_by: str | SeamldrStatus
    what: str


BREAKAGES: dict[str, Breakage] = {
    "checksum": Breakage(lambda i: _with_header(i, fix_checksum=False,
                                                checksum=_header(i).checksum ^ 0xFFFF),
                         "none", "header checksum wrong (Linux v7.2 does not check it)"),
    "version": Breakage(lambda i: _with_header(i, version=0x100), "kernel",
                        "tdx_image version 0x100 (Linux accepts only 0x200)"),
    "magic": Breakage(lambda i: _with_header(i, signature=b"TDX-BLOX"), "kernel",
                      "header signature is not \"TDX-BLOB\""),
    "reserved": Breakage(lambda i: _with_header(i, reserved=b"\x01" + bytes(4075)), "kernel",
                         "a reserved header byte is not zero"),
    "truncated": Breakage(_truncated, "kernel", "one module page missing (size mismatch)"),
    "too-many-sigstruct-pages": Breakage(
        lambda i: assemble(_header(i).replace(sigstruct_nr_pages=2),
                           i[TDX_IMAGE_HEADER_SIZE:TDX_IMAGE_HEADER_SIZE + PAGE_SIZE] * 2,
                           i[TDX_IMAGE_HEADER_SIZE + PAGE_SIZE:]),
        "kernel", "2 sigstruct pages (at most 1)"),
    "no-module-pages": Breakage(
        lambda i: assemble(_header(i).replace(module_nr_pages=0),
                           i[TDX_IMAGE_HEADER_SIZE:TDX_IMAGE_HEADER_SIZE + PAGE_SIZE], b""),
        SeamldrStatus.EBADPARAM, "0 module pages: the kernel passes it, SEAMLDR.INSTALL "
                                 "refuses the params"),
    "bad-signature": Breakage(_bad_signature, SeamldrStatus.EBADSIG,
                              "sigstruct signature does not verify"),
    "foreign-signer": Breakage(_foreign_signer, SeamldrStatus.EBADSIG,
                               "signed by a key the P-SEAMLDR does not trust"),
    "sigstruct-magic": Breakage(
        lambda i: _with_sigstruct(i, _sigstruct(i).replace(magic=b"NOTASIG!")),
        SeamldrStatus.EBADSIG, "sigstruct is not a sigstruct"),
    "module-hash": Breakage(_flip_module_byte, SeamldrStatus.EBADHASH,
                            "a module byte changed after signing"),
    "other-major": Breakage(_other_major, SeamldrStatus.EUNSUPPORTED,
                            "module major version differs from the running module's"),
}


__all__ = ["BREAKAGES", "Breakage", "ImageError", "Pieces", "build_image", "checksum_ok",
           "parse_image", "sign_sigstruct"]
