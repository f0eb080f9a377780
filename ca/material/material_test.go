package material

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func open(t *testing.T, dir string, mod ...func(*Config)) (*Store, error) {
	t.Helper()
	cfg := Config{Dir: dir, TrustDomain: td, Logger: quiet()}
	for _, m := range mod {
		m(&cfg)
	}
	return Open(context.Background(), cfg)
}

func TestSelfSignedPersists(t *testing.T) {
	dir := t.TempDir()
	s1, err := open(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if s1.Mode() != rotation.ModeSelfSigned {
		t.Fatalf("mode = %s", s1.Mode())
	}
	fi, err := os.Stat(filepath.Join(dir, RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode = %v, want 0600", fi.Mode().Perm())
	}
	root := s1.Authority().Cert
	if !root.IsCA || root.NotAfter.Sub(root.NotBefore) < 9*365*24*time.Hour {
		t.Fatalf("root is not a 10-year CA: %v to %v", root.NotBefore, root.NotAfter)
	}
	if _, ok := root.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("root key is %T, want ECDSA", root.PublicKey)
	}
	s2, err := open(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !s2.Authority().Cert.Equal(root) {
		t.Fatal("restart made a new root")
	}
}

func TestNothingRegeneratedSilently(t *testing.T) {
	tests := []struct {
		name   string
		remove string
		substr string
	}{
		{"key lost", RootKeyFile, "its key"},
		{"cert lost", RootCertFile, "its certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := open(t, dir); err != nil {
				t.Fatal(err)
			}
			os.Remove(filepath.Join(dir, tt.remove))
			_, err := open(t, dir)
			if err == nil || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.substr)
			}
		})
	}
}

// writeCACerts writes Istio's cacerts layout: an intermediate under root.
func writeCACerts(t *testing.T, dir string, root *testpki.CA, cn string) *x509.Certificate {
	t.Helper()
	inter := root.ChildCA(t, cn)
	testpki.WriteFile(t, dir, CAKeyFile, testpki.KeyPEM(t, inter.Key))
	must(t, pemfile.WriteCertificates(filepath.Join(dir, CACertFile), []*x509.Certificate{inter.Cert}))
	must(t, pemfile.WriteCertificates(filepath.Join(dir, CertChainFile), inter.Chain))
	must(t, pemfile.WriteCertificates(filepath.Join(dir, RootCertFile), []*x509.Certificate{root.Cert}))
	return inter.Cert
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPluggedInAndReload(t *testing.T) {
	dir := t.TempDir()
	root := testpki.NewCA(t, "root")
	inter1 := writeCACerts(t, dir, root, "inter-1")
	s, err := open(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode() != rotation.ModePluggedIn {
		t.Fatalf("mode = %s", s.Mode())
	}
	a := s.Authority()
	if !a.Cert.Equal(inter1) || !a.Root().Equal(root.Cert) || len(a.Chain) != 1 {
		t.Fatalf("loaded %q with chain of %d", a.Cert.Subject, len(a.Chain))
	}
	changed := s.Changed()
	if s.Reload() {
		t.Fatal("reload without change took new material")
	}
	if isClosed(changed) {
		t.Fatal("Changed signalled a reload that took nothing")
	}

	// A valid change is taken, and signalled.
	inter2 := writeCACerts(t, dir, root, "inter-2")
	if !s.Reload() || !s.Authority().Cert.Equal(inter2) || !isClosed(changed) {
		t.Fatal("valid change was not taken, or not signalled")
	}
	changed = s.Changed()

	// A broken change (key of another certificate) is refused; the
	// current material stays.
	testpki.WriteFile(t, dir, CAKeyFile, testpki.KeyPEM(t, testpki.Key(t)))
	if s.Reload() {
		t.Fatal("broken change was taken")
	}
	if !s.Authority().Cert.Equal(inter2) || isClosed(changed) {
		t.Fatal("broken change replaced the material, or was signalled")
	}
	if err := s.LastReloadError(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("LastReloadError = %v", err)
	}

	// A chain file without the root, and without ca-cert, also loads.
	inter3 := writeCACerts(t, dir, root, "inter-3")
	must(t, os.WriteFile(filepath.Join(dir, CertChainFile), pemfile.EncodeCertificates([]*x509.Certificate{inter3}), 0o644))
	if !s.Reload() || !s.Authority().Root().Equal(root.Cert) {
		t.Fatal("short chain file was not taken")
	}
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestPartialPluggedIn(t *testing.T) {
	dir := t.TempDir()
	writeCACerts(t, dir, testpki.NewCA(t, "root"), "inter")
	os.Remove(filepath.Join(dir, CertChainFile))
	_, err := open(t, dir)
	if err == nil || !strings.Contains(err.Error(), "missing [cert-chain.pem]") {
		t.Fatalf("err = %v", err)
	}
}

func TestExternalSigner(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s, err := open(t, dir, func(c *Config) { c.Signer = key })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, RootKeyFile)); !os.IsNotExist(err) {
		t.Fatal("a key file was written for an external signer")
	}
	root := s.Authority().Cert
	s2, err := open(t, dir, func(c *Config) { c.Signer = key })
	if err != nil || !s2.Authority().Cert.Equal(root) {
		t.Fatalf("restart with the same signer: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := open(t, dir, func(c *Config) { c.Signer = other }); err == nil {
		t.Fatal("a different signer was accepted for the existing root")
	}
}

// TestKeyFilePolicy: every CA key file in the data directory goes
// through kms's one key-file policy. A key others may read is refused, at
// start and at reload, with an error that says how to fix it; a key its
// group may read (a Kubernetes Secret volume with an fsGroup) is used;
// created keys are 0600.
func TestKeyFilePolicy(t *testing.T) {
	dir := t.TempDir()
	if _, err := open(t, dir); err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, RootKeyFile)
	fi, err := os.Stat(keyPath)
	must(t, err)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s created with mode %s, want 0600", RootKeyFile, fi.Mode().Perm())
	}
	must(t, os.Chmod(keyPath, 0o644))
	if _, err := open(t, dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable root key: %v; want a refusal saying chmod 600", err)
	}
	must(t, os.Chmod(keyPath, 0o640))
	if _, err := open(t, dir); err != nil {
		t.Fatalf("a group-readable root key (a Secret volume with an fsGroup): %v", err)
	}
	must(t, os.Chmod(keyPath, 0o600))
	if _, err := open(t, dir); err != nil {
		t.Fatalf("after chmod 600: %v", err)
	}
}
