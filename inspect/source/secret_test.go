package source_test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// TestSecretKeys checks which Secret keys are read; the API server itself is
// exercised by the integration tests.
func TestSecretKeys(t *testing.T) {
	p := testpki.New(t)
	chain := testpki.CertPEM(p.Leaf, p.Intermediate)
	caChain := testpki.CertPEM(p.Intermediate, p.Root)
	root := testpki.CertPEM(p.Root)
	key := testpki.KeyPEM(t, p.LeafKey)
	interKey := testpki.KeyPEM(t, p.IntermediateKey)

	tests := []struct {
		name                             string
		data                             map[string][]byte
		wantChain                        int
		wantSource, wantBundle, wantKey  string
		wantErr                          string
		wantKeyMatchesLeaf, wantNoBundle bool
	}{
		{
			name:       "kubernetes.io/tls",
			data:       map[string][]byte{"tls.crt": chain, "tls.key": key, "ca.crt": root},
			wantChain:  2,
			wantSource: "secret:ns/s[tls.crt]", wantBundle: "secret:ns/s[ca.crt]", wantKey: "secret:ns/s[tls.key]",
		},
		{
			name:       "Istio cacerts",
			data:       map[string][]byte{"ca-cert.pem": testpki.CertPEM(p.Intermediate), "ca-key.pem": interKey, "cert-chain.pem": caChain, "root-cert.pem": root},
			wantChain:  2,
			wantSource: "secret:ns/s[cert-chain.pem]", wantBundle: "secret:ns/s[root-cert.pem]", wantKey: "secret:ns/s[ca-key.pem]",
		},
		{
			name:       "Istio cacerts without cert-chain.pem",
			data:       map[string][]byte{"ca-cert.pem": testpki.CertPEM(p.Intermediate), "ca-key.pem": interKey, "root-cert.pem": root},
			wantChain:  1,
			wantSource: "secret:ns/s[ca-cert.pem]", wantBundle: "secret:ns/s[root-cert.pem]", wantKey: "secret:ns/s[ca-key.pem]",
		},
		{
			name:       "Istio generic gateway Secret",
			data:       map[string][]byte{"cert": chain, "key": key, "cacert": root},
			wantChain:  2,
			wantSource: "secret:ns/s[cert]", wantBundle: "secret:ns/s[cacert]", wantKey: "secret:ns/s[key]",
		},
		{
			name:         "certificate only",
			data:         map[string][]byte{"tls.crt": chain},
			wantChain:    2,
			wantSource:   "secret:ns/s[tls.crt]",
			wantNoBundle: true,
		},
		{
			name:    "no certificate key",
			data:    map[string][]byte{"password": []byte("x"), "token": []byte("y")},
			wantErr: "has none of the keys tls.crt, cert-chain.pem, ca-cert.pem, cert (it has: password, token)",
		},
		{
			name:    "garbage certificate",
			data:    map[string][]byte{"tls.crt": []byte("garbage")},
			wantErr: "Secret ns/s key tls.crt: pemder: input is not PEM",
		},
		{
			name:    "garbage bundle",
			data:    map[string][]byte{"tls.crt": chain, "ca.crt": []byte("-----BEGIN CERTIFICATE-----\n")},
			wantErr: "Secret ns/s key ca.crt: pemder: PEM block 1 at line 1 is malformed",
		},
		{
			name:    "garbage key",
			data:    map[string][]byte{"tls.crt": chain, "tls.key": []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")},
			wantErr: "Secret ns/s key tls.key",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset(&corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"},
				Type:       corev1.SecretTypeOpaque,
				Data:       tt.data,
			})
			in, err := source.Secret(context.Background(), cs.CoreV1(), "ns", "s")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(in.Chain) != tt.wantChain || in.Source != tt.wantSource || in.BundleSource != tt.wantBundle || in.KeySource != tt.wantKey {
				t.Errorf("got chain %d from %q, bundle %q, key %q", len(in.Chain), in.Source, in.BundleSource, in.KeySource)
			}
			if tt.wantNoBundle != (len(in.Bundle) == 0) {
				t.Errorf("bundle has %d certificates", len(in.Bundle))
			}
		})
	}

	cs := fake.NewClientset()
	if _, err := source.Secret(context.Background(), cs.CoreV1(), "ns", "missing"); err == nil || !strings.Contains(err.Error(), `getting Secret ns/missing`) {
		t.Errorf("missing Secret: err = %v", err)
	}
}
