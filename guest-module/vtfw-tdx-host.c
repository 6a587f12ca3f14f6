// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: Intel TDX Connect host side (the tdx-host driver's part) and the
 * TDX module runtime update ABI of Linux v7.2.
 *
 * Link TSM (reference/firmware-abi.md B.4, after the TDX Connect series):
 * connect = TDH.SPDM.CREATE, TDH.SPDM.CONNECT called again and again while it
 * answers TDX_SPDM_REQUEST, each DOE object of the request page carried to
 * the device with pci_tsm_doe_transfer() and the answer put in the response
 * page (both with their DOE header), TDH.IDE.STREAM.CREATE, TDH.IDE.STREAM.KM
 * loop; disconnect = STREAM.BLOCK, KM(STOP) loop, STREAM.DELETE,
 * SPDM.DISCONNECT loop, SPDM.DELETE.  bind records the TD; the TD's TDCM
 * requests (GHCI TDG.VP.VMCALL<TDCM>, B.5) reach the host as the one TD's
 * TDH.VP.ENTER exit and go through the kernel's pci_tsm_guest_req(), whose
 * op serves them with the [MODEL] host TDI calls (TDH.TDI.BIND + TDH.MMIO.MAP
 * per report range + TDH.DMAR.ADD, TDH.TDI.START, TDH.TDI.STATE and
 * TDH.TDI.REPORT (the device asked again), TDH.TDI.STOP + TDH.TDI.UNBIND).
 *
 * Runtime update (B.2, Linux v7.2 drivers/virt/coco/tdx-host): the faux
 * device /sys/devices/faux/tdx_host with version (0444), seamldr_version and
 * num_remaining_updates (0400, visible only when TDX_FEATURES0 has
 * TD_PRESERVING), and the firmware-upload entry "tdx_module"
 * (/sys/class/firmware/tdx_module/): write = the image checks of
 * seamldr.c, then TDH.SYS.SHUTDOWN, SEAMLDR.INSTALL on each CPU,
 * TDH.SYS.LP.INIT on each CPU, TDH.SYS.UPDATE; any error is
 * FW_UPLOAD_ERR_FW_INVALID, as in the kernel.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/device/faux.h>
#include <linux/firmware.h>
#include <linux/pci.h>
#include <linux/pci-doe.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>
#include <linux/sockptr.h>
#include <linux/sysfs.h>
#include <linux/tsm.h>
#include <linux/unaligned.h>
#include <linux/workqueue.h>

#include "vtfw.h"
#include "vtfw-tdx.h"

#define TDX_MAX_CALLS		4096	/* SPDM_REQUEST rounds one operation may take */
#define TDX_OUT_PAGES		4	/* dev_info out buffer */
#define TDX_VTBAR		0xfed90000ULL	/* [MODEL] no VT-d unit here: any base */
#define TDX_TD_HANDLE		0x1000	/* [MODEL] the one TD (this VM) */
#define TDX_STREAM_ID		1
#define DOE_HEADER_SIZE		8

/* what the port keeps for TDX: one IOMMU, the update device */
struct tdx_host {
	struct vtfw_port *port;
	void *iommu_mt;
	u64 iommu_id;
	bool td_preserving;
	struct faux_device *faux;
	struct fw_upload *fwl;
	struct mutex update_lock;	/* updates vs. version reads */
};

/* the DSM (function 0) context: 'struct pci_tsm_pf0' first, as the core casts it */
struct tdx_dsm {
	struct pci_tsm_pf0 pf0;
	struct vtfw_port *port;
	void *req;
	void *rsp;
	void *conf;
	void *out;		/* TDX_OUT_PAGES pages */
	void *out_root;		/* hpa_array_t root page listing them */
	void *spdm_mt;
	void *stream_mt;
	u64 spdm_id;
	u64 stream_id;
	u8 *dev_info;
	size_t dev_info_len;
	unsigned int relayed;
	struct mutex spdm_lock;		/* one SPDM context operation at a time (req/rsp pages) */
	struct delayed_work heartbeat;	/* TDH.SPDM.MNG(HEARTBEAT) while connected */
};

/* a TDI the host bound to the TD; the module binds it at the TD's TDCM BIND */
struct tdx_tdi {
	struct pci_tdi base;
	u64 func_id;
	u64 session;
	bool fw_bound;
	bool started;
	u8 *report;
	size_t report_len;
};

static struct tdx_dsm *to_tdx_dsm(struct pci_dev *pdev)
{
	return container_of(pdev->tsm, struct tdx_dsm, pf0.base_tsm);
}

static u64 hpa_array(void *page, unsigned int entries)
{
	return vtfw_pa(page) | (entries > 1 ? (u64)(entries - 1) << HPA_ARRAY_SIZE_SHIFT : 0);
}

/* func_id: RID[15:0] | segment[23:16] | segment-valid bit 24 ([ITDX]) */
static u64 tdx_func_id(struct pci_dev *pdev)
{
	int seg = pci_domain_nr(pdev->bus);

	return pci_dev_id(pdev) | (seg ? ((u64)seg << 16 | BIT(24)) : 0);
}

const char *vtfw_tdx_status_name(u64 status)
{
	switch (TDX_STATUS_CLASS(status)) {
	case TDX_SUCCESS: return "TDX_SUCCESS";
	case TDX_INTERRUPTED_RESUMABLE: return "TDX_INTERRUPTED_RESUMABLE";
	case TDX_OPERAND_BUSY: return "TDX_OPERAND_BUSY";
	case TDX_OPERAND_INVALID: return "TDX_OPERAND_INVALID";
	case TDX_TDI_NOT_PRESENT: return "TDX_TDI_NOT_PRESENT";
	case TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH: return "TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH";
	case TDX_SPDM_REQUEST: return "TDX_SPDM_REQUEST";
	case TDX_DEVICE_ERROR: return "TDX_DEVICE_ERROR[MODEL]";
	case TDX_OBJECT_STATE_INCORRECT: return "TDX_OBJECT_STATE_INCORRECT[MODEL]";
	}
	switch (status) {
	case SEAMLDR_EBADPARAM: return "EBADPARAM";
	case SEAMLDR_EBADCALL: return "EBADCALL";
	case SEAMLDR_EBADHANDOFF: return "EBADHANDOFF";
	case SEAMLDR_EUNSUPPORTED: return "EUNSUPPORTED";
	case SEAMLDR_EBADSIG: return "EBADSIG";
	case SEAMLDR_EBADHASH: return "EBADHASH";
	}
	return "?";
}

/* One SEAMCALL (@guest = 0) or TDCALL (1): @regs = RCX..R15 in, @out = RAX, RCX..R15 out. */
int vtfw_tdx_call(struct vtfw_port *port, int guest, u64 leaf, const u64 *regs, u64 *out)
{
	u64 res[VTFW_NR_RESULTS];
	int rc;

	rc = vtfw_call(port, guest ? VTFW_CLASS_GUEST : VTFW_CLASS_HOST, leaf, regs,
		       TDX_NR_REGS, res);
	if (!rc)
		memcpy(out, res, (TDX_NR_REGS + 1) * sizeof(u64));
	return rc;
}

