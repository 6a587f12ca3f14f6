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
 * 7.3 has no tsm/lock or tsm/accept: the operations are offered with the
 * proposed ABI's preconditions and errnos (-EBUSY while a driver is bound,
 * -EINVAL for accept before lock) as files in a "tvm" directory of each
 * TEE-capable function.  Kernels with devsec lock/accept ops
 * (VTFW_HAVE_DEVSEC_ACCEPT, detected by the Kbuild) are to get a devsec TSM
 * calling the same functions; not written yet.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <crypto/sha2.h>
#include <linux/list.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/tsm.h>
#include <linux/unaligned.h>

#include "vtfw.h"
#include "vtfw-cca.h"

/* evidence objects, in RHI (ACS) object numbering */
static const char * const cca_ev_names[] = {
	[RHI_OBJ_VCA] = "vca",
	[RHI_OBJ_CERTIFICATE] = "certificate",
	[RHI_OBJ_MEASUREMENT] = "measurements",
	[RHI_OBJ_INTERFACE_REPORT] = "report",
};

#define CCA_NR_EV	ARRAY_SIZE(cca_ev_names)
#define CCA_EV_MAX	SZ_1M
#define RSI_VDEV_INFO_SIZE	0x200

/* the devsec TSM (7.3 counts it and never calls its ops; see vtfw_cca_realm_init) */
static struct tsm_dev *cca_devsec_tsm;

struct cca_tvm_dev {
	struct list_head list;
	struct pci_dev *pdev;
	struct vtfw_port *port;
	struct mutex lock;	/* one operation at a time */
	void *hc;		/* rsi_host_call */
	void *info;		/* rsi_vdev_info */
	void *page;		/* object reads, measurement parameters */
	bool locked;
	bool accepted;
	u8 hash_algo;
	u64 nonce[3];		/* lock, measurements, report */
	u8 *ev[CCA_NR_EV];
	size_t ev_len[CCA_NR_EV];
	u8 ev_info[RSI_VDEV_INFO_SIZE];	/* the rsi_vdev_info the evidence matched */
	struct pci_tsm devsec;		/* what the devsec lock op returns */
};

static LIST_HEAD(cca_tvm_devs);
static DEFINE_MUTEX(cca_tvm_list_lock);

static u64 tvm_vdev_id(struct cca_tvm_dev *t)
{
	return pci_dev_id(t->pdev);	/* the host bound it with this id (vtfw-port.c) */
}

static int tvm_rsi(struct cca_tvm_dev *t, u64 fid, const u64 *args, unsigned int n, u64 *res)
{
	int rc = vtfw_call(t->port, VTFW_CLASS_GUEST, fid, args, n, res);

	if (!rc && res[0] != RSI_SUCCESS) {
		vtfw_err(t->pdev, "RSI %#llx: status %llu\n", fid, res[0]);
		rc = -EIO;
	}
	return rc;
}

/* One RHI call through RSI_HOST_CALL; @out gets the host's answer gprs. */
static int tvm_rhi(struct cca_tvm_dev *t, u64 fid, u64 a2, u64 a3, u64 a4, u64 a5, u64 *out)
{
	u64 gprs[REC_NR_GPRS] = { fid, tvm_vdev_id(t), a2, a3, a4, a5 };
	u64 args[] = { vtfw_pa(t->hc) };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	if (fid == RHI_DA_VERSION || fid == RHI_DA_FEATURES)
		gprs[1] = 0;
	memset(t->hc, 0, 0x100);
	memcpy(t->hc + RSI_HOST_CALL_GPRS, gprs, sizeof(gprs));
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
	memcpy(out, t->hc + RSI_HOST_CALL_GPRS, sizeof(gprs));
	return 0;
}

/* A device operation: INCOMPLETE + handle, then CONTINUE until it is done. */
static int tvm_rhi_wait(struct cca_tvm_dev *t, const char *what, u64 fid, u64 a2)
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

static int tvm_get_info(struct cca_tvm_dev *t)
{
	u64 args[] = { tvm_vdev_id(t), vtfw_pa(t->info) };
	u64 res[VTFW_NR_RESULTS];

	return tvm_rsi(t, RSI_VDEV_GET_INFO, args, ARRAY_SIZE(args), res);
}

static u64 info64(struct cca_tvm_dev *t, unsigned int off)
{
	return *(u64 *)(t->info + off);
}

