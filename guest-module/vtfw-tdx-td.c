// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: Intel TDX Connect TD side, behind the common tvm/ files (vtfw-tvm.c).
 *
 * The sequence of reference/firmware-abi.md B.6 (after the intel-staging
 * tdx-guest connect.c): lock = TDCM CHECK_TEEIO_SUPP, TDCM BIND (the host
 * binds the TDI in the module: TDISP LOCKED), TDG.TDI.RD(BIND_SESSION_ID),
 * TDCM GET_TDI_REPORT and GET_DEV_INFO, TDG.TDI.RD(TDISP_STATE) = LOCKED,
 * the report and the device info hashed and compared with the module's
 * [MODEL] REPORT_HASH / DEVICE_INFO_HASH fields, the bind session read again;
 * accept = TDG.MMIO.ACCEPT per report range, TDG.DMAR.ACCEPT, TDG.TDI.START,
 * TDCM START_TDI, TDG.TDI.RD(TDISP_STATE) = RUN; refresh = TDCM
 * GET_TDI_STATE, TDG.TDI.RD(TDISP_STATE), the evidence again (the module asks
 * the device for both: a TDI the device put in ERROR shows state 3 and the
 * refresh fails with -EIO); unlock = TDCM UNBIND (STOP recovers an ERROR).
 *
 * TDCM requests go as the GHCI has them: the struct tdvmcall_tdcm in a
 * buffer of the TD, TDG.VP.VMCALL<TDCM> (R11 0x10007, R12 device, R13
 * buffer, R14 size), and the VMM (here the same kernel,
 * vtfw_tdx_serve_tdcm()) answers into the buffer.
 *
 * tvm/tdi_info (128 bytes): the module's REPORT_HASH, its DEVICE_INFO_HASH
 * (SHA-384 each) and the [MODEL] dev_info header, so a relying party can
 * rebuild dev_info (header, certificate, vca, measurements) and check both.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <crypto/sha2.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>
#include <linux/unaligned.h>

#include "vtfw.h"
#include "vtfw-tdx.h"

#define TDI_INFO_SIZE	(2 * TDX_HASH_SIZE + DEV_INFO_HEADER_SIZE)
#define TDX_EV_MAX	SZ_1M

struct tdx_td_dev {
	u64 func_id;
	void *buf;		/* the TDCM shared buffer */
	void *page;		/* hash fields */
	u64 session;
	u8 info[TDI_INFO_SIZE];
};

static struct tdx_td_dev *td_of(struct vtfw_tvm_dev *t)
{
	return t->priv;
}

static int td_call(struct vtfw_tvm_dev *t, const char *what, u64 leaf, u64 *regs, u64 *out)
{
	int rc = vtfw_tdx_call(t->port, 1, leaf, regs, out);

	if (!rc && out[0] != TDX_SUCCESS) {
		vtfw_err(t->pdev, "%s: %s (%#llx)\n", what, vtfw_tdx_status_name(out[0]), out[0]);
		rc = -EIO;
	}
	return rc;
}

/* TDG.TDI.RD: the value, or for hash fields the bytes at t->page */
static int td_rd(struct vtfw_tvm_dev *t, u64 field, u64 *val)
{
	struct tdx_td_dev *td = td_of(t);
	u64 regs[TDX_NR_REGS] = { td->func_id, field, vtfw_pa(td->page) };
	u64 out[TDX_NR_REGS + 1];
	int rc = td_call(t, "TDG.TDI.RD", TDG_TDI_RD, regs, out);

	if (!rc)
		*val = out[1 + TDX_RCX];
	return rc;
}

