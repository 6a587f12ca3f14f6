// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: Arm CCA host side, a link TSM driving the RMM through RMI.
 *
 * connect (reference/firmware-abi.md C.8): RMI_PDEV_CREATE, then
 * RMI_PDEV_COMMUNICATE in a loop in which every SPDM or secured-SPDM object
 * the RMM wants sent is relayed to the device with pci_tsm_doe_transfer()
 * (the kernel's own DOE driver), until the PDEV needs the device's key;
 * RMI_PDEV_SET_PUBKEY with the public key of the leaf certificate the RMM
 * cached; COMMUNICATE until READY; then the root port's PDEV and the IDE
 * stream (RMI_PDEV_STREAM_CONNECT, paired COMMUNICATE, STREAM_COMPLETE).
 * disconnect undoes it in reverse: STREAM_DISCONNECT, PDEV_STOP,
 * COMMUNICATE until STOPPED, PDEV_DESTROY.
 *
 * The RMM never touches the device: like TF-RMM it returns each request in
 * the rmi_dev_comm_data exit and takes the response in the next enter.
 * Objects it marks REQ_CACHE/RSP_CACHE are kept here (the host-side cache
 * that RHI object reads are served from).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/gfp.h>
#include <linux/moduleparam.h>
#include <linux/pci.h>
#include <linux/pci-doe.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>
#include <linux/tsm.h>

#include "vtfw.h"
#include "vtfw-cca.h"

/* request and response buffers: 32 KiB each, physically contiguous */
#define CCA_BUF_ORDER		3
#define CCA_BUF_SIZE		(PAGE_SIZE << CCA_BUF_ORDER)
/* COMMUNICATE rounds without progress before giving up */
#define CCA_MAX_IDLE		4
#define CCA_MAX_EXCHANGES	512
#define CCA_MAX_BUSY		64	/* RMI_BUSY answers to one COMMUNICATE before -EBUSY */

static const char * const cca_pdev_states[] = {
	"NEW", "NEEDS_KEY", "HAS_KEY", "READY", "STOPPED", "ERROR",
};

/* granules a PDEV may ask for through RMI_INCOMPLETE + OP_MEM_DONATE */
#define CCA_MAX_AUX		16

struct cca_pdev {
	const char *name;
	struct pci_dev *pci;
	void *granule;		/* the PDEV granule handed to the RMM */
	bool delegated;
	bool created;
	void *aux[CCA_MAX_AUX];	/* donated to the RMM for this PDEV (SRO) */
	bool aux_delegated[CCA_MAX_AUX];
	unsigned int naux;
};

struct cca_obj {
	u8 *data;
	size_t len;
};

/* the DSM (function 0) context: 'struct pci_tsm_pf0' first, as the core casts it */
struct cca_dsm {
	struct pci_tsm_pf0 pf0;
	struct vtfw_port *port;
	struct cca_pdev ep;
	struct cca_pdev rp;
	void *params;		/* one page: pdev, key or stream parameters */
	void *comm;		/* rmi_dev_comm_data */
	void *req;
	void *rsp;
	struct cca_obj obj[RMI_DEV_NR_OBJS];
	u64 stream;
	bool stream_connected;
	unsigned int relayed;	/* DOE exchanges relayed for the RMM */
	u64 handles;		/* RHI operation handles given out */
};

/* the realm TDIs are bound to: one per port, as this VM plays host and TVM */
struct cca_realm {
	void *rd;
	void *rec;
	void *run;		/* rmi_rec_run: the host's side of a REC entry */
	u64 sc_handle;		/* the VMM's note: the handle of a state change in flight */
	u64 req_answer[2];	/* the last cca_guest_req trigger's answer (status, x1) */
	bool rd_delegated;
	bool rec_delegated;
	bool created;
};

/* a bound TDI: the RMM's VDEV */
struct cca_tdi {
	struct pci_tdi base;
	void *granule;
	bool delegated;
	bool created;
	u64 handle;		/* the RHI operation in flight, 0: none */
	bool state_op;		/* ... and whether it changes the TDI's state */
};

static const char * const cca_vdev_states[] = {
	"NEW", "UNLOCKED", "LOCKED", "STARTED", "ERROR",
};

static struct cca_dsm *to_cca_dsm(struct pci_dev *pdev)
{
	return container_of(pdev->tsm, struct cca_dsm, pf0.base_tsm);
}

static struct vtfw_port *tsm_to_port(struct tsm_dev *tsm_dev)
{
	return pci_get_drvdata(to_pci_dev(tsm_dev->dev.parent));
}

static const char *pdev_state_name(u64 state)
{
	return state < ARRAY_SIZE(cca_pdev_states) ? cca_pdev_states[state] : "?";
}

static void put64(void *page, unsigned int off, u64 val)
{
	*(u64 *)(page + off) = val;
}

static u64 get64(const void *page, unsigned int off)
{
	return *(const u64 *)(page + off);
}

/* RMI status -> errno, logged against @log */
static int cca_status(struct pci_dev *log, const char *what, u64 status)
{
	int rc;

	switch (status) {
	case RMI_SUCCESS:
		return 0;
	case RMI_BUSY:
		rc = -EBUSY;
		break;
	case RMI_ERROR_INPUT:
		rc = -EINVAL;
		break;
	case RMI_ERROR_NOT_SUPPORTED:
	case SMCCC_NOT_SUPPORTED:
		rc = -EOPNOTSUPP;
		break;
	default:
		rc = -EIO;
	}
	vtfw_err(log, "%s: RMI status %#llx\n", what, status);
	return rc;
}

static int cca_port_rmi(struct vtfw_port *port, const char *what, u64 fid,
			const u64 *args, unsigned int nargs, u64 *res)
{
	int rc = vtfw_call(port, VTFW_CLASS_HOST, fid, args, nargs, res);

	return rc ? rc : cca_status(port->pdev, what, res[0]);
}

/* One RMI call; 0 on RMI_SUCCESS, else a logged errno. */
static int cca_rmi(struct cca_dsm *dsm, const char *what, u64 fid,
		   const u64 *args, unsigned int nargs, u64 *res)
{
	int rc = vtfw_call(dsm->port, VTFW_CLASS_HOST, fid, args, nargs, res);

	return rc ? rc : cca_status(dsm->pf0.base_tsm.pdev, what, res[0]);
}

/*
 * A granule handed to the RMM (PDEV, VDEV, RD, REC).  An RMM without granule
 * tracking answers RMI_GRANULE_DELEGATE with NOT_SUPPORTED: then none is needed.
 */
static void *cca_granule_get(struct vtfw_port *port, bool *delegated)
{
	u64 res[VTFW_NR_RESULTS];
	u64 args[1];
	void *g;

	*delegated = false;
	g = (void *)get_zeroed_page(GFP_KERNEL);
	if (!g)
		return NULL;
	args[0] = vtfw_pa(g);
	if (vtfw_call(port, VTFW_CLASS_HOST, RMI_GRANULE_DELEGATE, args, 1, res) ||
	    (res[0] != RMI_SUCCESS && res[0] != SMCCC_NOT_SUPPORTED)) {
		vtfw_err(port->pdev, "RMI_GRANULE_DELEGATE: %#llx\n", res[0]);
		free_page((unsigned long)g);
		return NULL;
	}
	*delegated = res[0] == RMI_SUCCESS;
	return g;
}

static void cca_granule_put(struct vtfw_port *port, void *g, bool delegated)
{
	u64 res[VTFW_NR_RESULTS];
	u64 args[1];

	if (!g)
		return;
	args[0] = vtfw_pa(g);
	/* a granule the RMM still owns must never return to the allocator */
	if (delegated && cca_port_rmi(port, "RMI_GRANULE_UNDELEGATE", RMI_GRANULE_UNDELEGATE,
				      args, 1, res))
		return;
	free_page((unsigned long)g);
}

static int cca_pdev_state(struct cca_dsm *dsm, struct cca_pdev *p, u64 *state)
{
	u64 args[] = { vtfw_pa(p->granule) };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	rc = cca_rmi(dsm, "RMI_PDEV_GET_STATE", RMI_PDEV_GET_STATE, args, 1, res);
	if (!rc)
		*state = res[1];
	return rc;
}

static void cca_obj_append(struct cca_dsm *dsm, u64 id, const u8 *buf,
			   u64 off, u64 len)
{
	struct cca_obj *o;
	u8 *grown;

	if (id >= RMI_DEV_NR_OBJS || off > CCA_BUF_SIZE || len > CCA_BUF_SIZE - off) {
		vtfw_warn(dsm->pf0.base_tsm.pdev, "bad cache slice obj %llu %llu+%llu\n",
			  id, off, len);
		return;
	}
	o = &dsm->obj[id];
	grown = krealloc(o->data, o->len + len, GFP_KERNEL);
	if (!grown)
		return;
	memcpy(grown + o->len, buf + off, len);
	o->data = grown;
	o->len += len;
}

static void cca_objs_free(struct cca_dsm *dsm)
{
	for (int i = 0; i < RMI_DEV_NR_OBJS; i++) {
		kfree(dsm->obj[i].data);
		dsm->obj[i].data = NULL;
		dsm->obj[i].len = 0;
	}
}

/*
 * COMMUNICATE on @p until the RMM has nothing more to send and nothing more
 * to hand over: an exit with none of REQ_SEND, RSP_WAIT, MULTI.  Every
 * request it returns goes to the device through the kernel's DOE driver.
 * Returns the last exit flags in @flags (STREAM_WAIT is the caller's).
 */
static int cca_exchange(struct cca_dsm *dsm, u64 fid, const u64 *obj, unsigned int nobj,
			u64 *flags)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	u64 status = RMI_COMM_STATUS_NONE, resp_len = 0;
	u64 res[VTFW_NR_RESULTS];
	u64 args[4], req_len, id;
	unsigned long fresh = 0;
	int rc, n, busy;
	u8 type;

	if (nobj >= ARRAY_SIZE(args))
		return -EINVAL;
	memcpy(args, obj, nobj * sizeof(*obj));
	args[nobj] = vtfw_pa(dsm->comm);

	for (n = 0; n < CCA_MAX_EXCHANGES; n++) {
		memset(dsm->comm, 0, PAGE_SIZE);
		put64(dsm->comm, RMI_COMM_ENTER_STATUS, status);
		put64(dsm->comm, RMI_COMM_ENTER_REQ_ADDR, vtfw_pa(dsm->req));
		put64(dsm->comm, RMI_COMM_ENTER_RESP_ADDR, vtfw_pa(dsm->rsp));
		put64(dsm->comm, RMI_COMM_ENTER_RESP_LEN, resp_len);
		/*
		 * RMI_BUSY: the RMM could not take the call now and did nothing (the
		 * enter page stays as written): call again, a bounded number of times,
		 * before giving up with -EBUSY.
		 */
		for (busy = 0;; busy++) {
			rc = vtfw_call(dsm->port, VTFW_CLASS_HOST, fid, args, nobj + 1, res);
			if (rc || res[0] != RMI_BUSY || busy >= CCA_MAX_BUSY)
				break;
			usleep_range(50, 100);
		}
		if (busy && !rc && res[0] != RMI_BUSY)
			vtfw_info(pdev, "COMMUNICATE: RMI_BUSY %d times, called again\n", busy);
		rc = rc ? rc : cca_status(pdev, "COMMUNICATE", res[0]);
		if (rc)
			return rc;
		status = RMI_COMM_STATUS_NONE;
		resp_len = 0;

		*flags = get64(dsm->comm, RMI_COMM_EXIT_FLAGS);
		id = get64(dsm->comm, RMI_COMM_EXIT_CACHE_OBJ_ID) & 0xff;
		/* an operation's first piece of an object replaces the old copy */
		if (*flags & (RMI_COMM_EXIT_RSP_CACHE | RMI_COMM_EXIT_REQ_CACHE) &&
		    id < RMI_DEV_NR_OBJS && !test_and_set_bit(id, &fresh))
			*flags |= RMI_COMM_EXIT_RSP_RESET;
		if (*flags & RMI_COMM_EXIT_RSP_RESET && id < RMI_DEV_NR_OBJS) {
			kfree(dsm->obj[id].data);
			dsm->obj[id].data = NULL;
			dsm->obj[id].len = 0;
		}
		/* slices of the response buffer and of the request about to be sent */
		if (*flags & RMI_COMM_EXIT_RSP_CACHE)
			cca_obj_append(dsm, id, dsm->rsp,
				       get64(dsm->comm, RMI_COMM_EXIT_CACHE_RSP_OFFSET),
				       get64(dsm->comm, RMI_COMM_EXIT_CACHE_RSP_LEN));
		if (*flags & RMI_COMM_EXIT_REQ_CACHE)
			cca_obj_append(dsm, id, dsm->req,
				       get64(dsm->comm, RMI_COMM_EXIT_CACHE_REQ_OFFSET),
				       get64(dsm->comm, RMI_COMM_EXIT_CACHE_REQ_LEN));
		if (!(*flags & RMI_COMM_EXIT_REQ_SEND)) {
			/* MULTI: more to hand over; RSP_WAIT alone: ask again */
			if (*flags & (RMI_COMM_EXIT_MULTI | RMI_COMM_EXIT_RSP_WAIT))
				continue;
			return 0;
		}

		req_len = get64(dsm->comm, RMI_COMM_EXIT_REQ_LEN);
		if (!req_len || req_len > CCA_BUF_SIZE) {
			vtfw_err(pdev, "RMM asked to send %llu bytes\n", req_len);
			return -EPROTO;
		}
		type = (get64(dsm->comm, RMI_COMM_EXIT_PROTOCOL) & 0xff) ==
			RMI_COMM_PROTOCOL_SECURE_SPDM ?
			PCI_DOE_FEATURE_SSESSION : PCI_DOE_FEATURE_CMA;
		rc = pci_tsm_doe_transfer(pdev, type, dsm->req, req_len,
					  dsm->rsp, CCA_BUF_SIZE);
		dsm->relayed++;
		if (rc < 0) {
			/* tell the RMM; it decides what the PDEV becomes */
			vtfw_warn(pdev, "DOE type %u exchange failed: %d\n", type, rc);
			status = RMI_COMM_STATUS_ERROR;
		} else {
			status = RMI_COMM_STATUS_RESPONSE;
			resp_len = rc;
		}
	}
	vtfw_err(pdev, "RMM kept asking for exchanges\n");
	return -ELOOP;
}

