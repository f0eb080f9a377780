package attest_test

import (
	"context"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/attest"
)

// A node agent's server: every connection carries its peer's credentials
// from the handshake, and every call is attested before it is served. A
// caller that cannot be attested gets PermissionDenied saying why.
func Example() {
	var pods attest.PodLookup // in the agent: a *podindex.Index, started and synced
	a, err := attest.New(attest.Config{Pods: pods, NodeName: "node-a", PodWait: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	attestCalls := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		p, ok := attest.PeerFromContext(ctx)
		if !ok {
			return nil, status.Error(codes.PermissionDenied, "no peer credentials")
		}
		w, err := a.Attest(ctx, p)
		if err != nil {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		_ = w // serve the identity of w.Namespace/w.ServiceAccount
		return h(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(attest.Credentials(attest.WithAttestor(a))), grpc.UnaryInterceptor(attestCalls))
	l, err := net.Listen("unix", "/run/castellan/agent.sock")
	if err != nil {
		log.Fatal(err)
	}
	_ = srv.Serve(l)
}
