package jwtsvid

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
)

// DefaultRotateEvery is how long a JWT signing key signs before an
// automatic rotation replaces it.
const DefaultRotateEvery = 30 * 24 * time.Hour

// CheckRotateEvery refuses an automatic rotation period that leaves a
// prepared key less than the propagation delay to reach every verifier
// (0 disables automatic rotation and is accepted).
func CheckRotateEvery(every, propagationDelay time.Duration) error {
	if propagationDelay <= 0 {
		propagationDelay = rotation.DefaultPropagationDelay
	}
	if every != 0 && every < 2*propagationDelay {
		return fmt.Errorf("jwtsvid: rotating the JWT key every %s leaves less than twice the propagation delay (%s) between rotations; want at least %s, or 0 to disable", every, propagationDelay, 2*propagationDelay)
	}
	return nil
}

// Step takes the automatic step of a JWT key rotation that is due at now
// and says which (rotation.StepPrepare, StepActivate, StepRetire, or ""
// for none), by the X.509 root's rule (rotation.EngineOf.Step), the key
// being due once it has signed for every (never when every is 0):
//
//   - prepare once the active key has signed for every less the
//     propagation delay, so that the next key, published for that delay,
//     signs when the active one has signed for every;
//   - activate once the prepared key has been published for the
//     propagation delay, which covers the agents' polls of the CA
//     (--jwt-bundle-refresh) and the other trust domains' polls of the
//     bundle endpoint (its refresh hint);
//   - retire once no JWT-SVID of the previous key can be valid (its TTL
//     plus the retire margin after activation).
//
// Several replicas may call Step on one shared state: each step is a
// write checked against the state read, so one replica takes it and the
// others see a conflict, which Step reports as no step.
func (r *Rotator) Step(ctx context.Context, every time.Duration) (string, error) {
	if every <= 0 {
		return "", nil
	}
	p := r.policy()
	did, err := r.engine(every).Step(ctx, p.ActivateAfter(time.Time{}).Sub(time.Time{}))
	if errors.Is(err, ErrConflict) {
		// Another replica took a step meanwhile; the next call sees it.
		return "", nil
	}
	return did, err
}

// Run calls Step every interval until ctx ends (see rotation.Run);
// observe, if set, sees every step taken and every failure ("error").
func (r *Rotator) Run(ctx context.Context, interval, every time.Duration, observe func(step string)) error {
	log := cmp.Or(r.Logger, slog.Default())
	return rotation.Run(ctx, interval, func(ctx context.Context) (string, error) { return r.Step(ctx, every) }, log.With("keys", "jwt"), observe)
}

// AutoInterval is how often the automatic rotation looks for a due step
// under a policy: a quarter of the shortest wait, between 1s and 1m.
func AutoInterval(every, propagationDelay time.Duration) time.Duration {
	if propagationDelay <= 0 {
		propagationDelay = rotation.DefaultPropagationDelay
	}
	return min(max(min(every, propagationDelay)/4, time.Second), time.Minute)
}
