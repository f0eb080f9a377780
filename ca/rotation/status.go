package rotation

import (
	"crypto/x509"
	"fmt"
	"time"
)

// RootStatus describes one root of the trust bundle.
type RootStatus struct {
	Subject  string            `json:"subject"`
	Serial   string            `json:"serial"`
	NotAfter time.Time         `json:"not_after"`
	State    RootState         `json:"state"`
	Cert     *x509.Certificate `json:"-"`
}

// Status is the state of a CA's trust bundle and of any rotation.
type Status struct {
	Mode        Mode         `json:"mode"`
	Phase       Phase        `json:"phase"`
	Roots       []RootStatus `json:"roots"`
	PreparedAt  time.Time    `json:"prepared_at,omitzero"`
	ActivatedAt time.Time    `json:"activated_at,omitzero"`
	// ActivateAfter is when the prepared root has had the propagation
	// delay to reach every peer.
	ActivateAfter time.Time `json:"activate_after,omitzero"`
	RetireAfter   time.Time `json:"retire_after,omitzero"`
	// Issuer and NextIssuer name the upstream issuers of an
	// upstream-signed CA (see State).
	Issuer     string `json:"issuer,omitempty"`
	NextIssuer string `json:"next_issuer,omitempty"`
}

// Status returns the status of a CA in mode whose rotation stands at st,
// with no roots yet (see AddRoot, AddRoots).
func (p Policy) Status(mode Mode, st State) *Status {
	out := &Status{
		Mode: mode, Phase: st.Phase, PreparedAt: st.PreparedAt, ActivatedAt: st.ActivatedAt,
		RetireAfter: st.RetireAfter, Issuer: st.Issuer, NextIssuer: st.NextIssuer,
	}
	if st.Phase == PhasePrepared {
		// As recorded at prepare, by the policy of the CA that prepared
		// it; a state without it (or without its preparation time) by p.
		out.ActivateAfter = st.ActivateAfter
		if out.ActivateAfter.IsZero() {
			out.ActivateAfter = p.activateAfter(st)
		}
	}
	return out
}

// AddRoot appends root c, in state, to the status.
func (s *Status) AddRoot(c *x509.Certificate, state RootState) {
	s.Roots = append(s.Roots, RootStatus{Subject: c.Subject.String(), Serial: fmt.Sprintf("%x", c.SerialNumber), NotAfter: c.NotAfter, State: state, Cert: c})
}

// AddRoots appends the roots of bundle: active is the one the CA signs
// under, next the prepared root (nil if none); in the prepared phase any
// other root is prepared, else retiring.
func (s *Status) AddRoots(bundle []*x509.Certificate, active, next *x509.Certificate) {
	for _, c := range bundle {
		state := RootRetiring
		switch {
		case active != nil && c.Equal(active):
			state = RootActive
		case next != nil && c.Equal(next), next == nil && s.Phase == PhasePrepared:
			state = RootPrepared
		}
		s.AddRoot(c, state)
	}
}
