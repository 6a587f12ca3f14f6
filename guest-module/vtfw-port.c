// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: the firmware port driver and the TSM core glue.
 *
 * Binds the vfiouser-tdisp firmware port (1af4:10fc), checks its ABI, and
 * hands it to the driver of the platform whose firmware sits behind it (the
 * port's ABI_ID), which registers with the kernel's TSM core.  vtfw_call()
 * is the instruction a TCG guest cannot execute: it writes the call window,
 * rings the doorbell and reads the results back.
 *
 * 7.3 has no caller of pci_tsm_bind() / pci_tsm_unbind() (that is iommufd's
 * job on a host with a VMM); the port's tdi_bind and tdi_unbind attributes
 * call them for the function named (BDF), so the kernel's own bind path and
 * tsm/bound run.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>

#include "vtfw.h"

/*
 * The link TSMs' probe and remove for a further function of the DSM's device
 * (not function 0): a TDI, which only needs the core's link constructor.
 */
struct pci_tsm *vtfw_link_tdi_probe(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	struct pci_tsm *tsm = kzalloc_obj(*tsm);

	if (!tsm)
		return NULL;
	if (pci_tsm_link_constructor(pdev, tsm, tsm_dev)) {
		kfree(tsm);
		return NULL;
	}
	return tsm;
}

/* true if @tsm was a TDI's and is gone; false for the DSM, which is the platform's */
bool vtfw_link_tdi_remove(struct pci_tsm *tsm)
{
	if (is_pci_tsm_pf0(tsm->pdev) && tsm->dsm_dev == tsm->pdev)
		return false;
	kfree(tsm);
	return true;
}

static int vtfw_cca_init(struct vtfw_port *port)
{
	int rc = vtfw_cca_host_init(port);

	return rc ? rc : vtfw_cca_realm_init(port);
}

static void vtfw_cca_exit(struct vtfw_port *port)
{
	vtfw_cca_realm_exit(port);
	vtfw_cca_host_exit(port);
}

static const struct vtfw_platform vtfw_cca_platform = {
	.abi_id = VTFW_ABI_CCA,
	.name = "Arm CCA",
	.init = vtfw_cca_init,
	.exit = vtfw_cca_exit,
};

/* the platform drivers, by the ABI_ID of the firmware behind the port */
static const struct vtfw_platform *const vtfw_platforms[] = {
	&vtfw_cca_platform,
	&vtfw_tdx_platform,
	&vtfw_sev_platform,
};

static const struct vtfw_platform *vtfw_platform_of(u32 abi_id)
{
	for (int i = 0; i < ARRAY_SIZE(vtfw_platforms); i++)
		if (vtfw_platforms[i]->abi_id == abi_id)
			return vtfw_platforms[i];
	return NULL;
}

static u32 vtfw_win(struct vtfw_port *port, enum vtfw_class cls)
{
	return port->window_base + cls * port->window_stride;
}

int vtfw_call(struct vtfw_port *port, enum vtfw_class cls, u64 fid,
	      const u64 *args, unsigned int nargs, u64 *res)
{
	void __iomem *win;
	u32 status, nres, err;
	unsigned int i;

	if (cls >= VTFW_NR_CLASSES || nargs > VTFW_NR_ARGS)
		return -EINVAL;
	win = port->regs + vtfw_win(port, cls);

	guard(mutex)(&port->lock[cls]);
	for (i = 0; i < VTFW_NR_ARGS; i++)
		writeq(i < nargs ? args[i] : 0, win + VTFW_WIN_ARG(i));
	writeq(fid, win + VTFW_WIN_FID);
	writel(VTFW_DOORBELL_CALL, win + VTFW_WIN_DOORBELL);

	/*
	 * The port completes a call before it answers the next access, so
	 * this read already sees DONE; BUSY is room for asynchronous ports.
	 */
	do {
		status = readl(win + VTFW_WIN_STATUS);
		if (status == U32_MAX)
			return -ENODEV;		/* the function went away */
		if (status & VTFW_STATUS_BUSY)
			cond_resched();
	} while (status & VTFW_STATUS_BUSY);

	if (!(status & VTFW_STATUS_DONE))
		return -EIO;
	if (status & VTFW_STATUS_ERROR) {
		err = readl(win + VTFW_WIN_ERROR);
		pci_err(port->pdev, "call %#llx: port error %u\n", fid, err);
		return err == 1 ? -EFAULT : -EIO;
	}
	nres = min_t(u32, readl(win + VTFW_WIN_NRES), VTFW_NR_RESULTS);
	for (i = 0; i < VTFW_NR_RESULTS; i++)
		res[i] = i < nres ? readq(win + VTFW_WIN_RES(i)) : 0;
	return 0;
}

/*
 * Stands for the TVM a TDI is bound to.  The PCI/TSM core only compares the
 * pointer (one TVM per TDI) and hands it to the link TSM; nothing looks inside.
 */
static struct vtfw_tvm {
	int unused;
} vtfw_tvm;

static struct pci_dev *vtfw_find(const char *buf)
{
	unsigned int domain, bus, slot, fn;

	if (sscanf(buf, "%x:%x:%x.%x", &domain, &bus, &slot, &fn) != 4 ||
	    bus > 0xff || slot > 0x1f || fn > 7)
		return NULL;
	return pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(slot, fn));
}