static int tdx_seamcall(struct vtfw_port *port, struct pci_dev *log, const char *what,
			u64 leaf, const u64 *regs, u64 *out)
{
	int rc = vtfw_tdx_call(port, 0, leaf, regs, out);

	if (!rc && out[0] != TDX_SUCCESS) {
		vtfw_err(log, "%s: %s (%#llx)\n", what, vtfw_tdx_status_name(out[0]), out[0]);
		rc = TDX_STATUS_CLASS(out[0]) == TDX_OPERAND_BUSY ? -EBUSY : -EIO;
	}
	return rc;
}

/*
 * Carry the DOE object the module wrote into the request page to the device
 * (the kernel's DOE driver adds and strips the header itself) and put the
 * answer, header included, into the response page.  A failed transfer is an
 * empty response page: the module ends the operation with a device error.
 */
static void tdx_relay(struct tdx_dsm *dsm, u64 req_len)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	u32 dw0 = get_unaligned_le32(dsm->req);
	u8 type = (dw0 >> 16) & 0xff;
	int n = -EPROTO;

	memset(dsm->rsp, 0, PAGE_SIZE);
	if (req_len > DOE_HEADER_SIZE && req_len <= PAGE_SIZE && (dw0 & 0xffff) == PCI_VENDOR_ID_PCI_SIG)
		n = pci_tsm_doe_transfer(pdev, type, dsm->req + DOE_HEADER_SIZE,
					 req_len - DOE_HEADER_SIZE, dsm->rsp + DOE_HEADER_SIZE,
					 PAGE_SIZE - DOE_HEADER_SIZE);
	dsm->relayed++;
	if (n < 0) {
		vtfw_warn(pdev, "DOE type %u exchange failed: %d\n", type, n);
		memset(dsm->rsp, 0, DOE_HEADER_SIZE);
		return;
	}
	put_unaligned_le32(PCI_VENDOR_ID_PCI_SIG | type << 16, dsm->rsp);
	put_unaligned_le32(DIV_ROUND_UP(DOE_HEADER_SIZE + n, 4), dsm->rsp + 4);
}

static int __tdx_mng(struct tdx_dsm *dsm, u64 op);

/*
 * Call @leaf until it stops asking for the device: TDX_SPDM_REQUEST (relay
 * the object, call again with the same registers), TDX_INTERRUPTED_RESUMABLE
 * (call again), TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH (TDH.SPDM.MNG KEY_UPDATE
 * first).  Called with spdm_lock held.
 */
static int __tdx_loop(struct tdx_dsm *dsm, const char *what, u64 leaf, const u64 *regs,
		      u64 *out)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	int rc, n, resumed = 0;

	for (n = 0; n < TDX_MAX_CALLS; n++) {
		rc = vtfw_tdx_call(dsm->port, 0, leaf, regs, out);
		if (rc)
			return rc;
		switch (TDX_STATUS_CLASS(out[0])) {
		case TDX_SUCCESS:
			if (resumed)
				vtfw_info(pdev, "%s: TDX_INTERRUPTED_RESUMABLE %d times, called again\n",
					  what, resumed);
			return 0;
		case TDX_SPDM_REQUEST:
			tdx_relay(dsm, out[1 + TDX_RCX]);
			continue;
		case TDX_INTERRUPTED_RESUMABLE:
			resumed++;
			cond_resched();
			continue;
		case TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH:
			if (leaf == TDH_SPDM_MNG)
				break;
			rc = __tdx_mng(dsm, TDX_SPDM_MNG_KEY_UPDATE);
			if (rc)
				return rc;
			continue;
		}
		vtfw_err(pdev, "%s: %s (%#llx)\n", what, vtfw_tdx_status_name(out[0]), out[0]);
		if (TDX_STATUS_CLASS(out[0]) == TDX_OPERAND_BUSY)
			return -EBUSY;
		if (TDX_STATUS_CLASS(out[0]) == TDX_OBJECT_STATE_INCORRECT)
			return -EINVAL;
		return TDX_STATUS_CLASS(out[0]) == TDX_DEVICE_ERROR ? -EPROTO : -EIO;
	}
	vtfw_err(pdev, "%s did not end\n", what);
	return -ELOOP;
}

static int tdx_loop(struct tdx_dsm *dsm, const char *what, u64 leaf, const u64 *regs, u64 *out)
{
	guard(mutex)(&dsm->spdm_lock);
	return __tdx_loop(dsm, what, leaf, regs, out);
}

static int __tdx_mng(struct tdx_dsm *dsm, u64 op)
{
	u64 regs[TDX_NR_REGS] = {
		dsm->spdm_id, op, TDX_NO_PAGE, vtfw_pa(dsm->rsp), vtfw_pa(dsm->req), TDX_NO_PAGE,
	};
	u64 out[TDX_NR_REGS + 1];

	return __tdx_loop(dsm, "TDH.SPDM.MNG", TDH_SPDM_MNG, regs, out);
}

/*
 * The TDX module asks for the device's HeartbeatPeriod (it can send HEARTBEAT
 * when the host calls TDH.SPDM.MNG), and the device ends a session that hears
 * nothing for twice that period (DSP0274 HEARTBEAT): while connected the host
 * calls TDH.SPDM.MNG(HEARTBEAT) every heartbeat_secs seconds.
 */
static unsigned int heartbeat_secs = 60;
module_param(heartbeat_secs, uint, 0644);
MODULE_PARM_DESC(heartbeat_secs,
		 "TDX: seconds between TDH.SPDM.MNG(HEARTBEAT) calls while connected, below the device's HeartbeatPeriod (0: none)");

static void tdx_heartbeat_arm(struct tdx_dsm *dsm)
{
	if (heartbeat_secs)
		schedule_delayed_work(&dsm->heartbeat, secs_to_jiffies(heartbeat_secs));
}

static void tdx_heartbeat(struct work_struct *work)
{
	struct tdx_dsm *dsm = container_of(to_delayed_work(work), struct tdx_dsm, heartbeat);
	struct tdx_host *host = dsm->port->platform;
	int rc;

	/* never inside a module update (Linux runs those under stop_machine()) */
	guard(mutex)(&host->update_lock);
	scoped_guard(mutex, &dsm->spdm_lock) {
		if (!dsm->spdm_id)
			return;
		rc = __tdx_mng(dsm, TDX_SPDM_MNG_HEARTBEAT);
	}
	if (rc)
		vtfw_warn(dsm->pf0.base_tsm.pdev, "TDH.SPDM.MNG(HEARTBEAT): %d\n", rc);
	tdx_heartbeat_arm(dsm);
}

