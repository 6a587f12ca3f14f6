"""SEV-TIO ABI on bytes: command ids, status codes, command buffers, SLA buffers, data
objects, guest messages and the SNP message framing.

Expected values are written out here from reference/firmware-abi.md section D (sources:
[AMDESE] include/linux/psp-sev.h and drivers/crypto/ccp/sev-dev-tio.c, [SEV-P2]/[OVMM] for
the guest interface) and from the SEV-SNP Firmware ABI's snp_guest_msg_hdr (AES-256-GCM,
IV = sequence number, AAD = header from `algo`), built with struct.pack and the
`cryptography` AEAD directly, not with the code under test.
"""

from __future__ import annotations

import struct
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vfiouser_tdisp.tsm.sev_tio import abi
from vfiouser_tdisp.tsm.sev_tio.messages import GuestMessageError, open_message, seal


def test_command_ids_d2() -> None:
    """firmware-abi.md D.2 (enum sev_cmd)."""
    assert {c.name: c.value for c in abi.SevCmd if c.name.startswith("TIO_")} == {
        "TIO_STATUS": 0xD0, "TIO_INIT": 0xD1, "TIO_DEV_CREATE": 0xD2, "TIO_DEV_RECLAIM": 0xD3,
        "TIO_DEV_CONNECT": 0xD4, "TIO_DEV_DISCONNECT": 0xD5, "TIO_DEV_STATUS": 0xD6,
        "TIO_DEV_MEASUREMENTS": 0xD7, "TIO_DEV_CERTIFICATES": 0xD8, "TIO_TDI_CREATE": 0xDA,
        "TIO_TDI_RECLAIM": 0xDB, "TIO_TDI_BIND": 0xDC, "TIO_TDI_UNBIND": 0xDD,
        "TIO_TDI_REPORT": 0xDE, "TIO_TDI_STATUS": 0xDF, "TIO_GUEST_REQUEST": 0xE0,
        "TIO_ASID_FENCE_CLEAR": 0xE1, "TIO_ASID_FENCE_STATUS": 0xE2, "TIO_TDI_INFO": 0xE3,
        "TIO_ROLL_KEY": 0xE4}


def test_tio_status_codes_d2() -> None:
    """firmware-abi.md D.2 return codes (sev_ret_code)."""
    expect = {"INCORRECT_BUFFER_LENGTH": 0x30, "EXPAND_BUFFER_LENGTH_REQUEST": 0x31,
              "SPDM_REQUEST": 0x32, "SPDM_ERROR": 0x33, "ERR_IN_DEV_CONN": 0x35,
              "INVALID_DEV_CTX": 0x36, "INVALID_TDI_CTX": 0x37, "INVALID_TDI": 0x38,
              "RECLAIM_REQUIRED": 0x39, "IN_USE": 0x3A, "INVALID_DEV_STATE": 0x3B,
              "INVALID_TDI_STATE": 0x3C, "DEV_CERT_CHANGED": 0x3D, "RESYNC_REQ": 0x3E,
              "RESPONSE_TOO_LARGE": 0x3F}
    assert {n: abi.SevRet[n].value for n in expect} == expect
    # psp-sev.h values the PSP also answers with
    assert (abi.SevRet.INVALID_PLATFORM_STATE, abi.SevRet.INVALID_LEN,
            abi.SevRet.INVALID_ADDRESS, abi.SevRet.INVALID_COMMAND,
            abi.SevRet.INVALID_PARAM) == (0x01, 0x04, 0x09, 0x11, 0x16)


def test_sla_encoding() -> None:
    """sla_addr_t: page_type b0, page_size b1, pfn [51:12]; SLA_EOL = pfn all ones."""
    assert abi.make_sla(0x1234_5000) == 0x1234_5000
    assert abi.make_sla(0x1234_5000, scatter=True) == 0x1234_5001
    assert abi.SLA_EOL == 0x000F_FFFF_FFFF_F000
    with pytest.raises(ValueError):
        abi.make_sla(0x1234_5800)


