// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: the TVM core, the same tvm/ files for every platform.
 *
 * 7.3 has no tsm/lock or tsm/accept (reference/firmware-abi.md A.1): the
 * operations of the proposed guest ABI are offered, with its preconditions
 * and errnos, as files in a "tvm" directory of each TEE-capable function:
 *
 *   lock      (WO)  -EBUSY while a driver is bound or already locked,
 *                   -ENXIO when the host has not bound the TDI
 *   accept    (WO, write 1)  -EINVAL before lock, -EBUSY when accepted
 *   unlock    (WO)  -EINVAL before lock
 *   refresh   (WO, write 1)  the evidence again under the same lock
 *   state     (RO)  unbound / unlocked / locked / run / error, as the
 *                   firmware tells the TVM
 *   certificate, vca, measurements, report, and the platform's attestation
 *   record (vdev_info, tdi_info)  (RO, binary) the evidence read at lock time
 *
 * A devsec TSM is registered next to the platform's link TSM: 7.3 counts it
 * and never calls its lock/unlock operations; a kernel with tsm/lock would,
 * and they do what tvm/lock and tvm/unlock do.  On kernels whose devsec ops
 * have the proposed accept ([IO2]) or run ([ISTG]) operation
 * (VTFW_DEVSEC_OP_ACCEPT / _RUN, detected by the Kbuild) that one does what
 * tvm/accept does.  What each operation does
 * with the firmware is the platform's (struct vtfw_tvm_ops).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/list.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/tsm.h>

#include "vtfw.h"

static LIST_HEAD(vtfw_tvms);
static DEFINE_MUTEX(vtfw_tvms_lock);
static struct tsm_dev *vtfw_devsec_tsm;

struct vtfw_tvm_dev *vtfw_tvm_of(struct device *dev)
{
	struct vtfw_tvm_dev *t;

	guard(mutex)(&vtfw_tvms_lock);
	list_for_each_entry(t, &vtfw_tvms, list)
		if (&t->pdev->dev == dev)
			return t;
	return NULL;
}

void vtfw_tvm_evidence_free(struct vtfw_tvm_dev *t)
{
	for (int i = 0; i < VTFW_EV_NR; i++) {
		kvfree(t->ev[i]);
		t->ev[i] = NULL;
		t->ev_len[i] = 0;
	}
}

int vtfw_tvm_set_evidence(struct vtfw_tvm_dev *t, enum vtfw_ev id, const void *data, size_t len)
{
	u8 *copy = kvmalloc(len ? len : 1, GFP_KERNEL);

	if (!copy)
		return -ENOMEM;
	memcpy(copy, data, len);
	kvfree(t->ev[id]);
	t->ev[id] = copy;
	t->ev_len[id] = len;
	return 0;
}

/* the proposed ABI's preconditions: no driver bound, and a TDI the host bound */
static int tvm_check(struct vtfw_tvm_dev *t)
{
	if (t->pdev->dev.driver)
		return -EBUSY;
	if (!t->pdev->tsm || !t->pdev->tsm->tdi)
		return -ENXIO;
	return 0;
}

static int tvm_lock(struct vtfw_tvm_dev *t)
{
	int rc = tvm_check(t);

	if (!rc && t->locked)
		rc = -EBUSY;
	if (rc)
		return rc;
	rc = t->ops->lock(t);
	if (rc) {
		vtfw_tvm_evidence_free(t);
		return rc;
	}
	t->locked = true;
	vtfw_info(t->pdev, "TVM: locked\n");
	return 0;
}

static int tvm_unlock(struct vtfw_tvm_dev *t)
{
	int rc = t->ops->unlock(t);

	/* whatever the firmware said, this TVM no longer trusts the TDI */
	t->locked = false;
	t->accepted = false;
	vtfw_tvm_evidence_free(t);
	if (!rc)
		vtfw_info(t->pdev, "TVM: unlocked\n");
	return rc;
}

static ssize_t lock_store(struct device *dev, struct device_attribute *attr,
			  const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);
	int rc;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	rc = tvm_lock(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(lock);

static int tvm_accept(struct vtfw_tvm_dev *t)
{
	int rc = tvm_check(t);

	if (!rc && !t->locked)
		rc = -EINVAL;	/* accept before lock */
	if (!rc && t->accepted)
		rc = -EBUSY;
	if (!rc)
		rc = t->ops->accept(t);
	if (!rc)
		t->accepted = true;
	return rc;
}

static ssize_t accept_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);
	bool yes;
	int rc;

	if (!t)
		return -ENODEV;
	if (kstrtobool(buf, &yes) || !yes)
		return -EINVAL;
	guard(mutex)(&t->lock);
	rc = tvm_accept(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(accept);

static ssize_t unlock_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);
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