static int cca_pdev_exchange(struct cca_dsm *dsm, struct cca_pdev *p, u64 *flags)
{
	u64 obj[] = { vtfw_pa(p->granule) };

	return cca_exchange(dsm, RMI_PDEV_COMMUNICATE, obj, ARRAY_SIZE(obj), flags);
}

/* COMMUNICATE on @p until it reaches @target. */
static int cca_pdev_drive(struct cca_dsm *dsm, struct cca_pdev *p, u64 target)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	unsigned int before = dsm->relayed, idle = 0;
	u64 from, state, flags;
	int rc;

	rc = cca_pdev_state(dsm, p, &from);
	if (rc)
		return rc;
	state = from;
	while (state != target) {
		rc = cca_pdev_exchange(dsm, p, &flags);
		if (rc)
			return rc;
		rc = cca_pdev_state(dsm, p, &state);
		if (rc)
			return rc;
		if (state == RMI_PDEV_ERROR) {
			vtfw_err(pdev, "%s PDEV went to ERROR\n", p->name);
			return -EIO;
		}
		if (state == from && ++idle > CCA_MAX_IDLE) {
			vtfw_err(pdev, "%s PDEV stuck in %s (wanted %s)\n", p->name,
				 pdev_state_name(state), pdev_state_name(target));
			return -ETIMEDOUT;
		}
	}
	vtfw_info(pdev, "%s PDEV %s -> %s, %u DOE exchanges\n", p->name,
		  pdev_state_name(from), pdev_state_name(state), dsm->relayed - before);
	return 0;
}

