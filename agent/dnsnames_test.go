package agent

import (
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestNewCSRWithDNSNames(t *testing.T) {
	key, err := generateKey(KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/istiod")
	names := []string{"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local"}
	b, err := newCSR(key, id, names...)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(csr.DNSNames, names) || len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		t.Fatalf("CSR asks for %v %v", csr.URIs, csr.DNSNames)
	}
}

func TestConfigDNSNames(t *testing.T) {
	base := func() Config {
		return Config{CAAddr: "ca:15012", RootCertFile: "root.pem", TokenFile: "token"}
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"two names", func(c *Config) { c.DNSNames = []string{"istiod.istio-system.svc", "istiod"} }, ""},
		{"wildcard", func(c *Config) { c.DNSNames = []string{"*.istio-system.svc"} }, "not a host name"},
		{"empty", func(c *Config) { c.DNSNames = []string{""} }, "not a host name"},
		{"too many", func(c *Config) {
			for i := range MaxDNSNames + 1 {
				c.DNSNames = append(c.DNSNames, strings.Repeat("a", i+1)+".svc")
			}
		}, "at most 16"},
		{"node attestation", func(c *Config) {
			c.DNSNames = []string{"istiod.istio-system.svc"}
			c.Attestation = AttestationNode
		}, "never carry DNS names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(&c)
			err := c.setDefaults()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
