package sds_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/sds"
)

// TestDeltaSubscriptionFlood sends 2,000 delta requests on one stream,
// each subscribing to MaxResourceNames new names. The stream must be ended
// with ResourceExhausted as soon as it goes past MaxSubscriptions, and the
// server's heap must not grow with the flood.
func TestDeltaSubscriptionFlood(t *testing.T) {
	e := newEnv(t)
	heapBefore := heapInUse()
	d := e.openDelta(nil)
	const requests = 2000
	sent := make(chan int, 1)
	go func() {
		n := 0
		for i := range requests {
			names := make([]string, sds.MaxResourceNames)
			for j := range names {
				names[j] = fmt.Sprintf("flood-%d-%d", i, j)
			}
			if d.Subscribe(names...) != nil {
				break
			}
			n++
		}
		sent <- n
	}()
	var err error
	select {
	case err = <-d.Err():
	case <-time.After(waitTimeout):
		t.Fatalf("the stream is still open %s into a flood of %d requests of %d new names each", waitTimeout, requests, sds.MaxResourceNames)
	}
	if status.Code(errors.Unwrap(err)) != codes.ResourceExhausted || !strings.Contains(err.Error(), "the limit") {
		t.Fatalf("stream ended with %v, want ResourceExhausted naming the limit", err)
	}
	<-sent
	// The server answered at most the first request (its unknown names)
	// before it refused the second.
	if got := e.metric("castellan_sds_unknown_resources_total", "delta"); got > sds.MaxSubscriptions {
		t.Fatalf("server counted %v unknown subscriptions, over the cap of %d", got, sds.MaxSubscriptions)
	}
	if grew := heapInUse() - heapBefore; grew > 16<<20 {
		t.Fatalf("heap grew by %d MiB during the flood", grew>>20)
	}

	// Another stream on the same server is served as before.
	d2 := e.openDelta(nil)
	if err := d2.Subscribe(sds.DefaultSecretName); err != nil {
		t.Fatal(err)
	}
	checkDefault(t, d2.Await().Secrets[sds.DefaultSecretName], e.current().SVID)
}

// TestDeltaSubscriptionCap subscribes up to the cap over several requests,
// unsubscribes, and subscribes again: only the names held at once count.
func TestDeltaSubscriptionCap(t *testing.T) {
	e := newEnv(t)
	d := e.openDelta(nil)
	var names []string
	for i := range sds.MaxSubscriptions {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	if err := d.Subscribe(names[:sds.MaxSubscriptions/2]...); err != nil {
		t.Fatal(err)
	}
	d.AwaitACK()
	if err := d.Subscribe(names[sds.MaxSubscriptions/2:]...); err != nil {
		t.Fatal(err)
	}
	d.AwaitACK()
	if err := d.Unsubscribe(names[:10]...); err != nil {
		t.Fatal(err)
	}
	if err := d.Subscribe(sds.DefaultSecretName); err != nil {
		t.Fatal(err)
	}
	checkDefault(t, d.Await().Secrets[sds.DefaultSecretName], e.current().SVID)
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
