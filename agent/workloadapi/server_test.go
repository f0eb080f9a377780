package workloadapi_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/agent/workloadapi"
	"github.com/castellan-mesh/castellan/internal/testmetric"
)

const testID = "spiffe://cluster.local/ns/default/sa/web"

type env struct {
	ca     *svidstoretest.CA
	store  *svidstore.Store
	reg    *prometheus.Registry
	addr   string
	accept *atomic.Int64
}

// countingListener counts accepted connections, to show that a client
// never reconnected.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{ca: svidstoretest.NewCA(t, "test root"), store: svidstore.New(), reg: prometheus.NewRegistry(), accept: new(atomic.Int64)}
	t.Cleanup(e.store.Close)
	e.store.SetSVID(e.ca.Issue(t, testID, time.Hour))
	e.store.SetBundle(e.ca.Bundle(t))

	srv, err := workloadapi.New(e.store, workloadapi.WithRegisterer(e.reg))
	if err != nil {
		t.Fatal(err)
	}
	e.addr = serve(t, srv, func(lis net.Listener) net.Listener { return countingListener{lis, e.accept} })
	return e
}

// serve serves srv on a new Unix socket until the test ends, through
// wrap's listener when wrap is not nil, and returns the socket's address.
func serve(t *testing.T, srv *workloadapi.Server, wrap func(net.Listener) net.Listener) string {
	t.Helper()
	// Unix socket paths are limited to about 100 bytes, and t.TempDir
	// embeds the test name.
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	g := grpc.NewServer()
	srv.Register(g)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		lis = wrap(lis)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return "unix://" + sock
}

func TestX509SourceFollowsRotation(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	src, err := spiffeapi.NewX509Source(ctx, spiffeapi.WithClientOptions(spiffeapi.WithAddr(e.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := e.store.Load()
	if !bytes.Equal(first.Certificates[0].Raw, snap.SVID.X509.Certificates[0].Raw) {
		t.Fatal("X509Source holds another certificate")
	}
	verify(t, src, first)

	rotated := e.ca.Issue(t, testID, time.Hour)
	e.store.SetSVID(rotated)
	for {
		got, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got.Certificates[0].Raw, rotated.X509.Certificates[0].Raw) {
			verify(t, src, got)
			break
		}
		if err := src.WaitUntilUpdated(ctx); err != nil {
			t.Fatalf("rotated SVID never arrived: %v", err)
		}
	}
	if n := e.accept.Load(); n != 1 {
		t.Fatalf("client made %d connections, want 1 (no reconnect)", n)
	}
	if n := testmetric.Sum(t, e.reg, "castellan_workloadapi_streams", "FetchX509SVID"); n != 1 {
		t.Fatalf("%v FetchX509SVID streams open, want 1", n)
	}
}

func verify(t *testing.T, src *spiffeapi.X509Source, svid *x509svid.SVID) {
	t.Helper()
	id, _, err := x509svid.Verify(svid.Certificates, src)
	if err != nil {
		t.Fatalf("x509svid.Verify against the received bundle: %v", err)
	}
	if id.String() != testID {
		t.Fatalf("SVID is for %s, want %s", id, testID)
	}
}

func TestFetchX509Bundles(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := spiffeapi.New(ctx, spiffeapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	set, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := set.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(e.ca.Root) {
		t.Fatal("bundle lacks the root")
	}
}

func TestSecurityHeaderRequired(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)

	tests := []struct {
		name string
		call func() error
	}{
		{"FetchX509SVID", func() error { return recvFirst(client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})) }},
		{"FetchX509Bundles", func() error { return recvFirst(client.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})) }},
		{"FetchJWTBundles", func() error { return recvFirst(client.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("call without header: %v, want InvalidArgument", err)
			}
		})
	}
	if got := testmetric.Sum(t, e.reg, "castellan_workloadapi_rejected_calls_total", ""); got != 3 {
		t.Fatalf("rejected calls counted %v, want 3", got)
	}
}

func TestNoSVIDSentAfterExpiry(t *testing.T) {
	e := newEnv(t)
	e.store.SetSVID(e.ca.Issue(t, testID, 2*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := spiffeapi.New(ctx, spiffeapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.FetchX509SVID(ctx); err != nil {
		t.Fatal(err)
	}
	// Once it has expired, a new call waits for a new SVID.
	time.Sleep(2 * time.Second)
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if svid, err := c.FetchX509SVID(short); err == nil {
		t.Fatalf("got an SVID valid until %s after expiry", svid.Certificates[0].NotAfter)
	}
	fresh := e.ca.Issue(t, testID, time.Hour)
	e.store.SetSVID(fresh)
	got, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Certificates[0].Raw, fresh.X509.Certificates[0].Raw) {
		t.Fatal("not the fresh SVID")
	}
}

// recvFirst receives the first message of a stream that opened with err.
func recvFirst[M any](s grpc.ServerStreamingClient[M], err error) error {
	if err != nil {
		return err
	}
	_, err = s.Recv()
	return err
}

func TestBundleChangeReachesOpenStreams(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src, err := spiffeapi.NewBundleSource(ctx, spiffeapi.WithClientOptions(spiffeapi.WithAddr(e.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	next := svidstoretest.NewCA(t, "next root")
	both, err := svidstore.NewBundle([]*x509.Certificate{e.ca.Root, next.Root})
	if err != nil {
		t.Fatal(err)
	}
	e.store.SetBundle(both)
	for {
		b, err := src.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		if b.HasX509Authority(next.Root) && b.HasX509Authority(e.ca.Root) {
			break
		}
		if err := src.WaitUntilUpdated(ctx); err != nil {
			t.Fatalf("the new bundle never arrived: %v", err)
		}
	}
	if n := e.accept.Load(); n != 1 {
		t.Fatalf("client made %d connections, want 1", n)
	}
}
