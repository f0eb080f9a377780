package jwtsvid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
)

// Rotator takes the steps of a JWT key rotation: the X.509 root's
// (rotation.EngineOf), with the JWT signing keys as the authorities and
// their State as the backend. A running CA picks every step up on its
// next reload.
type Rotator struct {
	// Dir is the CA's data directory, which holds StateFile, unless
	// State is set.
	Dir string
	// State, if set, keeps the State instead of Dir (the CA's Kubernetes
	// Secret).
	State StateStore
	// Keys is the key store the CA's JWT keys are in. Required.
	Keys KeyStore
	// PropagationDelay is how long a prepared key must be published
	// before it may sign. Default: rotation.DefaultPropagationDelay.
	PropagationDelay time.Duration
	// TTL is the CA's JWT-SVID lifetime: the previous key stays published
	// that long after activation, plus RetireMargin. Default: DefaultTTL.
	TTL time.Duration
	// RetireMargin is added to TTL, for clock skew. Default:
	// rotation.DefaultRetireMargin.
	RetireMargin time.Duration
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
	// Logger receives rotation events. Default: slog.Default().
	Logger *slog.Logger
}

func (r *Rotator) policy() rotation.Policy {
	ttl := r.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return rotation.Policy{PropagationDelay: r.PropagationDelay, MaxTTL: ttl, RetireMargin: r.RetireMargin}
}

// engine is the rotation engine over the JWT keys; a key that has signed
// for every is due for rotation (0: never).
func (r *Rotator) engine(every time.Duration) *rotation.EngineOf[*Key, keyKind] {
	state := r.State
	if state == nil {
		state = DirState(r.Dir)
	}
	return &rotation.EngineOf[*Key, keyKind]{Backend: &backend{state: state, keys: r.Keys}, Policy: r.policy(), MaxAge: every, Now: r.Now, Logger: r.Logger}
}

// Prepare creates a new key in the key store and publishes it; the active
// key still signs.
func (r *Rotator) Prepare(ctx context.Context) error { return r.engine(0).Prepare(ctx, "") }

// Activate makes the prepared key sign, once it has been published for
// the propagation delay (or with force); the previous key stays published.
func (r *Rotator) Activate(ctx context.Context, force bool) error {
	return r.engine(0).Activate(ctx, force)
}

// Retire stops publishing the previous key, once no token it signed can
// be valid (or with force): tokens it signed no longer verify.
func (r *Rotator) Retire(ctx context.Context, force bool) error {
	return r.engine(0).Retire(ctx, force)
}

// Status is the state of the JWT keys and of any rotation.
type Status struct {
	Phase         rotation.Phase `json:"phase"`
	PreparedAt    time.Time      `json:"prepared_at,omitzero"`
	ActivatedAt   time.Time      `json:"activated_at,omitzero"`
	ActivateAfter time.Time      `json:"activate_after,omitzero"`
	RetireAfter   time.Time      `json:"retire_after,omitzero"`
	Keys          []KeyStatus    `json:"keys"`
}

// KeyStatus describes one published key.
type KeyStatus struct {
	KeyID string   `json:"kid"`
	Name  string   `json:"name"`
	State KeyState `json:"state"`
}

// Status reports the published keys and the rotation phase.
func (r *Rotator) Status(ctx context.Context) (*Status, error) {
	s, err := r.engine(0).Status(ctx)
	if err != nil {
		return nil, err
	}
	out := &Status{Phase: s.Phase, PreparedAt: s.PreparedAt, ActivatedAt: s.ActivatedAt, ActivateAfter: s.ActivateAfter, RetireAfter: s.RetireAfter}
	for _, k := range s.Roots {
		out.Keys = append(out.Keys, KeyStatus{KeyID: k.Serial, Name: k.Subject, State: KeyState(k.State)})
	}
	return out, nil
}

// keyKind is the rotation.Kind of JWT signing keys: known by their name
// in the key store (which State.Retired records); they do not expire.
type keyKind struct{}

func (keyKind) Noun() string                               { return "JWT key" }
func (keyKind) Equal(a, b *Key) bool                       { return a.Name == b.Name }
func (keyKind) Fingerprint(k *Key) string                  { return k.Name }
func (keyKind) NotAfter(*Key) time.Time                    { return time.Time{} }
func (keyKind) CheckNext(*Key, time.Time, time.Time) error { return nil }
func (keyKind) Describe(k *Key, role rotation.RootState) rotation.RootStatus {
	return rotation.RootStatus{Subject: k.Name, Serial: k.ID, State: role}
}

// backend is the rotation backend of the JWT keys: their State in a
// StateStore, the keys in a KeyStore.
type backend struct {
	state StateStore
	keys  KeyStore
}

// Load implements rotation.BackendOf: the keys the State names, opened.
func (b *backend) Load(ctx context.Context) (*rotation.MaterialOf[*Key], error) {
	if b.keys == nil {
		return nil, errors.New("jwtsvid: no key store configured")
	}
	st, raw, err := b.state.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w (start the CA once to create its JWT signing key)", err)
	}
	keys, err := loadKeys(ctx, b.keys, st)
	if err != nil {
		return nil, err
	}
	m := &rotation.MaterialOf[*Key]{Active: keys.Active, Raw: raw, State: rotation.State{
		Phase: st.Phase, PreparedAt: st.PreparedAt, ActivatedAt: st.ActivatedAt, RetireAfter: st.RetireAfter,
		Key: st.Active, NextKey: st.Next, Retired: st.Retired,
	}}
	for _, k := range keys.Published {
		m.Bundle = append(m.Bundle, k.Key)
		if k.State == KeyPrepared {
			m.Next = []*Key{k.Key}
		}
	}
	return m, nil
}

// Mint implements rotation.BackendOf: a new key in the key store.
func (b *backend) Mint(ctx context.Context, _ *rotation.MaterialOf[*Key], from string, _ time.Time) (*rotation.MintedOf[*Key], error) {
	if from != "" {
		return nil, fmt.Errorf("jwtsvid: a JWT signing key is created in the key store, not taken from %s", from)
	}
	name := newKeyName()
	if _, err := b.keys.Create(ctx, name); err != nil {
		return nil, fmt.Errorf("jwtsvid: creating the next JWT signing key %s: %w", name, err)
	}
	k, err := openKey(ctx, b.keys, name)
	if err != nil {
		return nil, err
	}
	return &rotation.MintedOf[*Key]{Roots: []*Key{k}, Key: name}, nil
}

// Save implements rotation.BackendOf: the State after the step, written
// over the one m was read from (or ErrConflict). The previous key is the
// one active before an activation; the oldest retired names are dropped.
func (b *backend) Save(ctx context.Context, m *rotation.MaterialOf[*Key], c rotation.ChangeOf[*Key]) error {
	st := State{
		Phase: c.State.Phase, Active: c.State.Key, Next: c.State.NextKey, PreparedAt: c.State.PreparedAt,
		ActivatedAt: c.State.ActivatedAt, RetireAfter: c.State.RetireAfter, Retired: c.State.Retired,
	}
	if c.Step == rotation.StepActivate {
		st.Previous = m.State.Key
	}
	if n := len(st.Retired); n > maxRetired {
		st.Retired = st.Retired[n-maxRetired:]
	}
	raw, _ := m.Raw.([]byte)
	return b.state.Save(ctx, st, raw)
}
