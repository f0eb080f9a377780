package jwtsvid_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/ca/rotation"
)

// TestAutomaticRotation walks a fake clock through a JWT key's life under
// a policy: nothing is due until the key has signed for every less the
// propagation delay; then prepare, activate after the propagation delay,
// retire after the token TTL plus margin, each at its time and not
// before; the next rotation counts from the activation. A token of the
// retired key no longer verifies.
func TestAutomaticRotation(t *testing.T) {
	ctx := context.Background()
	ks, r := newKeySet(t)
	const (
		every = 30 * 24 * time.Hour
		prop  = time.Hour
		ttl   = 5 * time.Minute
	)
	now := ks.Keys().State.ActivatedAt
	if now.IsZero() {
		t.Fatal("the first key's activation time is not recorded")
	}
	r.Now = func() time.Time { return now }
	r.PropagationDelay, r.TTL = prop, ttl
	reg := prometheus.NewRegistry()
	col := jwtsvid.NewCollector(ks, r)
	reg.MustRegister(col)
	phase := func() rotation.Phase {
		t.Helper()
		if _, err := ks.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		return ks.Keys().State.Phase
	}
	step := func(at time.Time, want string) {
		t.Helper()
		now = at
		did, err := r.Step(ctx, every)
		if err != nil {
			t.Fatalf("step at %s: %v", at, err)
		}
		if did != want {
			t.Fatalf("step at %s: %q, want %q", at, did, want)
		}
		col.ObserveStep(did)
	}
	start := now
	first := ks.Keys().Active.ID
	old := mint(t, ks, "a")

	step(start.Add(time.Minute), "")
	step(start.Add(every-prop), "")
	prepared := start.Add(every - prop + time.Second)
	step(prepared, rotation.StepPrepare)
	if phase() != rotation.PhasePrepared || len(ks.JWTAuthorities()) != 2 || ks.Keys().Active.ID != first {
		t.Fatalf("after prepare: phase %s, %d authorities, active %s", ks.Keys().State.Phase, len(ks.JWTAuthorities()), ks.Keys().Active.ID)
	}
	if v := metricValue(t, reg, "castellan_ca_jwt_rotation_phase", "prepared"); v != 1 {
		t.Fatalf("castellan_ca_jwt_rotation_phase{phase=prepared} = %v", v)
	}
	step(prepared.Add(prop-time.Second), "")
	activated := prepared.Add(prop)
	step(activated, rotation.StepActivate)
	if phase() != rotation.PhaseActivated || ks.Keys().Active.ID == first {
		t.Fatalf("after activate: phase %s, active %s", ks.Keys().State.Phase, ks.Keys().Active.ID)
	}
	second := ks.Keys().Active.ID
	retire := activated.Add(ttl + rotation.DefaultRetireMargin)
	step(retire.Add(-time.Second), "")
	if _, err := spiffejwt.ParseAndValidate(old.Token, bundle(ks), []string{"a"}); err != nil {
		t.Fatalf("a token of the previous key before retirement: %v", err)
	}
	step(retire, rotation.StepRetire)
	if phase() != rotation.PhaseSteady || len(ks.JWTAuthorities()) != 1 || ks.Keys().Active.ID != second {
		t.Fatalf("after retire: phase %s, %d authorities", ks.Keys().State.Phase, len(ks.JWTAuthorities()))
	}
	if !ks.Keys().State.ActivatedAt.Equal(activated) {
		t.Fatalf("steady state's activation time %s, want %s", ks.Keys().State.ActivatedAt, activated)
	}
	if _, err := spiffejwt.ParseAndValidate(old.Token, bundle(ks), []string{"a"}); err == nil {
		t.Fatal("a token of the retired key verifies")
	}
	// The next rotation counts from the activation, not the retirement.
	step(activated.Add(every-prop), "")
	step(activated.Add(every-prop+time.Second), rotation.StepPrepare)

	if v := metricValue(t, reg, "castellan_ca_jwt_rotation_steps_total", "prepare"); v != 2 {
		t.Fatalf("castellan_ca_jwt_rotation_steps_total{step=prepare} = %v", v)
	}
	// Disabled: nothing, even when overdue.
	now = now.Add(10 * every)
	if did, err := r.Step(ctx, 0); did != "" || err != nil {
		t.Fatalf("Step with rotation disabled: %q, %v", did, err)
	}
}

// metricValue returns the value of the series of name in reg that has a
// label with value label.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return 0
}