static void tvm_evidence_free(struct cca_tvm_dev *t)
{
	for (int i = 0; i < CCA_NR_EV; i++) {
		kvfree(t->ev[i]);
		t->ev[i] = NULL;
		t->ev_len[i] = 0;
	}
}

/* RHI OBJECT_SIZE, then OBJECT_READ a page at a time into a page of ours */
static int tvm_read_object(struct cca_tvm_dev *t, unsigned int id)
{
	u64 out[REC_NR_GPRS];
	size_t size, done;
	int rc;

	rc = tvm_rhi(t, RHI_DA_OBJECT_SIZE, id, 0, 0, 0, out);
	if (rc)
		return rc;
	if (out[0] != RHI_DA_SUCCESS || !out[1] || out[1] > CCA_EV_MAX) {
		vtfw_err(t->pdev, "%s: OBJECT_SIZE status %llu size %llu\n",
			 cca_ev_names[id], out[0], out[1]);
		return -EIO;
	}
	size = out[1];
	t->ev[id] = kvmalloc(size, GFP_KERNEL);
	if (!t->ev[id])
		return -ENOMEM;
	for (done = 0; done < size; done += out[1]) {
		rc = tvm_rhi(t, RHI_DA_OBJECT_READ, id, vtfw_pa(t->page), PAGE_SIZE, done, out);
		if (rc)
			return rc;
		if (out[0] != RHI_DA_SUCCESS || !out[1] || out[1] > min(size - done, PAGE_SIZE))
			return -EIO;
		memcpy(t->ev[id] + done, t->page, out[1]);
	}
	t->ev_len[id] = size;
	return 0;
}

/* does the firmware's digest (rsi_vdev_info) match what the host handed us? */
static bool tvm_digest_ok(struct cca_tvm_dev *t, unsigned int id, unsigned int off)
{
	u8 d[SHA512_DIGEST_SIZE];
	size_t n;

	if (t->hash_algo == RSI_HASH_SHA_256) {
		sha256(t->ev[id], t->ev_len[id], d);
		n = SHA256_DIGEST_SIZE;
	} else {
		sha512(t->ev[id], t->ev_len[id], d);
		n = SHA512_DIGEST_SIZE;
	}
	if (!memcmp(d, t->info + off, n))
		return true;
	vtfw_err(t->pdev, "%s does not match the firmware's digest\n", cca_ev_names[id]);
	return false;
}

/*
 * Fresh evidence for a TDI locked with @lock_nonce: the report, measurements
 * for a nonce of ours, the four objects through the host, and an
 * rsi_vdev_info read afterwards that still has @lock_nonce and whose digests
 * match every object.  The old evidence is dropped first.
 */
static int tvm_collect(struct cca_tvm_dev *t, u64 lock_nonce)
{
	int rc, i;

	tvm_evidence_free(t);
	/* fresh evidence: the report, and measurements for a nonce of ours */
	memset(t->page, 0, PAGE_SIZE);
	get_random_bytes(t->page + RMI_VDEV_MEASURE_NONCE, 32);
	rc = tvm_rhi_wait(t, "GET_INTERFACE_REPORT", RHI_DA_VDEV_GET_INTERFACE_REPORT, 0);
	if (!rc)
		rc = tvm_rhi_wait(t, "GET_MEASUREMENTS", RHI_DA_VDEV_GET_MEASUREMENTS,
				  vtfw_pa(t->page));
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
	t->nonce[0] = lock_nonce;
	t->nonce[1] = info64(t, RSI_VDEV_INFO_MEAS_NONCE);
	t->nonce[2] = info64(t, RSI_VDEV_INFO_REPORT_NONCE);
	memcpy(t->ev_info, t->info, RSI_VDEV_INFO_SIZE);
	vtfw_info(t->pdev, "TVM: evidence: certificate %zu, vca %zu, measurements %zu, report %zu bytes, digests match\n",
		  t->ev_len[RHI_OBJ_CERTIFICATE], t->ev_len[RHI_OBJ_VCA],
		  t->ev_len[RHI_OBJ_MEASUREMENT], t->ev_len[RHI_OBJ_INTERFACE_REPORT]);
	return 0;
err:
	tvm_evidence_free(t);
	return rc;
}