/* the granules a PDEV was given, back from the RMM (delegated and free) */
static void cca_aux_put(struct cca_dsm *dsm, struct cca_pdev *p)
{
	while (p->naux) {
		p->naux--;
		cca_granule_put(dsm->port, p->aux[p->naux], p->aux_delegated[p->naux]);
		p->aux[p->naux] = NULL;
	}
}

/*
 * A stateful RMI operation (RMM 2.0 SRO, firmware-abi.md C.2/C.8): the command
 * answered RMI_INCOMPLETE with a handle and a memory request.  Donate the
 * granules it asks for (delegated, one address descriptor each), then
 * RMI_OP_CONTINUE until it completes; anything else cancels it.
 */
static int cca_sro(struct cca_dsm *dsm, struct cca_pdev *p, u64 *res)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	u64 handle = res[1], kind = res[2], req = res[3];
	unsigned int n, i, round;
	u64 args[3];
	int rc;

	for (round = 0; round < 16; round++) {
		if (kind == RMI_OP_MEM_REQ_DONATE) {
			n = RMI_DONATE_COUNT(req);
			if (RMI_DONATE_SIZE(req) || req & RMI_DONATE_UNDELEGATED || !n ||
			    n > CCA_MAX_AUX - p->naux || n > PAGE_SIZE / 8) {
				vtfw_err(pdev, "%s PDEV: donate request %#llx not supported\n",
					 p->name, req);
				goto cancel;
			}
			memset(dsm->params, 0, PAGE_SIZE);
			for (i = 0; i < n; i++) {
				void *g = cca_granule_get(dsm->port, &p->aux_delegated[p->naux]);

				if (!g)
					goto cancel;
				p->aux[p->naux++] = g;
				put64(dsm->params, 8 * i, RMI_ADDR_DESC(vtfw_pa(g), 1));
			}
			args[0] = handle;
			args[1] = vtfw_pa(dsm->params);
			args[2] = n;
			rc = vtfw_call(dsm->port, VTFW_CLASS_HOST, RMI_OP_MEM_DONATE, args, 3, res);
			if (rc)
				return rc;
			if (res[0] == RMI_INCOMPLETE)
				vtfw_info(pdev, "%s PDEV: %llu granules donated to the RMM (SRO)\n",
					  p->name, res[1]);
		} else if (kind == RMI_OP_MEM_REQ_NONE) {
			args[0] = handle;
			args[1] = 0;
			rc = vtfw_call(dsm->port, VTFW_CLASS_HOST, RMI_OP_CONTINUE, args, 2, res);
			if (rc)
				return rc;
		} else {
			vtfw_err(pdev, "%s PDEV: SRO memory request %llu not supported\n",
				 p->name, kind);
			goto cancel;
		}
		if (res[0] != RMI_INCOMPLETE)
			return cca_status(pdev, "RMI_PDEV_CREATE (SRO)", res[0]);
		kind = res[2];
		req = res[3];
	}
cancel:
	args[0] = handle;
	vtfw_call(dsm->port, VTFW_CLASS_HOST, RMI_OP_CANCEL, args, 1, res);
	cca_aux_put(dsm, p);	/* delegated and free again after the cancel */
	return -EIO;
}

static int cca_pdev_create(struct cca_dsm *dsm, struct cca_pdev *p,
			   struct pci_dev *pci, u64 flags, u64 rid_base, u64 rid_top)
{
	u64 res[VTFW_NR_RESULTS];
	u64 args[2];
	int rc;

	p->pci = pci;
	p->granule = cca_granule_get(dsm->port, &p->delegated);
	if (!p->granule)
		return -ENOMEM;
	args[0] = vtfw_pa(p->granule);
	memset(dsm->params, 0, PAGE_SIZE);
	put64(dsm->params, RMI_PDEV_PARAMS_FLAGS, flags);
	put64(dsm->params, RMI_PDEV_PARAMS_HB_BASE, 0);
	put64(dsm->params, RMI_PDEV_PARAMS_PDEV_ID,
	      (u64)pci_domain_nr(pci->bus) << 16 | pci_dev_id(pci));
	put64(dsm->params, RMI_PDEV_PARAMS_ROUTING_ID, pci_dev_id(pci));
	put64(dsm->params, RMI_PDEV_PARAMS_ID_INDEX, 0);	/* certificate slot 0 */
	put64(dsm->params, RMI_PDEV_PARAMS_RID_BASE, rid_base);
	put64(dsm->params, RMI_PDEV_PARAMS_RID_TOP, rid_top);
	put64(dsm->params, RMI_PDEV_PARAMS_HASH_ALGO, RMI_HASH_SHA_256);
	args[1] = vtfw_pa(dsm->params);
	rc = vtfw_call(dsm->port, VTFW_CLASS_HOST, RMI_PDEV_CREATE, args, 2, res);
	if (!rc && res[0] == RMI_INCOMPLETE)
		rc = cca_sro(dsm, p, res);	/* an off-chip endpoint may need memory */
	else if (!rc)
		rc = cca_status(dsm->pf0.base_tsm.pdev, "RMI_PDEV_CREATE", res[0]);
	if (rc)
		return rc;
	p->created = true;
	return 0;
}

static void cca_pdev_destroy(struct cca_dsm *dsm, struct cca_pdev *p)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	u64 args[] = { vtfw_pa(p->granule) };
	u64 res[VTFW_NR_RESULTS];
	u64 state = RMI_PDEV_ERROR;

	if (p->created) {
		cca_pdev_state(dsm, p, &state);
		if (state != RMI_PDEV_STOPPED &&
		    !cca_rmi(dsm, "RMI_PDEV_STOP", RMI_PDEV_STOP, args, 1, res))
			cca_pdev_drive(dsm, p, RMI_PDEV_STOPPED);
		if (!cca_rmi(dsm, "RMI_PDEV_DESTROY", RMI_PDEV_DESTROY, args, 1, res)) {
			vtfw_info(pdev, "%s PDEV destroyed\n", p->name);
		} else {
			p->naux = 0;	/* still the RMM's: never back to the allocator */
			p->delegated = true;
		}
		p->created = false;
	}
	cca_aux_put(dsm, p);
	cca_granule_put(dsm->port, p->granule, p->delegated);
	p->granule = NULL;
	p->delegated = false;
}