/* One TDCM request; @reply gets the answer's data (kvmalloc'ed) when not NULL */
static int td_tdcm(struct vtfw_tvm_dev *t, enum tdcm_op op, u8 **reply, size_t *len)
{
	struct tdx_td_dev *td = td_of(t);
	size_t size = TDCM_BUF_PAGES * PAGE_SIZE;
	u64 regs[TDX_NR_REGS] = {}, out[TDX_NR_REGS + 1];
	u32 n;
	int rc;

	memset(td->buf, 0, TDCM_HDR_DATA);
	put_unaligned_le16(op, td->buf + TDCM_HDR_OPERATION);
	*(u8 *)(td->buf + TDCM_HDR_STATUS) = TDCM_WAIT;
	regs[TDX_RCX] = 0xfc00;		/* registers R10..R15 passed to the VMM */
	regs[TDX_R11] = TDVMCALL_TDCM;
	regs[TDX_R12] = td->func_id;
	regs[TDX_R13] = vtfw_pa(td->buf);
	regs[TDX_R14] = size;
	rc = td_call(t, "TDG.VP.VMCALL<TDCM>", TDG_VP_VMCALL, regs, out);
	if (rc)
		return rc;
	if (out[1 + TDX_R10] != TDVMCALL_SUCCESS) {
		vtfw_err(t->pdev, "TDCM %u: VMCALL status %#llx\n", op, out[1 + TDX_R10]);
		return out[1 + TDX_R10] == TDVMCALL_RETRY ? -EBUSY : -EIO;
	}
	/* the VCPU exits; the VMM serves the request into the buffer */
	rc = vtfw_tdx_serve_tdcm(t->port);
	if (rc)
		return rc;
	if (*(u8 *)(td->buf + TDCM_HDR_STATUS) != TDCM_COMPLETED) {
		u8 err = *(u8 *)(td->buf + TDCM_HDR_ERROR);

		vtfw_err(t->pdev, "TDCM %u: status %u, error %u\n", op,
			 *(u8 *)(td->buf + TDCM_HDR_STATUS), err);
		return err == TDCM_ERR_INVALID_STATE ? -EINVAL : -EIO;
	}
	n = get_unaligned_le32(td->buf + TDCM_HDR_DATA_LENGTH);
	if (n > size - TDCM_HDR_DATA || n > TDX_EV_MAX)
		return -EPROTO;
	if (reply) {
		*reply = kvmemdup(td->buf + TDCM_HDR_DATA, n, GFP_KERNEL);
		if (!*reply)
			return -ENOMEM;
		*len = n;
	}
	return 0;
}

static int td_state(struct vtfw_tvm_dev *t)
{
	struct tdx_td_dev *td = td_of(t);
	u64 regs[TDX_NR_REGS] = { td->func_id, TDI_RD_TDISP_STATE };
	u64 out[TDX_NR_REGS + 1];
	int rc = vtfw_tdx_call(t->port, 1, TDG_TDI_RD, regs, out);

	if (rc)
		return rc;
	/* bound by the host, not yet in the module: nothing locked */
	if (TDX_STATUS_CLASS(out[0]) == TDX_TDI_NOT_PRESENT)
		return VTFW_TVM_UNLOCKED;
	if (out[0] != TDX_SUCCESS)
		return -EIO;
	return out[1 + TDX_RCX] <= TDX_TDI_ERROR ? (int)out[1 + TDX_RCX] : -EPROTO;
}

/* the module's SHA-384 of @data (TDG.TDI.RD @field) equals ours? */
static int td_hash_check(struct vtfw_tvm_dev *t, u64 field, const u8 *data, size_t len,
			 u8 *dst, const char *what)
{
	struct tdx_td_dev *td = td_of(t);
	u8 d[SHA384_DIGEST_SIZE];
	u64 n;
	int rc;

	rc = td_rd(t, field, &n);
	if (rc)
		return rc;
	if (n != TDX_HASH_SIZE)
		return -EPROTO;
	memcpy(dst, td->page, TDX_HASH_SIZE);
	sha384(data, len, d);
	if (memcmp(d, dst, TDX_HASH_SIZE)) {
		vtfw_err(t->pdev, "%s does not match the module's hash\n", what);
		return -EBADMSG;
	}
	return 0;
}

/*
 * The evidence of a bound TDI: report and dev_info from the host (untrusted),
 * checked against the module's hashes; dev_info split into the certificate
 * chain, VCA and measurements ([MODEL] layout).
 */
