package rotation

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// File is the state of a rotation in a data directory.
const File = "rotation.json"

// MaxStateBytes bounds a stored State.
const MaxStateBytes = 64 << 10

// State records where a rotation stands. A data directory keeps a root's
// in File; a Kubernetes Secret in an annotation. Package jwtsvid keeps the
// JWT keys' in its own format.
type State struct {
	Phase      Phase     `json:"phase"`
	PreparedAt time.Time `json:"prepared_at,omitzero"`
	// ActivateAfter is when a prepared root has had the propagation delay
	// to reach every peer by the policy it was prepared with: what Status
	// reports and automatic steps wait for. A step taken by hand waits by
	// PreparedAt and its own policy, so an operator may shorten the wait.
	ActivateAfter time.Time `json:"activate_after,omitzero"`
	// ActivatedAt is when the active authority began signing, kept until
	// the next activation; zero when not known.
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	// RetireAfter is when the last SVID signed under the old root expires:
	// the activation time plus the longest SVID lifetime plus clock skew.
	RetireAfter time.Time `json:"retire_after,omitzero"`
	// Issuer names the upstream issuer (a Vault PKI issuer) that signs
	// the intermediate from activation on; it stays after retirement.
	// Empty means the one the CA is configured with.
	Issuer string `json:"issuer,omitempty"`
	// NextIssuer names the upstream issuer of a prepared root.
	NextIssuer string `json:"next_issuer,omitempty"`
	// Retired holds the fingerprints (Kind.Fingerprint: for a root the
	// SHA-256 of its DER, in hex) of authorities dropped from the bundle
	// by a retirement, which are never served again.
	Retired []string `json:"retired,omitempty"`
	// Key names the active self-signed root's key in the key store that
	// holds it outside the data directory (an HSM, Vault Transit), once a
	// rotation has replaced the configured key; empty is the configured
	// key. NextKey names the prepared root's key. A JWT signing key is
	// always named.
	Key     string `json:"key,omitempty"`
	NextKey string `json:"next_key,omitempty"`
}

// ReadState reads dir's File. A missing file is the steady phase.
func ReadState(dir string) (State, error) {
	path := filepath.Join(dir, File)
	b, err := smallfile.Read(path, MaxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return State{Phase: PhaseSteady}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("rotation: %w", err)
	}
	return ParseState(path, b)
}

// ParseState decodes the content b of the state stored at where (named
// in errors).
func ParseState(where string, b []byte) (State, error) {
	if len(b) > MaxStateBytes {
		return State{}, fmt.Errorf("rotation: %s: %d bytes, more than %d", where, len(b), MaxStateBytes)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("rotation: %s: %w", where, err)
	}
	switch st.Phase {
	case PhaseSteady, PhasePrepared, PhaseActivated:
	default:
		return State{}, fmt.Errorf("rotation: %s: unknown phase %q (want steady, prepared or activated)", where, st.Phase)
	}
	return st, nil
}

// WriteState replaces dir's File atomically.
func WriteState(dir string, st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("rotation: %w", err)
	}
	if err := pemfile.WriteFileAtomic(filepath.Join(dir, File), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("rotation: %w", err)
	}
	return nil
}

// Require refuses a root rotation step that needs phase want while st is
// in another phase, saying which step would come next.
func (st State) Require(want Phase) error { return st.require(want, "root") }

// require is Require for a rotation of what noun names.
func (st State) require(want Phase, noun string) error {
	if st.Phase == want {
		return nil
	}
	switch want {
	case PhaseSteady:
		return fmt.Errorf("rotation: a rotation is already in progress (phase %s); activate or retire it first", st.Phase)
	case PhasePrepared:
		return fmt.Errorf("rotation: nothing to activate (phase %s); prepare a %s first", st.Phase, noun)
	default:
		return fmt.Errorf("rotation: nothing to retire (phase %s)", st.Phase)
	}
}

// Activated is the state after activating the rotation st at now: the
// old root stays until p.RetireAfter(now).
func (st State) Activated(now time.Time, p Policy) State {
	key := st.Key
	if st.NextKey != "" {
		key = st.NextKey
	}
	return State{
		Phase: PhaseActivated, PreparedAt: st.PreparedAt, ActivatedAt: now,
		RetireAfter: p.RetireAfter(now), Issuer: st.NextIssuer, Retired: st.Retired, Key: key,
	}
}

// Fingerprint is the SHA-256 of a certificate's DER, in hex, as recorded
// in State.Retired.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