def test_sla_buffer_header_and_dobj_headers() -> None:
    """sla_buffer_hdr (0x40): capacity_sz @0, payload_sz @4, flags @8, iv @0x10, authtag
    @0x20; spdm_dobj_hdr_req (0x10): id, length, ver{minor, major}, data_type; output
    headers (0x20): device_id @0x10, segment_id @0x12, type @0x13."""
    hdr = abi.SlaBufferHdr(capacity_sz=0x2000, payload_sz=0x60, flags=1,
                           iv=bytes(range(16)), authtag=bytes(range(16, 32))).pack()
    assert hdr == struct.pack("<III4s16s16s16s", 0x2000, 0x60, 1, bytes(4), bytes(range(16)),
                              bytes(range(16, 32)), bytes(16))
    assert len(hdr) == abi.SLA_BUFFER_HDR_SIZE == 0x40
    req = abi.SpdmDobjHdrReq(id=abi.SpdmDobjId.REQ, length=0x14,
                             data_type=abi.DobjDataType.SECURE_SPDM).pack()
    assert req == bytes.fromhex("01000000" "14000000" "0001" "02" "0000000000")
    out = abi.SpdmDobjHdrOutput(id=abi.SpdmDobjId.REPORT, length=0x64, device_id=0x0100,
                                segment_id=0, type=1).pack()
    assert out == bytes.fromhex("06000000" "64000000" "0001" + "00" * 6 + "0001" "00" "01"
                                + "00" * 12)
    assert [abi.SpdmDobjId.REQ, abi.SpdmDobjId.RESP, abi.SpdmDobjId.CERTIFICATE,
            abi.SpdmDobjId.MEASUREMENT, abi.SpdmDobjId.REPORT] == [1, 2, 4, 5, 6]


@pytest.mark.parametrize("cls,size", [
    (abi.TioStatusCmd, 0x10), (abi.TioInitCmd, 0x10), (abi.TioDevCreateCmd, 0x20),
    (abi.TioDevReclaimCmd, 0x10), (abi.TioDevConnectCmd, 0x50), (abi.TioDevDisconnectCmd, 0x30),
    (abi.TioDevStatusCmd, 0x20), (abi.TioDevMeasCmd, 0x50), (abi.TioDevCertsCmd, 0x30),
    (abi.TioTdiCreateCmd, 0x30), (abi.TioTdiReclaimCmd, 0x20), (abi.TioTdiBindCmd, 0x50),
    (abi.TioTdiUnbindCmd, 0x40), (abi.TioGuestRequestCmd, 0x50),
    (abi.TioAsidFenceClearCmd, 0x20), (abi.TioAsidFenceStatusCmd, 0x20),
    (abi.TioStatus, 0x40), (abi.SpdmCtrl, 0x20), (abi.SnpGuestMsgHdr, 0x60)])
def test_structure_sizes(cls: type, size: int) -> None:
    """Sizes of the sev-dev-tio.c structures (sum of their packed fields)."""
    assert cls.fixed_size() == size  # type: ignore[attr-defined]


CTRL = (0x1000, 0x3001, 0x5000, 0x7001)   # req, resp (scatter), scratch, output (scatter)


def ctrl() -> bytes:
    return abi.SpdmCtrl(*CTRL).pack()


def test_dev_create_and_connect_layout() -> None:
    want = bytearray(0x20)
    struct.pack_into("<IIQHHB", want, 0, 0x20, 0, 0xA000, 0x0100, 0x0008, 0)
    assert abi.TioDevCreateCmd(length=0x20, dev_ctx_sla=0xA000, device_id=0x0100,
                               root_port_id=0x0008).pack() == bytes(want)
    want = bytearray(0x50)
    struct.pack_into("<II4Q", want, 0, 0x50, 0, *CTRL)     # spdm_ctrl @0x08
    struct.pack_into("<QBB", want, 0x30, 0xA000, 0x01, 2)  # dev_ctx, tc_mask, cert_slot
    want[0x40:0x48] = bytes([5, 0, 0, 0, 0, 0, 0, 0])      # ide_stream_id[8] @0x40
    got = abi.TioDevConnectCmd(length=0x50, spdm_ctrl=ctrl(), dev_ctx_sla=0xA000, tc_mask=1,
                               cert_slot=2, ide_stream_id=bytes([5]) + bytes(7)).pack()
    assert got == bytes(want)


