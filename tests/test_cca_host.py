"""The guest-less CCA host and realm drivers against the RMM and a real device: the
whole sequence of firmware-abi.md C.8 in process (through the DOE mailbox registers)
and over the DMTF spdm-emu socket (``serve --spdm-port``), both RHI layouts, the RHI
statuses of the ACS scenarios (cca-rmm-acs docs/rhi_scenarios.md as summarised in
firmware-abi.md C.7), tampered evidence and a TDI that falls into ERROR while running.
"""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding

from tests.cca_support import bench, device_identity
from tests.platform_support import attached_guest, dmtf_responder_emu, over_spdm_emu
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.server import start_devices
from vfiouser_tdisp.tdisp.messages import TdiState
from vfiouser_tdisp.tsm.cca import abi
from vfiouser_tdisp.tsm.cca.abi import RhiDaStatus as R
from vfiouser_tdisp.tsm.cca.abi import RmiDevCommObject, RmiVdevState, RsiVdevState
from vfiouser_tdisp.tsm.cca.host import CcaError, CcaHost, CcaRealm
from vfiouser_tdisp.tsm.cca.rhi import LAYOUTS, RhiObject
from vfiouser_tdisp.tsm.cca.rmm import Rmm
from vfiouser_tdisp.tsm.platform import config_accessors

VDEV = 0x10
RHI_OF = {RmiDevCommObject.VCA: RhiObject.VCA, RmiDevCommObject.CERTIFICATE:
          RhiObject.CERTIFICATE, RmiDevCommObject.MEASUREMENTS: RhiObject.MEASUREMENT,
          RmiDevCommObject.INTERFACE_REPORT: RhiObject.INTERFACE_REPORT}


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cca-identity")


def transitions(rec: Recorder, machine: str) -> list[str]:
    events = rec.of(f"{machine}.transition")
    key = "pdev" if machine == "rmm.pdev" else "vdev"
    events = [e for e in events if events and e[key] == events[0][key]]
    if not events:
        return []
    return [events[0]["old"]] + [e["new"] for e in events]


def whole_flow(host: CcaHost, realm: CcaRealm) -> None:
    host.connect()
    host.bind(VDEV)
    ev = realm.lock(VDEV)
    assert ev.ranges
    realm.accept(VDEV)
    assert realm.get_info(VDEV).state == RsiVdevState.STARTED
    realm.unlock(VDEV)
    host.unbind(VDEV)
    host.disconnect()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_whole_flow_in_process(cache: Path, recorder: Recorder, layout: str) -> None:
    b = bench(cache, layout=layout)
    b.host.connect()
    b.host.bind(VDEV)
    ev = b.realm.lock(VDEV)
    # the report the device gave is the BARs as assigned (4 KiB page numbers)
    assert ev.ranges == [(base, base + size) for base, size in sorted(b.bars.values())]
    b.realm.accept(VDEV)
    assert b.device.tdisp.tdis[0].state is TdiState.RUN
    assert b.rmm.vdevs[b.host.vdevs[VDEV].addr].dma.state.name == "ENABLED"
    b.realm.unlock(VDEV)
    assert b.device.tdisp.tdis[0].state is TdiState.CONFIG_UNLOCKED
    b.host.unbind(VDEV)
    b.host.disconnect()
    assert transitions(recorder, "rmm.pdev")[:5] == \
        ["NEW", "NEEDS_KEY", "HAS_KEY", "READY", "STOPPED"]
    assert transitions(recorder, "rmm.vdev") == \
        ["NEW", "UNLOCKED", "LOCKED", "LOCKED", "LOCKED", "STARTED", "UNLOCKED"]
    # every object crossed the device's DOE mailbox: SPDM, secured SPDM with IDE_KM and
    # TDISP inside (the device's own events)
    kinds = {e["event"] for e in recorder.events}
    assert {"tdisp.locked", "spdm.requester.session"} <= kinds
    assert b.host.objects_sent > 20
    assert not b.rmm.pdevs and not b.rmm.vdevs


