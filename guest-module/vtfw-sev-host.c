// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: AMD SEV-TIO host side, a link TSM driving the PSP (reference/
 * firmware-abi.md D.5), and the hypervisor's handling of the SNP guest's
 * SEV-TIO exits (D.4).
 *
 * once:       TIO_STATUS (buffer sizes), TIO_INIT; SNP_GCTX_CREATE and
 *             SNP_LAUNCH_UPDATE(SECRETS) for the one SNP guest this VM plays
 * connect:    TIO_DEV_CREATE, TIO_DEV_CONNECT while the PSP answers
 *             SPDM_REQUEST: the request object it left in the request buffer
 *             goes to the device with pci_tsm_doe_transfer() (the kernel's DOE
 *             driver), the answer back as the response object, and the same
 *             command again; EXPAND_BUFFER_LENGTH_REQUEST grows the output or
 *             scratch buffer
 * disconnect: TIO_DEV_DISCONNECT (the same loop), TIO_DEV_RECLAIM
 * bind:       TIO_TDI_CREATE; unbind: TIO_TDI_UNBIND if bound, TIO_TDI_RECLAIM
 * guest_req:  the guest's exits as iommufd's TSM_REQ would bring them:
 *             SEV_TIO_OP BIND -> TIO_TDI_BIND, RUN -> TIO_TDI_BIND with
 *             RUN_FORCE, STOP -> TIO_TDI_UNBIND, UNBIND -> TIO_TDI_UNBIND if
 *             still bound; SEV_TIO_GUEST_REQUEST -> TIO_GUEST_REQUEST with the
 *             guest's sealed pages untouched, the TDI state (TIO_TDI_STATUS)
 *             and the evidence in a GUID table in the guest's data pages.
 *
 * Like the ccp driver, the module never speaks SPDM itself: the PSP holds the
 * session and the IDE keys.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/gfp.h>
#include <linux/pci.h>
#include <linux/pci-doe.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>
#include <linux/sockptr.h>
#include <linux/tsm.h>
#include <linux/uuid.h>

#include "vtfw.h"
#include "vtfw-sev.h"

#define SEV_MAX_EXCHANGES	1024
#define SEV_IDE_STREAM_ID	0	/* the selective stream TIO_DEV_CONNECT keys */
#define SEV_STATUS_OFF		0x800	/* status outputs in the second half of a command page */

/* an SLA buffer: physically contiguous data pages, a scatter page when more than one */
struct sev_buf {
	void *va;
	unsigned int order;
	void *scatter;
	u64 sla;
	size_t cap;
};

struct sev_host {
	struct vtfw_port *port;
	void *cmd;		/* command buffer of the host-wide commands */
	void *gctx;		/* the SNP guest's context page */
	void *secrets;		/* its secrets page (VMPCKs), written by the PSP */
	struct sev_tio_status status;
};

/* the DSM (function 0) context: 'struct pci_tsm_pf0' first, as the core casts it */
struct sev_dsm {
	struct pci_tsm_pf0 pf0;
	struct sev_host *host;
	void *cmd;		/* this device's command buffer */
	struct sev_buf dev_ctx, req, resp, scratch, output;
	bool created;
	bool connected;
	u8 *cert, *meas;	/* the PSP's output objects: the evidence cache */
	size_t cert_len, meas_len;
	unsigned int relayed;	/* DOE exchanges relayed for the PSP */
};

struct sev_tdi {
	struct pci_tdi base;
	struct sev_buf ctx;
	bool created;
	u8 *report;
	size_t report_len;
};

static const guid_t sev_guid_certificates = GUID_INIT(0x078ccb75, 0x2644, 0x49e8, 0xaf, 0xe7,
						      0x56, 0x86, 0xc5, 0xcf, 0x72, 0xf1);
static const guid_t sev_guid_measurements = GUID_INIT(0x5caa80c6, 0x12ef, 0x401a, 0xb3, 0x64,
						      0xec, 0x59, 0xa9, 0x3a, 0xbe, 0x3f);
static const guid_t sev_guid_report = GUID_INIT(0x70dc5b0e, 0x0cc0, 0x4cd5, 0x97, 0xbb,
						0xff, 0x0b, 0xa2, 0x5b, 0xf3, 0x20);

static struct sev_dsm *to_sev_dsm(struct pci_dev *pdev)
{
	return container_of(pdev->tsm, struct sev_dsm, pf0.base_tsm);
}

static struct sev_host *tsm_to_host(struct tsm_dev *tsm_dev)
{
	struct vtfw_port *port = pci_get_drvdata(to_pci_dev(tsm_dev->dev.parent));

	return port->platform;
}

static int sev_buf_alloc(struct sev_buf *b, size_t size)
{
	struct sla_buffer_hdr *hdr;
	__le64 *entry;
	unsigned int i;

	b->order = get_order(max_t(size_t, size, PAGE_SIZE));
	b->cap = PAGE_SIZE << b->order;
	b->va = (void *)__get_free_pages(GFP_KERNEL | __GFP_ZERO, b->order);
	if (!b->va)
		return -ENOMEM;
	b->scatter = NULL;
	b->sla = vtfw_pa(b->va);
	if (b->order) {
		b->scatter = (void *)get_zeroed_page(GFP_KERNEL);
		if (!b->scatter) {
			free_pages((unsigned long)b->va, b->order);
			b->va = NULL;
			return -ENOMEM;
		}
		entry = b->scatter;
		for (i = 0; i < b->cap >> PAGE_SHIFT; i++)
			entry[i] = cpu_to_le64(vtfw_pa(b->va + i * PAGE_SIZE));
		entry[i] = cpu_to_le64(SLA_EOL);
		b->sla = vtfw_pa(b->scatter) | SLA_SCATTER;
	}
	hdr = b->va;
	hdr->capacity_sz = cpu_to_le32(b->cap);
	return 0;
}

