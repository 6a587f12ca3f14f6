"""The TDX Connect / P-SEAMLDR ABI on bytes: every number and offset written out here from
the sources reference/firmware-abi.md section B cites, not taken from the code under test.

[TDXC1]/[ITDX]: Linux arch/x86/virt/vmx/tdx/tdx.h + tdx.c of the TDX Connect series;
[ISTG]: intel-staging arch/x86/coco/tdx/tdx_connect.c; [PSL]: P-SEAMLDR
pseamldr_api_defs.h; [TV]: Linux v7.2 arch/x86/include/asm/seamldr.h, seamldr.c.
"""

from __future__ import annotations

import struct

import pytest

from vfiouser_tdisp.tsm.tdx import abi, model
from vfiouser_tdisp.tsm.tdx.abi import (
    SeamcallLeaf,
    SeamldrLeaf,
    SeamldrStatus,
    TdcallLeaf,
    TdxStatus,
    spec_name,
)


def test_host_seamcall_leaves() -> None:
    # firmware-abi.md B.4 table (Linux tdx.h [TDXC1]/[ITDX]); B.1/B.2 TDH.SYS.* (Linux tdx.h)
    expected = {"TDH.IOMMU.SETUP": 128, "TDH.IOMMU.CLEAR": 129, "TDH.SPDM.CREATE": 130,
                "TDH.SPDM.DELETE": 131, "TDH.IDE.STREAM.CREATE": 132,
                "TDH.IDE.STREAM.BLOCK": 133, "TDH.IDE.STREAM.DELETE": 134,
                "TDH.IDE.STREAM.KM": 135, "TDH.SPDM.CONNECT": 142,
                "TDH.SPDM.DISCONNECT": 143, "TDH.SPDM.MNG": 144, "TDH.SYS.RD": 34,
                "TDH.SYS.LP.INIT": 35, "TDH.SYS.SHUTDOWN": 52, "TDH.SYS.UPDATE": 53,
                "TDH.VP.ENTER": 0}
    assert {spec_name(leaf): int(leaf) for leaf in SeamcallLeaf} == expected


def test_seamldr_leaves_and_statuses() -> None:
    # B.1: RAX bit 63 set; statuses from [PSL]
    assert [int(x) for x in SeamldrLeaf] == [0x8000000000000000 + i for i in range(5)]
    assert spec_name(SeamldrLeaf.SEAMLDR_INSTALL) == "SEAMLDR.INSTALL"
    assert {s.name: int(s) for s in SeamldrStatus} == {
        "SEAMLDR_SUCCESS": 0, "EBADPARAM": 0x8000000000000000,
        "EBADCALL": 0x8000000000000003, "EBADHANDOFF": 0x8000000000000004,
        "ECLEANUPREQ": 0x8000000000000005, "EUNSUPPORTED": 0x8000000000000006,
        "ENOMEM": 0x8000000000010002, "EUNSPECERR": 0x8000000000010003,
        "EUNSUPCPU": 0x8000000000010004, "EBADSIG": 0x8000000000020000,
        "EBADHASH": 0x8000000000020001, "EINTERRUPT": 0x8000000000030000,
        "ENOENTROPY": 0x8000000000030001}


def test_tdcall_leaves_and_fields() -> None:
    # B.6 ([ISTG]); TDG.VP.VMCALL is TDCALL leaf 0 (GHCI)
    assert {spec_name(x): int(x) for x in TdcallLeaf} == {
        "TDG.VP.VMCALL": 0, "TDG.TDI.RD": 67, "TDG.TDI.START": 68, "TDG.DMAR.ACCEPT": 70,
        "TDG.MMIO.ACCEPT": 71}
    assert int(abi.TdiRdField.TDISP_STATE) == 2 and int(abi.TdiRdField.BIND_SESSION_ID) == 5
    assert [int(s) for s in abi.TdTdiState] == [0, 1, 2, 3]     # UNLOCKED LOCKED RUN ERROR
    assert abi.TDG_VP_VMCALL_TDCM == 0x10007


