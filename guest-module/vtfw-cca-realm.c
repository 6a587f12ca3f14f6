// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: Arm CCA realm (TVM) side: lock, evidence, accept, unlock.
 *
 * The sequence of reference/firmware-abi.md C.8 "Guest lock/accept" (after
 * the Linux RFC v4 guest): lock = RHI SET_TDI_STATE(LOCKED) (+ CONTINUE),
 * RSI_VDEV_GET_INFO, RHI GET_INTERFACE_REPORT and GET_MEASUREMENTS, RHI
 * object reads (certificate chain, VCA, measurements, interface report),
 * RSI_VDEV_GET_INFO again and every digest checked; accept = lock nonce
 * unchanged, RSI_VDEV_VALIDATE_MAPPING per interface report range, RHI
 * SET_TDI_STATE(RUN), RSI_VDEV_DMA_ENABLE with the three nonces; unlock =
 * RSI_VDEV_DMA_DISABLE, RHI SET_TDI_STATE(UNLOCKED).
 *
 * RHI calls go as on hardware: rsi_host_call in TVM memory, RSI_HOST_CALL,
 * and the host (here the same kernel, vtfw_cca_serve_host_call()) answers
 * them through pci_tsm_guest_req().
 *
 * The operations sit behind the TVM core's tvm/ files and devsec TSM
 * (vtfw-tvm.c), with vdev_info as the platform's attestation record.
 *
 * RHI calls use the layout of the rhi_layout module parameter
 * (vtfw-cca-host.c): function numbers, object ids, OBJECT_READ registers and
 * the measurement parameter block.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <crypto/sha2.h>
#include <linux/pci.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/unaligned.h>

#include "vtfw.h"
#include "vtfw-cca.h"

/* evidence objects, in RHI (ACS) object numbering: their names and tvm/ files */
static const char * const cca_ev_names[] = {
	[RHI_OBJ_VCA] = "vca",
	[RHI_OBJ_CERTIFICATE] = "certificate",
	[RHI_OBJ_MEASUREMENT] = "measurements",
	[RHI_OBJ_INTERFACE_REPORT] = "report",
};

static const enum vtfw_ev cca_ev[] = {
	[RHI_OBJ_VCA] = VTFW_EV_VCA,
	[RHI_OBJ_CERTIFICATE] = VTFW_EV_CERTIFICATE,
	[RHI_OBJ_MEASUREMENT] = VTFW_EV_MEASUREMENTS,
	[RHI_OBJ_INTERFACE_REPORT] = VTFW_EV_REPORT,
};

#define CCA_NR_EV	ARRAY_SIZE(cca_ev_names)
#define CCA_EV_MAX	SZ_1M
#define RSI_VDEV_INFO_SIZE	0x200

/* a TEE-capable function's realm-side state (vtfw_tvm_dev.priv) */
struct cca_tvm {
	void *hc;		/* rsi_host_call */
	void *info;		/* rsi_vdev_info */
	void *page;		/* object reads, measurement parameters */
	u8 hash_algo;
	u64 nonce[3];		/* lock, measurements, report */
};

static struct cca_tvm *to_cca(struct vtfw_tvm_dev *t)
{
	return t->priv;
}

static u64 tvm_vdev_id(struct vtfw_tvm_dev *t)
{
	return pci_dev_id(t->pdev);	/* the host bound it with this id (vtfw-port.c) */
}

static int tvm_rsi(struct vtfw_tvm_dev *t, u64 fid, const u64 *args, unsigned int n, u64 *res)
{
	int rc = vtfw_call(t->port, VTFW_CLASS_GUEST, fid, args, n, res);

	if (!rc && res[0] != RSI_SUCCESS) {
		vtfw_err(t->pdev, "RSI %#llx: status %llu\n", fid, res[0]);
		rc = -EIO;
	}
	return rc;
}

