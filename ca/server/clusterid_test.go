package server

import (
	"context"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// TestClusterID: the ClusterID metadata picks the cluster that checks the
// token; an unknown one is refused and counted, and a remote cluster's
// node agent may not impersonate.
func TestClusterID(t *testing.T) {
	local := tokenTable{"local-token": {Namespace: "default", ServiceAccount: "sleep"}}
	east := tokenTable{
		"east-token": {Namespace: "default", ServiceAccount: "sleep"},
		"east-agent": {Namespace: "castellan-system", ServiceAccount: "castellan-agent", PodName: "agent-a", PodUID: "uid-a", NodeName: "node-a"},
	}
	clusters, err := authn.NewClusters("Kubernetes", local, map[string]authn.Authenticator{"east": east})
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, func(c *Config) { c.Authenticator = clusters; c.Impersonation = allowAll{} })
	const me = "spiffe://cluster.local/ns/default/sa/sleep"
	tests := []struct {
		name     string
		clusters []string // ClusterID values sent
		token    string
		target   string // ImpersonatedIdentity, if any
		code     codes.Code
		reason   string // castellan_ca_auth_failures_total reason, or impersonation reason
		contains string
	}{
		{name: "none is local", token: "local-token", code: codes.OK},
		{name: "local by name", clusters: []string{"Kubernetes"}, token: "local-token", code: codes.OK},
		{name: "remote", clusters: []string{"east"}, token: "east-token", code: codes.OK},
		{name: "local token named remote", clusters: []string{"east"}, token: "local-token", code: codes.Unauthenticated, reason: "invalid_token", contains: `cluster "east"`},
		{name: "remote token named local", clusters: []string{"Kubernetes"}, token: "east-token", code: codes.Unauthenticated, reason: "invalid_token"},
		{name: "unknown", clusters: []string{"west"}, token: "local-token", code: codes.Unauthenticated, reason: "unknown_cluster", contains: `ClusterID "west"`},
		{name: "twice", clusters: []string{"Kubernetes", "east"}, token: "local-token", code: codes.Unauthenticated, reason: "unknown_cluster", contains: "2 ClusterID values"},
		{name: "local agent impersonates", token: "local-token", target: me, code: codes.OK},
		{name: "remote agent may not impersonate", clusters: []string{"east"}, token: "east-agent", target: me, code: codes.PermissionDenied, reason: reasonRemoteCluster, contains: "only in the CA's local cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			for _, c := range tt.clusters {
				ctx = metadata.AppendToOutgoingContext(ctx, "ClusterID", c)
			}
			req := &pb.IstioCertificateRequest{Csr: string(csrFor(t, ""))}
			if tt.target != "" {
				req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{impersonationKey: structpb.NewStringValue(tt.target)}}
			}
			authBefore := counter(s, "castellan_ca_auth_failures_total", tt.reason)
			impBefore := testutil.ToFloat64(s.metrics.impersonation.WithLabelValues(impersonationDenied, tt.reason))
			_, err := s.client.CreateCertificateRequest(ctx, tt.token, req)
			if st := status.Convert(err); st.Code() != tt.code || !strings.Contains(st.Message(), tt.contains) {
				t.Fatalf("got %v, want %s with %q", err, tt.code, tt.contains)
			}
			switch {
			case tt.reason == "":
			case tt.target != "":
				if n := testutil.ToFloat64(s.metrics.impersonation.WithLabelValues(impersonationDenied, tt.reason)); n != impBefore+1 {
					t.Errorf("impersonation denied{reason=%s} = %v, want %v", tt.reason, n, impBefore+1)
				}
			default:
				if n := counter(s, "castellan_ca_auth_failures_total", tt.reason); n != authBefore+1 {
					t.Errorf("castellan_ca_auth_failures_total{reason=%s} = %v, want %v", tt.reason, n, authBefore+1)
				}
			}
		})
	}
}

// allowAll grants every impersonation: the test is about which cluster
// proved the caller, not about pods.
type allowAll struct{}

func (allowAll) AuthorizeImpersonation(context.Context, authn.Caller, spiffeid.ID) error { return nil }
