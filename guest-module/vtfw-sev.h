/* SPDX-License-Identifier: GPL-2.0 */
/*
 * AMD SEV-TIO as the vtfw module uses it: PSP command ids and buffers, SEV
 * status codes, the SEV-TIO VMGEXITs and the TIO guest messages.
 *
 * Numbers and layouts from the project's reference/firmware-abi.md section D
 * (enum sev_cmd / sev_ret_code of psp-sev.h and the sev_data_tio_* buffers of
 * sev-dev-tio.c in AMD's tsm-staging tree; guest message types and layouts of
 * the phase-2 guest series).  Layouts no public source gives (TIO_TDI_STATUS
 * output) follow the PSP emulator's model (vfiouser_tdisp/tsm/sev_tio/model.py).
 * PSP commands go through the firmware port's host window: FID = command id,
 * ARG0 = physical address of the command buffer, RES0 = SEV status.
 */
#ifndef _VTFW_SEV_H
#define _VTFW_SEV_H

#include <linux/bits.h>
#include <linux/build_bug.h>
#include <linux/stddef.h>
#include <linux/types.h>

/* enum sev_cmd */
#define SEV_CMD_SNP_GCTX_CREATE		0x93
#define SEV_CMD_SNP_LAUNCH_UPDATE	0xa1
#define SEV_CMD_TIO_STATUS		0xd0
#define SEV_CMD_TIO_INIT		0xd1
#define SEV_CMD_TIO_DEV_CREATE		0xd2
#define SEV_CMD_TIO_DEV_RECLAIM		0xd3
#define SEV_CMD_TIO_DEV_CONNECT		0xd4
#define SEV_CMD_TIO_DEV_DISCONNECT	0xd5
#define SEV_CMD_TIO_TDI_CREATE		0xda
#define SEV_CMD_TIO_TDI_RECLAIM		0xdb
#define SEV_CMD_TIO_TDI_BIND		0xdc
#define SEV_CMD_TIO_TDI_UNBIND		0xdd
#define SEV_CMD_TIO_TDI_REPORT		0xde
#define SEV_CMD_TIO_TDI_STATUS		0xdf
#define SEV_CMD_TIO_GUEST_REQUEST	0xe0

/* enum sev_ret_code */
#define SEV_RET_SUCCESS				0x00
#define SEV_RET_INVALID_LEN			0x04
#define SEV_RET_INVALID_PARAM			0x16
#define SEV_RET_EXPAND_BUFFER_LENGTH_REQUEST	0x31
#define SEV_RET_SPDM_REQUEST			0x32
#define SEV_RET_INVALID_TDI			0x38
#define SEV_RET_INVALID_TDI_STATE		0x3c

#define TIO_STATUS_FLAG_INIT_DONE	BIT(1)

/* sla_addr_t: page_type b0 (DATA 0, SCATTER 1), page_size b1 (4K 0), pfn [51:12] */
#define SLA_SCATTER			BIT_ULL(0)
#define SLA_EOL				GENMASK_ULL(51, 12)

struct sla_buffer_hdr {
	__le32 capacity_sz;
	__le32 payload_sz;
	__le32 flags;
	u8 rsvd1[4];
	u8 iv[16];
	u8 authtag[16];
	u8 rsvd2[16];
} __packed;
static_assert(sizeof(struct sla_buffer_hdr) == 0x40);

#define SPDM_DOBJ_ID_REQ		1
#define SPDM_DOBJ_ID_RESP		2
#define SPDM_DOBJ_ID_CERTIFICATE	4
#define SPDM_DOBJ_ID_MEASUREMENT	5
#define SPDM_DOBJ_ID_REPORT		6
#define SPDM_DOBJ_VERSION		0x0100
#define SPDM_DATA_TYPE_SPDM		1
#define SPDM_DATA_TYPE_SECURE_SPDM	2

/* spdm_dobj_hdr_req / _resp: length includes the header */
struct spdm_dobj_hdr_req {
	__le32 id;
	__le32 length;
	__le16 version;
	u8 data_type;
	u8 rsvd[5];
} __packed;
static_assert(sizeof(struct spdm_dobj_hdr_req) == 0x10);

/* spdm_dobj_hdr_cert / _meas / _report in the output buffer */
struct spdm_dobj_hdr_out {
	__le32 id;
	__le32 length;
	__le16 version;
	u8 rsvd1[6];
	__le16 device_id;
	u8 segment_id;
	u8 type;
	u8 rsvd2[12];
} __packed;
static_assert(sizeof(struct spdm_dobj_hdr_out) == 0x20);

struct spdm_ctrl {
	__le64 req;
	__le64 resp;
	__le64 scratch;
	__le64 output;
} __packed;

struct sev_data_tio_status {
	__le32 length;
	u8 rsvd[4];
	__le64 status_paddr;
} __packed;

