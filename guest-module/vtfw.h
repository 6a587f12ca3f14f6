/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vtfw: driver for the vfiouser-tdisp firmware port and the TSMs behind it.
 *
 * The firmware port is a paravirtual PCI function that stands in for the
 * SMC / SEAMCALL / PSP mailbox instructions a TCG guest cannot execute.  Its
 * register file is docs/firmware-port.md (port ABI 1.0): one call window per
 * call class (host, guest), each with a function id, 16 argument and 16
 * result registers, a doorbell and a status register.  Buffers a call names
 * are guest physical addresses that the firmware reaches by DMA.
 */
#ifndef _VTFW_H
#define _VTFW_H

#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/types.h>

#define VTFW_VENDOR_ID		0x1af4	/* QEMU experimental range 1af4:10f0..10ff */
#define VTFW_DEVICE_ID		0x10fc

/* BAR0 header */
#define VTFW_REG_MAGIC		0x000
#define VTFW_REG_PORT_VERSION	0x004
#define VTFW_REG_ABI_ID		0x008
#define VTFW_REG_ABI_VERSION	0x00c
#define VTFW_REG_NUM_WINDOWS	0x010
#define VTFW_REG_WINDOW_BASE	0x014
#define VTFW_REG_WINDOW_STRIDE	0x018
#define VTFW_REG_NUM_ARGS	0x01c
#define VTFW_REG_NUM_RESULTS	0x020

#define VTFW_MAGIC		0x50465456	/* "VTFP" */
#define VTFW_PORT_MAJOR		1

/* call window registers, relative to the window */
#define VTFW_WIN_FID		0x00
#define VTFW_WIN_DOORBELL	0x08
#define VTFW_WIN_STATUS		0x0c
#define VTFW_WIN_SEQ		0x10
#define VTFW_WIN_NRES		0x14
#define VTFW_WIN_ERROR		0x18
#define VTFW_WIN_ARG(n)		(0x20 + 8 * (n))
#define VTFW_WIN_RES(n)		(0xa0 + 8 * (n))

#define VTFW_DOORBELL_CALL	1
#define VTFW_STATUS_BUSY	BIT(0)
#define VTFW_STATUS_DONE	BIT(1)
#define VTFW_STATUS_ERROR	BIT(2)
#define VTFW_STATUS_OVERRUN	BIT(3)

#define VTFW_NR_ARGS		16
#define VTFW_NR_RESULTS		16

/* platform ABI identifiers (fourcc, little-endian) */
#define VTFW_ABI_CCA		0x20414343	/* "CCA " */
#define VTFW_ABI_TDX		0x20584454	/* "TDX " */
#define VTFW_ABI_SEVT		0x54564553	/* "SEVT" */

enum vtfw_class {
	VTFW_CLASS_HOST = 0,	/* RMI, host SEAMCALLs, PSP host commands */
	VTFW_CLASS_GUEST = 1,	/* RSI (and RHI through RSI_HOST_CALL), TDCALL, SNP guest */
	VTFW_NR_CLASSES,
};

struct vtfw_port {
	struct pci_dev *pdev;
	void __iomem *regs;
	u32 abi_id;
	u32 abi_version;
	u32 window_base;
	u32 window_stride;
	/* one mutex per call window: host calls may run while a guest call waits */
	struct mutex lock[VTFW_NR_CLASSES];
	struct tsm_dev *link_tsm;
	void *platform;		/* the platform driver's state */
	const struct vtfw_platform *platform_ops;
};

/* messages about a device the module does not drive: say who speaks */
#define vtfw_info(pdev, fmt, ...) pci_info(pdev, KBUILD_MODNAME ": " fmt, ##__VA_ARGS__)
#define vtfw_warn(pdev, fmt, ...) pci_warn(pdev, KBUILD_MODNAME ": " fmt, ##__VA_ARGS__)
#define vtfw_err(pdev, fmt, ...) pci_err(pdev, KBUILD_MODNAME ": " fmt, ##__VA_ARGS__)

/* One firmware call: @args[0..nargs) in, @res[0..VTFW_NR_RESULTS) out (res[0] = status). */
int vtfw_call(struct vtfw_port *port, enum vtfw_class cls, u64 fid,
	      const u64 *args, unsigned int nargs, u64 *res);

/* the link TSMs' probe / remove of a TDI (a function other than the DSM's 0) */
struct pci_tsm *vtfw_link_tdi_probe(struct tsm_dev *tsm_dev, struct pci_dev *pdev);
bool vtfw_link_tdi_remove(struct pci_tsm *tsm);

/* the guest physical address of kernel memory the firmware reaches by DMA */
static inline u64 vtfw_pa(void *va)
{
	return virt_to_phys(va);
}

/*
 * A platform driver: the firmware behind the port names it by ABI_ID; init
 * registers its TSMs and TVM files, exit undoes it.  vtfw-port.c keeps the
 * table of them.
 */
