/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Arm CCA RMM device-assignment ABI (RMI / RSI) as the vtfw module uses it.
 *
 * Numbers and structure offsets from TF-RMM's smc-rmi.h / smc-rsi.h as
 * collected in the project's reference/firmware-abi.md section C (RMM 2.0
 * beta, device assignment).  RMI calls go through the firmware port's host
 * window with ARGn = x(n + 1) and RESn = xn.
 */
#ifndef _VTFW_CCA_H
#define _VTFW_CCA_H

#include <linux/bits.h>

#define RMI_FID(n)			(0xc4000150 + (n))

#define RMI_VERSION			RMI_FID(0x00)
#define RMI_GRANULE_DELEGATE		RMI_FID(0x01)
#define RMI_GRANULE_UNDELEGATE		RMI_FID(0x02)
#define RMI_PDEV_ABORT			0xc4000174
#define RMI_PDEV_COMMUNICATE		0xc4000175
#define RMI_PDEV_CREATE			0xc4000176
#define RMI_PDEV_DESTROY		0xc4000177
#define RMI_PDEV_GET_STATE		0xc4000178
#define RMI_PDEV_SET_PUBKEY		0xc400017b
#define RMI_PDEV_STOP			0xc400017c
#define RMI_REALM_CREATE		RMI_FID(0x08)
#define RMI_REALM_DESTROY		RMI_FID(0x09)
#define RMI_REC_CREATE			RMI_FID(0x0a)
#define RMI_REC_DESTROY			RMI_FID(0x0b)
#define RMI_VDEV_COMMUNICATE		0xc4000186
#define RMI_VDEV_CREATE			0xc4000187
#define RMI_VDEV_DESTROY		0xc4000188
#define RMI_VDEV_GET_STATE		0xc4000189
#define RMI_VDEV_UNLOCK			0xc400018a
#define RMI_VDEV_LOCK			0xc40001d2
#define RMI_PDEV_STREAM_CONNECT		0xc4000204
#define RMI_PDEV_STREAM_DISCONNECT	0xc4000205
#define RMI_PDEV_STREAM_COMPLETE	0xc4000206

/*
 * Stateful RMI operations (RMM 2.0 SRO): a command that needs memory answers
 * RMI_INCOMPLETE with a handle and a memory request; the host donates
 * granules (OP_MEM_DONATE, a list of address descriptors) and continues it.
 * Request and descriptor fields as the Linux RMI v13 headers give them; the
 * registers of the INCOMPLETE answer (x1 handle, x2 request kind, x3 donate
 * request) are the RMM emulator's model (docs/platform-cca.md).
 */
#define RMI_OP_CONTINUE			0xc4000203
#define RMI_OP_MEM_DONATE		0xc4000208
#define RMI_OP_CANCEL			0xc400020a
#define RMI_OP_MEM_REQ_NONE		0
#define RMI_OP_MEM_REQ_DONATE		1
#define RMI_DONATE_SIZE(req)		((req) & 0x3)		/* 0: 4 KiB */
#define RMI_DONATE_COUNT(req)		(((req) >> 2) & 0x3fff)
#define RMI_DONATE_UNDELEGATED		BIT(17)
#define RMI_ADDR_DESC(pa, count)	((pa) | (u64)(count) << 2)	/* 4 KiB, delegated */

/* RMI status (x0) */
#define RMI_SUCCESS			0
#define RMI_ERROR_INPUT			1
#define RMI_ERROR_NOT_SUPPORTED		5
#define RMI_ERROR_DEVICE		6
#define RMI_BUSY			10
#define RMI_INCOMPLETE			13
#define SMCCC_NOT_SUPPORTED		((u64)-1)

/* PDEV states (RMI_PDEV_GET_STATE x1) */
enum rmi_pdev_state {
	RMI_PDEV_NEW = 0,
	RMI_PDEV_NEEDS_KEY = 1,
	RMI_PDEV_HAS_KEY = 2,
	RMI_PDEV_READY = 3,
	RMI_PDEV_STOPPED = 4,
	RMI_PDEV_ERROR = 5,
};