static void sev_buf_free(struct sev_buf *b)
{
	if (b->va)
		free_pages((unsigned long)b->va, b->order);
	if (b->scatter)
		free_page((unsigned long)b->scatter);
	memset(b, 0, sizeof(*b));
}

/* sla_expand: the capacity the PSP asked for, in a new buffer */
static int sev_buf_expand(struct sev_buf *b, bool *grew)
{
	struct sla_buffer_hdr *hdr = b->va;
	size_t want = le32_to_cpu(hdr->capacity_sz);
	struct sev_buf nb;
	int rc;

	if (want <= b->cap) {
		hdr->capacity_sz = cpu_to_le32(b->cap);
		return 0;
	}
	rc = sev_buf_alloc(&nb, want);
	if (rc)
		return rc;
	sev_buf_free(b);
	*b = nb;
	*grew = true;
	return 0;
}

/* SEV status -> errno, logged against @log */
static int sev_errno(struct pci_dev *log, const char *what, u32 status)
{
	if (status == SEV_RET_SUCCESS)
		return 0;
	vtfw_err(log, "%s: SEV status %#x\n", what, status);
	switch (status) {
	case 0x3a:	/* IN_USE */
		return -EBUSY;
	case SEV_RET_INVALID_LEN:
	case SEV_RET_INVALID_PARAM:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* One PSP command: @cmd holds the command buffer; *status the SEV status. */
static int sev_psp(struct vtfw_port *port, void *cmd, u32 id, u32 *status)
{
	u64 args[] = { vtfw_pa(cmd) };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	rc = vtfw_call(port, VTFW_CLASS_HOST, id, args, ARRAY_SIZE(args), res);
	if (!rc)
		*status = res[0];
	return rc;
}

static int sev_psp_ok(struct vtfw_port *port, struct pci_dev *log, void *cmd, u32 id,
		      const char *what)
{
	u32 status;
	int rc = sev_psp(port, cmd, id, &status);

	return rc ? rc : sev_errno(log, what, status);
}

/* hand the request object to the device, put its answer as the response object */
static int sev_carry(struct sev_dsm *dsm)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	struct sla_buffer_hdr *rsh = dsm->resp.va;
	struct spdm_dobj_hdr_req *rq = dsm->req.va + sizeof(struct sla_buffer_hdr);
	struct spdm_dobj_hdr_req *rs = dsm->resp.va + sizeof(struct sla_buffer_hdr);
	size_t room = dsm->resp.cap - sizeof(*rsh) - sizeof(*rs) - 32;
	u32 len = le32_to_cpu(rq->length);
	u8 data_type = rq->data_type;
	int rc;

	if (le32_to_cpu(rq->id) != SPDM_DOBJ_ID_REQ || len <= sizeof(*rq) ||
	    len > dsm->req.cap - sizeof(*rsh) ||
	    (data_type != SPDM_DATA_TYPE_SPDM && data_type != SPDM_DATA_TYPE_SECURE_SPDM)) {
		vtfw_err(pdev, "PSP request object: id %u length %u type %u\n",
			 le32_to_cpu(rq->id), len, data_type);
		return -EPROTO;
	}
	rc = pci_tsm_doe_transfer(pdev, data_type == SPDM_DATA_TYPE_SECURE_SPDM ?
				  PCI_DOE_FEATURE_SSESSION : PCI_DOE_FEATURE_CMA,
				  rq + 1, len - sizeof(*rq), rs + 1, room);
	dsm->relayed++;
	memset(rs, 0, sizeof(*rs));
	rs->id = cpu_to_le32(SPDM_DOBJ_ID_RESP);
	rs->version = cpu_to_le16(SPDM_DOBJ_VERSION);
	rs->data_type = data_type;
	if (rc < 0) {
		/* an empty response object: the PSP ends the command (ERR_IN_DEV_CONN) */
		vtfw_warn(pdev, "DOE type %u exchange failed: %d\n", data_type, rc);
		rs->length = cpu_to_le32(sizeof(*rs));
	} else {
		rs->length = cpu_to_le32(ALIGN(sizeof(*rs) + rc, 32));
	}
	rsh->payload_sz = rs->length;
	return 0;
}

/*
 * An SPDM-aware command (spdm_ctrl at offset 8 of every one of them): issue
 * it while the PSP answers SPDM_REQUEST (carry the object, re-issue) or
 * EXPAND_BUFFER_LENGTH_REQUEST (grow the output and scratch buffers).
 */
static int sev_spdm(struct sev_dsm *dsm, u32 id, const char *what, u32 *status)
{
	struct spdm_ctrl *ctrl = dsm->cmd + 8;
	struct sla_buffer_hdr *out = dsm->output.va;
	int rc, n, expanded = 0;
	bool grew;

	out->payload_sz = 0;
	for (n = 0; n < SEV_MAX_EXCHANGES; n++) {
		ctrl->req = cpu_to_le64(dsm->req.sla);
		ctrl->resp = cpu_to_le64(dsm->resp.sla);
		ctrl->scratch = cpu_to_le64(dsm->scratch.sla);
		ctrl->output = cpu_to_le64(dsm->output.sla);
		rc = sev_psp(dsm->host->port, dsm->cmd, id, status);
		if (rc)
			return rc;
		if (*status == SEV_RET_EXPAND_BUFFER_LENGTH_REQUEST) {
			grew = false;
			rc = sev_buf_expand(&dsm->output, &grew);
			if (!rc)
				rc = sev_buf_expand(&dsm->scratch, &grew);
			if (!rc && !grew)
				rc = -EPROTO;
			if (rc)
				return rc;
			out = dsm->output.va;
			expanded++;
			continue;
		}
		if (*status != SEV_RET_SPDM_REQUEST) {
			if (expanded)
				vtfw_info(dsm->pf0.base_tsm.pdev,
					  "%s: EXPAND_BUFFER_LENGTH_REQUEST %d times, called again with buffers of %zu/%zu bytes\n",
					  what, expanded, dsm->output.cap, dsm->scratch.cap);
			return 0;
		}
		rc = sev_carry(dsm);
		if (rc)
			return rc;
	}
	return -ELOOP;
}

static int sev_spdm_ok(struct sev_dsm *dsm, u32 id, const char *what)
{
	u32 status;
	int rc = sev_spdm(dsm, id, what, &status);

	return rc ? rc : sev_errno(dsm->pf0.base_tsm.pdev, what, status);
}

static void sev_keep(u8 **dst, size_t *dst_len, const void *data, size_t len)
{
	u8 *copy = kvmemdup(data, len, GFP_KERNEL);

	if (!copy)
		return;
	kvfree(*dst);
	*dst = copy;
	*dst_len = len;
}

/* the certificate, measurement and report objects the last command output */
static void sev_outputs(struct sev_dsm *dsm, struct sev_tdi *tdi)
{
	struct sla_buffer_hdr *hdr = dsm->output.va;
	size_t end = sizeof(*hdr) + min_t(size_t, le32_to_cpu(hdr->payload_sz),
					  dsm->output.cap - sizeof(*hdr));
	size_t off = sizeof(*hdr), len;
	struct spdm_dobj_hdr_out *o;

	while (off + sizeof(*o) <= end) {
		o = dsm->output.va + off;
		len = le32_to_cpu(o->length);
		if (len < sizeof(*o) || len > end - off)
			break;
		switch (le32_to_cpu(o->id)) {
		case SPDM_DOBJ_ID_CERTIFICATE:
			sev_keep(&dsm->cert, &dsm->cert_len, o + 1, len - sizeof(*o));
			break;
		case SPDM_DOBJ_ID_MEASUREMENT:
			sev_keep(&dsm->meas, &dsm->meas_len, o + 1, len - sizeof(*o));
			break;
		case SPDM_DOBJ_ID_REPORT:
			if (tdi)
				sev_keep(&tdi->report, &tdi->report_len, o + 1, len - sizeof(*o));
			break;
		}
		off += ALIGN(len, 32);
	}
}

static void sev_dev_disconnect(struct sev_dsm *dsm)
{
	struct sev_data_tio_dev_disconnect *c = dsm->cmd;
	u32 status;

	if (dsm->connected)
		vtfw_ide_stream_disable(dsm->pf0.base_tsm.pdev);
	memset(dsm->cmd, 0, PAGE_SIZE);
	c->length = cpu_to_le32(sizeof(*c));
	c->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	if (dsm->connected &&
	    !sev_spdm(dsm, SEV_CMD_TIO_DEV_DISCONNECT, "TIO_DEV_DISCONNECT", &status) &&
	    status == SEV_RET_SUCCESS)
		return;
	/* not connected, or the orderly way failed: no traffic, TDIs force-unbound */
	c->flags = cpu_to_le32(TIO_FLAG_FORCE);
	sev_psp_ok(dsm->host->port, dsm->pf0.base_tsm.pdev, dsm->cmd,
		   SEV_CMD_TIO_DEV_DISCONNECT, "TIO_DEV_DISCONNECT(FORCE)");
}

static void sev_release(struct sev_dsm *dsm)
{
	struct sev_data_tio_dev_reclaim *r = dsm->cmd;

	if (dsm->created && dsm->cmd) {
		sev_dev_disconnect(dsm);
		memset(dsm->cmd, 0, PAGE_SIZE);
		r->length = cpu_to_le32(sizeof(*r));
		r->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
		if (sev_psp_ok(dsm->host->port, dsm->pf0.base_tsm.pdev, dsm->cmd,
			       SEV_CMD_TIO_DEV_RECLAIM, "TIO_DEV_RECLAIM"))
			dsm->dev_ctx.va = NULL;	/* still the PSP's: never reuse it */
	}
	dsm->created = false;
	dsm->connected = false;
	sev_buf_free(&dsm->dev_ctx);
	sev_buf_free(&dsm->req);
	sev_buf_free(&dsm->resp);
	sev_buf_free(&dsm->scratch);
	sev_buf_free(&dsm->output);
	kvfree(dsm->cert);
	kvfree(dsm->meas);
	dsm->cert = dsm->meas = NULL;
	dsm->cert_len = dsm->meas_len = 0;
	free_page((unsigned long)dsm->cmd);
	dsm->cmd = NULL;
}

static int sev_connect(struct pci_dev *pdev)
{
	struct sev_dsm *dsm = to_sev_dsm(pdev);
	struct sev_tio_status *st = &dsm->host->status;
	struct pci_dev *rp = pcie_find_root_port(pdev);
	struct sev_data_tio_dev_create *create;
	struct sev_data_tio_dev_connect *conn;
	int rc;

	dsm->relayed = 0;
	dsm->cmd = (void *)get_zeroed_page(GFP_KERNEL);
	if (!dsm->cmd)
		return -ENOMEM;
	rc = sev_buf_alloc(&dsm->dev_ctx, le32_to_cpu(st->devctx_size));
	if (!rc)
		rc = sev_buf_alloc(&dsm->req, le32_to_cpu(st->spdm_req_size_max));
	if (!rc)
		rc = sev_buf_alloc(&dsm->resp, le32_to_cpu(st->spdm_rsp_size_max));
	if (!rc)
		rc = sev_buf_alloc(&dsm->scratch, le32_to_cpu(st->spdm_scratch_size_min));
	if (!rc)
		rc = sev_buf_alloc(&dsm->output, le32_to_cpu(st->spdm_out_size_min));
	if (rc)
		goto err;

	create = dsm->cmd;
	create->length = cpu_to_le32(sizeof(*create));
	create->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	create->device_id = cpu_to_le16(pci_dev_id(pdev));
	create->root_port_id = cpu_to_le16(rp ? pci_dev_id(rp) : 0);
	create->segment_id = pci_domain_nr(pdev->bus);
	rc = sev_psp_ok(dsm->host->port, pdev, dsm->cmd, SEV_CMD_TIO_DEV_CREATE,
			"TIO_DEV_CREATE");
	if (rc)
		goto err;
	dsm->created = true;

	memset(dsm->cmd, 0, PAGE_SIZE);
	conn = dsm->cmd;
	conn->length = cpu_to_le32(sizeof(*conn));
	conn->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	conn->tc_mask = BIT(0);		/* traffic class 0 */
	conn->cert_slot = 0;
	conn->ide_stream_id[0] = SEV_IDE_STREAM_ID;
	rc = sev_spdm_ok(dsm, SEV_CMD_TIO_DEV_CONNECT, "TIO_DEV_CONNECT");
	if (rc)
		goto err;
	dsm->connected = true;
	sev_outputs(dsm, NULL);
	/* the PSP keyed the stream; QEMU's root port has no IDE: the endpoint's half is ours */
	rc = vtfw_ide_stream_enable(pdev, SEV_IDE_STREAM_ID);
	if (rc)
		goto err;
	vtfw_info(pdev, "connected through the PSP: %u DOE exchanges, certificates %zu, measurements %zu bytes\n",
		  dsm->relayed, dsm->cert_len, dsm->meas_len);
	return 0;
err:
	vtfw_err(pdev, "connect failed: %d\n", rc);
	sev_release(dsm);
	return rc;
}

static void sev_disconnect(struct pci_dev *pdev)
{
	sev_release(to_sev_dsm(pdev));
	vtfw_info(pdev, "disconnected\n");
}

/* the PSP's TDI context state ([MODEL] TIO_TDI_STATUS output) */
static int sev_tdi_state(struct sev_dsm *dsm, struct sev_tdi *tdi, u8 *state)
{
	struct sev_data_tio_tdi_status *c = dsm->cmd;
	struct sev_tio_tdi_status *out = dsm->cmd + SEV_STATUS_OFF;
	int rc;

	memset(dsm->cmd, 0, PAGE_SIZE);
	c->length = cpu_to_le32(sizeof(*c));
	c->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	c->tdi_ctx_sla = cpu_to_le64(tdi->ctx.sla);
	c->status_paddr = cpu_to_le64(vtfw_pa(out));
	rc = sev_psp_ok(dsm->host->port, tdi->base.pdev, dsm->cmd, SEV_CMD_TIO_TDI_STATUS,
			"TIO_TDI_STATUS");
	if (!rc)
		*state = out->state;
	return rc;
}

static bool sev_state_bound(u8 state)
{
	return state == SEV_TDI_LOCKED || state == SEV_TDI_RUN || state == SEV_TDI_ERROR;
}

static u32 sev_tdi_bind_cmd(struct sev_dsm *dsm, struct sev_tdi *tdi, u16 run_flags)
{
	struct sev_data_tio_tdi_bind *c = dsm->cmd;
	u32 status;

	memset(dsm->cmd, 0, PAGE_SIZE);
	c->length = cpu_to_le32(sizeof(*c));
	c->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	c->tdi_ctx_sla = cpu_to_le64(tdi->ctx.sla);
	c->gctx_paddr = cpu_to_le64(vtfw_pa(dsm->host->gctx));
	c->guest_device_id = cpu_to_le16(tdi->base.tdi_id);
	c->tdisp_lock_if_flags = cpu_to_le16(TIO_TDI_BIND_FLAG_NO_FW_UPDATE);
	c->run_flags = cpu_to_le16(run_flags);
	if (sev_spdm(dsm, SEV_CMD_TIO_TDI_BIND, "TIO_TDI_BIND", &status))
		return SEV_RET_INVALID_PARAM;
	if (status == SEV_RET_SUCCESS)
		sev_outputs(dsm, tdi);
	return status;
}

/* TIO_TDI_UNBIND (TDISP STOP_INTERFACE); FORCE when the orderly way is refused */
static u32 sev_tdi_unbind_cmd(struct sev_dsm *dsm, struct sev_tdi *tdi)
{
	struct sev_data_tio_tdi_unbind *c = dsm->cmd;
	u32 status = SEV_RET_SUCCESS;

	memset(dsm->cmd, 0, PAGE_SIZE);
	c->length = cpu_to_le32(sizeof(*c));
	c->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	c->tdi_ctx_sla = cpu_to_le64(tdi->ctx.sla);
	c->gctx_paddr = cpu_to_le64(vtfw_pa(dsm->host->gctx));
	if (!sev_spdm(dsm, SEV_CMD_TIO_TDI_UNBIND, "TIO_TDI_UNBIND", &status) &&
	    status == SEV_RET_SUCCESS)
		return status;
	vtfw_warn(tdi->base.pdev, "TIO_TDI_UNBIND: SEV status %#x, unbinding with FORCE\n",
		  status);
	c->flags = cpu_to_le32(TIO_FLAG_FORCE);
	if (sev_psp(dsm->host->port, dsm->cmd, SEV_CMD_TIO_TDI_UNBIND, &status))
		return SEV_RET_INVALID_PARAM;
	return status;
}

/* TIO_TDI_REPORT: the interface report again, into the host's cache */
static u32 sev_tdi_report_cmd(struct sev_dsm *dsm, struct sev_tdi *tdi)
{
	struct sev_data_tio_tdi_unbind *c = dsm->cmd;
	u32 status;

	memset(dsm->cmd, 0, PAGE_SIZE);
	c->length = cpu_to_le32(sizeof(*c));
	c->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	c->tdi_ctx_sla = cpu_to_le64(tdi->ctx.sla);
	c->gctx_paddr = cpu_to_le64(vtfw_pa(dsm->host->gctx));
	if (sev_spdm(dsm, SEV_CMD_TIO_TDI_REPORT, "TIO_TDI_REPORT", &status))
		return SEV_RET_INVALID_PARAM;
	if (status == SEV_RET_SUCCESS)
		sev_outputs(dsm, tdi);
	else
		vtfw_warn(tdi->base.pdev, "TIO_TDI_REPORT: SEV status %#x\n", status);
	return status;
}

static const char * const sev_tdi_states[] = {
	"UNBOUND", "BINDING", "LOCKED", "STARTING", "RUN", "UNBINDING", "ERROR",
};

static const char *sev_tdi_state_name(u8 state)
{
	return state < ARRAY_SIZE(sev_tdi_states) ? sev_tdi_states[state] : "?";
}

static struct pci_tdi *sev_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id)
{
	struct sev_dsm *dsm = to_sev_dsm(pdev->tsm->dsm_dev);
	struct sev_data_tio_tdi_create *c;
	struct sev_tdi *tdi;
	int rc;