static const u8 oid_ec_public_key[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01 };
static const u8 oid_p256[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const u8 oid_p384[] = { 0x2b, 0x81, 0x04, 0x00, 0x22 };
static const u8 oid_rsa[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01 };

static bool oid_is(const u8 *oid, size_t len, const u8 *want, size_t want_len)
{
	return oid && len == want_len && !memcmp(oid, want, len);
}

/* RMI_PDEV_SET_PUBKEY from the leaf of the certificate chain the RMM cached */
static int cca_set_pubkey(struct cca_dsm *dsm)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	struct cca_obj *chain = &dsm->obj[RMI_DEV_CERTIFICATE];
	const u8 *leaf, *n, *e;
	size_t leaf_len, n_len, e_len;
	struct vtfw_spki spki;
	u64 res[VTFW_NR_RESULTS];
	u64 args[2], algo;
	int rc;

	rc = vtfw_spdm_chain_leaf(chain->data, chain->len, &leaf, &leaf_len);
	if (!rc)
		rc = vtfw_cert_spki(leaf, leaf_len, &spki);
	if (rc) {
		vtfw_err(pdev, "no leaf certificate in the %zu cached bytes: %d\n",
			 chain->len, rc);
		return rc;
	}
	memset(dsm->params, 0, PAGE_SIZE);
	if (oid_is(spki.alg_oid, spki.alg_oid_len, oid_ec_public_key,
		   sizeof(oid_ec_public_key))) {
		if (oid_is(spki.param_oid, spki.param_oid_len, oid_p256, sizeof(oid_p256)))
			algo = RMI_SIG_ECDSA_P256;
		else if (oid_is(spki.param_oid, spki.param_oid_len, oid_p384, sizeof(oid_p384)))
			algo = RMI_SIG_ECDSA_P384;
		else
			return -EOPNOTSUPP;
		/* the uncompressed point 04 || X || Y, as the BIT STRING holds it */
		if (spki.key_len > RMI_KEY_MAX)
			return -EOVERFLOW;
		memcpy(dsm->params + RMI_KEY_PARAMS_KEY, spki.key, spki.key_len);
		put64(dsm->params, RMI_KEY_PARAMS_KEY_LEN, spki.key_len);
	} else if (oid_is(spki.alg_oid, spki.alg_oid_len, oid_rsa, sizeof(oid_rsa))) {
		rc = vtfw_rsa_key(spki.key, spki.key_len, &n, &n_len, &e, &e_len);
		if (rc)
			return rc;
		if (n_len != 384 || e_len > RMI_KEY_MAX)
			return -EOPNOTSUPP;	/* RMI knows RSASSA-3072 only */
		algo = RMI_SIG_RSASSA_3072;
		memcpy(dsm->params + RMI_KEY_PARAMS_KEY, n, n_len);
		put64(dsm->params, RMI_KEY_PARAMS_KEY_LEN, n_len);
		memcpy(dsm->params + RMI_KEY_PARAMS_METADATA, e, e_len);
		put64(dsm->params, RMI_KEY_PARAMS_METADATA_LEN, e_len);
	} else {
		return -EOPNOTSUPP;
	}
	put64(dsm->params, RMI_KEY_PARAMS_ALGO, algo);
	args[0] = vtfw_pa(dsm->ep.granule);
	args[1] = vtfw_pa(dsm->params);
	rc = cca_rmi(dsm, "RMI_PDEV_SET_PUBKEY", RMI_PDEV_SET_PUBKEY, args, 2, res);
	if (!rc)
		vtfw_info(pdev, "device public key set (algorithm %llu, %zu-byte leaf)\n",
			  algo, leaf_len);
	return rc;
}

/*
 * The selective IDE stream between the root port and the endpoint.  The
 * RMM keys both ends (IDE_KM to the endpoint, through the DOE relay); the
 * kernel's own IDE programming cannot run here because QEMU's root port has
 * no IDE capability, so pci_ide_stream_alloc() is not used: the endpoint's
 * stream registers are the module's (vtfw-ide.c).
 */
#define CCA_IDE_SID	0
static int cca_stream_connect(struct cca_dsm *dsm)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	struct pci_dev *rp = pcie_find_root_port(pdev);
	u64 res[VTFW_NR_RESULTS];
	u64 args[1], flags;
	bool ep_wait = true, rp_wait = true;
	int rc, round;

	if (!rp || !rp->subordinate)
		return -ENODEV;
	rc = cca_pdev_create(dsm, &dsm->rp, rp,
			     RMI_PDEV_CATEGORY_RP << RMI_PDEV_CATEGORY_SHIFT,
			     PCI_DEVID(rp->subordinate->busn_res.start, 0),
			     PCI_DEVID(rp->subordinate->busn_res.end + 1, 0));
	if (!rc)
		rc = cca_pdev_drive(dsm, &dsm->rp, RMI_PDEV_READY);
	if (rc)
		return rc;

	memset(dsm->params, 0, PAGE_SIZE);
	put64(dsm->params, RMI_STREAM_PARAMS_TYPE, RMI_STREAM_NCOH);
	put64(dsm->params, RMI_STREAM_PARAMS_PDEV_1, vtfw_pa(dsm->ep.granule));
	put64(dsm->params, RMI_STREAM_PARAMS_PDEV_2, vtfw_pa(dsm->rp.granule));
	put64(dsm->params, RMI_STREAM_PARAMS_IDE_SID, CCA_IDE_SID);
	args[0] = vtfw_pa(dsm->params);
	rc = cca_rmi(dsm, "RMI_PDEV_STREAM_CONNECT", RMI_PDEV_STREAM_CONNECT, args, 1, res);
	if (rc)
		return rc;
	dsm->stream = res[1];
	dsm->stream_connected = true;

	/*
	 * Both ends are driven until neither waits for the other (the
	 * endpoint's keys go by IDE_KM, the root port's are the firmware's);
	 * an end whose exit no longer says STREAM_WAIT is done.
	 */
	for (round = 0; (ep_wait || rp_wait) && round < CCA_MAX_EXCHANGES; round++) {
		if (ep_wait) {
			rc = cca_pdev_exchange(dsm, &dsm->ep, &flags);
			if (rc)
				return rc;
			ep_wait = flags & RMI_COMM_EXIT_STREAM_WAIT;
		}
		if (rp_wait) {
			rc = cca_pdev_exchange(dsm, &dsm->rp, &flags);
			if (rc)
				return rc;
			rp_wait = flags & RMI_COMM_EXIT_STREAM_WAIT;
		}
	}
	args[0] = dsm->stream;
	rc = cca_rmi(dsm, "RMI_PDEV_STREAM_COMPLETE", RMI_PDEV_STREAM_COMPLETE, args, 1, res);
	if (rc)
		return rc;
	vtfw_info(pdev, "IDE stream %#llx keyed by the firmware (IDE_KM over DOE to the endpoint; %s has no IDE capability)\n",
		  dsm->stream, pci_name(rp));
	return vtfw_ide_stream_enable(pdev, CCA_IDE_SID);
}

static void cca_stream_disconnect(struct cca_dsm *dsm)
{
	u64 res[VTFW_NR_RESULTS];
	u64 args[] = { dsm->stream };
	u64 flags;

	if (!dsm->stream_connected)
		return;
	vtfw_ide_stream_disable(dsm->pf0.base_tsm.pdev);
	/* the endpoint's keys are stopped by IDE_KM; the root port follows if asked */
	if (!cca_rmi(dsm, "RMI_PDEV_STREAM_DISCONNECT", RMI_PDEV_STREAM_DISCONNECT,
		     args, 1, res) &&
	    !cca_pdev_exchange(dsm, &dsm->ep, &flags) && flags & RMI_COMM_EXIT_STREAM_WAIT)
		cca_pdev_exchange(dsm, &dsm->rp, &flags);
	dsm->stream_connected = false;
}

static void cca_release(struct cca_dsm *dsm)
{
	cca_stream_disconnect(dsm);
	cca_pdev_destroy(dsm, &dsm->rp);
	cca_pdev_destroy(dsm, &dsm->ep);
	cca_objs_free(dsm);
	free_page((unsigned long)dsm->params);
	free_page((unsigned long)dsm->comm);
	if (dsm->req)
		free_pages((unsigned long)dsm->req, CCA_BUF_ORDER);
	if (dsm->rsp)
		free_pages((unsigned long)dsm->rsp, CCA_BUF_ORDER);
	dsm->params = NULL;
	dsm->comm = NULL;
	dsm->req = NULL;
	dsm->rsp = NULL;
}

/* -- bind / unbind: the RMM's VDEV (firmware-abi.md C.8 "Host bind") ----------------- */

static int cca_realm_get(struct cca_dsm *dsm, struct cca_realm **out)
{
	struct vtfw_port *port = dsm->port;
	struct cca_realm *realm = port->platform;
	u64 res[VTFW_NR_RESULTS];
	u64 args[3];
	int rc;

	*out = realm;
	if (realm->created)
		return 0;
	if (!realm->run)
		realm->run = (void *)get_zeroed_page(GFP_KERNEL);
	if (!realm->rd)
		realm->rd = cca_granule_get(port, &realm->rd_delegated);
	if (!realm->rec)
		realm->rec = cca_granule_get(port, &realm->rec_delegated);
	if (!realm->rd || !realm->rec || !realm->run)
		return -ENOMEM;
	/* realm and REC parameters: defaults (a zeroed page) */
	memset(dsm->params, 0, PAGE_SIZE);
	args[0] = vtfw_pa(realm->rd);
	args[1] = vtfw_pa(dsm->params);
	rc = cca_rmi(dsm, "RMI_REALM_CREATE", RMI_REALM_CREATE, args, 2, res);
	if (rc)
		return rc;
	args[1] = vtfw_pa(realm->rec);
	args[2] = vtfw_pa(dsm->params);
	rc = cca_rmi(dsm, "RMI_REC_CREATE", RMI_REC_CREATE, args, 3, res);
	if (rc) {
		args[0] = vtfw_pa(realm->rd);
		cca_rmi(dsm, "RMI_REALM_DESTROY", RMI_REALM_DESTROY, args, 1, res);
		return rc;
	}
	realm->created = true;
	return 0;
}