static int tdx_iommu_setup(struct vtfw_port *port)
{
	struct tdx_host *host = port->platform;
	u64 regs[TDX_NR_REGS] = { TDX_VTBAR };
	u64 out[TDX_NR_REGS + 1];
	int rc;

	if (host->iommu_id)
		return 0;
	regs[TDX_RDX] = hpa_array(host->iommu_mt, 1);
	rc = tdx_seamcall(port, port->pdev, "TDH.IOMMU.SETUP", TDH_IOMMU_SETUP, regs, out);
	if (!rc)
		host->iommu_id = out[1 + TDX_RCX];
	return rc;
}

static void tdx_release(struct tdx_dsm *dsm)
{
	kfree(dsm->dev_info);
	dsm->dev_info = NULL;
	dsm->dev_info_len = 0;
	free_page((unsigned long)dsm->req);
	free_page((unsigned long)dsm->rsp);
	free_page((unsigned long)dsm->conf);
	free_page((unsigned long)dsm->out_root);
	free_page((unsigned long)dsm->spdm_mt);
	free_page((unsigned long)dsm->stream_mt);
	free_pages((unsigned long)dsm->out, get_order(TDX_OUT_PAGES * PAGE_SIZE));
	dsm->req = dsm->rsp = dsm->conf = dsm->out_root = NULL;
	dsm->spdm_mt = dsm->stream_mt = dsm->out = NULL;
}

/* every firmware object of the link, newest first; what exists is torn down */
static void tdx_teardown(struct tdx_dsm *dsm)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	u64 regs[TDX_NR_REGS], out[TDX_NR_REGS + 1];

	if (dsm->stream_id) {
		vtfw_ide_stream_disable(pdev);
		memset(regs, 0, sizeof(regs));
		regs[TDX_RCX] = dsm->spdm_id;
		regs[TDX_RDX] = dsm->stream_id;
		tdx_seamcall(dsm->port, pdev, "TDH.IDE.STREAM.BLOCK", TDH_IDE_STREAM_BLOCK, regs,
			     out);
		regs[TDX_R8] = TDX_IDE_KM_STOP;
		regs[TDX_R9] = vtfw_pa(dsm->rsp);
		regs[TDX_R10] = vtfw_pa(dsm->req);
		tdx_loop(dsm, "TDH.IDE.STREAM.KM(STOP)", TDH_IDE_STREAM_KM, regs, out);
		memset(regs, 0, sizeof(regs));
		regs[TDX_RCX] = dsm->spdm_id;
		regs[TDX_RDX] = dsm->stream_id;
		regs[TDX_R8] = hpa_array(dsm->stream_mt, 1);
		tdx_seamcall(dsm->port, pdev, "TDH.IDE.STREAM.DELETE", TDH_IDE_STREAM_DELETE,
			     regs, out);
		dsm->stream_id = 0;
	}
	if (dsm->spdm_id) {
		memset(regs, 0, sizeof(regs));
		regs[TDX_RCX] = dsm->spdm_id;
		regs[TDX_RDX] = vtfw_pa(dsm->rsp);
		regs[TDX_R8] = vtfw_pa(dsm->req);
		tdx_loop(dsm, "TDH.SPDM.DISCONNECT", TDH_SPDM_DISCONNECT, regs, out);
		memset(regs, 0, sizeof(regs));
		regs[TDX_RCX] = dsm->spdm_id;
		regs[TDX_RDX] = hpa_array(dsm->spdm_mt, 1);
		tdx_seamcall(dsm->port, pdev, "TDH.SPDM.DELETE", TDH_SPDM_DELETE, regs, out);
		dsm->spdm_id = 0;
	}
	tdx_release(dsm);
}

static int tdx_connect(struct pci_dev *pdev)
{
	struct tdx_dsm *dsm = to_tdx_dsm(pdev);
	struct pci_dev *rp = pcie_find_root_port(pdev);
	u64 regs[TDX_NR_REGS] = {}, out[TDX_NR_REGS + 1];
	u64 *root;
	int rc, i;

	dsm->relayed = 0;
	dsm->req = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->rsp = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->conf = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->out_root = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->spdm_mt = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->stream_mt = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->out = (void *)__get_free_pages(GFP_KERNEL | __GFP_ZERO,
					    get_order(TDX_OUT_PAGES * PAGE_SIZE));
	if (!dsm->req || !dsm->rsp || !dsm->conf || !dsm->out_root || !dsm->spdm_mt ||
	    !dsm->stream_mt || !dsm->out) {
		rc = -ENOMEM;
		goto err;
	}
	root = dsm->out_root;
	for (i = 0; i < TDX_OUT_PAGES; i++)
		root[i] = vtfw_pa(dsm->out + i * PAGE_SIZE);

	rc = tdx_iommu_setup(dsm->port);
	if (rc)
		goto err;

	regs[TDX_RCX] = tdx_func_id(pdev);
	regs[TDX_RDX] = hpa_array(dsm->spdm_mt, 1);
	rc = tdx_seamcall(dsm->port, pdev, "TDH.SPDM.CREATE", TDH_SPDM_CREATE, regs, out);
	if (rc)
		goto err;
	dsm->spdm_id = out[1 + TDX_RCX];

	/* the module runs VCA, certificate, KEY_EXCHANGE/FINISH, measurements itself */
	put_unaligned_le32(VMM_SPDM_CAP_HBEAT | VMM_SPDM_CAP_KEY_UPD,
			   dsm->conf + SPDM_CONF_CAP);
	*(u8 *)(dsm->conf + SPDM_CONF_SLOT_MASK) = 0xff;	/* as Linux asks */
	memset(regs, 0, sizeof(regs));
	regs[TDX_RCX] = dsm->spdm_id;
	regs[TDX_RDX] = vtfw_pa(dsm->conf);
	regs[TDX_R8] = vtfw_pa(dsm->rsp);
	regs[TDX_R9] = vtfw_pa(dsm->req);
	regs[TDX_R10] = hpa_array(dsm->out_root, TDX_OUT_PAGES);
	rc = tdx_loop(dsm, "TDH.SPDM.CONNECT", TDH_SPDM_CONNECT, regs, out);
	if (rc)
		goto err;
	if (out[1 + TDX_RCX] > TDX_OUT_PAGES * PAGE_SIZE) {
		rc = -EPROTO;
		goto err;
	}
	dsm->dev_info_len = out[1 + TDX_RCX];
	dsm->dev_info = kmemdup(dsm->out, dsm->dev_info_len, GFP_KERNEL);
	if (!dsm->dev_info) {
		rc = -ENOMEM;
		goto err;
	}
	vtfw_info(pdev, "TDH.SPDM.CONNECT: session up, dev_info %zu bytes, %u DOE exchanges\n",
		  dsm->dev_info_len, dsm->relayed);

	memset(regs, 0, sizeof(regs));
	regs[TDX_RCX] = TDX_STREAM_INFO_SELECTIVE | (rp ? rp->devfn : 0);
	regs[TDX_RDX] = dsm->spdm_id;
	regs[TDX_R8] = hpa_array(dsm->stream_mt, 1);
	regs[TDX_R9] = (u64)TDX_STREAM_ID << 24;	/* IDE Stream Control: Stream ID */
	rc = tdx_seamcall(dsm->port, pdev, "TDH.IDE.STREAM.CREATE", TDH_IDE_STREAM_CREATE,
			  regs, out);
	if (rc)
		goto err;
	dsm->stream_id = out[1 + TDX_RCX];

	memset(regs, 0, sizeof(regs));
	regs[TDX_RCX] = dsm->spdm_id;
	regs[TDX_RDX] = dsm->stream_id;
	regs[TDX_R8] = TDX_IDE_KM_SETUP;
	regs[TDX_R9] = vtfw_pa(dsm->rsp);
	regs[TDX_R10] = vtfw_pa(dsm->req);
	rc = tdx_loop(dsm, "TDH.IDE.STREAM.KM(SETUP)", TDH_IDE_STREAM_KM, regs, out);
	if (!rc)
		rc = vtfw_ide_stream_enable(pdev, dsm->stream_id);
	if (rc)
		goto err;
	/* QEMU's root port has no IDE capability: the endpoint's half is the module's */
	vtfw_info(pdev, "connected through the TDX module: %u DOE exchanges, IDE stream %llu keyed, dev_info %zu bytes\n",
		  dsm->relayed, dsm->stream_id, dsm->dev_info_len);
	tdx_heartbeat_arm(dsm);
	return 0;
err:
	vtfw_err(pdev, "connect failed: %d\n", rc);
	tdx_teardown(dsm);
	return rc;
}

