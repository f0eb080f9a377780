package federation_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/federation"
)

// replica serves the bundle of its own view of the material, numbered
// through a store shared with other replicas, at a fake time.
type replica struct {
	store federation.SequenceStore
	now   *time.Time
}

func (r replica) seq(t *testing.T, a *ca.Authority) uint64 {
	t.Helper()
	b, err := federation.NewBundleForTest(r.store, tdB, a, func() time.Time { return *r.now })
	if err != nil {
		t.Fatal(err)
	}
	n, ok := b.SequenceNumber()
	if !ok {
		t.Fatal("no sequence number")
	}
	return n
}

// TestSequenceSharedByReplicas: CAs that share a sequence store serve one
// content under one number: the first to see a change numbers it, higher
// than before; one that has not reloaded yet keeps serving its content
// under that content's number (lower, not a new one); a content seen again
// long after it was superseded gets a new, higher number.
func TestSequenceSharedByReplicas(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	store := federation.FileSequence(filepath.Join(t.TempDir(), federation.SequenceFileName))
	a, b := replica{store, &now}, replica{store, &now}
	c1, c2 := newAuthority(t, tdB), newAuthority(t, tdB)

	n1 := a.seq(t, c1)
	now = now.Add(time.Minute)
	if got := b.seq(t, c1); got != n1 {
		t.Fatalf("replica b serves content 1 as %d, a as %d", got, n1)
	}
	now = now.Add(time.Minute)
	n2 := a.seq(t, c2) // a reloads first
	if n2 <= n1 {
		t.Fatalf("content 2 numbered %d after %d", n2, n1)
	}
	now = now.Add(2 * time.Second)
	if got := b.seq(t, c1); got != n1 {
		t.Fatalf("replica b, not reloaded yet, serves content 1 as %d, want %d", got, n1)
	}
	if got := b.seq(t, c2); got != n2 {
		t.Fatalf("replica b serves content 2 as %d, a as %d", got, n2)
	}
	// A rotation: content 3, seen by b first.
	c3 := newAuthority(t, tdB)
	now = now.Add(time.Hour)
	n3 := b.seq(t, c3)
	if got := a.seq(t, c3); n3 <= n2 || got != n3 {
		t.Fatalf("content 3: b %d, a %d, after %d", n3, got, n2)
	}
	// Content 1 again, long after: a new number.
	now = now.Add(federation.EarlierWindow)
	if got := a.seq(t, c1); got <= n3 {
		t.Fatalf("content 1 seen again numbered %d, not above %d", got, n3)
	}
}

// racingSequence is a SequenceStore on which, just before the first Save,
// another CA numbers the same content.
type racingSequence struct {
	federation.SequenceStore
	mu    sync.Mutex
	other func()
}

func (s *racingSequence) Save(ctx context.Context, st federation.SequenceState, prev []byte) error {
	s.mu.Lock()
	other := s.other
	s.other = nil
	s.mu.Unlock()
	if other != nil {
		other()
	}
	return s.SequenceStore.Save(ctx, st, prev)
}

// TestSequenceRace: two CAs that number one new content at once serve it
// under the number the first recorded.
func TestSequenceRace(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	file := federation.FileSequence(filepath.Join(t.TempDir(), federation.SequenceFileName))
	c := newAuthority(t, tdB)
	var first uint64
	racing := &racingSequence{SequenceStore: file}
	racing.other = func() {
		now = now.Add(3 * time.Second) // a later clock gives a different number
		first = replica{file, &now}.seq(t, c)
	}
	got := replica{racing, &now}.seq(t, c)
	if first == 0 || got != first {
		t.Fatalf("the loser serves %d, the winner %d", got, first)
	}
}

// TestSequenceLegacyFile: the file of an earlier version (sequence and
// digest only) is read, and its number never goes back.
func TestSequenceLegacyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), federation.SequenceFileName)
	if err := os.WriteFile(path, []byte(`{"sequence":4000000000,"digest":"x"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	if got := (replica{federation.FileSequence(path), &now}).seq(t, newAuthority(t, tdB)); got != 4000000001 {
		t.Fatalf("sequence %d after a legacy 4000000000", got)
	}
}

func TestParseSequenceState(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"legacy", `{"sequence":1,"digest":"d"}`, true},
		{"earlier", `{"sequence":2,"digest":"d","earlier":[{"sequence":1,"digest":"c","until":"2026-01-01T00:00:00Z"}]}`, true},
		{"garbage", `sequence`, false},
		{"too many earlier", `{"sequence":2,"earlier":[{},{},{},{},{},{},{},{},{}]}`, false},
		{"too large", `{"digest":"` + string(make([]byte, federation.MaxSequenceBytes)) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := federation.ParseSequenceState("test", []byte(tc.in)); (err == nil) != tc.ok {
				t.Fatalf("ParseSequenceState: %v", err)
			}
		})
	}
}

// FuzzParseSequenceState: any input parses or fails without panicking,
// and what parses encodes and parses back to the same state.
func FuzzParseSequenceState(f *testing.F) {
	f.Add([]byte(`{"sequence":2,"digest":"d","earlier":[{"sequence":1,"digest":"c","until":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"sequence":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := federation.ParseSequenceState("fuzz", b)
		if err != nil {
			return
		}
		enc, err := federation.EncodeSequenceState(st)
		if err != nil {
			t.Fatal(err)
		}
		if len(enc) > federation.MaxSequenceBytes {
			return // a long input may encode longer (escapes)
		}
		again, err := federation.ParseSequenceState("fuzz", enc)
		if err != nil {
			t.Fatalf("encoding of a parsed state does not parse: %v\n%s", err, enc)
		}
		if again.Sequence != st.Sequence || again.Digest != st.Digest || len(again.Earlier) != len(st.Earlier) {
			t.Fatalf("round trip changed the state: %+v, %+v", st, again)
		}
	})
}
