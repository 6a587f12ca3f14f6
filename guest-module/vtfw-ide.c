// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: the endpoint half of the selective IDE stream a platform firmware keyed.
 *
 * On a host whose root port has an IDE capability the kernel itself sets the
 * stream up around the TSM's key programming: pci_ide_stream_setup() writes
 * the RID association and the Stream Control register (EN clear) of both
 * ends, the TSM keys them (IDE_KM KEY_PROG / K_SET_GO to the endpoint), and
 * pci_ide_stream_enable() sets EN and requires the Stream Status to read
 * SECURE at once (-ENXIO otherwise).  QEMU's pcie-root-port has no IDE
 * capability, so pci_ide_init() ignores the endpoint's and
 * pci_ide_stream_alloc() fails (reference/guest-kernel-tsm.md).  The module
 * plays that part for the endpoint here, on selective stream block 0, after
 * the firmware keyed the stream and before it stops the keys; the register
 * layout is include/uapi/linux/pci_regs.h (PCIe r6.x 7.9.26).
 */

#include <linux/bitfield.h>
#include <linux/pci.h>

#include "vtfw.h"

/* config offset of the endpoint's first selective stream block, or -errno */
static int vtfw_ide_sel_block(struct pci_dev *pdev)
{
	u16 cap = pci_find_ext_capability(pdev, PCI_EXT_CAP_ID_IDE);
	u32 val;

	if (!cap)
		return -ENODEV;
	pci_read_config_dword(pdev, cap + PCI_IDE_CAP, &val);
	if (!(val & PCI_IDE_CAP_SELECTIVE))
		return -ENODEV;
	if (val & PCI_IDE_CAP_LINK)
		return cap + PCI_IDE_LINK_STREAM_0 +
		       (FIELD_GET(PCI_IDE_CAP_LINK_TC_NUM, val) + 1) * PCI_IDE_LINK_BLOCK_SIZE;
	return cap + PCI_IDE_LINK_STREAM_0;
}

/**
 * vtfw_ide_stream_enable() - enable the endpoint's selective stream @stream_id
 * @pdev: the endpoint (the DSM)
 * @stream_id: the Stream ID the firmware programmed the keys for
 *
 * Returns 0 when the stream reads SECURE (or the endpoint has no selective
 * IDE capability: nothing to enable), -ENXIO (and EN cleared again) when it
 * does not read SECURE.
 */
int vtfw_ide_stream_enable(struct pci_dev *pdev, u8 stream_id)
{
	struct pci_dev *rp = pcie_find_root_port(pdev);
	int pos = vtfw_ide_sel_block(pdev);
	u32 ctl, sts;

	if (pos == -ENODEV) {
		vtfw_info(pdev, "no selective IDE capability: no IDE stream to enable\n");
		return 0;
	}
	/* the partner of the endpoint's stream is its root port */
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_RID_1,
			       FIELD_PREP(PCI_IDE_SEL_RID_1_LIMIT, rp ? pci_dev_id(rp) : 0));
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_RID_2,
			       FIELD_PREP(PCI_IDE_SEL_RID_2_BASE, rp ? pci_dev_id(rp) : 0) |
			       FIELD_PREP(PCI_IDE_SEL_RID_2_SEG, pci_domain_nr(pdev->bus)) |
			       PCI_IDE_SEL_RID_2_VALID);
	ctl = FIELD_PREP(PCI_IDE_SEL_CTL_ID, stream_id);
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_CTL, ctl);
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_CTL, ctl | PCI_IDE_SEL_CTL_EN);
	pci_read_config_dword(pdev, pos + PCI_IDE_SEL_STS, &sts);
	if (FIELD_GET(PCI_IDE_SEL_STS_STATE, sts) != PCI_IDE_SEL_STS_STATE_SECURE) {
		pci_write_config_dword(pdev, pos + PCI_IDE_SEL_CTL, ctl);
		vtfw_err(pdev, "IDE stream %u: Stream Status %#x after enable, not SECURE\n",
			 stream_id, sts);
		return -ENXIO;
	}
	vtfw_info(pdev, "IDE stream %u enabled at %#x: SECURE\n", stream_id, pos);
	return 0;
}

/* vtfw_ide_stream_disable() - clear the endpoint's stream (before its keys stop) */
void vtfw_ide_stream_disable(struct pci_dev *pdev)
{
	int pos = vtfw_ide_sel_block(pdev);
	u32 ctl, sts;

	if (pos < 0)
		return;
	pci_read_config_dword(pdev, pos + PCI_IDE_SEL_CTL, &ctl);
	if (!(ctl & PCI_IDE_SEL_CTL_EN))
		return;
	pci_read_config_dword(pdev, pos + PCI_IDE_SEL_STS, &sts);
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_CTL, 0);
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_RID_1, 0);
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_RID_2, 0);
	vtfw_info(pdev, "IDE stream %lu disabled (Stream Status was %#x%s)\n",
		  FIELD_GET(PCI_IDE_SEL_CTL_ID, ctl), sts,
		  sts & PCI_IDE_SEL_STS_IDE_FAIL ? ", IDE_FAIL" : "");
}
