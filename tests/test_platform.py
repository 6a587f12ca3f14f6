"""The pieces of `run --platform` that need no guest: the relying party's inputs,
openssl's file set for the initramfs, `serve --tamper`, and the host's event checks.
(The whole flow in a booted guest is tests/test_platform_vm.py.)"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from vfiouser_tdisp.device.device import Device, get_profile
from vfiouser_tdisp.device.tamper import REPORT_SHIFT_PAGES, apply_tamper, shifted_report
from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.run.guest_tools import elf_interp_and_needed, program_files
from vfiouser_tdisp.run.initramfs import initramfs_entries
from vfiouser_tdisp.run.job import GuestRun
from vfiouser_tdisp.run.platform import (
    PDEV_PATH,
    Boot,
    _subsequence,
    host_checks,
    reference_measurements,
    tamper_checks,
)
from vfiouser_tdisp.run.provision import ProvisionError, ensure_provisioned
from vfiouser_tdisp.spdm.algorithms import HASHES
from vfiouser_tdisp.tdisp import messages as t


def _readelf_needed(path: str) -> tuple[str | None, list[str]]:
    """binutils' view of the same file: the independent implementation."""
    dyn = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    needed = [line.split("[", 1)[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line]
    prog = subprocess.run(["readelf", "-l", path], capture_output=True, text=True).stdout
    interp = next((line.split(": ", 1)[1].rstrip("]") for line in prog.splitlines()
                   if "program interpreter" in line), None)
    return interp, needed


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf not installed")
@pytest.mark.parametrize("path", ["/bin/sh", "/usr/bin/python3"])
def test_elf_needed_and_interp_match_readelf(path: str) -> None:
    real = str(Path(path).resolve())
    assert elf_interp_and_needed(Path(real).read_bytes()) == _readelf_needed(real)


def test_elf_parser_refuses_other_files() -> None:
    with pytest.raises(ValueError):
        elf_interp_and_needed(b"#!/bin/sh\n" + bytes(64))


def _fake_elf(needed: list[str], interp: str | None = None) -> bytes:
    """A minimal little-endian ELF64 with PT_INTERP and a .dynamic of DT_NEEDED
    entries (ELF-64 Object File Format 1.5: Elf64_Ehdr 64 B, Elf64_Phdr 56 B,
    Elf64_Shdr 64 B, Elf64_Dyn 16 B)."""
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    offs, pos = [], 1
    for n in needed:
        offs.append(pos)
        pos += len(n) + 1
    dyn = b"".join(struct.pack("<qQ", 1, o) for o in offs) + struct.pack("<qQ", 0, 0)
    interp_b = (interp.encode() + b"\0") if interp else b""
    phoff, shoff = 64, 64 + 56
    data_off = shoff + 3 * 64
    interp_off, str_off = data_off, data_off + len(interp_b)
    dyn_off = str_off + len(strtab)
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, phoff, shoff, 0, 64, 56, 1, 64, 3, 0)
    phdr = struct.pack("<IIQQQQQQ", 3 if interp else 0, 4, interp_off, 0, 0,
                       len(interp_b), len(interp_b), 1)
    shdrs = bytes(64) + struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(strtab), 0, 0,
                                    1, 0) + \
        struct.pack("<IIQQQQIIQQ", 0, 6, 0, 0, dyn_off, len(dyn), 1, 0, 8, 16)
    return ehdr + phdr + shdrs + interp_b + strtab + dyn


