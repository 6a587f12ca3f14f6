"""Concatenated DER certificates, as the SPDM certificate chain carries them."""

from __future__ import annotations

from cryptography import x509


def split_der_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse back-to-back DER certificates (each an ASN.1 SEQUENCE).

    Raises ValueError naming the certificate that does not parse.
    """
    certs, pos = [], 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise ValueError(f"no DER SEQUENCE at byte {pos}")
        first = data[pos + 1]
        if first < 0x80:
            head, size = 2, first
        else:
            n = first & 0x7F
            head, size = 2 + n, int.from_bytes(data[pos + 2:pos + 2 + n], "big")
        try:
            certs.append(x509.load_der_x509_certificate(data[pos:pos + head + size]))
        except ValueError as exc:
            raise ValueError(f"certificate {len(certs)} does not parse: {exc}") from None
        pos += head + size
    return certs
