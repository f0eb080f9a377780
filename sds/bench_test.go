package sds_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsload"
)

// BenchmarkRotationFanOut times one rotation reaching 1,000 Envoy-like
// streams (one connection each) on a real server over a Unix socket: from
// the store taking the new SVID to the last stream receiving it. Client
// and server share the process and its cores.
//
//	go test -run '^$' -bench RotationFanOut -benchtime 20x ./sds/
func BenchmarkRotationFanOut(b *testing.B) {
	for _, api := range []string{"sotw", "delta"} {
		b.Run(fmt.Sprintf("streams=1000/api=%s", api), func(b *testing.B) {
			benchmarkFanOut(b, 1000, api == "delta")
		})
	}
}

func benchmarkFanOut(b *testing.B, streams int, delta bool) {
	ca := svidstoretest.NewCA(b, "bench root")
	store := svidstore.New()
	defer store.Close()
	store.SetBundle(ca.Bundle(b))
	store.SetSVID(ca.Issue(b, testID, time.Hour))
	// Pre-issue the SVIDs so that issuing is not timed.
	svids := make([]*svidstore.SVID, b.N)
	for i := range svids {
		svids[i] = ca.Issue(b, testID, time.Hour)
	}

	srv, err := sds.New(store)
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	sock := filepath.Join(socketDir(b), "sds.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go g.Serve(lis)
	defer g.Stop()

	var mu sync.Mutex
	var installed time.Time
	next := 0
	cfg := sdsload.Config{
		Socket:    sock,
		Streams:   streams,
		Delta:     delta,
		Rotations: b.N,
		Settle:    time.Millisecond,
		Trigger: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			installed = time.Now()
			store.SetSVID(svids[next])
			next++
			return nil
		},
		Installed: func(context.Context) (time.Time, error) {
			mu.Lock()
			defer mu.Unlock()
			return installed, nil
		},
	}
	b.ResetTimer()
	res, err := sdsload.Run(context.Background(), cfg)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, d := range res.FanOuts() {
		total += d
	}
	fo := res.FanOuts()
	b.ReportMetric(float64(total.Milliseconds())/float64(len(fo)), "ms-to-last-stream/rotation")
	b.ReportMetric(float64(fo[len(fo)-1].Milliseconds()), "max-ms-to-last-stream")
}
