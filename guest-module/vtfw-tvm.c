// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: the TVM-facing files every platform offers, in one place.
 *
 * 7.3 has no tsm/lock or tsm/accept (reference/firmware-abi.md A.3, A.5):
 * each TEE-capable function gets /sys/bus/pci/devices/$BDF/tvm/ with lock,
 * accept (write 1), unlock, refresh (write 1), state ("unbound", "unlocked",
 * "locked", "run", "error") and the evidence read at lock time
 * (certificate, vca, measurements, report, and one platform file with the
 * firmware's own digests of them), with the proposed ABI's preconditions
 * and errnos: -EBUSY while a driver is bound (and for a second lock or
 * accept), -EINVAL for accept, unlock or refresh before lock, -ENXIO when
 * the host has not bound the TDI.  The platform's struct vtfw_tvm_ops does
 * the firmware calls; this file owns the files, the locking and the
 * preconditions, and registers a devsec TSM whose lock/unlock ops (which
 * 7.3 declares and never calls) do what tvm/lock and tvm/unlock do.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/list.h>
#include <linux/pci.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/tsm.h>

#include "vtfw.h"

static LIST_HEAD(tvm_devs);
static DEFINE_MUTEX(tvm_list_lock);
static const struct vtfw_tvm_ops *tvm_ops;
static struct tsm_dev *tvm_devsec_tsm;

static const char * const tvm_ev_names[] = {
	[VTFW_EV_CERTIFICATE] = "certificate",
	[VTFW_EV_VCA] = "vca",
	[VTFW_EV_MEASUREMENTS] = "measurements",
	[VTFW_EV_REPORT] = "report",
	[VTFW_EV_FW_INFO] = "fw_info",
};

void vtfw_tvm_evidence_free(struct vtfw_tvm_dev *t)
{
	for (int i = 0; i < VTFW_EV_NR; i++) {
		kvfree(t->ev[i]);
		t->ev[i] = NULL;
		t->ev_len[i] = 0;
	}
}

int vtfw_tvm_evidence_set(struct vtfw_tvm_dev *t, enum vtfw_ev id, const void *data,
			  size_t len)
{
	kvfree(t->ev[id]);
	t->ev[id] = kvmemdup(data, len, GFP_KERNEL);
	t->ev_len[id] = t->ev[id] ? len : 0;
	return t->ev[id] ? 0 : -ENOMEM;
}

static struct vtfw_tvm_dev *tvm_of(struct device *dev)
{
	struct vtfw_tvm_dev *t;

	guard(mutex)(&tvm_list_lock);
	list_for_each_entry(t, &tvm_devs, list)
		if (&t->pdev->dev == dev)
			return t;
	return NULL;
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
	if (!rc)
		rc = tvm_ops->lock(t);
	if (rc) {
		vtfw_tvm_evidence_free(t);
		return rc;
	}
	t->locked = true;
	vtfw_info(t->pdev, "TVM: evidence: certificate %zu, vca %zu, measurements %zu, report %zu bytes, digests match\n",
		  t->ev_len[VTFW_EV_CERTIFICATE], t->ev_len[VTFW_EV_VCA],
		  t->ev_len[VTFW_EV_MEASUREMENTS], t->ev_len[VTFW_EV_REPORT]);
	vtfw_info(t->pdev, "TVM: locked\n");
	return 0;
}

static int tvm_unlock(struct vtfw_tvm_dev *t)
{
	int rc = tvm_ops->unlock(t);

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
	struct vtfw_tvm_dev *t = tvm_of(dev);
	int rc;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	rc = tvm_lock(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(lock);

static ssize_t accept_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = tvm_of(dev);
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
		rc = tvm_ops->accept(t);
	if (rc)
		return rc;
	t->accepted = true;
	return count;
}
static DEVICE_ATTR_WO(accept);

static ssize_t unlock_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = tvm_of(dev);
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

/* fresh evidence under the same lock (the proposed ABI's refresh_evidence) */
static ssize_t refresh_store(struct device *dev, struct device_attribute *attr,
			     const char *buf, size_t count)
{
	struct vtfw_tvm_dev *t = tvm_of(dev);
	bool yes;
	int rc;

	if (!t)
		return -ENODEV;
	if (kstrtobool(buf, &yes) || !yes)
		return -EINVAL;
	guard(mutex)(&t->lock);
	if (!t->locked)
		return -EINVAL;
	rc = tvm_ops->refresh(t);
	return rc ? rc : count;
}
static DEVICE_ATTR_WO(refresh);

/* the TDI's state as the firmware tells the TVM */
static ssize_t state_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	static const char * const names[] = {
		[VTFW_TDI_UNLOCKED] = "unlocked",
		[VTFW_TDI_LOCKED] = "locked",
		[VTFW_TDI_RUN] = "run",
		[VTFW_TDI_ERROR] = "error",
	};
	struct vtfw_tvm_dev *t = tvm_of(dev);
	int state;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->pdev->tsm || !t->pdev->tsm->tdi)
		return sysfs_emit(buf, "unbound\n");
	state = tvm_ops->state(t);
	if (state < 0)
		return state;
	return sysfs_emit(buf, "%s\n", state < ARRAY_SIZE(names) ? names[state] : "?");
}
static DEVICE_ATTR_RO(state);