def test_program_files_follow_needed_and_links_inside_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (tree / "usr/lib64").mkdir(parents=True)
    # merged /usr as Debian lays it out: /lib and /lib64 are links into /usr
    (tree / "lib").symlink_to("usr/lib")
    (tree / "lib64").symlink_to("usr/lib64")
    lib = tree / "usr/lib/x86_64-linux-gnu"
    (tree / "usr/bin/tool").write_bytes(_fake_elf(["liba.so.1"], "/lib64/ld.so"))
    (lib / "liba.so.1.2").write_bytes(_fake_elf(["libb.so.3"]))
    (lib / "liba.so.1").symlink_to("liba.so.1.2")
    (lib / "libb.so.3").write_bytes(_fake_elf([]))
    (tree / "usr/lib64/ld.so").symlink_to("/usr/lib/x86_64-linux-gnu/ld-real.so")
    (lib / "ld-real.so").write_bytes(_fake_elf([]))
    files = program_files(tree, "usr/bin/tool")
    assert sorted(files) == ["lib/x86_64-linux-gnu/liba.so.1", "lib/x86_64-linux-gnu/libb.so.3",
                             "lib64/ld.so", "usr/bin/tool"]
    assert files["lib64/ld.so"] == (lib / "ld-real.so").read_bytes()


def test_initramfs_carries_extra_files() -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        try:
            busybox = ensure_provisioned().busybox
        except ProvisionError:
            pytest.skip("no busybox on the host and nothing provisioned")
    entries = initramfs_entries(busybox, None,
                                extra_files={"etc/vtdisp/root.pem": (0o644, b"PEM"),
                                             "usr/bin/openssl": (0o755, b"\x7fELF")})
    by_path = {e.path: e for e in entries}
    assert by_path["etc/vtdisp/root.pem"].data == b"PEM"
    assert by_path["etc/vtdisp/root.pem"].mode == 0o100644
    assert by_path["usr/bin/openssl"].mode == 0o100755
    assert by_path["etc/vtdisp"].is_dir  # parents exist before their contents


