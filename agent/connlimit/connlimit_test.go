package connlimit_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/connlimit"
	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

const waitTimeout = 10 * time.Second

// serve runs a real SDS server behind a Handler with limits on a Unix
// socket and returns a client of it (one connection) and the handler's
// registry.
func serve(t *testing.T, limits connlimit.Limits) (*sdsclient.Client, *prometheus.Registry) {
	t.Helper()
	ca := svidstoretest.NewCA(t, "test root")
	store := svidstore.New()
	t.Cleanup(store.Close)
	store.SetSVID(ca.Issue(t, "spiffe://cluster.local/ns/default/sa/web", time.Hour))
	store.SetBundle(ca.Bundle(t))

	reg := prometheus.NewRegistry()
	h, err := connlimit.New(limits, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sds.New(store)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.StatsHandler(h), grpc.ChainStreamInterceptor(h.StreamInterceptor()), grpc.ChainUnaryInterceptor(h.UnaryInterceptor()))
	srv.Register(g)
	dir, err := os.MkdirTemp("", "cl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "s")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	c, err := sdsclient.New(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, reg
}

// recvErr receives on a stream until it ends, and returns how it ended.
func recvErr(t *testing.T, recv func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		for {
			if err := recv(); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(waitTimeout):
		t.Fatal("the stream is still open")
		return nil
	}
}

func TestRequestRate(t *testing.T) {
	c, reg := serve(t, connlimit.Limits{RequestRate: 1, RequestBurst: 10})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := c.DeltaStream(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Requests that change nothing (the same subscription, again and
	// again) cost the server little each, but not nothing.
	go func() {
		for range 2000 {
			if d.Subscribe(sds.DefaultSecretName) != nil {
				return
			}
		}
	}()
	err = recvErr(t, func() error { _, err := d.Recv(); return err })
	if status.Code(errors.Unwrap(err)) != codes.ResourceExhausted || !strings.Contains(err.Error(), "faster than 1 a second") {
		t.Fatalf("stream ended with %v, want ResourceExhausted for the request rate", err)
	}
	if got := testmetric.Sum(t, reg, "castellan_agent_connection_refusals_total", "request_rate"); got < 1 {
		t.Fatalf("request_rate refusals = %v", got)
	}
}

func TestStreamsPerConnection(t *testing.T) {
	const max = 4
	c, reg := serve(t, connlimit.Limits{MaxStreams: max})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range max {
		st, err := c.Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Subscribe(sds.DefaultSecretName); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	extra, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	extra.Subscribe(sds.DefaultSecretName)
	err = recvErr(t, func() error { _, err := extra.Recv(); return err })
	if status.Code(errors.Unwrap(err)) != codes.ResourceExhausted || !strings.Contains(err.Error(), "already holds 4 streams") {
		t.Fatalf("stream %d ended with %v, want ResourceExhausted for the stream limit", max+1, err)
	}
	if got := testmetric.Sum(t, reg, "castellan_agent_connection_refusals_total", "streams"); got != 1 {
		t.Fatalf("streams refusals = %v, want 1", got)
	}
}

func TestTotalStreams(t *testing.T) {
	const max = 3
	c1, reg := serve(t, connlimit.Limits{MaxTotalStreams: max})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() (*sdsclient.Stream, error) {
		st, err := c1.Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Subscribe(sds.DefaultSecretName)
		_, err = st.Recv()
		return st, err
	}
	for i := range max {
		if _, err := open(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	_, err := open()
	if status.Code(errors.Unwrap(err)) != codes.ResourceExhausted || !strings.Contains(err.Error(), "from all its clients") {
		t.Fatalf("stream %d: %v, want ResourceExhausted for the total", max+1, err)
	}
	if got := testmetric.Sum(t, reg, "castellan_agent_connection_refusals_total", "total_streams"); got != 1 {
		t.Fatalf("total_streams refusals = %v, want 1", got)
	}
}
