// Package svidstore holds the node agent's current X.509-SVID and trust
// bundle, and tells every subscriber when either changes.
//
// The agent's rotation loop writes to a Store; the SDS server, the SPIFFE
// Workload API server and the file writer read from it. One rotation thus
// fans out to all of them. A Store never hands out an SVID past its
// NotAfter: an expired SVID is dropped, and subscribers are told.
package svidstore

import (
	"sync"
	"time"

	"github.com/castellan-mesh/castellan/internal/broadcast"
)

// Snapshot is the content of a Store at one moment. Its fields are shared
// and must not be modified.
type Snapshot struct {
	// SVID is the current SVID, or nil when none is valid (not yet issued,
	// or expired).
	SVID *SVID
	// Bundle is the current trust bundle, or nil until one is loaded.
	Bundle *Bundle
	// Federated holds the bundles of the trust domains the local one
	// federates with, or nil when there are none.
	Federated *Federated
	// Withdrawn, when not empty, says why the store will never hold an
	// SVID again (see Store.Withdraw). A subscriber that serves one
	// workload ends its stream with it.
	Withdrawn string
	// Generation counts changes: it grows by one whenever SVID, Bundle,
	// Federated or Withdrawn changes, and never otherwise.
	Generation uint64
}

// Store holds the current Snapshot. The zero value is not usable; call New.
// A Store is safe for concurrent use.
type Store struct {
	now func() time.Time

	mu      sync.Mutex
	snap    Snapshot
	changed broadcast.Signal // notified under mu, taken under mu: one channel per Generation
	expiry  *time.Timer
	closed  bool
}

// New returns an empty Store.
func New() *Store {
	return &Store{now: time.Now}
}

// Load returns the current snapshot and a channel that is closed at the
// next change. A subscriber waits on the channel and then calls Load again;
// there is nothing to register and nothing to unregister, and a slow
// subscriber never delays the others.
func (s *Store) Load() (Snapshot, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := s.snap
	if snap.SVID != nil && !s.now().Before(snap.SVID.NotAfter) {
		// The expiry timer has not fired yet; never serve an expired SVID.
		snap.SVID = nil
	}
	return snap, s.changed.C()
}

// SetSVID makes svid the current SVID. An SVID with the version already
// held changes nothing. An SVID that has already expired is ignored and
// reported as false. The store drops svid when it expires, unless a newer
// one replaced it first.
func (s *Store) SetSVID(svid *SVID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.snap.Withdrawn != "" || svid == nil || !s.now().Before(svid.NotAfter) {
		return false
	}
	if s.snap.SVID != nil && s.snap.SVID.Version == svid.Version {
		return true
	}
	s.snap.SVID = svid
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.expiry = time.AfterFunc(svid.NotAfter.Sub(s.now()), func() { s.expire(svid) })
	s.notifyLocked()
	return true
}

// SetBundle makes b the current trust bundle. A bundle with the version
// already held changes nothing.
func (s *Store) SetBundle(b *Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || b == nil || (s.snap.Bundle != nil && s.snap.Bundle.Version == b.Version) {
		return
	}
	s.snap.Bundle = b
	s.notifyLocked()
}

// SetFederated makes f the current set of federated bundles. A set with
// the version already held changes nothing; nil, or an empty set, removes
// them.
func (s *Store) SetFederated(f *Federated) {
	if f != nil && len(f.Bundles) == 0 {
		f = nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || (f == nil && s.snap.Federated == nil) || (f != nil && s.snap.Federated != nil && s.snap.Federated.Version == f.Version) {
		return
	}
	s.snap.Federated = f
	s.notifyLocked()
}

// Withdraw takes the SVID out for good, because the workload it
// identified is no longer entitled to it: subscribers are told, and see a
// snapshot without an SVID whose Withdrawn field is reason. Later SetSVID
// calls are ignored; the bundle may still change. reason must not be
// empty.
func (s *Store) Withdraw(reason string) {
	if reason == "" {
		reason = "withdrawn"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snap.Withdrawn != "" {
		return
	}
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.snap.SVID = nil
	s.snap.Withdrawn = reason
	s.notifyLocked()
}

// Close stops the expiry timer. The store keeps answering Load with what it
// held; later Set calls are ignored.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.expiry != nil {
		s.expiry.Stop()
	}
}

func (s *Store) expire(svid *SVID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snap.SVID != svid {
		return
	}
	s.snap.SVID = nil
	s.notifyLocked()
}

func (s *Store) notifyLocked() {
	s.snap.Generation++
	s.changed.Notify()
}