static int tvm_lock(struct cca_tvm_dev *t)
{
	int rc;

	rc = tvm_rhi_wait(t, "SET_TDI_STATE(CONFIG_LOCKED)", RHI_DA_VDEV_SET_TDI_STATE,
			  RHI_TDI_CONFIG_LOCKED);
	if (!rc)
		rc = tvm_get_info(t);
	if (rc)
		return rc;
	t->hash_algo = *(u8 *)(t->info + RSI_VDEV_INFO_HASH_ALGO);
	if (t->hash_algo != RSI_HASH_SHA_256 && t->hash_algo != RSI_HASH_SHA_512)
		return -EOPNOTSUPP;
	rc = tvm_collect(t, info64(t, RSI_VDEV_INFO_LOCK_NONCE));
	if (!rc) {
		t->locked = true;
		vtfw_info(t->pdev, "TVM: locked\n");
	}
	return rc;
}

/*
 * TDI_REPORT_STRUCTURE (TDISP 1.0): ... mmio_range_count u32 @12, then 16-byte
 * ranges {first_page u64, number_of_pages u32, range_attributes u32}; pages of
 * 4 KiB, host physical (the RMM's MMIO reporting offset is 0).
 */
#define TDI_REPORT_MMIO_COUNT	12
#define TDI_REPORT_MMIO_RANGES	16

