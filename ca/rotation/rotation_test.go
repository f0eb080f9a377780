package rotation

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestPolicyDefaults(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var p Policy
	if got := p.ActivateAfter(t0); !got.Equal(t0.Add(DefaultPropagationDelay)) {
		t.Errorf("ActivateAfter = %s", got)
	}
	if got := p.RetireAfter(t0); !got.Equal(t0.Add(DefaultMaxTTL + DefaultRetireMargin)) {
		t.Errorf("RetireAfter = %s", got)
	}
	p = Policy{PropagationDelay: time.Second, MaxTTL: time.Minute, RetireMargin: time.Millisecond}
	if got := p.RetireAfter(t0); !got.Equal(t0.Add(time.Minute + time.Millisecond)) {
		t.Errorf("RetireAfter = %s", got)
	}
}

func TestDue(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	active := RootStatus{State: RootActive, NotAfter: now.Add(48 * time.Hour)}
	tests := []struct {
		name         string
		st           Status
		rotateBefore time.Duration
		want         string
	}{
		{"steady, far from expiry", Status{Phase: PhaseSteady, Roots: []RootStatus{active}}, 24 * time.Hour, ""},
		{"steady, close to expiry", Status{Phase: PhaseSteady, Roots: []RootStatus{active}}, 72 * time.Hour, "prepare"},
		{"automatic rotation off", Status{Phase: PhaseSteady, Roots: []RootStatus{active}}, 0, ""},
		{"prepared, propagating", Status{Phase: PhasePrepared, ActivateAfter: now.Add(time.Second)}, 0, ""},
		{"prepared, propagated", Status{Phase: PhasePrepared, ActivateAfter: now}, 0, "activate"},
		{"activated, old SVIDs valid", Status{Phase: PhaseActivated, RetireAfter: now.Add(time.Second)}, 0, ""},
		{"activated, old SVIDs expired", Status{Phase: PhaseActivated, RetireAfter: now}, 0, "retire"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Due(&tt.st, now, tt.rotateBefore); got != tt.want {
				t.Fatalf("Due = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStateSteps(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := Policy{PropagationDelay: time.Hour, MaxTTL: time.Hour, RetireMargin: time.Minute}
	st := State{Phase: PhasePrepared, PreparedAt: now, Key: "k1", NextKey: "k2", NextIssuer: "i2"}
	if err := p.CheckActivate(st, now.Add(time.Minute), false); err == nil || !strings.Contains(err.Error(), "wait until") {
		t.Fatalf("early activate: %v", err)
	}
	if err := p.CheckActivate(st, now.Add(time.Minute), true); err != nil {
		t.Fatalf("forced activate: %v", err)
	}
	a := st.Activated(now.Add(time.Hour), p)
	if a.Phase != PhaseActivated || a.Key != "k2" || a.NextKey != "" || a.Issuer != "i2" || !a.RetireAfter.Equal(now.Add(2*time.Hour+time.Minute)) {
		t.Fatalf("Activated = %+v", a)
	}
	if err := p.CheckRetire(a, now.Add(2*time.Hour), false); err == nil || !strings.Contains(err.Error(), "may be valid until") {
		t.Fatalf("early retire: %v", err)
	}
	if err := a.Require(PhaseSteady); err == nil || !strings.Contains(err.Error(), "already in progress") {
		t.Fatalf("Require(steady) in activated: %v", err)
	}
}

// FuzzParseState: a stored state is parsed or refused with an error that
// says where; never half-read.
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"phase":"prepared","prepared_at":"2026-01-02T03:04:05Z","next_key":"k"}`))
	f.Add([]byte(`{"phase":"half-done"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseState("annotation x", data)
		if err != nil {
			if !strings.Contains(err.Error(), "annotation x") {
				t.Fatalf("error does not say where: %v", err)
			}
			return
		}
		switch st.Phase {
		case PhaseSteady, PhasePrepared, PhaseActivated:
		default:
			t.Fatalf("accepted phase %q", st.Phase)
		}
	})
}

// TestRunLogsRepeatedFailureOnce: a step that keeps failing the same way
// is counted every time and logged as an error once, then again when it
// fails differently.
func TestRunLogsRepeatedFailureOnce(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))
	errs := []string{"a", "a", "a", "b", "b"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	i, observed := 0, 0
	step := func(context.Context) (string, error) {
		if i == len(errs) {
			return "", nil // a tick raced the cancellation
		}
		err := errors.New(errs[i])
		if i++; i == len(errs) {
			cancel()
		}
		return "", err
	}
	if err := Run(ctx, time.Nanosecond, step, log, func(s string) {
		if s == "error" {
			observed++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "level=ERROR"); n != 2 || observed != len(errs)-1 {
		t.Fatalf("%d error lines (want 2), %d failures observed (want %d):\n%s", n, observed, len(errs)-1, buf.String())
	}
}