	tdi = kzalloc_obj(*tdi);
	if (!tdi)
		return ERR_PTR(-ENOMEM);
	tdi->base.pdev = pdev;
	rc = sev_buf_alloc(&tdi->ctx, le32_to_cpu(dsm->host->status.tdictx_size));
	if (rc)
		goto err;
	memset(dsm->cmd, 0, PAGE_SIZE);
	c = dsm->cmd;
	c->length = cpu_to_le32(sizeof(*c));
	c->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	c->tdi_ctx_sla = cpu_to_le64(tdi->ctx.sla);
	c->function_id = cpu_to_le32(pci_dev_id(pdev));	/* TDISP INTERFACE_ID */
	rc = sev_psp_ok(dsm->host->port, pdev, dsm->cmd, SEV_CMD_TIO_TDI_CREATE,
			"TIO_TDI_CREATE");
	if (rc)
		goto err;
	tdi->created = true;
	/* the TDI stays unbound at the PSP until the guest asks (SEV_TIO_OP BIND) */
	pci_tsm_tdi_constructor(pdev, &tdi->base, kvm, tdi_id);
	vtfw_info(pdev, "TDI context created for guest RID %#x\n", tdi_id);
	return &tdi->base;
err:
	vtfw_err(pdev, "bind failed: %d\n", rc);
	sev_buf_free(&tdi->ctx);
	kfree(tdi);
	return ERR_PTR(rc);
}

