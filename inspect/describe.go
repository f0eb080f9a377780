package inspect

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	oidKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
)

// describe turns cert into its report form, judged at now. The caller sets
// its Role.
func describe(cert *x509.Certificate, ref string, now time.Time) Certificate {
	c := Certificate{
		Ref:                ref,
		Subject:            cert.Subject.String(),
		Issuer:             cert.Issuer.String(),
		Serial:             serialHex(cert),
		PublicKey:          describeKey(cert.PublicKey),
		SignatureAlgorithm: cert.SignatureAlgorithm.String(),
		Validity:           validity(cert, now),
		IsCA:               cert.IsCA,
		SelfSigned:         selfSigned(cert),
		SubjectKeyID:       colonHex(cert.SubjectKeyId),
		AuthorityKeyID:     colonHex(cert.AuthorityKeyId),
		KeyUsage:           keyUsageNames(cert.KeyUsage),
		KeyUsageCritical:   extensionCritical(cert, oidKeyUsage),
		ExtKeyUsage:        extKeyUsageNames(cert),
	}
	sum := sha256.Sum256(cert.Raw)
	c.FingerprintSHA256 = colonHex(sum[:])
	if cert.BasicConstraintsValid && cert.IsCA && (cert.MaxPathLen > 0 || cert.MaxPathLenZero) {
		n := cert.MaxPathLen
		c.MaxPathLen = &n
	}
	for _, u := range cert.URIs {
		c.URIs = append(c.URIs, u.String())
		if c.SPIFFEID == "" {
			if id, err := spiffeIDFromURI(u); err == nil {
				c.SPIFFEID = id.String()
			}
		}
	}
	c.DNSNames = append(c.DNSNames, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		c.IPAddresses = append(c.IPAddresses, ip.String())
	}
	c.EmailAddresses = append(c.EmailAddresses, cert.EmailAddresses...)
	return c
}

// spiffeIDFromURI parses u as a SPIFFE ID; it never panics on a nil URI.
func spiffeIDFromURI(u *url.URL) (spiffeid.ID, error) {
	if u == nil {
		return spiffeid.ID{}, fmt.Errorf("inspect: empty URI")
	}
	return spiffeid.FromURI(u)
}

// roleOf names the role of the certificate at index i of a chain (any i
// above 0 for a bundle certificate), given whether it is a CA and
// self-signed: a self-signed CA is a root wherever it is, and the first
// certificate is a leaf only when it is not a CA.
func roleOf(i int, isCA, selfSigned bool) string {
	switch {
	case i == 0 && !isCA:
		return "leaf"
	case selfSigned:
		return "root"
	default:
		return "intermediate"
	}
}

// selfSigned reports whether cert issued itself (see issued). Unlike
// pemfile.IsSelfSigned it does not ask that cert be a CA: a self-signed
// leaf is worth reporting as such.
func selfSigned(cert *x509.Certificate) bool { return issued(cert, cert) }

// issued reports whether parent issued child: names chain and parent's key
// verifies child's signature.
func issued(parent, child *x509.Certificate) bool {
	if !bytes.Equal(child.RawIssuer, parent.RawSubject) {
		return false
	}
	return parent.CheckSignature(child.SignatureAlgorithm, child.RawTBSCertificate, child.Signature) == nil
}

func validity(cert *x509.Certificate, now time.Time) Validity {
	v := Validity{
		NotBefore:        cert.NotBefore.UTC(),
		NotAfter:         cert.NotAfter.UTC(),
		LifetimeSeconds:  int64(cert.NotAfter.Sub(cert.NotBefore) / time.Second),
		RemainingSeconds: int64(cert.NotAfter.Sub(now) / time.Second),
		State:            "valid",
	}
	switch {
	case now.Before(cert.NotBefore):
		v.State = "not_yet_valid"
		v.RemainingPercent = 100
	case now.After(cert.NotAfter):
		v.State = "expired"
		v.RemainingPercent = 0
	case v.LifetimeSeconds <= 0:
		v.RemainingPercent = 0
	default:
		f := float64(cert.NotAfter.Sub(now)) / float64(cert.NotAfter.Sub(cert.NotBefore))
		v.RemainingPercent = math.Round(math.Min(1, math.Max(0, f))*1000) / 10
	}
	return v
}