static void tdx_disconnect(struct pci_dev *pdev)
{
	struct tdx_dsm *dsm = to_tdx_dsm(pdev);

	cancel_delayed_work_sync(&dsm->heartbeat);
	tdx_teardown(dsm);
	vtfw_info(pdev, "disconnected (%u DOE exchanges in all)\n", dsm->relayed);
}

/* -- TDIs: bound to the TD by the host, bound in the module at the TD's TDCM BIND -- */

/* TDH.TDI.STOP (the device: STOP_INTERFACE) and TDH.TDI.UNBIND */
static int tdx_tdi_release(struct tdx_dsm *dsm, struct tdx_tdi *tdi)
{
	struct pci_dev *pdev = tdi->base.pdev;
	u64 regs[TDX_NR_REGS] = { dsm->spdm_id, tdi->func_id, vtfw_pa(dsm->rsp),
				  vtfw_pa(dsm->req) };
	u64 out[TDX_NR_REGS + 1];
	int rc;

	if (!tdi->fw_bound)
		return 0;
	rc = tdx_loop(dsm, "TDH.TDI.STOP[MODEL]", TDH_TDI_STOP, regs, out);
	memset(regs, 0, sizeof(regs));
	regs[TDX_RCX] = dsm->spdm_id;
	regs[TDX_RDX] = tdi->func_id;
	if (!rc)
		rc = tdx_seamcall(dsm->port, pdev, "TDH.TDI.UNBIND[MODEL]", TDH_TDI_UNBIND, regs,
				  out);
	if (!rc) {
		tdi->fw_bound = false;
		tdi->started = false;
		kfree(tdi->report);
		tdi->report = NULL;
		tdi->report_len = 0;
	}
	return rc;
}

/*
 * TDH.TDI.BIND (the module: TDISP version, capabilities, LOCK_INTERFACE,
 * interface report -> LOCKED), then the report's MMIO ranges mapped for the
 * TD (GPA = HPA: one VM plays host and TD) and its DMA allowed.
 */
static int tdx_tdi_fw_bind(struct tdx_dsm *dsm, struct tdx_tdi *tdi)
{
	struct pci_dev *pdev = tdi->base.pdev;
	u64 regs[TDX_NR_REGS] = {}, out[TDX_NR_REGS + 1];
	u32 count, i;
	int rc;

	regs[TDX_RCX] = dsm->spdm_id;
	regs[TDX_RDX] = tdi->func_id;
	regs[TDX_R8] = TDX_TD_HANDLE;
	regs[TDX_R9] = vtfw_pa(dsm->rsp);
	regs[TDX_R10] = vtfw_pa(dsm->req);
	regs[TDX_R11] = dsm->stream_id;
	regs[TDX_R12] = hpa_array(dsm->out_root, TDX_OUT_PAGES);
	rc = tdx_loop(dsm, "TDH.TDI.BIND[MODEL]", TDH_TDI_BIND, regs, out);
	if (rc)
		return rc;
	tdi->fw_bound = true;
	tdi->session = out[1 + TDX_RCX];
	if (out[1 + TDX_RDX] < 16 || out[1 + TDX_RDX] > TDX_OUT_PAGES * PAGE_SIZE)
		return -EPROTO;
	tdi->report_len = out[1 + TDX_RDX];
	tdi->report = kmemdup(dsm->out, tdi->report_len, GFP_KERNEL);
	if (!tdi->report)
		return -ENOMEM;
	/* TDI_REPORT_STRUCTURE: mmio_range_count @12, 16-byte ranges @16 */
	count = get_unaligned_le32(tdi->report + 12);
	if (16 + 16ULL * count > tdi->report_len)
		return -EPROTO;
	for (i = 0; i < count; i++) {
		u64 hpa = get_unaligned_le64(tdi->report + 16 + 16 * i) << PAGE_SHIFT;

		memset(regs, 0, sizeof(regs));
		regs[TDX_RCX] = tdi->func_id;
		regs[TDX_RDX] = hpa;	/* GPA */
		regs[TDX_R8] = hpa;
		regs[TDX_R9] = get_unaligned_le32(tdi->report + 16 + 16 * i + 8);
		rc = tdx_seamcall(dsm->port, pdev, "TDH.MMIO.MAP[MODEL]", TDH_MMIO_MAP, regs,
				  out);
		if (rc)
			return rc;
	}
	memset(regs, 0, sizeof(regs));
	regs[TDX_RCX] = tdi->func_id;
	rc = tdx_seamcall(dsm->port, pdev, "TDH.DMAR.ADD[MODEL]", TDH_DMAR_ADD, regs, out);
	if (!rc)
		vtfw_info(pdev, "TDI bound in the TDX module: session %llu, LOCKED, %u MMIO ranges mapped, %u DOE exchanges so far\n",
			  tdi->session, count, dsm->relayed);
	return rc;
}

/*
 * [MODEL] TDH.TDI.STATE: the module asks the device (GET_DEVICE_INTERFACE_STATE)
 * and answers the TD's view of the TDI; a device that left CONFIG_LOCKED / RUN
 * (ERROR after a BAR moved) makes it ERROR in the module.
 */
