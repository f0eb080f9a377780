package sds

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/internal/testpoll"
)

// TestPusherNeverMissesAKick kicks a slow pusher from many goroutines,
// each kick announcing a new generation: once the pusher is idle, its last
// push must have seen the last generation, and no two pushes may overlap.
func TestPusherNeverMissesAKick(t *testing.T) {
	var (
		generation, seen atomic.Int64
		running, overlap atomic.Bool
		pushes           atomic.Int64
	)
	p := &pusher{push: func() {
		if !running.CompareAndSwap(false, true) {
			overlap.Store(true)
		}
		seen.Store(generation.Load())
		pushes.Add(1)
		time.Sleep(time.Millisecond)
		running.Store(false)
	}}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				generation.Add(1)
				p.kick()
			}
		}()
	}
	wg.Wait()
	testpoll.UntilNil(t, func() error {
		if p.running.Load() || seen.Load() != generation.Load() {
			return fmt.Errorf("last push saw generation %d of %d", seen.Load(), generation.Load())
		}
		return nil
	})
	if overlap.Load() {
		t.Fatal("two pushes ran at once")
	}
	if pushes.Load() >= 400 {
		t.Fatalf("%d pushes for 400 kicks: kicks during a push were not coalesced", pushes.Load())
	}
}

func TestHubStopsWatcherWithLastStream(t *testing.T) {
	store := svidstore.New()
	defer store.Close()
	s, err := New(store)
	if err != nil {
		t.Fatal(err)
	}
	feedA, unregA := s.register(store, &pusher{push: func() {}})
	feedB, unregB := s.register(store, &pusher{push: func() {}})
	if feedA != feedB || len(s.hub.feeds) != 1 {
		t.Fatal("two streams of one source have two feeds")
	}
	other := svidstore.New()
	defer other.Close()
	feedC, unregC := s.register(other, &pusher{push: func() {}})
	if feedC == feedA || len(s.hub.feeds) != 2 {
		t.Fatal("a stream of another source shares a feed")
	}
	unregA()
	unregC()
	select {
	case <-feedA.stop:
		t.Fatal("watcher stopped while a stream is open")
	default:
	}
	<-feedC.stop
	unregB()
	<-feedA.stop
	if len(s.hub.feeds) != 0 {
		t.Fatal("feeds remain with no stream")
	}
}

// TestBlockedPushHoldsUpNoOther blocks one stream's push, as a Send to a
// client that does not read would: a change must still reach every other
// stream.
func TestBlockedPushHoldsUpNoOther(t *testing.T) {
	store := svidstore.New()
	defer store.Close()
	s, err := New(store)
	if err != nil {
		t.Fatal(err)
	}
	ca := svidstoretest.NewCA(t, "push test root")
	release := make(chan struct{})
	defer close(release)
	var blocked atomic.Bool
	defer unregisterOnly(s.register(store, &pusher{push: func() {
		if snap, _ := store.Load(); snap.SVID != nil {
			blocked.Store(true)
			<-release
		}
	}}))()
	const others = 50
	var pushed [others]atomic.Bool
	for i := range others {
		defer unregisterOnly(s.register(store, &pusher{push: func() {
			if snap, _ := store.Load(); snap.SVID != nil {
				pushed[i].Store(true)
			}
		}}))()
	}
	store.SetSVID(ca.Issue(t, "spiffe://cluster.local/ns/a/sa/b", time.Hour))
	for i := range others {
		testpoll.UntilNil(t, func() error {
			if !pushed[i].Load() {
				return fmt.Errorf("stream %d of %d got no push (blocked stream pushed: %v)", i, others, blocked.Load())
			}
			return nil
		})
	}
}

func unregisterOnly(_ *feed, unregister func()) func() { return unregister }
