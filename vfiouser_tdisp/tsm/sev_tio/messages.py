"""SNP guest messages: sealing and opening with the guest's VMPCK (AES-256-GCM).

The framing is the SEV-SNP Firmware ABI's (``struct snp_guest_msg_hdr``, as Linux's
sev-guest driver builds it): a 0x60-byte header, then the payload encrypted with
AES-256-GCM under a VM platform communication key (VMPCK) the PSP provisions in the
guest's secrets page.  The IV is the message sequence number (little-endian, 12 bytes),
the additional data is the header from ``algo`` (offset 0x30) to its end, and the
16-byte tag sits in ``authtag``.  A request carries the next odd sequence number, its
response that number + 1; the PSP accepts each number once, so a host relaying the
messages can neither forge nor replay one.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...wire import DecodeError
from .abi import (
    SNP_AEAD_AES_256_GCM,
    SNP_AUTHTAG_LEN,
    SNP_MSG_AAD_OFFSET,
    SNP_MSG_HDR_SIZE,
    SNP_MSG_HDR_VERSION,
    TIO_MSG_VERSION,
    SnpGuestMsgHdr,
)

VMPCK_SIZE = 32


class GuestMessageError(Exception):
    """A guest message that does not authenticate, decode or carry the expected number."""


@dataclass(frozen=True)
class GuestMessage:
    msg_type: int
    seqno: int
    payload: bytes
    vmpck: int = 0


def _iv(seqno: int) -> bytes:
    return seqno.to_bytes(8, "little") + bytes(4)


def seal(key: bytes, msg_type: int, seqno: int, payload: bytes, vmpck: int = 0) -> bytes:
    """Header + AES-256-GCM ciphertext of ``payload``."""
    hdr = SnpGuestMsgHdr(authtag=bytes(32), msg_seqno=seqno, rsvd1=bytes(8),
                         algo=SNP_AEAD_AES_256_GCM, hdr_version=SNP_MSG_HDR_VERSION,
                         hdr_sz=SNP_MSG_HDR_SIZE, msg_type=msg_type,
                         msg_version=TIO_MSG_VERSION, msg_sz=len(payload), rsvd2=bytes(4),
                         msg_vmpck=vmpck, rsvd3=bytes(35)).pack()
    sealed = AESGCM(key).encrypt(_iv(seqno), payload, hdr[SNP_MSG_AAD_OFFSET:])
    ciphertext, tag = sealed[:-SNP_AUTHTAG_LEN], sealed[-SNP_AUTHTAG_LEN:]
    return tag.ljust(32, b"\0") + hdr[32:] + ciphertext


def open_message(key: bytes, data: bytes) -> GuestMessage:
    """Authenticate and decrypt one message (header + ciphertext)."""
    try:
        hdr = SnpGuestMsgHdr.unpack(data[:SNP_MSG_HDR_SIZE])
    except DecodeError as exc:
        raise GuestMessageError(f"message header: {exc}") from None
    if hdr.algo != SNP_AEAD_AES_256_GCM or hdr.hdr_version != SNP_MSG_HDR_VERSION \
            or hdr.hdr_sz != SNP_MSG_HDR_SIZE:
        raise GuestMessageError(f"unsupported header (algo {hdr.algo}, version "
                                f"{hdr.hdr_version}, size {hdr.hdr_sz:#x})")
    end = SNP_MSG_HDR_SIZE + hdr.msg_sz
    if end > len(data):
        raise GuestMessageError(f"msg_sz {hdr.msg_sz} beyond the message page")
    ciphertext = data[SNP_MSG_HDR_SIZE:end]
    aad = data[SNP_MSG_AAD_OFFSET:SNP_MSG_HDR_SIZE]
    try:
        plain = AESGCM(key).decrypt(_iv(hdr.msg_seqno),
                                    ciphertext + hdr.authtag[:SNP_AUTHTAG_LEN], aad)
    except InvalidTag:
        raise GuestMessageError("authentication tag mismatch") from None
    return GuestMessage(hdr.msg_type, hdr.msg_seqno, plain, hdr.msg_vmpck)
