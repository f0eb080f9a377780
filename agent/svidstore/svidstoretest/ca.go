// Package svidstoretest provides a small in-memory certificate authority
// for tests of svidstore's consumers, over the one test CA
// (internal/testpki). It issues real X.509-SVIDs signed by a real root, so
// consumers are exercised on genuine certificates; it is not the product
// CA and enforces none of its policy.
package svidstoretest

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// CA is a self-signed test root that issues SVIDs.
type CA struct {
	Root *x509.Certificate
	ca   *testpki.CA
}

// NewCA returns a new test root named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca := testpki.NewCA(t, name)
	return &CA{Root: ca.Cert, ca: ca}
}

// Bundle returns the CA's root as a trust bundle.
func (ca *CA) Bundle(t testing.TB) *svidstore.Bundle {
	t.Helper()
	b, err := svidstore.NewBundle([]*x509.Certificate{ca.Root})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Issue returns a new SVID for id, with a new P-256 key, valid for ttl.
func (ca *CA) Issue(t testing.TB, id string, ttl time.Duration) *svidstore.SVID {
	t.Helper()
	chain, key := ca.ca.IssueSVID(t, spiffeid.RequireFromString(id).String(), ttl)
	svid, err := svidstore.NewSVID(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}