static int tdx_tdi_state(struct tdx_dsm *dsm, struct tdx_tdi *tdi, u32 *state)
{
	u64 regs[TDX_NR_REGS] = { dsm->spdm_id, tdi->func_id, vtfw_pa(dsm->rsp),
				  vtfw_pa(dsm->req) };
	u64 out[TDX_NR_REGS + 1];
	int rc = tdx_loop(dsm, "TDH.TDI.STATE[MODEL]", TDH_TDI_STATE, regs, out);

	if (rc)
		return rc;
	*state = out[1 + TDX_RCX];
	if (*state == TDX_TDI_ERROR)
		vtfw_warn(tdi->base.pdev, "TDI in ERROR at the device (TDH.TDI.STATE)\n");
	return 0;
}

/*
 * [MODEL] TDH.TDI.REPORT: the module reads the interface report from the
 * device again (GET_DEVICE_INTERFACE_REPORT, then its state) into dsm->out;
 * a device in ERROR refuses it and the module marks the TDI ERROR.
 */
static int tdx_tdi_report(struct tdx_dsm *dsm, struct tdx_tdi *tdi, size_t *len)
{
	u64 regs[TDX_NR_REGS] = { dsm->spdm_id, tdi->func_id, vtfw_pa(dsm->rsp),
				  vtfw_pa(dsm->req), hpa_array(dsm->out_root, TDX_OUT_PAGES) };
	u64 out[TDX_NR_REGS + 1];
	int rc = tdx_loop(dsm, "TDH.TDI.REPORT[MODEL]", TDH_TDI_REPORT, regs, out);

	if (rc)
		return rc;
	if (out[1 + TDX_RCX] > TDX_OUT_PAGES * PAGE_SIZE)
		return -EPROTO;
	*len = out[1 + TDX_RCX];
	return 0;
}

static struct pci_tdi *tdx_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id)
{
	struct tdx_tdi *tdi = kzalloc_obj(*tdi);

	if (!tdi)
		return ERR_PTR(-ENOMEM);
	tdi->func_id = tdx_func_id(pdev);
	pci_tsm_tdi_constructor(pdev, &tdi->base, kvm, tdi_id);
	return &tdi->base;
}

static void tdx_unbind(struct pci_tdi *base)
{
	struct tdx_tdi *tdi = container_of(base, struct tdx_tdi, base);

	tdx_tdi_release(to_tdx_dsm(base->pdev->tsm->dsm_dev), tdi);
	kfree(tdi->report);
	kfree(tdi);
}

static enum tdcm_error tdx_tdcm_error(int rc)
{
	switch (rc) {
	case -EPROTO: return TDCM_ERR_TDISP_MESSAGE;	/* the device refused the TDISP step */
	case -EINVAL: return TDCM_ERR_INVALID_STATE;
	default: return TDCM_ERR_TDX_MODULE;
	}
}

/*
 * One TDCM request of the TD, as KVM hands it to pci_tsm_guest_req():
 * [MODEL] in = the TD's struct tdvmcall_tdcm (header and data), out = the
 * same buffer answered (status, error, data), *tsm_code = status | error << 8.
 */
static ssize_t tdx_guest_req(struct pci_tdi *base, enum pci_tsm_req_scope scope,
			     sockptr_t req_in, size_t in_len, sockptr_t req_out,
			     size_t out_len, u64 *tsm_code)
{
	struct tdx_tdi *tdi = container_of(base, struct tdx_tdi, base);
	struct tdx_dsm *dsm = to_tdx_dsm(base->pdev->tsm->dsm_dev);
	u8 head[TDCM_HDR_DATA];
	const void *payload = NULL;
	enum tdcm_error err = TDCM_ERR_NONE;
	size_t len = 0;
	u32 word;
	u16 op;
	int rc = 0;

	if (in_len < TDCM_HDR_DATA || out_len < TDCM_HDR_DATA)
		return -EINVAL;
	if (copy_from_sockptr(head, req_in, TDCM_HDR_DATA))
		return -EFAULT;
	op = get_unaligned_le16(head + TDCM_HDR_OPERATION);
	if ((op == TDCM_BIND || op == TDCM_START_TDI || op == TDCM_UNBIND) &&
	    scope != PCI_TSM_REQ_STATE_CHANGE)
		return -EPERM;

	switch (op) {
	case TDCM_CHECK_TEEIO_SUPP:
		word = dsm->spdm_id && dsm->stream_id;
		payload = &word;
		len = sizeof(word);
		break;
	case TDCM_BIND:
		if (!dsm->spdm_id)
			err = TDCM_ERR_INVALID_STATE;
		else if (!tdi->fw_bound)
			rc = tdx_tdi_fw_bind(dsm, tdi);
		break;
	case TDCM_GET_DEV_INFO:
		payload = dsm->dev_info;
		len = dsm->dev_info_len;
		break;
	case TDCM_GET_TDI_REPORT:
		if (!tdi->fw_bound) {
			err = TDCM_ERR_INVALID_STATE;
			break;
		}
		rc = tdx_tdi_report(dsm, tdi, &len);
		payload = dsm->out;
		break;
	case TDCM_START_TDI: {
		u64 regs[TDX_NR_REGS] = { dsm->spdm_id, tdi->func_id, vtfw_pa(dsm->rsp),
					  vtfw_pa(dsm->req) };
		u64 out[TDX_NR_REGS + 1];

		if (!tdi->fw_bound) {
			err = TDCM_ERR_INVALID_STATE;
			break;
		}
		rc = tdx_loop(dsm, "TDH.TDI.START[MODEL]", TDH_TDI_START, regs, out);
		if (!rc) {
			tdi->started = true;
			vtfw_info(base->pdev, "TDI started (TDH.TDI.START: START_INTERFACE)\n");
		}
		break;
	}
	case TDCM_GET_TDI_STATE:
		word = TDX_TDI_UNLOCKED;
		if (tdi->fw_bound)
			rc = tdx_tdi_state(dsm, tdi, &word);
		payload = &word;
		len = sizeof(word);
		break;
	case TDCM_UNBIND:
		rc = tdx_tdi_release(dsm, tdi);
		break;
	default:
		err = TDCM_ERR_INVALID_STATE;
	}
	if (rc) {
		err = tdx_tdcm_error(rc);
		vtfw_warn(base->pdev, "TDCM operation %u failed: %d\n", op, rc);
	}
	if (err || TDCM_HDR_DATA + len > out_len) {
		len = 0;
		err = err ?: TDCM_ERR_INVALID_STATE;
	}
	head[TDCM_HDR_STATUS] = err ? TDCM_ERROR : TDCM_COMPLETED;
	head[TDCM_HDR_ERROR] = err;
	put_unaligned_le32(len, head + TDCM_HDR_DATA_LENGTH);
	if (copy_to_sockptr(req_out, head, TDCM_HDR_DATA) ||
	    (len && copy_to_sockptr_offset(req_out, TDCM_HDR_DATA, payload, len)))
		return -EFAULT;
	*tsm_code = head[TDCM_HDR_STATUS] | (u64)err << 8;
	return TDCM_HDR_DATA + len;
}