static void cca_realm_put(struct vtfw_port *port)
{
	struct cca_realm *realm = port->platform;
	u64 res[VTFW_NR_RESULTS];
	u64 args[1];

	if (realm->created) {
		args[0] = vtfw_pa(realm->rec);
		if (cca_port_rmi(port, "RMI_REC_DESTROY", RMI_REC_DESTROY, args, 1, res))
			return;		/* the RMM keeps both granules */
		args[0] = vtfw_pa(realm->rd);
		if (cca_port_rmi(port, "RMI_REALM_DESTROY", RMI_REALM_DESTROY, args, 1, res))
			return;
		realm->created = false;
	}
	cca_granule_put(port, realm->rec, realm->rec_delegated);
	cca_granule_put(port, realm->rd, realm->rd_delegated);
	free_page((unsigned long)realm->run);
	realm->rec = NULL;
	realm->rd = NULL;
	realm->run = NULL;
}

static const char *vdev_state_name(u64 state)
{
	return state < ARRAY_SIZE(cca_vdev_states) ? cca_vdev_states[state] : "?";
}

static int cca_vdev_state(struct cca_dsm *dsm, struct cca_tdi *tdi, u64 *state)
{
	u64 args[] = { vtfw_pa(tdi->granule) };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	rc = cca_rmi(dsm, "RMI_VDEV_GET_STATE", RMI_VDEV_GET_STATE, args, 1, res);
	if (!rc)
		*state = res[1];
	return rc;
}

/* RMI_VDEV_<op>(rd, pdev, vdev), then COMMUNICATE until the VDEV is in @target */
static int cca_vdev_op(struct cca_dsm *dsm, struct cca_tdi *tdi, const char *what,
		       u64 fid, u64 target)
{
	struct cca_realm *realm = dsm->port->platform;
	struct pci_dev *pdev = tdi->base.pdev;
	u64 obj[] = { vtfw_pa(realm->rd), vtfw_pa(dsm->ep.granule), vtfw_pa(tdi->granule) };
	unsigned int before = dsm->relayed;
	u64 res[VTFW_NR_RESULTS];
	u64 from, state, flags;
	int rc;

	rc = cca_vdev_state(dsm, tdi, &from);
	if (!rc && fid)
		rc = cca_rmi(dsm, what, fid, obj, ARRAY_SIZE(obj), res);
	if (!rc)
		rc = cca_exchange(dsm, RMI_VDEV_COMMUNICATE, obj, ARRAY_SIZE(obj), &flags);
	if (!rc)
		rc = cca_vdev_state(dsm, tdi, &state);
	if (rc)
		return rc;
	if (state != target) {
		vtfw_err(pdev, "%s: VDEV %s, expected %s\n", what, vdev_state_name(state),
			 vdev_state_name(target));
		return -EIO;
	}
	vtfw_info(pdev, "VDEV %s -> %s (%s), %u DOE exchanges\n", vdev_state_name(from),
		  vdev_state_name(state), what, dsm->relayed - before);
	return 0;
}

static void cca_vdev_free(struct cca_dsm *dsm, struct cca_tdi *tdi)
{
	struct cca_realm *realm = dsm->port->platform;
	u64 obj[] = { vtfw_pa(realm->rd), vtfw_pa(dsm->ep.granule), vtfw_pa(tdi->granule) };
	u64 res[VTFW_NR_RESULTS];
	u64 state;

	if (tdi->created) {
		if (!cca_vdev_state(dsm, tdi, &state) && state != RMI_VDEV_NEW &&
		    state != RMI_VDEV_UNLOCKED)
			cca_vdev_op(dsm, tdi, "RMI_VDEV_UNLOCK", RMI_VDEV_UNLOCK,
				    RMI_VDEV_UNLOCKED);
		if (cca_rmi(dsm, "RMI_VDEV_DESTROY", RMI_VDEV_DESTROY, obj, ARRAY_SIZE(obj), res))
			tdi->delegated = true;	/* still the RMM's: keep the granule */
		else
			vtfw_info(tdi->base.pdev, "VDEV destroyed\n");
		tdi->created = false;
	}
	cca_granule_put(dsm->port, tdi->granule, tdi->delegated);
	kfree(tdi);
}

/* the function's memory BARs, whole granules: the VDEV's address ranges */
static unsigned int cca_vdev_ranges(struct pci_dev *pdev, void *params)
{
	unsigned int n = 0;
	int bar;

	for (bar = 0; bar < PCI_STD_NUM_BARS && n < RMI_VDEV_MAX_RANGES; bar++) {
		struct resource *r = pci_resource_n(pdev, bar);

		if (!(r->flags & IORESOURCE_MEM) || !r->start)
			continue;
		put64(params, RMI_VDEV_PARAMS_RANGES + 16 * n,
		      round_down(r->start, PAGE_SIZE));
		put64(params, RMI_VDEV_PARAMS_RANGES + 16 * n + 8,
		      round_up(r->end + 1, PAGE_SIZE));
		n++;
	}
	return n;
}

/*
 * The newest host patches lock the TDI at bind time; with lock_at_bind=0 the
 * VDEV stays UNLOCKED until the TVM asks (RHI SET_TDI_STATE(LOCKED)), so the
 * TVM's own lock runs TDISP LOCK_INTERFACE.
 */
static bool lock_at_bind = true;
module_param(lock_at_bind, bool, 0644);
MODULE_PARM_DESC(lock_at_bind, "bind locks the TDI (default), else the TVM's lock does");

static struct pci_tdi *cca_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id)
{
	struct cca_dsm *dsm = to_cca_dsm(pdev->tsm->dsm_dev);
	struct cca_realm *realm;
	struct cca_tdi *tdi;
	u64 res[VTFW_NR_RESULTS];
	u64 args[4];
	int rc;

	tdi = kzalloc_obj(*tdi);
	if (!tdi)
		return ERR_PTR(-ENOMEM);
	rc = cca_realm_get(dsm, &realm);
	if (rc)
		goto err;
	tdi->granule = cca_granule_get(dsm->port, &tdi->delegated);
	if (!tdi->granule) {
		rc = -ENOMEM;
		goto err;
	}
	tdi->base.pdev = pdev;
	memset(dsm->params, 0, PAGE_SIZE);
	put64(dsm->params, RMI_VDEV_PARAMS_VDEV_ID, tdi_id);	/* the TVM's RID */
	put64(dsm->params, RMI_VDEV_PARAMS_TDI_ID, pci_dev_id(pdev));
	put64(dsm->params, RMI_VDEV_PARAMS_NUM_RANGES, cca_vdev_ranges(pdev, dsm->params));
	args[0] = vtfw_pa(realm->rd);
	args[1] = vtfw_pa(dsm->ep.granule);
	args[2] = vtfw_pa(tdi->granule);
	args[3] = vtfw_pa(dsm->params);
	rc = cca_rmi(dsm, "RMI_VDEV_CREATE", RMI_VDEV_CREATE, args, 4, res);
	if (rc)
		goto err;
	tdi->created = true;
	/* creation leaves UNLOCK pending; the newest hosts lock at bind time */
	rc = cca_vdev_op(dsm, tdi, "RMI_VDEV_CREATE", 0, RMI_VDEV_UNLOCKED);
	if (!rc && lock_at_bind)
		rc = cca_vdev_op(dsm, tdi, "RMI_VDEV_LOCK", RMI_VDEV_LOCK, RMI_VDEV_LOCKED);
	if (rc)
		goto err;
	pci_tsm_tdi_constructor(pdev, &tdi->base, kvm, tdi_id);
	return &tdi->base;
err:
	vtfw_err(pdev, "bind failed: %d\n", rc);
	cca_vdev_free(dsm, tdi);
	return ERR_PTR(rc);
}

