package rotation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// memBackend keeps material in memory, for tests of the Engine's own
// logic; the real backends are tested in their packages and under live
// mTLS in integration/rotation.
type memBackend[A comparable] struct {
	m      MaterialOf[A]
	mint   func(now time.Time) A
	saved  []ChangeOf[A]
	refuse error
}

func (b *memBackend[A]) Load(context.Context) (*MaterialOf[A], error) {
	m := b.m
	return &m, nil
}

func (b *memBackend[A]) Mint(_ context.Context, _ *MaterialOf[A], from string, now time.Time) (*MintedOf[A], error) {
	if from != "" {
		return nil, errors.New("mem: no from")
	}
	return &MintedOf[A]{Roots: []A{b.mint(now)}, Key: "k2"}, nil
}

func (b *memBackend[A]) Save(_ context.Context, _ *MaterialOf[A], c ChangeOf[A]) error {
	if b.refuse != nil {
		return b.refuse
	}
	b.saved = append(b.saved, c)
	b.m.State, b.m.Bundle = c.State, c.Bundle
	switch c.Step {
	case StepPrepare:
		b.m.Next = c.Minted.Roots
	case StepActivate:
		b.m.Active, b.m.Next = b.m.Next[0], nil
	}
	return nil
}

// namedKey is an authority that does not expire, known by its name in a
// key store, as a JWT signing key is.
type namedKey string

type namedKeys struct{}

func (namedKeys) Noun() string                                   { return "key" }
func (namedKeys) Equal(a, b namedKey) bool                       { return a == b }
func (namedKeys) Fingerprint(k namedKey) string                  { return string(k) }
func (namedKeys) NotAfter(namedKey) time.Time                    { return time.Time{} }
func (namedKeys) CheckNext(namedKey, time.Time, time.Time) error { return nil }
func (namedKeys) Describe(k namedKey, role RootState) RootStatus {
	return RootStatus{Subject: string(k), State: role}
}

