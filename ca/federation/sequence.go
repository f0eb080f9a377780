package federation

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// SequenceFileName is the file, in the data directory, that keeps the
// bundle endpoint's spiffe_sequence across restarts.
const SequenceFileName = "bundle-sequence.json"

// sequencer numbers the contents of the local bundle: a new content gets
// a number higher than every one before, and the same content keeps its
// number. The number is the larger of the last one plus one and the Unix
// time of the change, and it is written to a file before it is served,
// so it never moves backwards across restarts, nor when the file is lost
// (as long as the clock does not go back), and CA replicas that see a
// rotation at about the same time serve about the same number.
type sequencer struct {
	path string
	now  func() time.Time

	mu    sync.Mutex
	state sequenceState
}

type sequenceState struct {
	Sequence uint64 `json:"sequence"`
	Digest   string `json:"digest"`
}

func newSequencer(path string) (*sequencer, error) {
	s := &sequencer{path: path, now: time.Now}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("federation: reading the bundle sequence: %w", err)
	case len(data) > 4096:
		return nil, fmt.Errorf("federation: %s is over 4096 bytes; it is not a bundle sequence file", path)
	}
	if err := json.Unmarshal(data, &s.state); err != nil {
		return nil, fmt.Errorf("federation: %s does not parse (remove it to start again from the clock): %w", path, err)
	}
	return s, nil
}

// number returns the sequence number of the content whose digest is
// digest, recording a new number when the content changed.
func (s *sequencer) number(digest string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if digest == s.state.Digest && s.state.Sequence != 0 {
		return s.state.Sequence, nil
	}
	next := sequenceState{Sequence: max(s.state.Sequence+1, uint64(max(s.now().Unix(), 0))), Digest: digest}
	data, _ := json.Marshal(next)
	if err := pemfile.WriteFileAtomic(s.path, append(data, '\n'), 0o644); err != nil {
		return 0, fmt.Errorf("federation: recording the bundle sequence: %w", err)
	}
	s.state = next
	return next.Sequence, nil
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