struct sev_tio_status {
	__le32 length;
	__le32 flags;
	__le32 spdm_req_size_min;
	__le32 spdm_req_size_max;
	__le32 spdm_scratch_size_min;
	__le32 spdm_scratch_size_max;
	__le32 spdm_out_size_min;
	__le32 spdm_out_size_max;
	__le32 spdm_rsp_size_min;
	__le32 spdm_rsp_size_max;
	__le32 devctx_size;
	__le32 tdictx_size;
	__le32 tio_crypto_alg;
	u8 rsvd[12];
} __packed;
static_assert(sizeof(struct sev_tio_status) == 0x40);
static_assert(offsetof(struct sev_tio_status, devctx_size) == 0x28);

struct sev_data_tio_init {
	__le32 length;
	u8 rsvd[12];
} __packed;

struct sev_data_tio_dev_create {
	__le32 length;
	u8 rsvd1[4];
	__le64 dev_ctx_sla;
	__le16 device_id;
	__le16 root_port_id;
	u8 segment_id;
	u8 rsvd2[11];
} __packed;
static_assert(sizeof(struct sev_data_tio_dev_create) == 0x20);
static_assert(offsetof(struct sev_data_tio_dev_create, device_id) == 0x10);
static_assert(offsetof(struct sev_data_tio_dev_create, segment_id) == 0x14);

struct sev_data_tio_dev_reclaim {
	__le32 length;
	u8 rsvd[4];
	__le64 dev_ctx_sla;
} __packed;

struct sev_data_tio_dev_connect {
	__le32 length;
	u8 rsvd1[4];
	struct spdm_ctrl spdm_ctrl;
	u8 rsvd2[8];
	__le64 dev_ctx_sla;
	u8 tc_mask;
	u8 cert_slot;
	u8 rsvd3[6];
	u8 ide_stream_id[8];
	u8 rsvd4[8];
} __packed;
static_assert(sizeof(struct sev_data_tio_dev_connect) == 0x50);
static_assert(offsetof(struct sev_data_tio_dev_connect, dev_ctx_sla) == 0x30);
static_assert(offsetof(struct sev_data_tio_dev_connect, ide_stream_id) == 0x40);

#define TIO_FLAG_FORCE			BIT(0)

struct sev_data_tio_dev_disconnect {
	__le32 length;
	__le32 flags;
	struct spdm_ctrl spdm_ctrl;
	__le64 dev_ctx_sla;
} __packed;
static_assert(sizeof(struct sev_data_tio_dev_disconnect) == 0x30);
static_assert(offsetof(struct sev_data_tio_dev_disconnect, dev_ctx_sla) == 0x28);

struct sev_data_tio_tdi_create {
	__le32 length;
	u8 rsvd1[4];
	__le64 dev_ctx_sla;
	__le64 tdi_ctx_sla;
	__le32 function_id;	/* interface_id */
	u8 rsvd2[20];
} __packed;
static_assert(sizeof(struct sev_data_tio_tdi_create) == 0x30);
static_assert(offsetof(struct sev_data_tio_tdi_create, function_id) == 0x18);

struct sev_data_tio_tdi_reclaim {
	__le32 length;
	u8 rsvd1[4];
	__le64 dev_ctx_sla;
	__le64 tdi_ctx_sla;
	u8 rsvd2[8];
} __packed;
static_assert(sizeof(struct sev_data_tio_tdi_reclaim) == 0x20);

#define TIO_TDI_BIND_FLAG_NO_FW_UPDATE	BIT(0)
#define TIO_TDI_BIND_RUN_FORCE		BIT(0)

struct sev_data_tio_tdi_bind {
	__le32 length;
	u8 rsvd1[4];
	struct spdm_ctrl spdm_ctrl;
	__le64 dev_ctx_sla;
	__le64 tdi_ctx_sla;
	__le64 gctx_paddr;
	__le16 guest_device_id;
	__le16 tdisp_lock_if_flags;
	__le16 run_flags;
	u8 rsvd2[10];
} __packed;
static_assert(sizeof(struct sev_data_tio_tdi_bind) == 0x50);
static_assert(offsetof(struct sev_data_tio_tdi_bind, gctx_paddr) == 0x38);
static_assert(offsetof(struct sev_data_tio_tdi_bind, guest_device_id) == 0x40);
static_assert(offsetof(struct sev_data_tio_tdi_bind, run_flags) == 0x44);

/* also TIO_TDI_REPORT */
struct sev_data_tio_tdi_unbind {
	__le32 length;
	__le32 flags;
	struct spdm_ctrl spdm_ctrl;
	__le64 dev_ctx_sla;
	__le64 tdi_ctx_sla;
	__le64 gctx_paddr;
} __packed;
static_assert(sizeof(struct sev_data_tio_tdi_unbind) == 0x40);

