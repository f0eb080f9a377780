package ca

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// leafTemplate holds what varies between two SVIDs from one Authority.
type leafTemplate struct {
	serial    []byte // big-endian, unsigned (a leading zero is added if the top bit is set)
	notBefore time.Time
	notAfter  time.Time
	spki      []byte // the CSR's DER SubjectPublicKeyInfo, copied verbatim
	skid      [keyIDLen]byte
	uri       string
	dns       []string // DNS SANs allowed by a DNSProfile, before the URI as crypto/x509 orders them
	rsa       bool     // the subject key is RSA: add keyEncipherment
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

// newLeafTemplate builds the template of an X509-SVID for uri with key,
// valid from notBefore to notAfter; serial is the serial number's unsigned
// big-endian bytes.
func newLeafTemplate(key csrKey, uri string, serial []byte, notBefore, notAfter time.Time) *leafTemplate {
	return &leafTemplate{
		serial:    serial,
		notBefore: notBefore,
		notAfter:  notAfter,
		spki:      key.spki,
		skid:      keyIDOf(key.spki),
		uri:       uri,
		rsa:       key.rsa,
	}
}

// keyOf returns the key of a CSR parsed by crypto/x509.
func keyOf(csr *x509.CertificateRequest) csrKey {
	_, isRSA := csr.PublicKey.(*rsa.PublicKey)
	return csrKey{spki: csr.RawSubjectPublicKeyInfo, rsa: isRSA}
}

// marshalTBS encodes the TBSCertificate of an X509-SVID issued by a:
//
//   - an empty subject, with the SAN marked critical (RFC 5280 4.2.1.6):
//     the DNS names of a DNSProfile, if any, then the URI;
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
	return t.appendTBS(nil, a)
}

// appendTBS appends the DER TBSCertificate to dst. Every length is known
// before a byte is written, so that it allocates nothing but dst's growth.
func (t *leafTemplate) appendTBS(dst []byte, a *Authority) ([]byte, error) {
	var serialBuf [33]byte // up to 256 bits and a leading zero
	serial, err := derSerial(serialBuf[:0], t.serial)
	if err != nil {
		return nil, err
	}
	nbTag, nbLen := timeTagLen(t.notBefore)
	naTag, naLen := timeTagLen(t.notAfter)
	ku := kuExtEC
	if t.rsa {
		ku = kuExtRSA
	}
	skidExt := tlvLen(len(skidExtPrefix) + tlvLen(tlvLen(len(t.skid))))
	sanNames := tlvLen(len(t.uri))
	for _, d := range t.dns {
		sanNames += tlvLen(len(d))
	}
	sanExt := tlvLen(len(sanExtPrefix) + tlvLen(tlvLen(sanNames)))
	exts := len(ku) + len(ekuExt) + len(bcExt) + skidExt + len(a.akidExt) + sanExt
	validity := tlvLen(nbLen) + tlvLen(naLen)
	body := len(versionV3) + tlvLen(len(serial)) + len(a.sigAlgDER) + len(a.Cert.RawSubject) +
		tlvLen(validity) + len(emptySubject) + len(t.spki) + tlvLen(tlvLen(exts))

	dst = slices.Grow(dst, tlvLen(body))
	dst = appendHeader(dst, tagSequence, body)
	dst = append(dst, versionV3...)
	dst = appendHeader(dst, tagInteger, len(serial))
	dst = append(dst, serial...)
	dst = append(dst, a.sigAlgDER...)
	dst = append(dst, a.Cert.RawSubject...) // issuer
	dst = appendHeader(dst, tagSequence, validity)
	if dst, err = appendTime(dst, t.notBefore, nbTag, nbLen); err != nil {
		return nil, err
	}
	if dst, err = appendTime(dst, t.notAfter, naTag, naLen); err != nil {
		return nil, err
	}
	dst = append(dst, emptySubject...)
	dst = append(dst, t.spki...)
	dst = appendHeader(dst, tagExplicit3, tlvLen(exts))
	dst = appendHeader(dst, tagSequence, exts)
	dst = append(dst, ku...)
	dst = append(dst, ekuExt...)
	dst = append(dst, bcExt...)
	dst = appendHeader(dst, tagSequence, len(skidExtPrefix)+tlvLen(tlvLen(len(t.skid))))
	dst = append(dst, skidExtPrefix...)
	dst = appendHeader(dst, tagOctetString, tlvLen(len(t.skid)))
	dst = appendHeader(dst, tagOctetString, len(t.skid))
	dst = append(dst, t.skid[:]...)
	dst = append(dst, a.akidExt...)
	dst = appendHeader(dst, tagSequence, len(sanExtPrefix)+tlvLen(tlvLen(sanNames)))
	dst = append(dst, sanExtPrefix...)
	dst = appendHeader(dst, tagOctetString, tlvLen(sanNames))
	dst = appendHeader(dst, tagSequence, sanNames)
	for _, d := range t.dns {
		dst = appendHeader(dst, tagDNSName, len(d))
		dst = append(dst, d...)
	}
	dst = appendHeader(dst, tagURI, len(t.uri))
	dst = append(dst, t.uri...)
	return dst, nil
}

