"""The Arm CCA DA ABI on bytes: call numbers, status codes, state values and every
structure at the offsets firmware-abi.md section C gives (taken there from TF-RMM
smc-rmi.h / smc-rsi.h @9a7f8ef4, the RHI 1.0-bet1 ACS val_rhi.h and the Linux RFC v4
guest rhi.h).  The numbers below are written out from that document, not from the code."""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.tsm.cca import abi, rhi


def test_rmi_function_ids() -> None:
    # firmware-abi.md C.2 (FID = 0xC4000150 + offset, SMC64 fast)
    expected = {
        "RMI_PDEV_ABORT": 0xC4000174, "RMI_PDEV_COMMUNICATE": 0xC4000175,
        "RMI_PDEV_CREATE": 0xC4000176, "RMI_PDEV_DESTROY": 0xC4000177,
        "RMI_PDEV_GET_STATE": 0xC4000178, "RMI_PDEV_STREAM_KEY_REFRESH": 0xC400017A,
        "RMI_PDEV_SET_PUBKEY": 0xC400017B, "RMI_PDEV_STOP": 0xC400017C,
        "RMI_VDEV_ABORT": 0xC4000185, "RMI_VDEV_COMMUNICATE": 0xC4000186,
        "RMI_VDEV_CREATE": 0xC4000187, "RMI_VDEV_DESTROY": 0xC4000188,
        "RMI_VDEV_GET_STATE": 0xC4000189, "RMI_VDEV_UNLOCK": 0xC400018A,
        "RMI_VDEV_COMPLETE": 0xC400018E, "RMI_VDEV_GET_INTERFACE_REPORT": 0xC40001D0,
        "RMI_VDEV_GET_MEASUREMENTS": 0xC40001D1, "RMI_VDEV_LOCK": 0xC40001D2,
        "RMI_VDEV_START": 0xC40001D3, "RMI_PDEV_STREAM_CONNECT": 0xC4000204,
        "RMI_PDEV_STREAM_DISCONNECT": 0xC4000205, "RMI_PDEV_STREAM_COMPLETE": 0xC4000206,
        "RMI_PDEV_STREAM_KEY_PURGE": 0xC4000207,
    }
    for name, fid in expected.items():
        assert abi.RmiFid[name] == fid, name


def test_rsi_function_ids_and_status() -> None:
    # firmware-abi.md C.6 (FID = 0xC4000190 + offset)
    assert abi.RsiFid.RSI_FEATURES == 0xC4000191
    assert abi.RsiFid.RSI_HOST_CALL == 0xC4000199
    assert abi.RsiFid.RSI_VDEV_DMA_ENABLE == 0xC400019C
    assert abi.RsiFid.RSI_VDEV_GET_INFO == 0xC400019D
    assert abi.RsiFid.RSI_VDEV_VALIDATE_MAPPING == 0xC400019F
    assert abi.RsiFid.RSI_VDEV_DMA_DISABLE == 0xC40001A4
    assert [(s.name, s.value) for s in abi.RsiStatus] == [
        ("RSI_SUCCESS", 0), ("RSI_ERROR_INPUT", 1), ("RSI_ERROR_STATE", 2),
        ("RSI_INCOMPLETE", 3), ("RSI_ERROR_UNKNOWN", 4), ("RSI_ERROR_DEVICE", 5)]
    assert (abi.RSI_ACCEPT, abi.RSI_REJECT) == (0, 1)
    assert [s.value for s in abi.RsiVdevState] == [0, 1, 2, 3]   # UNLOCKED LOCKED STARTED ERROR