def test_tdi_bind_unbind_guest_request_layout() -> None:
    want = bytearray(0x50)
    struct.pack_into("<II4QQQQHHH", want, 0, 0x50, 0, *CTRL, 0xA000, 0xB000, 0xC000,
                     0x0300, 0x0001 | 0x0004, 0x0001)
    assert abi.TioTdiBindCmd(length=0x50, spdm_ctrl=ctrl(), dev_ctx_sla=0xA000,
                             tdi_ctx_sla=0xB000, gctx_paddr=0xC000, guest_device_id=0x0300,
                             tdisp_lock_if_flags=abi.TIO_TDI_BIND_FLAG_NO_FW_UPDATE
                             | abi.TIO_TDI_BIND_FLAG_LOCK_MSIX,
                             run_flags=abi.TIO_TDI_BIND_RUN_FORCE).pack() == bytes(want)
    assert abi.TioTdiUnbindCmd(length=0x40, flags=1, spdm_ctrl=ctrl(), dev_ctx_sla=0xA000,
                               tdi_ctx_sla=0xB000, gctx_paddr=0xC000).pack() == \
        struct.pack("<II4QQQQ", 0x40, 1, *CTRL, 0xA000, 0xB000, 0xC000)
    assert abi.TioGuestRequestCmd(length=0x50, spdm_ctrl=ctrl(), dev_ctx_sla=0xA000,
                                  tdi_ctx_sla=0xB000, gctx_paddr=0xC000, req_paddr=0xD000,
                                  res_paddr=0xE000).pack() == \
        struct.pack("<II4Q5Q", 0x50, 0, *CTRL, 0xA000, 0xB000, 0xC000, 0xD000, 0xE000)
    assert abi.TioTdiCreateCmd(length=0x30, dev_ctx_sla=0xA000, tdi_ctx_sla=0xB000,
                               function_id=0x0102).pack() == \
        struct.pack("<IIQQI8s12s", 0x30, 0, 0xA000, 0xB000, 0x0102, bytes(8), bytes(12))
    assert abi.TioDevMeasCmd(length=0x50, flags=1, spdm_ctrl=ctrl(), dev_ctx_sla=0xA000,
                             meas_nonce=bytes(range(32))).pack() == \
        struct.pack("<II4QQ32s", 0x50, 1, *CTRL, 0xA000, bytes(range(32)))
    assert abi.TioAsidFenceStatusCmd(length=0x20, dev_ctx_sla=0xA000, asid=7,
                                     status_pa=0xF000).pack() == \
        struct.pack("<I4sQIQ4s", 0x20, bytes(4), 0xA000, 7, 0xF000, bytes(4))


def test_tio_status_layout() -> None:
    data = struct.pack("<13I12s", 0x40, 0b11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, bytes(12))
    st = abi.TioStatus.unpack(data)
    assert (st.flags, st.spdm_req_size_min, st.spdm_req_size_max, st.spdm_scratch_size_min,
            st.spdm_scratch_size_max, st.spdm_out_size_min, st.spdm_out_size_max,
            st.spdm_rsp_size_min, st.spdm_rsp_size_max, st.devctx_size, st.tdictx_size,
            st.tio_crypto_alg) == (3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)


def test_guest_interface_numbers_d4() -> None:
    assert (abi.SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST, abi.SVM_VMGEXIT_SEV_TIO_OP) == \
        (0x80000020, 0x80000021)
    assert [abi.SevTioOp.BIND, abi.SevTioOp.UNBIND, abi.SevTioOp.RUN, abi.SevTioOp.STOP] == \
        [0, 1, 2, 3]
    assert [m.value for m in abi.TioMsgType] == list(range(19, 27))
    assert {s.name: s.value for s in abi.MmioValidateStatus} == {
        "SUCCESS": 0, "INVALID_TDI": 1, "TDI_UNBOUND": 2, "NOT_ASSIGNED": 3, "NOT_IO": 4,
        "NOT_UNIFORM": 5, "NOT_IMMUTABLE": 6, "NOT_MAPPED": 7, "NOT_REPORTED": 8,
        "OUT_OF_RANGE": 9, "NOT_4K": 10}
    assert {s.name: s.value for s in abi.SdteWriteStatus} == {
        "SUCCESS": 0, "INVALID_TDI": 1, "TDI_NOT_BOUND": 2, "RESERVED": 3}
    assert [abi.TdiStatus.BOUND, abi.TdiStatus.INVALID, abi.TdiStatus.UNBOUND] == [0, 1, 2]
    assert abi.GUID_MEASUREMENTS == uuid.UUID("5caa80c6-12ef-401a-b364-ec59a93abe3f")
    assert abi.GUID_CERTIFICATES == uuid.UUID("078ccb75-2644-49e8-afe7-5686c5cf72f1")
    assert abi.GUID_REPORT == uuid.UUID("70dc5b0e-0cc0-4cd5-97bb-ff0ba25bf320")


