// Package jwtsvid signs JWT-SVIDs for the CA, with a signing key of its
// own (ECDSA P-256, ES256) kept in a key store of package kms like every
// CA key, and publishes the keys that verify them (the JWT authorities of
// the trust domain's SPIFFE bundle).
//
// The keys rotate with the X.509 root's three phases (package rotation):
// prepare creates a key that is published but does not sign yet; activate,
// once the published keys have reached every agent, makes it sign while
// the previous key stays published; retire, once no token signed by the
// previous key can still be valid, drops it. The state lives in the data
// directory (StateFile); a running KeySet picks every step up on its next
// reload. Rotator takes the steps, by hand or by itself under a policy
// (auto.go), with the root's rotation engine (rotation.EngineOf).
package jwtsvid

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/broadcast"
	"github.com/go-jose/go-jose/v4"
)

// KeyStore holds the JWT signing keys; kms.Ring implements it (with
// algorithm ecdsa-p256).
type KeyStore interface {
	// Open returns the key named name.
	Open(ctx context.Context, name string) (crypto.Signer, error)
	// Create generates a new key named name; it never replaces a key.
	Create(ctx context.Context, name string) (crypto.Signer, error)
}

// Config configures a KeySet. Zero values select the noted defaults.
type Config struct {
	// Dir is the CA's data directory, which holds StateFile. Required
	// unless State is set.
	Dir string
	// State, if set, keeps the State instead of Dir (the CA's Kubernetes
	// Secret).
	State StateStore
	// Keys holds the keys. Required.
	Keys KeyStore
	// ReloadInterval is how often Run checks StateFile for rotation
	// steps. Default: 5s.
	ReloadInterval time.Duration
	// StateChanged, if set, returns a channel closed at the next change
	// of what holds State (the watch of the CA's Kubernetes Secret): Run
	// then reloads at once, and still every ReloadInterval.
	StateChanged func() <-chan struct{}
	// Logger receives key events. Default: slog.Default().
	Logger *slog.Logger
}

// Key is one JWT signing key.
type Key struct {
	// Name is the key's name in the key store.
	Name string
	// ID is the key's "kid": its RFC 7638 JWK thumbprint (SHA-256,
	// base64url).
	ID string
	// Public is the ECDSA P-256 public key.
	Public *ecdsa.PublicKey
	signer crypto.Signer
}

// KeyState is the role of a published key.
type KeyState string

// The roles of a published key: the rotation's root states.
const (
	KeyActive   = KeyState(rotation.RootActive)
	KeyPrepared = KeyState(rotation.RootPrepared)
	KeyRetiring = KeyState(rotation.RootRetiring)
)

// Keys is a consistent view of the keys: the one that signs and every
// published one.
type Keys struct {
	State  State
	Active *Key
	// Published holds the active key, and the prepared or retiring one,
	// with their roles.
	Published []PublishedKey
}

// PublishedKey is a key with its role.
type PublishedKey struct {
	*Key
	State KeyState
}

// KeySet is the CA's JWT signing keys, kept current with StateFile.
type KeySet struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // serializes reloads
	raw     []byte     // the StateFile last loaded
	cur     atomic.Pointer[Keys]
	changed broadcast.Signal // notified after each change of cur
	errMu   sync.Mutex
	initErr error // why no keys are loaded yet, under errMu
}

// Open loads the keys StateFile names, creating the first key in the key
// store (and StateFile) on the first start.
func Open(ctx context.Context, cfg Config) (*KeySet, error) {
	if cfg.State == nil && cfg.Dir != "" {
		cfg.State = DirState(cfg.Dir)
	}
	switch {
	case cfg.State == nil:
		return nil, errors.New("jwtsvid: no data directory configured")
	case cfg.Keys == nil:
		return nil, errors.New("jwtsvid: no key store configured")
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = 5 * time.Second
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	s := &KeySet{cfg: cfg, log: cfg.Logger}
	if err := s.init(ctx); err != nil {
		// The X.509 CA does not depend on the JWT keys: it serves on, JWT-SVIDs
		// are refused as unavailable, and Run tries again.
		s.setInitErr(err)
		s.log.Error("JWT-SVIDs are unavailable until the JWT signing keys can be loaded; X.509 issuance is not affected", "error", err)
	}
	return s, nil
}

// init loads the keys the state names, creating the first key in the key
// store (and the state) when there is no state yet.
func (s *KeySet) init(ctx context.Context) error {
	cfg := s.cfg
	st, raw, err := cfg.State.Load(ctx)
	if err == nil && st.Phase == rotation.PhaseSteady && st.ActivatedAt.IsZero() {
		// A state written before the activation time was recorded: the
		// key's age, by which it rotates, counts from now.
		st.ActivatedAt = time.Now().UTC()
		if err := cfg.State.Save(ctx, st, raw); err != nil && !errors.Is(err, ErrConflict) {
			return err
		}
		s.log.Info("the JWT signing key's activation time was not recorded; its age counts from now", "key", st.Active)
	}
	if errors.Is(err, ErrNoState) {
		name := newKeyName()
		if _, err := cfg.Keys.Create(ctx, name); err != nil {
			return fmt.Errorf("jwtsvid: creating the first JWT signing key %s: %w", name, err)
		}
		switch err := cfg.State.Save(ctx, State{Phase: rotation.PhaseSteady, Active: name, ActivatedAt: time.Now().UTC()}, nil); {
		case errors.Is(err, ErrConflict):
			// Another replica created the first key at the same time:
			// its state is the one loaded below.
		case err != nil:
			return err
		default:
			s.log.Info("created the JWT-SVID signing key", "key", name)
		}
	} else if err != nil {
		return err
	}
	_, err = s.Reload(ctx)
	return err
}

func (s *KeySet) setInitErr(err error) {
	s.errMu.Lock()
	s.initErr = err
	s.errMu.Unlock()
}

// Err returns why no JWT signing key is loaded, or nil once one is.
func (s *KeySet) Err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.initErr
}

