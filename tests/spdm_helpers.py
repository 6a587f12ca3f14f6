"""Request builders for the SPDM responder/crypto/fuzz tests: every request as
bytes from the message classes, so tests drive the responder without the
requester.  The identity and measurement source come from spdm_support."""

from __future__ import annotations

from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.spdm.algorithms import AEADS, ASYMS, DHES, HASHES, mask
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.spdm.responder import SpdmResponder

E = m.SpdmErrorCode
REQ_FLAGS = SpdmRequester.CAP_FLAGS

# name -> (hash, asym, dhe, aead, DHE exchange size)
ALGSETS = {
    "p384": ("sha384", "ecdsa-p384", "secp384r1", "aes-256-gcm", 96),
    "p256": ("sha256", "ecdsa-p256", "secp256r1", "aes-128-gcm", 64),
    "rsa3072": ("sha384", "rsassa-3072", "secp384r1", "chacha20-poly1305", 96),
}


def err(rsp: bytes) -> int | None:
    """The ERROR code of ``rsp``, None for any other response."""
    return rsp[2] if len(rsp) >= 4 and rsp[1] == m.ERROR_CODE else None


def get_version() -> bytes:
    return m.GET_VERSION().pack()


def get_caps(v: int = m.V12, flags: int = REQ_FLAGS, dts: int = 4096, mx: int = 65536,
             ct: int = 12) -> bytes:
    return m.GET_CAPABILITIES(spdm_version=v, ct_exponent=ct, flags=flags if v >= m.V11 else 0,
                              data_transfer_size=dts, max_spdm_msg_size=mx).pack()


def negotiate(v: int = m.V12, algset: str = "p384",
              structs: list[tuple[int, int]] | None = None) -> bytes:
    hash_name, asym, dhe, aead, _ = ALGSETS[algset]
    if structs is None:
        structs = [(2, mask((dhe,), DHES)), (3, mask((aead,), AEADS)), (4, 0), (5, 1)] \
            if v >= m.V11 else []
    body = b"".join(m.AlgStruct(t, bits).pack() for t, bits in structs)
    return m.NEGOTIATE_ALGORITHMS(
        spdm_version=v, param1=len(structs), length=32 + len(body),
        measurement_specification=1, other_params_support=2 if v >= m.V12 else 0,
        base_asym_algo=mask((asym,), ASYMS), base_hash_algo=mask((hash_name,), HASHES),
        req_alg_struct=body).pack()


def vca(r: SpdmResponder, v: int = m.V12, algset: str = "p384", dts: int = 4096,
        mx: int = 65536, flags: int = REQ_FLAGS) -> None:
    assert r.handle_cma(get_version())[1] == m.VERSION_CODE
    caps = r.handle_cma(get_caps(v, flags=flags, dts=dts, mx=mx))
    assert caps[1] == m.CAPABILITIES_CODE, caps.hex()
    alg = r.handle_cma(negotiate(v, algset))
    assert alg[1] == m.ALGORITHMS_CODE, alg.hex()


def works(r: SpdmResponder, v: int = m.V12) -> None:
    """The connection still answers a normal request."""
    rsp = r.handle_cma(m.GET_DIGESTS(spdm_version=v).pack())
    assert rsp[1] == m.DIGESTS_CODE, rsp.hex()


def requests_after_vca(v: int = m.V12, dhe_size: int = 96) -> dict[str, bytes]:
    """One valid request of every kind the responder takes after VCA (plain)."""
    return {
        "GET_DIGESTS": m.GET_DIGESTS(spdm_version=v).pack(),
        "GET_CERTIFICATE": m.GET_CERTIFICATE(spdm_version=v, offset=0, length=0x80).pack(),
        "CHALLENGE": m.CHALLENGE(spdm_version=v, nonce=bytes(32)).pack(),
        "GET_MEASUREMENTS": m.GET_MEASUREMENTS(spdm_version=v, param2=1).pack(),
        "GET_MEASUREMENTS_SIGNED": m.GET_MEASUREMENTS(spdm_version=v, param1=1, param2=0xFF,
                                                      nonce=bytes(32)).pack(),
        "KEY_EXCHANGE": m.KEY_EXCHANGE(spdm_version=v, req_session_id=1,
                                       exchange_data=bytes(dhe_size)).pack(
            m.Sizes(version=v, dhe=dhe_size)),
        "VENDOR_DEFINED_REQUEST": m.VENDOR_DEFINED_REQUEST(
            spdm_version=v, standard_id=3, len=2, vendor_id=b"\x01\x00", req_length=2,
            vendor_defined_req_payload=b"hi").pack(),
        "CHUNK_GET": m.CHUNK_GET(spdm_version=v, param2=1).pack(),
    }