static void sev_unbind(struct pci_tdi *base)
{
	struct sev_tdi *tdi = container_of(base, struct sev_tdi, base);
	struct sev_dsm *dsm = to_sev_dsm(base->pdev->tsm->dsm_dev);
	struct sev_data_tio_tdi_reclaim *r = dsm->cmd;
	u8 state = SEV_TDI_UNBOUND;

	if (tdi->created) {
		if (!sev_tdi_state(dsm, tdi, &state) && sev_state_bound(state))
			sev_tdi_unbind_cmd(dsm, tdi);
		memset(dsm->cmd, 0, PAGE_SIZE);
		r->length = cpu_to_le32(sizeof(*r));
		r->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
		r->tdi_ctx_sla = cpu_to_le64(tdi->ctx.sla);
		if (sev_psp_ok(dsm->host->port, base->pdev, dsm->cmd, SEV_CMD_TIO_TDI_RECLAIM,
			       "TIO_TDI_RECLAIM"))
			tdi->ctx.va = NULL;	/* still the PSP's */
		else
			vtfw_info(base->pdev, "TDI context reclaimed\n");
	}
	sev_buf_free(&tdi->ctx);
	kvfree(tdi->report);
	kfree(tdi);
}

/* -- the hypervisor's half of the guest's exits ------------------------------ */