// KeyNamePrefix starts the name of every JWT signing key. Like the names
// of the next roots' keys ("castellan-root-..."), it starts with
// "castellan-", so that one key-store permission (a Vault policy on
// transit/keys/castellan-*) covers every key the CA creates.
const KeyNamePrefix = "castellan-jwt-"

// newKeyName returns a fresh name for a JWT signing key.
func newKeyName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return KeyNamePrefix + hex.EncodeToString(b[:])
}

// Keys returns the current keys.
func (s *KeySet) Keys() *Keys { return s.cur.Load() }

// JWTAuthorities returns the published keys (active, prepared, retiring)
// by key ID, for the trust domain's SPIFFE bundle.
func (s *KeySet) JWTAuthorities() map[string]crypto.PublicKey {
	out := map[string]crypto.PublicKey{}
	if k := s.cur.Load(); k != nil {
		for _, p := range k.Published {
			out[p.ID] = p.Public
		}
	}
	return out
}

// Changed returns a channel closed at the next change of the keys.
func (s *KeySet) Changed() <-chan struct{} { return s.changed.C() }

// Run reloads StateFile every ReloadInterval, and at each StateChanged,
// until ctx ends. A state that cannot be loaded is logged and the last
// good keys stay.
func (s *KeySet) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ReloadInterval)
	defer t.Stop()
	var lastErr string
	stateChanged := s.stateChanged()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-stateChanged:
		}
		// Taken before the state is read: a change during the reload
		// wakes the next wait.
		stateChanged = s.stateChanged()
		rctx, cancel := context.WithTimeout(ctx, rotation.KeyOpTimeout)
		var changed bool
		var err error
		if s.cur.Load() == nil {
			if err = s.init(rctx); err == nil {
				changed = true
			}
		} else {
			changed, err = s.Reload(rctx)
		}
		cancel()
		switch {
		case err != nil && err.Error() != lastErr:
			s.log.Error("could not reload the JWT signing keys; the last good ones stay", "error", err)
			lastErr = err.Error()
		case err == nil:
			lastErr = ""
			if changed {
				k := s.Keys()
				s.log.Info("JWT signing keys reloaded", "phase", string(k.State.Phase), "active_kid", k.Active.ID, "published", len(k.Published))
			}
		}
	}
}

// stateChanged returns the channel of the next StateChanged, or nil
// (never ready) without one.
func (s *KeySet) stateChanged() <-chan struct{} {
	if s.cfg.StateChanged == nil {
		return nil
	}
	return s.cfg.StateChanged()
}

// Reload loads the state now if it changed since the last load (as Run
// does every ReloadInterval), and reports whether it did.
func (s *KeySet) Reload(ctx context.Context) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, raw, err := s.cfg.State.Load(ctx)
	if err != nil {
		return false, err
	}
	if s.cur.Load() != nil && bytes.Equal(raw, s.raw) {
		return false, nil
	}
	keys, err := loadKeys(ctx, s.cfg.Keys, st)
	if err != nil {
		return false, err
	}
	s.cur.Store(keys)
	s.raw = raw
	s.setInitErr(nil)
	s.changed.Notify()
	return true, nil
}

// loadKeys opens the keys st names.
func loadKeys(ctx context.Context, store KeyStore, st State) (*Keys, error) {
	out := &Keys{State: st}
	for _, p := range []struct {
		name  string
		state KeyState
	}{{st.Active, KeyActive}, {st.Next, KeyPrepared}, {st.Previous, KeyRetiring}} {
		if p.name == "" {
			continue
		}
		k, err := openKey(ctx, store, p.name)
		if err != nil {
			return nil, err
		}
		if p.state == KeyActive {
			out.Active = k
		}
		out.Published = append(out.Published, PublishedKey{Key: k, State: p.state})
	}
	return out, nil
}

// openKey opens the key name and checks that it can sign ES256.
func openKey(ctx context.Context, store KeyStore, name string) (*Key, error) {
	signer, err := store.Open(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("jwtsvid: JWT signing key %s: %w", name, err)
	}
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("jwtsvid: JWT signing key %s is a %T, not ECDSA P-256 (ES256)", name, signer.Public())
	}
	kid, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	return &Key{Name: name, ID: kid, Public: pub, signer: signer}, nil
}

// KeyID returns the key ID of pub: its RFC 7638 JWK thumbprint (SHA-256),
// base64url without padding.
func KeyID(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("jwtsvid: key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}
