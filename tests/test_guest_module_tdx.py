"""The guest module's Intel TDX sides (vtfw-tdx-host.c, vtfw-tdx-td.c) in a real 7.3.4
guest, against the TDX module emulator behind the firmware port, driven by the generic
guest-scripts/check_tsm_module.sh (insmod, connect, bind, the tvm/ files, unbind,
disconnect, rmmod).  The expected call sequence and codes are firmware-abi.md B.4-B.6
(and the [MODEL] host TDI calls of docs/platform-tdx.md); `run --platform tdx` covers the
whole flow (tests/test_platform_tdx_vm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfiouser_tdisp.events import Recorder
from vfiouser_tdisp.firmware import CallClass, FirmwareCall, GuestMemory
from vfiouser_tdisp.run.port_guest import boot_with_port
from vfiouser_tdisp.run.provision import Provisioned
from vfiouser_tdisp.tsm.tdx.module import TdxModule

pytestmark = pytest.mark.vm

TDX_SUCCESS = f"{0:#018x}"
TDH_TDI_BIND = 137                           # [MODEL] docs/platform-tdx.md
TDX_DEVICE_ERROR_TDISP = 0xC0000FF000000004  # [MODEL] TDX_DEVICE_ERROR | TDISP
TDCM_ERROR, TDCM_TDISP_MESSAGE = 2, 14       # GHCI TDCM status / error ([ISTG])


def _leaves(events: Recorder) -> list[tuple[str, str]]:
    return [(str(e["leaf"]), str(e["status"])) for e in events.of("tdx.call")]


def test_module_connects_binds_locks_accepts_and_unloads(
        prov: Provisioned, tmp_path: Path, events: Recorder) -> None:
    run, console = boot_with_port(prov, tmp_path, TdxModule(), "device,tsm_module",
                                  append="vtdisp.bind=1 vtdisp.tvm=1")
    for name in ("tsm_module", "tsm_connect", "tvm_lock_busy", "tsm_bind", "tvm_accept_unlocked",
                 "tvm_lock", "tvm_evidence", "tvm_accept", "tvm_probe", "tvm_unlock",
                 "tsm_unbind", "tsm_disconnect", "tsm_rmmod"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{console[-4000:]}"
    assert "firmware port 1.0, platform ABI TDX  1.0" in console
    assert "Intel TDX link TSM registered as tsm0" in console
    assert "Intel TDX devsec TSM registered as tsm1" in console
    leaves = _leaves(events)
    names = [n for n, _s in leaves]
    # the host's order (B.4): SPDM context, CONNECT loop, stream, KM loop; teardown reversed
    order = ["TDH.IOMMU.SETUP", "TDH.SPDM.CREATE", "TDH.SPDM.CONNECT", "TDH.IDE.STREAM.CREATE",
             "TDH.IDE.STREAM.KM", "TDH.TDI.BIND", "TDH.MMIO.MAP", "TDH.DMAR.ADD",
             "TDH.TDI.REPORT", "TDG.MMIO.ACCEPT", "TDG.DMAR.ACCEPT", "TDG.TDI.START",
             "TDH.TDI.START",
             "TDH.TDI.STOP", "TDH.TDI.UNBIND", "TDH.IDE.STREAM.BLOCK", "TDH.IDE.STREAM.DELETE",
             "TDH.SPDM.DISCONNECT", "TDH.SPDM.DELETE", "TDH.IOMMU.CLEAR"]
    it = iter(names)
    assert all(any(n == want for n in it) for want in order), names
    # every TDX_SPDM_REQUEST was answered: the leaf was called again and ended in SUCCESS
    # (TDCM GET_TDI_REPORT at lock: [MODEL] TDH.TDI.REPORT reads it from the device)
    for leaf in ("TDH.SPDM.CONNECT", "TDH.IDE.STREAM.KM", "TDH.TDI.BIND", "TDH.TDI.REPORT",
                 "TDH.TDI.START", "TDH.SPDM.DISCONNECT"):
        assert (leaf, TDX_SUCCESS) in leaves, leaf
    # rmmod gave the IOMMU back and left no SPDM context, stream or TDI behind
    assert ("TDH.IOMMU.CLEAR", TDX_SUCCESS) in leaves
    assert events.of("tdx.spdm.deleted") and events.of("tdx.ide_stream.deleted")
    assert events.of("tdx.tdi.unbound")
    # the TD's TDCM requests each reached the host through one TDH.VP.ENTER exit
    assert names.count("TDG.VP.VMCALL") == names.count("TDH.VP.ENTER") > 0
    assert "TVM: accepted (3 MMIO ranges accepted, DMA accepted, TDI RUN)" in console


class RefusingBind(TdxModule):
    """A module whose TDH.TDI.BIND fails as if the device refused LOCK_INTERFACE."""

    def call(self, call: FirmwareCall, mem: GuestMemory) -> tuple[int, ...]:
        if call.cls is CallClass.HOST and call.fid == TDH_TDI_BIND:
            return (TDX_DEVICE_ERROR_TDISP, *call.args[:10])
        return super().call(call, mem)


def test_a_refused_bind_reaches_the_td_as_a_tdcm_tdisp_error(
        prov: Provisioned, tmp_path: Path) -> None:
    run, console = boot_with_port(prov, tmp_path, RefusingBind(), "device,tsm_module",
                                  append="vtdisp.bind=1 vtdisp.tvm=1")
    lock = run.result("tvm_lock")
    assert lock is not None and not lock[0], console[-3000:]
    assert "'Input/output error' state=unlocked" in lock[1]
    # the host's view: the module's status; the TD's view: TDCM status ERROR, TDISP_MESSAGE
    assert "TDH.TDI.BIND[MODEL]: TDX_DEVICE_ERROR[MODEL] (0xc0000ff000000004)" in console
    assert f"TDCM 2: status {TDCM_ERROR}, error {TDCM_TDISP_MESSAGE}" in console
    ev = run.result("tvm_evidence")
    assert ev is not None and not ev[0]   # no evidence from a failed lock
    for name in ("tsm_unbind", "tsm_disconnect", "tsm_rmmod"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{console[-3000:]}"