/*
 * The VMM's half of a TDCM VMCALL: TDH.VP.ENTER reports the TD's exit, the
 * request goes through the kernel's pci_tsm_guest_req() (scope STATE_CHANGE
 * for BIND, START_TDI, UNBIND, so the core's scope check runs), and the answer
 * lands in the TD's shared buffer (this VM's own memory).
 */
int vtfw_tdx_serve_tdcm(struct vtfw_port *port)
{
	u64 regs[TDX_NR_REGS] = { TDX_TD_HANDLE }, out[TDX_NR_REGS + 1], code = 0;
	enum pci_tsm_req_scope scope;
	struct pci_dev *pdev;
	u64 func_id, gpa, size;
	void *buf;
	ssize_t n;
	u16 op;
	int rc;

	rc = vtfw_tdx_call(port, 0, TDH_VP_ENTER, regs, out);
	if (rc)
		return rc;
	if (out[0] != EXIT_REASON_TDCALL || out[1 + TDX_R11] != TDVMCALL_TDCM)
		return -EPROTO;
	func_id = out[1 + TDX_R12];
	gpa = out[1 + TDX_R13];
	size = out[1 + TDX_R14];
	if (size < TDCM_HDR_DATA || size > TDCM_BUF_PAGES * PAGE_SIZE)
		return -EPROTO;
	/* one VM: the TD's buffer is this kernel's memory, in its direct map */
	buf = phys_to_virt(gpa);
	if (!virt_addr_valid(buf) || !virt_addr_valid(buf + size - 1))
		return -EFAULT;
	pdev = pci_get_domain_bus_and_slot((func_id >> 16) & 0xff, (func_id >> 8) & 0xff,
					   func_id & 0xff);
	if (!pdev)
		return -ENODEV;
	op = get_unaligned_le16(buf + TDCM_HDR_OPERATION);
	scope = op == TDCM_BIND || op == TDCM_START_TDI || op == TDCM_UNBIND ?
		PCI_TSM_REQ_STATE_CHANGE : PCI_TSM_REQ_INFO;
	n = pci_tsm_guest_req(pdev, scope, KERNEL_SOCKPTR(buf), size, KERNEL_SOCKPTR(buf),
			      size, &code);
	if (n < 0) {
		/* the host refused (no TDI bound to this TD, ...): the TD sees an error */
		vtfw_warn(pdev, "TDCM operation %u refused: %zd\n", op, n);
		*(u8 *)(buf + TDCM_HDR_STATUS) = TDCM_ERROR;
		*(u8 *)(buf + TDCM_HDR_ERROR) = TDCM_ERR_INVALID_STATE;
		put_unaligned_le32(0, buf + TDCM_HDR_DATA_LENGTH);
	}
	pci_dev_put(pdev);
	return 0;
}

static struct pci_tsm *tdx_probe(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	struct tdx_dsm *dsm;

	if (!is_pci_tsm_pf0(pdev))
		return vtfw_link_tdi_probe(tsm_dev, pdev);
	dsm = kzalloc_obj(*dsm);
	if (!dsm)
		return NULL;
	if (pci_tsm_pf0_constructor(pdev, &dsm->pf0, tsm_dev)) {
		kfree(dsm);
		return NULL;
	}
	dsm->port = pci_get_drvdata(to_pci_dev(tsm_dev->dev.parent));
	mutex_init(&dsm->spdm_lock);
	INIT_DELAYED_WORK(&dsm->heartbeat, tdx_heartbeat);
	return &dsm->pf0.base_tsm;
}

static void tdx_remove(struct pci_tsm *tsm)
{
	struct tdx_dsm *dsm;

	if (vtfw_link_tdi_remove(tsm))
		return;
	dsm = container_of(tsm, struct tdx_dsm, pf0.base_tsm);
	cancel_delayed_work_sync(&dsm->heartbeat);
	pci_tsm_pf0_destructor(&dsm->pf0);
	kfree(dsm);
}

static struct pci_tsm_ops tdx_link_ops = {
	.probe = tdx_probe,
	.remove = tdx_remove,
	.connect = tdx_connect,
	.disconnect = tdx_disconnect,
	.bind = tdx_bind,
	.unbind = tdx_unbind,
	.guest_req = tdx_guest_req,
};

/* -- the runtime update: faux device tdx_host, fw_upload tdx_module ------------------ */

static struct tdx_host *tdx_host_of(struct device *dev)
{
	return dev_get_drvdata(dev);
}

static int tdx_sys_rd(struct vtfw_port *port, u64 field, u64 *val)
{
	u64 regs[TDX_NR_REGS] = { 0, field }, out[TDX_NR_REGS + 1];
	int rc = tdx_seamcall(port, port->pdev, "TDH.SYS.RD", TDH_SYS_RD, regs, out);

	if (!rc)
		*val = out[1 + TDX_R8];
	return rc;
}

/* SEAMLDR.INFO into a 256-byte, 256-aligned buffer */
static int tdx_seamldr_info(struct vtfw_port *port, u8 *info)
{
	void *page = (void *)get_zeroed_page(GFP_KERNEL);
	u64 regs[TDX_NR_REGS] = {}, out[TDX_NR_REGS + 1];
	int rc;

	if (!page)
		return -ENOMEM;
	regs[TDX_RCX] = vtfw_pa(page);
	rc = vtfw_tdx_call(port, 0, SEAMLDR_INFO, regs, out);
	if (!rc && out[0] != SEAMLDR_SUCCESS) {
		pci_err(port->pdev, "SEAMLDR.INFO: %s (%#llx)\n", vtfw_tdx_status_name(out[0]),
			out[0]);
		rc = -EIO;
	}
	if (!rc)
		memcpy(info, page, SEAMLDR_INFO_SIZE);
	free_page((unsigned long)page);
	return rc;
}

/* TDX_VERSION_FMT of Linux: major.minor.update */
static ssize_t version_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct tdx_host *host = tdx_host_of(dev);
	u64 major, minor, update;
	int rc;

	guard(mutex)(&host->update_lock);	/* no update while it prints */
	rc = tdx_sys_rd(host->port, TDX_MD_MAJOR_VERSION, &major);
	if (!rc)
		rc = tdx_sys_rd(host->port, TDX_MD_MINOR_VERSION, &minor);
	if (!rc)
		rc = tdx_sys_rd(host->port, TDX_MD_UPDATE_VERSION, &update);
	if (rc)
		return rc;
	return sysfs_emit(buf, "%u.%u.%02u\n", (u32)major, (u32)minor, (u32)update);
}
static DEVICE_ATTR_RO(version);