/* One RHI call through RSI_HOST_CALL; @out gets the host's answer gprs. */
static int tvm_rhi_gprs(struct vtfw_tvm_dev *t, u64 *gprs, u64 *out)
{
	struct cca_tvm *c = to_cca(t);
	u64 fid = gprs[0];
	u64 args[] = { vtfw_pa(c->hc) };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	if (fid == RHI_DA_VERSION || fid == RHI_DA_FEATURES)
		gprs[1] = 0;
	memset(c->hc, 0, 0x100);
	memcpy(c->hc + RSI_HOST_CALL_GPRS, gprs, REC_NR_GPRS * sizeof(u64));
	rc = vtfw_call(t->port, VTFW_CLASS_GUEST, RSI_HOST_CALL, args, 1, res);
	if (rc)
		return rc;
	if (res[0] != RSI_INCOMPLETE) {	/* the REC did not exit to the host */
		vtfw_err(t->pdev, "RSI_HOST_CALL: status %llu\n", res[0]);
		return -EIO;
	}
	rc = vtfw_cca_serve_host_call(t->port, t->pdev);
	if (rc)
		return rc;
	memcpy(out, c->hc + RSI_HOST_CALL_GPRS, REC_NR_GPRS * sizeof(u64));
	return 0;
}

static int tvm_rhi(struct vtfw_tvm_dev *t, u64 fid, u64 a2, u64 a3, u64 a4, u64 a5, u64 *out)
{
	u64 gprs[REC_NR_GPRS] = { fid, tvm_vdev_id(t), a2, a3, a4, a5 };

	return tvm_rhi_gprs(t, gprs, out);
}

/* A device operation: INCOMPLETE + handle, then CONTINUE until it is done. */
static int tvm_rhi_wait(struct vtfw_tvm_dev *t, const char *what, u64 fid, u64 a2)
{
	u64 out[REC_NR_GPRS];
	int rc, n;

	rc = tvm_rhi(t, fid, a2, 0, 0, 0, out);
	for (n = 0; !rc && out[0] == RHI_DA_INCOMPLETE && n < 64; n++)
		rc = tvm_rhi(t, RHI_DA_VDEV_CONTINUE, out[1], 0, 0, 0, out);
	if (!rc && out[0] != RHI_DA_SUCCESS) {
		vtfw_err(t->pdev, "%s: RHI status %llu\n", what, out[0]);
		rc = -EIO;
	}
	return rc;
}

static int tvm_get_info(struct vtfw_tvm_dev *t)
{
	u64 args[] = { tvm_vdev_id(t), vtfw_pa(to_cca(t)->info) };
	u64 res[VTFW_NR_RESULTS];

	return tvm_rsi(t, RSI_VDEV_GET_INFO, args, ARRAY_SIZE(args), res);
}

static u64 info64(struct vtfw_tvm_dev *t, unsigned int off)
{
	return *(u64 *)(to_cca(t)->info + off);
}

/* RHI OBJECT_SIZE, then OBJECT_READ a page at a time into a page of ours */
static int tvm_read_object(struct vtfw_tvm_dev *t, unsigned int id)
{
	const struct cca_rhi_layout *lay = vtfw_cca_rhi();
	u64 out[REC_NR_GPRS], gprs[REC_NR_GPRS];
	struct cca_tvm *c = to_cca(t);
	enum vtfw_ev ev = cca_ev[id];
	size_t size, done;
	int rc;

	rc = tvm_rhi(t, RHI_DA_OBJECT_SIZE, lay->obj_id[id], 0, 0, 0, out);
	if (rc)
		return rc;
	if (out[0] != RHI_DA_SUCCESS || !out[1] || out[1] > CCA_EV_MAX) {
		vtfw_err(t->pdev, "%s: OBJECT_SIZE status %llu size %llu\n",
			 cca_ev_names[id], out[0], out[1]);
		return -EIO;
	}
	size = out[1];
	t->ev[ev] = kvmalloc(size, GFP_KERNEL);
	if (!t->ev[ev])
		return -ENOMEM;
	for (done = 0; done < size; done += out[1]) {
		memset(gprs, 0, sizeof(gprs));
		gprs[0] = RHI_DA_OBJECT_READ;
		gprs[1] = tvm_vdev_id(t);
		gprs[2] = lay->obj_id[id];
		gprs[lay->read_buf] = vtfw_pa(c->page);
		gprs[lay->read_len] = PAGE_SIZE;
		gprs[lay->read_off] = done;
		rc = tvm_rhi_gprs(t, gprs, out);
		if (rc)
			return rc;
		if (out[0] != RHI_DA_SUCCESS || !out[1] || out[1] > min(size - done, PAGE_SIZE))
			return -EIO;
		memcpy(t->ev[ev] + done, c->page, out[1]);
	}
	t->ev_len[ev] = size;
	return 0;
}

