"""The TDISP 1.0 messages beyond lock/report/start/stop: P2P stream binding,
MMIO attribute updates, vendor-defined messages and the DSM configuration
(XT mode), each with its error codes and state rules."""

from __future__ import annotations

import json
from typing import Any

from vfiouser_tdisp.tdisp import messages as m
from vfiouser_tdisp.tdisp.messages import LockInterfaceFlags, TdispErrorCode, TdiState
from vfiouser_tdisp.tdisp.responder import TdispResponder

from .test_tdisp import E, L, R, U, ask, drive, error_of, lock, make, program_secure_stream, w

INV = TdispErrorCode.INVALID_REQUEST
IIS = TdispErrorCode.INVALID_INTERFACE_STATE


def ok(rsp: Any, cls: type) -> None:
    assert type(rsp) is cls, rsp


# -- P2P streams ----------------------------------------------------------------------------
def test_bind_and_unbind_p2p_stream() -> None:
    dev, r = make()
    ctl = program_secure_stream(dev, 6)
    drive(r, dev.dsm, R, flags=LockInterfaceFlags.BIND_P2P)
    ok(ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=6), m.BIND_P2P_STREAM_RESPONSE)
    assert r.tdis[0].p2p_streams == {6: 0}
    assert error_of(ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=6)) is INV  # twice
    assert error_of(ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=7)) is INV  # not SECURE
    ok(ask(r, m.UNBIND_P2P_STREAM_REQUEST, p2p_stream_id=6), m.UNBIND_P2P_STREAM_RESPONSE)
    assert error_of(ask(r, m.UNBIND_P2P_STREAM_REQUEST, p2p_stream_id=6)) is INV
    # bound again; the stream leaving SECURE errors the TDI (P2P traffic unprotected)
    ok(ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=6), m.BIND_P2P_STREAM_RESPONSE)
    w(dev.dsm, ctl, 6 << 24)
    assert r.tdis[0].state is E
    ask(r, m.STOP_INTERFACE_REQUEST)
    assert r.tdis[0].state is U and r.tdis[0].p2p_streams == {}


def test_bind_p2p_needs_the_lock_flag_and_xt_mode_for_xt() -> None:
    dev, r = make()
    program_secure_stream(dev, 6)
    drive(r, dev.dsm, R)
    assert error_of(ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=6)) is INV
    ask(r, m.STOP_INTERFACE_REQUEST)
    drive(r, dev.dsm, R, flags=LockInterfaceFlags.BIND_P2P)
    rsp = ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=6,
              stream_config=m.StreamConfig.XT_ENABLE)
    assert error_of(rsp) is INV  # XT mode is off
    assert error_of(ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=6, stream_config=0x80)) \
        is INV


# -- MMIO attributes ------------------------------------------------------------------------
def _updatable(monkeypatch: Any) -> tuple[Any, TdispResponder]:
    dev, r = make()
    pers = r.tdis[0].personality
    monkeypatch.setattr(pers, "updatable_ranges", lambda: [(2, 0x2000, 0x2000)])
    return dev, r


def test_set_mmio_attribute_toggles_non_tee(monkeypatch: Any) -> None:
    dev, r = _updatable(monkeypatch)
    drive(r, dev.dsm, R)
    ranges = ask(r, m.GET_DEVICE_INTERFACE_REPORT, offset=0, length=0xFFFF)
    report = m.TDI_REPORT_STRUCTURE.unpack(ranges.report)
    (upd,) = [x for x in report.mmio_range
              if x.range_attributes & m.MmioRangeAttributes.IS_MEM_ATTR_UPDATABLE]
    assert upd.range_id == 2 and upd.number_of_pages == 2
    fields = dict(first_page=upd.first_page, number_of_pages=upd.number_of_pages,
                  range_id=upd.range_id)
    shared = upd.range_attributes | m.MmioRangeAttributes.IS_NON_TEE_MEM
    ok(ask(r, m.SET_MMIO_ATTRIBUTE_REQUEST, range_attributes=shared, **fields),
       m.SET_MMIO_ATTRIBUTE_RESPONSE)
    after = m.TDI_REPORT_STRUCTURE.unpack(
        ask(r, m.GET_DEVICE_INTERFACE_REPORT, offset=0, length=0xFFFF).report)
    (now,) = [x for x in after.mmio_range if x.first_page == upd.first_page]
    assert now.range_attributes == shared
    # only IS_NON_TEE_MEM may change; other ranges are not updatable; unknown ranges
    rsp = ask(r, m.SET_MMIO_ATTRIBUTE_REQUEST,
              range_attributes=shared | m.MmioRangeAttributes.MSIX_TABLE, **fields)
    assert error_of(rsp) is INV
    other = next(x for x in report.mmio_range if x is not upd and not x.range_attributes)
    rsp = ask(r, m.SET_MMIO_ATTRIBUTE_REQUEST, first_page=other.first_page,
              number_of_pages=other.number_of_pages, range_id=other.range_id,
              range_attributes=m.MmioRangeAttributes.IS_NON_TEE_MEM)
    assert error_of(rsp) is INV
    rsp = ask(r, m.SET_MMIO_ATTRIBUTE_REQUEST, first_page=upd.first_page + 1,
              number_of_pages=1, range_id=2, range_attributes=shared)
    assert error_of(rsp) is INV