static u32 sev_tio_op(struct sev_dsm *dsm, struct sev_tdi *tdi, u64 exitinfo1,
		      struct vtfw_sev_exit_out *out)
{
	struct pci_dev *pdev = tdi->base.pdev;
	u32 action = exitinfo1 >> 32, status;
	u8 from = SEV_TDI_UNBOUND, to = SEV_TDI_UNBOUND;

	if ((exitinfo1 & 0xffff) != tdi->base.tdi_id)
		return SEV_RET_INVALID_TDI;
	sev_tdi_state(dsm, tdi, &from);
	switch (action) {
	case SEV_TIO_OP_BIND:
		status = sev_tdi_bind_cmd(dsm, tdi, 0);
		out->rbx_rcx = pci_dev_id(pdev);	/* tdi_id */
		break;
	case SEV_TIO_OP_RUN:
		status = sev_tdi_bind_cmd(dsm, tdi, TIO_TDI_BIND_RUN_FORCE);
		break;
	case SEV_TIO_OP_STOP:
		status = sev_tdi_unbind_cmd(dsm, tdi);
		break;
	case SEV_TIO_OP_UNBIND:
		status = sev_state_bound(from) ? sev_tdi_unbind_cmd(dsm, tdi) : SEV_RET_SUCCESS;
		break;
	default:
		return SEV_RET_INVALID_PARAM;
	}
	sev_tdi_state(dsm, tdi, &to);
	vtfw_info(pdev, "SEV_TIO_OP %u: TDI %s -> %s, SEV status %#x, %u DOE exchanges so far\n",
		  action, sev_tdi_state_name(from), sev_tdi_state_name(to), status, dsm->relayed);
	return status;
}