def test_whole_flow_over_spdm_emu_socket(cache: Path, sock_dir: Path,
                                         recorder: Recorder) -> None:
    """``serve --spdm-port``: the RMM's objects reach the device over DMTF's socket
    protocol; the BARs are assigned over vfio-user first, as a guest's firmware would."""
    with over_spdm_emu(sock_dir, cache) as (transport, _running):
        host = CcaHost(Rmm(), transport)
        whole_flow(host, CcaRealm(host))
    assert transitions(recorder, "rmm.pdev")[:5] == \
        ["NEW", "NEEDS_KEY", "HAS_KEY", "READY", "STOPPED"]
    locked = recorder.of("tdisp.locked")
    assert locked and locked[0]["default_stream_id"] == 1


def test_rhi_statuses_acs(cache: Path) -> None:
    b = bench(cache)
    h, realm = b.host, b.realm
    h.connect()
    h.bind(VDEV)
    lay = h.layout
    assert realm.rhi(abi.RHI_DA_VERSION)[0] == 0x10000
    assert realm.rhi(abi.RHI_DA_FEATURES)[0] & 0b111011 == 0b111011
    assert realm.rhi(0xC50000FF)[0] == abi.RHI_NOT_SUPPORTED
    assert realm.rhi(abi.RHI_DA_VDEV_P2P_UNBIND, VDEV, VDEV)[0] == abi.RHI_NOT_SUPPORTED
    assert realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV + 1, 1)[0] == R.INVALID_VDEV_ID
    assert realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV, 9)[0] == R.INVALID_OBJECT
    assert realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV, 4)[0] == R.OBJECT_UNSUPPORTED  # ext. evidence
    assert realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV, 3)[0] == R.DATA_NOT_AVAILABLE  # no report yet
    size = realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV, 1)          # CERTIFICATE, cached at connect
    assert size[0] == R.SUCCESS and size[1] == len(h.pdev_cache[RmiDevCommObject.CERTIFICATE])
    # OBJECT_READ: [3] buffer, [4] max_len, [5] offset
    assert realm.rhi(abi.RHI_DA_OBJECT_READ, VDEV, 1, 0, 0x10, 0)[0] == R.ACCESS_FAILED
    assert realm.rhi(abi.RHI_DA_OBJECT_READ, VDEV, 1, realm.bounce, 0x10, size[1])[0] == \
        R.INVALID_OFFSET
    out = realm.rhi(abi.RHI_DA_OBJECT_READ, VDEV, 0, realm.bounce, 0x10, 0)     # VCA
    assert out[:2] == (R.SUCCESS, 0x10)
    assert b.host.mem.read(realm.bounce, 4) == bytes([0x10, 0x84, 0, 0])         # GET_VERSION
    out = realm.rhi(abi.RHI_DA_OBJECT_READ, VDEV, 1, realm.bounce, 0x10, 2)
    chain = h.pdev_cache[RmiDevCommObject.CERTIFICATE]
    assert out[:2] == (R.SUCCESS, 0x10) and h.mem.read(realm.bounce, 0x10) == chain[2:0x12]
    # SET_TDI_STATE: a state that does not exist is INVALID_OBJECT
    assert realm.rhi(abi.RHI_DA_VDEV_SET_TDI_STATE, VDEV, 3)[0] == R.INVALID_OBJECT
    assert realm.rhi(abi.RHI_DA_VDEV_SET_TDI_STATE, VDEV, 1)[0] == R.SUCCESS  # already locked
    assert realm.rhi(abi.RHI_DA_VDEV_CONTINUE, VDEV, 77)[0] == R.DEVICE       # no such handle
    assert realm.rhi(abi.RHI_DA_VDEV_ABORT, VDEV)[0] == R.ABORTED_OPERATION_HAD_COMPLETED
    out = realm.rhi(lay.get_interface_report, VDEV)
    assert out[0] == R.INCOMPLETE
    assert realm.rhi(lay.get_interface_report, VDEV)[0] == R.BUSY
    assert realm.rhi(abi.RHI_DA_VDEV_CONTINUE, VDEV, out[1] + 1)[0] == R.DEVICE
    assert realm.rhi(abi.RHI_DA_VDEV_ABORT, VDEV)[0] == R.SUCCESS
    assert h.vdev_state(h.vdevs[VDEV].addr) is RmiVdevState.ERROR


