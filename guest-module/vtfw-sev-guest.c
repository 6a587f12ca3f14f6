// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: the SNP guest's SEV-TIO side (reference/firmware-abi.md D.6), behind
 * the TVM core's tvm/ files.
 *
 * lock:   SEV_TIO_OP(BIND) -> SEV_TIO_GUEST_REQUEST with TIO_MSG_TDI_INFO
 *         (param REPORT | STATE): the PSP's SHA-384 digests of the certificate
 *         chain, the measurements and the interface report; the hypervisor's
 *         GUID table of the three objects is checked against them
 * accept: SEV_TIO_OP(RUN) -> TIO_MSG_SDTE_WRITE (V, IR, IW) -> for each TEE
 *         range of the report that is not MSI-X table or PBA:
 *         TIO_MSG_MMIO_VALIDATE (validated = 1)
 * unlock: SEV_TIO_OP(STOP) -> SDTE_WRITE (V = 0) and MMIO_VALIDATE
 *         (validated = 0) per range -> SEV_TIO_OP(UNBIND)
 *
 * Guest messages are SNP guest messages: AES-256-GCM under VMPCK0 with the
 * message sequence number as IV and the header from algo on as additional
 * data, so the hypervisor relaying them can neither read, forge nor replay
 * one.  The kernel's AES-GCM library (crypto/aes-gcm.h, built into the Debian
 * 7.3 kernel: CONFIG_CRYPTO_LIB_AES_GCM=y) seals and opens them; the gcm(aes)
 * AEAD of the crypto API is a module there (CONFIG_CRYPTO_GCM=m).
 *
 * [MODEL] VMPCK0 comes from the secrets page the PSP wrote at launch
 * (SNP_LAUNCH_UPDATE with page type SECRETS); the module's host half launched
 * this VM's SNP guest and hands the page over, as SNP firmware maps it into
 * the guest.  VMGEXITs go to the host half's exit handler in this kernel.
 *
 * Test hooks in tvm/: mmio_validate (send one MMIO_VALIDATE, read its status)
 * and guest_msg_replay (relay the last sealed request again).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <crypto/aes-gcm.h>
#include <crypto/sha2.h>
#include <linux/gfp.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/unaligned.h>
#include <linux/uuid.h>

#include "vtfw.h"
#include "vtfw-sev.h"

#define SEV_DATA_ORDER		2	/* the evidence pages: 16 KiB */
#define SEV_MSG_MAX		(PAGE_SIZE - sizeof(struct snp_guest_msg_hdr))

/* TDI_REPORT_STRUCTURE (TDISP): mmio_range_count u32 @12, 16-byte ranges @16 */
#define TDI_REPORT_MMIO_COUNT	12
#define TDI_REPORT_MMIO_RANGES	16
#define MMIO_ATTR_MSIX_TABLE	BIT(0)
#define MMIO_ATTR_MSIX_PBA	BIT(1)
#define MMIO_ATTR_NON_TEE_MEM	BIT(2)

/* the SNP guest (this VM): one VMPCK, one sequence counter */
struct sev_guest {
	struct mutex lock;	/* one message at a time */
	struct aes_gcm_key key;
	u64 seqno;		/* the last number used: requests odd, responses even */
	void *req;		/* shared pages the hypervisor relays */
	void *res;
	u8 last[PAGE_SIZE];	/* the last sealed request, for guest_msg_replay */
};

static struct sev_guest *sev_guest;

struct sev_tvm {
	void *data;		/* shared pages for the evidence */
	int mmio_status;	/* of the last tvm/mmio_validate */
};

static u16 sev_rid(struct vtfw_tvm_dev *t)
{
	return pci_dev_id(t->pdev);	/* the host bound the TDI with this id */
}

static struct sev_tvm *to_sev(struct vtfw_tvm_dev *t)
{
	return t->priv;
}