def test_tdx_status_codes() -> None:
    # B.4 ([TDXC1]) and B.6 ([ISTG]: the upper 32 bits of the 64-bit status)
    assert TdxStatus.TDX_SPDM_REQUEST == 0xC0000F5700000000
    assert TdxStatus.TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH == 0xC0000F4500000000
    assert TdxStatus.TDX_INTERRUPTED_RESUMABLE == 0x8000000300000000
    assert TdxStatus.TDX_TDI_NOT_PRESENT >> 32 == 0xC0000F40
    assert TdxStatus.TDX_TDI_INVALID_METADATA >> 32 == 0xC0000F41
    assert TdxStatus.TDX_OPERAND_INVALID >> 32 == 0xC0000100
    assert TdxStatus.TDX_OPERAND_BUSY >> 32 == 0x80000200
    # an operand error names the register in the low bits: RCX 1, RDX 2, R8 8 ...
    assert abi.operand_status(TdxStatus.TDX_OPERAND_INVALID, abi.OperandId.RDX) == \
        0xC000010000000002
    # the modeled codes sit in a range no public code uses
    for code in (model.TDX_DEVICE_ERROR, model.TDX_OBJECT_STATE_INCORRECT,
                 model.TDX_MODULE_SHUT_DOWN):
        assert code >> 36 == 0xC0000FF and code not in {int(s) for s in TdxStatus}


def test_operation_encodings() -> None:
    # B.4: MNG op HEARTBEAT 0 KEY_UPDATE 1 RECOLLECT 2; [TDXC1] tdx-host.c KM ops
    assert [int(x) for x in abi.SpdmMngOp] == [0, 1, 2]
    assert {x.name: int(x) for x in abi.IdeStreamKmOp} == {"SETUP": 0, "REFRESH": 1, "STOP": 2}
    # spdm_config_info_t: vmm_spdm_cap bit 13 HBEAT, bit 14 KEY_UPD ([ITDX])
    assert abi.VMM_SPDM_CAP_HBEAT == 0x2000 and abi.VMM_SPDM_CAP_KEY_UPD == 0x4000
    conf = abi.SpdmConfigInfo(vmm_spdm_cap=0x6000, spdm_session_policy=0x5,
                              certificate_slot_mask=0xFF, raw_bitstream_requested=1)
    assert conf.pack() == bytes.fromhex("00600000" "05" "ff" "01")


def test_hpa_array_encoding() -> None:
    # Linux tdx.c union hpa_array_t: rsvd0:12, pfn:40, rsvd1:3, array_size:9 (= nents - 1)
    assert abi.hpa_array(0x12345000) == 0x12345000
    assert abi.hpa_array(0x12345000, 4) == 0x12345000 | (3 << 55)
    assert abi.hpa_array(0x12345000, 512) == 0x12345000 | (511 << 55)


def test_global_metadata_fields() -> None:
    # Linux tdx_global_metadata.c get_tdx_sys_info_version(), TDX_FEATURES0 TD_PRESERVING BIT(1)
    assert abi.SysMetadataField.MINOR_VERSION == 0x0800000100000003
    assert abi.SysMetadataField.MAJOR_VERSION == 0x0800000100000004
    assert abi.SysMetadataField.UPDATE_VERSION == 0x0800000100000005
    assert abi.TDX_FEATURES0_TD_PRESERVING == 2


def test_tdcm_header_layout() -> None:
    """struct tdvmcall_tdcm {u16 operation; u8 version; u8 rsvd0; u32 rsvd1; u8 status;
    u8 error; u16 rsvd2; u32 rsvd3; u32 data_length; u8 data[];} ([ISTG])."""
    msg = abi.TdvmcallTdcm(operation=4, version=0, status=1, error=0, data_length=3,
                           data=b"abc")
    assert msg.pack() == struct.pack("<HBBIBBHII", 4, 0, 0, 0, 1, 0, 0, 0, 3) + b"abc"
    assert abi.TDCM_HEADER_SIZE == 20
    assert {o.name: int(o) for o in abi.TdcmOperation} == {
        "CHECK_TEEIO_SUPP": 1, "BIND": 2, "GET_DEV_INFO": 3, "GET_TDI_REPORT": 4,
        "START_TDI": 5, "GET_TDI_STATE": 6, "UNBIND": 7}
    assert [int(s) for s in abi.TdcmStatus] == [0, 1, 2]                 # WAIT COMPLETED ERROR
    assert {e.name: int(e) for e in abi.TdcmError if e.name != "NONE"} == {
        "TDX_MODULE": 10, "TDXIO_DEVICE": 11, "SPDM_MESSAGE": 12, "IDE_KM_MESSAGE": 13,
        "TDISP_MESSAGE": 14, "INVALID_STATE": 15}
    assert abi.MAX_TDI_REPORT_SIZE == 16 * 4096


