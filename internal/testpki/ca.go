package testpki

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// CA is a test certificate authority in the manner of go-spiffe's test
// CA: a self-signed root, or an intermediate under another CA, that
// issues intermediates and X509-SVIDs with fresh keys (P-256 unless
// WithKeyType says otherwise) and random serials. It checks nothing the
// product CA checks.
type CA struct {
	// Cert is the CA's certificate, Key its key.
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Chain is Cert and the certificates above it up to the root,
	// nearest first.
	Chain []*x509.Certificate
}

// CAOption configures NewCA and ChildCA.
type CAOption func(*caConfig)

type caConfig struct {
	keyType KeyType
}

// WithKeyType gives the CA a key of type kt, which must be an ECDSA one
// (P256, the default, or P384), instead of P-256.
func WithKeyType(kt KeyType) CAOption {
	return func(c *caConfig) { c.keyType = kt }
}

// caKey returns a new key for a CA configured by opts.
func caKey(t testing.TB, opts []CAOption) *ecdsa.PrivateKey {
	t.Helper()
	cfg := caConfig{keyType: P256}
	for _, o := range opts {
		o(&cfg)
	}
	k, err := ecdsa.GenerateKey(curve(t, cfg.keyType), rand.Reader)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return k
}

// NewCA returns a self-signed root with common name name, valid from an
// hour ago until a day from now.
func NewCA(t testing.TB, name string, opts ...CAOption) *CA {
	t.Helper()
	key := caKey(t, opts)
	cert := Create(t, caTemplate(Serial(t), name, time.Now(), 24*time.Hour), nil, key.Public(), key)
	return &CA{Cert: cert, Key: key, Chain: []*x509.Certificate{cert}}
}

// ChildCA returns an intermediate with common name name, signed by ca,
// valid until a day from now.
func (ca *CA) ChildCA(t testing.TB, name string, opts ...CAOption) *CA {
	t.Helper()
	key := caKey(t, opts)
	cert := Create(t, caTemplate(Serial(t), name, time.Now(), 24*time.Hour), ca.Cert, key.Public(), ca.Key)
	return &CA{Cert: cert, Key: key, Chain: append([]*x509.Certificate{cert}, ca.Chain...)}
}

// IssueSVID returns an X509-SVID for the SPIFFE ID id, valid from a minute
// ago for ttl, for server and client auth, and its new key. The chain is
// the leaf followed by ca's Chain.
func (ca *CA) IssueSVID(t testing.TB, id string, ttl time.Duration) ([]*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatalf("testpki: SPIFFE ID %q: %v", id, err)
	}
	key := Key(t)
	leaf := Create(t, &x509.Certificate{
		SerialNumber: Serial(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(ttl),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ca.Cert, key.Public(), ca.Key)
	return append([]*x509.Certificate{leaf}, ca.Chain...), key
}

// Serial returns a random positive 127-bit serial number.
func Serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return n.Add(n, big.NewInt(1))
}

// caTemplate is the template of every test CA certificate: allowed to
// sign certificates and CRLs, valid from an hour before now for life.
func caTemplate(serial *big.Int, name string, now time.Time, life time.Duration) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(life),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}
