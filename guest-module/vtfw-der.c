// SPDX-License-Identifier: GPL-2.0
/*
 * vtfw: just enough DER to find a device's public key.
 *
 * RMI_PDEV_SET_PUBKEY wants the raw public key of the leaf certificate of the
 * device's SPDM certificate chain.  7.3 keeps its X.509 parser internal
 * (keys/x509-parser.h is not shipped), so walk the DER to the
 * SubjectPublicKeyInfo here (RFC 5280 4.1; X.690 8.1 for the encoding).
 */

#include <linux/errno.h>
#include <linux/string.h>

#include "vtfw.h"

#define DER_INTEGER	0x02
#define DER_BIT_STRING	0x03
#define DER_NULL	0x05
#define DER_OID		0x06
#define DER_SEQUENCE	0x30
#define DER_CTX0	0xa0	/* [0] EXPLICIT: the certificate version */

struct der {
	const u8 *p;
	const u8 *end;
};

/* One definite-length TLV; advances @d past it. */
static int der_next(struct der *d, u8 *tag, struct der *content)
{
	size_t len = 0, left = d->end - d->p;
	unsigned int n, i;

	if (left < 2)
		return -EBADMSG;
	*tag = d->p[0];
	if (d->p[1] < 0x80) {
		len = d->p[1];
		n = 0;
	} else {
		n = d->p[1] & 0x7f;
		if (n == 0 || n > 4 || left < 2 + n)
			return -EBADMSG;	/* indefinite or absurd length */
		for (i = 0; i < n; i++)
			len = len << 8 | d->p[2 + i];
	}
	if (len > left - 2 - n)
		return -EBADMSG;
	content->p = d->p + 2 + n;
	content->end = content->p + len;
	d->p = content->end;
	return 0;
}

static int der_expect(struct der *d, u8 want, struct der *content)
{
	u8 tag;
	int rc = der_next(d, &tag, content);

	if (rc)
		return rc;
	return tag == want ? 0 : -EBADMSG;
}

/* Is [p, end) a sequence of one or more complete SEQUENCEs?  Returns the last. */
static bool der_all_sequences(const u8 *p, const u8 *end, struct der *last)
{
	struct der d = { p, end }, c;
	const u8 *start;
	int count = 0;

	while (d.p < d.end) {
		start = d.p;
		if (der_expect(&d, DER_SEQUENCE, &c))
			return false;
		last->p = start;
		last->end = d.p;
		count++;
	}
	return count > 0;
}

/*
 * The leaf of an SPDM certificate chain (DSP0274 "Certificate chain format":
 * Length u16, Reserved u16, RootHash[H], then DER certificates root first).
 * The hash size H is the negotiated algorithm's; try the SPDM sizes, and a
 * bare list of certificates last.
 */
int vtfw_spdm_chain_leaf(const u8 *chain, size_t len, const u8 **leaf, size_t *leaf_len)
{
	static const size_t offsets[] = { 4 + 32, 4 + 48, 4 + 64, 0 };
	struct der last;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(offsets); i++) {
		if (offsets[i] >= len)
			continue;
		if (offsets[i] && (chain[0] | chain[1] << 8) != len)
			continue;	/* the header's Length covers the whole chain */
		if (der_all_sequences(chain + offsets[i], chain + len, &last)) {
			*leaf = last.p;
			*leaf_len = last.end - last.p;
			return 0;
		}
	}
	return -EBADMSG;
}

int vtfw_cert_spki(const u8 *cert, size_t len, struct vtfw_spki *spki)
{
	struct der d = { cert, cert + len }, c, tbs, spk, alg, oid, bits;
	u8 tag;
	int i, rc;

	rc = der_expect(&d, DER_SEQUENCE, &c);		/* Certificate */
	if (!rc)
		rc = der_expect(&c, DER_SEQUENCE, &tbs);	/* tbsCertificate */
	if (rc)
		return rc;
	/* [0] version, serialNumber, signature, issuer, validity, subject */
	rc = der_next(&tbs, &tag, &c);
	if (!rc && tag == DER_CTX0)
		rc = der_expect(&tbs, DER_INTEGER, &c);
	else if (!rc && tag != DER_INTEGER)
		rc = -EBADMSG;
	for (i = 0; !rc && i < 4; i++)
		rc = der_expect(&tbs, DER_SEQUENCE, &c);
	if (!rc)
		rc = der_expect(&tbs, DER_SEQUENCE, &spk);	/* subjectPublicKeyInfo */
	if (!rc)
		rc = der_expect(&spk, DER_SEQUENCE, &alg);
	if (!rc)
		rc = der_expect(&alg, DER_OID, &oid);
	if (!rc)
		rc = der_expect(&spk, DER_BIT_STRING, &bits);
	if (rc)
		return rc;
	memset(spki, 0, sizeof(*spki));
	spki->alg_oid = oid.p;
	spki->alg_oid_len = oid.end - oid.p;
	if (alg.p < alg.end) {
		rc = der_next(&alg, &tag, &oid);
		if (rc)
			return rc;
		if (tag == DER_OID) {
			spki->param_oid = oid.p;
			spki->param_oid_len = oid.end - oid.p;
		} else if (tag != DER_NULL) {
			return -EOPNOTSUPP;	/* e.g. explicit curve parameters */
		}
	}
	if (bits.end - bits.p < 2 || bits.p[0] != 0)
		return -EBADMSG;		/* keys are whole bytes */
	spki->key = bits.p + 1;
	spki->key_len = bits.end - bits.p - 1;
	return 0;
}

static void der_strip_zeros(struct der *i)
{
	while (i->end - i->p > 1 && i->p[0] == 0)
		i->p++;
}

/* RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 A.1.1) */
int vtfw_rsa_key(const u8 *key, size_t len, const u8 **n, size_t *n_len,
		 const u8 **e, size_t *e_len)
{
	struct der d = { key, key + len }, seq, mod, exp;
	int rc;

	rc = der_expect(&d, DER_SEQUENCE, &seq);
	if (!rc)
		rc = der_expect(&seq, DER_INTEGER, &mod);
	if (!rc)
		rc = der_expect(&seq, DER_INTEGER, &exp);
	if (rc)
		return rc;
	der_strip_zeros(&mod);
	der_strip_zeros(&exp);
	*n = mod.p;
	*n_len = mod.end - mod.p;
	*e = exp.p;
	*e_len = exp.end - exp.p;
	return 0;
}