/* [MODEL] layout: TIO_DEV_STATUS's shape with the TDI context added */
struct sev_data_tio_tdi_status {
	__le32 length;
	u8 rsvd[4];
	__le64 dev_ctx_sla;
	__le64 tdi_ctx_sla;
	__le64 status_paddr;
} __packed;
static_assert(sizeof(struct sev_data_tio_tdi_status) == 0x20);

/* [MODEL] TIO_TDI_STATUS output */
struct sev_tio_tdi_status {
	__le32 length;
	u8 state;		/* SEV_TDI_* below */
	u8 guest_status;	/* TDI_INFO tdi_status */
	__le16 guest_device_id;
	__le64 report_count;
	__le64 gctx_paddr;
	u8 rsvd[8];
} __packed;

/* [MODEL] the PSP's TDI context states, in TIO_TDI_STATUS.state order */
enum sev_tdi_state {
	SEV_TDI_UNBOUND, SEV_TDI_BINDING, SEV_TDI_LOCKED, SEV_TDI_STARTING,
	SEV_TDI_RUN, SEV_TDI_UNBINDING, SEV_TDI_ERROR, SEV_TDI_NR_STATES,
};

struct sev_data_tio_guest_request {
	__le32 length;
	u8 rsvd[4];
	struct spdm_ctrl spdm_ctrl;
	__le64 dev_ctx_sla;
	__le64 tdi_ctx_sla;
	__le64 gctx_paddr;
	__le64 req_paddr;
	__le64 res_paddr;
} __packed;
static_assert(sizeof(struct sev_data_tio_guest_request) == 0x50);
static_assert(offsetof(struct sev_data_tio_guest_request, req_paddr) == 0x40);

struct sev_data_snp_addr {
	__le64 address;
} __packed;

#define SNP_PAGE_TYPE_SECRETS		0x5

struct sev_data_snp_launch_update {
	__le64 gctx_paddr;
	__le32 page_info;	/* page_size b0, page_type [3:1] */
	u8 rsvd1[4];
	__le64 address;
	__le32 vmpl_perms;
	u8 rsvd2[4];
} __packed;
static_assert(sizeof(struct sev_data_snp_launch_update) == 0x20);

/* struct snp_secrets_page: the VM platform communication keys */
#define SNP_SECRETS_VMPCK0		0x20
#define VMPCK_KEY_LEN			32

/* -- the guest interface (firmware-abi.md D.4) ------------------------------ */

#define SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST	0x80000020
#define SVM_VMGEXIT_SEV_TIO_OP			0x80000021

enum sev_tio_op {
	SEV_TIO_OP_BIND = 0,
	SEV_TIO_OP_UNBIND = 1,
	SEV_TIO_OP_RUN = 2,
	SEV_TIO_OP_STOP = 3,
};

#define TIO_GUEST_REQUEST_PARAM_STATE	BIT(0)
#define TIO_GUEST_REQUEST_PARAM_REPORT	BIT(3)

/*
 * [MODEL] what a VMGEXIT carries from the SNP guest to the hypervisor here,
 * and what pci_tsm_guest_req() carries to the link TSM (iommufd's TSM_REQ
 * payload for SEV is not settled): the exit code and the GHCB registers.
 * SEV_TIO_OP: regs[0] = exitinfo1 (action << 32 | guest RID); answer status,
 * RCX (tdi id).  SEV_TIO_GUEST_REQUEST: regs = request page, response page,
 * RAX (data pages), RBX (number of them), RCX (guest RID), RDX (param);
 * answer status, RBX (pages needed), RDX (TDISP state).
 */
struct vtfw_sev_exit {
	u64 exit_code;
	u64 regs[6];
};

struct vtfw_sev_exit_out {
	u64 status;
	u64 rbx_rcx;
	u64 rdx;
};

/* SNP guest messages (struct snp_guest_msg_hdr), AES-256-GCM with a VMPCK */
#define SNP_AEAD_AES_256_GCM		1
#define SNP_MSG_HDR_VERSION		1
#define SNP_MSG_AAD_OFFSET		0x30
#define SNP_AUTHTAG_LEN			16
#define TIO_MSG_VERSION			1

struct snp_guest_msg_hdr {
	u8 authtag[32];
	__le64 msg_seqno;
	u8 rsvd1[8];
	u8 algo;
	u8 hdr_version;
	__le16 hdr_sz;
	u8 msg_type;
	u8 msg_version;
	__le16 msg_sz;
	u8 rsvd2[4];
	u8 msg_vmpck;
	u8 rsvd3[35];
} __packed;
static_assert(sizeof(struct snp_guest_msg_hdr) == 0x60);
static_assert(offsetof(struct snp_guest_msg_hdr, msg_seqno) == 0x20);
static_assert(offsetof(struct snp_guest_msg_hdr, algo) == 0x30);
static_assert(offsetof(struct snp_guest_msg_hdr, msg_type) == 0x34);
static_assert(offsetof(struct snp_guest_msg_hdr, msg_sz) == 0x36);
static_assert(offsetof(struct snp_guest_msg_hdr, msg_vmpck) == 0x3c);

