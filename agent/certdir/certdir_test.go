package certdir_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/agent/certdir"
	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
)

const id = "spiffe://cluster.local/ns/default/sa/web"

func files(svid *svidstore.SVID, b *svidstore.Bundle) certdir.Files {
	return certdir.Files{Chain: svid.ChainPEM, Key: svid.KeyPEM, Root: b.PEM}
}

func TestWriteLayoutAndModes(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	dir := filepath.Join(t.TempDir(), "certs")
	for i := 0; i < 4; i++ {
		if err := certdir.Write(dir, files(ca.Issue(t, id, time.Hour), ca.Bundle(t))); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		mode os.FileMode
	}{
		{certdir.ChainFile, 0o644},
		{certdir.KeyFile, 0o600},
		{certdir.RootFile, 0o644},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fi, err := os.Stat(filepath.Join(dir, tt.name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.mode {
				t.Fatalf("mode %v, want %v", fi.Mode().Perm(), tt.mode)
			}
		})
	}
	// The current and the previous version are kept, no more.
	entries, _ := os.ReadDir(dir)
	var versions int
	for _, e := range entries {
		if e.IsDir() {
			versions++
		}
	}
	if versions != 2 {
		t.Fatalf("%d version directories, want 2", versions)
	}
	// Plain reads through the links see the current version.
	got, err := certdir.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	chain, _ := os.ReadFile(filepath.Join(dir, certdir.ChainFile))
	if !bytes.Equal(chain, got.Chain) {
		t.Fatal("cert-chain.pem differs from the current version")
	}
}

// TestReadersNeverSeeMismatchedPair rotates as fast as it can while readers
// load the pair; every pair read must be a matching key and certificate.
func TestReadersNeverSeeMismatchedPair(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	dir := filepath.Join(t.TempDir(), "certs")
	bundle := ca.Bundle(t)
	svids := make([]*svidstore.SVID, 8)
	for i := range svids {
		svids[i] = ca.Issue(t, id, time.Hour)
	}
	if err := certdir.Write(dir, files(svids[0], bundle)); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				f, err := certdir.Read(dir)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := tls.X509KeyPair(f.Chain, f.Key); err != nil {
					t.Errorf("read a mismatched pair: %v", err)
					return
				}
				reads.Add(1)
			}
		}()
	}
	for i := 0; i < 40; i++ {
		if err := certdir.Write(dir, files(svids[i%len(svids)], bundle)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("readers read nothing")
	}
}

func TestWriteRefusesIncompleteContent(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	svid := ca.Issue(t, id, time.Hour)
	tests := []struct {
		name  string
		files certdir.Files
	}{
		{"a key without its chain", certdir.Files{Key: svid.KeyPEM, Root: ca.Bundle(t).PEM}},
		{"a chain without its key", certdir.Files{Chain: svid.ChainPEM, Root: ca.Bundle(t).PEM}},
		{"no root", certdir.Files{Chain: svid.ChainPEM, Key: svid.KeyPEM}},
		{"nothing", certdir.Files{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := certdir.Write(t.TempDir(), tt.files); err == nil {
				t.Fatal("Write accepted incomplete content")
			}
		})
	}
}

// TestWriteWithoutCertificate takes the certificate and key out of the
// directory and keeps the root: the state after an SVID expired.
func TestWriteWithoutCertificate(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	dir := t.TempDir()
	bundle := ca.Bundle(t)
	if err := certdir.Write(dir, files(ca.Issue(t, id, time.Hour), bundle)); err != nil {
		t.Fatal(err)
	}
	if err := certdir.Write(dir, certdir.Files{Root: bundle.PEM}); err != nil {
		t.Fatal(err)
	}
	f, err := certdir.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if f.HasCertificate() || len(f.Key) != 0 || !bytes.Equal(f.Root, bundle.PEM) {
		t.Fatalf("read chain %d bytes, key %d bytes, root %d bytes; want the root alone", len(f.Chain), len(f.Key), len(f.Root))
	}
	for _, name := range []string{certdir.ChainFile, certdir.KeyFile} {
		if _, err := os.ReadFile(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("reading %s: %v, want no such file", name, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, certdir.RootFile)); err != nil || !bytes.Equal(b, bundle.PEM) {
		t.Errorf("root-cert.pem: %v", err)
	}

	// The next certificate puts both files back.
	next := ca.Issue(t, id, time.Hour)
	if err := certdir.Write(dir, files(next, bundle)); err != nil {
		t.Fatal(err)
	}
	if f, err := certdir.Read(dir); err != nil || !bytes.Equal(f.Chain, next.ChainPEM) || !bytes.Equal(f.Key, next.KeyPEM) {
		t.Fatalf("after a new certificate: %v", err)
	}
}

// TestIstiodLayout writes the files istiod reads its serving certificate
// from, and nothing under the Istio agent's names.
func TestIstiodLayout(t *testing.T) {
	ca := svidstoretest.NewCA(t, "root")
	dir := t.TempDir()
	want := files(ca.Issue(t, id, time.Hour), ca.Bundle(t))
	if err := certdir.WriteLayout(dir, certdir.IstiodLayout, want); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"tls.crt": 0o644, "tls.key": 0o600, "ca.crt": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	for _, name := range []string{certdir.ChainFile, certdir.KeyFile, certdir.RootFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists in the istiod layout: %v", name, err)
		}
	}
	// What a TLS server loads from those paths is the pair written.
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	got, err := certdir.ReadLayout(dir, certdir.IstiodLayout)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Chain, want.Chain) || !bytes.Equal(got.Key, want.Key) || !bytes.Equal(got.Root, want.Root) {
		t.Fatal("ReadLayout differs from what was written")
	}
	// Without a certificate, only ca.crt is left.
	if err := certdir.WriteLayout(dir, certdir.IstiodLayout, certdir.Files{Root: want.Root}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tls.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tls.crt still readable after the certificate was removed: %v", err)
	}
	if got, err := certdir.ReadLayout(dir, certdir.IstiodLayout); err != nil || got.HasCertificate() {
		t.Fatalf("ReadLayout = %v, %v; want the root alone", got.HasCertificate(), err)
	}
}

func TestParseLayout(t *testing.T) {
	tests := []struct {
		name    string
		want    certdir.Layout
		wantErr bool
	}{
		{"", certdir.IstioLayout, false},
		{"istio", certdir.IstioLayout, false},
		{"istiod", certdir.IstiodLayout, false},
		{"Istiod", certdir.Layout{}, true},
		{"k8s", certdir.Layout{}, true},
	}
	for _, tt := range tests {
		got, err := certdir.ParseLayout(tt.name)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseLayout(%q) = %v, %v", tt.name, got, err)
		}
	}
}