static ssize_t refresh_store(struct device *dev, struct device_attribute *attr,
			     const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);
	bool yes;
	int rc;

	if (!t)
		return -ENODEV;
	if (kstrtobool(buf, &yes) || !yes)
		return -EINVAL;
	guard(mutex)(&t->lock);
	if (!t->locked)
		return -EINVAL;
	rc = t->ops->refresh(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(refresh);

static ssize_t state_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	static const char * const names[] = {
		[VTFW_TVM_UNLOCKED] = "unlocked",
		[VTFW_TVM_LOCKED] = "locked",
		[VTFW_TVM_RUN] = "run",
		[VTFW_TVM_ERROR] = "error",
	};
	struct vtfw_tvm_dev *t = vtfw_tvm_of(dev);
	int state;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->pdev->tsm || !t->pdev->tsm->tdi)
		return sysfs_emit(buf, "unbound\n");
	state = t->ops->state(t);
	if (state < 0)
		return state;
	return sysfs_emit(buf, "%s\n", state < ARRAY_SIZE(names) ? names[state] : "?");
}
static DEVICE_ATTR_RO(state);

static ssize_t tvm_ev_read(struct file *file, struct kobject *kobj,
			   const struct bin_attribute *attr, char *buf, loff_t off, size_t count)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(kobj_to_dev(kobj));
	unsigned long id = (unsigned long)attr->private;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->locked)
		return -ENODATA;
	return memory_read_from_buffer(buf, count, &off, t->ev[id], t->ev_len[id]);
}

#define TVM_EV_ATTR(_name, _id)						\
	static const struct bin_attribute tvm_ev_##_name = {		\
		.attr = { .name = #_name, .mode = 0444 },		\
		.read = tvm_ev_read,					\
		.private = (void *)(_id),				\
	}

TVM_EV_ATTR(certificate, VTFW_EV_CERTIFICATE);
TVM_EV_ATTR(vca, VTFW_EV_VCA);
TVM_EV_ATTR(measurements, VTFW_EV_MEASUREMENTS);
TVM_EV_ATTR(report, VTFW_EV_REPORT);
/* the platforms' attestation records: one is visible */
TVM_EV_ATTR(vdev_info, VTFW_EV_INFO);
TVM_EV_ATTR(tdi_info, VTFW_EV_INFO);

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
	&tvm_ev_vdev_info,
	&tvm_ev_tdi_info,
	NULL,
};

static umode_t tvm_bin_visible(struct kobject *kobj, const struct bin_attribute *attr, int n)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(kobj_to_dev(kobj));
	unsigned long id = (unsigned long)attr->private;

	if (!t || !(t->ops->evidence & BIT(id)))
		return 0;
	if (id == VTFW_EV_INFO && strcmp(attr->attr.name, t->ops->info_name))
		return 0;
	return attr->attr.mode;
}

static const struct attribute_group tvm_group = {
	.name = "tvm",
	.attrs = tvm_attrs,
	.bin_attrs = tvm_bin_attrs,
	.is_bin_visible = tvm_bin_visible,
};

static struct pci_tsm *vtfw_devsec_lock(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(&pdev->dev);
	int rc;

	if (!t)
		return ERR_PTR(-ENXIO);
	guard(mutex)(&t->lock);
	rc = tvm_lock(t);
	if (rc)
		return ERR_PTR(rc);
	t->devsec.pdev = pdev;
	t->devsec.dsm_dev = pdev;
	t->devsec.tsm_dev = tsm_dev;
	return &t->devsec;
}

static void vtfw_devsec_unlock(struct pci_tsm *tsm)
{
	struct vtfw_tvm_dev *t = container_of(tsm, struct vtfw_tvm_dev, devsec);

	guard(mutex)(&t->lock);
	if (t->locked)
		tvm_unlock(t);
}

#if defined(VTFW_DEVSEC_OP_ACCEPT) || defined(VTFW_DEVSEC_OP_RUN)
/*
 * The proposed tsm/accept: [IO2] calls devsec accept(pdev), [ISTG] renamed
 * it run (firmware-abi.md A.3; [INF] same arguments).  The core checks that
 * no driver is bound; the TVM's own preconditions are tvm/accept's.
 */
