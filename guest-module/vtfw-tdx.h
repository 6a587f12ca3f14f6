/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vtfw: Intel TDX Connect and P-SEAMLDR numbers (reference/firmware-abi.md
 * section B; docs/platform-tdx.md).  Host SEAMCALLs travel in the port's HOST
 * window, TDCALLs in its GUEST window: FID = the leaf (RAX), ARG0..9 = RCX,
 * RDX, R8..R15, RES0 = RAX (status), RES1..10 = RCX, RDX, R8..R15.
 *
 * [MODEL] marks what no public source defines (vfiouser_tdisp/tsm/tdx/model.py
 * of the emulator is the one place those choices are made).
 */
#ifndef _VTFW_TDX_H
#define _VTFW_TDX_H

#include <linux/bits.h>
#include <linux/types.h>

struct vtfw_port;

/* register positions in the port's argument/result lists */
enum tdx_reg { TDX_RCX, TDX_RDX, TDX_R8, TDX_R9, TDX_R10, TDX_R11, TDX_R12, TDX_R13,
	       TDX_R14, TDX_R15, TDX_NR_REGS };

/* host SEAMCALL leaves (Linux arch/x86/virt/vmx/tdx/tdx.h, TDX Connect series) */
#define TDH_VP_ENTER		0	/* [MODEL] as the VMCALL exit of the one TD */
#define TDH_SYS_RD		34
#define TDH_SYS_LP_INIT		35
#define TDH_SYS_SHUTDOWN	52
#define TDH_SYS_UPDATE		53
#define TDH_IOMMU_SETUP		128
#define TDH_IOMMU_CLEAR		129
#define TDH_SPDM_CREATE		130
#define TDH_SPDM_DELETE		131
#define TDH_IDE_STREAM_CREATE	132
#define TDH_IDE_STREAM_BLOCK	133
#define TDH_IDE_STREAM_DELETE	134
#define TDH_IDE_STREAM_KM	135
#define TDH_SPDM_CONNECT	142
#define TDH_SPDM_DISCONNECT	143
#define TDH_SPDM_MNG		144

/* [MODEL] host TDI calls: not public (firmware-abi.md B.5, F.1); in one place */
#define TDH_TDI_BIND		137
#define TDH_TDI_START		138
#define TDH_TDI_STOP		139
#define TDH_TDI_UNBIND		140
#define TDH_TDI_STATE		136	/* the device's TDISP state -> RCX (TD view 0-3) */
#define TDH_TDI_REPORT		141	/* the report read from the device again */
#define TDH_DMAR_ADD		150
#define TDH_DMAR_REMOVE		153
#define TDH_MMIO_MAP		158
#define TDH_MMIO_UNMAP		160

/* P-SEAMLDR (SEAMCALL with RAX bit 63) */
#define SEAMLDR_INFO		0x8000000000000000ULL
#define SEAMLDR_INSTALL		0x8000000000000001ULL

/* TDCALL leaves ([ISTG]) */
#define TDG_VP_VMCALL		0
#define TDG_TDI_RD		67
#define TDG_TDI_START		68
#define TDG_DMAR_ACCEPT		70
#define TDG_MMIO_ACCEPT		71

/* statuses */
#define TDX_SUCCESS				0ULL
#define TDX_INTERRUPTED_RESUMABLE		0x8000000300000000ULL
#define TDX_OPERAND_BUSY			0x8000020000000000ULL
#define TDX_OPERAND_INVALID			0xC000010000000000ULL
#define TDX_TDI_NOT_PRESENT			0xC0000F4000000000ULL
#define TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH	0xC0000F4500000000ULL
#define TDX_SPDM_REQUEST			0xC0000F5700000000ULL
#define TDX_STATUS_CLASS(s)			((s) & 0xFFFFFFFF00000000ULL)

#define SEAMLDR_SUCCESS		0ULL
#define SEAMLDR_EBADPARAM	0x8000000000000000ULL
#define SEAMLDR_EBADCALL	0x8000000000000003ULL
#define SEAMLDR_EBADHANDOFF	0x8000000000000004ULL
#define SEAMLDR_EUNSUPPORTED	0x8000000000000006ULL
#define SEAMLDR_EBADSIG		0x8000000000020000ULL
#define SEAMLDR_EBADHASH	0x8000000000020001ULL

/* hpa_array_t (Linux tdx.c): a page, or a root page listing entries - 1 + 1 pages */
#define HPA_ARRAY_SIZE_SHIFT	55
#define TDX_NO_PAGE		(~0ULL)

/* TDH.SPDM.MNG operations, TDH.IDE.STREAM.KM operations [MODEL encodings] */
#define TDX_SPDM_MNG_HEARTBEAT	0
#define TDX_SPDM_MNG_KEY_UPDATE	1
#define TDX_IDE_KM_SETUP	0
#define TDX_IDE_KM_STOP		2

/* spdm_config_info_t ([ITDX]) */
#define VMM_SPDM_CAP_HBEAT	BIT(13)
#define VMM_SPDM_CAP_KEY_UPD	BIT(14)
#define SPDM_CONF_CAP		0x00	/* u32 vmm_spdm_cap */
#define SPDM_CONF_SLOT_MASK	0x05	/* u8 certificate_slot_mask */

/* stream_info (TDH.IDE.STREAM.CREATE RCX): TYPE bit 8 = selective */
#define TDX_STREAM_INFO_SELECTIVE	BIT(8)

