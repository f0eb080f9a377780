package jwtsvid

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// StateFile records the JWT signing keys in the CA's data directory.
const StateFile = "jwt-keys.json"

// MaxStateBytes bounds a stored State.
const MaxStateBytes = 16 << 10

// maxRetired bounds State.Retired: the oldest names are dropped.
const maxRetired = 32

// keyNameRE is a key name in the key store (kms.Ring's rule).
var keyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// State records which keys of the key store sign JWT-SVIDs and which are
// published, and where a JWT key rotation stands. Its phases are the X.509
// root's (package rotation): prepared (Next is published, Active signs),
// activated (Active signs, Previous is still published until no token it
// signed can be valid), steady (Active alone).
type State struct {
	Phase rotation.Phase `json:"phase"`
	// Active names the key that signs.
	Active string `json:"active"`
	// Next names a prepared key: published, not signing yet.
	Next string `json:"next,omitempty"`
	// Previous names the key that signed before the last activation:
	// published until RetireAfter.
	Previous   string    `json:"previous,omitempty"`
	PreparedAt time.Time `json:"prepared_at,omitzero"`
	// ActivatedAt is when Active began signing (in every phase; zero in
	// a state written before it was recorded).
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetireAfter time.Time `json:"retire_after,omitzero"`
	// Retired names keys dropped by a retirement, never published again
	// (at most the last 32).
	Retired []string `json:"retired,omitempty"`
}

// ReadState reads dir's StateFile. A missing file returns an error
// wrapping fs.ErrNotExist.
func ReadState(dir string) (State, []byte, error) {
	path := filepath.Join(dir, StateFile)
	b, err := smallfile.Read(path, MaxStateBytes)
	if err != nil {
		return State{}, nil, fmt.Errorf("jwtsvid: %w", err)
	}
	st, err := ParseState(path, b)
	return st, b, err
}

// ParseState decodes and checks the content b of the state stored at
// where (named in errors).
func ParseState(where string, b []byte) (State, error) {
	if len(b) > MaxStateBytes {
		return State{}, fmt.Errorf("jwtsvid: %s: %d bytes, more than %d", where, len(b), MaxStateBytes)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("jwtsvid: %s: %w", where, err)
	}
	if err := st.check(); err != nil {
		return State{}, fmt.Errorf("jwtsvid: %s: %w", where, err)
	}
	return st, nil
}

// check refuses a state whose key names or phase do not fit together.
func (st State) check() error {
	for _, n := range []string{st.Active, st.Next, st.Previous} {
		if n != "" && !keyNameRE.MatchString(n) {
			return fmt.Errorf("key name %q: want at most 64 letters, digits, '_', '.' and '-'", n)
		}
	}
	switch {
	case st.Active == "":
		return errors.New("no active key")
	case len(st.Retired) > maxRetired:
		return fmt.Errorf("%d retired keys, more than %d", len(st.Retired), maxRetired)
	}
	switch st.Phase {
	case rotation.PhaseSteady:
		if st.Next != "" || st.Previous != "" {
			return errors.New("phase steady with a next or previous key")
		}
	case rotation.PhasePrepared:
		if st.Next == "" || st.Previous != "" || st.Next == st.Active {
			return errors.New("phase prepared needs a next key distinct from the active one, and no previous key")
		}
	case rotation.PhaseActivated:
		if st.Previous == "" || st.Next != "" || st.Previous == st.Active {
			return errors.New("phase activated needs a previous key distinct from the active one, and no next key")
		}
	default:
		return fmt.Errorf("unknown phase %q (want steady, prepared or activated)", st.Phase)
	}
	return nil
}

// WriteState replaces dir's StateFile atomically.
func WriteState(dir string, st State) error {
	b, err := Encode(st)
	if err != nil {
		return err
	}
	if err := pemfile.WriteFileAtomic(filepath.Join(dir, StateFile), b, 0o644); err != nil {
		return fmt.Errorf("jwtsvid: %w", err)
	}
	return nil
}

// ErrNoState is returned by StateStore.Load when no state is stored yet.
var ErrNoState = errors.New("jwtsvid: no JWT key state stored yet")

// ErrConflict is returned by StateStore.Save when the stored state is no
// longer the one the caller read.
var ErrConflict = errors.New("jwtsvid: the JWT key state changed meanwhile; read it again")

// StateStore keeps the State: a data directory (DirState), or the CA's
// Kubernetes Secret shared by replicas (package jwtsvid/secretstore).
type StateStore interface {
	// Load returns the state and its stored encoding, or an error
	// wrapping ErrNoState.
	Load(ctx context.Context) (State, []byte, error)
	// Save replaces the state whose encoding Load returned as prev (nil:
	// none) with st, or fails with an error wrapping ErrConflict.
	Save(ctx context.Context, st State, prev []byte) error
}

// DirState keeps the State in StateFile of a data directory.
type DirState string

// Load implements StateStore.
func (d DirState) Load(context.Context) (State, []byte, error) {
	st, raw, err := ReadState(string(d))
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil, fmt.Errorf("%w: %v", ErrNoState, err)
	}
	return st, raw, err
}

// Save implements StateStore. The check against prev guards against
// another writer of the same directory between Load and Save, not during
// the write itself.
func (d DirState) Save(_ context.Context, st State, prev []byte) error {
	cur, err := os.ReadFile(filepath.Join(string(d), StateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		cur = nil
	case err != nil:
		return fmt.Errorf("jwtsvid: %w", err)
	}
	if !bytes.Equal(cur, prev) {
		return ErrConflict
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return fmt.Errorf("jwtsvid: %w", err)
	}
	return WriteState(string(d), st)
}

// Encode returns st as StateStore implementations store it.
func Encode(st State) ([]byte, error) {
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("jwtsvid: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("jwtsvid: %w", err)
	}
	return append(b, '\n'), nil
}