static int sev_op(struct vtfw_tvm_dev *t, enum sev_tio_op op, const char *what)
{
	struct vtfw_sev_exit ex = {
		.exit_code = SVM_VMGEXIT_SEV_TIO_OP,
		.regs = { (u64)op << 32 | sev_rid(t) },
	};
	struct vtfw_sev_exit_out out = {};
	int rc = vtfw_sev_vmgexit(t->port, t->pdev, &ex, &out);

	if (!rc && out.status != SEV_RET_SUCCESS) {
		vtfw_err(t->pdev, "SEV_TIO_OP %s: status %#llx\n", what, out.status);
		rc = out.status == SEV_RET_INVALID_TDI ? -ENXIO : -EIO;
	}
	return rc;
}

static int sev_exit_request(struct vtfw_tvm_dev *t, u64 param, struct vtfw_sev_exit_out *out)
{
	struct vtfw_sev_exit ex = {
		.exit_code = SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST,
		.regs = { vtfw_pa(sev_guest->req), vtfw_pa(sev_guest->res),
			  vtfw_pa(to_sev(t)->data), 1 << SEV_DATA_ORDER, sev_rid(t), param },
	};

	memset(sev_guest->res, 0, sizeof(struct snp_guest_msg_hdr));
	return vtfw_sev_vmgexit(t->port, t->pdev, &ex, out);
}

static void sev_iv(u8 iv[12], u64 seqno)
{
	memset(iv, 0, 12);
	put_unaligned_le64(seqno, iv);
}

/*
 * One guest message: sealed with the next sequence number, relayed by the
 * hypervisor, the answer opened and checked (type + 1, number + 1, size).
 */
static int sev_msg(struct vtfw_tvm_dev *t, u8 type, const void *req, size_t req_len,
		   void *rsp, size_t rsp_len, u64 param, struct vtfw_sev_exit_out *out)
{
	struct sev_guest *g = sev_guest;
	struct snp_guest_msg_hdr *hdr = g->req, *rh = g->res;
	u64 seqno;
	u8 iv[12];
	int rc;

	if (req_len > SEV_MSG_MAX || rsp_len > SEV_MSG_MAX)
		return -EINVAL;
	guard(mutex)(&g->lock);
	seqno = g->seqno + 1;
	memset(g->req, 0, PAGE_SIZE);
	hdr->msg_seqno = cpu_to_le64(seqno);
	hdr->algo = SNP_AEAD_AES_256_GCM;
	hdr->hdr_version = SNP_MSG_HDR_VERSION;
	hdr->hdr_sz = cpu_to_le16(sizeof(*hdr));
	hdr->msg_type = type;
	hdr->msg_version = TIO_MSG_VERSION;
	hdr->msg_sz = cpu_to_le16(req_len);
	hdr->msg_vmpck = 0;
	sev_iv(iv, seqno);
	aes_gcm_encrypt(g->req + sizeof(*hdr), req, req_len, hdr->authtag,
			g->req + SNP_MSG_AAD_OFFSET, sizeof(*hdr) - SNP_MSG_AAD_OFFSET, iv,
			&g->key);
	memcpy(g->last, g->req, PAGE_SIZE);

	rc = sev_exit_request(t, param, out);
	if (rc)
		return rc;
	if (out->status != SEV_RET_SUCCESS) {
		/* refused before the PSP took the number: the counter stays */
		vtfw_err(t->pdev, "guest message %u #%llu: status %#llx\n", type, seqno,
			 out->status);
		return out->status == SEV_RET_INVALID_LEN ? -EOVERFLOW : -EIO;
	}
	/* the PSP used seqno and seqno + 1, whatever comes back */
	g->seqno += 2;
	if (rh->algo != SNP_AEAD_AES_256_GCM || rh->hdr_version != SNP_MSG_HDR_VERSION ||
	    le16_to_cpu(rh->hdr_sz) != sizeof(*rh) || rh->msg_type != type + 1 ||
	    le64_to_cpu(rh->msg_seqno) != seqno + 1 || le16_to_cpu(rh->msg_sz) != rsp_len ||
	    rh->msg_vmpck != 0) {
		vtfw_err(t->pdev, "guest message %u #%llu: answer type %u #%llu size %u\n", type,
			 seqno, rh->msg_type, le64_to_cpu(rh->msg_seqno), le16_to_cpu(rh->msg_sz));
		return -EBADMSG;
	}
	sev_iv(iv, seqno + 1);
	if (aes_gcm_decrypt(rsp, g->res + sizeof(*rh), rsp_len, rh->authtag,
			    g->res + SNP_MSG_AAD_OFFSET, sizeof(*rh) - SNP_MSG_AAD_OFFSET, iv,
			    &g->key)) {
		vtfw_err(t->pdev, "guest message %u #%llu: the answer does not authenticate\n",
			 type, seqno);
		return -EBADMSG;
	}
	return 0;
}