/* VDEV states (RMI_VDEV_GET_STATE x1) */
enum rmi_vdev_state {
	RMI_VDEV_NEW = 0,
	RMI_VDEV_UNLOCKED = 1,
	RMI_VDEV_LOCKED = 2,
	RMI_VDEV_STARTED = 3,
	RMI_VDEV_ERROR = 4,
};

/* rmi_vdev_params */
#define RMI_VDEV_PARAMS_FLAGS		0x00
#define RMI_VDEV_PARAMS_VDEV_ID		0x08
#define RMI_VDEV_PARAMS_TDI_ID		0x10
#define RMI_VDEV_PARAMS_NUM_RANGES	0x30
#define RMI_VDEV_PARAMS_RANGES		0x200
#define RMI_VDEV_MAX_RANGES		8

/* rmi_pdev_params (one granule) */
#define RMI_PDEV_PARAMS_FLAGS		0x00
#define RMI_PDEV_PARAMS_HB_BASE		0x08
#define RMI_PDEV_PARAMS_PDEV_ID		0x10
#define RMI_PDEV_PARAMS_ROUTING_ID	0x18
#define RMI_PDEV_PARAMS_ID_INDEX	0x20
#define RMI_PDEV_PARAMS_RID_BASE	0x28
#define RMI_PDEV_PARAMS_RID_TOP		0x30
#define RMI_PDEV_PARAMS_HASH_ALGO	0x38
#define RMI_PDEV_FLAGS_SPDM		BIT(0)
#define RMI_PDEV_CATEGORY_SHIFT		1
#define RMI_PDEV_CATEGORY_RP		0
#define RMI_PDEV_CATEGORY_EP_OFF_CHIP	1
#define RMI_HASH_SHA_256		0
#define RMI_HASH_SHA_512		1

/* rmi_public_key_params */
#define RMI_KEY_PARAMS_KEY		0x000
#define RMI_KEY_PARAMS_METADATA		0x400
#define RMI_KEY_PARAMS_KEY_LEN		0x800
#define RMI_KEY_PARAMS_METADATA_LEN	0x808
#define RMI_KEY_PARAMS_ALGO		0x810
#define RMI_KEY_MAX			0x400
#define RMI_SIG_RSASSA_3072		0
#define RMI_SIG_ECDSA_P256		1
#define RMI_SIG_ECDSA_P384		2

/* rmi_dev_comm_data: enter at 0, exit at 0x800 */
#define RMI_COMM_ENTER_STATUS		0x000
#define RMI_COMM_ENTER_REQ_ADDR		0x008
#define RMI_COMM_ENTER_RESP_ADDR	0x010
#define RMI_COMM_ENTER_RESP_LEN		0x018
#define RMI_COMM_EXIT			0x800
#define RMI_COMM_EXIT_FLAGS		(RMI_COMM_EXIT + 0x00)
#define RMI_COMM_EXIT_CACHE_REQ_OFFSET	(RMI_COMM_EXIT + 0x08)
#define RMI_COMM_EXIT_CACHE_REQ_LEN	(RMI_COMM_EXIT + 0x10)
#define RMI_COMM_EXIT_CACHE_RSP_OFFSET	(RMI_COMM_EXIT + 0x18)
#define RMI_COMM_EXIT_CACHE_RSP_LEN	(RMI_COMM_EXIT + 0x20)
#define RMI_COMM_EXIT_CACHE_OBJ_ID	(RMI_COMM_EXIT + 0x28)
#define RMI_COMM_EXIT_PROTOCOL		(RMI_COMM_EXIT + 0x30)
#define RMI_COMM_EXIT_REQ_DELAY		(RMI_COMM_EXIT + 0x38)
#define RMI_COMM_EXIT_REQ_LEN		(RMI_COMM_EXIT + 0x40)
#define RMI_COMM_EXIT_TIMEOUT		(RMI_COMM_EXIT + 0x48)