static ssize_t seamldr_version_show(struct device *dev, struct device_attribute *attr,
				    char *buf)
{
	u8 info[SEAMLDR_INFO_SIZE];
	int rc = tdx_seamldr_info(tdx_host_of(dev)->port, info);

	if (rc)
		return rc;
	return sysfs_emit(buf, "%u.%u.%02u\n", get_unaligned_le16(info + SEAMLDR_INFO_MAJOR),
			  get_unaligned_le16(info + SEAMLDR_INFO_MINOR),
			  get_unaligned_le16(info + SEAMLDR_INFO_UPDATE_VERSION));
}
static DEVICE_ATTR_ADMIN_RO(seamldr_version);

static ssize_t num_remaining_updates_show(struct device *dev, struct device_attribute *attr,
					  char *buf)
{
	u8 info[SEAMLDR_INFO_SIZE];
	int rc = tdx_seamldr_info(tdx_host_of(dev)->port, info);

	if (rc)
		return rc;
	return sysfs_emit(buf, "%u\n", get_unaligned_le32(info + SEAMLDR_INFO_NUM_REMAINING));
}
static DEVICE_ATTR_ADMIN_RO(num_remaining_updates);

static struct attribute *tdx_host_attrs[] = {
	&dev_attr_version.attr,
	NULL,
};

static const struct attribute_group tdx_host_group = {
	.attrs = tdx_host_attrs,
};

static struct attribute *seamldr_attrs[] = {
	&dev_attr_seamldr_version.attr,
	&dev_attr_num_remaining_updates.attr,
	NULL,
};

/* the kernel shows them only when the module supports TD-preserving updates */
static umode_t seamldr_visible(struct kobject *kobj, struct attribute *attr, int n)
{
	struct tdx_host *host = tdx_host_of(kobj_to_dev(kobj));

	return host && host->td_preserving ? attr->mode : 0;
}

static const struct attribute_group seamldr_group = {
	.attrs = seamldr_attrs,
	.is_visible = seamldr_visible,
};

static const struct attribute_group *tdx_host_groups[] = {
	&tdx_host_group,
	&seamldr_group,
	NULL,
};

/* Linux v7.2 seamldr.c's checks of the image, before any SEAMCALL: -EINVAL */
static int tdx_image_check(struct device *dev, const u8 *data, size_t size,
			   u32 *sig_pages, u32 *mod_pages)
{
	static const u8 sig[8] = "TDX-BLOB";

	if (size < TDX_IMAGE_HEADER_SIZE) {
		dev_err(dev, "update image shorter than its header\n");
		return -EINVAL;
	}
	*sig_pages = get_unaligned_le32(data + TDX_IMAGE_SIG_PAGES);
	*mod_pages = get_unaligned_le32(data + TDX_IMAGE_MOD_PAGES);
	if (TDX_IMAGE_HEADER_SIZE + ((u64)*sig_pages + *mod_pages) * PAGE_SIZE != size) {
		dev_err(dev, "update image: page counts do not match its size\n");
		return -EINVAL;
	}
	if (get_unaligned_le16(data + TDX_IMAGE_VERSION) != TDX_IMAGE_VERSION_2) {
		dev_err(dev, "update image: header version %#x\n",
			get_unaligned_le16(data + TDX_IMAGE_VERSION));
		return -EINVAL;
	}
	if (*sig_pages > SEAMLDR_MAX_NR_SIG_PAGES || *mod_pages > SEAMLDR_MAX_NR_MODULE_PAGES) {
		dev_err(dev, "update image: too many sigstruct or module pages\n");
		return -EINVAL;
	}
	if (memcmp(data + TDX_IMAGE_SIGNATURE, sig, sizeof(sig))) {
		dev_err(dev, "update image: no TDX-BLOB signature\n");
		return -EINVAL;
	}
	if (memchr_inv(data + TDX_IMAGE_RESERVED, 0, TDX_IMAGE_HEADER_SIZE - TDX_IMAGE_RESERVED)) {
		dev_err(dev, "update image: reserved bytes not zero\n");
		return -EINVAL;
	}
	return 0;
}

/*
 * The update proper, Linux's order: TDH.SYS.SHUTDOWN, SEAMLDR.INSTALL on each
 * CPU, TDH.SYS.LP.INIT on each CPU, TDH.SYS.UPDATE.  Linux runs it under
 * stop_machine(); here every call is a port access that may sleep (the
 * window mutex), so the CPUs are walked in turn with update_lock held.
 */
static int tdx_update_calls(struct tdx_host *host, void *params)
{
	struct vtfw_port *port = host->port;
	struct device *dev = &host->faux->dev;
	u64 regs[TDX_NR_REGS] = {}, out[TDX_NR_REGS + 1];
	unsigned int cpu, ncpus = num_online_cpus();
	int rc;

	guard(mutex)(&host->update_lock);
	rc = tdx_seamcall(port, port->pdev, "TDH.SYS.SHUTDOWN", TDH_SYS_SHUTDOWN, regs, out);
	if (rc)
		return rc;
	for (cpu = 0; cpu < ncpus && !rc; cpu++) {
		regs[TDX_RCX] = vtfw_pa(params);
		rc = vtfw_tdx_call(port, 0, SEAMLDR_INSTALL, regs, out);
		if (!rc && out[0] != SEAMLDR_SUCCESS) {
			dev_err(dev, "SEAMLDR.INSTALL: %s (%#llx)\n",
				vtfw_tdx_status_name(out[0]), out[0]);
			rc = out[0] == SEAMLDR_EBADPARAM ? -EINVAL : -EIO;
		}
	}
	memset(regs, 0, sizeof(regs));
	if (rc) {
		/*
		 * [MODEL] the emulated module resumes from its handoff data;
		 * Linux marks the module failed and blocks new TDs instead.
		 */
		tdx_seamcall(port, port->pdev, "TDH.SYS.UPDATE", TDH_SYS_UPDATE, regs, out);
		return rc;
	}
	for (cpu = 0; cpu < ncpus && !rc; cpu++)
		rc = tdx_seamcall(port, port->pdev, "TDH.SYS.LP.INIT", TDH_SYS_LP_INIT, regs,
				  out);
	if (!rc)
		rc = tdx_seamcall(port, port->pdev, "TDH.SYS.UPDATE", TDH_SYS_UPDATE, regs, out);
	if (!rc)
		dev_info(dev, "TDX module updated on %u CPUs\n", ncpus);
	return rc;
}