static int sev_tdi_info(struct vtfw_tvm_dev *t, u64 param, struct tio_msg_tdi_info_rsp *info,
			struct vtfw_sev_exit_out *out)
{
	struct tio_msg_tdi_info_req req = { .guest_device_id = cpu_to_le16(sev_rid(t)) };

	return sev_msg(t, TIO_MSG_TDI_INFO_REQ, &req, sizeof(req), info, sizeof(*info), param,
		       out);
}

static int sev_mmio_validate(struct vtfw_tvm_dev *t, u16 range_id, u64 base, u32 pages,
			     u32 offset, bool validated, u16 *status)
{
	struct tio_msg_mmio_validate_req req = {
		.guest_device_id = cpu_to_le16(sev_rid(t)),
		.subrange_base = cpu_to_le64(base),
		.subrange_page_count = cpu_to_le32(pages),
		.range_offset = cpu_to_le32(offset),
		.flags = cpu_to_le16(validated ? MMIO_VALIDATE_FLAG_VALIDATED : 0),
		.range_id = cpu_to_le16(range_id),
	};
	struct tio_msg_mmio_validate_rsp rsp;
	struct vtfw_sev_exit_out out = {};
	int rc;

	rc = sev_msg(t, TIO_MSG_MMIO_VALIDATE_REQ, &req, sizeof(req), &rsp, sizeof(rsp), 0,
		     &out);
	if (!rc)
		*status = le16_to_cpu(rsp.status);
	return rc;
}

static int sev_sdte_write(struct vtfw_tvm_dev *t, bool valid)
{
	struct tio_msg_sdte_write_req req = {
		.guest_device_id = cpu_to_le16(sev_rid(t)),
		.sdte[0] = cpu_to_le64(valid ? SDTE_V | SDTE_IR | SDTE_IW : 0),
	};
	struct tio_msg_sdte_write_rsp rsp;
	struct vtfw_sev_exit_out out = {};
	int rc;

	rc = sev_msg(t, TIO_MSG_SDTE_WRITE_REQ, &req, sizeof(req), &rsp, sizeof(rsp), 0, &out);
	if (!rc && rsp.status) {
		vtfw_err(t->pdev, "SDTE_WRITE: status %u\n", le16_to_cpu(rsp.status));
		rc = -EIO;
	}
	return rc;
}

static const guid_t sev_guids[] = {
	[VTFW_EV_CERTIFICATE] = GUID_INIT(0x078ccb75, 0x2644, 0x49e8, 0xaf, 0xe7,
					  0x56, 0x86, 0xc5, 0xcf, 0x72, 0xf1),
	[VTFW_EV_VCA] = {},
	[VTFW_EV_MEASUREMENTS] = GUID_INIT(0x5caa80c6, 0x12ef, 0x401a, 0xb3, 0x64,
					   0xec, 0x59, 0xa9, 0x3a, 0xbe, 0x3f),
	[VTFW_EV_REPORT] = GUID_INIT(0x70dc5b0e, 0x0cc0, 0x4cd5, 0x97, 0xbb,
				     0xff, 0x0b, 0xa2, 0x5b, 0xf3, 0x20),
};