// derSerial appends to dst the content octets of the DER INTEGER whose
// unsigned big-endian value is b: no leading zeros but one before a set top
// bit, and one zero octet for zero. Serial numbers are at most 256 bits.
func derSerial(dst, b []byte) ([]byte, error) {
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	switch {
	case len(b) == 0:
		return append(dst, 0), nil
	case len(b) > 32:
		return nil, errors.New("serial number over 256 bits")
	case b[0]&0x80 != 0:
		dst = append(dst, 0) // keeps it positive
	}
	return append(dst, b...), nil
}

// sizeHint is an upper bound of the certificate's size, for one allocation.
func (t *leafTemplate) sizeHint(a *Authority) int {
	n := 512 + len(a.Cert.RawSubject) + len(t.spki) + len(t.uri) + len(a.akidExt) + a.sig.maxSigLen()
	for _, d := range t.dns {
		n += 4 + len(d)
	}
	return n
}

// DER tags of the TBSCertificate.
const (
	tagInteger      = 0x02
	tagBitString    = 0x03
	tagOctetString  = 0x04
	tagUTCTime      = 0x17
	tagGeneralTime  = 0x18
	tagSequence     = 0x30
	tagDNSName      = 0x82 // [2] IMPLICIT IA5String in GeneralName
	tagURI          = 0x86 // [6] IMPLICIT IA5String in GeneralName
	tagExplicit3    = 0xa3 // [3] EXPLICIT Extensions
	utcTimeFormat   = "060102150405Z0700"
	generalTimeForm = "20060102150405Z0700"
)

// The parts of a leaf's TBSCertificate that never vary, encoded once by
// the cryptobyte builder.
var (
	versionV3 = mustBuild(func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(v *cryptobyte.Builder) { v.AddASN1Int64(2) })
	})
	emptySubject  = mustBuild(func(b *cryptobyte.Builder) { b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) })
	kuExtEC       = mustBuild(func(b *cryptobyte.Builder) { addKeyUsage(b, []byte{0x07, 0x80}) })
	kuExtRSA      = mustBuild(func(b *cryptobyte.Builder) { addKeyUsage(b, []byte{0x05, 0xa0}) })
	ekuExt        = mustBuild(addEKU)
	bcExt         = mustBuild(addBasicConstraints)
	skidExtPrefix = mustBuild(func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidExtSubjectKeyID) })
	sanExtPrefix  = mustBuild(func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oidExtSubjectAltName)
		b.AddASN1Boolean(true)
	})
)

func mustBuild(f func(*cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	f(&b)
	return b.BytesOrPanic()
}

// tlvLen is the encoded size of a DER element with n content bytes.
func tlvLen(n int) int {
	switch {
	case n < 0x80:
		return 2 + n
	case n < 0x100:
		return 3 + n
	case n < 0x10000:
		return 4 + n
	default:
		return 5 + n
	}
}

// appendHeader appends the tag and length of a DER element of n content
// bytes (n < 2^24: every input is far smaller).
func appendHeader(b []byte, tag byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(b, tag, byte(n))
	case n < 0x100:
		return append(b, tag, 0x81, byte(n))
	case n < 0x10000:
		return append(b, tag, 0x82, byte(n>>8), byte(n))
	default:
		return append(b, tag, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
}

// timeTagLen returns the tag and content length of t's encoding: UTCTime
// for the years 1950 through 2049, GeneralizedTime otherwise (RFC 5280
// 4.1.2.5).
func timeTagLen(t time.Time) (byte, int) {
	if y := t.UTC().Year(); y >= 1950 && y < 2050 {
		return tagUTCTime, len("060102150405Z")
	}
	return tagGeneralTime, len("20060102150405Z")
}

func appendTime(b []byte, t time.Time, tag byte, n int) ([]byte, error) {
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("cannot encode time %v", t)
	}
	b = appendHeader(b, tag, n)
	start := len(b)
	if tag == tagUTCTime {
		b = t.AppendFormat(b, utcTimeFormat)
	} else {
		b = t.AppendFormat(b, generalTimeForm)
	}
	if len(b)-start != n {
		return nil, fmt.Errorf("cannot encode time %v", t)
	}
	return b, nil
}

func addKeyUsage(b *cryptobyte.Builder, ku []byte) {
	addExtension(b, oidExtKeyUsage, true, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.BIT_STRING, func(bs *cryptobyte.Builder) { bs.AddBytes(ku) })
	})
}

func addEKU(b *cryptobyte.Builder) {
	addExtension(b, oidExtExtKeyUsage, false, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
			s.AddASN1ObjectIdentifier(oidEKUServerAuth)
			s.AddASN1ObjectIdentifier(oidEKUClientAuth)
		})
	})
}

func addBasicConstraints(b *cryptobyte.Builder) {
	addExtension(b, oidExtBasicConstraints, true, func(v *cryptobyte.Builder) {
		v.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // CA FALSE
	})
}

// authorityKeyIDExt encodes the authorityKeyIdentifier extension naming akid.
func authorityKeyIDExt(akid []byte) []byte {
	return mustBuild(func(b *cryptobyte.Builder) {
		addExtension(b, oidExtAuthorityKeyID, false, func(v *cryptobyte.Builder) {
			v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
				s.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(k *cryptobyte.Builder) { k.AddBytes(akid) })
			})
		})
	})
}

// algorithmIdentifier encodes alg's AlgorithmIdentifier.
func algorithmIdentifier(alg sigAlg) []byte {
	return mustBuild(func(b *cryptobyte.Builder) { addAlgorithmIdentifier(b, alg) })
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
