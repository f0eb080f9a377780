// Package svidstoretest provides a small in-memory certificate authority
// for tests of svidstore's consumers. It issues real X.509-SVIDs signed by
// a real root, so consumers are exercised on genuine certificates; it is
// not the product CA and enforces none of its policy.
package svidstoretest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CA is a self-signed test root that issues SVIDs.
type CA struct {
	Root *x509.Certificate
	key  crypto.Signer
}

// NewCA returns a new test root named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Root: root, key: key}
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
	spiffeID := spiffeid.RequireFromString(id)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(spiffeID.String())
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(ttl),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Root, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := svidstore.NewSVID([]*x509.Certificate{leaf, ca.Root}, key)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
