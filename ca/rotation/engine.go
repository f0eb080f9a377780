package rotation

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/castellan-mesh/castellan/ca"
)

// The steps of a rotation, as Due returns them and Backend.Save receives
// them.
const (
	StepPrepare  = "prepare"
	StepActivate = "activate"
	StepRetire   = "retire"
)

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

// Material is what a Backend read: the rotation state, the trust bundle
// and the roles of its roots.
type Material struct {
	// Mode is the CA mode the material is kept in.
	Mode Mode
	// State is where the rotation stands.
	State State
	// Bundle is the trust bundle the CA serves.
	Bundle []*x509.Certificate
	// Active is the root the CA signs under now.
	Active *x509.Certificate
	// Next holds the prepared roots, from prepare until the backend
	// drops them (at activation or retirement); nil when none.
	Next []*x509.Certificate
	// Manual, if set, says why the CA does not take automatic steps on
	// this material (it is rotated by hand, or not at all).
	Manual error
	// Raw is the backend's own copy of what it read (a Secret, say),
	// handed back to Mint and Save.
	Raw any
}

// Minted is the next root a Backend made or took for a prepare.
type Minted struct {
	// Roots are the new roots that join the bundle; the first is the one
	// the CA will sign under.
	Roots []*x509.Certificate
	// Key names the new root's key in the KeyStore, when one was created.
	Key string
	// Issuer names the upstream issuer of the new root, if any.
	Issuer string
}

// Change is the outcome of a step that a Backend persists.
type Change struct {
	// Step is StepPrepare, StepActivate or StepRetire.
	Step string
	// State is the rotation state after the step.
	State State
	// Bundle is the trust bundle after the step.
	Bundle []*x509.Certificate
	// Minted is the root made by a prepare; nil for the other steps.
	Minted *Minted
	// Force is set when the caller asked to skip the waits; a backend
	// check that only guards timing is skipped too.
	Force bool
}

// Backend is where one CA mode keeps its material: a data directory, a
// Vault PKI issuer with its intermediate in a data directory, or a
// Kubernetes Secret. The Engine takes the steps; a Backend reads, makes
// the next root, and writes.
type Backend interface {
	// Load reads the material.
	Load(ctx context.Context) (*Material, error)
	// Mint makes the next root for a prepare at now, or takes it from
	// from (a cacerts directory, an upstream issuer). A self-signed
	// root's key is created in the KeyStore that holds the active key.
	Mint(ctx context.Context, m *Material, from string, now time.Time) (*Minted, error)
	// Save persists c, and whatever else the step means for the backend
	// (the new key signing from activation on, the prepared files going
	// at retirement). It may refuse a step the backend cannot take yet.
	Save(ctx context.Context, m *Material, c Change) error
}

// Engine takes the steps of a root rotation on a Backend: it checks the
// phase and the waits of the Policy, has the backend make the next root,
// works out the state and trust bundle after each step, and has the
// backend persist them. It implements Rotator.
type Engine struct {
	// Backend keeps the material. Required.
	Backend Backend
	// Policy holds the waits between the phases.
	Policy Policy
	// Now returns the current time. Default: time.Now.
	Now func() time.Time
	// Logger receives rotation events. Default: slog.Default().
	Logger *slog.Logger
}

func (e *Engine) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Engine) log() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.Default()
}

// begin loads the material for a step that needs phase want.
func (e *Engine) begin(ctx context.Context, want Phase) (*Material, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m, err := e.Backend.Load(ctx)
	if err != nil {
		return nil, err
	}
	if err := m.State.Require(want); err != nil {
		return nil, err
	}
	return m, nil
}

// Prepare adds a new root to the trust bundle; the old root still signs.
// from names where the new root comes from, for the backends that take
// one.
func (e *Engine) Prepare(ctx context.Context, from string) error {
	m, err := e.begin(ctx, PhaseSteady)
	if err != nil {
		return err
	}
	now := e.now().UTC()
	next, err := e.Backend.Mint(ctx, m, from, now)
	if err != nil {
		return err
	}
	if len(next.Roots) == 0 {
		return errors.New("rotation: the backend made no root")
	}
	if err := e.checkNextRoot(next.Roots[0], m.Active, now); err != nil {
		return err
	}
	st := State{
		Phase: PhasePrepared, PreparedAt: now, ActivateAfter: e.Policy.ActivateAfter(now),
		Key: m.State.Key, NextKey: next.Key, Issuer: m.State.Issuer, NextIssuer: next.Issuer, Retired: m.State.Retired,
	}
	c := Change{Step: StepPrepare, State: st, Bundle: union(m.Bundle, next.Roots), Minted: next}
	if err := e.Backend.Save(ctx, m, c); err != nil {
		return err
	}
	e.log().Info("prepared a new root; it is in the trust bundle but does not sign yet", "mode", m.Mode,
		"subject", next.Roots[0].Subject.String(), "serial", fmt.Sprintf("%x", next.Roots[0].SerialNumber), "activate_after", st.ActivateAfter)
	return nil
}

