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

func TestStateSteps(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := Policy{PropagationDelay: time.Hour, MaxTTL: time.Hour, RetireMargin: time.Minute}
	st := State{Phase: PhasePrepared, PreparedAt: now, Key: "k1", NextKey: "k2", NextIssuer: "i2"}
	if err := p.checkActivate(st, now.Add(time.Minute), false, "root"); err == nil || !strings.Contains(err.Error(), "wait until") {
		t.Fatalf("early activate: %v", err)
	}
	if err := p.checkActivate(st, now.Add(time.Minute), true, "root"); err != nil {
		t.Fatalf("forced activate: %v", err)
	}
	a := st.Activated(now.Add(time.Hour), p)
	if a.Phase != PhaseActivated || a.Key != "k2" || a.NextKey != "" || a.Issuer != "i2" || !a.RetireAfter.Equal(now.Add(2*time.Hour+time.Minute)) {
		t.Fatalf("Activated = %+v", a)
	}
	if err := p.checkRetire(a, now.Add(2*time.Hour), false, "root"); err == nil || !strings.Contains(err.Error(), "may be valid until") {
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
