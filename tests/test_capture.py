"""Captures and key logs: the pcap file format, the files' modes, the key log's
``dhe_secret`` checked by an independent key derivation, and ``vfiouser-tdisp
dump`` on a capture made by a real served device.

References:
* pcap-savefile(5) / draft-ietf-opsawg-pcap §4-5: global header (magic
  0xA1B2C3D4, version 2.4, thiszone, sigfigs, SnapLen, LinkType) and per record
  (ts_sec, ts_usec, incl_len, orig_len); a record longer than SnapLen is saved
  cut, with incl_len = SnapLen and orig_len = its real length.
* tcpdump.org LINKTYPE registry, DMTF libspdm link_type_ex.h: 291 LINKTYPE_MCTP,
  292 LINKTYPE_PCI_DOE (packets start with DOE data object header 1).
* DMTF spdm-dump spdm_dump_pcap.c: PCAP_PACKET_MAX_SIZE 0x10000; it refuses a
  SnapLen of 0 or above it and stops at a record with incl_len above it.
* DSP0274 1.3 key schedule: HandshakeSecret = HMAC(0^H, DHE secret);
  {req,rsp}-hs = HKDF-Expand(HandshakeSecret, BinConcat(H, "spdm1.3 ", label, TH1));
  key/iv = HKDF-Expand(secret, BinConcat(len, "spdm1.3 ", "key"/"iv")).
* DSP0277 secured message over DOE: SessionID (4) | Length (2) | AEAD(AppDataLength (2)
  | SPDM message | random) | MAC (16), AAD = SessionID | Length, nonce = IV XOR seq.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from vfiouser_tdisp.cli import main
from vfiouser_tdisp.doe.capture import PcapWriter, open_private_file, parse_pcap
from vfiouser_tdisp.doe.driver import DoeDriver
from vfiouser_tdisp.inspect.capture import (
    AEAD_CIPHER_SUITE,
    BASE_ASYM_ALGO,
    BASE_HASH_ALGO,
    DHE_NAMED_GROUP,
    decode_capture,
)
from vfiouser_tdisp.server import RunningDevices, start_devices
from vfiouser_tdisp.spdm import algorithms
from vfiouser_tdisp.spdm.keylog import KeyLogWriter, load_keylog
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.tdisp import messages as t
from vfiouser_tdisp.tsm.core import IdeKmRequester, PciSigChannel, TdispRequester
from vfiouser_tdisp.tsm.platform import assign_bars
from vfiouser_tdisp.vfio_user.client import VfioUserClient

DOE_OFFSET = 0x100


# -- the pcap format ----------------------------------------------------------------------
def test_global_header_bytes() -> None:
    out = io.BytesIO()
    PcapWriter(out)
    assert out.getvalue() == bytes.fromhex(
        "d4c3b2a1"      # magic 0xA1B2C3D4, little-endian, microseconds
        "0200" "0400"   # version 2.4
        "00000000"      # thiszone
        "00000000"      # sigfigs
        "00000100"      # SnapLen 65536 = spdm-dump's PCAP_PACKET_MAX_SIZE
        "24010000")     # LinkType 292 = LINKTYPE_PCI_DOE (291 would be MCTP)


def test_record_header_and_a_one_mib_object() -> None:
    out = io.BytesIO()
    w = PcapWriter(out)
    small = bytes.fromhex("01000100 03000000 11223344")
    w.write(small, timestamp=1_700_000_000.25)
    # A DOE object of 2^18 DW (LENGTH 0 means 2^18, PCIe r6.x §6.30.1): 1 MiB.
    huge = bytes.fromhex("01000100 00000000") + bytes(range(256)) * 4096
    huge = huge[:1 << 20]
    w.write(huge, timestamp=1_700_000_001.0)
    w.write(small, timestamp=1_700_000_002.0)
    data = out.getvalue()
    assert data[24:40] == struct.pack("<IIII", 1_700_000_000, 250_000, 12, 12)
    assert data[40:52] == small
    # Cut at SnapLen: incl_len 65536, orig_len 1048576, then the first 65536 bytes.
    assert data[52:68] == struct.pack("<IIII", 1_700_000_001, 0, 0x10000, 0x100000)
    assert data[68:68 + 0x10000] == huge[:0x10000]
    # The record after it is intact (spdm-dump reads on: incl_len <= 0x10000).
    assert data[68 + 0x10000:68 + 0x10000 + 16] == struct.pack("<IIII", 1_700_000_002, 0, 12, 12)
    f = parse_pcap(data)
    assert (f.linktype, f.snaplen) == (292, 0x10000)
    assert [(len(r.data), r.orig_len, r.truncated) for r in f.records] == \
        [(12, 12, False), (0x10000, 0x100000, True), (12, 12, False)]
    assert all(len(r.data) <= f.snaplen for r in f.records)


def test_a_record_cut_by_the_end_of_the_file_ends_the_list() -> None:
    out = io.BytesIO()
    w = PcapWriter(out)
    w.write(bytes(12), timestamp=1.0)
    w.write(bytes(12), timestamp=2.0)
    assert len(parse_pcap(out.getvalue()[:-5]).records) == 1


# -- file creation ---------------------------------------------------------------------------
def test_capture_and_key_log_are_created_0600_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        PcapWriter.create(tmp_path / "c.pcap").close()
        KeyLogWriter.open(tmp_path / "k.jsonl").close()
    finally:
        os.umask(old)
    assert (tmp_path / "c.pcap").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.jsonl").stat().st_mode & 0o777 == 0o600


def test_existing_files_are_re_moded_appended_or_truncated(tmp_path: Path) -> None:
    keys = tmp_path / "k.jsonl"
    keys.write_text('{"old": 1}\n')
    keys.chmod(0o644)
    w = KeyLogWriter.open(keys)
    w({"new": 2})
    w.close()
    assert keys.stat().st_mode & 0o777 == 0o600
    assert keys.read_text() == '{"old": 1}\n{"new": 2}\n'  # appended
    cap = tmp_path / "c.pcap"
    cap.write_bytes(b"x" * 100)
    cap.chmod(0o666)
    PcapWriter.create(cap).close()
    assert cap.stat().st_mode & 0o777 == 0o600
    assert len(cap.read_bytes()) == 24  # truncated: a fresh global header only


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep")
    target.chmod(0o644)
    for name in ("c.pcap", "k.jsonl"):
        (tmp_path / name).symlink_to(target)
    with pytest.raises(OSError, match="symlink"):
        PcapWriter.create(tmp_path / "c.pcap")
    with pytest.raises(OSError, match="symlink"):
        KeyLogWriter.open(tmp_path / "k.jsonl")
    assert target.read_text() == "keep"
    assert target.stat().st_mode & 0o777 == 0o644  # not chmod-ed through the link


def test_fifo_and_directory_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):  # ENXIO: no reader; never blocks
        open_private_file(fifo, 0o600, append=True)
    os.mkdir(tmp_path / "d")
    with pytest.raises(OSError):
        open_private_file(tmp_path / "d", 0o600, append=False)


def test_serve_rejects_a_symlinked_key_log(sock_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (sock_dir / "keys.jsonl").symlink_to(target)
    with pytest.raises(OSError, match="symlink"):
        start_devices([str(sock_dir / "d.sock")], "dma-test",
                      pcap_keys=str(sock_dir / "keys.jsonl"))


# -- a capture made by a served device ---------------------------------------------------
def drive_full_flow(sock: str, root: object, *, all_keys: bool) -> int:
    with VfioUserClient(sock) as c:
        c.version()
        assign_bars(c.config_read32, c.config_write32)  # TDISP locks only a decoding function
        drv = DoeDriver(c.config_read32, c.config_write32, DOE_OFFSET)
        drv.abort()
        drv.discover()
        req = SpdmRequester(drv.exchange)
        req.authenticate(root)  # type: ignore[arg-type]
        req.get_measurements()
        s = req.start_session(0x01)
        ch = PciSigChannel(req, s)
        ide, td = IdeKmRequester(ch), TdispRequester(ch)
        ide.query()
        ide.program_stream(1)
        fid = t.make_function_id(0, 0)
        td.version(fid)
        nonce = td.lock(fid, default_stream_id=1)
        td.report(fid)
        td.start(fid, nonce)
        td.state(fid)
        td.stop(fid)
        req.heartbeat(s)
        req.key_update(s)
        if all_keys:
            req.key_update(s, all_keys=True)
        req.end_session(s)
        return s.session_id


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    d = Path(f"/tmp/vt-cap-{os.getpid()}")
    d.mkdir(exist_ok=True)
    running: RunningDevices = start_devices(
        [str(d / "d.sock")], "virtio-rng", pcap=str(d / "doe.pcap"),
        pcap_keys=str(d / "keys.jsonl"))
    try:
        sid = drive_full_flow(str(d / "d.sock"), running.devices[0].identity.root,
                              all_keys=True)
    finally:
        running.close()
    out = tmp_path_factory.mktemp("cap")
    for name in ("doe.pcap", "keys.jsonl"):
        shutil.copy2(d / name, out / name)
    shutil.rmtree(d)
    yield out, sid


def test_served_capture_header_and_key_log_lines(captured) -> None:  # type: ignore[no-untyped-def]
    d, sid = captured
    data = (d / "doe.pcap").read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1" and data[16:24] == bytes.fromhex("0000010024010000")
    assert (d / "doe.pcap").stat().st_mode & 0o777 == 0o600
    assert (d / "keys.jsonl").stat().st_mode & 0o777 == 0o600
    lines = [json.loads(x) for x in (d / "keys.jsonl").read_text().splitlines()]
    # One dhe_secret line per session, first; then per-direction key lines.
    assert set(lines[0]) == {"session_id", "dhe_secret"}
    assert lines[0]["session_id"] == f"{sid:#010x}"
    assert len(bytes.fromhex(lines[0]["dhe_secret"])) == 48  # secp384r1 x-coordinate
    assert [x for x in lines if "dhe_secret" in x] == lines[:1]
    for x in lines[1:]:
        assert set(x) == {"session_id", "direction", "aead", "key", "iv"}
        assert x["session_id"] == f"{sid:#010x}" and x["aead"] == "aes-256-gcm"
    # Handshake, data phase, UpdateKey (request), UpdateAllKeys (both).
    assert [x["direction"] for x in lines[1:]] == \
        ["request", "response", "request", "response", "request", "request", "response"]


def _spdm_messages(packets: list[bytes]) -> list[bytes]:
    """SPDM messages of the plain (type 1) objects, cut to their exact length by the
    layouts of DSP0274 1.3 (DOE pads objects to whole dwords)."""
    out = []
    for p in packets:
        if p[2] != 1:
            continue
        msg = p[8:]
        code = msg[1]
        if code == 0x84:                      # GET_VERSION
            n = 4
        elif code == 0x04:                    # VERSION: 6 + 2 * VersionNumberEntryCount
            n = 6 + 2 * msg[5]
        elif code in (0xE1, 0x61):            # GET_CAPABILITIES / CAPABILITIES at 1.2+
            n = 20
        elif code in (0xE3, 0x63):            # NEGOTIATE_ALGORITHMS / ALGORITHMS: Length
            n = int.from_bytes(msg[4:6], "little")
        elif code == 0x82:                    # GET_CERTIFICATE (1.3, no extra fields)
            n = 8
        elif code == 0x02:                    # CERTIFICATE: 8 + PortionLength
            n = 8 + int.from_bytes(msg[4:6], "little")
        else:
            n = len(msg)
        out.append(msg[:n])
    return out


def _bin_concat(length: int, label: bytes, context: bytes = b"") -> bytes:
    return struct.pack("<H", length) + b"spdm1.3 " + label + context


def _expand(secret: bytes, length: int, label: bytes, context: bytes = b"") -> bytes:
    return HKDFExpand(hashes.SHA384(), length, _bin_concat(length, label, context)).derive(secret)


def test_dhe_secret_opens_the_session_by_an_independent_derivation(captured) -> None:  # type: ignore[no-untyped-def]
    """What spdm-dump does with --dhe_secret, done here with the capture bytes, the
    key log's dhe_secret and cryptography's HKDF/AES-GCM only (no project code)."""
    d, sid = captured
    packets = [r.data for r in parse_pcap((d / "doe.pcap").read_bytes()).records]
    keylog = load_keylog((d / "keys.jsonl").read_text())
    dhe = bytes.fromhex(keylog[0]["dhe_secret"])
    msgs = _spdm_messages(packets)
    codes = [x[1] for x in msgs]
    vca = b"".join(msgs[:6])
    assert [x[1] for x in msgs[:6]] == [0x84, 0x04, 0xE1, 0x61, 0xE3, 0x63]
    # ALGORITHMS selected SHA-384 / ECDSA P-384 / secp384r1 / AES-256-GCM (profile default).
    algs = msgs[5]
    assert int.from_bytes(algs[12:16], "little") == 1 << 7   # BaseAsymSel P-384
    assert int.from_bytes(algs[16:20], "little") == 1 << 1   # BaseHashSel SHA-384
    H, S, D = 48, 96, 96
    chain = b"".join(x[8:] for x in msgs if x[1] == 0x02)
    assert int.from_bytes(chain[:2], "little") == len(chain)
    ke = msgs[codes.index(0xE4)]
    ke = ke[:40 + D + 2 + int.from_bytes(ke[40 + D:42 + D], "little")]
    ke_rsp = msgs[codes.index(0x64)]
    ms = H if ke[2] else 0                   # MeasurementSummaryHash: KEY_EXCHANGE Param1
    opaque_at = 40 + D + ms
    opaque_len = int.from_bytes(ke_rsp[opaque_at:opaque_at + 2], "little")
    signed_end = opaque_at + 2 + opaque_len + S
    th1 = hashlib.sha384(vca + hashlib.sha384(chain).digest() + ke + ke_rsp[:signed_end]).digest()
    assert int.from_bytes(ke[4:6], "little") | int.from_bytes(ke_rsp[4:6], "little") << 16 == sid
    handshake_secret = hmac.new(bytes(H), dhe, "sha384").digest()
    req_hs = _expand(handshake_secret, H, b"req hs data", th1)
    key, iv = _expand(req_hs, 32, b"key"), _expand(req_hs, 12, b"iv")
    # The key log's handshake request key is the same derivation.
    assert (keylog[1]["key"], keylog[1]["iv"]) == (key.hex(), iv.hex())
    # And it opens the first secured record: FINISH (0xE5) at SPDM 1.3, sequence 0.
    record = next(p for p in packets if p[2] == 2)[8:]
    length = int.from_bytes(record[4:6], "little")
    assert int.from_bytes(record[:4], "little") == sid
    plain = AESGCM(key).decrypt(iv, record[6:6 + length], record[:6])
    size = int.from_bytes(plain[:2], "little")
    assert plain[2:4] == b"\x13\xe5" and size == 4 + H  # FINISH + RequesterVerifyData


# Expected names from the specifications (DSP0274 request/response codes; PCIe
# §6.33 IDE_KM objects; PCIe §11.3 TDISP message types).
PLAIN = [
    ("request", "DOE Discovery", "DISCOVERY request"), ("response", "DOE Discovery",
                                                      "DISCOVERY response"),
] * 3 + [
    ("request", "SPDM", "GET_VERSION"), ("response", "SPDM", "VERSION"),
    ("request", "SPDM", "GET_CAPABILITIES"), ("response", "SPDM", "CAPABILITIES"),
    ("request", "SPDM", "NEGOTIATE_ALGORITHMS"), ("response", "SPDM", "ALGORITHMS"),
    ("request", "SPDM", "GET_DIGESTS"), ("response", "SPDM", "DIGESTS"),
    # the requester asks for the whole chain at once (Offset 0, Length 0xFFFF): it fits
    # in one CERTIFICATE within the negotiated transfer size (DSP0274 GET_CERTIFICATE)
    ("request", "SPDM", "GET_CERTIFICATE"), ("response", "SPDM", "CERTIFICATE"),
    ("request", "SPDM", "CHALLENGE"), ("response", "SPDM", "CHALLENGE_AUTH"),
    ("request", "SPDM", "GET_MEASUREMENTS"), ("response", "SPDM", "MEASUREMENTS"),
    ("request", "SPDM", "KEY_EXCHANGE"), ("response", "SPDM", "KEY_EXCHANGE_RSP"),
]
IDE_KM = [("KEY_PROG", "KP_ACK")] * 6 + [("K_SET_GO", "K_GOSTOP_ACK")] * 6
TDISP = [("GET_TDISP_VERSION", "TDISP_VERSION"),
         ("LOCK_INTERFACE_REQUEST", "LOCK_INTERFACE_RESPONSE"),
         ("GET_DEVICE_INTERFACE_REPORT", "DEVICE_INTERFACE_REPORT"),
         ("START_INTERFACE_REQUEST", "START_INTERFACE_RESPONSE"),
         ("GET_DEVICE_INTERFACE_STATE", "DEVICE_INTERFACE_STATE"),
         ("STOP_INTERFACE_REQUEST", "STOP_INTERFACE_RESPONSE")]
SECURED = [("FINISH", None), ("FINISH_RSP", None),
           ("VENDOR_DEFINED_REQUEST", "QUERY"), ("VENDOR_DEFINED_RESPONSE", "QUERY_RESP")]
for _req, _rsp in IDE_KM + TDISP:
    SECURED += [("VENDOR_DEFINED_REQUEST", _req), ("VENDOR_DEFINED_RESPONSE", _rsp)]
SECURED += [("HEARTBEAT", None), ("HEARTBEAT_ACK", None),
            ("KEY_UPDATE", "UpdateKey"), ("KEY_UPDATE_ACK", "UpdateKey"),
            ("KEY_UPDATE", "VerifyNewKey"), ("KEY_UPDATE_ACK", "VerifyNewKey"),
            ("KEY_UPDATE", "UpdateAllKeys"), ("KEY_UPDATE_ACK", "UpdateAllKeys"),
            ("KEY_UPDATE", "VerifyNewKey"), ("KEY_UPDATE_ACK", "VerifyNewKey"),
            ("END_SESSION", None), ("END_SESSION_ACK", None)]


def test_dump_names_every_object_of_a_served_flow(captured) -> None:  # type: ignore[no-untyped-def]
    d, sid = captured
    capture = parse_pcap((d / "doe.pcap").read_bytes())
    decoded = decode_capture(capture, load_keylog((d / "keys.jsonl").read_text()))
    plain = [x for x in decoded if x.protocol != "Secured SPDM"]
    assert [(x.direction, x.protocol, x.name) for x in plain] == PLAIN
    secured = [x for x in decoded if x.protocol == "Secured SPDM"]
    got = [(x.name, x.fields.get("message", x.fields.get("operation"))) for x in secured]
    assert got == SECURED
    directions = [x.direction for x in secured]
    assert directions == ["request", "response"] * (len(secured) // 2)
    assert {x.session_id for x in secured} == {sid}
    # DSP0274: GET_VERSION / VERSION are always SPDMVersion 1.0, the rest the negotiated 1.3.
    assert [x.version for x in plain[6:8]] == ["1.0", "1.0"]
    assert all(x.version == "1.3" for x in decoded[8:])
    assert not [x.note for x in decoded if x.note]
    by_name = {x.name: x for x in plain}
    assert by_name["VERSION"].fields["versions"] == ["1.0", "1.1", "1.2", "1.3"]
    neg = by_name["NEGOTIATE_ALGORITHMS"].fields
    assert neg["base_hash_algo"] == ["TPM_ALG_SHA_256", "TPM_ALG_SHA_384", "TPM_ALG_SHA_512"]
    assert neg["base_asym_algo"] == ["TPM_ALG_RSASSA_3072", "TPM_ALG_ECDSA_ECC_NIST_P256",
                                     "TPM_ALG_ECDSA_ECC_NIST_P384"]
    assert neg["dhe"] == ["secp256r1", "secp384r1"]
    assert neg["aead"] == ["AES-128-GCM", "AES-256-GCM", "CHACHA20_POLY1305"]
    assert neg["key_schedule"] == ["SPDM Key Schedule"]
    sel = by_name["ALGORITHMS"].fields
    assert (sel["base_hash_sel"], sel["base_asym_sel"], sel["dhe"], sel["aead"]) == \
        (["TPM_ALG_SHA_384"], ["TPM_ALG_ECDSA_ECC_NIST_P384"], ["secp384r1"], ["AES-256-GCM"])
    assert "CHUNK_CAP" in by_name["CAPABILITIES"].fields["flags"]
    assert by_name["KEY_EXCHANGE_RSP"].fields["session_id"] == f"{sid:#010x}"
    state = next(x for x in secured if x.fields.get("message") == "DEVICE_INTERFACE_STATE")
    assert state.fields["tdi_state"] == "RUN"
    kp = next(x for x in secured if x.fields.get("message") == "KP_ACK")
    assert (kp.fields["protocol"], kp.fields["status"], kp.fields["stream_id"]) == \
        ("IDE_KM", "SUCCESS", 1)


def test_dump_without_keys_keeps_records_closed_and_alternates(captured) -> None:  # type: ignore[no-untyped-def]
    d, sid = captured
    decoded = decode_capture(parse_pcap((d / "doe.pcap").read_bytes()))
    secured = [x for x in decoded if x.protocol == "Secured SPDM"]
    assert {x.name for x in secured} == {"(encrypted)"}
    assert all(x.note == "not opened: no key" and x.session_id == sid for x in secured)
    # DOE: one response per request, so the closed records still alternate.
    assert [x.direction for x in secured] == ["request", "response"] * (len(secured) // 2)


def test_dump_command(captured, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d, sid = captured
    assert main(["dump", str(d / "doe.pcap"), "--keys", str(d / "keys.jsonl")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{d / 'doe.pcap'}: LINKTYPE_PCI_DOE (292), SnapLen 65536")
    assert any(" REQ->RSP SPDM SPDM 1.0 GET_VERSION" in x for x in out)
    assert any(f"RSP->REQ Secured SPDM({sid:#010x}) SPDM 1.3 VENDOR_DEFINED_RESPONSE "
               "protocol=TDISP message=DEVICE_INTERFACE_STATE" in x for x in out)
    # FINISH, QUERY, 12 IDE_KM, 6 TDISP, HEARTBEAT, 4 KEY_UPDATE, END_SESSION: 26 pairs.
    assert out[-1] == f"session {sid:#010x}: 26 requests, 26 responses, 0 of unknown " \
        "direction; 52 opened"
    assert main(["dump", str(d / "doe.pcap"), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[6]["name"] == "GET_VERSION" and rows[6]["direction"] == "request"
    keylog = load_keylog((d / "keys.jsonl").read_text())
    assert main(["dump", str(d / "doe.pcap"), "--keys", str(d / "keys.jsonl"),
                 "--spdm-dump"]) == 0
    assert capsys.readouterr().out.split() == [
        "spdm_dump", "-r", str(d / "doe.pcap"), "--dhe_secret", keylog[0]["dhe_secret"]]
    # A key log appended to by an earlier run: only this capture's session, in order.
    old = tmp_path / "keys.jsonl"
    old.write_text(json.dumps({"session_id": "0x12345678", "dhe_secret": "ab" * 48}) + "\n" +
                   (d / "keys.jsonl").read_text())
    assert main(["dump", str(d / "doe.pcap"), "--keys", str(old), "--spdm-dump"]) == 0
    assert capsys.readouterr().out.split()[3:] == ["--dhe_secret", keylog[0]["dhe_secret"]]
    # Without the session's secret spdm_dump cannot open it: say so.
    old.write_text(json.dumps({"session_id": "0x12345678", "dhe_secret": "ab" * 48}) + "\n")
    assert main(["dump", str(d / "doe.pcap"), "--keys", str(old), "--spdm-dump"]) == 1
    assert f"no dhe_secret for session(s) {sid:#010x}" in capsys.readouterr().err


def test_dump_refuses_other_link_types_and_garbage(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    mctp = tmp_path / "mctp.pcap"
    mctp.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0x10000, 291))
    assert main(["dump", str(mctp)]) == 2
    assert "link type 291 (LINKTYPE_MCTP), expected 292" in capsys.readouterr().err
    (tmp_path / "junk").write_bytes(b"not a pcap file at all....")
    assert main(["dump", str(tmp_path / "junk")]) == 2
    assert main(["dump", str(tmp_path / "missing")]) == 2


def test_dump_survives_malformed_objects(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    w = PcapWriter(out)
    w.write(bytes.fromhex("0100"))                                # shorter than a header
    w.write(bytes.fromhex("01000100 03000000 12e3ffff"))          # truncated NEGOTIATE_ALGORITHMS
    w.write(bytes.fromhex("01000200 03000000 01000000"))          # record shorter than 6
    w.write(bytes.fromhex("01000100 02000000"))                   # SPDM without a header
    w.write(bytes.fromhex("01000100 04000000 137f0600 00000000"))  # ERROR, code 0x06
    decoded = decode_capture(parse_pcap(out.getvalue()))
    assert len(decoded) == 5
    assert "malformed" in decoded[0].note and "malformed" in decoded[1].note
    assert decoded[4].name == "ERROR" and decoded[4].fields["error_code"] == "DecryptError"


def test_algorithm_name_tables_agree_with_the_implemented_bits() -> None:
    # The decoder names every bit the device can select (DSP0274 tables).
    expected = {"sha256": "TPM_ALG_SHA_256", "sha384": "TPM_ALG_SHA_384",
                "sha512": "TPM_ALG_SHA_512"}
    for name, algo in algorithms.HASHES.items():
        assert BASE_HASH_ALGO[algo.bit.bit_length() - 1] == expected[name]
    expected = {"rsassa-2048": "TPM_ALG_RSASSA_2048", "rsassa-3072": "TPM_ALG_RSASSA_3072",
                "rsassa-4096": "TPM_ALG_RSASSA_4096", "ecdsa-p256": "TPM_ALG_ECDSA_ECC_NIST_P256",
                "ecdsa-p384": "TPM_ALG_ECDSA_ECC_NIST_P384",
                "ecdsa-p521": "TPM_ALG_ECDSA_ECC_NIST_P521"}
    for name, asym in algorithms.ASYMS.items():
        assert BASE_ASYM_ALGO[asym.bit.bit_length() - 1] == expected[name]
    for name, dhe in algorithms.DHES.items():
        assert DHE_NAMED_GROUP[dhe.bit.bit_length() - 1] == name
    for name, aead in algorithms.AEADS.items():
        assert AEAD_CIPHER_SUITE[aead.bit.bit_length() - 1].lower().replace("_", "-") == name


# -- DMTF spdm-dump, when the developer has built it -----------------------------------------
@pytest.mark.skipif(not os.environ.get("SPDM_DUMP"),
                    reason="set SPDM_DUMP to a built DMTF spdm_dump to run it on a capture")
def test_dmtf_spdm_dump_opens_every_record(sock_dir: Path) -> None:
    running = start_devices([str(sock_dir / "d.sock")], "virtio-rng",
                            pcap=str(sock_dir / "doe.pcap"),
                            pcap_keys=str(sock_dir / "keys.jsonl"))
    try:
        drive_full_flow(str(sock_dir / "d.sock"), running.devices[0].identity.root,
                        all_keys=False)
    finally:
        running.close()
    keylog = load_keylog((sock_dir / "keys.jsonl").read_text())
    done = subprocess.run(
        [os.environ["SPDM_DUMP"], "-r", str(sock_dir / "doe.pcap"), "--dhe_secret",
         keylog[0]["dhe_secret"]], capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert "DataLink - 292 (PCI_DOE), MaxPacketSize - 65536" in out
    assert "(?)->(?)" not in out
    assert "RSP->REQ SecuredSPDM" in out and "SPDM_END_SESSION_ACK" in out


def test_dump_reassembles_chunked_messages_of_a_served_flow(sock_dir: Path) -> None:
    """A requester with DataTransferSize 64 makes the device chunk its large responses
    (DSP0274 1.2+: ERROR LargeResponse, then CHUNK_GET / CHUNK_RESPONSE until LastChunk);
    the dump names the reassembled message on the last chunk's line."""
    running = start_devices([str(sock_dir / "d.sock")], "virtio-rng",
                            pcap=str(sock_dir / "c.pcap"), pcap_keys=str(sock_dir / "k.jsonl"))
    try:
        with VfioUserClient(str(sock_dir / "d.sock")) as c:
            c.version()
            drv = DoeDriver(c.config_read32, c.config_write32, DOE_OFFSET)
            req = SpdmRequester(drv.exchange, data_transfer_size=64)
            req.authenticate(running.devices[0].identity.root)
            req.get_measurements()
            s = req.start_session()
            req.get_measurements(session=s)
            req.end_session(s)
    finally:
        running.close()
    decoded = decode_capture(parse_pcap((sock_dir / "c.pcap").read_bytes()),
                             load_keylog((sock_dir / "k.jsonl").read_text()))
    assert not [x.note for x in decoded if x.note]
    large = [(x.protocol, x.fields["large_response"]) for x in decoded
             if "large_response" in x.fields]
    for item in [("SPDM", "CHALLENGE_AUTH"), ("SPDM", "MEASUREMENTS"),
                 ("SPDM", "KEY_EXCHANGE_RSP"), ("Secured SPDM", "MEASUREMENTS")]:
        assert item in large
    # Every LargeResponse error is followed by CHUNK_GET/CHUNK_RESPONSE pairs whose
    # sequence numbers count up from 0 to the LastChunk, which carries the message.
    for i, x in enumerate(decoded):
        if x.name == "ERROR" and x.fields["error_code"] == "LargeResponse":
            seq, j = 0, i + 1
            while True:
                get, rsp = decoded[j], decoded[j + 1]
                assert (get.name, get.direction, rsp.name, rsp.direction) == \
                    ("CHUNK_GET", "request", "CHUNK_RESPONSE", "response")
                assert get.fields["chunk_seq_no"] == rsp.fields["chunk_seq_no"] == seq
                if rsp.fields["last"]:
                    assert "large_response" in rsp.fields
                    break
                seq, j = seq + 1, j + 2
    meas = next(x for x in decoded if x.fields.get("large_response") == "MEASUREMENTS")
    assert meas.fields["indices"] == [1, 2, 3, 4] and meas.fields["signed"] is True