func newTestRoot(t *testing.T, notBefore time.Time, ttl time.Duration) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), TTL: ttl, NotBefore: notBefore})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestEngineSteps(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	old := newTestRoot(t, now.Add(-time.Hour), 48*time.Hour)
	b := &memBackend[*x509.Certificate]{m: Material{Mode: ModeSelfSigned, State: State{Phase: PhaseSteady, Retired: []string{"earlier"}}, Bundle: []*x509.Certificate{old}, Active: old}}
	b.mint = func(at time.Time) *x509.Certificate { return newTestRoot(t, at.Add(-time.Minute), 10*365*24*time.Hour) }
	clock := now
	e := &Engine{Backend: b, Policy: Policy{PropagationDelay: 2 * time.Hour, MaxTTL: time.Hour, RetireMargin: time.Minute},
		Now: func() time.Time { return clock }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()

	step := func(rotateBefore time.Duration, want string) {
		t.Helper()
		got, err := e.Step(ctx, rotateBefore)
		if err != nil || got != want {
			t.Fatalf("Step at %s = %q, %v; want %q", clock, got, err, want)
		}
	}
	step(24*time.Hour, "")
	step(72*time.Hour, StepPrepare)
	if st := b.m.State; st.Phase != PhasePrepared || st.NextKey != "k2" || !st.ActivateAfter.Equal(now.Add(2*time.Hour)) || len(b.m.Bundle) != 2 {
		t.Fatalf("after prepare: %+v with %d roots", st, len(b.m.Bundle))
	}
	// The status reports the wait the preparing CA set, whoever reads it
	// (the metrics of a Secret read without the CA's policy).
	if got := statusOf[*x509.Certificate, Roots](Policy{}, &b.m).ActivateAfter; !got.Equal(now.Add(2 * time.Hour)) {
		t.Fatalf("status reports activation after %s, want %s", got, now.Add(2*time.Hour))
	}
	step(72*time.Hour, "")
	clock = now.Add(2 * time.Hour)
	step(72*time.Hour, StepActivate)
	if st := b.m.State; st.Phase != PhaseActivated || st.Key != "k2" || st.NextKey != "" {
		t.Fatalf("after activate: %+v", st)
	}
	clock = now.Add(3*time.Hour + time.Minute)
	step(72*time.Hour, StepRetire)
	if st := b.m.State; st.Phase != PhaseSteady || st.Key != "k2" || len(st.Retired) != 2 || st.Retired[1] != Fingerprint(old) || len(b.m.Bundle) != 1 || b.m.Bundle[0].Equal(old) {
		t.Fatalf("after retire: %+v with %d roots", st, len(b.m.Bundle))
	}

	// Material rotated by hand gets no automatic step.
	b.m.Manual = errors.New("by hand")
	clock = clock.Add(1000 * time.Hour)
	step(72*time.Hour, "")
}

// TestEngineRefusesBadNextRoot: a next root that cannot replace the
// active one is refused before anything is saved.
func TestEngineRefusesBadNextRoot(t *testing.T) {
	now := time.Now().UTC()
	old := newTestRoot(t, now.Add(-time.Hour), 48*time.Hour)
	tests := []struct {
		name, want string
		mint       func(time.Time) *x509.Certificate
	}{
		{"the active root", "nothing to rotate to", func(time.Time) *x509.Certificate { return old }},
		{"not yet valid", "not now", func(at time.Time) *x509.Certificate { return newTestRoot(t, at.Add(time.Hour), 48*time.Hour) }},
		{"expires too soon", "before a rotation to it could finish", func(at time.Time) *x509.Certificate {
			return newTestRoot(t, at.Add(-time.Minute), 2*time.Hour)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &memBackend[*x509.Certificate]{m: Material{Mode: ModeSelfSigned, State: State{Phase: PhaseSteady}, Bundle: []*x509.Certificate{old}, Active: old}, mint: tt.mint}
			e := &Engine{Backend: b, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			err := e.Prepare(context.Background(), "")
			if err == nil || !strings.Contains(err.Error(), tt.want) || len(b.saved) != 0 {
				t.Fatalf("Prepare = %v (%d saves); want %q and nothing saved", err, len(b.saved), tt.want)
			}
		})
	}
}

// stepper is what TestEngineDrivesEveryKind needs of an engine, whatever
// the kind of its authorities.
type stepper interface {
	Step(ctx context.Context, rotateBefore time.Duration) (string, error)
	Status(ctx context.Context) (*Status, error)
}

// TestEngineDrivesEveryKind walks one rotation, by automatic steps, with
// the same engine over an X.509 root that expires and over a key that
// does not (a JWT signing key), which rotates by age (MaxAge): each step
// is due at the same times, and leaves the same state.
func TestEngineDrivesEveryKind(t *testing.T) {
	start := time.Now().UTC().Truncate(time.Second)
	policy := Policy{PropagationDelay: 2 * time.Hour, MaxTTL: time.Hour, RetireMargin: time.Minute}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	tests := []struct {
		name string
		// engine returns an engine on the clock now whose active
		// authority is due for rotation 24h after start, its backend's
		// state, and the fingerprint of that authority.
		engine       func(now func() time.Time) (stepper, *State, string)
		rotateBefore time.Duration
	}{
		{"x509 root, by expiry", func(now func() time.Time) (stepper, *State, string) {
			old := newTestRoot(t, start.Add(-time.Hour), 49*time.Hour)
			b := &memBackend[*x509.Certificate]{m: Material{Mode: ModeSelfSigned, State: State{Phase: PhaseSteady}, Bundle: []*x509.Certificate{old}, Active: old}}
			b.mint = func(at time.Time) *x509.Certificate { return newTestRoot(t, at.Add(-time.Minute), 10*365*24*time.Hour) }
			return &Engine{Backend: b, Policy: policy, Now: now, Logger: quiet}, &b.m.State, Fingerprint(old)
		}, 24 * time.Hour},
		{"key that does not expire, by age", func(now func() time.Time) (stepper, *State, string) {
			b := &memBackend[namedKey]{m: MaterialOf[namedKey]{State: State{Phase: PhaseSteady, ActivatedAt: start, Key: "k1"}, Bundle: []namedKey{"k1"}, Active: "k1"}}
			b.mint = func(time.Time) namedKey { return "k2" }
			return &EngineOf[namedKey, namedKeys]{Backend: b, Policy: policy, MaxAge: 30 * time.Hour, Now: now, Logger: quiet}, &b.m.State, "k1"
		}, 6 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clock := start
			e, state, old := tt.engine(func() time.Time { return clock })
			due := start.Add(24 * time.Hour)
			activate := due.Add(time.Second + policy.PropagationDelay)
			retire := activate.Add(policy.MaxTTL + policy.RetireMargin)
			for _, s := range []struct {
				at   time.Time
				want string
			}{
				{start, ""},
				{due.Add(-time.Second), ""},
				{due.Add(time.Second), StepPrepare},
				{activate.Add(-time.Second), ""},
				{activate, StepActivate},
				{retire.Add(-time.Second), ""},
				{retire, StepRetire},
				{retire.Add(time.Hour), ""},
			} {
				clock = s.at
				if got, err := e.Step(ctx, tt.rotateBefore); err != nil || got != s.want {
					t.Fatalf("Step at start+%s = %q, %v; want %q", s.at.Sub(start), got, err, s.want)
				}
			}
			st, err := e.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Phase != PhaseSteady || len(st.Roots) != 1 || st.Roots[0].State != RootActive || !st.ActivatedAt.Equal(activate) {
				t.Fatalf("after the rotation: %+v", st)
			}
			if state.Key != "k2" || len(state.Retired) != 1 || state.Retired[0] != old {
				t.Fatalf("after the rotation: key %q, retired %v; want k2 and %s", state.Key, state.Retired, old)
			}
		})
	}
}

// racingBackend is a memBackend shared with another replica, which takes
// the same step right after each Load; Save refuses material that is no
// longer current, as a shared store's compare-and-swap does.
type racingBackend struct {
	memBackend[namedKey]
	other func(m *MaterialOf[namedKey])
}

var errStale = errors.New("racing: the material changed meanwhile")

func (b *racingBackend) Load(ctx context.Context) (*MaterialOf[namedKey], error) {
	m, err := b.memBackend.Load(ctx)
	b.other(&b.m)
	return m, err
}

func (b *racingBackend) Save(ctx context.Context, m *MaterialOf[namedKey], c ChangeOf[namedKey]) error {
	if m.State.Phase != b.m.State.Phase {
		return errStale
	}
	return b.memBackend.Save(ctx, m, c)
}

// TestStepLosesRaceAsConflict: when another replica takes the due step
// between this one's read and its write, Step fails with the backend's
// conflict (which callers sharing a store treat as "no step"), not with
// a phase error from reading the material a second time.
func TestStepLosesRaceAsConflict(t *testing.T) {
	start := time.Now().UTC()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range []struct {
		name        string
		from, other Phase
		at          time.Time
	}{
		{"prepare", PhaseSteady, PhasePrepared, start.Add(48 * time.Hour)},
		{"activate", PhasePrepared, PhaseActivated, start.Add(48 * time.Hour)},
		{"retire", PhaseActivated, PhaseSteady, start.Add(48 * time.Hour)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := State{Phase: tt.from, ActivatedAt: start, PreparedAt: start, RetireAfter: start.Add(time.Hour), Key: "k1"}
			b := &racingBackend{memBackend: memBackend[namedKey]{m: MaterialOf[namedKey]{State: st, Bundle: []namedKey{"k1", "k2"}, Active: "k1", Next: []namedKey{"k2"}}}}
			b.mint = func(time.Time) namedKey { return "k3" }
			b.other = func(m *MaterialOf[namedKey]) { m.State.Phase = tt.other }
			e := &EngineOf[namedKey, namedKeys]{Backend: b, MaxAge: 24 * time.Hour, Now: func() time.Time { return tt.at }, Logger: quiet}
			if did, err := e.Step(context.Background(), time.Hour); !errors.Is(err, errStale) {
				t.Fatalf("Step = %q, %v; want the backend's conflict", did, err)
			}
		})
	}
}