/* seamldr_install_module(): the image checks, seamldr_params over page copies */
static int tdx_install(struct tdx_host *host, const u8 *data, size_t size)
{
	u32 sig_pages, mod_pages, npages, i;
	void **pages = NULL, *params = NULL;
	int rc;

	rc = tdx_image_check(&host->faux->dev, data, size, &sig_pages, &mod_pages);
	if (rc)
		return rc;
	npages = sig_pages + mod_pages;
	pages = kcalloc(npages, sizeof(*pages), GFP_KERNEL);
	params = (void *)get_zeroed_page(GFP_KERNEL);
	if (!pages || !params) {
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < npages; i++) {
		pages[i] = (void *)__get_free_page(GFP_KERNEL);
		if (!pages[i]) {
			rc = -ENOMEM;
			goto out;
		}
		memcpy(pages[i], data + TDX_IMAGE_HEADER_SIZE + (size_t)i * PAGE_SIZE, PAGE_SIZE);
	}
	put_unaligned_le32(0, params);	/* version */
	put_unaligned_le32(SEAMLDR_SCENARIO_UPDATE, params + SEAMLDR_PARAMS_SCENARIO);
	put_unaligned_le64(sig_pages ? vtfw_pa(pages[0]) : 0,
			   params + SEAMLDR_PARAMS_SIGSTRUCT_PA);
	put_unaligned_le64(mod_pages, params + SEAMLDR_PARAMS_NUM_PAGES);
	for (i = 0; i < mod_pages; i++)
		put_unaligned_le64(vtfw_pa(pages[sig_pages + i]),
				   params + SEAMLDR_PARAMS_PAGE_LIST + 8 * i);
	rc = tdx_update_calls(host, params);
out:
	for (i = 0; pages && i < npages; i++)
		free_page((unsigned long)pages[i]);
	kfree(pages);
	free_page((unsigned long)params);
	return rc;
}

static enum fw_upload_err tdx_fw_prepare(struct fw_upload *fwl, const u8 *data, u32 size)
{
	return FW_UPLOAD_ERR_NONE;
}

/* the kernel's write op: the whole image at once; any error is "firmware-invalid" */
static enum fw_upload_err tdx_fw_write(struct fw_upload *fwl, const u8 *data, u32 offset,
				       u32 size, u32 *written)
{
	struct tdx_host *host = fwl->dd_handle;

	if (tdx_install(host, data + offset, size))
		return FW_UPLOAD_ERR_FW_INVALID;
	*written = size;
	return FW_UPLOAD_ERR_NONE;
}

static enum fw_upload_err tdx_fw_poll_complete(struct fw_upload *fwl)
{
	return FW_UPLOAD_ERR_NONE;
}

/* updates cannot be cancelled */
static void tdx_fw_cancel(struct fw_upload *fwl)
{
}

static const struct fw_upload_ops tdx_fw_ops = {
	.prepare = tdx_fw_prepare,
	.write = tdx_fw_write,
	.poll_complete = tdx_fw_poll_complete,
	.cancel = tdx_fw_cancel,
};

static int tdx_update_init(struct tdx_host *host)
{
	struct vtfw_port *port = host->port;
	u64 features = 0;
	int rc;

	rc = tdx_sys_rd(port, TDX_MD_FEATURES0, &features);
	if (rc)
		return rc;
	host->td_preserving = features & TDX_FEATURES0_TD_PRESERVING;
	/*
	 * The same name and place as the kernel's tdx-host driver; a kernel
	 * that runs its own tdx_host (a real TDX host) makes this fail.
	 */
	host->faux = faux_device_create_with_groups("tdx_host", NULL, NULL, tdx_host_groups);
	if (!host->faux) {
		pci_warn(port->pdev, "no /sys/devices/faux/tdx_host (taken?): no runtime update\n");
		return 0;
	}
	dev_set_drvdata(&host->faux->dev, host);
	rc = sysfs_update_group(&host->faux->dev.kobj, &seamldr_group);
	if (rc)
		return rc;
	if (!host->td_preserving)
		return 0;
	/*
	 * No module reference (NULL, not THIS_MODULE): the firmware-upload
	 * class holds it until firmware_upload_unregister(), which only our
	 * own removal calls, so rmmod would be refused for good.  Unregister
	 * flushes a running upload first, so no op runs after it.
	 */
	host->fwl = firmware_upload_register(NULL, &host->faux->dev, "tdx_module",
					     &tdx_fw_ops, host);
	if (IS_ERR(host->fwl)) {
		rc = PTR_ERR(host->fwl);
		host->fwl = NULL;
		return rc;
	}
	dev_info(&host->faux->dev, "runtime update: /sys/class/firmware/tdx_module\n");
	return 0;
}

static void tdx_update_exit(struct tdx_host *host)
{
	if (host->fwl)
		firmware_upload_unregister(host->fwl);
	if (host->faux)
		faux_device_destroy(host->faux);
	host->fwl = NULL;
	host->faux = NULL;
}

static int vtfw_tdx_init(struct vtfw_port *port)
{
	struct tdx_host *host;
	struct tsm_dev *tsm;
	int rc;

	host = devm_kzalloc(&port->pdev->dev, sizeof(*host), GFP_KERNEL);
	if (!host)
		return -ENOMEM;
	host->port = port;
	mutex_init(&host->update_lock);
	host->iommu_mt = (void *)devm_get_free_pages(&port->pdev->dev,
							 GFP_KERNEL | __GFP_ZERO, 0);
	if (!host->iommu_mt)
		return -ENOMEM;
	port->platform = host;

	rc = tdx_update_init(host);
	if (rc)
		goto err;
	tsm = tsm_register(&port->pdev->dev, &tdx_link_ops);
	if (IS_ERR(tsm)) {
		rc = PTR_ERR(tsm);
		goto err;
	}
	port->link_tsm = tsm;
	pci_info(port->pdev, "Intel TDX link TSM registered as %s\n", dev_name(&tsm->dev));
	rc = vtfw_tdx_td_init(port);
	if (rc)
		goto err;
	return 0;
err:
	if (port->link_tsm)
		tsm_unregister(port->link_tsm);
	port->link_tsm = NULL;
	tdx_update_exit(host);
	return rc;
}

static void vtfw_tdx_exit(struct vtfw_port *port)
{
	struct tdx_host *host = port->platform;
	u64 regs[TDX_NR_REGS] = {}, out[TDX_NR_REGS + 1];

	vtfw_tdx_td_exit(port);
	/* disconnects (and so unbinds) every device connected through it */
	if (port->link_tsm)
		tsm_unregister(port->link_tsm);
	port->link_tsm = NULL;
	if (host->iommu_id) {
		regs[TDX_RCX] = host->iommu_id;
		tdx_seamcall(port, port->pdev, "TDH.IOMMU.CLEAR", TDH_IOMMU_CLEAR, regs, out);
	}
	tdx_update_exit(host);
}

const struct vtfw_platform vtfw_tdx_platform = {
	.abi_id = VTFW_ABI_TDX,
	.name = "Intel TDX",
	.init = vtfw_tdx_init,
	.exit = vtfw_tdx_exit,
};