static void cca_unbind(struct pci_tdi *base)
{
	struct cca_tdi *tdi = container_of(base, struct cca_tdi, base);

	cca_vdev_free(to_cca_dsm(base->pdev->tsm->dsm_dev), tdi);
}

/* -- RHI host calls: what a VMM does with the TVM's requests --------------------------- */

static const struct cca_rhi_layout cca_rhi_layouts[] = {
	{	/* DEN0148 RHI 1.0-bet1 as the cca-rmm-acs tests it */
		.name = "rhi-1.0-bet1",
		.get_measurements = 0xc5000052,
		.get_interface_report = 0xc5000053,
		.obj_id = { [RMI_DEV_VCA] = 0, [RMI_DEV_CERTIFICATE] = 1,
			    [RMI_DEV_MEASUREMENTS] = 2, [RMI_DEV_INTERFACE_REPORT] = 3 },
		.read_buf = 3, .read_len = 4, .read_off = 5,
		/* [MODEL] unpublished: read like rmi_vdev_measure_params */
		.meas_nonce = 0x100, .meas_flags = 0, .meas_raw = BIT(0),
	},
	{	/* the Linux RFC v4 guest (arch/arm64/include/asm/rhi.h) */
		.name = "linux-rfc-v4",
		.get_measurements = 0xc5000053,
		.get_interface_report = 0xc5000052,
		.obj_id = { [RMI_DEV_VCA] = 4, [RMI_DEV_CERTIFICATE] = 1,
			    [RMI_DEV_MEASUREMENTS] = 2, [RMI_DEV_INTERFACE_REPORT] = 3 },
		.read_buf = 5, .read_len = 4, .read_off = 3,
		/* rhi_vdev_measurement_params: flags (SIGNED b0, RAW b1) @0, nonce @0x200 */
		.meas_nonce = 0x200, .meas_flags = BIT(0), .meas_raw = BIT(1),
	},
};

static const struct cca_rhi_layout *cca_layout = &cca_rhi_layouts[0];

const struct cca_rhi_layout *vtfw_cca_rhi(void)
{
	return READ_ONCE(cca_layout);
}

static int rhi_layout_set(const char *val, const struct kernel_param *kp)
{
	for (int i = 0; i < ARRAY_SIZE(cca_rhi_layouts); i++) {
		if (sysfs_streq(val, cca_rhi_layouts[i].name)) {
			WRITE_ONCE(cca_layout, &cca_rhi_layouts[i]);
			return 0;
		}
	}
	return -EINVAL;
}

static int rhi_layout_get(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%s\n", vtfw_cca_rhi()->name);
}

static const struct kernel_param_ops rhi_layout_ops = {
	.set = rhi_layout_set,
	.get = rhi_layout_get,
};
module_param_cb(rhi_layout, &rhi_layout_ops, NULL, 0644);
MODULE_PARM_DESC(rhi_layout, "RHI numbering of realm and host side: rhi-1.0-bet1 (default) or linux-rfc-v4; change it only while no TDI is locked");

static u64 cca_rhi_start(struct cca_dsm *dsm, struct cca_tdi *tdi, const char *what,
			 u64 fid, u64 extra, bool state_op, u64 *out)
{
	struct cca_realm *realm = dsm->port->platform;
	u64 args[] = { vtfw_pa(realm->rd), vtfw_pa(dsm->ep.granule), vtfw_pa(tdi->granule),
		       extra };
	u64 res[VTFW_NR_RESULTS];
	int rc;

	if (tdi->handle)
		return RHI_DA_BUSY;
	rc = vtfw_call(dsm->port, VTFW_CLASS_HOST, fid, args, ARRAY_SIZE(args), res);
	if (!rc && res[0] == RMI_BUSY)
		return RHI_DA_BUSY;
	if (rc || res[0] != RMI_SUCCESS) {
		vtfw_warn(tdi->base.pdev, "%s for the TVM: %d / %#llx\n", what, rc, res[0]);
		return RHI_DA_DEVICE;
	}
	tdi->handle = ++dsm->handles;
	tdi->state_op = state_op;
	out[1] = tdi->handle;
	return RHI_DA_INCOMPLETE;
}

static u64 cca_rhi_continue(struct cca_dsm *dsm, struct cca_tdi *tdi, u64 handle)
{
	struct cca_realm *realm = dsm->port->platform;
	u64 obj[] = { vtfw_pa(realm->rd), vtfw_pa(dsm->ep.granule), vtfw_pa(tdi->granule) };
	u64 flags, state;

	if (!tdi->handle || handle != tdi->handle)
		return RHI_DA_DEVICE;
	tdi->handle = 0;
	if (cca_exchange(dsm, RMI_VDEV_COMMUNICATE, obj, ARRAY_SIZE(obj), &flags) ||
	    cca_vdev_state(dsm, tdi, &state) || state == RMI_VDEV_ERROR)
		return RHI_DA_DEVICE;
	return RHI_DA_SUCCESS;
}

static u64 cca_rhi_set_tdi_state(struct cca_dsm *dsm, struct cca_tdi *tdi, u64 target,
				 u64 *out)
{
	static const struct {
		u64 state, fid;
		const char *name;
	} map[] = {
		[RHI_TDI_CONFIG_UNLOCKED] = { RMI_VDEV_UNLOCKED, RMI_VDEV_UNLOCK, "VDEV_UNLOCK" },
		[RHI_TDI_CONFIG_LOCKED] = { RMI_VDEV_LOCKED, RMI_VDEV_LOCK, "VDEV_LOCK" },
		[RHI_TDI_RUN] = { RMI_VDEV_STARTED, RMI_VDEV_START, "VDEV_START" },
	};
	u64 state;

	if (target >= ARRAY_SIZE(map))
		return RHI_DA_INVALID_OBJECT;
	if (cca_vdev_state(dsm, tdi, &state))
		return RHI_DA_DEVICE;
	if (state == map[target].state)
		return RHI_DA_SUCCESS;	/* e.g. locked by the host at bind time */
	return cca_rhi_start(dsm, tdi, map[target].name, map[target].fid, 0, true, out);
}

/* the TVM's measurement parameters, in the layout's block: flags and nonce[32] */
static u64 cca_rhi_measure(struct cca_dsm *dsm, struct cca_tdi *tdi, u64 params, u64 *out)
{
	const struct cca_rhi_layout *lay = vtfw_cca_rhi();
	const u8 *in;

	if (!params || !pfn_valid(PHYS_PFN(params)) || offset_in_page(params))
		return RHI_DA_ACCESS_FAILED;
	in = phys_to_virt(params);
	memset(dsm->params, 0, PAGE_SIZE);
	put64(dsm->params, 0, get64(in, 0) & lay->meas_raw ? 1 : 0);	/* RMI: RAW b0 */
	memcpy(dsm->params + RMI_VDEV_MEASURE_NONCE, in + lay->meas_nonce, 32);
	return cca_rhi_start(dsm, tdi, "RMI_VDEV_GET_MEASUREMENTS", RMI_VDEV_GET_MEASUREMENTS,
			     vtfw_pa(dsm->params), false, out);
}