def test_set_mmio_attribute_only_in_run(monkeypatch: Any) -> None:
    dev, r = _updatable(monkeypatch)
    for target in (U, L):
        drive(r, dev.dsm, target)
        rsp = ask(r, m.SET_MMIO_ATTRIBUTE_REQUEST, first_page=1, number_of_pages=1)
        assert error_of(rsp) is IIS
        ask(r, m.STOP_INTERFACE_REQUEST)


def test_virtio_rng_device_memory_is_updatable() -> None:
    from vfiouser_tdisp.device.virtio_rng import VirtioRng
    assert VirtioRng().updatable_ranges() == [(4, 0, VirtioRng.DEVICE_MEMORY_SIZE)]


# -- VDM ------------------------------------------------------------------------------------
def test_builtin_vdm_answers_in_every_state() -> None:
    dev, r = make()
    vendor = dev.dsm.vendor_id.to_bytes(2, "little")
    for target in (U, L, R, E):
        drive(r, dev.dsm, target)
        rsp = ask(r, m.VDM_REQUEST, registry_id=0, vendor_id_len=2, vendor_id=vendor,
                  vendor_data=b"\x01")
        ok(rsp, m.VDM_RESPONSE)
        info = json.loads(rsp.vendor_data)
        assert info["state"] == target.name and info["function"] == dev.dsm.name
        assert rsp.vendor_id == vendor and info["request"] == "01"
        ask(r, m.STOP_INTERFACE_REQUEST)


def test_vdm_registry() -> None:
    _dev, r = make()
    r.register_vdm(1, b"\xAA", lambda tdi, data: data[::-1])
    rsp = ask(r, m.VDM_REQUEST, registry_id=1, vendor_id_len=1, vendor_id=b"\xAA",
              vendor_data=b"abc")
    assert rsp.vendor_data == b"cba" and rsp.registry_id == 1
    rsp = ask(r, m.VDM_REQUEST, registry_id=1, vendor_id_len=1, vendor_id=b"\xBB")
    assert error_of(rsp) is TdispErrorCode.UNSUPPORTED_REQUEST


# -- DSM configuration (XT mode) ------------------------------------------------------------
def test_set_tdisp_config_xt_mode() -> None:
    dev, r = make(functions=2)
    ok(ask(r, m.SET_TDISP_CONFIG_REQUEST, dsm_config=m.DsmConfig.XT_MODE_ENABLE),
       m.SET_TDISP_CONFIG_RESPONSE)
    assert r.dsm_config == m.DsmConfig.XT_MODE_ENABLE
    assert error_of(ask(r, m.SET_TDISP_CONFIG_REQUEST, dsm_config=0x4)) is INV
    nonce = lock(r)
    info = m.TDI_REPORT_STRUCTURE.unpack(
        ask(r, m.GET_DEVICE_INTERFACE_REPORT, offset=0, length=0xFFFF).report).interface_info
    assert info & m.InterfaceInfo.XT_MODE_SUPPORTED
    # another function's TDI is unlocked, but the DSM configuration is shared
    rsp = ask(r, m.SET_TDISP_CONFIG_REQUEST, fid=1, dsm_config=0)
    assert error_of(rsp) is IIS
    assert nonce is not None
    ask(r, m.STOP_INTERFACE_REQUEST)
    ok(ask(r, m.SET_TDISP_CONFIG_REQUEST, fid=1, dsm_config=0), m.SET_TDISP_CONFIG_RESPONSE)


def test_xt_enable_p2p_after_xt_mode() -> None:
    dev, r = make()
    program_secure_stream(dev, 6)
    ask(r, m.SET_TDISP_CONFIG_REQUEST, dsm_config=m.DsmConfig.XT_MODE_ENABLE)
    drive(r, dev.dsm, R, flags=LockInterfaceFlags.BIND_P2P)
    ok(ask(r, m.BIND_P2P_STREAM_REQUEST, p2p_stream_id=6,
           stream_config=m.StreamConfig.XT_ENABLE), m.BIND_P2P_STREAM_RESPONSE)
    assert r.tdis[0].p2p_streams == {6: int(m.StreamConfig.XT_ENABLE)}
    assert r.tdis[0].state is TdiState.RUN
