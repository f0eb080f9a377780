package federation

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/smallfile"
)

// SequenceFileName is the file, in the data directory, that keeps the
// bundle endpoint's spiffe_sequence across restarts (FileSequence).
const SequenceFileName = "bundle-sequence.json"

// MaxSequenceBytes bounds a stored SequenceState.
const MaxSequenceBytes = 4096

// The limits of SequenceState.Earlier: how many contents it remembers,
// and for how long after they were superseded (longer than any replica
// takes to reload its material).
const (
	maxEarlier    = 8
	EarlierWindow = 10 * time.Minute
)

// ErrSequenceConflict is returned by SequenceStore.Save when the stored
// state is no longer the one the caller read.
var ErrSequenceConflict = errors.New("federation: the bundle sequence changed meanwhile; read it again")

// SequenceState numbers the contents of the local bundle: the number of
// the current content, and of the ones just before it.
type SequenceState struct {
	// Sequence is the number of the content whose digest is Digest.
	Sequence uint64 `json:"sequence"`
	Digest   string `json:"digest"`
	// Earlier are the contents numbered before, newest first, with when
	// they were superseded: a replica that has not reloaded its material
	// yet serves its (older) content under the number it had.
	Earlier []EarlierSequence `json:"earlier,omitempty"`
}

// EarlierSequence is a superseded content and its number.
type EarlierSequence struct {
	Sequence uint64    `json:"sequence"`
	Digest   string    `json:"digest"`
	Until    time.Time `json:"until"`
}

// lookup returns the number of the content digest at now: the current
// one's, or an earlier one's superseded less than EarlierWindow ago.
func (st SequenceState) lookup(digest string, now time.Time) (uint64, bool) {
	if st.Sequence != 0 && st.Digest == digest {
		return st.Sequence, true
	}
	for _, e := range st.Earlier {
		if e.Digest == digest && now.Sub(e.Until) < EarlierWindow {
			return e.Sequence, true
		}
	}
	return 0, false
}

// next returns the state after content digest replaces st's at now: its
// number is the larger of the last one plus one and the Unix time of now,
// so that it never moves backwards, even when the state is lost (as long
// as the clock does not go back).
func (st SequenceState) next(digest string, now time.Time) SequenceState {
	out := SequenceState{Sequence: max(st.Sequence+1, uint64(max(now.Unix(), 0))), Digest: digest}
	if st.Sequence != 0 {
		out.Earlier = append(out.Earlier, EarlierSequence{Sequence: st.Sequence, Digest: st.Digest, Until: now.UTC()})
	}
	for _, e := range st.Earlier {
		if len(out.Earlier) < maxEarlier && now.Sub(e.Until) < EarlierWindow && e.Digest != digest {
			out.Earlier = append(out.Earlier, e)
		}
	}
	return out
}

// ParseSequenceState decodes the state stored at where (named in errors).
func ParseSequenceState(where string, b []byte) (SequenceState, error) {
	var st SequenceState
	if len(b) > MaxSequenceBytes {
		return st, fmt.Errorf("federation: %s is over %d bytes; it is not a bundle sequence", where, MaxSequenceBytes)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("federation: %s does not parse (remove it to start again from the clock): %w", where, err)
	}
	if len(st.Earlier) > maxEarlier {
		return st, fmt.Errorf("federation: %s remembers %d earlier contents, more than %d", where, len(st.Earlier), maxEarlier)
	}
	return st, nil
}

// EncodeSequenceState returns st as a SequenceStore stores it.
func EncodeSequenceState(st SequenceState) ([]byte, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	return append(b, '\n'), nil
}

// SequenceStore keeps the SequenceState: a file in the data directory
// for one CA (FileSequence), or the CA's Kubernetes Secret shared by its
// replicas (package federation/secretsequence), so that they all serve a
// content under one number.
type SequenceStore interface {
	// Load returns the state and its stored encoding; the zero state and
	// nil when none is stored yet.
	Load(ctx context.Context) (SequenceState, []byte, error)
	// Save replaces the state whose encoding Load returned as prev with
	// st, or fails with an error wrapping ErrSequenceConflict.
	Save(ctx context.Context, st SequenceState, prev []byte) error
}

// FileSequence keeps the SequenceState in a file.
type FileSequence string

// Load implements SequenceStore.
func (f FileSequence) Load(context.Context) (SequenceState, []byte, error) {
	b, err := smallfile.Read(string(f), MaxSequenceBytes)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return SequenceState{}, nil, nil
	case err != nil:
		return SequenceState{}, nil, fmt.Errorf("federation: reading the bundle sequence: %w", err)
	}
	st, err := ParseSequenceState(string(f), b)
	return st, b, err
}

// Save implements SequenceStore. The check against prev guards against
// another writer between Load and Save, not during the write itself.
func (f FileSequence) Save(_ context.Context, st SequenceState, prev []byte) error {
	cur, err := os.ReadFile(string(f))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("federation: reading the bundle sequence: %w", err)
	}
	if !bytes.Equal(cur, prev) {
		return ErrSequenceConflict
	}
	b, err := EncodeSequenceState(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(string(f)), 0o700); err != nil {
		return fmt.Errorf("federation: %w", err)
	}
	if err := pemfile.WriteFileAtomic(string(f), b, 0o644); err != nil {
		return fmt.Errorf("federation: recording the bundle sequence: %w", err)
	}
	return nil
}

// sequenceOpTimeout bounds the store calls of one numbering.
const sequenceOpTimeout = 10 * time.Second

// maxSequenceRetries bounds the retries of a numbering that lost a race.
const maxSequenceRetries = 5

// sequencer numbers the contents of the local bundle through a
// SequenceStore: a new content gets a number higher than every one
// before, recorded before it is served; a content keeps its number; and
// every CA sharing the store serves a content under the same number. The
// store is read only when the content changes.
type sequencer struct {
	store SequenceStore
	now   func() time.Time

	mu     sync.Mutex
	digest string // of the content last numbered
	seq    uint64 // its number
}

func newSequencer(store SequenceStore) *sequencer {
	return &sequencer{store: store, now: time.Now}
}

// number returns the sequence number of the content whose digest is
// digest, recording a new number when no CA has numbered it yet.
func (s *sequencer) number(digest string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if digest == s.digest && s.seq != 0 {
		return s.seq, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sequenceOpTimeout)
	defer cancel()
	for range maxSequenceRetries {
		st, raw, err := s.store.Load(ctx)
		if err != nil {
			return 0, err
		}
		now := s.now()
		n, ok := st.lookup(digest, now)
		if !ok {
			next := st.next(digest, now)
			err := s.store.Save(ctx, next, raw)
			if errors.Is(err, ErrSequenceConflict) {
				continue // another CA numbered a content meanwhile
			}
			if err != nil {
				return 0, err
			}
			n = next.Sequence
		}
		s.digest, s.seq = digest, n
		return n, nil
	}
	return 0, fmt.Errorf("federation: the bundle sequence kept changing during %d attempts to number a new content", maxSequenceRetries)
}

// contentDigest names a bundle's authorities, in an order that does not
// depend on how they are held.
func contentDigest(roots []*x509.Certificate, jwt map[string]crypto.PublicKey) string {
	var parts []string
	for _, c := range roots {
		sum := sha256.Sum256(c.Raw)
		parts = append(parts, "x509:"+hex.EncodeToString(sum[:]))
	}
	for kid, k := range jwt {
		der, _ := x509.MarshalPKIXPublicKey(k)
		sum := sha256.Sum256(der)
		parts = append(parts, "jwt:"+kid+":"+hex.EncodeToString(sum[:]))
	}
	slices.Sort(parts)
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