def test_dump_reassembles_chunk_send_by_hand() -> None:
    # DSP0274 1.3 CHUNK_SEND: SPDMVersion, 0x85, Param1 bit0 LastChunk, Param2 Handle,
    # ChunkSeqNo (2), Reserved (2), ChunkSize (4), LargeMessageSize (4, seq 0 only),
    # SPDMchunk.  CHUNK_SEND_ACK: SPDMVersion, 0x05, Param1, Param2 Handle, ChunkSeqNo (2),
    # ResponseToLargeRequest.  Here a GET_VERSION split in two, answered by VERSION 1.3.
    out = io.BytesIO()
    w = PcapWriter(out)
    for spdm in ("13850007 0000 0000 02000000 04000000 1084",
                 "13850107 0100 0000 02000000 0000",
                 "13050007 0100 10040000 00010013"):
        body = bytes.fromhex(spdm.replace(" ", ""))
        body += bytes(-len(body) % 4)
        w.write(struct.pack("<HBBI", 1, 1, 0, 2 + len(body) // 4) + body)
    decoded = decode_capture(parse_pcap(out.getvalue()))
    assert [x.name for x in decoded] == ["CHUNK_SEND", "CHUNK_SEND", "CHUNK_SEND_ACK"]
    assert decoded[0].fields["large_message_size"] == 4
    assert decoded[1].fields["large_request"] == "GET_VERSION"
    assert decoded[2].fields["large_response"] == "VERSION"
    assert decoded[2].fields["versions"] == ["1.3"]


def test_dump_never_raises_on_random_objects() -> None:
    """Bad input: any object gets a line (malformed ones a note); decoding goes on."""
    import random

    rnd = random.Random(292)
    out = io.BytesIO()
    w = PcapWriter(out)
    codes = [0x84, 0x04, 0xE1, 0x61, 0xE3, 0x63, 0x82, 0x02, 0xE0, 0x60, 0xE4, 0x64, 0xE9,
             0x69, 0x7F, 0x85, 0x05, 0x86, 0x06, 0xFE, 0x7E, 0x01, 0x81, 0x03]
    for _ in range(3000):
        kind = rnd.choice((0, 1, 1, 1, 2, 7))
        body = bytes([rnd.choice((0x10, 0x11, 0x12, 0x13)), rnd.choice(codes)]) + \
            rnd.randbytes(rnd.randrange(0, 80))
        if rnd.random() < 0.3 and body[1] in (0xFE, 0x7E):  # PCI-SIG vendor header
            body = body[:4] + b"\x03\x00\x02\x01\x00" + struct.pack("<H", 40) + \
                rnd.choice((b"\x00", b"\x01")) + rnd.randbytes(40)
        body += bytes(-len(body) % 4)
        length = 2 + len(body) // 4 + rnd.choice((0, 0, 0, 1, -1))
        w.write(struct.pack("<HBBI", 1, kind, 0, length) + body)
    w.write(rnd.randbytes(5))
    decoded = decode_capture(parse_pcap(out.getvalue()))
    assert len(decoded) == 3001
    assert all(x.render() for x in decoded)
    assert any("malformed" in x.note for x in decoded)
    assert json.dumps([x.to_json() for x in decoded])