def test_rmi_status_codes_and_states() -> None:
    assert [(s.name, s.value) for s in abi.RmiStatus] == [
        ("RMI_SUCCESS", 0), ("RMI_ERROR_INPUT", 1), ("RMI_ERROR_REALM", 2),
        ("RMI_ERROR_REC", 3), ("RMI_ERROR_RTT", 4), ("RMI_ERROR_NOT_SUPPORTED", 5),
        ("RMI_ERROR_DEVICE", 6), ("RMI_ERROR_RTT_AUX", 7), ("RMI_ERROR_PSMMU_ST", 8),
        ("RMI_ERROR_DPT", 9), ("RMI_BUSY", 10), ("RMI_ERROR_GLOBAL", 11),
        ("RMI_ERROR_TRACKING", 12), ("RMI_INCOMPLETE", 13), ("RMI_BLOCKED", 14),
        ("RMI_ERROR_GPT", 15), ("RMI_ERROR_GRANULE", 16)]
    # C.4 / C.5
    assert {s.name: s.value for s in abi.RmiPdevState} == {
        "NEW": 0, "NEEDS_KEY": 1, "HAS_KEY": 2, "READY": 3, "STOPPED": 4, "ERROR": 5}
    assert {s.name: s.value for s in abi.RmiVdevState} == {
        "NEW": 0, "UNLOCKED": 1, "LOCKED": 2, "STARTED": 3, "ERROR": 4,
        "KEY_REFRESH": 5, "KEY_PURGE": 6}
    # C.2: REC exit reasons the DA calls use
    assert abi.RmiRecExitReason.RMI_EXIT_HOST_CALL == 5
    assert abi.RmiRecExitReason.RMI_EXIT_VDEV_REQUEST == 8
    assert abi.RmiRecExitReason.RMI_EXIT_DEV_MEM_MAP == 9


def _u64(data: bytes, off: int) -> int:
    return struct.unpack_from("<Q", data, off)[0]


def test_rmi_pdev_params_offsets() -> None:
    raw = abi.RmiPdevParams(flags=0x3, hb_base=0x1111, pdev_id=0x0108, routing_id=0x0108,
                            id_index=2, rid_base=0x0100, rid_top=0x0200,
                            hash_algo=1).pack()
    assert len(raw) == 4096
    assert (_u64(raw, 0x00), _u64(raw, 0x08), _u64(raw, 0x10), _u64(raw, 0x18),
            _u64(raw, 0x20)) == (0x3, 0x1111, 0x0108, 0x0108, 2)
    assert struct.unpack_from("<I", raw, 0x28)[0] == 0x0100
    assert _u64(raw, 0x30) == 0x0200 and raw[0x38] == 1
    # flags: SPDM bit 0, category [2:1] (RP 0, EP_OFF_CHIP 1, EP_ON_CHIP 2)
    assert abi.RMI_PDEV_FLAGS_SPDM == 1
    assert (abi.RmiPdevCategory.EP_OFF_CHIP << abi.RMI_PDEV_FLAGS_CATEGORY_SHIFT) == 0b010


def test_rmi_public_key_params_offsets() -> None:
    raw = abi.RmiPublicKeyParams(key=b"\x04" + bytes(1023), metadata=b"\x01" + bytes(1023),
                                 key_len=97, metadata_len=3, algo=2).pack()
    assert len(raw) == 4096 and raw[0] == 4 and raw[0x400] == 1
    assert (_u64(raw, 0x800), _u64(raw, 0x808), raw[0x810]) == (97, 3, 2)
    assert [a.value for a in abi.RmiSignatureAlgorithm] == [0, 1, 2]  # RSA3072 P256 P384


def test_rmi_dev_comm_data_offsets() -> None:
    enter = abi.RmiDevCommEnter(status=1, req_addr=0xA000, resp_addr=0xB000,
                                resp_len=0x40).pack()
    assert (enter[0], _u64(enter, 0x08), _u64(enter, 0x10), _u64(enter, 0x18)) == \
        (1, 0xA000, 0xB000, 0x40)
    ex = abi.RmiDevCommExit(flags=0x0C, cache_req_offset=1, cache_req_len=2,
                            cache_rsp_offset=3, cache_rsp_len=4, cache_obj_id=3, protocol=1,
                            req_delay=5, req_len=6, timeout=7).pack()
    assert [_u64(ex, o) for o in (0x00, 0x08, 0x10, 0x18, 0x20)] == [0x0C, 1, 2, 3, 4]
    assert (ex[0x28], ex[0x30], _u64(ex, 0x38), _u64(ex, 0x40), _u64(ex, 0x48)) == \
        (3, 1, 5, 6, 7)
    assert abi.RMI_DEV_COMM_EXIT_OFFSET == 0x800
    flags = abi.RmiDevCommExitFlags
    assert [f.value for f in (flags.REQ_CACHE, flags.RSP_CACHE, flags.REQ_SEND, flags.RSP_WAIT,
                              flags.RSP_RESET, flags.MULTI, flags.STREAM_WAIT)] == \
        [1, 2, 4, 8, 16, 32, 64]
    assert [o.value for o in abi.RmiDevCommObject] == [0, 1, 2, 3]  # VCA CERT MEAS REPORT
    assert [p.value for p in abi.RmiDevCommProtocol] == [0, 1]      # SPDM SECURE_SPDM