struct vtfw_platform {
	u32 abi_id;
	const char *name;
	int (*init)(struct vtfw_port *port);
	void (*exit)(struct vtfw_port *port);
};

extern const struct vtfw_platform vtfw_tdx_platform;	/* vtfw-tdx-host.c */
extern const struct vtfw_platform vtfw_sev_platform;	/* vtfw-sev-host.c */

/*
 * The TVM core (vtfw-tvm.c): /sys/bus/pci/devices/BDF/tvm/ with the same
 * files for every platform -- lock, accept, unlock, state, refresh and the
 * evidence read at lock time -- with the proposed tsm/lock and tsm/accept
 * preconditions and errnos in one place, and a devsec TSM whose lock/unlock
 * do what tvm/lock and tvm/unlock do.  A platform supplies the operations.
 */
enum vtfw_ev {
	VTFW_EV_CERTIFICATE,
	VTFW_EV_VCA,
	VTFW_EV_MEASUREMENTS,
	VTFW_EV_REPORT,
	VTFW_EV_INFO,		/* the firmware's attestation record: vdev_info, tdi_info */
	VTFW_EV_NR,
};

enum vtfw_tvm_state {
	VTFW_TVM_UNLOCKED,
	VTFW_TVM_LOCKED,
	VTFW_TVM_RUN,
	VTFW_TVM_ERROR,
};

struct vtfw_tvm_dev;

struct vtfw_tvm_ops {
	const char *name;		/* for the kernel log */
	const char *info_name;		/* file name of VTFW_EV_INFO */
	unsigned long evidence;		/* BIT(VTFW_EV_*) the platform provides */
	int (*setup)(struct vtfw_tvm_dev *t);	/* per function, at init */
	void (*teardown)(struct vtfw_tvm_dev *t);
	int (*lock)(struct vtfw_tvm_dev *t);	/* lock and set the evidence */
	int (*accept)(struct vtfw_tvm_dev *t);
	int (*unlock)(struct vtfw_tvm_dev *t);
	int (*refresh)(struct vtfw_tvm_dev *t);	/* evidence again, same lock */
	int (*state)(struct vtfw_tvm_dev *t);	/* enum vtfw_tvm_state or -errno */
	const struct attribute_group *extra;	/* platform files merged into tvm/ */
};

struct vtfw_tvm_dev {
	struct list_head list;
	struct pci_dev *pdev;
	struct vtfw_port *port;
	const struct vtfw_tvm_ops *ops;
	struct mutex lock;	/* one operation at a time */
	bool locked;
	bool accepted;
	u8 *ev[VTFW_EV_NR];
	size_t ev_len[VTFW_EV_NR];
	struct pci_tsm devsec;	/* what the devsec lock op returns */
	void *priv;		/* the platform's */
};

int vtfw_tvm_init(struct vtfw_port *port, const struct vtfw_tvm_ops *ops);
void vtfw_tvm_exit(struct vtfw_port *port);
struct vtfw_tvm_dev *vtfw_tvm_of(struct device *dev);
int vtfw_tvm_set_evidence(struct vtfw_tvm_dev *t, enum vtfw_ev id, const void *data, size_t len);
void vtfw_tvm_evidence_free(struct vtfw_tvm_dev *t);

/* Arm CCA host side (link TSM), vtfw-cca-host.c */
int vtfw_cca_host_init(struct vtfw_port *port);
void vtfw_cca_host_exit(struct vtfw_port *port);
int vtfw_cca_serve_host_call(struct vtfw_port *port, struct pci_dev *pdev);

/* Arm CCA realm (TVM) side, vtfw-cca-realm.c */
int vtfw_cca_realm_init(struct vtfw_port *port);
void vtfw_cca_realm_exit(struct vtfw_port *port);

/*
 * The endpoint's half of the selective IDE stream the firmware keyed, as
 * pci_ide_stream_setup()/enable() would program it (vtfw-ide.c).
 */
int vtfw_ide_stream_enable(struct pci_dev *pdev, u8 stream_id);
void vtfw_ide_stream_disable(struct pci_dev *pdev);

/* DER walking, vtfw-der.c */
struct vtfw_spki {
	const u8 *alg_oid;	/* contents of the algorithm OBJECT IDENTIFIER */
	size_t alg_oid_len;
	const u8 *param_oid;	/* named curve, or NULL */
	size_t param_oid_len;
	const u8 *key;		/* subjectPublicKey BIT STRING contents, unused-bits byte dropped */
	size_t key_len;
};

int vtfw_spdm_chain_leaf(const u8 *chain, size_t len, const u8 **leaf, size_t *leaf_len);
int vtfw_cert_spki(const u8 *cert, size_t len, struct vtfw_spki *spki);
int vtfw_rsa_key(const u8 *key, size_t len, const u8 **n, size_t *n_len,
		 const u8 **e, size_t *e_len);

#endif /* _VTFW_H */
