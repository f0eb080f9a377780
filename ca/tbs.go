package ca

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// leafTemplate holds what varies between two SVIDs from one Authority.
type leafTemplate struct {
	serial    *big.Int
	notBefore time.Time
	notAfter  time.Time
	spki      []byte // the CSR's DER SubjectPublicKeyInfo, copied verbatim
	skid      []byte
	uri       string
	rsa       bool // the subject key is RSA: add keyEncipherment
}

var (
	oidExtKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtSubjectKeyID     = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidExtAuthorityKeyID   = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidEKUServerAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidEKUClientAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// newLeafTemplate builds the template of an X509-SVID for uri with the key
// of csr, valid from notBefore to notAfter.
func newLeafTemplate(csr *x509.CertificateRequest, uri string, serial *big.Int, notBefore, notAfter time.Time) *leafTemplate {
	_, isRSA := csr.PublicKey.(*rsa.PublicKey)
	return &leafTemplate{
		serial:    serial,
		notBefore: notBefore,
		notAfter:  notAfter,
		spki:      csr.RawSubjectPublicKeyInfo,
		skid:      keyID(csr.RawSubjectPublicKeyInfo),
		uri:       uri,
		rsa:       isRSA,
	}
}

// marshalTBS encodes the TBSCertificate of an X509-SVID issued by a:
//
//   - an empty subject, with the URI SAN marked critical (RFC 5280 4.2.1.6);
//   - keyUsage digitalSignature (and keyEncipherment for RSA), critical;
//   - extKeyUsage serverAuth and clientAuth;
//   - basicConstraints CA:FALSE, critical;
//   - subject and authority key identifiers.
//
// The encoding is the one crypto/x509.CreateCertificate produces for the
// same template (a test holds the two to byte equality); it is done here so
// that signing does not pay for CreateCertificate's verification of its own
// signature.
func (t *leafTemplate) marshalTBS(a *Authority) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(tbs *cryptobyte.Builder) {
		tbs.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(v *cryptobyte.Builder) {
			v.AddASN1Int64(2) // v3
		})
		tbs.AddASN1BigInt(t.serial)
		addAlgorithmIdentifier(tbs, a.sig)
		tbs.AddBytes(a.Cert.RawSubject) // issuer
		tbs.AddASN1(cbasn1.SEQUENCE, func(v *cryptobyte.Builder) {
			addTime(v, t.notBefore)
			addTime(v, t.notAfter)
		})
		tbs.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // empty subject
		tbs.AddBytes(t.spki)
		tbs.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(e *cryptobyte.Builder) {
			e.AddASN1(cbasn1.SEQUENCE, func(exts *cryptobyte.Builder) {
				t.addExtensions(exts, a.akid)
			})
		})
	})
	return b.Bytes()
}

func (t *leafTemplate) addExtensions(exts *cryptobyte.Builder, akid []byte) {
	// keyUsage: digitalSignature (bit 0), plus keyEncipherment (bit 2) for
	// RSA. A DER BIT STRING drops trailing zero bits.
	ku := []byte{0x07, 0x80}
	if t.rsa {
		ku = []byte{0x05, 0xa0}
	}
	addExtension(exts, oidExtKeyUsage, true, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.BIT_STRING, func(bs *cryptobyte.Builder) { bs.AddBytes(ku) })
	})
	addExtension(exts, oidExtExtKeyUsage, false, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
			s.AddASN1ObjectIdentifier(oidEKUServerAuth)
			s.AddASN1ObjectIdentifier(oidEKUClientAuth)
		})
	})
	addExtension(exts, oidExtBasicConstraints, true, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // CA FALSE
	})
	addExtension(exts, oidExtSubjectKeyID, false, func(v *cryptobyte.Builder) {
		v.AddASN1OctetString(t.skid)
	})
	addExtension(exts, oidExtAuthorityKeyID, false, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
			s.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(k *cryptobyte.Builder) { k.AddBytes(akid) })
		})
	})
	addExtension(exts, oidExtSubjectAltName, true, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
			s.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(u *cryptobyte.Builder) { u.AddBytes([]byte(t.uri)) })
		})
	})
}

func addExtension(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) {
	b.AddASN1(cbasn1.SEQUENCE, func(e *cryptobyte.Builder) {
		e.AddASN1ObjectIdentifier(oid)
		if critical {
			e.AddASN1Boolean(true)
		}
		e.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

func addAlgorithmIdentifier(b *cryptobyte.Builder, alg sigAlg) {
	b.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
		s.AddASN1ObjectIdentifier(alg.oid)
		if alg.null {
			s.AddASN1NULL()
		}
	})
}

// addTime encodes t as UTCTime for the years 1950 through 2049 and as
// GeneralizedTime otherwise (RFC 5280 4.1.2.5).
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC()
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
		return
	}
	b.AddASN1GeneralizedTime(t)
}

// marshalCertificate wraps a signed TBSCertificate into a Certificate.
func marshalCertificate(tbs []byte, alg sigAlg, signature []byte) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(c *cryptobyte.Builder) {
		c.AddBytes(tbs)
		addAlgorithmIdentifier(c, alg)
		c.AddASN1BitString(signature)
	})
	return b.Bytes()
}

// subjectPublicKeyBits returns the subjectPublicKey BIT STRING contents of a
// DER SubjectPublicKeyInfo.
func subjectPublicKeyBits(spki []byte) ([]byte, error) {
	in := cryptobyte.String(spki)
	var seq, alg cryptobyte.String
	var bits asn1.BitString
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.ReadASN1(&alg, cbasn1.SEQUENCE) || !seq.ReadASN1BitString(&bits) {
		return nil, errors.New("ca: malformed SubjectPublicKeyInfo")
	}
	return bits.Bytes, nil
}