def test_rhi_linux_layout_numbers_and_register_order(cache: Path) -> None:
    b = bench(cache, layout="linux-rfc-v4")
    h, realm = b.host, b.realm
    h.connect()
    h.bind(VDEV)
    assert realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV, 0)[0] == R.INVALID_OBJECT   # no object 0
    vca = h.pdev_cache[RmiDevCommObject.VCA]
    assert realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV, 4)[:2] == (R.SUCCESS, len(vca))  # VCA = 4
    # OBJECT_READ: [3] offset, [4] max_len, [5] buffer
    out = realm.rhi(abi.RHI_DA_OBJECT_READ, VDEV, 4, 4, 8, realm.bounce)
    assert out[:2] == (R.SUCCESS, 8) and h.mem.read(realm.bounce, 8) == vca[4:12]
    # 0xC5000052 is GET_INTERFACE_REPORT here (GET_MEASUREMENTS in the ACS layout)
    realm.rhi_wait(0xC5000052, VDEV)
    report = realm.read_object(VDEV, RhiObject.INTERFACE_REPORT)
    assert report == h.vdevs[VDEV].cache[RmiDevCommObject.INTERFACE_REPORT]
    assert realm.rhi(abi.RHI_DA_OBJECT_SIZE, VDEV, 2)[0] == R.DATA_NOT_AVAILABLE
    realm.mem.write(realm.meas_params, bytes(768))
    realm.rhi_wait(0xC5000053, VDEV, realm.meas_params)                    # GET_MEASUREMENTS
    assert realm.read_object(VDEV, RhiObject.MEASUREMENT)[1] == 0x60     # MEASUREMENTS


@pytest.mark.parametrize("obj", [RmiDevCommObject.INTERFACE_REPORT,
                                 RmiDevCommObject.MEASUREMENTS, RmiDevCommObject.VCA,
                                 RmiDevCommObject.CERTIFICATE])
def test_tampered_evidence_is_refused(cache: Path, obj: RmiDevCommObject) -> None:
    """The host (untrusted) alters an object it serves: the digest the RMM attests in
    rsi_vdev_info no longer matches, so the realm refuses it before accepting."""
    b = bench(cache)
    h, realm = b.host, b.realm
    h.connect()
    v = h.bind(VDEV)
    original = CcaHost.rhi_object_read

    def tampering(self: CcaHost, a: tuple[int, ...]) -> tuple[int, ...]:
        store = self.pdev_cache if obj in (RmiDevCommObject.VCA,
                                           RmiDevCommObject.CERTIFICATE) else v.cache
        if obj in store and a[1] == self.layout.object_id(RHI_OF[obj]):
            data = bytearray(store[obj])
            data[-1] ^= 0x01
            store[obj] = bytes(data)
        return original(self, a)
    h.rhi_object_read = tampering.__get__(h)  # type: ignore[method-assign]
    with pytest.raises(CcaError, match="does not match the digest"):
        realm.lock(VDEV)
    with pytest.raises(CcaError, match="accept before lock"):
        realm.accept(VDEV)
    assert b.device.tdisp.tdis[0].state is TdiState.CONFIG_LOCKED   # never RUN


def test_bar_moved_while_run_then_unlock_recovers(cache: Path) -> None:
    """A BAR write while RUN puts the TDI in ERROR (TDISP 1.0 §11.2.4); the realm sees
    it through RSI_VDEV_GET_INFO once the RMM next talks to the TDI; unlock recovers."""
    b = bench(cache)
    h, realm = b.host, b.realm
    h.connect()
    h.bind(VDEV)
    realm.lock(VDEV)
    realm.accept(VDEV)
    read32, write32 = config_accessors(b.device.dsm)
    base = b.bars[0][0]
    write32(0x10, (base + 0x0100_0000) & 0xFFFF_FFF0 | (read32(0x10) & 0xF))
    assert b.device.tdisp.tdis[0].state is TdiState.ERROR
    with pytest.raises(CcaError, match="DEVICE"):
        realm.rhi_wait(h.layout.get_interface_report, VDEV)
    assert realm.get_info(VDEV).state == RsiVdevState.ERROR
    nonces = realm.get_info(VDEV)
    out = realm.rsi(abi.RsiFid.RSI_VDEV_DMA_ENABLE, VDEV, 0, 0, nonces.lock_nonce,
                    nonces.meas_nonce, nonces.report_nonce)
    assert out[0] == abi.RsiStatus.RSI_ERROR_DEVICE
    write32(0x10, base & 0xFFFF_FFF0 | (read32(0x10) & 0xF))
    realm.unlock(VDEV)
    assert realm.get_info(VDEV).state == RsiVdevState.UNLOCKED
    assert b.device.tdisp.tdis[0].state is TdiState.CONFIG_UNLOCKED
    realm.lock(VDEV)
    realm.accept(VDEV)
    assert b.device.tdisp.tdis[0].state is TdiState.RUN


