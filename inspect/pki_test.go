package inspect_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"testing"
	"time"
)

// The fixtures are deterministic: keys derive from fixed seeds, every CA
// signs with Ed25519 (whose signatures are deterministic), and times are
// fixed, so the golden files never change between runs.

// epoch is the NotBefore of most fixtures; tests judge them at epoch plus
// some share of their lifetime.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// edKey returns the Ed25519 key derived from seed.
func edKey(seed string) ed25519.PrivateKey {
	s := sha256.Sum256([]byte("ed25519:" + seed))
	return ed25519.NewKeyFromSeed(s[:])
}

// ecKey returns the P-256 key derived from seed.
func ecKey(t testing.TB, seed string) *ecdsa.PrivateKey {
	t.Helper()
	for i := byte(0); ; i++ {
		d := sha256.Sum256(append([]byte("p256:"+seed), i))
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
		if err == nil {
			return k
		}
	}
}

// rsaKey returns the fixed RSA 2048 key in testdata.
func rsaKey(t testing.TB) crypto.Signer {
	t.Helper()
	data, err := os.ReadFile("testdata/rsa2048.key.pem")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer)
}

// ca is a signing certificate with its key.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func sign(t testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey, parent *ca) *x509.Certificate {
	t.Helper()
	parentCert, parentKey := tmpl, crypto.Signer(nil)
	if parent != nil {
		parentCert, parentKey = parent.cert, parent.key
	}
	if parentKey == nil {
		t.Fatal("sign: no parent key")
	}
	der, err := x509.CreateCertificate(nil, tmpl, parentCert, pub, parentKey)
	if err != nil {
		t.Fatalf("sign %v: %v", tmpl.Subject, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// caTemplate is a conformant SVID signing certificate template.
func caTemplate(serial int64, cn string, notBefore time.Time, lifetime time.Duration) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{Organization: []string{"Castellan"}, CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(lifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{mustURL("spiffe://cluster.local")},
	}
}

// rootCA returns a self-signed Ed25519 root.
func rootCA(t testing.TB, seed string, notBefore time.Time, lifetime time.Duration) *ca {
	key := edKey(seed)
	tmpl := caTemplate(1, "Castellan Root CA "+seed, notBefore, lifetime)
	self := &ca{cert: tmpl, key: key}
	return &ca{cert: sign(t, tmpl, key.Public(), self), key: key}
}

// intermediateCA returns an Ed25519 intermediate issued by parent.
func intermediateCA(t testing.TB, seed string, parent *ca, notBefore time.Time, lifetime time.Duration) *ca {
	key := edKey(seed)
	tmpl := caTemplate(2, "Castellan Intermediate CA "+seed, notBefore, lifetime)
	tmpl.MaxPathLenZero = true
	return &ca{cert: sign(t, tmpl, key.Public(), parent), key: key}
}

// leafTemplate is a conformant leaf X509-SVID template.
func leafTemplate(id string, notBefore time.Time, lifetime time.Duration) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes([]byte{0x5a, 0x17, 0x3c, 0x01, 0x99, 0xe4, 0x20, 0x07}),
		Subject:               pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(lifetime),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{mustURL(id)},
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