func describeKey(pub any) PublicKey {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N == nil {
			return PublicKey{Algorithm: "RSA"}
		}
		return PublicKey{Algorithm: "RSA", Bits: k.N.BitLen()}
	case *ecdsa.PublicKey:
		if k.Curve == nil {
			return PublicKey{Algorithm: "ECDSA"}
		}
		p := k.Curve.Params()
		return PublicKey{Algorithm: "ECDSA", Bits: p.BitSize, Curve: p.Name}
	case ed25519.PublicKey:
		return PublicKey{Algorithm: "Ed25519", Bits: 256}
	default:
		return PublicKey{Algorithm: "unknown"}
	}
}

// String renders k as "ECDSA P-256" or "RSA 2048".
func (k PublicKey) String() string {
	switch {
	case k.Curve != "":
		return k.Algorithm + " " + k.Curve
	case k.Algorithm == "Ed25519" || k.Bits == 0:
		return k.Algorithm
	default:
		return fmt.Sprintf("%s %d", k.Algorithm, k.Bits)
	}
}

func serialHex(cert *x509.Certificate) string {
	if cert.SerialNumber == nil {
		return ""
	}
	s := colonHex(cert.SerialNumber.Bytes())
	if s == "" {
		s = "00"
	}
	if cert.SerialNumber.Sign() < 0 {
		s = "-" + s
	}
	return s
}

// colonHex renders b as lowercase hex bytes separated by colons.
func colonHex(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var sb strings.Builder
	sb.Grow(len(b) * 3)
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		fmt.Fprintf(&sb, "%02x", x)
	}
	return sb.String()
}

func extensionCritical(cert *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range cert.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical
		}
	}
	return false
}

func hasExtension(cert *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range cert.Extensions {
		if e.Id.Equal(oid) {
			return true
		}
	}
	return false
}

var keyUsageBits = []struct {
	bit  x509.KeyUsage
	name string
}{
	{x509.KeyUsageDigitalSignature, "digitalSignature"},
	{x509.KeyUsageContentCommitment, "contentCommitment"},
	{x509.KeyUsageKeyEncipherment, "keyEncipherment"},
	{x509.KeyUsageDataEncipherment, "dataEncipherment"},
	{x509.KeyUsageKeyAgreement, "keyAgreement"},
	{x509.KeyUsageCertSign, "keyCertSign"},
	{x509.KeyUsageCRLSign, "cRLSign"},
	{x509.KeyUsageEncipherOnly, "encipherOnly"},
	{x509.KeyUsageDecipherOnly, "decipherOnly"},
}

func keyUsageNames(ku x509.KeyUsage) []string {
	var names []string
	for _, b := range keyUsageBits {
		if ku&b.bit != 0 {
			names = append(names, b.name)
		}
	}
	return names
}

var extKeyUsageName = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageAny:                            "any",
	x509.ExtKeyUsageServerAuth:                     "serverAuth",
	x509.ExtKeyUsageClientAuth:                     "clientAuth",
	x509.ExtKeyUsageCodeSigning:                    "codeSigning",
	x509.ExtKeyUsageEmailProtection:                "emailProtection",
	x509.ExtKeyUsageIPSECEndSystem:                 "ipsecEndSystem",
	x509.ExtKeyUsageIPSECTunnel:                    "ipsecTunnel",
	x509.ExtKeyUsageIPSECUser:                      "ipsecUser",
	x509.ExtKeyUsageTimeStamping:                   "timeStamping",
	x509.ExtKeyUsageOCSPSigning:                    "OCSPSigning",
	x509.ExtKeyUsageMicrosoftServerGatedCrypto:     "msSGC",
	x509.ExtKeyUsageNetscapeServerGatedCrypto:      "nsSGC",
	x509.ExtKeyUsageMicrosoftCommercialCodeSigning: "msCodeCom",
	x509.ExtKeyUsageMicrosoftKernelCodeSigning:     "msKernelCodeSigning",
}

func extKeyUsageNames(cert *x509.Certificate) []string {
	var names []string
	for _, u := range cert.ExtKeyUsage {
		if n, ok := extKeyUsageName[u]; ok {
			names = append(names, n)
		} else {
			names = append(names, fmt.Sprintf("eku(%d)", int(u)))
		}
	}
	for _, oid := range cert.UnknownExtKeyUsage {
		names = append(names, oid.String())
	}
	return names
}
