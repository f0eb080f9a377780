package rotation

import (
	"cmp"
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// The steps of a rotation, as Step returns them and Backend.Save receives
// them.
const (
	StepPrepare  = "prepare"
	StepActivate = "activate"
	StepRetire   = "retire"
)

// KeyOpTimeout bounds one KeyStore call made where no caller's deadline
// applies, as when material is reloaded after a change: an HSM or a Vault
// that hangs then fails the reload instead of holding it forever.
const KeyOpTimeout = 30 * time.Second

// KeyStore holds a CA's root keys: the configured key (name "") and the
// keys that rotations created, by the name State records. A rotation
// creates the next root's key in the store that holds the active one, so
// that a key in an HSM is never followed by a software key. kms.Ring
// implements it.
type KeyStore interface {
	// Open returns the key named name; "" names the configured key.
	Open(ctx context.Context, name string) (crypto.Signer, error)
	// Create generates a new key named name; it never replaces a key.
	Create(ctx context.Context, name string) (crypto.Signer, error)
}

// The engine over X.509 roots, which every CA mode rotates.
type (
	// Engine takes the steps of a root rotation.
	Engine = EngineOf[*x509.Certificate, Roots]
	// Backend is where a CA mode keeps its roots.
	Backend = BackendOf[*x509.Certificate]
	// Material is what a Backend read.
	Material = MaterialOf[*x509.Certificate]
	// Minted is the next root a Backend made or took.
	Minted = MintedOf[*x509.Certificate]
	// Change is the outcome of a step that a Backend persists.
	Change = ChangeOf[*x509.Certificate]
)

// MaterialOf is what a Backend read: the rotation state, the trust bundle
// and the roles of its authorities.
type MaterialOf[A comparable] struct {
	// Mode is the CA mode the material is kept in.
	Mode Mode
	// State is where the rotation stands.
	State State
	// Bundle holds the authorities the CA publishes (its trust bundle).
	Bundle []A
	// Active is the authority the CA signs with now.
	Active A
	// Next holds the prepared authorities, from prepare until the backend
	// drops them (at activation or retirement); nil when none.
	Next []A
	// Manual, if set, says why the CA does not take automatic steps on
	// this material (it is rotated by hand, or not at all).
	Manual error
	// Raw is the backend's own copy of what it read (a Secret, say),
	// handed back to Mint and Save.
	Raw any
}

// MintedOf is the next authority a Backend made or took for a prepare.
type MintedOf[A comparable] struct {
	// Roots are the new authorities that join the bundle; the first is
	// the one the CA will sign with.
	Roots []A
	// Key names the new authority's key in its key store, when one was
	// created.
	Key string
	// Issuer names the upstream issuer of the new root, if any.
	Issuer string
}

// ChangeOf is the outcome of a step that a Backend persists.
type ChangeOf[A comparable] struct {
	// Step is StepPrepare, StepActivate or StepRetire.
	Step string
	// State is the rotation state after the step.
	State State
	// Bundle is the trust bundle after the step.
	Bundle []A
	// Minted is what a prepare made; nil for the other steps.
	Minted *MintedOf[A]
	// Force is set when the caller asked to skip the waits; a backend
	// check that only guards timing is skipped too.
	Force bool
}

// BackendOf is where a CA keeps the authorities of one kind: for roots a
// data directory, a Vault PKI issuer with its intermediate in a data
// directory, or a Kubernetes Secret. The Engine takes the steps; a
// Backend reads, makes the next authority, and writes.
type BackendOf[A comparable] interface {
	// Load reads the material.
	Load(ctx context.Context) (*MaterialOf[A], error)
	// Mint makes the next authority for a prepare at now, or takes it
	// from from (a cacerts directory, an upstream issuer). A new key is
	// created in the key store that holds the active key.
	Mint(ctx context.Context, m *MaterialOf[A], from string, now time.Time) (*MintedOf[A], error)
	// Save persists c, and whatever else the step means for the backend
	// (the new key signing from activation on, the prepared files going
	// at retirement). It may refuse a step the backend cannot take yet.
	Save(ctx context.Context, m *MaterialOf[A], c ChangeOf[A]) error
}

// EngineOf takes the steps of a rotation of authorities of kind K on a
// Backend: it checks the phase and the waits of the Policy, has the
// backend make the next authority, works out the state and bundle after
// each step, and has the backend persist them. It is the one rotation
// state machine: Engine instantiates it for X.509 roots, package jwtsvid
// for JWT signing keys.
type EngineOf[A comparable, K Kind[A]] struct {
	// Backend keeps the material. Required.
	Backend BackendOf[A]
	// Policy holds the waits between the phases.
	Policy Policy
	// MaxAge, if set, makes the active authority due for rotation once
	// it has signed for MaxAge (since State.ActivatedAt), as if it
	// expired then: for authorities that do not expire.
	MaxAge time.Duration
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
	// Logger receives rotation events. Default: slog.Default().
	Logger *slog.Logger
}

func (e *EngineOf[A, K]) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// info logs a step taken on m, in the words of kind K.
func (e *EngineOf[A, K]) info(m *MaterialOf[A], format string, args ...any) {
	var k K
	msg := fmt.Sprintf(format, k.Noun())
	if m.Mode != "" {
		args = append([]any{"mode", m.Mode}, args...)
	}
	cmp.Or(e.Logger, slog.Default()).Info(msg, args...)
}

// begin loads the material for a step that needs phase want.
func (e *EngineOf[A, K]) begin(ctx context.Context, want Phase) (*MaterialOf[A], error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m, err := e.Backend.Load(ctx)
	if err != nil {
		return nil, err
	}
	var k K
	if err := m.State.require(want, k.Noun()); err != nil {
		return nil, err
	}
	return m, nil
}

// Prepare adds a new authority to the bundle; the active one still
// signs. from names where the new one comes from, for the backends that
// take one.
func (e *EngineOf[A, K]) Prepare(ctx context.Context, from string) error {
	m, err := e.begin(ctx, PhaseSteady)
	if err != nil {
		return err
	}
	return e.prepare(ctx, m, from)
}

// prepare is Prepare on the material m, read in the steady phase.
func (e *EngineOf[A, K]) prepare(ctx context.Context, m *MaterialOf[A], from string) error {
	var k K
	now := e.now().UTC()
	next, err := e.Backend.Mint(ctx, m, from, now)
	if err != nil {
		return err
	}
	if len(next.Roots) == 0 {
		return fmt.Errorf("rotation: the backend made no %s", k.Noun())
	}
	if err := e.checkNext(next.Roots[0], m.Active, now); err != nil {
		return err
	}
	st := State{
		Phase: PhasePrepared, PreparedAt: now, ActivateAfter: e.Policy.ActivateAfter(now), ActivatedAt: m.State.ActivatedAt,
		Key: m.State.Key, NextKey: next.Key, Issuer: m.State.Issuer, NextIssuer: next.Issuer, Retired: m.State.Retired,
	}
	c := ChangeOf[A]{Step: StepPrepare, State: st, Bundle: union[A, K](m.Bundle, next.Roots), Minted: next}
	if err := e.Backend.Save(ctx, m, c); err != nil {
		return err
	}
	d := k.Describe(next.Roots[0], RootPrepared)
	e.info(m, "prepared a new %s; it is in the trust bundle but does not sign yet", "subject", d.Subject, "serial", d.Serial, "activate_after", st.ActivateAfter)
	return nil
}

// checkNext refuses an authority that cannot replace active (the zero A
// for none): active itself, or one kind K refuses.
func (e *EngineOf[A, K]) checkNext(next, active A, now time.Time) error {
	var k K
	var zero A
	if active != zero && k.Equal(next, active) {
		return fmt.Errorf("rotation: the next %s %q is the active %[1]s; there is nothing to rotate to", k.Noun(), k.Describe(next, RootPrepared).Subject)
	}
	return k.CheckNext(next, now, e.Policy.RetireAfter(e.Policy.ActivateAfter(now)))
}

// Activate makes the prepared authority sign. It refuses before the
// propagation delay has passed, unless force is set.
func (e *EngineOf[A, K]) Activate(ctx context.Context, force bool) error {
	m, err := e.begin(ctx, PhasePrepared)
	if err != nil {
		return err
	}
	return e.activate(ctx, m, force)
}

// activate is Activate on the material m, read in the prepared phase.
func (e *EngineOf[A, K]) activate(ctx context.Context, m *MaterialOf[A], force bool) error {
	var k K
	now := e.now().UTC()
	if err := e.Policy.checkActivate(m.State, now, force, k.Noun()); err != nil {
		return err
	}
	st := m.State.Activated(now, e.Policy)
	if err := e.Backend.Save(ctx, m, ChangeOf[A]{Step: StepActivate, State: st, Bundle: m.Bundle, Force: force}); err != nil {
		return err
	}
	e.info(m, "activated the new %s; the old one stays in the bundle until its SVIDs expire", "retire_after", st.RetireAfter)
	return nil
}

// Retire drops every authority but the new one from the bundle. It
// refuses while an SVID signed by the old one may still be valid, unless
// force is set.
func (e *EngineOf[A, K]) Retire(ctx context.Context, force bool) error {
	m, err := e.begin(ctx, PhaseActivated)
	if err != nil {
		return err
	}
	return e.retire(ctx, m, force)
}

// retire is Retire on the material m, read in the activated phase.
func (e *EngineOf[A, K]) retire(ctx context.Context, m *MaterialOf[A], force bool) error {
	var k K
	if err := e.Policy.checkRetire(m.State, e.now(), force, k.Noun()); err != nil {
		return err
	}
	keep := m.Next
	if len(keep) == 0 {
		var zero A
		if m.Active == zero {
			return fmt.Errorf("rotation: cannot tell the new %s from the old in the %s material", k.Noun(), m.Mode)
		}
		keep = []A{m.Active}
	}
	retired := slices.Clone(m.State.Retired)
	for _, a := range m.Bundle {
		if fp := k.Fingerprint(a); !contains[A, K](keep, a) && !slices.Contains(retired, fp) {
			retired = append(retired, fp)
		}
	}
	st := State{Phase: PhaseSteady, ActivatedAt: m.State.ActivatedAt, Issuer: m.State.Issuer, Key: m.State.Key, Retired: retired}
	if err := e.Backend.Save(ctx, m, ChangeOf[A]{Step: StepRetire, State: st, Bundle: keep, Force: force}); err != nil {
		return err
	}
	e.info(m, "retired the old %s; the trust bundle holds only the active one", "count", len(keep))
	return nil
}

// Status reports the authorities in the bundle and the phase.
func (e *EngineOf[A, K]) Status(ctx context.Context) (*Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m, err := e.Backend.Load(ctx)
	if err != nil {
		return nil, err
	}
	return statusOf[A, K](e.Policy, m), nil
}

// Step takes the automatic step that is due (see due), and says which
// ("" for none). Material rotated by hand gets no step. The step is taken
// on the material Step read, so that when another replica sharing the
// backend takes it first, the backend's Save reports the conflict.
func (e *EngineOf[A, K]) Step(ctx context.Context, rotateBefore time.Duration) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m, err := e.Backend.Load(ctx)
	if err != nil || m.Manual != nil {
		return "", err
	}
	switch did := e.due(m, e.now(), rotateBefore); did {
	case StepPrepare:
		return did, e.prepare(ctx, m, "")
	case StepActivate:
		return did, e.activate(ctx, m, false)
	case StepRetire:
		return did, e.retire(ctx, m, false)
	}
	return "", nil
}

