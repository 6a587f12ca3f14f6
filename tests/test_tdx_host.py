"""The guest-less TDX host and TD drivers against the TDX module emulator and a real
device over DMTF's spdm-emu socket (``serve --spdm-port``), and the CLI commands:
``tsm --platform tdx`` (one line per step) and ``tdx-blob``."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.platform_support import attached_guest, dmtf_responder_emu, over_spdm_emu, serve_platform
from vfiouser_tdisp.cli import main
from vfiouser_tdisp.server import start_devices
from vfiouser_tdisp.tsm.tdx import blob
from vfiouser_tdisp.tsm.tdx.abi import SpdmMngOp, TdTdiState
from vfiouser_tdisp.tsm.tdx.host import TdxHost, TdxTd
from vfiouser_tdisp.tsm.tdx.module import TdxModule
from vfiouser_tdisp.vfio_user.client import VfioUserClient


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tdx-host-identity")


def test_whole_flow_over_spdm_emu_socket(cache: Path, sock_dir: Path) -> None:
    """Every object the module produces crosses DMTF's socket protocol to the device; the
    BARs are assigned over vfio-user first, as a guest's firmware would."""
    with over_spdm_emu(sock_dir, cache) as (transport, running):
        module = TdxModule()
        host = TdxHost(module, transport)
        td = TdxTd(host)
        host.connect()
        host.bind()
        td.lock()
        td.accept()
        assert td.state() is TdTdiState.RUN
        host.install(blob.build_image((1, 5, 21)))
        host.mng(SpdmMngOp.HEARTBEAT)
        assert td.state() is TdTdiState.RUN
        assert running.devices[0].tdisp.tdis[0].state.name == "RUN"
        td.unlock()
        host.disconnect()
        assert host.objects_sent > 30


