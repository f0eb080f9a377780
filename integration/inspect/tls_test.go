package inspect_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// TestTLS inspects TLS servers started in the test, with and without a
// client certificate requirement, through the package and the command.
func TestTLS(t *testing.T) {
	srv := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/apps/sa/web"), testpki.WithLeafLifetime(25*time.Hour))
	cli := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/apps/sa/client"), testpki.WithLeafLifetime(25*time.Hour))
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(cli.Root)
	dir := t.TempDir()
	bundle := testpki.WriteFile(t, dir, "root.pem", testpki.CertPEM(srv.Root))
	clientCert := testpki.WriteFile(t, dir, "client.pem", cli.ChainPEM())
	clientKey := testpki.WriteFile(t, dir, "client-key.pem", testpki.KeyPEM(t, cli.LeafKey))

	plain := testpki.ServeTLS(t, &tls.Config{Certificates: []tls.Certificate{srv.TLSCertificate()}})
	mtls13 := testpki.ServeTLS(t, &tls.Config{
		Certificates: []tls.Certificate{srv.TLSCertificate()}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: clientCAs, MinVersion: tls.VersionTLS13,
	})
	mtls12 := testpki.ServeTLS(t, &tls.Config{
		Certificates: []tls.Certificate{srv.TLSCertificate()}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: clientCAs, MaxVersion: tls.VersionTLS12,
	})
	pair, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		addr      string
		cfg       source.TLSConfig
		wantNotes []string
	}{
		{name: "no client auth", addr: plain, wantNotes: []string{"negotiated TLS 1.3"}},
		{name: "mTLS, TLS 1.3, no client certificate", addr: mtls13,
			wantNotes: []string{"none was given", "the handshake failed after the server presented its certificate"}},
		{name: "mTLS, TLS 1.2, no client certificate", addr: mtls12,
			wantNotes: []string{"none was given", "the handshake failed after the server presented its certificate"}},
		{name: "mTLS with a client certificate", addr: mtls13, cfg: source.TLSConfig{ClientCertificate: pair},
			wantNotes: []string{"one was presented", "negotiated TLS 1.3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			in, err := source.TLS(ctx, tt.addr, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			in.Bundle, in.BundleSource = []*x509.Certificate{srv.Root}, "file:"+bundle
			r := inspect.Analyze(in, inspect.Options{})
			if r.Status != inspect.StatusValid || !r.Verification.Chain.Verified ||
				r.Verification.SVID.SPIFFEID != "spiffe://cluster.local/ns/apps/sa/web" {
				t.Errorf("status %s, verification %+v, findings %+v", r.Status, r.Verification, r.Findings)
			}
			for _, want := range tt.wantNotes {
				if !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, want) }) {
					t.Errorf("notes %q lack %q", r.Notes, want)
				}
			}
			if tt.cfg.ClientCertificate.Certificate != nil && slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "handshake failed") }) {
				t.Errorf("the server refused the client certificate: %q", r.Notes)
			}
		})
	}

	for _, tt := range []struct {
		name     string
		args     []string
		wantCode int
		wantOut  []string
	}{
		{"plain", []string{"--tls", plain, "--bundle", bundle}, 0, []string{"Status               VALID", "negotiated TLS 1.3"}},
		{"mTLS without client cert", []string{"--tls", mtls13, "--bundle", bundle}, 0, []string{"none was given"}},
		{"mTLS with client cert", []string{"--tls", mtls13, "--bundle", bundle, "--client-cert", clientCert, "--client-key", clientKey, "--short"}, 0,
			[]string{"chain[0]  leaf          VALID"}},
		{"wrong bundle", []string{"--tls", plain, "--bundle", clientCert}, 6, []string{"verify-failed"}},
		{"server name", []string{"--tls", plain, "--server-name", "web.apps.svc", "--bundle", bundle}, 0, []string{"SNI server name web.apps.svc"}},
		{"nothing listening", []string{"--tls", "127.0.0.1:1"}, 1, nil},
	} {
		t.Run("cli "+tt.name, func(t *testing.T) {
			res := runCLI(t, nil, nil, append([]string{"cert", "inspect"}, tt.args...)...)
			if res.code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", res.code, tt.wantCode, res.stdout, res.stderr)
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(res.stdout, want) {
					t.Errorf("stdout lacks %q:\n%s", want, res.stdout)
				}
			}
		})
	}
}

// TestTLSCAEndpoint inspects the real CA's gRPC TLS port, verifying its
// serving certificate against the bundle fetched from the CA's /bundle URL.
func TestTLSCAEndpoint(t *testing.T) {
	api := harness.StartAPIServer(t)
	ca := harness.StartCA(t, api)
	bundleURL := "http://" + ca.HTTPAddr + "/bundle"

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := source.TLS(ctx, ca.GRPCAddr, source.TLSConfig{ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	in.Bundle, in.BundleSource, err = source.Bundle(ctx, bundleURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := inspect.Analyze(in, inspect.Options{})
	if !r.Verification.Chain.Verified {
		t.Errorf("the CA's serving certificate does not verify against its own bundle: %+v", r.Verification.Chain)
	}
	if !slices.Contains(r.Certificates[0].DNSNames, ca.ServerName) {
		t.Errorf("DNS names %v lack %s", r.Certificates[0].DNSNames, ca.ServerName)
	}
	if r.Status == inspect.StatusInvalid {
		t.Errorf("the CA's serving certificate is invalid: %+v", r.Findings)
	}

	res := runCLI(t, nil, nil, "cert", "inspect", "--tls", ca.GRPCAddr, "--server-name", ca.ServerName, "--bundle", bundleURL)
	if res.code == 1 || res.code == 2 || res.code == 6 || !strings.Contains(res.stdout, "verified: chain[0]") || !strings.Contains(res.stdout, "Bundle  "+bundleURL) {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
}