// checkNextRoot refuses a root that cannot replace active: not a
// self-signed CA certificate, the active root itself, not valid now, or
// expiring before a rotation to it could finish.
func (e *Engine) checkNextRoot(root, active *x509.Certificate, now time.Time) error {
	switch {
	case !root.IsCA || !ca.IsSelfSigned(root):
		return fmt.Errorf("rotation: the next root %q is not a self-signed CA certificate", root.Subject)
	case active != nil && root.Equal(active):
		return fmt.Errorf("rotation: the next root %q is the active root; there is nothing to rotate to", root.Subject)
	case now.Before(root.NotBefore) || !now.Before(root.NotAfter):
		return fmt.Errorf("rotation: the next root %q is valid from %s to %s, not now", root.Subject, root.NotBefore.UTC().Format(time.RFC3339), root.NotAfter.UTC().Format(time.RFC3339))
	case root.NotAfter.Before(e.Policy.RetireAfter(e.Policy.ActivateAfter(now))):
		return fmt.Errorf("rotation: the next root %q expires at %s, before a rotation to it could finish", root.Subject, root.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Activate makes the prepared root sign. It refuses before the
// propagation delay has passed, unless force is set.
func (e *Engine) Activate(ctx context.Context, force bool) error {
	m, err := e.begin(ctx, PhasePrepared)
	if err != nil {
		return err
	}
	now := e.now().UTC()
	if err := e.Policy.CheckActivate(m.State, now, force); err != nil {
		return err
	}
	st := m.State.Activated(now, e.Policy)
	if err := e.Backend.Save(ctx, m, Change{Step: StepActivate, State: st, Bundle: m.Bundle, Force: force}); err != nil {
		return err
	}
	e.log().Info("activated the new root; the old one stays in the bundle until its SVIDs expire", "mode", m.Mode, "retire_after", st.RetireAfter)
	return nil
}

// Retire drops every root but the new one from the trust bundle. It
// refuses while an SVID signed under the old root may still be valid,
// unless force is set.
func (e *Engine) Retire(ctx context.Context, force bool) error {
	m, err := e.begin(ctx, PhaseActivated)
	if err != nil {
		return err
	}
	if err := e.Policy.CheckRetire(m.State, e.now(), force); err != nil {
		return err
	}
	keep := m.Next
	if len(keep) == 0 {
		if m.Active == nil {
			return fmt.Errorf("rotation: cannot tell the new root from the old in the %s material", m.Mode)
		}
		keep = []*x509.Certificate{m.Active}
	}
	retired := slices.Clone(m.State.Retired)
	for _, c := range m.Bundle {
		if fp := Fingerprint(c); !containsCert(keep, c) && !slices.Contains(retired, fp) {
			retired = append(retired, fp)
		}
	}
	st := State{Phase: PhaseSteady, Issuer: m.State.Issuer, Key: m.State.Key, Retired: retired}
	if err := e.Backend.Save(ctx, m, Change{Step: StepRetire, State: st, Bundle: keep, Force: force}); err != nil {
		return err
	}
	e.log().Info("retired the old root; the trust bundle holds only the active root", "mode", m.Mode, "roots", len(keep))
	return nil
}

// Status reports the roots in the bundle and the phase.
func (e *Engine) Status(ctx context.Context) (*Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m, err := e.Backend.Load(ctx)
	if err != nil {
		return nil, err
	}
	return e.Policy.StatusOf(m), nil
}

// Step takes the automatic step that is due at now (see Due), and says
// which ("" for none). A prepare is due when the active root has less
// than rotateBefore left; material rotated by hand gets no step.
func (e *Engine) Step(ctx context.Context, rotateBefore time.Duration) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m, err := e.Backend.Load(ctx)
	if err != nil || m.Manual != nil {
		return "", err
	}
	switch did := Due(e.Policy.StatusOf(m), e.now(), rotateBefore); did {
	case StepPrepare:
		return did, e.Prepare(ctx, "")
	case StepActivate:
		return did, e.Activate(ctx, false)
	case StepRetire:
		return did, e.Retire(ctx, false)
	}
	return "", nil
}

// Run calls Step every interval until ctx ends (see Run).
func (e *Engine) Run(ctx context.Context, interval, rotateBefore time.Duration, observe func(step string)) error {
	step := func(ctx context.Context) (string, error) { return e.Step(ctx, rotateBefore) }
	return Run(ctx, interval, step, e.log(), observe)
}

// StatusOf returns the status of material m: its bundle, and a prepared
// root the CA does not serve yet, with their roles.
func (p Policy) StatusOf(m *Material) *Status {
	out := p.Status(m.Mode, m.State)
	roots := m.Bundle
	if m.State.Phase == PhasePrepared {
		roots = union(roots, m.Next)
	}
	var next *x509.Certificate
	if len(m.Next) == 1 {
		next = m.Next[0]
	}
	out.AddRoots(roots, m.Active, next)
	return out
}

// union returns a followed by the certificates of b not in a.
func union(a, b []*x509.Certificate) []*x509.Certificate {
	out := slices.Clone(a)
	for _, c := range b {
		if !containsCert(out, c) {
			out = append(out, c)
		}
	}
	return out
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	return slices.ContainsFunc(certs, c.Equal)
}