static ssize_t tdi_bind_store(struct device *dev, struct device_attribute *attr,
			      const char *buf, size_t count)
{
	struct pci_dev *pdev = vtfw_find(buf);
	int rc;

	if (!pdev)
		return -ENODEV;
	/* the TDI id is the function's RID: host and TVM are one VM here */
	rc = pci_tsm_bind(pdev, (struct kvm *)&vtfw_tvm, pci_dev_id(pdev));
	pci_dev_put(pdev);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(tdi_bind);

static ssize_t tdi_unbind_store(struct device *dev, struct device_attribute *attr,
				const char *buf, size_t count)
{
	struct pci_dev *pdev = vtfw_find(buf);

	if (!pdev)
		return -ENODEV;
	pci_tsm_unbind(pdev);
	pci_dev_put(pdev);
	return count;
}
static DEVICE_ATTR_WO(tdi_unbind);

static struct attribute *vtfw_attrs[] = {
	&dev_attr_tdi_bind.attr,
	&dev_attr_tdi_unbind.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vtfw);

static int vtfw_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vtfw_port *port;
	u32 magic, version;
	int rc;

	port = devm_kzalloc(&pdev->dev, sizeof(*port), GFP_KERNEL);
	if (!port)
		return -ENOMEM;
	port->pdev = pdev;
	for (int i = 0; i < VTFW_NR_CLASSES; i++)
		mutex_init(&port->lock[i]);

	rc = pcim_enable_device(pdev);
	if (rc)
		return rc;
	port->regs = pcim_iomap_region(pdev, 0, KBUILD_MODNAME);
	if (IS_ERR(port->regs))
		return PTR_ERR(port->regs);
	/* the firmware reaches call buffers by DMA */
	pci_set_master(pdev);

	magic = readl(port->regs + VTFW_REG_MAGIC);
	version = readl(port->regs + VTFW_REG_PORT_VERSION);
	if (magic != VTFW_MAGIC || version >> 16 != VTFW_PORT_MAJOR) {
		pci_err(pdev, "not a firmware port of ABI %u.x (magic %#x version %#x)\n",
			VTFW_PORT_MAJOR, magic, version);
		return -ENODEV;
	}
	port->abi_id = readl(port->regs + VTFW_REG_ABI_ID);
	port->abi_version = readl(port->regs + VTFW_REG_ABI_VERSION);
	port->window_base = readl(port->regs + VTFW_REG_WINDOW_BASE);
	port->window_stride = readl(port->regs + VTFW_REG_WINDOW_STRIDE);
	if (readl(port->regs + VTFW_REG_NUM_WINDOWS) < VTFW_NR_CLASSES ||
	    readl(port->regs + VTFW_REG_NUM_ARGS) < VTFW_NR_ARGS ||
	    readl(port->regs + VTFW_REG_NUM_RESULTS) < VTFW_NR_RESULTS ||
	    port->window_stride < VTFW_WIN_RES(VTFW_NR_RESULTS) ||
	    port->window_base + VTFW_NR_CLASSES * port->window_stride >
	    pci_resource_len(pdev, 0)) {
		pci_err(pdev, "firmware port layout not supported\n");
		return -ENODEV;
	}
	pci_set_drvdata(pdev, port);
	pci_info(pdev, "firmware port %u.%u, platform ABI %.4s %u.%u\n",
		 version >> 16, version & 0xffff, (char *)&port->abi_id,
		 port->abi_version >> 16, port->abi_version & 0xffff);

	port->platform_ops = vtfw_platform_of(port->abi_id);
	if (!port->platform_ops) {
		pci_err(pdev, "no driver for platform ABI %#x\n", port->abi_id);
		return -ENODEV;
	}
	return port->platform_ops->init(port);
}

static void vtfw_remove(struct pci_dev *pdev)
{
	struct vtfw_port *port = pci_get_drvdata(pdev);

	port->platform_ops->exit(port);
}

static const struct pci_device_id vtfw_ids[] = {
	{ PCI_DEVICE(VTFW_VENDOR_ID, VTFW_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vtfw_ids);

static struct pci_driver vtfw_driver = {
	.name = KBUILD_MODNAME,
	.id_table = vtfw_ids,
	.probe = vtfw_probe,
	.remove = vtfw_remove,
	.dev_groups = vtfw_groups,
};
module_pci_driver(vtfw_driver);

MODULE_DESCRIPTION("vfiouser-tdisp firmware port and TSM");
MODULE_LICENSE("GPL");