def test_reference_measurements_are_the_tcb_blocks() -> None:
    lines = [ln.split() for ln in reference_measurements("virtio-rng").splitlines()
             if not ln.startswith("#")]
    assert {int(ln[0]) for ln in lines} == {1, 2, 3}  # index 4 follows the configuration
    # DSP0274 §10.11.1 DMTFSpecMeasurementValueType: 1 mutable firmware (a digest, one
    # per hash the device may use), 6 firmware version (raw), 2 hardware configuration
    version = get_profile("virtio-rng").firmware_version.encode().hex()
    assert ["2", "6", version] in lines
    sizes = sorted(len(v) // 2 for i, _ty, v in lines if i == "1")
    assert sizes == sorted(HASHES[h].size for h in get_profile("virtio-rng").spdm_hash)


def test_tamper_measurements_changes_only_the_firmware_digest(events: Recorder) -> None:
    clean = Device(get_profile("virtio-rng"))
    bad = Device(get_profile("virtio-rng"))
    apply_tamper(bad, ["measurements"])
    algo = HASHES["sha384"]
    want = {b.index: b.value for b in clean.measurements.measurement_blocks(algo, False)}
    got = {b.index: b.value for b in bad.measurements.measurement_blocks(algo, False)}
    assert got[1] != want[1] and got[2] == want[2] and got[3] == want[3]
    assert [e["evidence"] for e in events.of("device.tamper")] == ["measurements"]
    with pytest.raises(ValueError):
        apply_tamper(bad, ["certificate"])


def test_tamper_report_moves_the_first_range_out_of_its_bar() -> None:
    rep = t.TDI_REPORT_STRUCTURE(
        interface_info=0, msi_x_message_control=0, lnr_control=0, tph_control=0,
        mmio_range_count=2,
        mmio_range=[t.MMIO_RANGE(first_page=0xFE400, number_of_pages=4, range_attributes=0),
                    t.MMIO_RANGE(first_page=0xFE404, number_of_pages=1, range_attributes=0)],
        device_specific_info_len=0, device_specific_info=b"")
    raw = shifted_report(rep).pack()
    # TDISP TDI_REPORT_STRUCTURE: MMIO_RANGE_COUNT u32 @12, then 16-byte MMIO_RANGEs
    # {first page u64, number of pages u32, attributes u16, range id u16}
    assert struct.unpack_from("<I", raw, 12) == (2,)
    assert struct.unpack_from("<QI", raw, 16) == (0xFE400 + REPORT_SHIFT_PAGES, 4)
    assert struct.unpack_from("<QI", raw, 32) == (0xFE404, 1)


def _boot(events: list[dict[str, object]]) -> Boot:
    return Boot(GuestRun(), events)


def _good_events() -> list[dict[str, object]]:
    ev: list[dict[str, object]] = [
        {"event": "rmm.pdev.created", "pdev": "p1", "category": "EP_OFF_CHIP"},
        {"event": "rmm.pdev.created", "pdev": "p2", "category": "RP"}]
    ev += [{"event": "rmm.pdev.transition", "pdev": "p1", "old": o, "new": n}
           for o, n in PDEV_PATH]
    ev += [{"event": "rmm.pdev.transition", "pdev": "p2", "old": "NEW", "new": "READY"}]
    for o, n in (("NEW", "UNLOCKED"), ("UNLOCKED", "LOCKED"), ("LOCKED", "LOCKED"),
                 ("LOCKED", "STARTED"), ("STARTED", "UNLOCKED")):
        ev.append({"event": "rmm.vdev.transition", "old": o, "new": n})
    for req, sid in (("GET_VERSION", None), ("KEY_EXCHANGE", None), ("FINISH", "0x1")):
        ev.append({"event": "rmm.communicate", "req_len": 4})
        ev.append({"event": "doe.transition", "trigger": "go_ok"})
        ev.append({"event": "spdm.request", "request": req, "session_id": sid})
    ev += [{"event": "ide_km.key_prog"},
           {"event": "tdisp.request", "message": "LOCK_INTERFACE_REQUEST"},
           {"event": "tdi.transition", "old": "CONFIG_UNLOCKED", "new": "CONFIG_LOCKED",
            "trigger": "LOCK_INTERFACE_REQUEST"},
           {"event": "virtio.dma_blocked"},
           {"event": "tdisp.request", "message": "START_INTERFACE_REQUEST"},
           {"event": "tdi.transition", "old": "CONFIG_LOCKED", "new": "RUN",
            "trigger": "START_INTERFACE_REQUEST"},
           {"event": "virtio.used"},
           {"event": "tdi.transition", "old": "RUN", "new": "ERROR", "trigger": "bar_change"}]
    # the realm's host calls as the RMM read them in rhi-1.0-bet1 (rmm.host_call exits)
    hc = {"event": "rmm.host_call", "op": "exit", "layout": "rhi-1.0-bet1"}
    ev += [{**hc, "rhi": "VDEV_GET_INTERFACE_REPORT", "arg": "0x0"},
           {**hc, "rhi": "VDEV_GET_MEASUREMENTS", "params": "0x7f3000"},
           {**hc, "rhi": "OBJECT_READ", "object": "VCA", "buffer": "0x7f2000",
            "max_len": 4096, "offset": 0}]
    return ev


def test_host_checks_pass_on_the_paths_of_the_rmm_spec() -> None:
    got = {n: (ok, d) for n, ok, d in host_checks(_boot(_good_events()))}
    assert all(ok for ok, _d in got.values()), got
    assert got["pdev_states"][1] == "EP PDEV NEW -> NEEDS_KEY -> HAS_KEY -> READY -> STOPPED"
    assert got["vdev_states"][1] == "VDEV NEW -> UNLOCKED -> LOCKED -> STARTED -> UNLOCKED"


@pytest.mark.parametrize("drop, check", [
    ({"event": "rmm.pdev.transition", "pdev": "p1", "old": "READY", "new": "STOPPED"},
     "pdev_states"),
    ({"event": "rmm.vdev.transition", "old": "LOCKED", "new": "STARTED"}, "vdev_states"),
    ({"event": "tdi.transition", "old": "RUN", "new": "ERROR", "trigger": "bar_change"},
     "tdi_states"),
    ({"event": "virtio.dma_blocked"}, "dma_gate"),
    ({"event": "ide_km.key_prog"}, "doe_objects"),
    ({"event": "rmm.host_call", "op": "exit", "layout": "rhi-1.0-bet1",
      "rhi": "VDEV_GET_MEASUREMENTS", "params": "0x7f3000"}, "rhi_layout"),
])
def test_host_checks_fail_without_a_step(drop: dict[str, object], check: str) -> None:
    ev = [e for e in _good_events() if e != drop]
    got = {n: ok for n, ok, _d in host_checks(_boot(ev))}
    assert not got[check] and all(ok for n, ok in got.items() if n != check)


@pytest.mark.parametrize("bad", [
    {"rhi": "VDEV_GET_INTERFACE_REPORT", "arg": "0x7f3000"},   # a GET_MEASUREMENTS, misread
    {"rhi": "VDEV_GET_MEASUREMENTS", "params": "0x0"},
    {"rhi": "OBJECT_READ", "object": 4, "buffer": "0x0", "max_len": 4096, "offset": 0}])
def test_rhi_layout_check_fails_on_calls_of_the_other_layout(bad: dict[str, object]) -> None:
    ev = _good_events() + [{"event": "rmm.host_call", "op": "exit",
                            "layout": "rhi-1.0-bet1", **bad}]
    assert not {n: ok for n, ok, _d in host_checks(_boot(ev))}["rhi_layout"]


def test_doe_objects_fail_when_the_device_saw_a_request_the_rmm_did_not_send() -> None:
    ev = _good_events() + [{"event": "spdm.request", "request": "GET_VERSION"}]
    assert not {n: ok for n, ok, _d in host_checks(_boot(ev))}["doe_objects"]


def test_tamper_check_fails_once_a_tampered_tdi_started() -> None:
    ev: list[dict[str, object]] = [{"event": "device.tamper", "evidence": "report"}]
    assert tamper_checks(_boot(ev))[0][1]
    ev.append({"event": "tdisp.request", "message": "START_INTERFACE_REQUEST"})
    assert not tamper_checks(_boot(ev))[0][1]


def test_subsequence() -> None:
    assert _subsequence("ace", "abcde") and not _subsequence("aec", "abcde")


def test_run_command_runs_the_platform_flow() -> None:
    from vfiouser_tdisp.cli import build_parser

    args = build_parser().parse_args(["run"])
    # issue 10/12: `./vt run` runs every platform, one guest each, one table
    assert (args.platform, args.handler) == ("all", "vfiouser_tdisp.run.platform:main_run")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--platform", "nope"])
    serve = build_parser().parse_args(["serve", "--socket", "s", "--tamper", "report",
                                       "--tamper", "measurements"])
    assert serve.tamper == ["report", "measurements"]


@pytest.mark.parametrize("platform,period", [("cca", 0), ("sev-tio", 0), ("tdx", 255)])
def test_heartbeat_period_follows_what_the_firmware_can_send(tmp_path: Path, recorder: Recorder,
                                                           platform: str, period: int) -> None:
    """DSP0274 KEY_EXCHANGE_RSP: HeartbeatPeriod is 0 unless both sides set HBEAT_CAP.
    The RMM and the PSP run only when called and have no call that sends HEARTBEAT, so
    they leave HBEAT_CAP out (as TF-RMM's requester does) and their sessions never time
    out; the TDX module has TDH.SPDM.MNG(HEARTBEAT) and asks for the device's period
    (the profile's 255 s)."""
    if platform == "cca":
        from tests.cca_support import bench
        bench(tmp_path).host.connect()
    elif platform == "sev-tio":
        from tests.test_sev_tio_psp import Bench as SevBench
        SevBench(tmp_path).host.connect()
    else:
        from tests.test_tdx_module import Bench as TdxBench
        TdxBench(tmp_path).host.connect()
    opened = recorder.of("spdm.session.opened")
    assert [e["heartbeat_period"] for e in opened] == [period]


def test_run_module_param_takes_name_value_pairs() -> None:
    from vfiouser_tdisp.cli import build_parser

    args = build_parser().parse_args(["run", "--module-param", "heartbeat_secs=1",
                                      "--module-param", "rhi_layout=linux-rfc-v4"])
    assert args.module_param == ["heartbeat_secs=1", "rhi_layout=linux-rfc-v4"]
    assert build_parser().parse_args(["run"]).module_param == []
    for bad in ("heartbeat_secs", "1x=2", "a=", "a=b c", "=3", "a.b=1"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", "--module-param", bad])
