package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFileKey(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		alg  Algorithm
		pub  func(crypto.PublicKey) bool
	}{
		{name: "p256", alg: ECDSAP256, pub: func(p crypto.PublicKey) bool {
			k, ok := p.(*ecdsa.PublicKey)
			return ok && k.Curve == elliptic.P256()
		}},
		{name: "p384", alg: ECDSAP384, pub: func(p crypto.PublicKey) bool {
			k, ok := p.(*ecdsa.PublicKey)
			return ok && k.Curve == elliptic.P384()
		}},
		{name: "rsa2048", alg: RSA2048, pub: func(p crypto.PublicKey) bool {
			k, ok := p.(*rsa.PublicKey)
			return ok && k.N.BitLen() == 2048
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sub", "ca-key.pem")
			uri := "file://" + path
			key, created, err := OpenOrCreate(ctx, uri, tt.alg, Config{})
			if err != nil || !created {
				t.Fatalf("OpenOrCreate: created=%v err=%v", created, err)
			}
			if !tt.pub(key.Public()) {
				t.Fatalf("public key %T is not %s", key.Public(), tt.alg)
			}
			fi, err := os.Stat(path)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
			}
			again, created, err := OpenOrCreate(ctx, uri, tt.alg, Config{})
			if err != nil || created {
				t.Fatalf("second OpenOrCreate: created=%v err=%v", created, err)
			}
			if !publicEqual(key.Public(), again.Public()) {
				t.Fatal("reopened key differs")
			}
			if _, err := Create(ctx, uri, tt.alg, Config{}); !errors.Is(err, ErrKeyExists) {
				t.Fatalf("Create over an existing key: %v, want ErrKeyExists", err)
			}
			signAndVerify(t, again)
		})
	}
}

func TestFileKeyErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose.pem")
	if _, err := Create(ctx, "file://"+loose, ECDSAP256, Config{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	groupWritable := filepath.Join(dir, "group-writable.pem")
	if _, err := Create(ctx, "file://"+groupWritable, ECDSAP256, Config{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(groupWritable, 0o660); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, uri, want string
		is              error
	}{
		{name: "missing", uri: "file://" + filepath.Join(dir, "none.pem"), want: "not found", is: ErrKeyNotFound},
		{name: "readable by others", uri: "file://" + loose, want: "chmod 600"},
		{name: "writable by its group", uri: "file://" + groupWritable, want: "chmod 600"},
		{name: "not a key", uri: "file://" + garbage, want: "no PEM private key"},
		{name: "directory", uri: "file://" + dir + "/.", want: "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(ctx, tt.uri, Config{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v, want an error containing %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("Open: %v is not %v", err, tt.is)
			}
		})
	}
	if _, err := Create(ctx, "file://"+filepath.Join(dir, "k.pem"), "dsa-1024", Config{}); err == nil || !strings.Contains(err.Error(), "unknown key algorithm") {
		t.Fatalf("Create with a bad algorithm: %v", err)
	}
}

func TestSignMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	cfg := Config{Registerer: reg}
	// Two keys on one registry share the metrics.
	k1, _, err := OpenOrCreate(context.Background(), "file://"+filepath.Join(dir, "a.pem"), ECDSAP256, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenOrCreate(context.Background(), "file://"+filepath.Join(dir, "b.pem"), ECDSAP256, cfg); err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, k1)
	if n := testutil.CollectAndCount(reg, "castellan_kms_sign_duration_seconds"); n != 1 {
		t.Fatalf("castellan_kms_sign_duration_seconds series = %d, want 1", n)
	}
}

func signAndVerify(t *testing.T, s crypto.Signer) {
	t.Helper()
	digest := sha256.Sum256([]byte("castellan"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	switch pub := s.Public().(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("ECDSA signature does not verify")
		}
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatalf("RSA signature does not verify: %v", err)
		}
	default:
		t.Fatalf("unexpected key type %T", pub)
	}
}

func publicEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
