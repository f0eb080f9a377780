package kms

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestURIWithName(t *testing.T) {
	tests := []struct {
		uri, name, want, wantErr string
	}{
		{uri: "file:///var/lib/castellan/ca-key.pem", name: "root-2", want: "file:///var/lib/castellan/root-2.pem"},
		{uri: "pkcs11:token=castellan;object=ca;id=%01?module-path=/lib/p11.so&pin-value=1234", name: "root-2",
			want: "pkcs11:token=castellan;object=root-2?module-path=/lib/p11.so&pin-value=REDACTED"},
		{uri: "vault-transit://transit/ca?key-version=3", name: "root-2", want: "vault-transit://transit/root-2"},
		{uri: "vault-transit://transit/ca", name: "", want: "vault-transit://transit/ca"},
		{uri: "vault-transit://transit/ca", name: "../x", wantErr: "key name"},
		{uri: "vault-transit://transit/ca", name: strings.Repeat("a", MaxKeyNameLen+1), wantErr: "key name"},
	}
	for _, tt := range tests {
		u, err := ParseURI(tt.uri)
		if err != nil {
			t.Fatal(err)
		}
		got, err := u.WithName(tt.name)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s WithName(%q) = %v, want error containing %q", tt.uri, tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("%s WithName(%q) = %v, %v; want %s", tt.uri, tt.name, got, err, tt.want)
		}
	}
}

// testRing checks a Ring on uri: the configured key, a second key created
// under another name in the same store, and Create never replacing one.
func testRing(t *testing.T, uri string) *Ring {
	t.Helper()
	ctx := context.Background()
	r, err := NewRing(ctx, uri, ECDSAP256, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if _, err := r.Open(ctx, ""); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Open of a missing key: %v, want ErrKeyNotFound", err)
	}
	first, created, err := r.OpenOrCreate(ctx, "")
	if err != nil || !created {
		t.Fatalf("OpenOrCreate: created=%v err=%v", created, err)
	}
	next, err := r.Create(ctx, "root-2")
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, next)
	if publicEqual(first.Public(), next.Public()) {
		t.Fatal("the next key is the first key")
	}
	if _, err := r.Create(ctx, "root-2"); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("Create over an existing key: %v, want ErrKeyExists", err)
	}
	// Another Ring on the same store (a restarted CA) finds both.
	r2, err := NewRing(ctx, uri, ECDSAP256, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	again, err := r2.Open(ctx, "root-2")
	if err != nil || !publicEqual(again.Public(), next.Public()) {
		t.Fatalf("reopened next key: %v", err)
	}
	if _, err := r2.Create(ctx, "root-2"); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("Create over an existing key in a new Ring: %v, want ErrKeyExists", err)
	}
	return r
}

func TestRingFile(t *testing.T) {
	dir := t.TempDir()
	testRing(t, "file://"+filepath.Join(dir, "ca-key.pem"))
	fi, err := os.Stat(filepath.Join(dir, "root-2.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("next key file: %v", err)
	}
}

func TestRingPKCS11(t *testing.T) {
	softHSMToken(t, "castellan")
	r := testRing(t, "pkcs11:token=castellan;object=ca?module-path="+softHSMModule+"&pin-value=1234")
	r.Close()
	// The next key was generated in the token and cannot leave it.
	checkNonExtractable(t, "castellan", "root-2")
}