def test_dma_enable_with_stale_nonce_fails_in_accept(cache: Path) -> None:
    """Evidence read, then the measurements refreshed behind the realm's back: the nonces
    the realm holds are stale and RSI_VDEV_DMA_ENABLE refuses them."""
    b = bench(cache)
    h, realm = b.host, b.realm
    h.connect()
    v = h.bind(VDEV)
    realm.lock(VDEV)
    held = realm.get_info(VDEV)
    h.measure(v)
    h.vdev_op(v, abi.RmiFid.RMI_VDEV_START, RmiVdevState.STARTED)
    out = realm.rsi(abi.RsiFid.RSI_VDEV_DMA_ENABLE, VDEV, 0, 0, held.lock_nonce,
                    held.meas_nonce, held.report_nonce)
    assert out[0] == abi.RsiStatus.RSI_ERROR_DEVICE
    now = realm.get_info(VDEV)
    assert realm.rsi(abi.RsiFid.RSI_VDEV_DMA_ENABLE, VDEV, 0, 0, now.lock_nonce,
                     now.meas_nonce, now.report_nonce)[0] == abi.RsiStatus.RSI_SUCCESS


def test_host_reports_transport_failure(cache: Path) -> None:
    """The DOE exchange fails on the host: enter.status = ERROR and the PDEV moves to
    ERROR; the host can still stop and destroy it."""
    b = bench(cache)
    h = b.host
    calls = {"n": 0}
    real = h.transport

    def flaky(kind: int, payload: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("mailbox timeout")
        return real(kind, payload)
    h.transport = flaky
    h.pdev_create()
    with pytest.raises(CcaError, match="identity: PDEV ERROR"):
        h.pdev_identity()
    h.disconnect()
    assert not b.rmm.pdevs


def test_chain_anchor_check(cache: Path) -> None:
    from vfiouser_tdisp.tsm.cca.host import check_evidence
    b = bench(cache)
    b.host.connect()
    b.host.bind(VDEV)
    ev = b.realm.lock(VDEV)
    check_evidence(ev, lock_nonce=ev.info.lock_nonce, root=device_identity(cache).root)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "other root")])
    other = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(key.public_key()).serial_number(1)
             .not_valid_before(datetime.datetime(2020, 1, 1))
             .not_valid_after(datetime.datetime(2040, 1, 1)).sign(key, hashes.SHA256()))
    with pytest.raises(CcaError, match="trusted root"):
        check_evidence(ev, lock_nonce=ev.info.lock_nonce, root=other)
    with pytest.raises(CcaError, match="lock_nonce"):
        check_evidence(ev, lock_nonce=ev.info.lock_nonce + 1)


def test_struct_sizes_fit_one_granule() -> None:
    assert struct.calcsize("<31Q") + 8 == abi.RSI_HOST_CALL_SIZE


