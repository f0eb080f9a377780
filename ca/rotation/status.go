package rotation

import (
	"crypto/x509"
	"time"
)

// RootStatus describes one authority of the trust bundle: a root, or a
// JWT signing key (Subject its name in the key store, Serial its key ID,
// no expiry).
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
