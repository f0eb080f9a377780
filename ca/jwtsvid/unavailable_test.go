package jwtsvid_test

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/kms"
)

// deniedStore is a key store whose Create is refused until allowed, as a
// Vault token without the right to create keys is.
type deniedStore struct {
	*kms.Ring
	allowed atomic.Bool
}

var errDenied = errors.New("permission denied")

func (d *deniedStore) Create(ctx context.Context, name string) (crypto.Signer, error) {
	if !d.allowed.Load() {
		return nil, errDenied
	}
	return d.Ring.Create(ctx, name)
}

// TestKeyStoreRefusal checks that a key store that refuses the first JWT
// key does not stop the CA: Open succeeds, JWT-SVIDs are refused with the
// reason, no authority is published, and once the store allows it the
// keys come without a restart.
func TestKeyStoreRefusal(t *testing.T) {
	dir := t.TempDir()
	ring, err := kms.NewRing(context.Background(), "file://"+filepath.Join(dir, "jwt-key.pem"), kms.ECDSAP256, kms.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ring.Close() })
	store := &deniedStore{Ring: ring}
	ks, err := jwtsvid.Open(context.Background(), jwtsvid.Config{Dir: dir, Keys: store, ReloadInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open failed when only the JWT key store did: %v", err)
	}
	if _, err := ks.Mint(context.Background(), id, []string{"x"}, jwtsvid.DefaultTTL); !errors.Is(err, jwtsvid.ErrNoKey) || !errors.Is(err, errDenied) {
		t.Fatalf("Mint without keys: %v, want ErrNoKey with the store's reason", err)
	}
	if n := len(ks.JWTAuthorities()); n != 0 {
		t.Fatalf("%d authorities published without keys", n)
	}
	if ks.Err() == nil {
		t.Fatal("Err is nil without keys")
	}

	changed := ks.Changed()
	store.allowed.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ks.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the keys did not come once the store allowed them")
	}
	if ks.Err() != nil {
		t.Fatalf("Err after recovery: %v", ks.Err())
	}
	tok := mint(t, ks, "x")
	if tok == nil || len(ks.JWTAuthorities()) != 1 {
		t.Fatalf("after recovery: token %v, %d authorities", tok, len(ks.JWTAuthorities()))
	}
}