def test_guest_message_layouts_d4() -> None:
    assert [c.fixed_size() for c in (  # type: ignore[attr-defined]
        abi.TioMsgTdiInfoReq, abi.TioMsgTdiInfoRsp, abi.TioMsgMmioValidateReq,
        abi.TioMsgMmioValidateRsp, abi.TioMsgMmioConfigReq, abi.TioMsgMmioConfigRsp,
        abi.TioMsgSdteWriteReq, abi.TioMsgSdteWriteRsp)] == [16, 192, 48, 48, 16, 16, 80, 16]
    want = bytearray(192)
    struct.pack_into("<HH12sIIQ", want, 0, 0x0300, 2, bytes(12), 0b11, 0x5, 0x0000_0002_0000_0010)
    want[0x20:0x50], want[0x50:0x80], want[0x80:0xB0] = b"\1" * 48, b"\2" * 48, b"\3" * 48
    struct.pack_into("<Q", want, 0xB0, 4)
    assert abi.TioMsgTdiInfoRsp(
        guest_device_id=0x0300, tdi_status=abi.TdiStatus.UNBOUND, meas_digest_info=3,
        lock_flags=5, spdm_algos=0x0000_0002_0000_0010, certs_digest=b"\1" * 48,
        meas_digest=b"\2" * 48, interface_report_digest=b"\3" * 48,
        tdi_report_count=4).pack() == bytes(want)
    assert abi.TioMsgMmioValidateReq(
        guest_device_id=0x0300, subrange_base=0xE000_4000, subrange_page_count=2,
        range_offset=1, flags=abi.MMIO_VALIDATE_FLAG_VALIDATED, range_id=4).pack() == \
        struct.pack("<H14sQIIHH12s", 0x0300, bytes(14), 0xE000_4000, 2, 1, 1, 4, bytes(12))
    rsp = abi.TioMsgMmioValidateRsp.unpack(
        struct.pack("<HH12sQIIHH12s", 0x0300, 9, bytes(12), 0xE000_4000, 2, 1, 0, 4, bytes(12)))
    assert (rsp.status, rsp.range_id) == (abi.MmioValidateStatus.OUT_OF_RANGE, 4)
    assert abi.TioMsgMmioConfigReq(guest_device_id=1, flags=4, range_id=2, write=1).pack() == \
        struct.pack("<H2sHHI4s", 1, bytes(2), 4, 2, 1, bytes(4))
    sdte = struct.pack("<Q", (1 << 0) | (1 << 61) | (1 << 62)) + bytes(56)
    assert abi.TioMsgSdteWriteReq(guest_device_id=1, sdte=sdte).pack() == \
        struct.pack("<H14s", 1, bytes(14)) + sdte


KEY = bytes(range(32))


def reference_seal(key: bytes, msg_type: int, seqno: int, payload: bytes) -> bytes:
    """snp_guest_msg_hdr + AES-256-GCM, built from the ABI description alone."""
    tail = struct.pack("<BBHBBH4sB35s", 1, 1, 0x60, msg_type, 1, len(payload), bytes(4), 0,
                       bytes(35))                                # @0x30..0x60: the AAD
    ct = AESGCM(key).encrypt(struct.pack("<Q4x", seqno), payload, tail)
    return ct[-16:] + bytes(16) + struct.pack("<Q8s", seqno, bytes(8)) + tail + ct[:-16]


def test_sealed_message_matches_the_snp_framing() -> None:
    payload = abi.TioMsgTdiInfoReq(guest_device_id=0x0300).pack()
    assert seal(KEY, 19, 5, payload) == reference_seal(KEY, 19, 5, payload)
    msg = open_message(KEY, reference_seal(KEY, 21, 7, b"x" * 48))
    assert (msg.msg_type, msg.seqno, msg.payload) == (21, 7, b"x" * 48)


@pytest.mark.parametrize("where", [0x00, 0x20, 0x34, 0x36 + 2, 0x60])
def test_tampered_message_is_refused(where: int) -> None:
    """A flipped bit in the tag, the sequence number (IV), the type (AAD) or the
    ciphertext fails authentication; msg_sz beyond the page fails before."""
    data = bytearray(reference_seal(KEY, 19, 5, bytes(16)))
    data[where] ^= 1
    with pytest.raises(GuestMessageError):
        open_message(KEY, bytes(data))
    with pytest.raises(GuestMessageError):
        open_message(bytes(32), reference_seal(KEY, 19, 5, bytes(16)))
