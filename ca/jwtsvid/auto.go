package jwtsvid

import (
	"context"
	"errors"
	"fmt"
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
// for none), by the X.509 root's rule (rotation.Due):
//
//   - prepare once the active key has signed for every less the
//     propagation delay, so that the next key, published for that delay,
//     signs when the active one has signed for every (never when every is
//     0);
//   - activate once the prepared key has been published for the
//     propagation delay, which covers the agents' polls of the CA
//     (--jwt-bundle-refresh) and the other trust domains' polls of the
//     bundle endpoint (its refresh hint);
//   - retire once no JWT-SVID of the previous key can be valid (its TTL
//     plus the retire margin after activation).
//
// Several replicas may call Step on one shared state: each step is a
// write checked against the state read, so one replica takes it and the
// others see a conflict, which Step reports as no step. A state that does
// not say when the active key began signing (written before it was
// recorded) gets the time of this call, from which the key's age counts.
func (r *Rotator) Step(ctx context.Context, every time.Duration) (string, error) {
	if every <= 0 {
		return "", nil
	}
	if r.Keys == nil {
		return "", errors.New("jwtsvid: no key store configured")
	}
	st, raw, err := r.store().Load(ctx)
	if err != nil {
		return "", err
	}
	now := r.now().UTC()
	if st.Phase == rotation.PhaseSteady && st.ActivatedAt.IsZero() {
		st.ActivatedAt = now
		if err := r.store().Save(ctx, st, raw); err != nil && !errors.Is(err, ErrConflict) {
			return "", err
		}
		r.log().Info("the JWT signing key's activation time was not recorded; its age counts from now", "key", st.Active,
			"rotate_after", now.Add(every).Format(time.RFC3339))
		return "", nil
	}
	var did string
	switch did = rotation.Due(r.dueStatus(st, every), now, r.propagationDelay()); did {
	// The step works on the state read above: if another replica wrote
	// meanwhile, its write fails as a conflict.
	case rotation.StepPrepare:
		err = r.prepare(ctx, st, raw)
	case rotation.StepActivate:
		err = r.activate(ctx, st, raw, false)
	case rotation.StepRetire:
		err = r.retire(ctx, st, raw, false)
	}
	if errors.Is(err, ErrConflict) {
		// Another replica took a step meanwhile; the next call sees it.
		return "", nil
	}
	return did, err
}

// propagationDelay is the policy's propagation delay, its default
// applied.
func (r *Rotator) propagationDelay() time.Duration {
	return r.policy().ActivateAfter(time.Time{}).Sub(time.Time{})
}

// dueStatus returns st as rotation.Due reads it: the active key stands
// for a root that "expires" when it has signed for every, and the
// prepare is due a propagation delay before.
func (r *Rotator) dueStatus(st State, every time.Duration) *rotation.Status {
	p := r.policy()
	out := &rotation.Status{Phase: st.Phase, RetireAfter: st.RetireAfter}
	if st.Phase == rotation.PhasePrepared {
		out.ActivateAfter = p.ActivateAfter(st.PreparedAt)
	}
	out.Roots = []rotation.RootStatus{{State: rotation.RootActive, NotAfter: st.ActivatedAt.Add(every)}}
	return out
}

// Run calls Step every interval until ctx ends (see rotation.Run);
// observe, if set, sees every step taken and every failure ("error").
func (r *Rotator) Run(ctx context.Context, interval, every time.Duration, observe func(step string)) error {
	return rotation.Run(ctx, interval, func(ctx context.Context) (string, error) { return r.Step(ctx, every) }, r.log().With("keys", "jwt"), observe)
}

// AutoInterval is how often the automatic rotation looks for a due step
// under a policy: a quarter of the shortest wait, between 1s and 1m.
func AutoInterval(every, propagationDelay time.Duration) time.Duration {
	if propagationDelay <= 0 {
		propagationDelay = rotation.DefaultPropagationDelay
	}
	return min(max(min(every, propagationDelay)/4, time.Second), time.Minute)
}