static int td_collect(struct vtfw_tvm_dev *t)
{
	struct tdx_td_dev *td = td_of(t);
	u8 *report = NULL, *info = NULL;
	size_t report_len = 0, info_len = 0;
	u32 chain, vca, meas;
	u64 session;
	int rc;

	vtfw_tvm_evidence_free(t);
	rc = td_tdcm(t, TDCM_GET_TDI_REPORT, &report, &report_len);
	if (!rc)
		rc = td_tdcm(t, TDCM_GET_DEV_INFO, &info, &info_len);
	if (!rc)
		rc = td_hash_check(t, TDI_RD_REPORT_HASH, report, report_len, td->info,
				   "interface report");
	if (!rc)
		rc = td_hash_check(t, TDI_RD_DEVICE_INFO_HASH, info, info_len,
				   td->info + TDX_HASH_SIZE, "device info");
	if (rc)
		goto out;
	if (info_len < DEV_INFO_HEADER_SIZE || report_len < 16) {
		rc = -EBADMSG;
		goto out;
	}
	chain = get_unaligned_le32(info + DEV_INFO_CHAIN_LEN);
	vca = get_unaligned_le32(info + DEV_INFO_VCA_LEN);
	meas = get_unaligned_le32(info + DEV_INFO_MEAS_LEN);
	if ((u64)DEV_INFO_HEADER_SIZE + chain + vca + meas != info_len || !chain || !meas) {
		vtfw_err(t->pdev, "device info lengths do not add up\n");
		rc = -EBADMSG;
		goto out;
	}
	memcpy(td->info + 2 * TDX_HASH_SIZE, info, DEV_INFO_HEADER_SIZE);
	rc = vtfw_tvm_set_evidence(t, VTFW_EV_CERTIFICATE, info + DEV_INFO_HEADER_SIZE, chain);
	if (!rc)
		rc = vtfw_tvm_set_evidence(t, VTFW_EV_VCA, info + DEV_INFO_HEADER_SIZE + chain,
					   vca);
	if (!rc)
		rc = vtfw_tvm_set_evidence(t, VTFW_EV_MEASUREMENTS,
					   info + DEV_INFO_HEADER_SIZE + chain + vca, meas);
	if (!rc)
		rc = vtfw_tvm_set_evidence(t, VTFW_EV_REPORT, report, report_len);
	if (!rc)
		rc = vtfw_tvm_set_evidence(t, VTFW_EV_INFO, td->info, TDI_INFO_SIZE);
	/* bound again while we read: the evidence may describe another binding */
	if (!rc)
		rc = td_rd(t, TDI_RD_BIND_SESSION_ID, &session);
	if (!rc && session != td->session) {
		vtfw_err(t->pdev, "the TDI was bound again while its evidence was read\n");
		rc = -EAGAIN;
	}
	if (!rc)
		vtfw_info(t->pdev, "TVM: evidence: certificate %u, vca %u, measurements %u, report %zu bytes, digests match\n",
			  chain, vca, meas, report_len);
out:
	if (rc)
		vtfw_tvm_evidence_free(t);
	kvfree(report);
	kvfree(info);
	return rc;
}

static int td_lock(struct vtfw_tvm_dev *t)
{
	struct tdx_td_dev *td = td_of(t);
	u8 *supp = NULL;
	size_t len = 0;
	int rc, state;

	rc = td_tdcm(t, TDCM_CHECK_TEEIO_SUPP, &supp, &len);
	if (rc)
		return rc;
	rc = len >= 4 && get_unaligned_le32(supp) == 1 ? 0 : -EOPNOTSUPP;
	kvfree(supp);
	if (!rc)
		rc = td_tdcm(t, TDCM_BIND, NULL, NULL);
	if (!rc)
		rc = td_rd(t, TDI_RD_BIND_SESSION_ID, &td->session);
	if (rc)
		return rc;
	state = td_state(t);
	if (state != VTFW_TVM_LOCKED) {
		vtfw_err(t->pdev, "TDI state %d after TDCM BIND, not LOCKED\n", state);
		return state < 0 ? state : -EIO;
	}
	return td_collect(t);
}

static int td_accept(struct vtfw_tvm_dev *t)
{
	struct tdx_td_dev *td = td_of(t);
	const u8 *r = t->ev[VTFW_EV_REPORT];
	u64 regs[TDX_NR_REGS], out[TDX_NR_REGS + 1], session;
	u32 count, i;
	int rc;

	rc = td_rd(t, TDI_RD_BIND_SESSION_ID, &session);
	if (rc)
		return rc;
	if (session != td->session)
		return -ESTALE;		/* unbound and bound again since the evidence */
	count = get_unaligned_le32(r + 12);
	if (16 + 16ULL * count > t->ev_len[VTFW_EV_REPORT])
		return -EBADMSG;
	for (i = 0; i < count; i++) {
		memset(regs, 0, sizeof(regs));
		/* GPA | level (4 KiB): the host mapped each range at its HPA */
		regs[TDX_RCX] = get_unaligned_le64(r + 16 + 16 * i) << PAGE_SHIFT;
		regs[TDX_RDX] = i;
		regs[TDX_R8] = td->func_id;
		regs[TDX_R9] = get_unaligned_le32(r + 16 + 16 * i + 8);	/* offset 0, pages */
		rc = td_call(t, "TDG.MMIO.ACCEPT", TDG_MMIO_ACCEPT, regs, out);
		if (rc)
			return -EACCES;
	}
	memset(regs, 0, sizeof(regs));
	regs[TDX_RCX] = td->func_id;
	regs[TDX_RDX] = 0;		/* the L1 TD */
	rc = td_call(t, "TDG.DMAR.ACCEPT", TDG_DMAR_ACCEPT, regs, out);
	if (rc)
		return rc;
	regs[TDX_RDX] = td->session;
	rc = td_call(t, "TDG.TDI.START", TDG_TDI_START, regs, out);
	if (!rc)
		rc = td_tdcm(t, TDCM_START_TDI, NULL, NULL);
	if (rc)
		return rc;
	if (td_state(t) != VTFW_TVM_RUN)
		return -EIO;
	vtfw_info(t->pdev, "TVM: accepted (%u MMIO ranges accepted, DMA accepted, TDI RUN)\n",
		  count);
	return 0;
}

