package sds_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

// TestResolverServesEachCallerItsOwnSource runs a server whose resolver
// tells callers apart by their user agent, as a node agent tells them
// apart by the pod that opened the connection.
func TestResolverServesEachCallerItsOwnSource(t *testing.T) {
	ca := svidstoretest.NewCA(t, "resolver root")
	bundle := ca.Bundle(t)
	stores := map[string]*svidstore.Store{}
	for _, name := range []string{"pod-a", "pod-b"} {
		st := svidstore.New()
		t.Cleanup(st.Close)
		st.SetSVID(ca.Issue(t, "spiffe://cluster.local/ns/default/sa/"+name, time.Hour))
		st.SetBundle(bundle)
		stores[name] = st
	}
	resolve := func(ctx context.Context) (sds.Source, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		for _, ua := range md.Get("user-agent") {
			for name, st := range stores {
				if strings.HasPrefix(ua, name+" ") {
					return st, nil
				}
			}
		}
		return nil, status.Error(codes.PermissionDenied, "test: caller is in no pod")
	}
	srv, err := sds.NewResolving(resolve, sds.WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	socket := filepath.Join(socketDir(t), "sds.sock")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	client := func(ua string) *env {
		c, err := sdsclient.New(socket, sdsclient.WithDialOptions(grpc.WithUserAgent(ua)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &env{t: t, client: c}
	}
	a, b, stranger := client("pod-a"), client("pod-b"), client("stranger")

	da := a.openDelta(nil)
	da.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
	ra := da.AwaitACK()
	sb := b.openSotW()
	sb.Subscribe(sds.DefaultSecretName)
	rb := sb.AwaitACK()
	snapA, _ := stores["pod-a"].Load()
	snapB, _ := stores["pod-b"].Load()
	checkDefault(t, ra.Secrets[sds.DefaultSecretName], snapA.SVID)
	checkRoot(t, ra.Secrets[sds.RootCASecretName], bundle)
	checkDefault(t, rb.Secrets[sds.DefaultSecretName], snapB.SVID)

	// A rotation of one identity reaches its streams only.
	next := ca.Issue(t, "spiffe://cluster.local/ns/default/sa/pod-a", time.Hour)
	stores["pod-a"].SetSVID(next)
	checkDefault(t, da.AwaitACK().Secrets[sds.DefaultSecretName], next)
	sb.None()

	// A withdrawn identity is removed from the delta stream, and the
	// state of the world no longer holds it.
	stores["pod-a"].Withdraw("pod gone")
	if r := da.AwaitACK(); len(r.Removed) != 1 || r.Removed[0] != sds.DefaultSecretName {
		t.Fatalf("after withdrawal: removed %v, want [default]", r.Removed)
	}
	stores["pod-b"].Withdraw("pod gone")
	if r := sb.AwaitACK(); len(r.Secrets) != 0 {
		t.Fatalf("after withdrawal: %d secrets", len(r.Secrets))
	}

	// A caller the resolver refuses gets its error, on a stream and on a
	// fetch.
	ds := stranger.openDelta(nil)
	ds.Subscribe(sds.DefaultSecretName)
	select {
	case err := <-ds.Err():
		if status.Code(errors.Unwrap(err)) != codes.PermissionDenied || !strings.Contains(err.Error(), "in no pod") {
			t.Fatalf("refused stream ended with %v", err)
		}
	case r := <-ds.Responses():
		t.Fatalf("refused caller got a response with %d secrets", len(r.Secrets))
	case <-time.After(waitTimeout):
		t.Fatal("refused stream still open")
	}
	if _, err := stranger.client.FetchSecrets(context.Background(), sds.DefaultSecretName); status.Code(errors.Unwrap(err)) != codes.PermissionDenied {
		t.Fatalf("refused fetch: %v", err)
	}
}