static ssize_t tvm_ev_read(struct file *file, struct kobject *kobj,
			   const struct bin_attribute *attr, char *buf, loff_t off, size_t count)
{
	struct vtfw_tvm_dev *t = tvm_of(kobj_to_dev(kobj));
	unsigned long id = (unsigned long)attr->private;

	if (!t)
		return -ENODEV;
	guard(mutex)(&t->lock);
	if (!t->locked)
		return -ENODATA;
	return memory_read_from_buffer(buf, count, &off, t->ev[id], t->ev_len[id]);
}

#define TVM_EV_ATTR(_name, _id)						\
	static struct bin_attribute tvm_ev_##_name = {			\
		.attr = { .name = #_name, .mode = 0444 },		\
		.read = tvm_ev_read,					\
		.private = (void *)(_id),				\
	}

TVM_EV_ATTR(certificate, VTFW_EV_CERTIFICATE);
TVM_EV_ATTR(vca, VTFW_EV_VCA);
TVM_EV_ATTR(measurements, VTFW_EV_MEASUREMENTS);
TVM_EV_ATTR(report, VTFW_EV_REPORT);
/* named by the platform (tvm_ops->fw_info_name) before the group is created */
TVM_EV_ATTR(fw_info, VTFW_EV_FW_INFO);

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
	&tvm_ev_fw_info,
	NULL,
};

static const struct attribute_group tvm_group = {
	.name = "tvm",
	.attrs = tvm_attrs,
	.bin_attrs = tvm_bin_attrs,
};

static struct pci_tsm *tvm_devsec_lock(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	struct vtfw_tvm_dev *t = tvm_of(&pdev->dev);
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

static void tvm_devsec_unlock(struct pci_tsm *tsm)
{
	struct vtfw_tvm_dev *t = container_of(tsm, struct vtfw_tvm_dev, devsec);

	guard(mutex)(&t->lock);
	if (t->locked)
		tvm_unlock(t);
}

static struct pci_tsm_ops tvm_devsec_ops = {
	.lock = tvm_devsec_lock,
	.unlock = tvm_devsec_unlock,
};

static void tvm_dev_free(struct vtfw_tvm_dev *t)
{
	if (tvm_ops->free)
		tvm_ops->free(t);
	vtfw_tvm_evidence_free(t);
	pci_dev_put(t->pdev);
	kfree(t);
}

int vtfw_tvm_init(struct vtfw_port *port, const struct vtfw_tvm_ops *ops)
{
	struct pci_dev *pdev = NULL;
	struct vtfw_tvm_dev *t;

	if (tvm_ops && tvm_ops != ops)
		return -EBUSY;	/* one platform per module instance */
	tvm_ops = ops;
	tvm_ev_fw_info.attr.name = ops->fw_info_name;

	for_each_pci_dev(pdev) {
		if (!pci_is_pcie(pdev) || !(pdev->devcap & PCI_EXP_DEVCAP_TEE))
			continue;
		t = kzalloc_obj(*t);
		if (!t)
			break;
		t->pdev = pci_dev_get(pdev);
		t->port = port;
		mutex_init(&t->lock);
		if ((ops->alloc && ops->alloc(t)) ||
		    sysfs_create_group(&pdev->dev.kobj, &tvm_group)) {
			tvm_dev_free(t);
			continue;
		}
		scoped_guard(mutex, &tvm_list_lock)
			list_add_tail(&t->list, &tvm_devs);
		vtfw_info(pdev, "TVM: lock/accept/unlock in %s/tvm/\n", pci_name(pdev));
	}
	if (!tvm_devsec_tsm) {
		tvm_devsec_tsm = tsm_register(&port->pdev->dev, &tvm_devsec_ops);
		if (IS_ERR(tvm_devsec_tsm)) {
			pci_warn(port->pdev, "devsec TSM not registered: %ld\n",
				 PTR_ERR(tvm_devsec_tsm));
			tvm_devsec_tsm = NULL;
		} else {
			pci_info(port->pdev, "%s devsec TSM registered as %s\n", ops->name,
				 dev_name(&tvm_devsec_tsm->dev));
		}
	}
	return 0;
}

void vtfw_tvm_exit(struct vtfw_port *port)
{
	struct vtfw_tvm_dev *t, *next;
	LIST_HEAD(gone);

	if (tvm_devsec_tsm && tvm_devsec_tsm->dev.parent == &port->pdev->dev) {
		tsm_unregister(tvm_devsec_tsm);
		tvm_devsec_tsm = NULL;
	}
	scoped_guard(mutex, &tvm_list_lock)
		list_for_each_entry_safe(t, next, &tvm_devs, list)
			if (t->port == port)
				list_move(&t->list, &gone);
	list_for_each_entry_safe(t, next, &gone, list) {
		sysfs_remove_group(&t->pdev->dev.kobj, &tvm_group);
		list_del(&t->list);
		tvm_dev_free(t);
	}
	tvm_ops = NULL;
}