/*
 * refresh: the evidence again under the same lock.  TDCM GET_TDI_STATE makes
 * the host have the module ask the device ([MODEL] TDH.TDI.STATE; the host's
 * answer is not trusted), TDG.TDI.RD(TDISP_STATE) is the module's view and
 * must still be LOCKED or RUN, then the report is read from the device again
 * (TDCM GET_TDI_REPORT -> [MODEL] TDH.TDI.REPORT) and checked as at lock.  A
 * TDI the device put in ERROR fails with -EIO; tvm/state then reads error.
 */
static int td_refresh(struct vtfw_tvm_dev *t)
{
	int rc, state;

	rc = td_tdcm(t, TDCM_GET_TDI_STATE, NULL, NULL);
	state = rc ? rc : td_state(t);
	if (state == VTFW_TVM_LOCKED || state == VTFW_TVM_RUN)
		return td_collect(t);
	vtfw_err(t->pdev, "refresh: TDI %s (TDG.TDI.RD)\n",
		 state == VTFW_TVM_ERROR ? "in ERROR" : "not locked");
	return state < 0 ? state : -EIO;
}

static int td_unlock(struct vtfw_tvm_dev *t)
{
	td_of(t)->session = 0;
	return td_tdcm(t, TDCM_UNBIND, NULL, NULL);
}

static void td_free(struct vtfw_tvm_dev *t);

static int td_alloc(struct vtfw_tvm_dev *t)
{
	struct tdx_td_dev *td = kzalloc_obj(*td);

	if (!td)
		return -ENOMEM;
	t->priv = td;
	td->func_id = pci_dev_id(t->pdev) |
		(pci_domain_nr(t->pdev->bus) ?
		 ((u64)pci_domain_nr(t->pdev->bus) << 16 | BIT(24)) : 0);
	td->buf = alloc_pages_exact(TDCM_BUF_PAGES * PAGE_SIZE, GFP_KERNEL | __GFP_ZERO);
	td->page = (void *)get_zeroed_page(GFP_KERNEL);
	if (td->buf && td->page)
		return 0;
	td_free(t);	/* the core does not call teardown when setup fails */
	return -ENOMEM;
}

static void td_free(struct vtfw_tvm_dev *t)
{
	struct tdx_td_dev *td = td_of(t);

	if (!td)
		return;
	if (td->buf)
		free_pages_exact(td->buf, TDCM_BUF_PAGES * PAGE_SIZE);
	free_page((unsigned long)td->page);
	kfree(td);
	t->priv = NULL;
}

static const struct vtfw_tvm_ops tdx_td_ops = {
	.name = "Intel TDX",
	.info_name = "tdi_info",
	.evidence = BIT(VTFW_EV_CERTIFICATE) | BIT(VTFW_EV_VCA) | BIT(VTFW_EV_MEASUREMENTS) |
		    BIT(VTFW_EV_REPORT) | BIT(VTFW_EV_INFO),
	.setup = td_alloc,
	.teardown = td_free,
	.lock = td_lock,
	.accept = td_accept,
	.unlock = td_unlock,
	.refresh = td_refresh,
	.state = td_state,
};

int vtfw_tdx_td_init(struct vtfw_port *port)
{
	return vtfw_tvm_init(port, &tdx_td_ops);
}

void vtfw_tdx_td_exit(struct vtfw_port *port)
{
	vtfw_tvm_exit(port);
}
