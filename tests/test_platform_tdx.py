"""The host side of `run --platform tdx` that needs no guest: the update images the guest
gets, the checks of the TDX module's events, and the [MODEL] report page of TDH.TDI.BIND
that the guest module's host side relies on.  (The flow in a booted guest is
tests/test_platform_tdx_vm.py.)"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vfiouser_tdisp.cli import build_parser
from vfiouser_tdisp.run import platform_tdx
from vfiouser_tdisp.run.job import GuestRun
from vfiouser_tdisp.run.platform import PLATFORM_STEPS, PLATFORMS, Boot, host_checks
from vfiouser_tdisp.tdisp.messages import TdiState as DeviceTdiState
from vfiouser_tdisp.tsm.platform import in_process_device
from vfiouser_tdisp.tsm.tdx.abi import NO_PAGE, hpa_array
from vfiouser_tdisp.tsm.tdx.blob import ImageError, parse_image
from vfiouser_tdisp.tsm.tdx.host import TdxHost
from vfiouser_tdisp.tsm.tdx.model import HostTdiLeaf
from vfiouser_tdisp.tsm.tdx.module import TdxModule

PAGE = 4096


# -- images -----------------------------------------------------------------------------------
def test_guest_gets_one_image_per_allowed_update_and_one_more() -> None:
    files = platform_tdx.guest_files()
    # the P-SEAMLDR starts with 4 updates ([MODEL] model.NUM_UPDATES); the boot module is
    # 1.5.20: 1.5.21 .. 1.5.24 use the counter up, 1.5.25 must be refused
    names = sorted(n for n in files if "/update-" in n)
    assert names == [f"etc/vtdisp/tdx/update-1.5.{u}.bin" for u in range(21, 26)]
    for name in names:
        mode, image = files[name]
        assert mode == 0o644
        # Linux v7.2 seamldr.c tdx_image_header: u16 version 0x200, u16 checksum,
        # "TDX-BLOB", u32 sigstruct_nr_pages, u32 module_nr_pages, 4076 reserved zero
        # bytes; then the pages
        version, _checksum, magic, sig, mod = struct.unpack_from("<HH8sII", image)
        assert (version, magic, sig) == (0x200, b"TDX-BLOB", 1)
        assert len(image) == PAGE * (1 + sig + mod) and image[0x14:PAGE] == bytes(4076)
        parse_image(image)


def test_bad_images_are_the_ones_the_steps_expect() -> None:
    files = platform_tdx.guest_files()
    # refused by the kernel before any SEAMCALL: the signature is not "TDX-BLOB"
    magic = files["etc/vtdisp/tdx/bad-magic.bin"][1]
    assert magic[4:12] != b"TDX-BLOB"
    with pytest.raises(ImageError):
        parse_image(magic)
    # these pass the kernel's checks and are the P-SEAMLDR's to refuse
    good = files["etc/vtdisp/tdx/update-1.5.21.bin"][1]
    for kind in ("bad-signature", "module-hash"):
        image = files[f"etc/vtdisp/tdx/bad-{kind}.bin"][1]
        parse_image(image)
        assert image != good and len(image) == len(good)


# -- the checks of the module's events ------------------------------------------------------
def _update(old: str, new: str) -> list[dict[str, object]]:
    return [{"event": "tdx.module.transition", "trigger": "shutdown", "old": "READY",
             "new": "SHUT_DOWN"},
            {"event": "tdx.module.transition", "trigger": "update", "old": "INSTALLED",
             "new": "READY", "from_version": old, "to_version": new}]


def _good_events() -> list[dict[str, object]]:
    ev: list[dict[str, object]] = []
    for o, n in zip(platform_tdx.SPDM_PATH, platform_tdx.SPDM_PATH[1:], strict=False):
        ev.append({"event": "tdx.spdm.transition", "old": o, "new": n, "trigger": "x"})
    ev.append({"event": "tdx.call", "status": platform_tdx.SPDM_REQUEST})
    ev.append({"event": "doe.transition", "trigger": "go_ok"})
    ev.append({"event": "spdm.request", "request": "GET_VERSION"})
    tdi = platform_tdx.TDI_PATH
    ev += [{"event": "tdx.tdi.transition", "old": o, "new": n,
            "trigger": "stop" if n == "STOPPING" else "x"}
           for o, n in zip(tdi[:3], tdi[1:4], strict=True)]        # ... -> RUN
    for u in range(21, 25):
        ev += _update(f"1.5.{u - 1}", f"1.5.{u}")
    for status in ("SEAMLDR_SUCCESS", "EBADSIG", "EBADHASH", "EBADCALL"):
        ev.append({"event": "tdx.seamldr.install", "status": status})
    ev += [{"event": "tdx.tdi.transition", "old": o, "new": n,
            "trigger": "stop" if n == "STOPPING" else "x"}
           for o, n in (("RUN", "STOPPING"), ("STOPPING", "UNLOCKED"),
                        # tdi_error: bound again, started, the device's ERROR seen, stopped
                        ("BINDING", "LOCKED"), ("LOCKED", "STARTING"), ("STARTING", "RUN"),
                        ("RUN", "ERROR"), ("ERROR", "STOPPING"), ("STOPPING", "UNLOCKED"))]
    return ev


def _checks(ev: list[dict[str, object]]) -> dict[str, tuple[bool, str]]:
    out, _relayed = platform_tdx.firmware_checks(Boot(GuestRun(), ev))
    return {n: (ok, d) for n, ok, d in out}


def test_firmware_checks_pass_on_the_module_paths() -> None:
    got = _checks(_good_events())
    assert all(ok for ok, _d in got.values()), got
    assert got["spdm_states"][1] == \
        "SPDM context CREATED -> CONNECTING -> CONNECTED -> DISCONNECTING -> DISCONNECTED"
    assert got["module_updates"][1].startswith(
        "4 TD-preserving updates (1.5.20->1.5.21, 1.5.21->1.5.22, 1.5.22->1.5.23, "
        "1.5.23->1.5.24), 4 of 4 resumes while the TDI was RUN")
    _out, relayed = platform_tdx.firmware_checks(Boot(GuestRun(), _good_events()))
    assert relayed == 1


def test_an_update_after_the_tdi_stopped_is_not_td_preserving_evidence() -> None:
    ev = _good_events() + _update("1.5.24", "1.5.25")
    ok, detail = _checks(ev)["module_updates"]
    assert not ok and "4 of 5 resumes while the TDI was RUN" in detail


@pytest.mark.parametrize("status", ["EBADSIG", "EBADHASH", "EBADCALL"])
def test_module_updates_need_each_refusal(status: str) -> None:
    ev = [e for e in _good_events() if e.get("status") != status]
    assert not _checks(ev)["module_updates"][0]


def test_module_tdi_must_have_seen_the_device_error() -> None:
    ev = [e for e in _good_events() if e.get("new") != "ERROR"]
    ok, detail = _checks(ev)["tdi_fw_states"]
    assert not ok and "ERROR" not in detail
    assert _checks(_good_events())["tdi_fw_states"][1].endswith(
        "RUN -> ERROR -> STOPPING -> UNLOCKED")


def test_tdi_states_need_the_bar_error_as_for_cca() -> None:
    # the step at CCA's place: after dma_held, before unbind
    for platform in ("tdx", "cca"):
        steps = PLATFORM_STEPS[platform]
        assert steps[steps.index("tdi_error") - 1:steps.index("tdi_error") + 2] == \
            ("dma_held", "tdi_error", "unbind")
    run: list[dict[str, object]] = [
        {"event": "tdi.transition", "old": "CONFIG_LOCKED", "new": "RUN", "trigger": "x"}]
    bar = run + [{"event": "tdi.transition", "old": "RUN", "new": "ERROR",
                  "trigger": "bar_change"}]
    for platform in ("tdx", "cca"):
        for ev, want in ((run, False), (bar, True)):
            got = {n: ok for n, ok, _d in host_checks(Boot(GuestRun(), ev), platform)}
            assert got["tdi_states"] is want


def test_run_accepts_tdx() -> None:
    assert "tdx" in PLATFORMS
    args = build_parser().parse_args(["run", "--platform", "tdx"])
    assert (args.platform, args.handler) == ("tdx", "vfiouser_tdisp.run.platform:main_run")
    assert platform_tdx.STEPS[-2:] == ("unbind", "disconnect")
    for step in ("seamldr_info", "module_update", "update_bad_image", "update_exhausted"):
        assert step in platform_tdx.STEPS


# -- [MODEL] TDH.TDI.BIND R12: the interface report for the host ----------------------------
@pytest.fixture
def host(tmp_path: Path) -> tuple[TdxHost, object]:
    transport, dev = in_process_device("virtio-rng", str(tmp_path / "identity"))
    h = TdxHost(TdxModule(), transport)
    h.connect()
    return h, dev


def _bar_bases(dev: object) -> set[int]:
    cfg = dev.dsm.config  # type: ignore[attr-defined]
    lows = [int.from_bytes(cfg.read(0x10 + 4 * i, 4), "little") for i in range(6)]
    return {low & ~0xF for low in lows if low & ~0xF}


def test_tdi_bind_writes_the_report_into_r12_and_its_length_in_rdx(
        host: tuple[TdxHost, object]) -> None:
    h, dev = host
    out = h.loop(HostTdiLeaf.TDH_TDI_BIND, h.link.spdm_id, h.tdi, h.td, h.rsp, h.req,
                 h.link.stream_id, hpa_array(h.out_root, 4))
    report = h.mem.read(h.out, out[2])
    assert report == h.module.tdis[h.tdi].report
    # TDISP TDI_REPORT_STRUCTURE (PCIe r7.0 §11.3.11): MMIO_RANGE_COUNT u32 @12, then
    # 16-byte ranges {first page u64 (4 KiB), number of pages u32, attributes u32};
    # MMIO reporting offset 0: the pages are where the function's BARs decode
    count = struct.unpack_from("<I", report, 12)[0]
    assert count >= 1 and len(report) == 16 + 16 * count + struct.unpack_from(
        "<I", report, 16 + 16 * count)[0] + 4
    bases = _bar_bases(dev)
    firsts = [struct.unpack_from("<Q", report, 16 + 16 * i)[0] << 12 for i in range(count)]
    assert firsts[0] in bases
    assert dev.tdisp.tdis[0].state is DeviceTdiState.CONFIG_LOCKED  # type: ignore[attr-defined]


@pytest.mark.parametrize("r12", [0, NO_PAGE])
def test_tdi_bind_without_r12_writes_nothing(host: tuple[TdxHost, object], r12: int) -> None:
    h, _dev = host
    h.mem.write(h.out, bytes(PAGE))
    args = [h.link.spdm_id, h.tdi, h.td, h.rsp, h.req, h.link.stream_id]
    out = h.loop(HostTdiLeaf.TDH_TDI_BIND, *args, *([r12] if r12 else []))
    assert out[0] == 0 and out[2] == len(h.module.tdis[h.tdi].report)
    assert h.mem.read(h.out, PAGE) == bytes(PAGE)
