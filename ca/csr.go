package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits on what a CSR may carry.
const (
	// MaxCSRSize is the largest PEM CSR accepted, in bytes.
	MaxCSRSize = 32 << 10
	// MinRSABits and MaxRSABits bound the RSA modulus of a workload key.
	// The upper bound keeps signature verification cheap for hostile input.
	MinRSABits = 2048
	MaxRSABits = 8192
)

// ParseCSR decodes a PEM certificate request and verifies its signature.
// The input must hold exactly one CERTIFICATE REQUEST block and nothing but
// whitespace around it.
func ParseCSR(pemBytes []byte) (*x509.CertificateRequest, error) {
	if len(pemBytes) == 0 {
		return nil, reject(ReasonMalformedCSR, "empty CSR")
	}
	if len(pemBytes) > MaxCSRSize {
		return nil, reject(ReasonMalformedCSR, "CSR is %d bytes, over the %d-byte limit", len(pemBytes), MaxCSRSize)
	}
	block, rest := pem.Decode(pemBytes)
	switch {
	case block == nil:
		return nil, reject(ReasonMalformedCSR, "CSR is not PEM: no PEM block found")
	case block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST":
		return nil, reject(ReasonMalformedCSR, "CSR PEM block has type %q, want \"CERTIFICATE REQUEST\"", block.Type)
	case len(bytes.TrimSpace(rest)) != 0:
		return nil, reject(ReasonMalformedCSR, "CSR has %d trailing bytes after its PEM block", len(bytes.TrimSpace(rest)))
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, reject(ReasonMalformedCSR, "could not parse CSR: %v", err)
	}
	// Check the key before the signature so that hostile keys (huge RSA
	// moduli) cost nothing to refuse.
	if err := checkKey(csr); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, reject(ReasonBadSignature, "CSR signature does not verify: %v", err)
	}
	return csr, nil
}

// checkKey accepts ECDSA P-256 and P-384 keys, and RSA keys of MinRSABits to
// MaxRSABits bits.
func checkKey(csr *x509.CertificateRequest) error {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return reject(ReasonUnsupportedKey, "ECDSA curve %s is not accepted; use P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
			return reject(ReasonUnsupportedKey, "RSA key of %d bits is not accepted; use %d to %d bits", bits, MinRSABits, MaxRSABits)
		}
	default:
		return reject(ReasonUnsupportedKey, "key type %T is not accepted; use ECDSA P-256/P-384 or RSA >= %d", csr.PublicKey, MinRSABits)
	}
	return nil
}

// ValidateCSR checks that the CSR asks for nothing but id. The CSR may
// name id as its single URI SAN or name nothing at all; a DNS, IP or email
// SAN, or any other URI, is refused. The CSR's subject and requested
// extensions are never copied into the certificate.
func ValidateCSR(csr *x509.CertificateRequest, id spiffeid.ID) error {
	return validateCSR(csr, id, nil)
}

// validateCSR is ValidateCSR, with the DNS SANs dns allows id: a CSR may
// also ask for some or all of them, and for nothing else.
func validateCSR(csr *x509.CertificateRequest, id spiffeid.ID, dns *DNSProfile) error {
	switch {
	case len(csr.IPAddresses) > 0:
		return reject(ReasonForbiddenSAN, "CSR asks for IP SAN %s; only the caller's SPIFFE ID %s may be requested", csr.IPAddresses[0], id)
	case len(csr.EmailAddresses) > 0:
		return reject(ReasonForbiddenSAN, "CSR asks for email SAN %q; only the caller's SPIFFE ID %s may be requested", csr.EmailAddresses[0], id)
	case len(csr.URIs) > 1:
		return reject(ReasonForbiddenSAN, "CSR asks for %d URI SANs; at most one, the caller's SPIFFE ID %s, may be requested", len(csr.URIs), id)
	case len(csr.URIs) == 1 && csr.URIs[0].String() != id.String():
		return reject(ReasonIdentityMismatch, "CSR asks for %q but the caller is %s", csr.URIs[0].String(), id)
	case len(csr.DNSNames) > 0:
		return dns.checkDNSNames(csr.DNSNames, id)
	}
	return nil
}
