package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestCARotateExternalKey rotates by hand a self-signed root whose key is
// outside the data directory: prepare needs --signer-key-uri and creates
// the next key in that store; no key ever lands in the data directory.
func TestCARotateExternalKey(t *testing.T) {
	dir, keys := t.TempDir(), t.TempDir()
	uri := "file://" + filepath.Join(keys, "ca-key.pem")
	ctx := context.Background()
	ring, err := kms.NewRing(ctx, uri, kms.ECDSAP256, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ring.OpenOrCreate(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := material.Open(ctx, material.Config{Dir: dir, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Keys: ring}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"status without the key store", []string{"status"}, 0, "phase  steady"},
		{"prepare without the key store", []string{"prepare"}, 1, "give --signer-key-uri"},
		{"prepare", []string{"prepare", "--signer-key-uri", uri}, 0, "phase  prepared"},
		{"activate forced", []string{"activate", "--force"}, 0, "phase  activated"},
		{"retire forced", []string{"retire", "--force"}, 0, "phase  steady"},
	}
	for _, st := range steps {
		var out bytes.Buffer
		if code := run(ctx, append(append([]string{"ca", "rotate"}, st.args...), "--data-dir", dir), &out, &out); code != st.code || !strings.Contains(out.String(), st.contains) {
			t.Fatalf("%s: exit %d, want %d and %q:\n%s", st.name, code, st.code, st.contains, out.String())
		}
	}
	created, _ := filepath.Glob(filepath.Join(keys, "castellan-root-*.pem"))
	if len(created) != 1 {
		t.Fatalf("the next root's key is not beside the first: %v", created)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "key") {
			t.Fatalf("the data directory holds %s", e.Name())
		}
	}
}
