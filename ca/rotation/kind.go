package rotation

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// Kind is what the engine needs to know of one kind of authority A: an
// X.509 root (Roots), a JWT signing key (package jwtsvid). It is
// implemented by a type without fields, whose zero value EngineOf calls.
type Kind[A comparable] interface {
	// Noun names an authority of the kind in errors and logs ("root").
	Noun() string
	// Equal reports whether a and b are the same authority.
	Equal(a, b A) bool
	// Fingerprint identifies a in State.Retired.
	Fingerprint(a A) string
	// NotAfter is when a expires; zero if it does not.
	NotAfter(a A) time.Time
	// CheckNext refuses next as the successor of the active authority,
	// for a rotation to it that starts at now and ends at done.
	CheckNext(next A, now, done time.Time) error
	// Describe is a's entry in a Status, in role.
	Describe(a A, role RootState) RootStatus
}

// Roots is the Kind of X.509 roots, which Engine rotates.
type Roots struct{}

// Noun implements Kind.
func (Roots) Noun() string { return "root" }

// Equal implements Kind.
func (Roots) Equal(a, b *x509.Certificate) bool { return a.Equal(b) }

// Fingerprint implements Kind (see Fingerprint).
func (Roots) Fingerprint(c *x509.Certificate) string { return Fingerprint(c) }

// NotAfter implements Kind.
func (Roots) NotAfter(c *x509.Certificate) time.Time { return c.NotAfter }

// CheckNext implements Kind: it refuses a root that is not a self-signed
// CA certificate, not valid now, or expiring before done.
func (Roots) CheckNext(root *x509.Certificate, now, done time.Time) error {
	switch {
	case !root.IsCA || !pemfile.IsSelfSigned(root):
		return fmt.Errorf("rotation: the next root %q is not a self-signed CA certificate", root.Subject)
	case now.Before(root.NotBefore) || !now.Before(root.NotAfter):
		return fmt.Errorf("rotation: the next root %q is valid from %s to %s, not now", root.Subject, root.NotBefore.UTC().Format(time.RFC3339), root.NotAfter.UTC().Format(time.RFC3339))
	case root.NotAfter.Before(done):
		return fmt.Errorf("rotation: the next root %q expires at %s, before a rotation to it could finish", root.Subject, root.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Describe implements Kind.
func (Roots) Describe(c *x509.Certificate, role RootState) RootStatus {
	return RootStatus{Subject: c.Subject.String(), Serial: fmt.Sprintf("%x", c.SerialNumber), NotAfter: c.NotAfter, State: role, Cert: c}
}