enum tio_msg_type {
	TIO_MSG_TDI_INFO_REQ = 19,
	TIO_MSG_TDI_INFO_RSP = 20,
	TIO_MSG_MMIO_VALIDATE_REQ = 21,
	TIO_MSG_MMIO_VALIDATE_RSP = 22,
	TIO_MSG_MMIO_CONFIG_REQ = 23,
	TIO_MSG_MMIO_CONFIG_RSP = 24,
	TIO_MSG_SDTE_WRITE_REQ = 25,
	TIO_MSG_SDTE_WRITE_RSP = 26,
};

struct tio_msg_tdi_info_req {
	__le16 guest_device_id;
	u8 rsvd[14];
} __packed;

#define TDI_INFO_STATUS_BOUND		0
#define TDI_INFO_DIGEST_LEN		48	/* SHA-384 */

struct tio_msg_tdi_info_rsp {
	__le16 guest_device_id;
	__le16 tdi_status;
	u8 rsvd1[12];
	__le32 meas_digest_info;
	__le32 lock_flags;
	__le64 spdm_algos;
	u8 certs_digest[48];
	u8 meas_digest[48];
	u8 interface_report_digest[48];
	__le64 tdi_report_count;
	u8 rsvd2[8];
} __packed;
static_assert(sizeof(struct tio_msg_tdi_info_rsp) == 192);
static_assert(offsetof(struct tio_msg_tdi_info_rsp, certs_digest) == 0x20);
static_assert(offsetof(struct tio_msg_tdi_info_rsp, meas_digest) == 0x50);
static_assert(offsetof(struct tio_msg_tdi_info_rsp, interface_report_digest) == 0x80);
static_assert(offsetof(struct tio_msg_tdi_info_rsp, tdi_report_count) == 0xb0);

#define MMIO_VALIDATE_FLAG_VALIDATED	BIT(0)

struct tio_msg_mmio_validate_req {
	__le16 guest_device_id;
	u8 rsvd1[14];
	__le64 subrange_base;
	__le32 subrange_page_count;
	__le32 range_offset;
	__le16 flags;
	__le16 range_id;
	u8 rsvd2[12];
} __packed;
static_assert(sizeof(struct tio_msg_mmio_validate_req) == 48);
static_assert(offsetof(struct tio_msg_mmio_validate_req, subrange_base) == 0x10);
static_assert(offsetof(struct tio_msg_mmio_validate_req, flags) == 0x20);
static_assert(offsetof(struct tio_msg_mmio_validate_req, range_id) == 0x22);

struct tio_msg_mmio_validate_rsp {
	__le16 guest_device_id;
	__le16 status;
	u8 rsvd1[12];
	__le64 subrange_base;
	__le32 subrange_page_count;
	__le32 range_offset;
	__le16 flags;
	__le16 range_id;
	u8 rsvd2[12];
} __packed;
static_assert(sizeof(struct tio_msg_mmio_validate_rsp) == 48);

#define SDTE_V				BIT_ULL(0)
#define SDTE_IR				BIT_ULL(61)
#define SDTE_IW				BIT_ULL(62)

struct tio_msg_sdte_write_req {
	__le16 guest_device_id;
	u8 rsvd[14];
	__le64 sdte[8];
} __packed;
static_assert(sizeof(struct tio_msg_sdte_write_req) == 80);

struct tio_msg_sdte_write_rsp {
	__le16 guest_device_id;
	__le16 status;
	u8 rsvd[12];
} __packed;
static_assert(sizeof(struct tio_msg_sdte_write_rsp) == 16);

/* [MODEL] GUID table of the evidence (SNP extended-report certificate table) */
struct sev_guid_entry {
	u8 guid[16];
	__le32 offset;
	__le32 length;
} __packed;

/* the host half (vtfw-sev-host.c) as the SNP guest's hypervisor */
struct vtfw_port;
struct pci_dev;
int vtfw_sev_vmgexit(struct vtfw_port *port, struct pci_dev *pdev,
		     const struct vtfw_sev_exit *exit, struct vtfw_sev_exit_out *out);
const u8 *vtfw_sev_secrets(struct vtfw_port *port);

int vtfw_sev_guest_init(struct vtfw_port *port);
void vtfw_sev_guest_exit(struct vtfw_port *port);

#endif /* _VTFW_SEV_H */
