package broadcast

import (
	"sync"
	"testing"
)

// TestSignal: a channel taken before a Notify is closed by it, one taken
// after is not, and every waiter wakes.
func TestSignal(t *testing.T) {
	var s Signal
	before := s.C()
	select {
	case <-before:
		t.Fatal("closed before any Notify")
	default:
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { <-before })
	}
	s.Notify()
	wg.Wait()
	after := s.C()
	select {
	case <-after:
		t.Fatal("a channel taken after the Notify is closed")
	default:
	}
	s.Notify()
	<-after
}
