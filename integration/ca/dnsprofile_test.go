package ca_test

import (
	"crypto/elliptic"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/integration/harness"
)

// TestIssueDNSProfile: istiod's serving certificate from the DNS SAN
// profile is an X509-SVID that also names its DNS names, and passes the
// same RFC 5280 lints as every SVID.
func TestIssueDNSProfile(t *testing.T) {
	names := []string{"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local"}
	profile, err := ca.ParseDNSProfile("istio-system/istiod=" + names[0] + "," + names[1])
	if err != nil {
		t.Fatal(err)
	}
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, "istio-system", "istiod")
	c := harness.StartCA(t, api, harness.WithServerConfig(func(cfg *server.Config) { cfg.DNSProfile = profile }))
	istiod := spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/istiod")
	token := api.Token(t, "istio-system", "istiod", []string{"istio-ca"}, time.Hour)
	lints := zlintRegistry(t)
	for _, tt := range []struct {
		name string
		key  keyGen
		rsa  bool
	}{
		{"P-256", ecKey(elliptic.P256()), false},
		{"RSA-2048", rsaKey(2048), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key(t)
			resp, err := createCertificate(t, c.Dial(t), token, csrPEM(t, key, []string{istiod.String()}, names), 0)
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			verifySVID(t, resp.GetCertChain(), key, c.RootPEM, istiod)
			leaf := parseChain(t, resp.GetCertChain())[0]
			if !slices.Equal(leaf.DNSNames, names) || len(leaf.URIs) != 1 || len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("SANs %v %q %v %v, want %s and %q", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, istiod, names)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("EKU %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
			}
			wantKU := x509.KeyUsageDigitalSignature
			if tt.rsa {
				wantKU |= x509.KeyUsageKeyEncipherment
			}
			if leaf.KeyUsage != wantKU || leaf.IsCA {
				t.Errorf("key usage %b (CA %v), want %b", leaf.KeyUsage, leaf.IsCA, wantKU)
			}
			lintCert(t, lints, "istiod leaf", leaf.Raw)
		})
	}
}