/* TDH.SYS.RD global metadata fields (Linux tdx_global_metadata.c) */
#define TDX_MD_MINOR_VERSION	0x0800000100000003ULL
#define TDX_MD_MAJOR_VERSION	0x0800000100000004ULL
#define TDX_MD_UPDATE_VERSION	0x0800000100000005ULL
#define TDX_MD_FEATURES0	0x0A00000300000008ULL
#define TDX_FEATURES0_TD_PRESERVING	BIT_ULL(1)

/* TDH.VP.ENTER exit reasons */
#define EXIT_REASON_TDCALL	77

/* TDG.TDI.RD fields: public 2 and 5, [MODEL] 3 and 4 (SHA-384 at R8's GPA) */
#define TDI_RD_TDISP_STATE	2
#define TDI_RD_REPORT_HASH	3
#define TDI_RD_DEVICE_INFO_HASH	4
#define TDI_RD_BIND_SESSION_ID	5
#define TDX_HASH_SIZE		48

/* TDI states as the TD sees them */
enum tdx_td_tdi_state { TDX_TDI_UNLOCKED, TDX_TDI_LOCKED, TDX_TDI_RUN, TDX_TDI_ERROR };

/* GHCI TDG.VP.VMCALL<TDCM> */
#define TDVMCALL_TDCM		0x10007
#define TDVMCALL_SUCCESS	0
#define TDVMCALL_RETRY		1

enum tdcm_op {
	TDCM_CHECK_TEEIO_SUPP = 1,
	TDCM_BIND = 2,
	TDCM_GET_DEV_INFO = 3,
	TDCM_GET_TDI_REPORT = 4,
	TDCM_START_TDI = 5,
	TDCM_GET_TDI_STATE = 6,
	TDCM_UNBIND = 7,
};

enum tdcm_status { TDCM_WAIT = 0, TDCM_COMPLETED = 1, TDCM_ERROR = 2 };

enum tdcm_error {
	TDCM_ERR_NONE = 0,
	TDCM_ERR_TDX_MODULE = 10,
	TDCM_ERR_TDXIO_DEVICE = 11,
	TDCM_ERR_SPDM_MESSAGE = 12,
	TDCM_ERR_IDE_KM_MESSAGE = 13,
	TDCM_ERR_TDISP_MESSAGE = 14,
	TDCM_ERR_INVALID_STATE = 15,
};

/* struct tdvmcall_tdcm ([ISTG] tdx_connect.c): the shared buffer */
#define TDCM_HDR_OPERATION		0x00	/* u16 */
#define TDCM_HDR_VERSION		0x02	/* u8 */
#define TDCM_HDR_STATUS		0x08	/* u8 */
#define TDCM_HDR_ERROR		0x09	/* u8 */
#define TDCM_HDR_DATA_LENGTH	0x10	/* u32 */
#define TDCM_HDR_DATA		0x14
#define TDCM_BUF_PAGES		20	/* room for a report of MAX_TDI_REPORT_SIZE (16 pages) */

/* [MODEL] statuses no public code gives (model.py) */
#define TDX_DEVICE_ERROR		0xC0000FF000000000ULL	/* | kind */
#define TDX_OBJECT_STATE_INCORRECT	0xC0000FF100000000ULL
#define TDX_DEVICE_ERROR_SPDM		2
#define TDX_DEVICE_ERROR_IDE_KM		3
#define TDX_DEVICE_ERROR_TDISP		4

/* [MODEL] dev_info header (TDH.SPDM.CONNECT out): chain, VCA, measurements follow */
#define DEV_INFO_CHAIN_LEN	0x0c
#define DEV_INFO_VCA_LEN	0x10
#define DEV_INFO_MEAS_LEN	0x14
#define DEV_INFO_HEADER_SIZE	0x20

/* seamldr_info (256 bytes, [PSL] = Linux asm/seamldr.h) */
#define SEAMLDR_INFO_SIZE		256
#define SEAMLDR_INFO_MINOR		0x12
#define SEAMLDR_INFO_MAJOR		0x14
#define SEAMLDR_INFO_UPDATE_VERSION	0x16
#define SEAMLDR_INFO_NUM_REMAINING	0x1c

/* seamldr_params (4 KiB) and the update image (Linux v7.2 seamldr.c) */
#define SEAMLDR_PARAMS_SCENARIO		0x04
#define SEAMLDR_PARAMS_SIGSTRUCT_PA	0x08
#define SEAMLDR_PARAMS_NUM_PAGES	0x78
#define SEAMLDR_PARAMS_PAGE_LIST	0x80
#define SEAMLDR_SCENARIO_UPDATE		1
#define SEAMLDR_MAX_NR_MODULE_PAGES	496
#define SEAMLDR_MAX_NR_SIG_PAGES	1

#define TDX_IMAGE_VERSION		0x00	/* u16, 0x200 */
#define TDX_IMAGE_SIGNATURE		0x04	/* "TDX-BLOB" */
#define TDX_IMAGE_SIG_PAGES		0x0c	/* u32 */
#define TDX_IMAGE_MOD_PAGES		0x10	/* u32 */
#define TDX_IMAGE_RESERVED		0x14	/* 4076 zero bytes */
#define TDX_IMAGE_HEADER_SIZE		4096
#define TDX_IMAGE_VERSION_2		0x200

/* shared between the host side and the TD side (vtfw-tdx-host.c) */
int vtfw_tdx_call(struct vtfw_port *port, int guest, u64 leaf, const u64 *regs, u64 *out);
const char *vtfw_tdx_status_name(u64 status);
int vtfw_tdx_serve_tdcm(struct vtfw_port *port);

/* the TD side (vtfw-tdx-td.c) */
int vtfw_tdx_td_init(struct vtfw_port *port);
void vtfw_tdx_td_exit(struct vtfw_port *port);

#endif /* _VTFW_TDX_H */