/* the hypervisor's GUID table: one blob, found by its GUID and checked for size */
static int sev_blob(struct vtfw_tvm_dev *t, enum vtfw_ev id, const u8 **blob, u32 *len)
{
	const size_t size = PAGE_SIZE << SEV_DATA_ORDER;
	const struct sev_guid_entry *e = to_sev(t)->data;
	u32 off;

	for (; (void *)(e + 1) <= to_sev(t)->data + size && !guid_is_null((guid_t *)e->guid);
	     e++) {
		if (!guid_equal((guid_t *)e->guid, &sev_guids[id]))
			continue;
		off = le32_to_cpu(e->offset);
		*len = le32_to_cpu(e->length);
		if (off > size || *len > size - off)
			return -EBADMSG;
		*blob = to_sev(t)->data + off;
		return 0;
	}
	return -ENOENT;
}

/*
 * The evidence for a bound TDI: TDI_INFO with the GUID table, every object
 * checked against the PSP's SHA-384 digest (the relaying host is not trusted).
 */
static int sev_collect(struct vtfw_tvm_dev *t)
{
	static const struct {
		enum vtfw_ev id;
		unsigned int digest;
		const char *name;
	} objs[] = {
		{ VTFW_EV_CERTIFICATE, offsetof(struct tio_msg_tdi_info_rsp, certs_digest),
		  "certificate" },
		{ VTFW_EV_MEASUREMENTS, offsetof(struct tio_msg_tdi_info_rsp, meas_digest),
		  "measurements" },
		{ VTFW_EV_REPORT, offsetof(struct tio_msg_tdi_info_rsp, interface_report_digest),
		  "report" },
	};
	struct vtfw_sev_exit_out out = {};
	struct tio_msg_tdi_info_rsp info;
	u8 d[SHA384_DIGEST_SIZE];
	const u8 *blob;
	unsigned int i;
	u32 len;
	int rc;

	rc = sev_tdi_info(t, TIO_GUEST_REQUEST_PARAM_REPORT | TIO_GUEST_REQUEST_PARAM_STATE,
			  &info, &out);
	if (rc)
		return rc;
	if (le16_to_cpu(info.tdi_status) != TDI_INFO_STATUS_BOUND) {
		vtfw_err(t->pdev, "TDI_INFO: tdi_status %u\n", le16_to_cpu(info.tdi_status));
		return -EIO;
	}
	for (i = 0; i < ARRAY_SIZE(objs); i++) {
		rc = sev_blob(t, objs[i].id, &blob, &len);
		if (rc) {
			vtfw_err(t->pdev, "evidence: no %s in the host's table\n", objs[i].name);
			return rc;
		}
		sha384(blob, len, d);
		if (memcmp(d, (u8 *)&info + objs[i].digest, sizeof(d))) {
			vtfw_err(t->pdev, "%s does not match the PSP's digest\n", objs[i].name);
			return -EBADMSG;
		}
		rc = vtfw_tvm_set_evidence(t, objs[i].id, blob, len);
		if (rc)
			return rc;
	}
	rc = vtfw_tvm_set_evidence(t, VTFW_EV_INFO, &info, sizeof(info));
	if (rc)
		return rc;
	vtfw_info(t->pdev, "TVM: evidence: certificate %zu, measurements %zu, report %zu bytes, SHA-384 digests match TDI_INFO (TDISP state %llu)\n",
		  t->ev_len[VTFW_EV_CERTIFICATE], t->ev_len[VTFW_EV_MEASUREMENTS],
		  t->ev_len[VTFW_EV_REPORT], out.rdx);
	return 0;
}

static int sev_lock(struct vtfw_tvm_dev *t)
{
	int rc = sev_op(t, SEV_TIO_OP_BIND, "BIND");

	if (!rc)
		rc = sev_collect(t);
	return rc;
}

