package jwtsvid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
)

// Rotator takes the steps of a JWT key rotation in a data directory: the
// X.509 root's phases (package rotation), for the JWT signing key. A
// running CA on the same directory picks every step up on its next
// reload.
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

func (r *Rotator) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Rotator) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func (r *Rotator) policy() rotation.Policy {
	ttl := r.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return rotation.Policy{PropagationDelay: r.PropagationDelay, MaxTTL: ttl, RetireMargin: r.RetireMargin}
}

func (r *Rotator) store() StateStore {
	if r.State != nil {
		return r.State
	}
	return DirState(r.Dir)
}

// begin reads the state and refuses a step that needs phase want. It
// returns the state's stored encoding for the Save that ends the step.
func (r *Rotator) begin(ctx context.Context, want rotation.Phase) (State, []byte, error) {
	if r.Keys == nil {
		return State{}, nil, errors.New("jwtsvid: no key store configured")
	}
	st, raw, err := r.store().Load(ctx)
	if err != nil {
		return State{}, nil, fmt.Errorf("%w (start the CA once to create its JWT signing key)", err)
	}
	if st.Phase != want {
		return State{}, nil, phaseError(st.Phase, want)
	}
	return st, raw, nil
}

// phaseError refuses a step that needs phase want while the rotation is
// in phase, saying which step would come next.
func phaseError(phase, want rotation.Phase) error {
	switch want {
	case rotation.PhaseSteady:
		return fmt.Errorf("jwtsvid: a JWT key rotation is already in progress (phase %s); activate or retire it first", phase)
	case rotation.PhasePrepared:
		return fmt.Errorf("jwtsvid: no JWT key to activate (phase %s); prepare one first", phase)
	}
	return fmt.Errorf("jwtsvid: no JWT key to retire (phase %s)", phase)
}

// Prepare creates a new key in the key store and publishes it; the active
// key still signs.
func (r *Rotator) Prepare(ctx context.Context) error {
	st, raw, err := r.begin(ctx, rotation.PhaseSteady)
	if err != nil {
		return err
	}
	return r.prepare(ctx, st, raw)
}

// prepare is Prepare on the state st, read as raw.
func (r *Rotator) prepare(ctx context.Context, st State, raw []byte) error {
	name := NewKeyName()
	if _, err := r.Keys.Create(ctx, name); err != nil {
		return fmt.Errorf("jwtsvid: creating the next JWT signing key %s: %w", name, err)
	}
	k, err := openKey(ctx, r.Keys, name)
	if err != nil {
		return err
	}
	st.Phase, st.Next, st.PreparedAt = rotation.PhasePrepared, name, r.now().UTC()
	if err := r.store().Save(ctx, st, raw); err != nil {
		return err
	}
	r.log().Info("prepared a JWT signing key: published, not signing yet", "key", name, "kid", k.ID,
		"activate_after", r.policy().ActivateAfter(st.PreparedAt).Format(time.RFC3339))
	return nil
}

// Activate makes the prepared key sign, once it has been published for
// the propagation delay (or with force); the previous key stays published.
func (r *Rotator) Activate(ctx context.Context, force bool) error {
	st, raw, err := r.begin(ctx, rotation.PhasePrepared)
	if err != nil {
		return err
	}
	return r.activate(ctx, st, raw, force)
}

// activate is Activate on the state st, read as raw.
func (r *Rotator) activate(ctx context.Context, st State, raw []byte, force bool) error {
	now := r.now().UTC()
	p := r.policy()
	if ready := p.ActivateAfter(st.PreparedAt); now.Before(ready) && !force {
		return fmt.Errorf("jwtsvid: the next JWT key has been published since %s; wait until %s for it to reach every agent, or force",
			st.PreparedAt.Format(time.RFC3339), ready.Format(time.RFC3339))
	}
	if _, err := openKey(ctx, r.Keys, st.Next); err != nil {
		return err
	}
	st = State{Phase: rotation.PhaseActivated, Active: st.Next, Previous: st.Active, PreparedAt: st.PreparedAt,
		ActivatedAt: now, RetireAfter: p.RetireAfter(now), Retired: st.Retired}
	if err := r.store().Save(ctx, st, raw); err != nil {
		return err
	}
	r.log().Info("activated the JWT signing key", "key", st.Active, "retire_after", st.RetireAfter.Format(time.RFC3339))
	return nil
}

// Retire stops publishing the previous key, once no token it signed can
// be valid (or with force): tokens it signed no longer verify.
func (r *Rotator) Retire(ctx context.Context, force bool) error {
	st, raw, err := r.begin(ctx, rotation.PhaseActivated)
	if err != nil {
		return err
	}
	return r.retire(ctx, st, raw, force)
}

// retire is Retire on the state st, read as raw.
func (r *Rotator) retire(ctx context.Context, st State, raw []byte, force bool) error {
	if now := r.now(); now.Before(st.RetireAfter) && !force {
		return fmt.Errorf("jwtsvid: JWT-SVIDs signed by the previous key may be valid until %s; retire after that, or force",
			st.RetireAfter.Format(time.RFC3339))
	}
	retired := append(st.Retired, st.Previous)
	if len(retired) > maxRetired {
		retired = retired[len(retired)-maxRetired:]
	}
	old := st.Previous
	// ActivatedAt stays: it is when the active key began signing, from
	// which the automatic rotation counts its age (see Step).
	st = State{Phase: rotation.PhaseSteady, Active: st.Active, ActivatedAt: st.ActivatedAt, Retired: retired}
	if err := r.store().Save(ctx, st, raw); err != nil {
		return err
	}
	r.log().Info("retired the previous JWT signing key: no longer published", "key", old)
	return nil
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
	if r.Keys == nil {
		return nil, errors.New("jwtsvid: no key store configured")
	}
	st, _, err := r.store().Load(ctx)
	if err != nil {
		return nil, err
	}
	keys, err := LoadKeys(ctx, r.Keys, st)
	if err != nil {
		return nil, err
	}
	out := &Status{Phase: st.Phase, PreparedAt: st.PreparedAt, ActivatedAt: st.ActivatedAt, RetireAfter: st.RetireAfter}
	if st.Phase == rotation.PhasePrepared {
		out.ActivateAfter = r.policy().ActivateAfter(st.PreparedAt)
	}
	for _, k := range keys.Published {
		out.Keys = append(out.Keys, KeyStatus{KeyID: k.ID, Name: k.Name, State: k.State})
	}
	return out, nil
}