/* OBJECT_SIZE / OBJECT_READ: from the host's cache of what the RMM marked */
static u64 cca_rhi_object(struct cca_dsm *dsm, const u64 *in, u64 *out)
{
	const struct cca_rhi_layout *lay = vtfw_cca_rhi();
	u64 buf = in[lay->read_buf], max_len = in[lay->read_len], offset = in[lay->read_off];
	struct cca_obj *o = NULL;
	int i;

	for (i = 0; i < RMI_DEV_NR_OBJS; i++)
		if (lay->obj_id[i] == in[2])
			o = &dsm->obj[i];
	if (!o)	/* the ACS's EXTENSION_EVIDENCE (4) exists but is not offered */
		return lay->obj_id[RMI_DEV_VCA] == 0 && in[2] == 4 ?
			RHI_DA_OBJECT_UNSUPPORTED : RHI_DA_INVALID_OBJECT;
	if (!o->len)
		return RHI_DA_DATA_NOT_AVAILABLE;
	if (in[0] == RHI_DA_OBJECT_SIZE) {
		out[1] = o->len;
		return RHI_DA_SUCCESS;
	}
	if (!buf || !pfn_valid(PHYS_PFN(buf)))
		return RHI_DA_ACCESS_FAILED;
	if (offset >= o->len)
		return RHI_DA_INVALID_OFFSET;
	/* the TVM's buffer, one page at most: this VM is also the TVM */
	max_len = min3(max_len, o->len - offset, PAGE_SIZE - offset_in_page(buf));
	memcpy(phys_to_virt(buf), o->data + offset, max_len);
	out[1] = max_len;
	return RHI_DA_SUCCESS;
}

static u64 cca_rhi(struct cca_dsm *dsm, struct cca_tdi *tdi, const u64 *in, u64 *out)
{
	const struct cca_rhi_layout *lay = vtfw_cca_rhi();

	if (in[0] == lay->get_interface_report)
		return cca_rhi_start(dsm, tdi, "RMI_VDEV_GET_INTERFACE_REPORT",
				     RMI_VDEV_GET_INTERFACE_REPORT, 0, false, out);
	if (in[0] == lay->get_measurements)
		return cca_rhi_measure(dsm, tdi, in[2], out);
	switch (in[0]) {
	case RHI_DA_VERSION:
		return RHI_DA_VERSION_1_0;
	case RHI_DA_FEATURES:	/* sizes, reads, continue, measurements, report, state */
		return BIT(0) | BIT(1) | BIT(2) | BIT(3) | BIT(4) | BIT(5);
	case RHI_DA_OBJECT_SIZE:
	case RHI_DA_OBJECT_READ:
		return cca_rhi_object(dsm, in, out);
	case RHI_DA_VDEV_SET_TDI_STATE:
		return cca_rhi_set_tdi_state(dsm, tdi, in[2], out);
	case RHI_DA_VDEV_CONTINUE:
		return cca_rhi_continue(dsm, tdi, in[2]);
	default:
		return RHI_NOT_SUPPORTED;
	}
}

/*
 * The scope a TVM request needs (include/linux/pci-tsm.h, ARCHITECTURE.md):
 * a TDISP state change (SET_TDI_STATE, and the CONTINUE or ABORT that
 * completes one) is STATE_CHANGE; reads (object sizes and reads, report,
 * measurements, and the CONTINUE that completes a report or measurement
 * read) are INFO.
 */
static enum pci_tsm_req_scope cca_rhi_scope(struct cca_tdi *tdi, const u64 *in)
{
	if (in[0] == RHI_DA_VDEV_SET_TDI_STATE)
		return PCI_TSM_REQ_STATE_CHANGE;
	if ((in[0] == RHI_DA_VDEV_CONTINUE || in[0] == RHI_DA_VDEV_ABORT) && tdi->handle &&
	    tdi->state_op)
		return PCI_TSM_REQ_STATE_CHANGE;
	return PCI_TSM_REQ_INFO;
}

static const char *scope_name(enum pci_tsm_req_scope scope)
{
	return scope == PCI_TSM_REQ_INFO ? "INFO" :
		scope == PCI_TSM_REQ_STATE_CHANGE ? "STATE_CHANGE" : "DEBUG";
}

/*
 * guest_req carries one RHI call as the REC exit reported it: in = the 31
 * gprs (gprs[0] = function id), out = the 31 gprs of the answer, *tsm_code =
 * its status.  [MODEL] iommufd's TSM_REQ payload for CCA is not settled.
 * The kernel's core refuses scopes beyond STATE_CHANGE itself; this TSM
 * refuses a request whose scope is narrower than what it would do (the core
 * leaves that to the TSM driver: "responsible for maintaining the kernel
 * security model").
 */
static ssize_t cca_guest_req(struct pci_tdi *base, enum pci_tsm_req_scope scope,
			     sockptr_t req_in, size_t in_len, sockptr_t req_out,
			     size_t out_len, u64 *tsm_code)
{
	struct cca_tdi *tdi = container_of(base, struct cca_tdi, base);
	struct cca_dsm *dsm = to_cca_dsm(base->pdev->tsm->dsm_dev);
	u64 in[REC_NR_GPRS], out[REC_NR_GPRS] = {};
	enum pci_tsm_req_scope needed;

	if (in_len != sizeof(in) || out_len < sizeof(out))
		return -EINVAL;
	if (copy_from_sockptr(in, req_in, sizeof(in)))
		return -EFAULT;
	needed = cca_rhi_scope(tdi, in);
	if (scope < needed) {
		vtfw_warn(base->pdev, "RHI %#llx needs scope %s, asked with %s: refused\n",
			  in[0], scope_name(needed), scope_name(scope));
		return -EPERM;
	}
	if (in[0] != RHI_DA_VERSION && in[0] != RHI_DA_FEATURES && in[1] != base->tdi_id)
		out[0] = RHI_DA_INVALID_VDEV_ID;
	else
		out[0] = cca_rhi(dsm, tdi, in, out);
	if (copy_to_sockptr(req_out, out, sizeof(out)))
		return -EFAULT;
	*tsm_code = out[0];
	return sizeof(out);
}

/*
 * The host's half of a TVM host call (model.py "REC exits" of the RMM
 * emulator): REC_ENTER reports the HOST_CALL exit, the request goes through
 * the kernel's pci_tsm_guest_req() with the scope it needs, and the next
 * REC_ENTER hands the answer back to the realm.  The scope is the VMM's
 * call: SET_TDI_STATE is a state change, and so is the CONTINUE or ABORT of
 * the handle a SET_TDI_STATE answered with; everything else is INFO.
 */
int vtfw_cca_serve_host_call(struct vtfw_port *port, struct pci_dev *pdev)
{
	struct cca_realm *realm = port->platform;
	u64 gprs[REC_NR_GPRS], answer[REC_NR_GPRS] = {};
	u64 args[2], res[VTFW_NR_RESULTS], code = 0;
	enum pci_tsm_req_scope scope = PCI_TSM_REQ_INFO;
	ssize_t n;
	int rc;

	if (!realm->created)
		return -ENXIO;
	args[0] = vtfw_pa(realm->rec);
	args[1] = vtfw_pa(realm->run);
	rc = cca_port_rmi(port, "RMI_REC_ENTER", RMI_REC_ENTER, args, 2, res);
	if (rc)
		return rc;
	if (get64(realm->run, RMI_REC_RUN_EXIT_REASON) != RMI_EXIT_HOST_CALL)
		return -EPROTO;
	memcpy(gprs, realm->run + RMI_REC_RUN_EXIT_GPRS, sizeof(gprs));
	if (gprs[0] == RHI_DA_VDEV_SET_TDI_STATE ||
	    ((gprs[0] == RHI_DA_VDEV_CONTINUE || gprs[0] == RHI_DA_VDEV_ABORT) &&
	     realm->sc_handle && gprs[2] == realm->sc_handle))
		scope = PCI_TSM_REQ_STATE_CHANGE;
	n = pci_tsm_guest_req(pdev, scope, KERNEL_SOCKPTR(gprs), sizeof(gprs),
			      KERNEL_SOCKPTR(answer), sizeof(answer), &code);
	if (n < 0) {
		/* the host refused: the TVM sees a failed call */
		vtfw_warn(pdev, "host call %#llx refused: %zd\n", gprs[0], n);
		answer[0] = RHI_DA_DEVICE;
	}
	if (gprs[0] == RHI_DA_VDEV_SET_TDI_STATE && answer[0] == RHI_DA_INCOMPLETE)
		realm->sc_handle = answer[1];
	else if (scope == PCI_TSM_REQ_STATE_CHANGE && answer[0] != RHI_DA_INCOMPLETE)
		realm->sc_handle = 0;
	memset(realm->run, 0, RMI_REC_RUN_EXIT_REASON);
	memcpy(realm->run + RMI_REC_RUN_ENTER_GPRS, answer, sizeof(answer));
	return cca_port_rmi(port, "RMI_REC_ENTER", RMI_REC_ENTER, args, 2, res);
}