/* does the firmware's digest (rsi_vdev_info) match what the host handed us? */
static bool tvm_digest_ok(struct vtfw_tvm_dev *t, unsigned int id, unsigned int off)
{
	struct cca_tvm *c = to_cca(t);
	enum vtfw_ev ev = cca_ev[id];
	u8 d[SHA512_DIGEST_SIZE];
	size_t n;

	if (c->hash_algo == RSI_HASH_SHA_256) {
		sha256(t->ev[ev], t->ev_len[ev], d);
		n = SHA256_DIGEST_SIZE;
	} else {
		sha512(t->ev[ev], t->ev_len[ev], d);
		n = SHA512_DIGEST_SIZE;
	}
	if (!memcmp(d, c->info + off, n))
		return true;
	vtfw_err(t->pdev, "%s does not match the firmware's digest\n", cca_ev_names[id]);
	return false;
}

/*
 * Fresh evidence for a TDI locked with @lock_nonce: the report, measurements
 * for a nonce of ours, the four objects through the host, and an
 * rsi_vdev_info read afterwards that still has @lock_nonce and whose digests
 * match every object (kept as vdev_info).  The old evidence is dropped first.
 */
static int tvm_collect(struct vtfw_tvm_dev *t, u64 lock_nonce)
{
	const struct cca_rhi_layout *lay = vtfw_cca_rhi();
	struct cca_tvm *c = to_cca(t);
	int rc, i;

	vtfw_tvm_evidence_free(t);
	/*
	 * fresh evidence: the report, and signed measurements over a nonce of
	 * ours (the device signs it: GET_MEASUREMENTS Nonce)
	 */
	memset(c->page, 0, PAGE_SIZE);
	*(u64 *)c->page = lay->meas_flags;
	get_random_bytes(c->page + lay->meas_nonce, 32);
	rc = tvm_rhi_wait(t, "GET_INTERFACE_REPORT", lay->get_interface_report, 0);
	if (!rc)
		rc = tvm_rhi_wait(t, "GET_MEASUREMENTS", lay->get_measurements, vtfw_pa(c->page));
	for (i = 0; !rc && i < CCA_NR_EV; i++)
		rc = tvm_read_object(t, i);
	if (!rc)
		rc = tvm_get_info(t);
	if (rc)
		goto err;
	if (info64(t, RSI_VDEV_INFO_LOCK_NONCE) != lock_nonce) {
		vtfw_err(t->pdev, "the TDI was locked again while we read its evidence\n");
		rc = -EAGAIN;
		goto err;
	}
	if (!tvm_digest_ok(t, RHI_OBJ_CERTIFICATE, RSI_VDEV_INFO_CERT_DIGEST) ||
	    !tvm_digest_ok(t, RHI_OBJ_VCA, RSI_VDEV_INFO_VCA_DIGEST) ||
	    !tvm_digest_ok(t, RHI_OBJ_INTERFACE_REPORT, RSI_VDEV_INFO_REPORT_DIGEST) ||
	    !tvm_digest_ok(t, RHI_OBJ_MEASUREMENT, RSI_VDEV_INFO_MEAS_DIGEST)) {
		rc = -EBADMSG;
		goto err;
	}
	rc = vtfw_tvm_set_evidence(t, VTFW_EV_INFO, c->info, RSI_VDEV_INFO_SIZE);
	if (rc)
		goto err;
	c->nonce[0] = lock_nonce;
	c->nonce[1] = info64(t, RSI_VDEV_INFO_MEAS_NONCE);
	c->nonce[2] = info64(t, RSI_VDEV_INFO_REPORT_NONCE);
	vtfw_info(t->pdev, "TVM: evidence: certificate %zu, vca %zu, measurements %zu, report %zu bytes, digests match\n",
		  t->ev_len[VTFW_EV_CERTIFICATE], t->ev_len[VTFW_EV_VCA],
		  t->ev_len[VTFW_EV_MEASUREMENTS], t->ev_len[VTFW_EV_REPORT]);
	return 0;
err:
	vtfw_tvm_evidence_free(t);
	return rc;
}