/* the report's MMIO ranges a TVM validates: TEE memory, neither MSI-X table nor PBA */
static int sev_ranges(struct vtfw_tvm_dev *t, bool validated, unsigned int *done)
{
	const u8 *r = t->ev[VTFW_EV_REPORT];
	size_t len = t->ev_len[VTFW_EV_REPORT];
	u32 count, i, pages;
	u16 attrs, id, status;
	u64 base;
	int rc;

	*done = 0;
	if (len < TDI_REPORT_MMIO_RANGES)
		return -EBADMSG;
	count = get_unaligned_le32(r + TDI_REPORT_MMIO_COUNT);
	if (len < TDI_REPORT_MMIO_RANGES + 16ULL * count)
		return -EBADMSG;
	for (i = 0; i < count; i++) {
		const u8 *m = r + TDI_REPORT_MMIO_RANGES + 16 * i;

		base = get_unaligned_le64(m) << 12;	/* 4 KiB pages, MMIO offset 0 */
		pages = get_unaligned_le32(m + 8);
		attrs = get_unaligned_le16(m + 12);
		id = get_unaligned_le16(m + 14);
		if (attrs & (MMIO_ATTR_MSIX_TABLE | MMIO_ATTR_MSIX_PBA | MMIO_ATTR_NON_TEE_MEM))
			continue;
		rc = sev_mmio_validate(t, id, base, pages, 0, validated, &status);
		if (rc)
			return rc;
		if (status) {
			vtfw_err(t->pdev, "MMIO_VALIDATE range %u %#llx+%u pages: status %u\n", id,
				 base, pages, status);
			return -EACCES;
		}
		(*done)++;
	}
	return 0;
}

static int sev_accept(struct vtfw_tvm_dev *t)
{
	unsigned int n;
	int rc;

	rc = sev_op(t, SEV_TIO_OP_RUN, "RUN");
	if (!rc)
		rc = sev_sdte_write(t, true);
	if (!rc)
		rc = sev_ranges(t, true, &n);
	if (!rc)
		vtfw_info(t->pdev, "TVM: accepted (TDI RUN, sDTE written, %u TEE ranges validated)\n",
			  n);
	return rc;
}

static int sev_unlock(struct vtfw_tvm_dev *t)
{
	unsigned int n;
	int rc, rc2;

	rc = sev_op(t, SEV_TIO_OP_STOP, "STOP");
	/* invalidate whatever STOP said: the TVM stops trusting the TDI */
	rc2 = sev_sdte_write(t, false);
	rc = rc ? rc : rc2;
	rc2 = sev_ranges(t, false, &n);
	rc = rc ? rc : rc2;
	rc2 = sev_op(t, SEV_TIO_OP_UNBIND, "UNBIND");
	return rc ? rc : rc2;
}

static int sev_refresh(struct vtfw_tvm_dev *t)
{
	return sev_collect(t);
}

static int sev_state(struct vtfw_tvm_dev *t)
{
	struct vtfw_sev_exit_out out = {};
	struct tio_msg_tdi_info_rsp info;
	int rc;

	rc = sev_tdi_info(t, TIO_GUEST_REQUEST_PARAM_STATE, &info, &out);
	if (rc)
		return rc;
	/* RDX: TDISP CONFIG_UNLOCKED 0, CONFIG_LOCKED 1, RUN 2, ERROR 3 */
	return out.rdx <= VTFW_TVM_ERROR ? out.rdx : -EPROTO;
}

/* tvm/mmio_validate: "range_id base pages offset" -> one MMIO_VALIDATE; read: its status */
static ssize_t mmio_validate_store(struct device *dev, struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);
	u32 pages, offset;
	u16 id, status;
	u64 base;
	int rc;

	if (!t)
		return -ENODEV;
	if (sscanf(buf, "%hu %llx %u %u", &id, &base, &pages, &offset) != 4)
		return -EINVAL;
	guard(mutex)(&t->lock);
	if (!t->pdev->tsm || !t->pdev->tsm->tdi)
		return -ENXIO;
	rc = sev_mmio_validate(t, id, base, pages, offset, true, &status);
	if (rc)
		return rc;
	to_sev(t)->mmio_status = status;
	vtfw_info(t->pdev, "TVM: MMIO_VALIDATE range %u %#llx+%u pages offset %u: status %u\n",
		  id, base, pages, offset, status);
	return count;
}

static ssize_t mmio_validate_show(struct device *dev, struct device_attribute *attr,
				  char *buf)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);

	if (!t)
		return -ENODEV;
	return sysfs_emit(buf, "%d\n", to_sev(t)->mmio_status);
}
static DEVICE_ATTR_RW(mmio_validate);

