package rotation

import (
	"fmt"
	"time"
)

// The defaults of Policy, for every CA mode.
const (
	DefaultPropagationDelay = time.Hour
	DefaultMaxTTL           = 24 * time.Hour
	DefaultRetireMargin     = 10 * time.Minute
)

// Policy holds the waits between the phases of a rotation. Zero values
// select the defaults above.
type Policy struct {
	// PropagationDelay is how long a prepared root must sit in the bundle
	// before it may sign: the time the bundle needs to reach every peer.
	PropagationDelay time.Duration
	// MaxTTL is the CA's longest SVID lifetime; the old root is kept that
	// long after activation.
	MaxTTL time.Duration
	// RetireMargin is added to MaxTTL before the old root may be retired,
	// for clock skew between the CA and its peers.
	RetireMargin time.Duration
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// ActivateAfter is when a root prepared at preparedAt may sign.
func (p Policy) ActivateAfter(preparedAt time.Time) time.Time {
	return preparedAt.Add(orDefault(p.PropagationDelay, DefaultPropagationDelay))
}

// RetireAfter is when no SVID signed under the old root can still be
// valid, for an activation at activatedAt.
func (p Policy) RetireAfter(activatedAt time.Time) time.Time {
	return activatedAt.Add(orDefault(p.MaxTTL, DefaultMaxTTL) + orDefault(p.RetireMargin, DefaultRetireMargin))
}

// checkActivate refuses an activation at now of the rotation st before
// the propagation delay has passed, unless force is set; noun names what
// rotates.
func (p Policy) checkActivate(st State, now time.Time, force bool, noun string) error {
	if ready := p.activateAfter(st); now.Before(ready) && !force {
		return fmt.Errorf("rotation: the new %s has been in the bundle since %s; wait until %s for it to reach every peer, or force", noun, st.PreparedAt.Format(time.RFC3339), ready.Format(time.RFC3339))
	}
	return nil
}

// activateAfter is when the root prepared in st may sign: by the policy
// of the step being taken (an operator may shorten the wait), or for a
// state that records no preparation time, when it says.
func (p Policy) activateAfter(st State) time.Time {
	if st.PreparedAt.IsZero() {
		return st.ActivateAfter
	}
	return p.ActivateAfter(st.PreparedAt)
}

// activateDue is when the root prepared in st is due to sign, as recorded
// at prepare by the policy of the CA that prepared it (whoever reads it:
// the metrics of a Secret read without the CA's policy); for a state
// without it, by p.
func (p Policy) activateDue(st State) time.Time {
	if !st.ActivateAfter.IsZero() {
		return st.ActivateAfter
	}
	return p.activateAfter(st)
}

// checkRetire refuses a retirement at now of the rotation st while an
// SVID signed under the old root may still be valid, unless force is set;
// noun names what rotates.
func (p Policy) checkRetire(st State, now time.Time, force bool, noun string) error {
	if now.Before(st.RetireAfter) && !force {
		return fmt.Errorf("rotation: SVIDs signed under the old %s may be valid until %s; retire after that, or force", noun, st.RetireAfter.Format(time.RFC3339))
	}
	return nil
}
