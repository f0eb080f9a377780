// Package testpki builds small X.509 PKIs for tests: a root, an
// intermediate and a leaf X509-SVID with fresh P-256 keys, and the PEM and
// file helpers that go with them.
//
// It is for tests only. Every function takes a testing.TB and fails the test
// on error; none of them enforces the CA's policy.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// DefaultID is the SPIFFE ID of the leaf when New is given no WithID.
const DefaultID = "spiffe://example.test/ns/default/sa/web"

// DefaultLeafLifetime is the leaf's lifetime when New is given no
// WithLeafLifetime: valid from an hour ago, it expires in an hour.
const DefaultLeafLifetime = 2 * time.Hour

// PKI is a root, an intermediate and a leaf X509-SVID, with their keys.
//
// The root (serial 1, CN "test root") and the intermediate (serial 2, CN
// "test intermediate", signed by the root) are CAs allowed to sign
// certificates and CRLs, valid from an hour ago for a year, and carry the
// leaf's trust domain as a URI SAN. The leaf (serial 3, no subject, signed
// by the intermediate) is for digital signatures, server and client auth,
// with the SPIFFE ID, DNS name localhost and IP 127.0.0.1 as SANs, valid
// from an hour ago for the leaf lifetime.
type PKI struct {
	Root, Intermediate, Leaf          *x509.Certificate
	RootKey, IntermediateKey, LeafKey *ecdsa.PrivateKey
}

// Option configures New.
type Option func(*config)

type config struct {
	id       string
	lifetime time.Duration
}

// WithID sets the SPIFFE ID of the leaf; the zero default is DefaultID.
func WithID(id string) Option {
	return func(c *config) { c.id = id }
}

// WithLeafLifetime sets the leaf's lifetime, counted from an hour ago; the
// default is DefaultLeafLifetime.
func WithLeafLifetime(d time.Duration) Option {
	return func(c *config) { c.lifetime = d }
}

// New returns a new PKI with fresh keys. It fails the test if the ID is not
// a URI.
func New(t testing.TB, opts ...Option) *PKI {
	t.Helper()
	cfg := config{id: DefaultID, lifetime: DefaultLeafLifetime}
	for _, o := range opts {
		o(&cfg)
	}
	id, err := url.Parse(cfg.id)
	if err != nil {
		t.Fatalf("testpki: leaf ID: %v", err)
	}
	td, err := url.Parse(strings.SplitN(cfg.id, "/ns/", 2)[0])
	if err != nil {
		t.Fatalf("testpki: trust domain of leaf ID: %v", err)
	}
	p := &PKI{RootKey: Key(t), IntermediateKey: Key(t), LeafKey: Key(t)}
	now := time.Now()
	ca := func(serial int64, cn string) *x509.Certificate {
		tmpl := caTemplate(big.NewInt(serial), cn, now, 365*24*time.Hour)
		tmpl.URIs = []*url.URL{td}
		return tmpl
	}
	p.Root = Create(t, ca(1, "test root"), nil, p.RootKey.Public(), p.RootKey)
	p.Intermediate = Create(t, ca(2, "test intermediate"), p.Root, p.IntermediateKey.Public(), p.RootKey)
	p.Leaf = Create(t, &x509.Certificate{
		SerialNumber: big.NewInt(3), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(-time.Hour + cfg.lifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id}, DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}, p.Intermediate, p.LeafKey.Public(), p.IntermediateKey)
	return p
}

// ChainPEM returns the leaf and the intermediate, in that order, as PEM.
func (p *PKI) ChainPEM() []byte { return CertPEM(p.Leaf, p.Intermediate) }

// TLSCertificate returns the leaf, its chain and its key as a
// tls.Certificate.
func (p *PKI) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{p.Leaf.Raw, p.Intermediate.Raw}, PrivateKey: p.LeafKey, Leaf: p.Leaf}
}

// Key returns a new P-256 key.
func Key(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return k
}

// Create signs tmpl with signer as parent and returns the parsed
// certificate for pub. A nil parent makes it self-signed.
func Create(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatalf("testpki: creating certificate %v: %v", tmpl.Subject, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testpki: parsing certificate %v: %v", tmpl.Subject, err)
	}
	return c
}

// CertPEM returns certs as concatenated CERTIFICATE PEM blocks.
func CertPEM(certs ...*x509.Certificate) []byte {
	return pemfile.EncodeCertificates(certs)
}

// KeyPEM returns key as a PKCS #8 PRIVATE KEY PEM block.
func KeyPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	b, err := pemfile.EncodePrivateKey(key)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return b
}

// WriteFile writes data to the file name in dir with mode 0600 and returns
// its path.
func WriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return path
}