def test_rmi_vdev_and_stream_params_offsets() -> None:
    raw = abi.RmiVdevParams(flags=0, vdev_id=0x0010, tdi_id=0x0100, vsmmu_addr=0x9000,
                            vsid=7, num_addr_range=2).pack()
    assert [_u64(raw, o) for o in (0x08, 0x10, 0x20, 0x28, 0x30)] == \
        [0x0010, 0x0100, 0x9000, 7, 2]
    assert abi.RMI_VDEV_PARAMS_ADDR_RANGE_OFFSET == 0x200
    assert abi.RMI_VDEV_PARAMS_MAX_ADDR_RANGES == 8
    raw = abi.RmiPdevStreamParams(flags=0, stream_type=1, pdev_1=0x1000, pdev_2=0x2000,
                                  ide_sid=5, num_addr_range=1).pack()
    assert (raw[0x08], _u64(raw, 0x10), _u64(raw, 0x18), _u64(raw, 0x20), _u64(raw, 0x28)) \
        == (1, 0x1000, 0x2000, 5, 1)
    assert abi.RMI_STREAM_PARAMS_ADDR_RANGE_OFFSET == 0x100
    assert [s.value for s in abi.RmiStreamType] == [0, 1, 2, 3, 4]
    raw = abi.RmiVdevMeasureParams(flags=1, nonce=bytes(range(32))).pack()
    assert _u64(raw, 0) == 1 and raw[0x100:0x120] == bytes(range(32))


def test_rsi_vdev_info_offsets() -> None:
    info = abi.RsiVdevInfo(flags=1, cert_id=2, hash_algo=1, lock_nonce=0x11, meas_nonce=0x22,
                           report_nonce=0x33, format_type=1, format_version=0x10000, state=2,
                           vca_digest=b"\xA1" * 64, cert_digest=b"\xA2" * 64,
                           pubkey_digest=b"\xA3" * 64, meas_digest=b"\xA4" * 64,
                           report_digest=b"\xA5" * 64, vsmmu_addr=0x5000,
                           vsmmu_vsid=9).pack()
    assert len(info) == 512
    assert (_u64(info, 0x00), _u64(info, 0x08), info[0x10]) == (1, 2, 1)
    assert (_u64(info, 0x18), _u64(info, 0x20), _u64(info, 0x28)) == (0x11, 0x22, 0x33)
    assert (info[0x30], _u64(info, 0x38), info[0x40]) == (1, 0x10000, 2)
    for off, byte in ((0x80, 0xA1), (0xC0, 0xA2), (0x100, 0xA3), (0x140, 0xA4),
                      (0x180, 0xA5)):
        assert info[off:off + 64] == bytes([byte]) * 64
    assert (_u64(info, 0x1C0), _u64(info, 0x1C8)) == (0x5000, 9)


def test_rsi_host_call_and_rec_run_offsets() -> None:
    hc = abi.RsiHostCall(imm=0x1234, gprs=struct.pack("<31Q", *range(31))).pack()
    assert len(hc) == 256 and struct.unpack_from("<H", hc, 0)[0] == 0x1234
    assert _u64(hc, 8) == 0 and _u64(hc, 8 + 8 * 30) == 30
    # rmi_rec_run (TF-RMM): exit @0x800, exit.gprs @exit+0x200, exit.imm @exit+0x600
    ex = abi.RecExitHostCall(exit_reason=5, gprs=struct.pack("<31Q", *range(100, 131)),
                             imm=7).pack()
    assert _u64(ex, 0) == 5 and _u64(ex, 0x200) == 100 and \
        struct.unpack_from("<I", ex, 0x600)[0] == 7
    assert (abi.RMI_REC_RUN_ENTER_GPRS, abi.RMI_REC_RUN_EXIT, abi.RMI_REC_RUN_EXIT_GPRS,
            abi.RMI_REC_RUN_EXIT_IMM) == (0x200, 0x800, 0xA00, 0xE00)


