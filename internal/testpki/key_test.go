package testpki_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"strconv"
	"testing"

	"github.com/castellan-mesh/castellan/internal/testpki"
)

func TestNewKey(t *testing.T) {
	tests := []struct {
		kt   testpki.KeyType
		want string // curve name, or RSA bits, or "ed25519"
	}{
		{testpki.P256, "P-256"},
		{testpki.P384, "P-384"},
		{testpki.P224, "P-224"},
		{testpki.RSA2048, "2048"},
		{testpki.RSA1024, "1024"},
		{testpki.Ed25519, "ed25519"},
	}
	for _, tt := range tests {
		t.Run(string(tt.kt), func(t *testing.T) {
			var got string
			switch k := testpki.NewKey(t, tt.kt).(type) {
			case *ecdsa.PrivateKey:
				got = k.Curve.Params().Name
			case *rsa.PrivateKey:
				got = strconv.Itoa(k.N.BitLen())
			case ed25519.PrivateKey:
				got = "ed25519"
			}
			if got != tt.want {
				t.Fatalf("NewKey(%s) is %q, want %q", tt.kt, got, tt.want)
			}
		})
	}
}

func TestChildCAKeyType(t *testing.T) {
	root := testpki.NewCA(t, "root")
	inter := root.ChildCA(t, "intermediate", testpki.WithKeyType(testpki.P384))
	if got := inter.Key.Curve.Params().Name; got != "P-384" {
		t.Fatalf("intermediate key on %s, want P-384", got)
	}
	if got := root.Key.Curve.Params().Name; got != "P-256" {
		t.Fatalf("root key on %s, want the default P-256", got)
	}
	chain, _ := inter.IssueSVID(t, "spiffe://example.test/ns/default/sa/web", 0)
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	inters := x509.NewCertPool()
	inters.AddCert(inter.Cert)
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: chain[0].NotBefore, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID under the P-384 intermediate does not verify: %v", err)
	}
}
