package sdsclient_test

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

func tlsSecret(chain, key []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(chain), PrivateKey: inline(key),
	}}}
}

func TestTLSCertificate(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	a := ca.Issue(t, "spiffe://cluster.local/ns/a/sa/a", time.Hour)
	b := ca.Issue(t, "spiffe://cluster.local/ns/b/sa/b", time.Hour)
	tests := []struct {
		name    string
		secret  *tlsv3.Secret
		wantErr string
	}{
		{"matching pair", tlsSecret(a.ChainPEM, a.KeyPEM), ""},
		{"key of another certificate", tlsSecret(a.ChainPEM, b.KeyPEM), "do not form a pair"},
		{"no key", tlsSecret(a.ChainPEM, nil), "no inline"},
		{"garbage chain", tlsSecret([]byte("junk"), a.KeyPEM), "do not form a pair"},
		{"validation context", &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{}}, "not a tls_certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, key, err := sdsclient.TLSCertificate(tt.secret)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(chain) == 0 || key == nil {
				t.Fatalf("TLSCertificate: %v", err)
			}
		})
	}
}

func TestTrustedCA(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	leaf := ca.Issue(t, "spiffe://cluster.local/ns/a/sa/a", time.Hour)
	vc := func(b []byte) *tlsv3.Secret {
		return &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(b)}}}
	}
	tests := []struct {
		name    string
		secret  *tlsv3.Secret
		want    int
		wantErr string
	}{
		{"one root", vc(ca.Bundle(t).PEM), 1, ""},
		{"empty", vc(nil), 0, "no certificate"},
		{"key block", vc(leaf.KeyPEM), 0, "PRIVATE KEY"},
		{"tls certificate", tlsSecret(leaf.ChainPEM, leaf.KeyPEM), 0, "not a validation_context"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := sdsclient.TrustedCA(tt.secret)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(certs) != tt.want {
				t.Fatalf("TrustedCA = %d certs, %v", len(certs), err)
			}
		})
	}
}
