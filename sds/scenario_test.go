package sds_test

import (
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"github.com/castellan-mesh/castellan/sds/sdsclient/sdsclienttest"
)

// scenario is a test of the SDS server, run on an env of its own.
type scenario struct {
	name string
	run  func(t *testing.T, e *env)
}

// runScenarios runs each scenario in parallel, each on a new env.
func runScenarios(t *testing.T, scenarios []scenario) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			sc.run(t, newEnv(t))
		})
	}
}

// sharedScenarios are the scenarios that go the same over both forms of
// SDS, on streams opened by open, whose castellan_sds_* metrics carry the
// label api. sendStale sends a NACK of r after a later response was sent,
// so with a stale nonce.
func sharedScenarios[R any, S sdsclienttest.Stream[R]](api string, open func(e *env) S, sendStale func(s S, r R) error) []scenario {
	return []scenario{
		{"NACK is not answered with a resend", func(t *testing.T, e *env) {
			s := open(e)
			s.Subscribe(sds.DefaultSecretName)
			r := s.Await()
			if err := s.NACK(r, "pretend the key does not load"); err != nil {
				t.Fatal(err)
			}
			e.waitMetric("castellan_sds_nacks_total", api, 1)
			s.None()
			// A change of the resource is sent.
			svid := e.rotate()
			checkDefault(t, s.Secret(s.AwaitACK(), sds.DefaultSecretName), svid)
		}},
		{"stale nonce is ignored", func(t *testing.T, e *env) {
			s := open(e)
			s.Subscribe(sds.DefaultSecretName)
			r1 := s.AwaitACK()
			e.waitMetric("castellan_sds_acks_total", api, 1)
			e.rotate()
			r2 := s.Await()
			if err := sendStale(s, r1); err != nil {
				t.Fatal(err)
			}
			e.waitMetric("castellan_sds_stale_requests_total", api, 1)
			s.None()
			if got := e.metric("castellan_sds_nacks_total", api); got != 0 {
				t.Fatalf("stale NACK was counted: %v", got)
			}
			s.ACK(r2)
			e.waitMetric("castellan_sds_acks_total", api, 2)
			// The subscription is still "default" only.
			e.newRoot()
			s.None()
			svid := e.rotate()
			checkDefault(t, s.Secret(s.AwaitACK(), sds.DefaultSecretName), svid)
		}},
		{"parallel streams", func(t *testing.T, e *env) {
			const n = 20
			streams := make([]S, n)
			for i := range streams {
				streams[i] = open(e)
				streams[i].Subscribe(sds.DefaultSecretName)
			}
			for _, s := range streams {
				checkDefault(t, s.Secret(s.AwaitACK(), sds.DefaultSecretName), e.current().SVID)
			}
			svid := e.rotate()
			for _, s := range streams {
				checkDefault(t, s.Secret(s.AwaitACK(), sds.DefaultSecretName), svid)
			}
			e.waitMetric("castellan_sds_streams", api, n)
		}},
		{"push only to streams subscribed to the change", func(t *testing.T, e *env) {
			certs, roots := open(e), open(e)
			certs.Subscribe(sds.DefaultSecretName)
			roots.Subscribe(sds.RootCASecretName)
			certs.AwaitACK()
			roots.AwaitACK()
			svid := e.rotate()
			checkDefault(t, certs.Secret(certs.AwaitACK(), sds.DefaultSecretName), svid)
			roots.None()
			b := e.newRoot()
			checkRoot(t, roots.Secret(roots.AwaitACK(), sds.RootCASecretName), b)
			certs.None()
		}},
	}
}

// staleNACK is the NACK of r, sent on stream s after a later response: it
// also names another resource, which a stale request must not subscribe
// to.
func staleNACK(s *sotw, r *sdsclient.Response) error {
	return s.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo:   r.Version,
		ResourceNames: []string{sds.RootCASecretName},
		TypeUrl:       sds.SecretTypeURL,
		ResponseNonce: r.Nonce,
		ErrorDetail:   &rpcstatus.Status{Code: int32(codes.Internal), Message: "stale"},
	})
}

// staleDeltaNACK is the NACK of r, sent on stream d after a later
// response.
func staleDeltaNACK(d *delta, r *sdsclient.DeltaResponse) error {
	return d.Send(&discoveryv3.DeltaDiscoveryRequest{
		TypeUrl:       sds.SecretTypeURL,
		ResponseNonce: r.Nonce,
		ErrorDetail:   &rpcstatus.Status{Code: int32(codes.Internal), Message: "stale"},
	})
}