def test_cli_over_spdm_emu_socket(cache: Path, sock_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`tsm --platform tdx --spdm HOST:PORT`: without assigned BARs the device refuses the
    LOCK in TDH.TDI.BIND (the line says why, exit 1); with them every step passes."""
    path = str(sock_dir / "cli.sock")
    running = start_devices([path], "virtio-rng", spdm_port=0,
                            identity_options={"identity_dir": cache})
    try:
        spdm = f"127.0.0.1:{running.spdm_servers[0].port}"
        assert main(["tsm", "--platform", "tdx", "--spdm", spdm]) == 1
        out = capsys.readouterr().out.splitlines()
        assert [ln.split()[:2] for ln in out] == [["connect", "PASS"], ["bind", "FAIL"]]
        assert "TDX_DEVICE_ERROR" in out[-1] and "TDISP" in out[-1]
        with attached_guest(path):
            root = sock_dir / "root.der"
            root.write_bytes(running.devices[0].identity.root.public_bytes(Encoding.DER))
            assert main(["tsm", "--platform", "tdx", "--spdm", spdm, "--root", str(root),
                         "--preempt-every", "5", "connect", "bind", "lock", "report",
                         "measurements", "info", "accept", "heartbeat", "key_update",
                         "seamldr_info", "module_update", "update_bad_image",
                         "update_exhausted", "unlock", "unbind", "disconnect"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert [ln.split()[:2] for ln in out] == [
            [s, "PASS"] for s in ("connect", "bind", "lock", "report", "measurements", "info",
                                  "accept", "heartbeat", "key_update", "seamldr_info",
                                  "module_update", "update_bad_image", "update_exhausted",
                                  "unlock", "unbind", "disconnect")]
        assert "chain anchored" in out[2]
        assert "1.5.20 -> 1.5.21" in out[10] and "4 -> 3" in out[10]
        assert "EBADSIG" in out[11] and "EBADHASH" in out[11] and "-EINVAL" in out[11]
        assert "EBADCALL" in out[12]
    finally:
        running.close()


def test_cli_in_process_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tsm", "--platform", "tdx"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in out][:4] == ["connect", "bind", "lock", "accept"]
    assert all(ln.split()[1] == "PASS" for ln in out)
    assert main(["tsm", "--platform", "tdx", "nosuchstep"]) == 2
    assert "unknown step 'nosuchstep'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tsm", "--help"])
    assert "tdx steps: connect" in capsys.readouterr().out
    from vfiouser_tdisp.tsm.tdx import cli as tdx_cli
    from vfiouser_tdisp.tsm.tdx import model
    assert tdx_cli.DEFAULT_UPDATES == model.NUM_UPDATES
    boot = model.BOOT_MODULE_VERSION
    assert tdx_cli.DEFAULT_IMAGE_VERSION == f"{boot[0]}.{boot[1]}.{boot[2] + 1}"


def test_cli_image_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "m.blob"
    assert main(["tdx-blob", "--out", str(image), "--version", "1.5.30"]) == 0
    assert main(["tsm", "--platform", "tdx", "--image", str(image), "connect", "seamldr_info",
                 "module_update", "disconnect"]) == 0
    assert "1.5.20 -> 1.5.30" in capsys.readouterr().out
    broken = tmp_path / "bad.blob"
    assert main(["tdx-blob", "--out", str(broken), "--break", "module-hash"]) == 0
    assert main(["tsm", "--platform", "tdx", "--image", str(broken), "module_update"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split()[:2] == ["module_update", "FAIL"] and "EBADHASH" in out[-1]


def test_tdx_blob_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.blob"
    assert main(["tdx-blob", "--out", str(good), "--module-pages", "3"]) == 0
    data = good.read_bytes()
    assert len(data) == 5 * 4096 and data[4:12] == b"TDX-BLOB" and data[:2] == b"\x00\x02"
    assert main(["tdx-blob", "--check", str(good)]) == 0
    assert "checksum ok" in capsys.readouterr().out
    for kind, rc in (("checksum", 1), ("version", 1), ("truncated", 1), ("bad-signature", 0)):
        path = tmp_path / f"{kind}.blob"
        assert main(["tdx-blob", "--out", str(path), "--break", kind]) == 0
        assert main(["tdx-blob", "--check", str(path)]) == rc, kind
    assert main(["tdx-blob", "--list-breakages"]) == 0
    listing = capsys.readouterr().out
    assert "module-hash" in listing and "EBADHASH" in listing
    assert main(["tdx-blob", "--out", str(good), "--version", "x"]) == 2
    assert main(["tdx-blob", "--out", str(good), "--module-pages", "497"]) == 2
    assert main(["tdx-blob"]) == 2
    assert main(["tdx-blob", "--out", str(good), "--break", "nope"]) == 2
    assert "module-hash" in capsys.readouterr().err


def test_serve_platform_tdx_serves_the_module_behind_the_port(sock_dir: Path) -> None:
    """`serve --platform tdx`: the firmware port (docs/firmware-port.md) shows ABI_ID "TDX "
    and carries SEAMCALLs: FID = RAX leaf, ARG0 = RCX, ARG1 = RDX; RES0 = RAX, RES3 = R8.
    TDH.SYS.RD(MAJOR_VERSION 0x0800000100000004) answers the boot module's major, 1."""
    import struct
    host_win, fid, doorbell, status, args, res = 0x100, 0x00, 0x08, 0x0C, 0x20, 0xA0
    with serve_platform(sock_dir, "tdx") as path:
        with VfioUserClient(path + ".fwport") as c:
            c.version()
            assert c.region_read(0, 0, 4) == b"VTFP"
            assert c.region_read(0, 8, 4) == b"TDX "                 # ABI_ID fourcc
            assert struct.unpack("<I", c.region_read(0, 0x0C, 4))[0] == 0x00010000
            c.region_write(0, host_win + args, struct.pack("<Q", 0), posted=True)
            c.region_write(0, host_win + args + 8, struct.pack("<Q", 0x0800000100000004),
                           posted=True)
            c.region_write(0, host_win + fid, struct.pack("<Q", 34), posted=True)   # TDH.SYS.RD
            c.region_write(0, host_win + doorbell, struct.pack("<I", 1), posted=True)
            assert struct.unpack("<I", c.region_read(0, host_win + status, 4))[0] & 0x6 == 0x2
            rax, rcx, rdx, r8 = struct.unpack("<4Q", c.region_read(0, host_win + res, 32))
            assert (rax, rdx, r8) == (0, 0x0800000100000004, 1)


def test_cli_against_dmtf_spdm_responder_emu(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Interop with an independent responder: DMTF spdm-emu's ``spdm_responder_emu``
    (libspdm with its own IDE_KM and TDISP samples) answers every object the TDX module
    produces.  Built outside the repository; set SPDM_RESPONDER_EMU to the binary (its sample
    keys next to it in ../../libspdm/unit_test/sample_key, or SPDM_EMU_KEYS)."""
    with dmtf_responder_emu(tmp_path) as port:
        assert main(["tsm", "--platform", "tdx", "--spdm", f"127.0.0.1:{port}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in out] == [
        [step, "PASS"] for step in ("connect", "bind", "lock", "accept", "heartbeat",
                                    "key_update", "seamldr_info", "module_update",
                                    "update_bad_image", "unlock", "unbind", "disconnect")]