// TestAutomaticRotationLegacyState: a state written before the
// activation time was recorded gets the time the CA opens it, and the
// key's age counts from it.
func TestAutomaticRotationLegacyState(t *testing.T) {
	ctx := context.Background()
	ks, r := newKeySet(t)
	st := ks.Keys().State
	st.ActivatedAt = time.Time{}
	if err := jwtsvid.WriteState(r.Dir, st); err != nil {
		t.Fatal(err)
	}
	before := time.Now().UTC()
	if _, err := jwtsvid.Open(ctx, jwtsvid.Config{Dir: r.Dir, Keys: r.Keys}); err != nil {
		t.Fatal(err)
	}
	got, _, err := jwtsvid.ReadState(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.ActivatedAt.Before(before) || got.ActivatedAt.After(time.Now()) {
		t.Fatalf("recorded activation time %s, want the time of Open (after %s)", got.ActivatedAt, before)
	}
	const every = 24 * time.Hour
	now := got.ActivatedAt.Add(every - time.Hour)
	r.Now = func() time.Time { return now }
	if did, err := r.Step(ctx, every); did != "" || err != nil {
		t.Fatalf("step before due: %q, %v", did, err)
	}
	now = now.Add(time.Second)
	if did, err := r.Step(ctx, every); did != rotation.StepPrepare || err != nil {
		t.Fatalf("step once due: %q, %v", did, err)
	}
}

// racingStore is a StateStore on which, just before the first Save,
// another replica takes its step on the same state.
type racingStore struct {
	jwtsvid.StateStore
	other func()
}

func (s *racingStore) Save(ctx context.Context, st jwtsvid.State, prev []byte) error {
	if s.other != nil {
		other := s.other
		s.other = nil
		other()
	}
	return s.StateStore.Save(ctx, st, prev)
}

// TestAutomaticRotationReplicas: two replicas on one state that step at
// once take one prepare between them; the one that loses sees no step
// and no error, and the state holds the winner's key.
func TestAutomaticRotationReplicas(t *testing.T) {
	ctx := context.Background()
	ks, a := newKeySet(t)
	const every = 24 * time.Hour
	now := ks.Keys().State.ActivatedAt.Add(every)
	a.Now = func() time.Time { return now }
	b := &jwtsvid.Rotator{Keys: a.Keys, Now: a.Now}
	var aDid string
	b.State = &racingStore{StateStore: jwtsvid.DirState(a.Dir), other: func() {
		var err error
		if aDid, err = a.Step(ctx, every); err != nil {
			t.Errorf("replica a: %v", err)
		}
	}}
	bDid, err := b.Step(ctx, every)
	if err != nil {
		t.Fatalf("replica b: %v", err)
	}
	if aDid != rotation.StepPrepare || bDid != "" {
		t.Fatalf("replica a took %q, b %q; want prepare and none", aDid, bDid)
	}
	st, _, err := jwtsvid.ReadState(a.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != rotation.PhasePrepared {
		t.Fatalf("phase %s", st.Phase)
	}
	// Both now see the prepared phase: nothing more is due.
	for _, r := range []*jwtsvid.Rotator{a, b} {
		if did, err := r.Step(ctx, every); did != "" || err != nil {
			t.Fatalf("step after the race: %q, %v", did, err)
		}
	}
	// The loser's key file was created but is named by no state.
	entries, _ := os.ReadDir(a.Dir)
	var keys []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), jwtsvid.KeyNamePrefix) {
			keys = append(keys, filepath.Base(e.Name()))
		}
	}
	t.Logf("key files after the race: %v (the state names %s and %s)", keys, st.Active, st.Next)
}

func TestCheckRotateEvery(t *testing.T) {
	for _, tc := range []struct {
		name        string
		every, prop time.Duration
		ok          bool
	}{
		{"disabled", 0, time.Hour, true},
		{"default", jwtsvid.DefaultRotateEvery, 0, true},
		{"twice the delay", 2 * time.Hour, time.Hour, true},
		{"shorter than twice the delay", 2*time.Hour - time.Second, time.Hour, false},
		{"shorter than the default delay", time.Hour, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := jwtsvid.CheckRotateEvery(tc.every, tc.prop); (err == nil) != tc.ok {
				t.Fatalf("CheckRotateEvery(%s, %s): %v", tc.every, tc.prop, err)
			}
		})
	}
}

// TestRotationState: each step leaves the State the CA and the Secret
// store read: the previous key named from activation to retirement, the
// activation time kept until the next activation, the retired names
// capped at the last 32.
func TestRotationState(t *testing.T) {
	ctx := context.Background()
	ks, r := newKeySet(t)
	first := ks.Keys().State
	first.Retired = make([]string, 32)
	for i := range first.Retired {
		first.Retired[i] = fmt.Sprintf("%sold%d", jwtsvid.KeyNamePrefix, i)
	}
	if err := jwtsvid.WriteState(r.Dir, first); err != nil {
		t.Fatal(err)
	}
	a := first.Active
	now := first.ActivatedAt.Add(time.Hour)
	r.Now = func() time.Time { return now }
	var next string
	for _, s := range []struct {
		name string
		step func() error
		want func(st jwtsvid.State) bool
	}{
		{"prepare", func() error { return r.Prepare(ctx) }, func(st jwtsvid.State) bool {
			next = st.Next
			return st.Phase == rotation.PhasePrepared && st.Active == a && next != "" && st.Previous == "" &&
				st.PreparedAt.Equal(now) && st.ActivatedAt.Equal(first.ActivatedAt) && len(st.Retired) == 32
		}},
		{"activate", func() error { return r.Activate(ctx, true) }, func(st jwtsvid.State) bool {
			return st.Phase == rotation.PhaseActivated && st.Active == next && st.Next == "" && st.Previous == a &&
				st.ActivatedAt.Equal(now) && st.RetireAfter.After(now)
		}},
		{"retire", func() error { return r.Retire(ctx, true) }, func(st jwtsvid.State) bool {
			return st.Phase == rotation.PhaseSteady && st.Active == next && st.Previous == "" && st.ActivatedAt.Equal(now) &&
				st.RetireAfter.IsZero() && len(st.Retired) == 32 && st.Retired[31] == a && st.Retired[0] == first.Retired[1]
		}},
	} {
		if err := s.step(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		st, _, err := jwtsvid.ReadState(r.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if !s.want(st) {
			t.Fatalf("state after %s: %+v", s.name, st)
		}
	}
}
