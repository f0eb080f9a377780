package attest_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/internal/testmetric"
)

// serve runs a gRPC health server with attest.Credentials(opts...) on l;
// every call's peer credentials are sent to peers.
func serve(t *testing.T, l net.Listener, opts ...attest.CredentialsOption) <-chan attest.PeerCred {
	t.Helper()
	peers := make(chan attest.PeerCred, 10)
	srv := grpc.NewServer(
		grpc.Creds(attest.Credentials(opts...)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			p, ok := attest.PeerFromContext(ctx)
			if !ok {
				t.Error("call without peer credentials")
			}
			peers <- p
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return peers
}

// TestCredentialsOverUnixSocket connects a real client to a real server
// over a Unix socket: the server sees this very process.
func TestCredentialsOverUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	peers := serve(t, l)

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check over the attested socket: %v", err)
	}
	got := <-peers
	start, err := attest.StartTime(attest.DefaultProcRoot, int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	want := attest.PeerCred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), StartTime: start}
	if got != want {
		t.Fatalf("peer = %+v, want %+v", got, want)
	}
}

// TestCredentialsRefuseTCP checks that a connection that is not over a
// Unix socket is closed at the handshake: no call gets through, and the
// refusal is counted.
func TestCredentialsRefuseTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := attest.New(attest.Config{Pods: &pods{}, NodeName: node, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	peers := serve(t, l, attest.WithAttestor(a))
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("a call over TCP got through")
	}
	select {
	case p := <-peers:
		t.Fatalf("a call reached the server with %+v", p)
	default:
	}
	if n := testmetric.Sum(t, reg, "castellan_agent_attestation_failures_total", string(attest.ReasonNoPeerCredentials)); n < 1 {
		t.Fatalf("refusals at the handshake counted: %v", n)
	}
}

// TestPeerFromContextWithoutCredentials: a context of no connection has
// no peer.
func TestPeerFromContextWithoutCredentials(t *testing.T) {
	if p, ok := attest.PeerFromContext(context.Background()); ok {
		t.Fatalf("PeerFromContext(background) = %+v, true", p)
	}
}

// TestAttestThisProcess attests the test process against the real /proc,
// with no pods known: it is refused, as in no pod or (when the tests run
// in a pod) as in an unknown one.
func TestAttestThisProcess(t *testing.T) {
	start, err := attest.StartTime(attest.DefaultProcRoot, int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	a, err := attest.New(attest.Config{Pods: &pods{m: map[string]attest.Pod{}}, NodeName: node})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Attest(context.Background(), attest.PeerCred{PID: int32(os.Getpid()), StartTime: start})
	if r, _ := attest.ReasonOf(err); r != attest.ReasonNotInPod && r != attest.ReasonUnknownPod {
		t.Fatalf("Attest(self) = %v, want %s or %s", err, attest.ReasonNotInPod, attest.ReasonUnknownPod)
	}
}