static int cca_lock(struct vtfw_tvm_dev *t)
{
	struct cca_tvm *c = to_cca(t);
	int rc;

	rc = tvm_rhi_wait(t, "SET_TDI_STATE(CONFIG_LOCKED)", RHI_DA_VDEV_SET_TDI_STATE,
			  RHI_TDI_CONFIG_LOCKED);
	if (!rc)
		rc = tvm_get_info(t);
	if (rc)
		return rc;
	c->hash_algo = *(u8 *)(c->info + RSI_VDEV_INFO_HASH_ALGO);
	if (c->hash_algo != RSI_HASH_SHA_256 && c->hash_algo != RSI_HASH_SHA_512)
		return -EOPNOTSUPP;
	return tvm_collect(t, info64(t, RSI_VDEV_INFO_LOCK_NONCE));
}

/*
 * TDI_REPORT_STRUCTURE (TDISP 1.0): ... mmio_range_count u32 @12, then 16-byte
 * ranges {first_page u64, number_of_pages u32, range_attributes u32}; pages of
 * 4 KiB, host physical (the RMM's MMIO reporting offset is 0).
 */
#define TDI_REPORT_MMIO_COUNT	12
#define TDI_REPORT_MMIO_RANGES	16

static int tvm_validate_ranges(struct vtfw_tvm_dev *t)
{
	const u8 *r = t->ev[VTFW_EV_REPORT];
	size_t len = t->ev_len[VTFW_EV_REPORT];
	u64 res[VTFW_NR_RESULTS], args[8];
	u32 count, i;
	int rc;

	if (len < TDI_REPORT_MMIO_RANGES)
		return -EBADMSG;
	count = get_unaligned_le32(r + TDI_REPORT_MMIO_COUNT);
	if (len < TDI_REPORT_MMIO_RANGES + 16ULL * count)
		return -EBADMSG;
	for (i = 0; i < count; i++) {
		const u8 *m = r + TDI_REPORT_MMIO_RANGES + 16 * i;
		u64 base = get_unaligned_le64(m) << 12;
		u64 top = base + ((u64)get_unaligned_le32(m + 8) << 12);
		u64 ipa = base;	/* one VM: the TVM's address is the host's */

		while (ipa < top) {
			args[0] = tvm_vdev_id(t);
			args[1] = ipa;
			args[2] = top;
			args[3] = ipa;
			args[4] = 0;
			memcpy(&args[5], to_cca(t)->nonce, sizeof(to_cca(t)->nonce));
			rc = tvm_rsi(t, RSI_VDEV_VALIDATE_MAPPING, args, 8, res);
			if (rc)
				return rc;
			if (res[2] != RSI_ACCEPT || res[1] <= ipa) {
				vtfw_err(t->pdev, "range %#llx-%#llx refused at %#llx\n", base, top,
					 ipa);
				return -EACCES;
			}
			ipa = res[1];
		}
	}
	return 0;
}

