package kubestore

import (
	"context"
	"crypto/ecdsa"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/kms"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestRotationInKeyStore: with the root key in a key store (a kms.Ring,
// here of key files; an HSM token or Vault Transit in production), the
// leader rotates the root with the next key created in the same store.
// The Secret never holds a key, only certificates and the key's name.
func TestRotationInKeyStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ring, err := kms.NewRing(ctx, "file://"+filepath.Join(dir, "root.pem"), kms.ECDSAP256, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	key, _, err := ring.OpenOrCreate(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	cfg := fastConfig(client, "a")
	cfg.Signer, cfg.Keys = key, ring
	cfg.RootTTL = 48 * time.Hour
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ensureSecret(ctx); err != nil {
		t.Fatal(err)
	}
	s.leading.Store(true)
	r := s.Rotation(rotation.Policy{PropagationDelay: time.Hour, MaxTTL: time.Hour, RetireMargin: time.Minute})
	old := s.Authority().Cert
	noKeyInSecret := func(when string) {
		t.Helper()
		sec, err := client.CoreV1().Secrets(testNS).Get(ctx, DefaultSecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(sec.Data[CAKeyKey]) != 0 || len(sec.Data[NextCAKeyKey]) != 0 {
			t.Fatalf("%s: the Secret holds a private key", when)
		}
	}
	noKeyInSecret("created")
	due := old.NotAfter.Add(-23 * time.Hour)
	for i, step := range []struct {
		at   time.Time
		want string
	}{{due, "prepare"}, {due.Add(time.Hour), "activate"}, {due.Add(2*time.Hour + 2*time.Minute), "retire"}} {
		s.now = func() time.Time { return step.at }
		got, err := r.Step(ctx, 24*time.Hour)
		if err != nil || got != step.want {
			t.Fatalf("step %d = %q, %v; want %q", i, got, err, step.want)
		}
		noKeyInSecret(step.want)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "castellan-root-*.pem"))
	if len(files) != 1 {
		t.Fatalf("the key store holds %d new keys, want 1: %v", len(files), files)
	}
	next, err := kms.Open(ctx, "file://"+files[0], kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	a := s.Authority()
	if a.Cert.Equal(old) || len(a.Roots) != 1 || !a.Cert.PublicKey.(*ecdsa.PublicKey).Equal(next.Public()) {
		t.Fatal("after the rotation the CA does not sign under a root of the new key in the store, alone in the bundle")
	}
	// A restart with the same key store signs under the new root.
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.ensureSecret(ctx); err != nil || !s2.Authority().Cert.Equal(a.Cert) {
		t.Fatalf("restart after rotation: %v", err)
	}
}

// TestRotationRefusedWithoutKeyStore: a root key held outside the Secret
// with no key store to create the next key in is never followed by a
// software key; the leader takes no step, and a hand-run prepare says why.
func TestRotationRefusedWithoutKeyStore(t *testing.T) {
	ctx := context.Background()
	key, _, err := kms.OpenOrCreate(ctx, "file://"+filepath.Join(t.TempDir(), "root.pem"), kms.ECDSAP256, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	cfg := fastConfig(client, "a")
	cfg.Signer = key
	cfg.RootTTL = 48 * time.Hour
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ensureSecret(ctx); err != nil {
		t.Fatal(err)
	}
	s.leading.Store(true)
	if got, err := s.Rotation(rotation.Policy{}).Step(ctx, 47*time.Hour); got != "" || err != nil {
		t.Fatalf("Step = %q, %v; want nothing", got, err)
	}
	r := &rotation.Engine{Backend: &SecretBackend{Client: client, Namespace: testNS, SecretName: DefaultSecretName, TrustDomain: testTD}}
	// The rotation taken by hand has no key store either.
	err = r.Prepare(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "--signer-key-uri") {
		t.Fatalf("Prepare = %v, want a refusal naming --signer-key-uri", err)
	}
}