/*
 * The evidence as a GUID table in the guest's data pages ([MODEL], D.4).  With
 * @write false only the room is checked: before the message goes to the PSP,
 * so a guest told INVALID_LEN sends the same message again (its number unused).
 */
static u32 sev_evidence_table(struct sev_dsm *dsm, struct sev_tdi *tdi, u64 gpa, u64 npages,
			      bool write, struct vtfw_sev_exit_out *out)
{
	const struct {
		const guid_t *guid;
		const u8 *data;
		size_t len;
	} blobs[] = {
		{ &sev_guid_certificates, dsm->cert, dsm->cert_len },
		{ &sev_guid_measurements, dsm->meas, dsm->meas_len },
		{ &sev_guid_report, tdi->report, tdi->report_len },
	};
	size_t head = (ARRAY_SIZE(blobs) + 1) * sizeof(struct sev_guid_entry), off = head;
	struct sev_guid_entry *e;
	u64 need, i;
	u8 *table;

	for (i = 0; i < ARRAY_SIZE(blobs); i++)
		off += blobs[i].len;
	need = DIV_ROUND_UP(off, PAGE_SIZE);
	if (need > npages) {
		out->rbx_rcx = need;
		return SEV_RET_INVALID_LEN;
	}
	/* the guest's shared pages: this VM is also the guest */
	for (i = 0; i < need; i++)
		if (offset_in_page(gpa) || !pfn_valid(PHYS_PFN(gpa) + i))
			return SEV_RET_INVALID_PARAM;
	if (!write)
		return SEV_RET_SUCCESS;
	table = phys_to_virt(gpa);
	memset(table, 0, head);
	off = head;
	for (i = 0; i < ARRAY_SIZE(blobs); i++) {
		e = (struct sev_guid_entry *)table + i;
		memcpy(e->guid, blobs[i].guid, sizeof(e->guid));
		e->offset = cpu_to_le32(off);
		e->length = cpu_to_le32(blobs[i].len);
		if (blobs[i].len)
			memcpy(table + off, blobs[i].data, blobs[i].len);
		off += blobs[i].len;
	}
	return SEV_RET_SUCCESS;
}

/* TDISP state for RDX: CONFIG_UNLOCKED 0, CONFIG_LOCKED 1, RUN 2, ERROR 3 ([INF] D.6) */
static const u8 sev_tdisp_state[SEV_TDI_NR_STATES] = {
	[SEV_TDI_UNBOUND] = 0, [SEV_TDI_BINDING] = 0, [SEV_TDI_LOCKED] = 1,
	[SEV_TDI_STARTING] = 1, [SEV_TDI_RUN] = 2, [SEV_TDI_UNBINDING] = 2, [SEV_TDI_ERROR] = 3,
};

