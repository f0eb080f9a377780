package federation_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/federation"
	"github.com/castellan-mesh/castellan/internal/broadcast"
)

// notifyingSource is a source that signals its changes, as a ca.Notifier.
type notifyingSource struct {
	source
	changed broadcast.Signal
}

func (s *notifyingSource) Changed() <-chan struct{} { return s.changed.C() }

func (s *notifyingSource) set(a *ca.Authority) {
	s.source.set(a)
	s.changed.Notify()
}

var _ ca.Notifier = (*notifyingSource)(nil)

// notifyingJWT is a JWT authority source that signals its changes, as
// jwtsvid.KeySet does.
type notifyingJWT struct {
	mu      sync.Mutex
	keys    map[string]crypto.PublicKey
	changed broadcast.Signal
}

func (j *notifyingJWT) JWTAuthorities() map[string]crypto.PublicKey {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.keys
}

func (j *notifyingJWT) Changed() <-chan struct{} { return j.changed.C() }

func (j *notifyingJWT) set(keys map[string]crypto.PublicKey) {
	j.mu.Lock()
	j.keys = keys
	j.mu.Unlock()
	j.changed.Notify()
}

// savedSequences is a file sequence store that reports each number it
// records.
type savedSequences struct {
	federation.FileSequence
	saved chan uint64
}

func (s savedSequences) Save(ctx context.Context, st federation.SequenceState, prev []byte) error {
	err := s.FileSequence.Save(ctx, st, prev)
	if err == nil {
		s.saved <- st.Sequence
	}
	return err
}

func newJWTKey(t *testing.T) crypto.PublicKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

// TestEndpointNumbersChanges: a new content of the bundle gets its
// sequence number as soon as a source with a change channel signals it,
// with no poll to wait for (the poll interval is an hour); a source
// without one is polled.
func TestEndpointNumbersChanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		poll time.Duration
		// setup returns the configuration and a function that makes a
		// new content each time it is called.
		setup func(t *testing.T) (federation.EndpointConfig, func())
	}{{
		name: "CA material notifies",
		poll: time.Hour,
		setup: func(t *testing.T) (federation.EndpointConfig, func()) {
			src := &notifyingSource{source: source{a: newAuthority(t, tdA)}}
			return federation.EndpointConfig{Source: src}, func() { src.set(newAuthority(t, tdA)) }
		},
	}, {
		name: "JWT authorities notify",
		poll: time.Hour,
		setup: func(t *testing.T) (federation.EndpointConfig, func()) {
			src := &notifyingSource{source: source{a: newAuthority(t, tdA)}}
			jwt := &notifyingJWT{keys: map[string]crypto.PublicKey{"k1": newJWTKey(t)}}
			return federation.EndpointConfig{Source: src, JWT: jwt}, func() {
				jwt.set(map[string]crypto.PublicKey{"k1": jwt.JWTAuthorities()["k1"], "k2": newJWTKey(t)})
			}
		},
	}, {
		name: "CA material without a change channel is polled",
		poll: 10 * time.Millisecond,
		setup: func(t *testing.T) (federation.EndpointConfig, func()) {
			src := &source{a: newAuthority(t, tdA)}
			return federation.EndpointConfig{Source: src}, func() { src.set(newAuthority(t, tdA)) }
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			// Registered first, so restored after the endpoint stops.
			t.Cleanup(federation.SetSequenceCheck(tc.poll))
			cfg, change := tc.setup(t)
			store := savedSequences{FileSequence: federation.FileSequence(t.TempDir() + "/" + federation.SequenceFileName), saved: make(chan uint64, 16)}
			cfg.TrustDomain, cfg.Sequence = tdA, store
			startEndpoint(t, cfg)
			last := awaitSaved(t, store.saved)
			// Twice: the first change may come before the endpoint
			// waits for one, the second comes while it waits.
			for i := range 2 {
				change()
				got := awaitSaved(t, store.saved)
				if got <= last {
					t.Fatalf("change %d: the new content is numbered %d, not past the last one's %d", i+1, got, last)
				}
				last = got
			}
		})
	}
}

// awaitSaved returns the next number recorded, or fails the test when
// none is recorded for long past any poll.
func awaitSaved(t *testing.T, saved <-chan uint64) uint64 {
	t.Helper()
	select {
	case n := <-saved:
		return n
	case <-time.After(20 * time.Second):
		t.Fatal("no new sequence number was recorded")
		return 0
	}
}