#define RMI_COMM_STATUS_NONE		0
#define RMI_COMM_STATUS_RESPONSE	1
#define RMI_COMM_STATUS_ERROR		2

#define RMI_COMM_EXIT_REQ_CACHE		BIT(0)
#define RMI_COMM_EXIT_RSP_CACHE		BIT(1)
#define RMI_COMM_EXIT_REQ_SEND		BIT(2)
#define RMI_COMM_EXIT_RSP_WAIT		BIT(3)
#define RMI_COMM_EXIT_RSP_RESET		BIT(4)
#define RMI_COMM_EXIT_MULTI		BIT(5)
#define RMI_COMM_EXIT_STREAM_WAIT	BIT(6)

#define RMI_COMM_PROTOCOL_SPDM		0
#define RMI_COMM_PROTOCOL_SECURE_SPDM	1

/* cache_obj_id */
enum rmi_dev_obj {
	RMI_DEV_VCA = 0,
	RMI_DEV_CERTIFICATE = 1,
	RMI_DEV_MEASUREMENTS = 2,
	RMI_DEV_INTERFACE_REPORT = 3,
	RMI_DEV_NR_OBJS,
};

/* rmi_pdev_stream_params */
#define RMI_STREAM_PARAMS_FLAGS		0x00
#define RMI_STREAM_PARAMS_TYPE		0x08
#define RMI_STREAM_PARAMS_PDEV_1	0x10
#define RMI_STREAM_PARAMS_PDEV_2	0x18
#define RMI_STREAM_PARAMS_IDE_SID	0x20
#define RMI_STREAM_PARAMS_NUM_RANGES	0x28
#define RMI_STREAM_NCOH			1

/* REC run page (rmi_rec_run) and host calls */
#define RMI_REC_ENTER			RMI_FID(0x0c)
#define RMI_REC_RUN_ENTER_GPRS		0x200
#define RMI_REC_RUN_EXIT_REASON		0x800
#define RMI_REC_RUN_EXIT_GPRS		0xa00
#define RMI_EXIT_HOST_CALL		5
#define REC_NR_GPRS			31

/* RSI (realm -> RMM), the firmware port's guest window */
#define RSI_FID(n)			(0xc4000190 + (n))
#define RSI_VERSION			RSI_FID(0x00)
#define RSI_FEATURES			RSI_FID(0x01)
#define RSI_HOST_CALL			RSI_FID(0x09)
#define RSI_VDEV_DMA_ENABLE		RSI_FID(0x0c)
#define RSI_VDEV_GET_INFO		RSI_FID(0x0d)
#define RSI_VDEV_VALIDATE_MAPPING	RSI_FID(0x0f)
#define RSI_VDEV_DMA_DISABLE		RSI_FID(0x14)
#define RSI_SUCCESS			0
#define RSI_INCOMPLETE			3
#define RSI_ACCEPT			0

/* rsi_host_call: imm u16 @0, gprs[31] @8 (256-byte aligned) */
#define RSI_HOST_CALL_GPRS		0x08

/* rsi_vdev_info (512 bytes, 512-byte aligned), TF-RMM layout */
#define RSI_VDEV_INFO_HASH_ALGO		0x010
#define RSI_VDEV_INFO_LOCK_NONCE	0x018
#define RSI_VDEV_INFO_MEAS_NONCE	0x020
#define RSI_VDEV_INFO_REPORT_NONCE	0x028
#define RSI_VDEV_INFO_STATE		0x040
#define RSI_VDEV_INFO_VCA_DIGEST	0x080
#define RSI_VDEV_INFO_CERT_DIGEST	0x0c0
#define RSI_VDEV_INFO_MEAS_DIGEST	0x140
#define RSI_VDEV_INFO_REPORT_DIGEST	0x180
#define RSI_HASH_SHA_256		0
#define RSI_HASH_SHA_512		1

