package kubestore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

func newRoot(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: testTD})
	if err != nil {
		t.Fatal(err)
	}
	return root, key
}

// newIntermediate signs an intermediate CA certificate under parent.
func newIntermediate(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	inter := (&testpki.CA{Cert: parent, Key: parentKey}).ChildCA(t, "intermediate")
	return inter.Cert, inter.Key
}

func pemOf(certs ...*x509.Certificate) []byte { return pemfile.EncodeCertificates(certs) }

func keyPEM(t testing.TB, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := pemfile.EncodePrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	root, key := newRoot(t)
	data, err := encodeAuthority(root, key, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err := decodeAuthority(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Cert.Equal(root) || !a.Root().Equal(root) || len(a.Chain) != 0 {
		t.Fatalf("decoded authority does not match the encoded root")
	}

	// With the key outside Kubernetes the Secret holds no key.
	data, err = encodeAuthority(root, key, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := data[CAKeyKey]; ok {
		t.Fatalf("Secret data holds %s although the key lives elsewhere", CAKeyKey)
	}
	if _, err := decodeAuthority(data, key); err != nil {
		t.Fatalf("decode with outside signer: %v", err)
	}
}

func TestDecodeAuthority(t *testing.T) {
	root, rootKey := newRoot(t)
	otherRoot, otherKey := newRoot(t)
	inter, interKey := newIntermediate(t, root, rootKey)

	tests := []struct {
		name    string
		data    map[string][]byte
		wantErr string // substring; empty means success
		chain   int    // certificates above Cert on success
	}{
		{
			name: "self-signed root without root-cert.pem",
			data: map[string][]byte{CACertKey: pemOf(root), CAKeyKey: keyPEM(t, rootKey)},
		},
		{
			name: "Istio cacerts with intermediate, chain without root",
			data: map[string][]byte{
				CACertKey: pemOf(inter), CAKeyKey: keyPEM(t, interKey),
				CertChainKey: pemOf(inter), RootCertKey: pemOf(root),
			},
			chain: 1,
		},
		{
			name: "Istio cacerts with intermediate, chain ending with root",
			data: map[string][]byte{
				CACertKey: pemOf(inter), CAKeyKey: keyPEM(t, interKey),
				CertChainKey: pemOf(inter, root), RootCertKey: pemOf(root),
			},
			chain: 1,
		},
		{
			name:    "empty",
			data:    map[string][]byte{},
			wantErr: "no ca-cert.pem",
		},
		{
			name:    "no key",
			data:    map[string][]byte{CACertKey: pemOf(root)},
			wantErr: "no ca-key.pem",
		},
		{
			name:    "key does not match",
			data:    map[string][]byte{CACertKey: pemOf(root), CAKeyKey: keyPEM(t, otherKey)},
			wantErr: "does not match",
		},
		{
			name:    "garbage certificate",
			data:    map[string][]byte{CACertKey: []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), CAKeyKey: keyPEM(t, rootKey)},
			wantErr: "ca-cert.pem",
		},
		{
			name:    "garbage key",
			data:    map[string][]byte{CACertKey: pemOf(root), CAKeyKey: []byte("not a key")},
			wantErr: "ca-key.pem",
		},
		{
			name:    "intermediate without roots",
			data:    map[string][]byte{CACertKey: pemOf(inter), CAKeyKey: keyPEM(t, interKey)},
			wantErr: "not self-signed",
		},
		{
			name: "intermediate under a stranger's root",
			data: map[string][]byte{
				CACertKey: pemOf(inter), CAKeyKey: keyPEM(t, interKey), RootCertKey: pemOf(otherRoot),
			},
			wantErr: "no chain up to its root",
		},
		{
			name:    "garbage chain",
			data:    map[string][]byte{CACertKey: pemOf(root), CAKeyKey: keyPEM(t, rootKey), CertChainKey: []byte("junk")},
			wantErr: "cert-chain.pem",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := decodeAuthority(tt.data, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(a.Chain) != tt.chain {
				t.Fatalf("chain has %d certificates, want %d", len(a.Chain), tt.chain)
			}
			if !a.Root().Equal(root) {
				t.Fatalf("root is %q, want %q", a.Root().Subject, root.Subject)
			}
		})
	}
}

func FuzzDecodeAuthority(f *testing.F) {
	root, key := newRoot(f)
	f.Add(pemOf(root), keyPEM(f, key), []byte(""), pemOf(root))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte("x"), []byte(""), []byte(""))
	f.Fuzz(func(t *testing.T, cert, key, chain, roots []byte) {
		a, err := decodeAuthority(map[string][]byte{CACertKey: cert, CAKeyKey: key, CertChainKey: chain, RootCertKey: roots}, nil)
		if err == nil && a == nil {
			t.Fatal("nil authority without error")
		}
	})
}