static u32 sev_guest_request(struct sev_dsm *dsm, struct sev_tdi *tdi,
			     const struct vtfw_sev_exit *ex, struct vtfw_sev_exit_out *out)
{
	struct sev_data_tio_guest_request *c = dsm->cmd;
	u64 param = ex->regs[5];
	u32 status;
	u8 state;

	if ((ex->regs[4] & 0xffff) != tdi->base.tdi_id)
		return SEV_RET_INVALID_TDI;
	/*
	 * [MODEL] the evidence a guest asks for is fetched for it: the report
	 * again (TIO_TDI_REPORT) before the PSP answers TDI_INFO with its digest.
	 */
	if (param & TIO_GUEST_REQUEST_PARAM_REPORT && !sev_tdi_state(dsm, tdi, &state) &&
	    sev_state_bound(state) && state != SEV_TDI_ERROR) {
		status = sev_tdi_report_cmd(dsm, tdi);
		if (status != SEV_RET_SUCCESS)
			return status;
	}
	if (param & TIO_GUEST_REQUEST_PARAM_REPORT) {
		status = sev_evidence_table(dsm, tdi, ex->regs[2], ex->regs[3], false, out);
		if (status != SEV_RET_SUCCESS)
			return status;
	}
	memset(dsm->cmd, 0, PAGE_SIZE);
	c->length = cpu_to_le32(sizeof(*c));
	c->dev_ctx_sla = cpu_to_le64(dsm->dev_ctx.sla);
	c->tdi_ctx_sla = cpu_to_le64(tdi->ctx.sla);
	c->gctx_paddr = cpu_to_le64(vtfw_pa(dsm->host->gctx));
	c->req_paddr = cpu_to_le64(ex->regs[0]);
	c->res_paddr = cpu_to_le64(ex->regs[1]);
	if (sev_spdm(dsm, SEV_CMD_TIO_GUEST_REQUEST, "TIO_GUEST_REQUEST", &status))
		return SEV_RET_INVALID_PARAM;
	if (status != SEV_RET_SUCCESS)
		return status;
	if (param & TIO_GUEST_REQUEST_PARAM_STATE) {
		if (sev_tdi_state(dsm, tdi, &state) || state >= SEV_TDI_NR_STATES)
			return SEV_RET_INVALID_PARAM;
		out->rdx = sev_tdisp_state[state];
	}
	if (param & TIO_GUEST_REQUEST_PARAM_REPORT)
		return sev_evidence_table(dsm, tdi, ex->regs[2], ex->regs[3], true, out);
	return SEV_RET_SUCCESS;
}

/*
 * guest_req carries one SEV-TIO exit ([MODEL] struct vtfw_sev_exit in,
 * struct vtfw_sev_exit_out back, *tsm_code = the SEV status).  SEV_TIO_OP
 * changes the TDI's state: scope STATE_CHANGE only.
 */
