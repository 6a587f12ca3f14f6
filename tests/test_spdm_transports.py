"""A full SPDM flow against a served device through both of its transports:
the DOE registers in config space over the vfio-user socket (as a guest's
kernel drives them) and the DMTF spdm-emu TCP socket; the capture of the run
decodes as DOE objects and, with the key log, its secured records open."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vfiouser_tdisp.doe.capture import LINKTYPE_PCI_DOE, read_pcap
from vfiouser_tdisp.doe.driver import DoeDriver
from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient
from vfiouser_tdisp.doe.protocols import parse_object
from vfiouser_tdisp.server import RunningDevices, start_devices
from vfiouser_tdisp.spdm import messages as m
from vfiouser_tdisp.spdm.keylog import decrypt_capture, load_keylog
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.vfio_user.client import VfioUserClient

DOE_OFFSET = 0x100

ALGORITHM_SETS = {
    "p384-sha384-aes256": dict(hashes=("sha384",), asyms=("ecdsa-p384",),
                               dhes=("secp384r1",), aeads=("aes-256-gcm",)),
    "p256-sha256-aes128": dict(hashes=("sha256",), asyms=("ecdsa-p256",),
                               dhes=("secp256r1",), aeads=("aes-128-gcm",)),
    "rsa3072-sha384-chacha": dict(hashes=("sha384",), asyms=("rsassa-3072",),
                                  dhes=("secp384r1",), aeads=("chacha20-poly1305",)),
}


@pytest.fixture
def served(sock_dir: Path) -> Iterator[tuple[RunningDevices, Path]]:
    # The identity cache the test's `certs` export uses too (tests never touch the
    # user's cache).
    running = start_devices([str(sock_dir / "d.sock")], "virtio-rng", spdm_port=0,
                            pcap=str(sock_dir / "doe.pcap"),
                            pcap_keys=str(sock_dir / "keys.jsonl"),
                            identity_options={"identity_dir": str(sock_dir / "c/identity")})
    yield running, sock_dir
    running.close()
    shutil.rmtree(sock_dir / "c", ignore_errors=True)


def full_flow(req: SpdmRequester, root: x509.Certificate) -> dict[str, object]:
    """VCA, digests, certificate, challenge, measurements, key exchange, finish,
    heartbeat, key update (one and all), measurements in session, end session."""
    req.init_connection()
    digests = req.get_digests()
    chain = req.get_certificate()
    req.verify_certificate_chain(root)
    auth = req.challenge(m.SUMMARY_HASH_ALL)
    meas = req.get_measurements()
    session = req.start_session(m.SUMMARY_HASH_TCB)
    req.heartbeat(session)
    req.key_update(session)
    req.heartbeat(session)
    req.key_update(session, all_keys=True)
    inside = req.get_measurements(session=session)
    req.end_session(session)
    return {"digests": digests, "chain": chain, "auth": auth, "meas": meas, "inside": inside}


def check_chain_independently(chain: bytes, hash_name: str, root: x509.Certificate) -> None:
    """The SPDM chain verifies with cryptography alone against the exported root."""
    size = hashlib.new(hash_name).digest_size
    assert int.from_bytes(chain[:2], "little") == len(chain)
    root_der = root.public_bytes(Encoding.DER)
    assert chain[4:4 + size] == hashlib.new(hash_name, root_der).digest()
    body = chain[4 + size:]
    certs = []
    while body:
        n = body[1]
        head, length = (2, n) if n < 0x80 else (2 + (n & 0x7F),
                                                int.from_bytes(body[2:2 + (n & 0x7F)], "big"))
        certs.append(x509.load_der_x509_certificate(body[:head + length]))
        body = body[head + length:]
    assert certs[0] == root
    for parent, child in zip(certs, certs[1:], strict=False):
        child.verify_directly_issued_by(parent)


def exported_root(tmp: Path, cache: Path) -> x509.Certificate:
    """The root CA as `vfiouser-tdisp certs` exports it for a verifier."""
    from vfiouser_tdisp.cli import main

    assert main(["certs", "--profile", "virtio-rng", "--out", str(tmp), "--cache-dir",
                 str(cache)]) == 0
    return x509.load_der_x509_certificate((tmp / "root.der").read_bytes())


@pytest.mark.parametrize("algs", list(ALGORITHM_SETS), ids=list(ALGORITHM_SETS))
def test_full_session_through_doe_registers(served, algs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    running, sock_dir = served
    dev = running.devices[0]
    root = exported_root(tmp_path, sock_dir / "c")
    with VfioUserClient(str(sock_dir / "d.sock")) as c:
        c.version()
        drv = DoeDriver(c.config_read32, c.config_write32, DOE_OFFSET)
        drv.abort()
        assert drv.discover() == [(1, 0), (1, 1), (1, 2)]
        req = SpdmRequester(drv.exchange, **ALGORITHM_SETS[algs])
        out = full_flow(req, root)
    assert req.conn.version == m.V13
    check_chain_independently(out["chain"], ALGORITHM_SETS[algs]["hashes"][0], root)
    assert [b.index for b in out["meas"].blocks] == [1, 2, 3, 4]
    assert not dev.spdm.sessions  # ended


@pytest.mark.parametrize("algs", list(ALGORITHM_SETS), ids=list(ALGORITHM_SETS))
def test_full_session_through_spdm_emu_socket(served, algs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    running, sock_dir = served
    root = exported_root(tmp_path, sock_dir / "c")
    client = SpdmEmuClient("127.0.0.1", running.spdm_servers[0].port)
    try:
        req = SpdmRequester(client.doe, **ALGORITHM_SETS[algs])
        out = full_flow(req, root)
    finally:
        client.close()
    check_chain_independently(out["chain"], ALGORITHM_SETS[algs]["hashes"][0], root)


@pytest.mark.parametrize("version", [m.V10, m.V11, m.V12])
def test_older_versions_through_doe_registers(served, version) -> None:  # type: ignore[no-untyped-def]
    running, sock_dir = served
    with VfioUserClient(str(sock_dir / "d.sock")) as c:
        c.version()
        drv = DoeDriver(c.config_read32, c.config_write32, DOE_OFFSET)
        req = SpdmRequester(drv.exchange, versions=(version,))
        req.authenticate(running.devices[0].identity.root)
        req.get_measurements()
        if version >= m.V11:
            s = req.start_session()
            req.heartbeat(s)
            req.end_session(s)
    assert req.conn.version == version


def test_capture_decodes_and_secured_records_open(served) -> None:  # type: ignore[no-untyped-def]
    running, sock_dir = served
    client = SpdmEmuClient("127.0.0.1", running.spdm_servers[0].port)
    try:
        req = SpdmRequester(client.doe)
        req.authenticate()
        s = req.start_session()
        req.heartbeat(s)
        req.key_update(s, all_keys=True)
        req.heartbeat(s)
        req.end_session(s)
    finally:
        client.close()
    running.close()
    linktype, packets = read_pcap((sock_dir / "doe.pcap").read_bytes())
    assert linktype == LINKTYPE_PCI_DOE
    types = []
    for p in packets:
        hdr, payload = parse_object(p)
        assert hdr.vendor_id == 1 and hdr.length_dw * 4 == len(p)
        types.append(hdr.data_object_type)
    assert types.count(1) >= 12 and types.count(2) >= 12  # plain and secured, both ways
    secured_bytes = b"".join(p for p in packets if p[2] == 2)
    opened = decrypt_capture(packets, load_keylog((sock_dir / "keys.jsonl").read_text()))
    # no message travels in the clear: none of the opened plaintexts (each at least the
    # 4-byte SPDM header) is in the captured records (a 2-byte code alone could be part of
    # the random session ID or of the ciphertext)
    assert all(len(msg) >= 4 and msg not in secured_bytes for _i, _d, msg in opened)
    codes = [(direction, msg[1]) for _i, direction, msg in opened]
    assert codes == [
        ("request", m.FINISH_CODE), ("response", m.FINISH_RSP_CODE),
        ("request", m.HEARTBEAT_CODE), ("response", m.HEARTBEAT_ACK_CODE),
        ("request", m.KEY_UPDATE_CODE), ("response", m.KEY_UPDATE_ACK_CODE),
        ("request", m.KEY_UPDATE_CODE), ("response", m.KEY_UPDATE_ACK_CODE),
        ("request", m.HEARTBEAT_CODE), ("response", m.HEARTBEAT_ACK_CODE),
        ("request", m.END_SESSION_CODE), ("response", m.END_SESSION_ACK_CODE),
    ]
    assert oct((sock_dir / "keys.jsonl").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("algs", list(ALGORITHM_SETS), ids=list(ALGORITHM_SETS))
def test_full_session_in_process(algs) -> None:  # type: ignore[no-untyped-def]
    """(a) of the three transports: the device's DOE dispatcher called directly."""
    from vfiouser_tdisp.device.device import Device, get_profile

    dev = Device(get_profile("virtio-rng"))
    req = SpdmRequester(dev.doe.exchange, **ALGORITHM_SETS[algs])
    out = full_flow(req, dev.identity.root)
    check_chain_independently(out["chain"], ALGORITHM_SETS[algs]["hashes"][0],
                              dev.identity.root)
    assert req.conn.asym is not None and req.conn.asym.name == ALGORITHM_SETS[algs]["asyms"][0]
    assert not dev.spdm.sessions
