// Package broadcast tells any number of waiters that something changed,
// with nothing to register or unregister: each waits on a channel that is
// closed at the next change, and a slow waiter holds nobody up.
package broadcast

import "sync"

// Signal is a change signal. The zero value is ready to use; a Signal
// must not be copied after first use.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// C returns a channel that is closed at the next Notify. To miss no
// change, a waiter takes the channel before it reads the state the
// signal is about, then waits on it. Where the state and Notify are
// guarded by one lock, taking the channel under that lock too pairs it
// with the state exactly: it is closed only by a change after what the
// waiter read, never by one already in it.
func (s *Signal) C() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Notify closes the channel C returned, waking every waiter, and starts a
// new one.
func (s *Signal) Notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
	}
	s.ch = make(chan struct{})
}