static int vtfw_devsec_accept(struct pci_dev *pdev)
{
	struct vtfw_tvm_dev *t = vtfw_tvm_of(&pdev->dev);

	if (!t)
		return -ENXIO;
	guard(mutex)(&t->lock);
	return tvm_accept(t);
}
#endif

static struct pci_tsm_ops vtfw_devsec_ops = {
	.lock = vtfw_devsec_lock,
	.unlock = vtfw_devsec_unlock,
#if defined(VTFW_DEVSEC_OP_RUN)
	.run = vtfw_devsec_accept,
#elif defined(VTFW_DEVSEC_OP_ACCEPT)
	.accept = vtfw_devsec_accept,
#endif
};

/* which devsec operations this build wired (the Kbuild's detection): modinfo */
#if defined(VTFW_DEVSEC_OP_RUN)
#define VTFW_DEVSEC_OPS	"lock,unlock,run"
#elif defined(VTFW_DEVSEC_OP_ACCEPT)
#define VTFW_DEVSEC_OPS	"lock,unlock,accept"
#else
#define VTFW_DEVSEC_OPS	"lock,unlock"
#endif
MODULE_INFO(vtfw_devsec_ops, VTFW_DEVSEC_OPS);

static void tvm_free(struct vtfw_tvm_dev *t)
{
	if (t->ops->teardown)
		t->ops->teardown(t);
	vtfw_tvm_evidence_free(t);
	pci_dev_put(t->pdev);
	kfree(t);
}

/* every TEE-capable function (PCIe DEVCAP TEE-IO) gets a tvm/ directory */
int vtfw_tvm_init(struct vtfw_port *port, const struct vtfw_tvm_ops *ops)
{
	struct pci_dev *pdev = NULL;
	struct vtfw_tvm_dev *t;

	for_each_pci_dev(pdev) {
		if (!pci_is_pcie(pdev) || !(pdev->devcap & PCI_EXP_DEVCAP_TEE))
			continue;
		t = kzalloc_obj(*t);
		if (!t)
			break;
		t->pdev = pci_dev_get(pdev);
		t->port = port;
		t->ops = ops;
		mutex_init(&t->lock);
		if (ops->setup && ops->setup(t)) {
			pci_dev_put(t->pdev);
			kfree(t);
			continue;
		}
		/* listed first: the visibility callback looks the function up */
		scoped_guard(mutex, &vtfw_tvms_lock)
			list_add_tail(&t->list, &vtfw_tvms);
		if (sysfs_create_group(&pdev->dev.kobj, &tvm_group) ||
		    (ops->extra && sysfs_merge_group(&pdev->dev.kobj, ops->extra))) {
			sysfs_remove_group(&pdev->dev.kobj, &tvm_group);
			scoped_guard(mutex, &vtfw_tvms_lock)
				list_del(&t->list);
			tvm_free(t);
			continue;
		}
		vtfw_info(pdev, "TVM: lock/accept/unlock in %s/tvm/\n", pci_name(pdev));
	}
	if (!vtfw_devsec_tsm) {
		vtfw_devsec_tsm = tsm_register(&port->pdev->dev, &vtfw_devsec_ops);
		if (IS_ERR(vtfw_devsec_tsm)) {
			pci_warn(port->pdev, "devsec TSM not registered: %ld\n",
				 PTR_ERR(vtfw_devsec_tsm));
			vtfw_devsec_tsm = NULL;
		} else {
			pci_info(port->pdev, "%s devsec TSM registered as %s (ops: %s)\n",
				 ops->name, dev_name(&vtfw_devsec_tsm->dev), VTFW_DEVSEC_OPS);
		}
	}
	return 0;
}

void vtfw_tvm_exit(struct vtfw_port *port)
{
	struct vtfw_tvm_dev *t, *next;
	LIST_HEAD(gone);

	if (vtfw_devsec_tsm && vtfw_devsec_tsm->dev.parent == &port->pdev->dev) {
		tsm_unregister(vtfw_devsec_tsm);
		vtfw_devsec_tsm = NULL;
	}
	scoped_guard(mutex, &vtfw_tvms_lock)
		list_for_each_entry_safe(t, next, &vtfw_tvms, list)
			if (t->port == port)
				list_move(&t->list, &gone);
	list_for_each_entry_safe(t, next, &gone, list) {
		if (t->ops->extra)
			sysfs_unmerge_group(&t->pdev->dev.kobj, t->ops->extra);
		sysfs_remove_group(&t->pdev->dev.kobj, &tvm_group);
		list_del(&t->list);
		tvm_free(t);
	}
}