// due says which automatic step m calls for at now: prepare once the
// active authority has less than rotateBefore left (never when
// rotateBefore is zero), activate once the propagation delay has passed,
// retire once the old authority's SVIDs have expired; "" for none.
func (e *EngineOf[A, K]) due(m *MaterialOf[A], now time.Time, rotateBefore time.Duration) string {
	switch st := m.State; st.Phase {
	case PhaseSteady:
		if end := e.end(m); rotateBefore > 0 && !end.IsZero() && end.Sub(now) < rotateBefore {
			return StepPrepare
		}
	case PhasePrepared:
		if !now.Before(e.Policy.activateDue(st)) {
			return StepActivate
		}
	case PhaseActivated:
		if !now.Before(st.RetireAfter) {
			return StepRetire
		}
	}
	return ""
}

// end is when the active authority of m should stop signing: when it
// expires, or has signed for MaxAge, whichever comes first; zero for
// never.
func (e *EngineOf[A, K]) end(m *MaterialOf[A]) time.Time {
	var k K
	var zero A
	if m.Active == zero {
		return time.Time{}
	}
	end := k.NotAfter(m.Active)
	if e.MaxAge > 0 && !m.State.ActivatedAt.IsZero() {
		if aged := m.State.ActivatedAt.Add(e.MaxAge); end.IsZero() || aged.Before(end) {
			end = aged
		}
	}
	return end
}