static ssize_t sev_guest_req(struct pci_tdi *base, enum pci_tsm_req_scope scope,
			     sockptr_t req_in, size_t in_len, sockptr_t req_out,
			     size_t out_len, u64 *tsm_code)
{
	struct sev_tdi *tdi = container_of(base, struct sev_tdi, base);
	struct sev_dsm *dsm = to_sev_dsm(base->pdev->tsm->dsm_dev);
	struct vtfw_sev_exit_out out = {};
	struct vtfw_sev_exit ex;

	if (in_len != sizeof(ex) || out_len < sizeof(out))
		return -EINVAL;
	if (copy_from_sockptr(&ex, req_in, sizeof(ex)))
		return -EFAULT;
	switch (ex.exit_code) {
	case SVM_VMGEXIT_SEV_TIO_OP:
		if (scope != PCI_TSM_REQ_STATE_CHANGE)
			return -EPERM;
		out.status = sev_tio_op(dsm, tdi, ex.regs[0], &out);
		break;
	case SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST:
		out.status = sev_guest_request(dsm, tdi, &ex, &out);
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (copy_to_sockptr(req_out, &out, sizeof(out)))
		return -EFAULT;
	*tsm_code = out.status;
	return sizeof(out);
}

/*
 * The hypervisor's exit handler for the SNP guest (this VM plays both): the
 * exit goes through the kernel's pci_tsm_guest_req() as iommufd's TSM_REQ
 * would take it, with the scope the request needs.  A guest message's type
 * is in the clear part of its header: TDI_INFO is a read (INFO), the others
 * (MMIO_VALIDATE, MMIO_CONFIG, SDTE_WRITE) change what the TDI may do.
 */
int vtfw_sev_vmgexit(struct vtfw_port *port, struct pci_dev *pdev,
		     const struct vtfw_sev_exit *exit, struct vtfw_sev_exit_out *out)
{
	enum pci_tsm_req_scope scope = PCI_TSM_REQ_STATE_CHANGE;
	const struct snp_guest_msg_hdr *hdr;
	u64 code = 0;
	ssize_t n;

	if (exit->exit_code == SVM_VMGEXIT_SEV_TIO_GUEST_REQUEST) {
		if (!pfn_valid(PHYS_PFN(exit->regs[0])) || offset_in_page(exit->regs[0]))
			return -EFAULT;
		hdr = phys_to_virt(exit->regs[0]);
		if (hdr->msg_type == TIO_MSG_TDI_INFO_REQ)
			scope = PCI_TSM_REQ_INFO;
	}
	n = pci_tsm_guest_req(pdev, scope, KERNEL_SOCKPTR((void *)exit), sizeof(*exit),
			      KERNEL_SOCKPTR(out), sizeof(*out), &code);
	if (n < 0) {
		vtfw_warn(pdev, "SEV-TIO exit %#llx refused by the host: %zd\n",
			  exit->exit_code, n);
		return n;
	}
	return 0;
}

const u8 *vtfw_sev_secrets(struct vtfw_port *port)
{
	struct sev_host *host = port->platform;

	return host->secrets;
}

static struct pci_tsm *sev_probe(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	struct sev_dsm *dsm;

	if (!is_pci_tsm_pf0(pdev))
		return vtfw_link_tdi_probe(tsm_dev, pdev);
	dsm = kzalloc_obj(*dsm);
	if (!dsm)
		return NULL;
	if (pci_tsm_pf0_constructor(pdev, &dsm->pf0, tsm_dev)) {
		kfree(dsm);
		return NULL;
	}
	dsm->host = tsm_to_host(tsm_dev);
	return &dsm->pf0.base_tsm;
}

static void sev_remove(struct pci_tsm *tsm)
{
	struct sev_dsm *dsm;

	if (vtfw_link_tdi_remove(tsm))
		return;
	dsm = container_of(tsm, struct sev_dsm, pf0.base_tsm);
	pci_tsm_pf0_destructor(&dsm->pf0);
	kfree(dsm);
}

static struct pci_tsm_ops sev_link_ops = {
	.probe = sev_probe,
	.remove = sev_remove,
	.connect = sev_connect,
	.disconnect = sev_disconnect,
	.bind = sev_bind,
	.unbind = sev_unbind,
	.guest_req = sev_guest_req,
};

static int sev_tio_status(struct sev_host *host)
{
	struct sev_data_tio_status *c = host->cmd;
	struct sev_tio_status *out = host->cmd + SEV_STATUS_OFF;
	int rc;

	memset(host->cmd, 0, PAGE_SIZE);
	c->length = cpu_to_le32(sizeof(*c));
	c->status_paddr = cpu_to_le64(vtfw_pa(out));
	rc = sev_psp_ok(host->port, host->port->pdev, host->cmd, SEV_CMD_TIO_STATUS,
			"TIO_STATUS");
	if (!rc)
		host->status = *out;
	return rc;
}

/* SNP_GCTX_CREATE + SNP_LAUNCH_UPDATE(SECRETS): the guest's context and its keys */
static int sev_launch_guest(struct sev_host *host)
{
	struct sev_data_snp_launch_update *lu = host->cmd;
	struct sev_data_snp_addr *a = host->cmd;
	struct device *dev = &host->port->pdev->dev;
	int rc;

	host->gctx = (void *)devm_get_free_pages(dev, GFP_KERNEL | __GFP_ZERO, 0);
	host->secrets = (void *)devm_get_free_pages(dev, GFP_KERNEL | __GFP_ZERO, 0);
	if (!host->gctx || !host->secrets)
		return -ENOMEM;
	memset(host->cmd, 0, PAGE_SIZE);
	a->address = cpu_to_le64(vtfw_pa(host->gctx));
	rc = sev_psp_ok(host->port, host->port->pdev, host->cmd, SEV_CMD_SNP_GCTX_CREATE,
			"SNP_GCTX_CREATE");
	if (rc)
		return rc;
	memset(host->cmd, 0, PAGE_SIZE);
	lu->gctx_paddr = cpu_to_le64(vtfw_pa(host->gctx));
	lu->page_info = cpu_to_le32(SNP_PAGE_TYPE_SECRETS << 1);
	lu->address = cpu_to_le64(vtfw_pa(host->secrets));
	return sev_psp_ok(host->port, host->port->pdev, host->cmd, SEV_CMD_SNP_LAUNCH_UPDATE,
			  "SNP_LAUNCH_UPDATE");
}

static int vtfw_sev_init(struct vtfw_port *port)
{
	struct device *dev = &port->pdev->dev;
	struct sev_host *host;
	struct tsm_dev *tsm;
	int rc;

	host = devm_kzalloc(dev, sizeof(*host), GFP_KERNEL);
	if (!host)
		return -ENOMEM;
	host->port = port;
	host->cmd = (void *)devm_get_free_pages(dev, GFP_KERNEL | __GFP_ZERO, 0);
	if (!host->cmd)
		return -ENOMEM;
	port->platform = host;

	rc = sev_tio_status(host);
	if (!rc && !(le32_to_cpu(host->status.flags) & TIO_STATUS_FLAG_INIT_DONE)) {
		struct sev_data_tio_init *init = host->cmd;

		memset(host->cmd, 0, PAGE_SIZE);
		init->length = cpu_to_le32(sizeof(*init));
		rc = sev_psp_ok(port, port->pdev, host->cmd, SEV_CMD_TIO_INIT, "TIO_INIT");
		if (!rc)
			rc = sev_tio_status(host);
	}
	if (rc)
		return rc;
	pci_info(port->pdev, "PSP: SEV-TIO initialised (flags %#x, contexts %u/%u bytes, SPDM buffers up to %u)\n",
		 le32_to_cpu(host->status.flags), le32_to_cpu(host->status.devctx_size),
		 le32_to_cpu(host->status.tdictx_size),
		 le32_to_cpu(host->status.spdm_req_size_max));
	rc = sev_launch_guest(host);
	if (rc)
		return rc;

	tsm = tsm_register(dev, &sev_link_ops);
	if (IS_ERR(tsm))
		return PTR_ERR(tsm);
	port->link_tsm = tsm;
	pci_info(port->pdev, "AMD SEV-TIO link TSM registered as %s\n", dev_name(&tsm->dev));
	rc = vtfw_sev_guest_init(port);
	if (rc) {
		tsm_unregister(tsm);
		port->link_tsm = NULL;
	}
	return rc;
}

static void vtfw_sev_exit(struct vtfw_port *port)
{
	vtfw_sev_guest_exit(port);
	/* disconnects (and so unbinds) every device connected through it */
	if (port->link_tsm)
		tsm_unregister(port->link_tsm);
	port->link_tsm = NULL;
}

const struct vtfw_platform vtfw_sev_platform = {
	.abi_id = VTFW_ABI_SEVT,
	.name = "AMD SEV-TIO",
	.init = vtfw_sev_init,
	.exit = vtfw_sev_exit,
};
