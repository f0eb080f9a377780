package xds_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/authz/xds"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// credFiles writes p's chain, key and root in dir, as the agent's
// --output-dir does, and returns their paths.
func credFiles(t *testing.T, dir string, p *testpki.PKI) (cert, key, bundle string) {
	t.Helper()
	cert = testpki.WriteFile(t, dir, "cert-chain.pem", p.ChainPEM())
	key = testpki.WriteFile(t, dir, "key.pem", testpki.KeyPEM(t, p.LeafKey))
	bundle = testpki.WriteFile(t, dir, "root-cert.pem", testpki.CertPEM(p.Root))
	return cert, key, bundle
}

// touch moves the file's modification time on, as a rewrite a second
// later would.
func touch(t *testing.T, name string, n int) {
	t.Helper()
	at := time.Now().Add(time.Duration(n) * time.Minute)
	if err := os.Chtimes(name, at, at); err != nil {
		t.Fatal(err)
	}
}

// served returns the leaf the server presents to the next client.
func served(t *testing.T, f *xds.FileCredentials) string {
	t.Helper()
	cfg, err := f.TLSConfig().GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatalf("GetConfigForClient: %v", err)
	}
	if len(cfg.Certificates) != 1 || cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ClientCAs == nil {
		t.Fatalf("server config: %d certificates, client auth %v, CAs %v", len(cfg.Certificates), cfg.ClientAuth, cfg.ClientCAs != nil)
	}
	leaf := cfg.Certificates[0].Leaf
	if leaf == nil || len(leaf.URIs) != 1 {
		t.Fatalf("served leaf: %+v", leaf)
	}
	return leaf.URIs[0].String()
}

// TestFileCredentials: the files are read at start, a consistent rewrite
// is served from the next check, and a broken or missing file leaves the
// last good material in force.
func TestFileCredentials(t *testing.T) {
	dir := t.TempDir()
	a := testpki.New(t, testpki.WithID("spiffe://example.test/ns/a/sa/first"))
	certFile, keyFile, bundleFile := credFiles(t, dir, a)
	f, err := xds.NewFileCredentials(certFile, keyFile, bundleFile)
	if err != nil {
		t.Fatal(err)
	}
	xds.SetCheckEvery(f, 0)
	if got := served(t, f); got != "spiffe://example.test/ns/a/sa/first" {
		t.Fatalf("served %s at start", got)
	}

	// A certificate that does not match the key is not served.
	b := testpki.New(t, testpki.WithID("spiffe://example.test/ns/b/sa/second"))
	testpki.WriteFile(t, dir, "cert-chain.pem", b.ChainPEM())
	touch(t, certFile, 1)
	if got := served(t, f); got != "spiffe://example.test/ns/a/sa/first" {
		t.Fatalf("served %s with a mismatched key", got)
	}

	// The key arrives: the new pair is served.
	testpki.WriteFile(t, dir, "key.pem", testpki.KeyPEM(t, b.LeafKey))
	testpki.WriteFile(t, dir, "root-cert.pem", testpki.CertPEM(b.Root))
	touch(t, keyFile, 2)
	touch(t, bundleFile, 2)
	if got := served(t, f); got != "spiffe://example.test/ns/b/sa/second" {
		t.Fatalf("served %s after the rewrite", got)
	}

	// A missing file, then a bundle without certificates, change nothing.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	if got := served(t, f); got != "spiffe://example.test/ns/b/sa/second" {
		t.Fatalf("served %s with the key gone", got)
	}
	testpki.WriteFile(t, dir, "key.pem", testpki.KeyPEM(t, b.LeafKey))
	testpki.WriteFile(t, dir, "root-cert.pem", []byte("no certificates\n"))
	touch(t, bundleFile, 3)
	if got := served(t, f); got != "spiffe://example.test/ns/b/sa/second" {
		t.Fatalf("served %s with an empty bundle", got)
	}
}

func TestNewFileCredentialsRefuses(t *testing.T) {
	p := testpki.New(t)
	other := testpki.New(t)
	tests := []struct {
		name    string
		write   func(dir string) (cert, key, bundle string)
		wantErr string
	}{
		{"missing key", func(dir string) (string, string, string) {
			c, _, b := credFiles(t, dir, p)
			return c, filepath.Join(dir, "nope.pem"), b
		}, "nope.pem"},
		{"mismatched key", func(dir string) (string, string, string) {
			c, _, b := credFiles(t, dir, p)
			return c, testpki.WriteFile(t, dir, "other.pem", testpki.KeyPEM(t, other.LeafKey)), b
		}, "server certificate"},
		{"empty bundle", func(dir string) (string, string, string) {
			c, k, _ := credFiles(t, dir, p)
			return c, k, testpki.WriteFile(t, dir, "empty.pem", nil)
		}, "no certificate in trust bundle"},
		{"oversized bundle", func(dir string) (string, string, string) {
			c, k, _ := credFiles(t, dir, p)
			return c, k, testpki.WriteFile(t, dir, "big.pem", []byte(strings.Repeat("x", 1<<20+1)))
		}, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, k, b := tt.write(t.TempDir())
			_, err := xds.NewFileCredentials(c, k, b)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
