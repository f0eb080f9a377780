package pemfile

import (
	"bytes"
	"crypto"
	"crypto/x509"
)

// IsSelfSigned reports whether c names itself as issuer and its signature
// verifies with its own key: a root, as opposed to a certificate that only
// happens to repeat its subject.
func IsSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// SameKey reports whether a and b are the same public key. A key of a type
// that cannot compare itself (none of crypto/x509's) is never the same.
func SameKey(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