/*
 * The port's cca_guest_req attribute: one TVM request straight into the
 * kernel's pci_tsm_guest_req() with the scope the writer names, so the scope
 * rules (the core's and this TSM's) can be exercised on their own.  Write
 * "BDF SCOPE FID [X2 [X3 [X4 [X5]]]]" (SCOPE: 0 INFO, 1 STATE_CHANGE, 2/3
 * DEBUG_READ/WRITE; gprs[1] is the TDI id the host bound BDF with); the
 * write fails with the errno pci_tsm_guest_req() returned; read the answer's
 * status and x1 back (hex).
 */
static ssize_t cca_guest_req_store(struct device *dev, struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct vtfw_port *port = dev_get_drvdata(dev);
	struct cca_realm *realm = port->platform;
	u64 gprs[REC_NR_GPRS] = {}, answer[REC_NR_GPRS] = {}, code = 0;
	unsigned int domain, bus, slot, fn, scope;
	struct pci_dev *pdev;
	ssize_t n;
	int got;

	got = sscanf(buf, "%x:%x:%x.%x %u %llx %llx %llx %llx %llx", &domain, &bus, &slot, &fn,
		     &scope, &gprs[0], &gprs[2], &gprs[3], &gprs[4], &gprs[5]);
	if (got < 6 || bus > 0xff || slot > 0x1f || fn > 7)
		return -EINVAL;
	pdev = pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(slot, fn));
	if (!pdev)
		return -ENODEV;
	gprs[1] = pci_dev_id(pdev);
	n = pci_tsm_guest_req(pdev, scope, KERNEL_SOCKPTR(gprs), sizeof(gprs),
			      KERNEL_SOCKPTR(answer), sizeof(answer), &code);
	pci_dev_put(pdev);
	if (n < 0)
		return n;
	realm->req_answer[0] = answer[0];
	realm->req_answer[1] = answer[1];
	return count;
}

static ssize_t cca_guest_req_show(struct device *dev, struct device_attribute *attr,
				  char *buf)
{
	struct vtfw_port *port = dev_get_drvdata(dev);
	struct cca_realm *realm = port->platform;

	return sysfs_emit(buf, "%llx %llx\n", realm->req_answer[0], realm->req_answer[1]);
}
static DEVICE_ATTR_RW(cca_guest_req);

static int cca_connect(struct pci_dev *pdev)
{
	struct cca_dsm *dsm = to_cca_dsm(pdev);
	u16 slot0 = pci_dev_id(pdev) & ~0x7;
	int rc;

	dsm->relayed = 0;
	dsm->params = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->comm = (void *)get_zeroed_page(GFP_KERNEL);
	dsm->req = (void *)__get_free_pages(GFP_KERNEL | __GFP_ZERO, CCA_BUF_ORDER);
	dsm->rsp = (void *)__get_free_pages(GFP_KERNEL | __GFP_ZERO, CCA_BUF_ORDER);
	if (!dsm->params || !dsm->comm || !dsm->req || !dsm->rsp) {
		rc = -ENOMEM;
		goto err;
	}
	dsm->ep.name = "EP";
	dsm->rp.name = "RP";

	/* the PDEV covers every function of the slot (the DSM's TDIs) */
	rc = cca_pdev_create(dsm, &dsm->ep, pdev,
			     RMI_PDEV_FLAGS_SPDM |
			     RMI_PDEV_CATEGORY_EP_OFF_CHIP << RMI_PDEV_CATEGORY_SHIFT,
			     slot0, slot0 + 8);
	if (!rc)
		rc = cca_pdev_drive(dsm, &dsm->ep, RMI_PDEV_NEEDS_KEY);
	if (!rc)
		rc = cca_set_pubkey(dsm);
	if (!rc)
		rc = cca_pdev_drive(dsm, &dsm->ep, RMI_PDEV_READY);
	if (!rc)
		rc = cca_stream_connect(dsm);
	if (rc)
		goto err;
	vtfw_info(pdev, "connected through the RMM: %u DOE exchanges, cached VCA %zu, certificates %zu bytes\n",
		  dsm->relayed, dsm->obj[RMI_DEV_VCA].len, dsm->obj[RMI_DEV_CERTIFICATE].len);
	return 0;
err:
	vtfw_err(pdev, "connect failed: %d\n", rc);
	cca_release(dsm);
	return rc;
}

static void cca_disconnect(struct pci_dev *pdev)
{
	struct cca_dsm *dsm = to_cca_dsm(pdev);

	cca_release(dsm);
	vtfw_info(pdev, "disconnected\n");
}

static struct pci_tsm *cca_probe_dsm(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	struct cca_dsm *dsm = kzalloc_obj(*dsm);

	if (!dsm)
		return NULL;
	if (pci_tsm_pf0_constructor(pdev, &dsm->pf0, tsm_dev)) {
		kfree(dsm);
		return NULL;
	}
	dsm->port = tsm_to_port(tsm_dev);
	return &dsm->pf0.base_tsm;
}

static struct pci_tsm *cca_probe(struct tsm_dev *tsm_dev, struct pci_dev *pdev)
{
	if (is_pci_tsm_pf0(pdev))
		return cca_probe_dsm(tsm_dev, pdev);
	return vtfw_link_tdi_probe(tsm_dev, pdev);
}

static void cca_remove(struct pci_tsm *tsm)
{
	struct cca_dsm *dsm;

	if (vtfw_link_tdi_remove(tsm))
		return;
	dsm = container_of(tsm, struct cca_dsm, pf0.base_tsm);
	pci_tsm_pf0_destructor(&dsm->pf0);
	kfree(dsm);
}

static struct pci_tsm_ops cca_link_ops = {
	.probe = cca_probe,
	.remove = cca_remove,
	.connect = cca_connect,
	.disconnect = cca_disconnect,
	.bind = cca_bind,
	.unbind = cca_unbind,
	.guest_req = cca_guest_req,
};

int vtfw_cca_host_init(struct vtfw_port *port)
{
	u64 res[VTFW_NR_RESULTS];
	u64 args[] = { 0x10001 };	/* the RMI version this host asks for: 1.1 */
	struct tsm_dev *tsm;
	int rc;

	rc = vtfw_call(port, VTFW_CLASS_HOST, RMI_VERSION, args, 1, res);
	if (rc)
		return rc;
	pci_info(port->pdev, "RMM: RMI_VERSION status %#llx, lower %#llx, higher %#llx\n",
		 res[0], res[1], res[2]);

	port->platform = devm_kzalloc(&port->pdev->dev, sizeof(struct cca_realm), GFP_KERNEL);
	if (!port->platform)
		return -ENOMEM;
	tsm = tsm_register(&port->pdev->dev, &cca_link_ops);
	if (IS_ERR(tsm))
		return PTR_ERR(tsm);
	port->link_tsm = tsm;
	pci_info(port->pdev, "Arm CCA link TSM registered as %s (RHI layout %s)\n",
		 dev_name(&tsm->dev), vtfw_cca_rhi()->name);
	if (device_create_file(&port->pdev->dev, &dev_attr_cca_guest_req))
		pci_warn(port->pdev, "no cca_guest_req attribute\n");
	return 0;
}

void vtfw_cca_host_exit(struct vtfw_port *port)
{
	device_remove_file(&port->pdev->dev, &dev_attr_cca_guest_req);
	/* disconnects (and so unbinds) every device connected through it */
	if (port->link_tsm)
		tsm_unregister(port->link_tsm);
	port->link_tsm = NULL;
	cca_realm_put(port);
}