// statusOf returns the status of material m: its bundle, and a prepared
// authority the CA does not serve yet, with their roles.
func statusOf[A comparable, K Kind[A]](p Policy, m *MaterialOf[A]) *Status {
	var k K
	var zero, next A
	st := m.State
	out := &Status{
		Mode: m.Mode, Phase: st.Phase, PreparedAt: st.PreparedAt, ActivatedAt: st.ActivatedAt,
		RetireAfter: st.RetireAfter, Issuer: st.Issuer, NextIssuer: st.NextIssuer,
	}
	all := m.Bundle
	if st.Phase == PhasePrepared {
		out.ActivateAfter = p.activateDue(st)
		all = union[A, K](all, m.Next)
	}
	if len(m.Next) == 1 {
		next = m.Next[0]
	}
	for _, a := range all {
		role := RootRetiring
		switch {
		case m.Active != zero && k.Equal(a, m.Active):
			role = RootActive
		case next != zero && k.Equal(a, next), next == zero && st.Phase == PhasePrepared:
			role = RootPrepared
		}
		out.Roots = append(out.Roots, k.Describe(a, role))
	}
	return out
}

// union returns a followed by the authorities of b not in a.
func union[A comparable, K Kind[A]](a, b []A) []A {
	out := slices.Clone(a)
	for _, x := range b {
		if !contains[A, K](out, x) {
			out = append(out, x)
		}
	}
	return out
}

func contains[A comparable, K Kind[A]](list []A, x A) bool {
	var k K
	return slices.ContainsFunc(list, func(y A) bool { return k.Equal(x, y) })
}
