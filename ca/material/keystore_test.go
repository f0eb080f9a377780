package material

import (
	"github.com/castellan-mesh/castellan/ca/rotation"

	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeKeys is a KeyStore that keeps keys in memory, as an HSM keeps them
// outside the data directory. readOnly refuses to create keys, as a
// store the CA may only sign with.
type fakeKeys struct {
	mu       sync.Mutex
	keys     map[string]crypto.Signer
	readOnly bool
}

func newFakeKeys(t *testing.T) *fakeKeys {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeKeys{keys: map[string]crypto.Signer{"": k}}
}

func (f *fakeKeys) Open(_ context.Context, name string) (crypto.Signer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if k, ok := f.keys[name]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("fake: no key %q", name)
}

func (f *fakeKeys) Create(_ context.Context, name string) (crypto.Signer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readOnly {
		return nil, errors.New("fake: permission denied")
	}
	if _, ok := f.keys[name]; ok {
		return nil, fmt.Errorf("fake: key %q exists", name)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	f.keys[name] = k
	return k, nil
}

func (f *fakeKeys) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.keys)
}

// noKeyFiles fails if a key file was written to dir.
func noKeyFiles(t *testing.T, dir string) {
	t.Helper()
	for _, f := range []string{RootKeyFile, NextRootKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Fatalf("%s exists in the data directory although the root key is held outside it (%v)", f, err)
		}
	}
}

// TestExternalKeyAutomaticRotation rotates a self-signed root whose key
// is held outside the data directory (an HSM, Vault Transit): every step
// works, the next root's key is created in the same key store, no
// software key is ever written, and a restart signs under the new root.
func TestExternalKeyAutomaticRotation(t *testing.T) {
	dir := t.TempDir()
	keys := newFakeKeys(t)
	s, err := open(t, dir, func(c *Config) { c.Keys = keys; c.RootTTL = 48 * time.Hour })
	if err != nil {
		t.Fatal(err)
	}
	old := s.Authority().Cert
	now := time.Now()
	r := &rotation.Engine{Backend: &Backend{Dir: dir, TrustDomain: td, Keys: keys}, Policy: rotation.Policy{PropagationDelay: time.Minute, MaxTTL: time.Minute}, Now: func() time.Time { return now }, Logger: quiet()}
	// Status needs no key store: "castellan ca rotate status" has none.
	bare := &rotation.Engine{Backend: &Backend{Dir: dir}, Policy: r.Policy, Now: r.Now}
	ctx := context.Background()
	steps := []struct {
		advance time.Duration
		want    string
		phase   rotation.Phase
	}{
		{0, "", rotation.PhaseSteady},
		{25 * time.Hour, "prepare", rotation.PhasePrepared},
		{0, "", rotation.PhasePrepared},
		{time.Minute, "activate", rotation.PhaseActivated},
		{time.Minute, "", rotation.PhaseActivated},
		{10 * time.Minute, "retire", rotation.PhaseSteady},
		{0, "", rotation.PhaseSteady},
	}
	for i, st := range steps {
		now = now.Add(st.advance)
		did, err := r.Step(ctx, 24*time.Hour)
		if err != nil || did != st.want {
			t.Fatalf("step %d: did %q (%v), want %q", i, did, err, st.want)
		}
		noKeyFiles(t, dir)
		status, err := bare.Status(context.Background())
		if err != nil {
			t.Fatalf("step %d: status without the key store: %v", i, err)
		}
		if status.Phase != st.phase || status.Mode != rotation.ModeSelfSigned {
			t.Fatalf("step %d: status %s/%s, want phase %s", i, status.Mode, status.Phase, st.phase)
		}
		s.Reload()
		if err := s.LastReloadError(); err != nil {
			t.Fatalf("step %d: reload: %v", i, err)
		}
		active := 0
		for _, root := range status.Roots {
			if root.State == rotation.RootActive {
				active++
				if !root.Cert.Equal(s.Authority().Cert) {
					t.Fatalf("step %d: status says %s is active, the CA signs under %s", i, root.Serial, s.Authority().Cert.SerialNumber)
				}
			}
		}
		if active != 1 {
			t.Fatalf("step %d: %d active roots in %+v", i, active, status.Roots)
		}
	}
	if keys.count() != 2 {
		t.Fatalf("the key store holds %d keys, want the first and the next root's", keys.count())
	}
	a := s.Authority()
	if a.Cert.Equal(old) || len(a.Roots) != 1 {
		t.Fatal("after the rotation the old root still signs or is still trusted")
	}
	if _, ok := a.Signer.(*ecdsa.PrivateKey); !ok || matchingRoot([]*x509.Certificate{a.Cert}, a.Signer) == nil {
		t.Fatal("the CA does not sign with the new root's key")
	}
	// A restart with the configured key store signs under the new root.
	s2, err := open(t, dir, func(c *Config) { c.Keys = keys })
	if err != nil || !s2.Authority().Cert.Equal(a.Cert) {
		t.Fatalf("restart after rotation: %v", err)
	}
}

// TestExternalKeyRotationRefused: a CA whose root key is held outside the
// data directory never mints a software key for its next root. Without a
// key store, or with one that cannot create keys, prepare fails and says
// why; status still works.
func TestExternalKeyRotationRefused(t *testing.T) {
	tests := []struct {
		name    string
		keys    func(*fakeKeys) KeyStore
		wantErr string
	}{
		{"no key store", func(*fakeKeys) KeyStore { return nil }, "no key store"},
		{"read-only key store", func(k *fakeKeys) KeyStore { k.readOnly = true; return k }, "permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			keys := newFakeKeys(t)
			if _, err := open(t, dir, func(c *Config) { c.Keys = keys }); err != nil {
				t.Fatal(err)
			}
			r := &rotation.Engine{Backend: &Backend{Dir: dir, TrustDomain: td, Keys: tt.keys(keys)}, Logger: quiet()}
			did, err := r.Step(context.Background(), 100*365*24*time.Hour)
			if err == nil || did != "prepare" || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "next root") {
				t.Fatalf("Step: did %q, err %v; want a prepare that fails with %q", did, err, tt.wantErr)
			}
			noKeyFiles(t, dir)
			for _, f := range []string{NextRootCertFile, RotationFile} {
				if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
					t.Fatalf("a failed prepare left %s (%v)", f, err)
				}
			}
			st, err := r.Status(context.Background())
			if err != nil || st.Phase != rotation.PhaseSteady || len(st.Roots) != 1 || st.Roots[0].State != rotation.RootActive {
				t.Fatalf("status: %+v, %v", st, err)
			}
		})
	}
}