def test_rhi_common_numbers() -> None:
    # C.7: FID 0xC5000000 + n
    assert (abi.RHI_DA_VERSION, abi.RHI_DA_FEATURES, abi.RHI_DA_OBJECT_SIZE,
            abi.RHI_DA_OBJECT_READ, abi.RHI_DA_VDEV_CONTINUE, abi.RHI_DA_VDEV_SET_TDI_STATE,
            abi.RHI_DA_VDEV_P2P_UNBIND, abi.RHI_DA_VDEV_ABORT) == (
        0xC500004A, 0xC500004B, 0xC500004C, 0xC500004D, 0xC5000051, 0xC5000054,
        0xC5000055, 0xC5000056)
    assert [(s.name, s.value) for s in abi.RhiDaStatus] == [
        ("SUCCESS", 0), ("INCOMPLETE", 1), ("DATA_NOT_AVAILABLE", 2), ("INVALID_VDEV_ID", 3),
        ("INVALID_OBJECT", 4), ("INPUT", 5), ("DEVICE", 6), ("INVALID_OFFSET", 7),
        ("ACCESS_FAILED", 8), ("BUSY", 9), ("ABORTED_OPERATION_HAD_COMPLETED", 10),
        ("OBJECT_UNSUPPORTED", 11)]
    assert [s.value for s in abi.RhiTdiState] == [0, 1, 2]   # CONFIG_UNLOCKED LOCKED RUN
    assert abi.RHI_NOT_SUPPORTED == 0xFFFFFFFFFFFFFFFF


@pytest.mark.parametrize("layout,meas,report,vca,read_regs", [
    # ACS RHI 1.0-bet1: GET_MEASUREMENTS 0x52, GET_INTERFACE_REPORT 0x53, VCA 0,
    # OBJECT_READ [3] buffer, [4] max_len, [5] offset
    ("rhi-1.0-bet1", 0xC5000052, 0xC5000053, 0, (3, 4, 5)),
    # Linux RFC v4: the numbers swapped, VCA 4, OBJECT_READ [3] offset, [4] max_len, [5] buffer
    ("linux-rfc-v4", 0xC5000053, 0xC5000052, 4, (5, 4, 3)),
])
def test_rhi_layouts_disagree_where_documented(layout: str, meas: int, report: int,
                                               vca: int, read_regs: tuple[int, ...]) -> None:
    lay = rhi.LAYOUTS[layout]
    assert (lay.get_measurements, lay.get_interface_report) == (meas, report)
    assert lay.object_id(rhi.RhiObject.VCA) == vca
    assert lay.object_id(rhi.RhiObject.CERTIFICATE) == 1
    assert lay.object_id(rhi.RhiObject.MEASUREMENT) == 2
    assert lay.object_id(rhi.RhiObject.INTERFACE_REPORT) == 3
    assert (lay.read_buffer, lay.read_max_len, lay.read_offset) == read_regs
    assert rhi.DEFAULT_LAYOUT == "rhi-1.0-bet1"


def test_linux_measurement_params_layout() -> None:
    # Linux RFC v4: {u64 flags @0; u8 indices[32] @0x100; u8 nonce[32] @0x200}, 768 B
    raw = rhi.LinuxMeasureParams(flags=0b11, indices=b"\x01" * 32, nonce=b"\x02" * 32).pack()
    assert len(raw) == 768 and _u64(raw, 0) == 3
    assert raw[0x100:0x120] == b"\x01" * 32 and raw[0x200:0x220] == b"\x02" * 32
    assert rhi.LINUX_RFC_V4.measure_raw_bit == 1 << 1     # SIGNED b0, RAW b1, EXCHANGE b2