def test_seamldr_info_offsets() -> None:
    """seamldr_info (256 B), B.1 table: [PSL] and Linux seamldr.h agree byte for byte."""
    info = abi.SeamldrInfo(version=0x11, attributes=0x80000000, vendor_id=0x8086,
                           build_date=20260601, build_num=0x1234, minor=0x0102, major=0x0304,
                           reserved_0=0x0506, acm_x2apic=0x0708090A,
                           num_remaining_updates=0x0B0C0D0E, valid=1, minor_svn=0x21,
                           major_svn=0x22, last_patch_se_svn=0x23, mrseam=b"\x31" * 48,
                           mrsigner=b"\x32" * 48, seam_attributes=0x41, seam_ready=1,
                           system_under_debug=2, p_seamldr_ready=3, features0=0x2)
    b = info.pack()
    assert len(b) == 256
    u16 = lambda off: struct.unpack_from("<H", b, off)[0]  # noqa: E731
    u32 = lambda off: struct.unpack_from("<I", b, off)[0]  # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", b, off)[0]  # noqa: E731
    assert (u32(0x00), u32(0x04), u32(0x08), u32(0x0C)) == (0x11, 0x80000000, 0x8086, 20260601)
    assert (u16(0x10), u16(0x12), u16(0x14), u16(0x16)) == (0x1234, 0x0102, 0x0304, 0x0506)
    assert (u32(0x18), u32(0x1C)) == (0x0708090A, 0x0B0C0D0E)
    assert u64(0x20) == 1 and b[0x28:0x2B] == bytes([0x21, 0x22, 0x23])
    assert b[0x38:0x68] == b"\x31" * 48 and b[0x68:0x98] == b"\x32" * 48
    assert u64(0x98) == 0x41 and b[0xA0:0xA3] == bytes([1, 2, 3])
    assert u64(0xA8) == 2 and b[0xB0:] == bytes(80)


def test_seamldr_params_offsets() -> None:
    """seamldr_params (4 KiB): u32 version; u32 scenario; u64 sigstruct_pa; u8 reserved[104];
    u64 num_module_pages; u64 mod_pages_pa_list[496] ([PSL], Linux seamldr.c)."""
    p = abi.SeamldrParams(version=0, scenario=1, sigstruct_pa=0x1000, num_module_pages=2,
                          mod_pages_pa_list=abi.SeamldrParams.page_list([0x2000, 0x3000]))
    b = p.pack()
    assert len(b) == 4096
    assert struct.unpack_from("<IIQ", b, 0) == (0, 1, 0x1000)
    assert b[0x10:0x78] == bytes(104)
    assert struct.unpack_from("<QQQ", b, 0x78) == (2, 0x2000, 0x3000)
    assert abi.SEAMLDR_MAX_NR_MODULE_PAGES == 496 and abi.SEAMLDR_MAX_NR_SIG_PAGES == 1


def test_tdx_image_header_layout() -> None:
    """struct tdx_image_header {u16 version; u16 checksum; u8 signature[8]; u32
    sigstruct_nr_pages; u32 module_nr_pages; u8 reserved[4076];} (Linux seamldr.c v7.2)."""
    h = abi.TdxImageHeader(version=0x200, checksum=0xBEEF, signature=b"TDX-BLOB",
                           sigstruct_nr_pages=1, module_nr_pages=496)
    b = h.pack()
    assert len(b) == 4096
    assert b[:0x14] == bytes.fromhex("0002" "efbe") + b"TDX-BLOB" + \
        bytes.fromhex("01000000" "f0010000")
    assert b[0x14:] == bytes(4076)


def test_state_tables_are_closed() -> None:
    """Every target state is a state of the same machine; the TD view covers every TDI
    state and uses only the four public values."""
    from vfiouser_tdisp.tsm.tdx import module as mod
    for table, states in ((mod.SPDM_TRANSITIONS, mod.SpdmState),
                          (mod.STREAM_TRANSITIONS, mod.StreamState),
                          (mod.TDI_TRANSITIONS, mod.TdiState),
                          (mod.MODULE_TRANSITIONS, mod.ModuleState)):
        for (src, _trigger), dst in table.items():
            assert isinstance(src, states) and isinstance(dst, states)
    assert set(mod.TD_VIEW) == set(mod.TdiState)
    assert set(mod.TD_VIEW.values()) == set(abi.TdTdiState)


@pytest.mark.parametrize("leaf", list(model.HostTdiLeaf))
def test_modeled_leaves_do_not_collide(leaf: model.HostTdiLeaf) -> None:
    assert int(leaf) not in {int(x) for x in SeamcallLeaf}