def test_cli_over_spdm_emu_socket(cache: Path, sock_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`vfiouser-tdisp tsm --platform cca --spdm HOST:PORT` against `serve --spdm-port`:
    without assigned BARs the device refuses LOCK (INVALID_DEVICE_CONFIGURATION), the
    command says so and exits 1; once the BARs are assigned every step passes."""
    from vfiouser_tdisp.cli import main
    path = str(sock_dir / "cli.sock")
    running = start_devices([path], "virtio-rng", spdm_port=0,
                            identity_options={"identity_dir": cache})
    try:
        spdm = f"127.0.0.1:{running.spdm_servers[0].port}"
        assert main(["tsm", "--platform", "cca", "--spdm", spdm]) == 1
        out = capsys.readouterr().out.splitlines()
        assert [ln.split()[:2] for ln in out] == [
            ["connect", "PASS"], ["bind", "PASS"], ["lock", "FAIL"]]
        assert "INVALID_DEVICE_CONFIGURATION" in out[-1]
        with attached_guest(path):  # the "guest": assigns the BARs, stays attached
            root = sock_dir / "root.der"
            root.write_bytes(running.devices[0].identity.root.public_bytes(Encoding.DER))
            assert main(["tsm", "--platform", "cca", "--spdm", spdm, "--root", str(root),
                         "--layout", "linux-rfc-v4"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert [ln.split()[:2] for ln in out] == [
            [step, "PASS"] for step in ("connect", "bind", "lock", "accept", "unlock",
                                        "unbind", "disconnect")]
        assert "chain anchored" in out[2]
    finally:
        running.close()


def test_cli_against_dmtf_spdm_responder_emu(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Interop with an independent responder: DMTF spdm-emu's ``spdm_responder_emu``
    (libspdm, its own IDE_KM and TDISP samples).  Built outside the repository; set
    SPDM_RESPONDER_EMU to the binary (its sample keys are looked up next to it in
    ../../libspdm/unit_test/sample_key, or SPDM_EMU_KEYS)."""
    from vfiouser_tdisp.cli import main
    with dmtf_responder_emu(tmp_path) as port:
        assert main(["tsm", "--platform", "cca", "--spdm", f"127.0.0.1:{port}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in out] == [
        [step, "PASS"] for step in ("connect", "bind", "lock", "accept", "unlock", "unbind",
                                    "disconnect")]


def test_cli_in_process_device_with_events(cache: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Without --spdm the CLI builds the device in process (BARs assigned) and drives it
    through its DOE mailbox registers; --events records every RMM transition."""
    import json

    from vfiouser_tdisp.cli import main
    events = tmp_path / "events.jsonl"
    assert main(["tsm", "--platform", "cca", "--cache-dir", str(cache), "--events",
                 str(events), "--hash", "sha512", "connect", "bind", "lock", "measurements",
                 "info", "accept", "unlock", "unbind", "disconnect"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(line.split()[1] == "PASS" for line in out) and len(out) == 9
    assert "hash_algo 1" in out[4]
    lines = [json.loads(ln) for ln in events.read_text().splitlines()]
    pdev = [e for e in lines if e["event"] == "rmm.pdev.transition"]
    ep = pdev[0]["pdev"]
    assert [pdev[0]["old"]] + [e["new"] for e in pdev if e["pdev"] == ep] == \
        ["NEW", "NEEDS_KEY", "HAS_KEY", "READY", "STOPPED"]
    vdev = [e["new"] for e in lines if e["event"] == "rmm.vdev.transition"]
    assert vdev == ["UNLOCKED", "LOCKED", "LOCKED", "LOCKED", "LOCKED", "STARTED", "UNLOCKED"]
    assert main(["tsm", "--platform", "cca", "--cache-dir", str(cache), "nonsense"]) == 2


def _der_certificates(body: bytes) -> list[x509.Certificate]:
    """DER certificates one after another (X.690 definite lengths), parsed by hand."""
    certs = []
    while body:
        n = body[1]
        head, size = (2, n) if n < 0x80 else (2 + (n & 0x7F),
                                              int.from_bytes(body[2:2 + (n & 0x7F)], "big"))
        certs.append(x509.load_der_x509_certificate(body[:head + size]))
        body = body[head + size:]
    return certs


def _base_hash(vca: bytes) -> hashes.HashAlgorithm:
    """BaseHashSel of the ALGORITHMS response in the VCA (DSP0274 §10.4-10.6: GET_VERSION
    4 B, VERSION 6 + 2n B, GET_CAPABILITIES / CAPABILITIES 20 B each (1.2), then
    NEGOTIATE_ALGORITHMS and ALGORITHMS with their Length @4; BaseHashSel @16)."""
    off = 4 + 6 + 2 * vca[4 + 5]
    assert vca[off + 1] == 0xE1 and vca[off + 21] == 0x61   # GET_CAPABILITIES, CAPABILITIES
    off += 40
    assert vca[off + 1] == 0xE3                              # NEGOTIATE_ALGORITHMS
    off += struct.unpack_from("<H", vca, off + 4)[0]
    assert vca[off + 1] == 0x63                              # ALGORITHMS
    sel = struct.unpack_from("<I", vca, off + 16)[0]
    return {1: hashes.SHA256(), 2: hashes.SHA384(), 4: hashes.SHA512()}[sel]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_realm_nonce_reaches_the_device_and_is_signed(cache: Path, layout: str) -> None:
    """The realm's 32-byte nonce in the RHI GET_MEASUREMENTS parameters is the Nonce of
    the GET_MEASUREMENTS request the RMM hands out (DSP0274 §10.11: SPDMVersion, 0xE0,
    Param1 bit0 = signature requested, Param2 = 0xFF all blocks, Nonce[32] @4), and the
    device's signature (L1 = VCA || request || response without the signature, 1.2+
    signing prefix "responder-measurements signing") verifies over exactly those bytes.
    The secured record is opened here with `cryptography` alone (DSP0277: AAD = session
    id || length, IV xor the little-endian sequence number, ApplicationDataLength u16)."""
    b = bench(cache, layout=layout)
    keys: list[dict[str, str]] = []
    b.device.spdm.key_sink = keys.append
    sent: list[tuple[int, bytes]] = []
    relay = b.host.transport

    def capture(object_type: int, payload: bytes) -> bytes:
        sent.append((object_type, payload))
        return relay(object_type, payload)
    b.host.transport = capture
    b.host.connect()
    b.host.bind(VDEV)
    nonce = bytes(range(0xA0, 0xC0))
    ev = b.realm.lock(VDEV, nonce=nonce)

    # the request-direction data keys of the session, the newest last
    data = [k for k in keys if k.get("direction") == "request"][-1]
    key, iv = bytes.fromhex(data["key"]), bytes.fromhex(data["iv"])
    aead = AESGCM(key) if data["aead"].startswith("aes") else ChaCha20Poly1305(key)
    requests = []
    for object_type, record in sent:
        if object_type != 2:
            continue
        sid, length = struct.unpack_from("<IH", record)
        if f"{sid:#010x}" != data["session_id"]:
            continue
        for seq in range(64):
            nonce_iv = bytes(a ^ c for a, c in zip(iv, struct.pack("<Q", seq) + bytes(4),
                                                   strict=True))
            try:
                plain = aead.decrypt(nonce_iv, record[6:6 + length], record[:6])
            except InvalidTag:
                continue
            requests.append(plain[2:2 + struct.unpack_from("<H", plain)[0]])
            break
    meas = [r for r in requests if r[1] == 0xE0]
    assert len(meas) == 1, [r[:2].hex() for r in requests]
    req = meas[0]
    assert req[2] & 1 and req[3] == 0xFF
    assert req[4:36] == nonce                     # the realm's nonce, byte for byte

    # the signature over L1, checked with the leaf key of the certificate object
    h = _base_hash(ev.vca)
    leaf = _der_certificates(ev.certificate[4 + h.digest_size:])[-1].public_key()
    assert isinstance(leaf, ec.EllipticCurvePublicKey)
    sig_len = 2 * ((leaf.curve.key_size + 7) // 8)
    rsp = ev.measurements
    assert rsp[1] == 0x60                         # MEASUREMENTS
    version = req[0]
    context = b"responder-measurements signing"
    digest = hashes.Hash(h)
    digest.update(ev.vca + req + rsp[:-sig_len])
    message = (b"dmtf-spdm-v%d.%d.*" % (version >> 4, version & 0xF)) * 4 + \
        bytes(36 - len(context)) + context + digest.finalize()
    sig = rsp[-sig_len:]
    der = encode_dss_signature(int.from_bytes(sig[:sig_len // 2], "big"),
                               int.from_bytes(sig[sig_len // 2:], "big"))
    leaf.verify(der, message, ec.ECDSA(h))
    # and not over another nonce: the same bytes with the nonce changed do not verify
    digest = hashes.Hash(h)
    digest.update(ev.vca + req[:4] + bytes(32) + req[36:] + rsp[:-sig_len])
    forged = message[:-h.digest_size] + digest.finalize()
    with pytest.raises(InvalidSignature):
        leaf.verify(der, forged, ec.ECDSA(h))


def test_measurement_nonce_must_be_32_bytes() -> None:
    """DSP0274 §10.11: the GET_MEASUREMENTS Nonce field is 32 bytes."""
    from vfiouser_tdisp.spdm.requester import SpdmRequester
    req = SpdmRequester(lambda obj: obj, name="t")
    with pytest.raises(ValueError, match="32 bytes"):
        next(req.get_measurements_flow(nonce=bytes(31)))
