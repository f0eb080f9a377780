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
type memBackend struct {
	m      Material
	mint   func(now time.Time) *x509.Certificate
	saved  []Change
	refuse error
}

func (b *memBackend) Load(context.Context) (*Material, error) {
	m := b.m
	return &m, nil
}

func (b *memBackend) Mint(_ context.Context, _ *Material, from string, now time.Time) (*Minted, error) {
	if from != "" {
		return nil, errors.New("mem: no from")
	}
	return &Minted{Roots: []*x509.Certificate{b.mint(now)}, Key: "k2"}, nil
}

func (b *memBackend) Save(_ context.Context, _ *Material, c Change) error {
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
	b := &memBackend{m: Material{Mode: ModeSelfSigned, State: State{Phase: PhaseSteady, Retired: []string{"earlier"}}, Bundle: []*x509.Certificate{old}, Active: old}}
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
	if got := (Policy{}).StatusOf(&b.m).ActivateAfter; !got.Equal(now.Add(2 * time.Hour)) {
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
			b := &memBackend{m: Material{Mode: ModeSelfSigned, State: State{Phase: PhaseSteady}, Bundle: []*x509.Certificate{old}, Active: old}, mint: tt.mint}
			e := &Engine{Backend: b, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			err := e.Prepare(context.Background(), "")
			if err == nil || !strings.Contains(err.Error(), tt.want) || len(b.saved) != 0 {
				t.Fatalf("Prepare = %v (%d saves); want %q and nothing saved", err, len(b.saved), tt.want)
			}
		})
	}
}