/* RHI DA host calls, "rhi-1.0-bet1" numbering (the ACS; firmware-abi.md C.7) */
#define RHI_DA_VERSION			0xc500004a
#define RHI_DA_FEATURES			0xc500004b
#define RHI_DA_OBJECT_SIZE		0xc500004c
#define RHI_DA_OBJECT_READ		0xc500004d
#define RHI_DA_VDEV_CONTINUE		0xc5000051
#define RHI_DA_VDEV_GET_MEASUREMENTS	0xc5000052
#define RHI_DA_VDEV_GET_INTERFACE_REPORT 0xc5000053
#define RHI_DA_VDEV_SET_TDI_STATE	0xc5000054
#define RHI_DA_VDEV_ABORT		0xc5000056
#define RHI_DA_VERSION_1_0		0x10000
#define RHI_NOT_SUPPORTED		((u64)-1)

enum rhi_da_status {
	RHI_DA_SUCCESS = 0,
	RHI_DA_INCOMPLETE = 1,
	RHI_DA_DATA_NOT_AVAILABLE = 2,
	RHI_DA_INVALID_VDEV_ID = 3,
	RHI_DA_INVALID_OBJECT = 4,
	RHI_DA_INPUT = 5,
	RHI_DA_DEVICE = 6,
	RHI_DA_INVALID_OFFSET = 7,
	RHI_DA_ACCESS_FAILED = 8,
	RHI_DA_BUSY = 9,
	RHI_DA_ABORTED_OPERATION_HAD_COMPLETED = 10,
	RHI_DA_OBJECT_UNSUPPORTED = 11,
};

enum rhi_tdi_state {
	RHI_TDI_CONFIG_UNLOCKED = 0,
	RHI_TDI_CONFIG_LOCKED = 1,
	RHI_TDI_RUN = 2,
};

/* the module's index of evidence objects: the rmi_dev_comm cache object ids */
#define RHI_OBJ_VCA			RMI_DEV_VCA
#define RHI_OBJ_CERTIFICATE		RMI_DEV_CERTIFICATE
#define RHI_OBJ_MEASUREMENT		RMI_DEV_MEASUREMENTS
#define RHI_OBJ_INTERFACE_REPORT	RMI_DEV_INTERFACE_REPORT

/*
 * The two published RHI layouts (firmware-abi.md C.7), module parameter
 * rhi_layout: "rhi-1.0-bet1" (the ACS; default) or "linux-rfc-v4" (the Linux
 * RFC v4 guest).  They differ in the GET_MEASUREMENTS / GET_INTERFACE_REPORT
 * numbers, the object ids, the OBJECT_READ register order and the
 * measurement parameter block.  Realm and host side of this module use the
 * same layout, as a VMM and its guest must.
 */
struct cca_rhi_layout {
	const char *name;
	u64 get_measurements;
	u64 get_interface_report;
	u8 obj_id[RMI_DEV_NR_OBJS];	/* the RHI object id of each cache object */
	u8 read_buf, read_len, read_off;	/* OBJECT_READ: gpr index of each */
	u32 meas_nonce;			/* nonce[32] offset in the measurement params */
	u64 meas_flags;			/* what the realm asks for: signed */
	u64 meas_raw;			/* the RAW flag */
};

const struct cca_rhi_layout *vtfw_cca_rhi(void);

/* rmi_vdev_measure_params: flags @0, nonce[32] @0x100 */
#define RMI_VDEV_MEASURE_NONCE		0x100
#define RMI_VDEV_GET_INTERFACE_REPORT	0xc40001d0
#define RMI_VDEV_GET_MEASUREMENTS	0xc40001d1
#define RMI_VDEV_START			0xc40001d3
#define RMI_VDEV_ABORT			0xc4000185

#endif /* _VTFW_CCA_H */
