// Package backoff holds the timing rules that every retry and renewal loop
// shares: one jitter law, exponential backoff after failures, and renewal
// at a fraction of a credential's lifetime.
//
// The jitter law is the same everywhere: a wait d becomes a random point
// in its last quarter, [d - d/4, d]. It is never longer than d, so a cap
// (a maximum backoff, a refresh hint, a deadline) still holds; and loops
// that started together (agents after a CA outage, CAs restarted in step)
// drift apart by up to a quarter of their period on every round.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Jitter returns a random duration in [d - d/4, d]; d itself when d is
// not positive.
func Jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - rand.N(d/4+1)
}

// Exponential is backoff after consecutive failures: Initial after the
// first, doubled after each further one, never more than Max.
type Exponential struct {
	// Initial is the wait after the first failure. It must be positive.
	Initial time.Duration
	// Max caps the wait. It must be at least Initial.
	Max time.Duration
}

// Wait returns the wait after the n-th consecutive failure (n ≥ 1, taken
// as 1 below), without jitter.
func (e Exponential) Wait(n int) time.Duration {
	d := e.Initial
	for i := 1; i < n && d < e.Max; i++ {
		d *= 2
	}
	return min(d, e.Max)
}

// Next returns the jittered wait after the n-th consecutive failure.
func (e Exponential) Next(n int) time.Duration { return Jitter(e.Wait(n)) }

// MinFraction and MaxFraction bound the point of a lifetime at which
// RenewAt renews, whatever fraction and spread it is given: never in the
// first or last twentieth.
const (
	MinFraction = 0.05
	MaxFraction = 0.95
)

// RenewAt returns when a credential valid from start to end is due for
// renewal: fraction of the way through its lifetime, moved at random by up
// to ±spread/2 of it (spread 0: exactly there), kept within
// [MinFraction, MaxFraction].
func RenewAt(start, end time.Time, fraction, spread float64) time.Time {
	f := fraction
	if spread > 0 {
		f += spread * (rand.Float64() - 0.5)
	}
	f = min(max(f, MinFraction), MaxFraction)
	return start.Add(time.Duration(float64(end.Sub(start)) * f))
}