/*
 * tvm/guest_msg_replay (write 1): what a malicious relay would do, the last
 * sealed request sent again as it was.  The PSP must refuse it: the write
 * then fails with EACCES; it succeeds only if the PSP took the replay.
 */
static ssize_t guest_msg_replay_store(struct device *dev, struct device_attribute *attr,
				      const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);
	struct sev_guest *g = sev_guest;
	struct vtfw_sev_exit_out out = {};
	struct snp_guest_msg_hdr *hdr;
	int rc;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->pdev->tsm || !t->pdev->tsm->tdi)
		return -ENXIO;
	scoped_guard(mutex, &g->lock) {
		hdr = (struct snp_guest_msg_hdr *)g->last;
		if (!hdr->msg_seqno)
			return -ENODATA;
		memcpy(g->req, g->last, PAGE_SIZE);
		rc = sev_exit_request(t, 0, &out);
	}
	if (rc)
		return rc;
	vtfw_info(t->pdev, "TVM: replayed guest message %u #%llu: SEV status %#llx\n",
		  hdr->msg_type, le64_to_cpu(hdr->msg_seqno), out.status);
	return out.status == SEV_RET_SUCCESS ? count : -EACCES;
}
static DEVICE_ATTR_WO(guest_msg_replay);

static struct attribute *sev_tvm_attrs[] = {
	&dev_attr_mmio_validate.attr,
	&dev_attr_guest_msg_replay.attr,
	NULL,
};

static const struct attribute_group sev_tvm_group = {
	.name = "tvm",
	.attrs = sev_tvm_attrs,
};

static int sev_setup(struct vtfw_tvm_dev *t)
{
	struct sev_tvm *s = kzalloc_obj(*s);

	if (!s)
		return -ENOMEM;
	s->data = (void *)__get_free_pages(GFP_KERNEL | __GFP_ZERO, SEV_DATA_ORDER);
	if (!s->data) {
		kfree(s);
		return -ENOMEM;
	}
	t->priv = s;
	return 0;
}

static void sev_teardown(struct vtfw_tvm_dev *t)
{
	struct sev_tvm *s = t->priv;

	if (!s)
		return;
	free_pages((unsigned long)s->data, SEV_DATA_ORDER);
	kfree(s);
	t->priv = NULL;
}

static const struct vtfw_tvm_ops sev_tvm_ops = {
	.name = "AMD SEV-TIO",
	.info_name = "tdi_info",
	.evidence = BIT(VTFW_EV_CERTIFICATE) | BIT(VTFW_EV_MEASUREMENTS) | BIT(VTFW_EV_REPORT) |
		    BIT(VTFW_EV_INFO),
	.setup = sev_setup,
	.teardown = sev_teardown,
	.lock = sev_lock,
	.accept = sev_accept,
	.unlock = sev_unlock,
	.refresh = sev_refresh,
	.state = sev_state,
	.extra = &sev_tvm_group,
};

int vtfw_sev_guest_init(struct vtfw_port *port)
{
	struct sev_guest *g;
	int rc;

	g = kzalloc_obj(*g);
	if (!g)
		return -ENOMEM;
	mutex_init(&g->lock);
	g->req = (void *)get_zeroed_page(GFP_KERNEL);
	g->res = (void *)get_zeroed_page(GFP_KERNEL);
	rc = g->req && g->res ? 0 : -ENOMEM;
	if (!rc)
		rc = aes_gcm_preparekey(&g->key, vtfw_sev_secrets(port) + SNP_SECRETS_VMPCK0,
					VMPCK_KEY_LEN, SNP_AUTHTAG_LEN);
	if (rc) {
		free_page((unsigned long)g->req);
		free_page((unsigned long)g->res);
		kfree_sensitive(g);
		return rc;
	}
	sev_guest = g;
	return vtfw_tvm_init(port, &sev_tvm_ops);
}

void vtfw_sev_guest_exit(struct vtfw_port *port)
{
	struct sev_guest *g = sev_guest;

	vtfw_tvm_exit(port);
	if (!g)
		return;
	sev_guest = NULL;
	free_page((unsigned long)g->req);
	free_page((unsigned long)g->res);
	kfree_sensitive(g);
}
