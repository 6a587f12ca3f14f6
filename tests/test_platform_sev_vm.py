"""`run --platform sev-tio` end to end: a stock 7.3.4 guest, the guest module's ccp host
sequence (link TSM) and SNP guest side, the kernel's PCI/TSM core and DOE driver, the PSP
emulator behind the firmware port, the device.

One run (two boots: the flow, then against a tampered device) for the whole module; each
test reads its part.  Expected values are the specifications': the errnos of the proposed
TEE I/O ABI (reference/firmware-abi.md A.3/A.5), MMIO_VALIDATE status codes NOT_REPORTED 8,
OUT_OF_RANGE 9, NOT_4K 10 and SEV status INVALID_PARAM 0x16 (D.2, D.4), TDI_INFO's
SHA-384 digests (D.4), the TDISP TDI states (PCIe r7.0 §11).  The guest module seals its
guest messages with the kernel's AES-GCM library and the PSP opens them with OpenSSL's
(`cryptography`): every message the PSP counts is the two implementations agreeing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vfiouser_tdisp.run.platform import (
    PLATFORM_STEPS,
    SEV_HOST_STEPS,
    PlatformRun,
    run_platform,
)
from vfiouser_tdisp.run.provision import ProvisionError, ensure_provisioned

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> PlatformRun:
    try:
        prov = ensure_provisioned()
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")
    return run_platform(prov, tmp_path_factory.mktemp("sev"), platform="sev-tio",
                        timeout=240, log=False)


def _detail(pr: PlatformRun, name: str) -> str:
    got = {n: (ok, d) for n, ok, d in pr.results}
    assert name in got, f"{name} not reported"
    ok, detail = got[name]
    assert ok, f"{name}: {detail}\n{pr.main.run.console[-4000:]}"
    return detail


def test_every_step_passes(flow: PlatformRun) -> None:
    names = [n for n, _ok, _d in flow.results]
    for step in PLATFORM_STEPS["sev-tio"] + SEV_HOST_STEPS + ("tamper", "tamper_host"):
        assert step in names
    failed = [(n, d) for n, ok, d in flow.results if not ok]
    assert not failed and flow.ok, failed
    assert flow.main.run.done and flow.main.run.exit_code == 0


def test_the_psp_is_reached_through_the_kernels_tsm_core(flow: PlatformRun) -> None:
    assert _detail(flow, "tsm_module").startswith("link TSM tsm0, devsec TSM tsm1")
    connect = _detail(flow, "connect")
    assert "connect=tsm0 authenticated=tsm0 dsm=0000:01:00.0" in connect
    assert "connected through the PSP" in connect
    assert _detail(flow, "bind") == "bound=tsm0 tvm/state=unlocked"
    assert _detail(flow, "disconnect") == "connect, authenticated and dsm empty"
    # firmware-abi.md D.3: connect, then disconnect back to a reclaimable context
    assert _detail(flow, "dev_ctx_states") == \
        "device context CREATED -> CONNECTING -> CONNECTED -> DISCONNECTING -> CREATED"
    # guest BIND -> LOCKED, RUN (TDI_BIND with RUN_FORCE), STOP -> UNBOUND
    assert _detail(flow, "tdi_ctx_states").startswith(
        "TDI context UNBOUND -> BINDING -> LOCKED -> STARTING -> RUN -> UNBINDING -> UNBOUND")


def test_preconditions_of_the_proposed_abi(flow: PlatformRun) -> None:
    assert "virtio-pci bound: Device or resource busy; state=unlocked" in \
        _detail(flow, "lock_busy")
    assert _detail(flow, "accept_unlocked") == \
        "accept before lock: Invalid argument; state=unlocked"


def test_evidence_matches_the_psps_sha384_digests(flow: PlatformRun) -> None:
    lock = _detail(flow, "lock")
    assert "SHA-384 digests match TDI_INFO (TDISP state 1)" in lock   # CONFIG_LOCKED
    ev = _detail(flow, "evidence")
    assert "tdi_info=192" in ev and "vca" not in ev     # TIO_MSG_TDI_INFO_RSP is 192 bytes
    verify = _detail(flow, "verify")
    assert "chain of 3 to the anchor" in verify and "3 digests (sha384) as attested" in verify
    assert "measurements 1 2 3 = reference" in verify and "FAIL" not in verify


def test_accept_validates_the_tee_ranges(flow: PlatformRun) -> None:
    accept = _detail(flow, "accept")
    assert accept.startswith("state=run") and "sDTE written" in accept
    # the virtio-rng report: BAR0 and BAR2 are TEE ranges; the MSI-X table range is not
    assert "2 TEE ranges validated" in accept
    assert _detail(flow, "probe") == "driver=virtio-pci rng_current=virtio_rng.0"
    rng = _detail(flow, "hwrng")
    assert len(rng) == 64 and rng != "0" * 64


def test_mmio_validate_rejects(flow: PlatformRun) -> None:
    # [SEV-P2] MMIO_VALIDATE status: NOT_REPORTED 8, OUT_OF_RANGE 9, NOT_4K 10
    d = _detail(flow, "mmio_validate_rejects")
    assert "-> OUT_OF_RANGE (9)" in d and "range_id 32767 -> NOT_REPORTED (8)" in d
    assert "base +0x800 -> NOT_4K (10)" in d and d.endswith("state=run")


def test_a_replayed_guest_message_is_refused(flow: PlatformRun) -> None:
    d = _detail(flow, "guest_msg_replay")
    # type 19 = TIO_MSG_TDI_INFO_REQ; INVALID_PARAM = 0x16; requests carry odd numbers
    m = re.match(r"replayed guest message 19 #(\d+): SEV status 0x16 -> refused; "
                 r"next message: state=run$", d)
    assert m and int(m.group(1)) % 2 == 1
    msgs = _detail(flow, "guest_msgs")
    assert f"sequence number {m.group(1)}, expected {int(m.group(1)) + 2}" in msgs
    assert "refused: 1 (" in msgs
    for kind in ("TIO_MSG_TDI_INFO_REQ", "TIO_MSG_SDTE_WRITE_REQ", "TIO_MSG_MMIO_VALIDATE_REQ"):
        assert kind in msgs


def test_every_object_crossed_the_guest_kernels_doe_path(flow: PlatformRun) -> None:
    doe = _detail(flow, "doe_objects")
    m = re.match(r"(\d+) objects the firmware handed to the guest kernel's DOE path, "
                 r"(\d+) through the device's DOE mailbox, (\d+) SPDM requests", doe)
    assert m and m.group(1) == m.group(3) and int(m.group(2)) >= int(m.group(1))
    for what in ("GET_VERSION 1", "KEY_EXCHANGE 1", "FINISH(secured) 1", "key_prog 6",
                 "k_set_go 6", "LOCK_INTERFACE_REQUEST", "START_INTERFACE_REQUEST",
                 "STOP_INTERFACE_REQUEST"):
        assert what in doe


def test_negative_paths(flow: PlatformRun) -> None:
    assert "gave 0 bytes in 5 s" in _detail(flow, "dma_held")
    assert "held while the TDI was locked" in _detail(flow, "dma_gate")
    err = _detail(flow, "tdi_error")
    assert "refresh 'Input/output error', state=error" in err
    assert err.endswith("unlock: state=unlocked")
    assert "RUN -> ERROR (bar_change)" in _detail(flow, "tdi_states")


def test_tampered_evidence_is_refused_and_never_accepted(flow: PlatformRun) -> None:
    tamper = _detail(flow, "tamper")
    assert "FAIL measurement(s) 1 != reference" in tamper
    assert "outside every BAR" in tamper and tamper.endswith("not accepted (state=locked)")
    assert _detail(flow, "tamper_host").endswith("START_INTERFACE requests: 0")


def test_step_times_are_reported(flow: PlatformRun) -> None:
    assert set(PLATFORM_STEPS["sev-tio"]) <= set(flow.main.step_times)


def test_module_against_the_psp_in_process_tears_everything_down(tmp_path: Path) -> None:
    """The PSP in this process behind the port, the module's own check script: connect,
    bind, the TVM's lock / evidence / accept / probe / unlock, unbind, disconnect, rmmod.
    Afterwards the PSP holds no device or TDI context (D.5: disconnect and reclaim in
    reverse), and the guest's message counter moved by two per message it accepted."""
    from vfiouser_tdisp.events import LOG, Recorder
    from vfiouser_tdisp.run.port_guest import boot_with_port
    from vfiouser_tdisp.tsm.sev_tio.psp import Psp

    try:
        prov = ensure_provisioned()
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")
    psp = Psp()
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    try:
        run, console = boot_with_port(prov, tmp_path, psp, "device,tsm_module",
                                      append="vtdisp.bind=1 vtdisp.tvm=1")
    finally:
        unsubscribe()
    for name in ("tsm_module", "tsm_connect", "tvm_lock_busy", "tsm_bind",
                 "tvm_accept_unlocked", "tvm_lock", "tvm_evidence", "tvm_accept", "tvm_probe",
                 "tvm_unlock", "tsm_unbind", "tsm_disconnect", "tsm_rmmod"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{console[-4000:]}"
    assert "AMD SEV-TIO link TSM registered as tsm0" in console
    assert not psp.devs and not psp.tdis
    (guest,) = psp.guests.values()
    opened = rec.of("psp.guest_message")
    assert opened and guest.seqno[0] == 2 * len(opened)
    assert [e["new"] for e in rec.of("psp.dev.transition")] == \
        ["CONNECTING", "CONNECTED", "DISCONNECTING", "CREATED"]
    assert len(rec.of("psp.dev_reclaimed")) == 1 and len(rec.of("psp.tdi_reclaimed")) == 1


def test_module_refuses_evidence_the_host_altered(tmp_path: Path) -> None:
    """The interface report the host hands over differs by one bit from the one the PSP
    hashed into TDI_INFO: the guest module's lock fails with EBADMSG (its SHA-384 check,
    D.4), so accept is refused (EINVAL: not locked) and the device is never started."""
    from vfiouser_tdisp.events import LOG, Recorder
    from vfiouser_tdisp.run.port_guest import boot_with_port
    from vfiouser_tdisp.tsm.sev_tio.abi import SpdmDobjId
    from vfiouser_tdisp.tsm.sev_tio.psp import Psp, SlaBuffer

    class AlteredReport(Psp):
        """The report object in the output buffer is not the one TDI_INFO's digest covers
        (a host-side cache altered after the PSP wrote it)."""

        @staticmethod
        def _write_output(out: SlaBuffer, dev: object,
                          objs: list[tuple[SpdmDobjId, bytes]]) -> None:
            objs = [(i, d[:-1] + bytes([d[-1] ^ 1]) if i == SpdmDobjId.REPORT else d)
                    for i, d in objs]
            Psp._write_output(out, dev, objs)  # type: ignore[arg-type]

    try:
        prov = ensure_provisioned()
    except ProvisionError as exc:
        pytest.fail(f"not provisioned: {exc}")
    rec = Recorder()
    unsubscribe = LOG.subscribe(rec)
    try:
        run, console = boot_with_port(prov, tmp_path, AlteredReport(), "device,tsm_module",
                                      append="vtdisp.bind=1 vtdisp.tvm=1")
    finally:
        unsubscribe()
    lock, accept = run.result("tvm_lock"), run.result("tvm_accept")
    assert lock is not None and not lock[0] and "'Bad message'" in lock[1], lock
    assert accept is not None and not accept[0] and "'Invalid argument'" in accept[1], accept
    assert "report does not match the PSP's digest" in console
    started = [e for e in rec.of("tdisp.request") if e["message"] == "START_INTERFACE_REQUEST"]
    assert not started
    for name in ("tsm_connect", "tsm_unbind", "tsm_disconnect", "tsm_rmmod"):
        got = run.result(name)
        assert got is not None and got[0], f"{name}: {got}\n{console[-3000:]}"
