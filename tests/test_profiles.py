"""Device profiles as TOML files: the built-ins are such files, a bad file is one
line naming the key, a field added to the dataclass is loadable with no loader
code, and examples/counter (a personality written outside the package) is served
over a real vfio-user socket with the IDs, BARs, MSI-X, IDE streams, SPDM
algorithms, measurements and TDISP report encoding its profile declares."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest

from tests.test_tdisp_e2e import program_bars
from vfiouser_tdisp.device.device import (
    PROFILE_SECTIONS,
    PROFILES,
    Device,
    DeviceProfile,
    get_profile,
    load_profile_file,
)
from vfiouser_tdisp.device.profile import ProfileError, from_table, toml_keys
from vfiouser_tdisp.doe.emu_socket import SpdmEmuClient
from vfiouser_tdisp.run.qemu import guest_append
from vfiouser_tdisp.spdm.requester import SpdmRequester
from vfiouser_tdisp.tdisp import messages as t
from vfiouser_tdisp.tdisp.report import FirstPageEncoding
from vfiouser_tdisp.tsm.core import PciSigChannel, TdispRequester, parse_report
from vfiouser_tdisp.vfio_user.client import VfioUserClient
from vfiouser_tdisp.vfio_user.messages import (
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter" / "counter.toml"
BUILTIN_DIR = ROOT / "vfiouser_tdisp" / "device" / "profiles"


def write(tmp_path: Path, text: str, name: str = "dev.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the built-in profiles ---------------------------------------------------------------

def test_builtin_profiles_are_the_shipped_toml_files() -> None:
    assert sorted(PROFILES) == sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")) == [
        "dma-test", "virtio-rng", "virtio-rng-2fn"]
    two = PROFILES["virtio-rng-2fn"]
    assert (two.personality, two.functions) == ("virtio-rng", 2)
    # loading a built-in file by path goes through the same code and gives the same profile
    assert load_profile_file(BUILTIN_DIR / "virtio-rng-2fn.toml") == two
    assert get_profile(str(BUILTIN_DIR / "dma-test.toml")) == PROFILES["dma-test"]
    # unset keys keep the dataclass defaults
    assert PROFILES["virtio-rng"] == DeviceProfile(
        "virtio-rng", "virtio-rng",
        description="modern virtio-pci entropy device (virtio_rng binds in the guest)")


def test_unknown_profile_name_lists_the_built_ins() -> None:
    with pytest.raises(KeyError, match=r"unknown profile 'nope'; known: dma-test, "
                                       r"virtio-rng, virtio-rng-2fn \(or a path"):
        get_profile("nope")


# -- bad files: one line naming the key ----------------------------------------------------

BAD = [
    ("", "dev.toml: missing required key 'personality'"),
    ('personality = "virtio-rng"\n[spdm]\nhash = ["sha999"]\n',
     "dev.toml: spdm.hash: unknown hash algorithm 'sha999'; known: sha256, sha384, sha512"),
    ('personality = "virtio-rng"\n[spdm]\nhash = "sha256"\n',
     "dev.toml: spdm.hash: expected an array of strings, got 'sha256' (a string)"),
    ('personality = "virtio-rng"\n[spdm]\nhahs = ["sha256"]\n',
     "dev.toml: spdm.hahs: unknown key (did you mean 'hash'?)"),
    ('personality = "virtio-rng"\nspdm_hash = ["sha256"]\n[spdm]\nhash = ["sha384"]\n',
     "dev.toml: spdm.hash: given twice (also as spdm_hash)"),
    ('personality = "virtio-rng"\n[spdm]\nversions = ["1.4"]\n',
     "dev.toml: spdm.versions: unsupported SPDM version '1.4'; known: 1.0, 1.1, 1.2, 1.3"),
    ('personality = "virtio-rng"\nvendor_id = "0x1af4"\n',
     "dev.toml: vendor_id: expected an integer, got '0x1af4' (a string)"),
    ('personality = "virtio-rng"\nvendor_id = 0xffff\n',
     "dev.toml: vendor_id: 0xffff is outside 0x0..0xfffe"),
    ('personality = "virtio-rng"\nfunctions = 9\n',
     "dev.toml: functions: 9 is outside 1..8"),
    ('personality = "virtio-rng"\n[ide]\nselective_streams = true\n',
     "dev.toml: ide.selective_streams: expected an integer, got True (a boolean)"),
    ('personality = "virtio-rng"\n[tdisp]\nfirst_page = "pages"\n',
     "dev.toml: tdisp.first_page: unknown encoding 'pages'; known: page-number, "
     "byte-address"),
    ('personality = "rng"\n',
     "dev.toml: personality: unknown personality 'rng'; known: dma-test, virtio-rng"),
    ('personality = "virtio-rng"\npersonality_file = "missing.py"\n',
     "dev.toml: personality_file: no Python file '{dir}/missing.py'"),
    ('personality = "virtio-rng"\n[[bars]]\nindex = 1\nsize = 0x3000\n',
     "dev.toml: bars[0].size: 0x3000 is not a power of two"),
    ('personality = "virtio-rng"\n[[bars]]\nindex = 1\nsize = 0x1000\nkind = "mem128"\n',
     "dev.toml: bars[0].kind: unknown BAR kind 'mem128'; known: mem32, mem64, io"),
    ('personality = "virtio-rng"\n[[bars]]\nindex = 0\nsize = 0x1000\n',
     "dev.toml: bars[0]: BAR0 already declared (personality virtio-rng has BAR0, BAR2, "
     "BAR4)"),
    ('personality = "virtio-rng"\n[[bars]]\nindex = 1\nsize = 0x1000\n[msix]\nvectors = 2\n'
     'bar = 1\n',
     "dev.toml: msix: personality virtio-rng declares its own MSI-X"),
    ('personality = "dma-test"\n[msix]\nvectors = 2\nbar = 3\n',
     "dev.toml: msix: BAR3 is not among the profile's bars"),
    ('personality = "dma-test"\n[[bars]]\nindex = 1\nsize = 0x100\n[msix]\nvectors = 0\n'
     'bar = 1\n',
     "dev.toml: msix.vectors: MSI-X has 1..2048 vectors (Table Size is 11 bits)"),
    ('personality = "virtio-rng"\n[[measurements]]\nindex = 2\nvalue = "x"\n',
     "dev.toml: measurements[0].index: profile measurements use indices 5..0xef"),
    ('personality = "virtio-rng"\n[[measurements]]\nindex = 5\nvalue_hex = "xyz"\n',
     "dev.toml: measurements[0].value_hex: not hexadecimal"),
    ('personality = "virtio-rng"\n[[measurements]]\nindex = 5\nvalue = "a"\n'
     '[[measurements]]\nindex = 5\nvalue = "b"\n',
     "dev.toml: measurements: index 5 given twice"),
    ('personality = "virtio-rng"\n[[measurements]]\nindex = 5\nvalue = "a"\nsize = 3\n',
     "dev.toml: measurements[0].size: unknown key"),
    ("personality = \n",
     "dev.toml: not valid TOML: Invalid value (at line 1, column 15)"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_profile_file_is_one_line_naming_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text)
    with pytest.raises(ProfileError) as exc:
        load_profile_file("dev.toml")
    assert str(exc.value) == message.format(dir=tmp_path.resolve())
    assert "\n" not in str(exc.value)


def test_the_command_line_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, 'personality = "virtio-rng"\n[spdm]\naead = ["aes-512"]\n')
    r = subprocess.run([sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket",
                        str(tmp_path / "s.sock"), "--profile", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        f"vfiouser-tdisp serve: error: argument --profile: {bad}: spdm.aead: unknown AEAD "
        "'aes-512'; known: aes-128-gcm, aes-256-gcm, chacha20-poly1305")
    assert not (tmp_path / "s.sock").exists()


def test_a_new_profile_field_is_loadable_without_loader_code() -> None:
    @dataclasses.dataclass
    class Extended(DeviceProfile):   # what another change adds to DeviceProfile
        spdm_heartbeat_period: int = 0
        spdm_handshake_in_the_clear: bool = False
        spdm_mode: Literal["strict", "lenient"] = "strict"
        tdisp_encoding: FirstPageEncoding = FirstPageEncoding.PAGE_NUMBER

    got = from_table(Extended, {"name": "x", "personality": "virtio-rng",
                                "spdm": {"heartbeat_period": 5,
                                         "handshake_in_the_clear": True, "mode": "lenient"},
                                "tdisp": {"encoding": "byte-address"}})
    assert (got.spdm_heartbeat_period, got.spdm_handshake_in_the_clear) == (5, True)
    assert (got.spdm_mode, got.tdisp_encoding) == ("lenient", FirstPageEncoding.BYTE_ADDRESS)
    with pytest.raises(ProfileError, match=r"^spdm.mode: expected one of 'strict', "
                                           r"'lenient', got 'loose' \(a string\)$"):
        from_table(Extended, {"personality": "virtio-rng", "name": "x",
                              "spdm": {"mode": "loose"}})
    with pytest.raises(ProfileError, match=r"^tdisp.encoding: expected one of "
                                           r"'page-number', 'byte-address', got 3"):
        from_table(Extended, {"personality": "virtio-rng", "name": "x",
                              "tdisp": {"encoding": 3}})
    with pytest.raises(ProfileError, match=r"^spdm.heartbeat_period: expected an integer, "
                                           r"got '5' \(a string\)$"):
        from_table(Extended, {"personality": "virtio-rng", "name": "x",
                              "spdm": {"heartbeat_period": "5"}})


def test_docs_list_every_key_the_loader_accepts() -> None:
    doc = (ROOT / "docs" / "profiles.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.\[\]]+)` \|", doc, re.M))
    keys = set(toml_keys(DeviceProfile, sections=PROFILE_SECTIONS))
    assert "spdm.hash" in keys and "bars[].size" in keys and "msix.vectors" in keys
    assert sorted(keys - documented) == []
    assert sorted(documented - keys) == []


def test_guest_command_line_carries_the_profile_ids() -> None:
    line = guest_append(str(EXAMPLE))
    assert " vtdisp.vendor=0x1b36 vtdisp.device=0x10f1 vtdisp.functions=1 " in line
    assert line.endswith(" vtdisp.checks=device,ids,tee_io,doe_features,ide_cap")


# -- examples/counter served over a real socket -------------------------------------------

def find_cap(c: VfioUserClient, cap_id: int) -> int:
    pos = c.config_read32(0x34) & 0xFC
    while pos:
        header = c.config_read32(pos)
        if header & 0xFF == cap_id:
            return pos
        pos = (header >> 8) & 0xFC
    raise AssertionError(f"capability {cap_id:#x} not found")


def find_ext_cap(c: VfioUserClient, cap_id: int) -> int:
    pos = 0x100
    while pos:
        header = c.config_read32(pos)
        if header & 0xFFFF == cap_id:
            return pos
        pos = header >> 20
    raise AssertionError(f"extended capability {cap_id:#x} not found")


def size_bar(c: VfioUserClient, index: int) -> int:
    reg = 0x10 + 4 * index
    old = c.config_read32(reg)
    c.config_write32(reg, 0xFFFF_FFFF)
    value = c.config_read32(reg)
    c.config_write32(reg, old)
    return value


def measurement_record(record: bytes) -> dict[int, tuple[int, bytes]]:
    """DSP0274 measurement blocks (Index, MeasurementSpecification, MeasurementSize,
    Measurement), each a DMTF measurement (Type, ValueSize, Value), parsed here."""
    out = {}
    while record:
        index, spec, size = struct.unpack_from("<BBH", record)
        assert spec == 1  # DMTF
        vtype, vsize = struct.unpack_from("<BH", record, 4)
        out[index] = (vtype, record[7:7 + vsize])
        record = record[4 + size:]
    return out


@pytest.mark.parametrize("encoding", ["page-number", "byte-address"])
def test_example_personality_served_over_a_real_socket(sock_dir: Path, tmp_path: Path,
                                                       encoding: str) -> None:
    profile = EXAMPLE.relative_to(ROOT)  # as shipped (page-number), relative to the cwd
    if encoding != "page-number":        # a copy with the other report encoding
        profile = tmp_path / "counter.toml"
        text = EXAMPLE.read_text().replace('first_page = "page-number"',
                                           f'first_page = "{encoding}"')
        profile.write_text(text.replace('personality_file = "counter.py"',
                                        f'personality_file = "{EXAMPLE.parent}/counter.py"'))
    sock, events = sock_dir / "counter.sock", tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfiouser_tdisp", "serve", "--socket", str(sock), "--profile",
         str(profile), "--spdm-port", "0", "--events", str(events), "-q"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "server not ready"
            for line in (events.read_text().splitlines() if events.exists() else []):
                e = json.loads(line)
                if e["event"] == "server.ready":
                    port = e["spdm_ports"][0]
            time.sleep(0.05)
        c = VfioUserClient(str(sock))
        spdm_client = SpdmEmuClient("127.0.0.1", port)
        try:
            c.version()
            # PCI header (PCI Local Bus 3.0 §6.2.1): the profile's IDs, not the class's
            assert c.config_read32(0x00) == 0x10F1_1B36
            assert c.config_read32(0x08) == 0xFF00_0002          # class 0xff0000, rev 2
            assert c.config_read32(0x2C) == 0x0001_1B36          # subsystem
            # BAR sizing (PCI 3.0 §6.2.5.1): BAR0 4K (the personality's), BAR2 4K,
            # BAR4 64-bit prefetchable 64K (the profile's)
            assert size_bar(c, 0) == 0xFFFF_F000
            assert size_bar(c, 1) == 0
            assert size_bar(c, 2) == 0xFFFF_F000
            assert size_bar(c, 4) == 0xFFFF_000C
            assert size_bar(c, 5) == 0xFFFF_FFFF
            # MSI-X (PCIe r6.2 §7.7.2): Table Size N-1 = 3, table and PBA in BAR2 at 0 / 0x40
            msix = find_cap(c, 0x11)
            assert (c.config_read32(msix) >> 16) & 0x7FF == 3
            assert c.config_read32(msix + 4) == 0x0000_0002
            assert c.config_read32(msix + 8) == 0x0000_0040 | 2
            # IDE (PCIe r6.2 §7.9.26.2): Number of Selective IDE Streams Supported = 4 - 1
            ide = find_ext_cap(c, 0x30)
            assert (c.config_read32(ide + 4) >> 16) & 0xFF == 3
            # the personality's registers (examples/counter/counter.py)
            assert c.region_read(0, 0x00, 4) == struct.pack("<I", 0x5654_5450)  # extra.magic
            c.region_write(0, 0x04, struct.pack("<I", 0xA5A5_0001))
            assert c.region_read(0, 0x04, 4) == struct.pack("<I", 0xA5A5_0001)
            efd = os.eventfd(0, os.EFD_NONBLOCK)
            try:
                c.set_irqs(2, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1, 1,
                           fds=[efd])
                c.region_write(0, 0x0C, struct.pack("<I", 1))  # doorbell: vector 1
                assert os.eventfd_read(efd) == 1
            finally:
                os.close(efd)
            assert c.region_read(0, 0x08, 4) == struct.pack("<I", 1)
            # the profile's BAR4 is memory
            c.region_write(4, 0x100, b"profile bar")
            assert c.region_read(4, 0x100, 11) == b"profile bar"

            # SPDM: the profile's only algorithms and versions are what gets negotiated
            spdm = SpdmRequester(spdm_client.doe)
            spdm.authenticate()
            conn = spdm.conn
            assert conn.version == 0x13
            assert conn.hash is not None and conn.asym is not None
            assert (conn.hash.name, conn.asym.name) == ("sha256", "ecdsa-p256")
            record = measurement_record(spdm.get_measurements().response.measurement_record)
            assert sorted(record) == [1, 2, 3, 4, 5, 6]
            assert record[2] == (0x86, b"2.1.0")     # firmware version, raw (bit 7)
            assert record[5] == (0x03, hashlib.sha256(
                b"counter: 4 vectors, doorbell enabled").digest())
            assert record[6] == (0x89, bytes.fromhex("c0ffee"))   # informational, raw

            # TDISP: the report's first_page (TDISP 1.0 DEVICE_INTERFACE_REPORT mmio_range)
            # as the profile says: the page number (Linux) or the byte address (libspdm)
            bars = program_bars(c, 0)
            assert {i: size for i, (_, size) in bars.items()} == {0: 0x1000, 2: 0x1000,
                                                                  4: 0x10000}
            session = spdm.start_session()
            tdisp = TdispRequester(PciSigChannel(spdm, session))
            fid = t.make_function_id(0, 0)
            tdisp.lock(fid)
            report = parse_report(tdisp.report(fid))
            starts = {r.range_id: r.first_page for r in report.mmio_range}
            shift = 12 if encoding == "page-number" else 0
            assert starts[0] == bars[0][0] >> shift == {12: 0xE0000, 0: 0xE000_0000}[shift]
            assert starts[4] == bars[4][0] >> shift
            tdisp.stop(fid)
            spdm.end_session(session)
        finally:
            spdm_client.close()
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    doorbells = [json.loads(ln) for ln in events.read_text().splitlines()
                 if '"example_counter.doorbell"' in ln]
    assert [(e["vector"], e["count"]) for e in doorbells] == [(1, 1)]


def test_example_profile_builds_in_process() -> None:
    load_profile_file(EXAMPLE)  # imports counter.py once (further loads reuse it)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):  # the check's trial device gives its BAR memfds back
        load_profile_file(EXAMPLE)
    assert len(os.listdir("/proc/self/fd")) == before
    dev = Device(get_profile(str(EXAMPLE)))
    fn = dev.functions[0]
    assert fn.msix is not None and fn.msix.vectors == 4
    assert [b.index for b in fn.bars if b is not None] == [0, 2, 4]
    assert dev.ide_km is not None


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_builtin_profiles(tmp_path: Path) -> None:
    """Installed from a wheel, the package finds its built-in profile files."""
    import tarfile
    import zipfile

    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    for name in filter(None, files):
        rel = Path(os.fsdecode(name))
        if (ROOT / rel).exists():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"),
                        str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in ("dma-test", "virtio-rng", "virtio-rng-2fn"):
        assert f"vfiouser_tdisp/device/profiles/{p}.toml" in names
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        inside = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for want in ("vfiouser_tdisp/device/profiles/virtio-rng.toml", "examples/counter/counter.py",
                 "examples/counter/counter.toml", "ci/github-actions.yml", "ci/gitlab-ci.yml",
                 "ci/README.md", "docs/events.md", "docs/profiles.md"):
        assert want in inside, want