static int cca_accept(struct vtfw_tvm_dev *t)
{
	struct cca_tvm *c = to_cca(t);
	u64 res[VTFW_NR_RESULTS], args[6];
	int rc;

	rc = tvm_get_info(t);
	if (rc)
		return rc;
	if (info64(t, RSI_VDEV_INFO_LOCK_NONCE) != c->nonce[0])
		return -ESTALE;		/* unlocked and locked again since the evidence */
	rc = tvm_validate_ranges(t);
	if (!rc)
		rc = tvm_rhi_wait(t, "SET_TDI_STATE(RUN)", RHI_DA_VDEV_SET_TDI_STATE,
				  RHI_TDI_RUN);
	if (rc)
		return rc;
	args[0] = tvm_vdev_id(t);
	args[1] = 0;	/* flags */
	args[2] = 0;	/* non-ATS plane */
	memcpy(&args[3], c->nonce, sizeof(c->nonce));
	rc = tvm_rsi(t, RSI_VDEV_DMA_ENABLE, args, 6, res);
	if (!rc)
		vtfw_info(t->pdev, "TVM: accepted (MMIO validated, TDI RUN, DMA enabled)\n");
	return rc;
}

static int cca_unlock(struct vtfw_tvm_dev *t)
{
	u64 args[] = { tvm_vdev_id(t) };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	rc = tvm_rsi(t, RSI_VDEV_DMA_DISABLE, args, 1, res);
	if (!rc)
		rc = tvm_rhi_wait(t, "SET_TDI_STATE(CONFIG_UNLOCKED)", RHI_DA_VDEV_SET_TDI_STATE,
				  RHI_TDI_CONFIG_UNLOCKED);
	return rc;
}

/*
 * The report and the measurements again, under the same lock.  A TDI the
 * device moved to ERROR fails here: it is the RMM's next exchange with the
 * device that finds out, and tvm/state shows it from then on.
 */
static int cca_refresh(struct vtfw_tvm_dev *t)
{
	return tvm_collect(t, to_cca(t)->nonce[0]);
}

/* the TDI's state as the firmware tells the TVM (rsi_vdev_info.state, TDISP order) */
static int cca_state(struct vtfw_tvm_dev *t)
{
	int rc = tvm_get_info(t);

	return rc ? rc : *(u8 *)(to_cca(t)->info + RSI_VDEV_INFO_STATE);
}

static void cca_teardown(struct vtfw_tvm_dev *t)
{
	struct cca_tvm *c = to_cca(t);

	if (!c)
		return;
	free_page((unsigned long)c->hc);
	free_page((unsigned long)c->info);
	free_page((unsigned long)c->page);
	kfree(c);
	t->priv = NULL;
}

static int cca_setup(struct vtfw_tvm_dev *t)
{
	struct cca_tvm *c = kzalloc_obj(*c);

	if (!c)
		return -ENOMEM;
	t->priv = c;
	c->hc = (void *)get_zeroed_page(GFP_KERNEL);
	c->info = (void *)get_zeroed_page(GFP_KERNEL);
	c->page = (void *)get_zeroed_page(GFP_KERNEL);
	if (!c->hc || !c->info || !c->page) {
		cca_teardown(t);
		return -ENOMEM;
	}
	return 0;
}

static const struct vtfw_tvm_ops cca_tvm_ops = {
	.name = "Arm CCA",
	.info_name = "vdev_info",
	.evidence = BIT(VTFW_EV_CERTIFICATE) | BIT(VTFW_EV_VCA) | BIT(VTFW_EV_MEASUREMENTS) |
		    BIT(VTFW_EV_REPORT) | BIT(VTFW_EV_INFO),
	.setup = cca_setup,
	.teardown = cca_teardown,
	.lock = cca_lock,
	.accept = cca_accept,
	.unlock = cca_unlock,
	.refresh = cca_refresh,
	.state = cca_state,
};

int vtfw_cca_realm_init(struct vtfw_port *port)
{
	return vtfw_tvm_init(port, &cca_tvm_ops);
}

void vtfw_cca_realm_exit(struct vtfw_port *port)
{
	vtfw_tvm_exit(port);
}