static int tvm_validate_ranges(struct cca_tvm_dev *t)
{
	const u8 *r = t->ev[RHI_OBJ_INTERFACE_REPORT];
	size_t len = t->ev_len[RHI_OBJ_INTERFACE_REPORT];
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
			memcpy(&args[5], t->nonce, sizeof(t->nonce));
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

static int tvm_accept(struct cca_tvm_dev *t)
{
	u64 res[VTFW_NR_RESULTS], args[6];
	int rc;

	rc = tvm_get_info(t);
	if (rc)
		return rc;
	if (info64(t, RSI_VDEV_INFO_LOCK_NONCE) != t->nonce[0])
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
	memcpy(&args[3], t->nonce, sizeof(t->nonce));
	rc = tvm_rsi(t, RSI_VDEV_DMA_ENABLE, args, 6, res);
	if (rc)
		return rc;
	t->accepted = true;
	vtfw_info(t->pdev, "TVM: accepted (MMIO validated, TDI RUN, DMA enabled)\n");
	return 0;
}

static int tvm_unlock(struct cca_tvm_dev *t)
{
	u64 args[] = { tvm_vdev_id(t) };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	rc = tvm_rsi(t, RSI_VDEV_DMA_DISABLE, args, 1, res);
	if (!rc)
		rc = tvm_rhi_wait(t, "SET_TDI_STATE(CONFIG_UNLOCKED)", RHI_DA_VDEV_SET_TDI_STATE,
				  RHI_TDI_CONFIG_UNLOCKED);
	t->locked = false;
	t->accepted = false;
	tvm_evidence_free(t);
	if (!rc)
		vtfw_info(t->pdev, "TVM: unlocked\n");
	return rc;
}

/* -- files: /sys/bus/pci/devices/BDF/tvm/{lock,accept,unlock,state,<evidence>} -- */

static struct cca_tvm_dev *tvm_of(struct device *dev)
{
	struct cca_tvm_dev *t;

	guard(mutex)(&cca_tvm_list_lock);
	list_for_each_entry(t, &cca_tvm_devs, list)
		if (&t->pdev->dev == dev)
			return t;
	return NULL;
}

/* the proposed ABI's preconditions: no driver bound, and a TDI the host bound */
static int tvm_check(struct cca_tvm_dev *t)
{
	if (t->pdev->dev.driver)
		return -EBUSY;
	if (!t->pdev->tsm || !t->pdev->tsm->tdi)
		return -ENXIO;
	return 0;
}

static ssize_t lock_store(struct device *dev, struct device_attribute *attr,
			  const char *buf, size_t count)
{
	struct cca_tvm_dev *t = tvm_of(dev);
	int rc;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	rc = tvm_check(t);
	if (!rc && t->locked)
		rc = -EBUSY;
	if (!rc)
		rc = tvm_lock(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(lock);

static ssize_t accept_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct cca_tvm_dev *t = tvm_of(dev);
	bool yes;
	int rc;

	if (!t)
		return -ENODEV;
	if (kstrtobool(buf, &yes) || !yes)
		return -EINVAL;
	guard(mutex)(&t->lock);
	rc = tvm_check(t);
	if (!rc && !t->locked)
		rc = -EINVAL;	/* accept before lock */
	if (!rc && t->accepted)
		rc = -EBUSY;
	if (!rc)
		rc = tvm_accept(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(accept);

static ssize_t unlock_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct cca_tvm_dev *t = tvm_of(dev);
	int rc;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	rc = tvm_check(t);
	if (!rc && !t->locked)
		rc = -EINVAL;
	if (!rc)
		rc = tvm_unlock(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(unlock);

/*
 * Read the report and the measurements again, under the same lock (the
 * proposed ABI's refresh_evidence).  A TDI the device moved to ERROR fails
 * here: it is the RMM's next exchange with the device that finds out, and
 * tvm/state shows it from then on.
 */
static ssize_t refresh_store(struct device *dev, struct device_attribute *attr,
			     const char *buf, size_t count)
{
	struct cca_tvm_dev *t = tvm_of(dev);
	bool yes;
	int rc;

	if (!t)
		return -ENODEV;
	if (kstrtobool(buf, &yes) || !yes)
		return -EINVAL;
	guard(mutex)(&t->lock);
	if (!t->locked)
		return -EINVAL;
	rc = tvm_collect(t, t->nonce[0]);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(refresh);

/* the TDI's state as the firmware tells the TVM (rsi_vdev_info.state) */
static ssize_t state_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	static const char * const names[] = { "unlocked", "locked", "run", "error" };
	struct cca_tvm_dev *t = tvm_of(dev);
	u8 state;
	int rc;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->pdev->tsm || !t->pdev->tsm->tdi)
		return sysfs_emit(buf, "unbound\n");
	rc = tvm_get_info(t);
	if (rc)
		return rc;
	state = *(u8 *)(t->info + RSI_VDEV_INFO_STATE);
	return sysfs_emit(buf, "%s\n", state < ARRAY_SIZE(names) ? names[state] : "?");
}
static DEVICE_ATTR_RO(state);

static ssize_t tvm_ev_read(struct file *file, struct kobject *kobj,
			   const struct bin_attribute *attr, char *buf, loff_t off, size_t count)
{
	struct cca_tvm_dev *t = tvm_of(kobj_to_dev(kobj));
	unsigned long id = (unsigned long)attr->private;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->locked)
		return -ENODATA;
	return memory_read_from_buffer(buf, count, &off, t->ev[id], t->ev_len[id]);
}

/* the rsi_vdev_info whose digests the evidence matched: for the relying party */
static ssize_t vdev_info_read(struct file *file, struct kobject *kobj,
			      const struct bin_attribute *attr, char *buf, loff_t off,
			      size_t count)
{
	struct cca_tvm_dev *t = tvm_of(kobj_to_dev(kobj));

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->locked)
		return -ENODATA;
	return memory_read_from_buffer(buf, count, &off, t->ev_info, RSI_VDEV_INFO_SIZE);
}
static const BIN_ATTR_RO(vdev_info, RSI_VDEV_INFO_SIZE);

#define TVM_EV_ATTR(_name, _id)						\
	static const struct bin_attribute tvm_ev_##_name = {		\
		.attr = { .name = #_name, .mode = 0444 },		\
		.read = tvm_ev_read,					\
		.private = (void *)(_id),				\
	}

TVM_EV_ATTR(certificate, RHI_OBJ_CERTIFICATE);
TVM_EV_ATTR(vca, RHI_OBJ_VCA);
TVM_EV_ATTR(measurements, RHI_OBJ_MEASUREMENT);
TVM_EV_ATTR(report, RHI_OBJ_INTERFACE_REPORT);

static struct attribute *tvm_attrs[] = {
	&dev_attr_lock.attr,
	&dev_attr_accept.attr,
	&dev_attr_unlock.attr,
	&dev_attr_state.attr,
	&dev_attr_refresh.attr,
	NULL,
};

static const struct bin_attribute *const tvm_bin_attrs[] = {
	&tvm_ev_certificate,
	&tvm_ev_vca,
	&tvm_ev_measurements,
	&tvm_ev_report,
	&bin_attr_vdev_info,
	NULL,
};

static const struct attribute_group tvm_group = {
	.name = "tvm",
	.attrs = tvm_attrs,
	.bin_attrs = tvm_bin_attrs,
};

/*
 * The devsec TSM.  7.3 declares the devsec lock/unlock operations, counts a
 * TSM that has them and never calls them (no tsm/lock); a kernel with the
 * proposed files would, and they do what tvm/lock and tvm/unlock do.
 */
static struct pci_tsm *cca_devsec_lock(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	struct cca_tvm_dev *t = tvm_of(&pdev->dev);
	int rc;

	if (!t)
		return ERR_PTR(-ENXIO);
	guard(mutex)(&t->lock);
	rc = tvm_check(t);
	if (!rc && t->locked)
		rc = -EBUSY;
	if (!rc)
		rc = tvm_lock(t);
	if (rc)
		return ERR_PTR(rc);
	t->devsec.pdev = pdev;
	t->devsec.dsm_dev = pdev;
	t->devsec.tsm_dev = tsm_dev;
	return &t->devsec;
}

static void cca_devsec_unlock(struct pci_tsm *tsm)
{
	struct cca_tvm_dev *t = container_of(tsm, struct cca_tvm_dev, devsec);

	guard(mutex)(&t->lock);
	if (t->locked)
		tvm_unlock(t);
}

static struct pci_tsm_ops cca_devsec_ops = {
	.lock = cca_devsec_lock,
	.unlock = cca_devsec_unlock,
};

static void tvm_dev_free(struct cca_tvm_dev *t)
{
	tvm_evidence_free(t);
	free_page((unsigned long)t->hc);
	free_page((unsigned long)t->info);
	free_page((unsigned long)t->page);
	pci_dev_put(t->pdev);
	kfree(t);
}

/* every TEE-capable function (PCIe DEVCAP TEE-IO) gets a tvm/ directory */
int vtfw_cca_realm_init(struct vtfw_port *port)
{
	struct pci_dev *pdev = NULL;
	struct cca_tvm_dev *t;

	for_each_pci_dev(pdev) {
		if (!pci_is_pcie(pdev) || !(pdev->devcap & PCI_EXP_DEVCAP_TEE))
			continue;
		t = kzalloc_obj(*t);
		if (!t)
			break;
		t->pdev = pci_dev_get(pdev);
		t->port = port;
		mutex_init(&t->lock);
		t->hc = (void *)get_zeroed_page(GFP_KERNEL);
		t->info = (void *)get_zeroed_page(GFP_KERNEL);
		t->page = (void *)get_zeroed_page(GFP_KERNEL);
		if (!t->hc || !t->info || !t->page ||
		    sysfs_create_group(&pdev->dev.kobj, &tvm_group)) {
			tvm_dev_free(t);
			continue;
		}
		scoped_guard(mutex, &cca_tvm_list_lock)
			list_add_tail(&t->list, &cca_tvm_devs);
		vtfw_info(pdev, "TVM: lock/accept/unlock in %s/tvm/\n", pci_name(pdev));
	}
	if (!cca_devsec_tsm) {
		cca_devsec_tsm = tsm_register(&port->pdev->dev, &cca_devsec_ops);
		if (IS_ERR(cca_devsec_tsm)) {
			pci_warn(port->pdev, "devsec TSM not registered: %ld\n",
				 PTR_ERR(cca_devsec_tsm));
			cca_devsec_tsm = NULL;
		} else {
			pci_info(port->pdev, "Arm CCA devsec TSM registered as %s\n",
				 dev_name(&cca_devsec_tsm->dev));
		}
	}
	return 0;
}

void vtfw_cca_realm_exit(struct vtfw_port *port)
{
	struct cca_tvm_dev *t, *next;
	LIST_HEAD(gone);

	if (cca_devsec_tsm && cca_devsec_tsm->dev.parent == &port->pdev->dev) {
		tsm_unregister(cca_devsec_tsm);
		cca_devsec_tsm = NULL;
	}

	scoped_guard(mutex, &cca_tvm_list_lock)
		list_for_each_entry_safe(t, next, &cca_tvm_devs, list)
			if (t->port == port)
				list_move(&t->list, &gone);
	list_for_each_entry_safe(t, next, &gone, list) {
		sysfs_remove_group(&t->pdev->dev.kobj, &tvm_group);
		list_del(&t->list);
		tvm_dev_free(t);
	}
}
