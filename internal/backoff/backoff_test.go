package backoff_test

import (
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/internal/backoff"
)

func TestJitter(t *testing.T) {
	tests := []struct {
		name   string
		d      time.Duration
		lo, hi time.Duration
	}{
		{name: "second", d: time.Second, lo: 750 * time.Millisecond, hi: time.Second},
		{name: "five minutes", d: 5 * time.Minute, lo: 225 * time.Second, hi: 5 * time.Minute},
		{name: "zero", d: 0, lo: 0, hi: 0},
		{name: "negative", d: -time.Second, lo: -time.Second, hi: -time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for range 200 {
				got := backoff.Jitter(tt.d)
				if got < tt.lo || got > tt.hi {
					t.Fatalf("Jitter(%s) = %s, want in [%s, %s]", tt.d, got, tt.lo, tt.hi)
				}
				seen[got] = true
			}
			if tt.d > 0 && len(seen) < 10 {
				t.Fatalf("Jitter(%s) took %d distinct values in 200 draws", tt.d, len(seen))
			}
		})
	}
}

func TestExponential(t *testing.T) {
	e := backoff.Exponential{Initial: time.Second, Max: 30 * time.Second}
	tests := []struct {
		n    int
		want time.Duration
	}{
		{n: 0, want: time.Second},
		{n: 1, want: time.Second},
		{n: 2, want: 2 * time.Second},
		{n: 3, want: 4 * time.Second},
		{n: 5, want: 16 * time.Second},
		{n: 6, want: 30 * time.Second},
		{n: 1 << 20, want: 30 * time.Second},
	}
	for _, tt := range tests {
		if got := e.Wait(tt.n); got != tt.want {
			t.Errorf("Wait(%d) = %s, want %s", tt.n, got, tt.want)
		}
		for range 50 {
			if got := e.Next(tt.n); got < tt.want-tt.want/4 || got > tt.want {
				t.Fatalf("Next(%d) = %s, want in the last quarter of %s", tt.n, got, tt.want)
			}
		}
	}
}

func TestRenewAt(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const life = 100 * time.Hour
	tests := []struct {
		name             string
		fraction, spread float64
		lo, hi           float64 // fractions of the lifetime
	}{
		{name: "half, spread 0.1", fraction: 0.5, spread: 0.1, lo: 0.45, hi: 0.55},
		{name: "exact", fraction: 0.5, lo: 0.5, hi: 0.5},
		{name: "late", fraction: 0.8, spread: 0.2, lo: 0.7, hi: 0.9},
		{name: "clamped low", fraction: 0, lo: backoff.MinFraction, hi: backoff.MinFraction},
		{name: "clamped high", fraction: 1, spread: 0.5, lo: 0.75, hi: backoff.MaxFraction},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 200 {
				at := backoff.RenewAt(start, start.Add(life), tt.fraction, tt.spread)
				f := float64(at.Sub(start)) / float64(life)
				if f < tt.lo-1e-9 || f > tt.hi+1e-9 {
					t.Fatalf("renewal at %.4f of the lifetime, want in [%.2f, %.2f]", f, tt.lo, tt.hi)
				}
			}
		})
	}
}
