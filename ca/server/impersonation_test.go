package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
)

// onePod is a unit-test nodeauth.Pods: the agent's pod and one workload
// pod, both on node-a.
type onePod struct{ synced bool }

func (p onePod) Synced() bool { return p.synced }

func (onePod) Pod(ns, name string) (nodeauth.Pod, bool) {
	if ns == "castellan-system" && name == "agent-a" {
		return nodeauth.Pod{Namespace: ns, Name: name, UID: "uid-a", NodeName: "node-a", ServiceAccount: "castellan-agent", Phase: corev1.PodRunning}, true
	}
	return nodeauth.Pod{}, false
}

func (onePod) ActiveOnNode(node string, sa nodeauth.ServiceAccount) bool {
	return node == "node-a" && sa == nodeauth.ServiceAccount{Namespace: "shop", Name: "web"}
}

func startImpersonation(t *testing.T, pods nodeauth.Pods) *testServer {
	t.Helper()
	var imp ImpersonationAuthorizer
	if pods != nil {
		a, err := nodeauth.New(nodeauth.Config{
			TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
			NodeAgents:  []nodeauth.ServiceAccount{{Namespace: "castellan-system", Name: "castellan-agent"}},
			Pods:        pods,
		})
		if err != nil {
			t.Fatal(err)
		}
		imp = a
	}
	return start(t, func(c *Config) {
		c.HTTPAddr = "-"
		c.Authenticator = tokenTable{
			"agent": {Namespace: "castellan-system", ServiceAccount: "castellan-agent", PodName: "agent-a", PodUID: "uid-a", NodeName: "node-a"},
			"web":   {Namespace: "shop", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-w"},
		}
		c.Impersonation = imp
	})
}

func TestImpersonate(t *testing.T) {
	const web = "spiffe://cluster.local/ns/shop/sa/web"
	str := structpb.NewStringValue
	tests := []struct {
		name   string
		pods   nodeauth.Pods // nil: no authorizer
		token  string
		target *structpb.Value
		code   codes.Code // OK: granted
		reason string
	}{
		{name: "granted", pods: onePod{synced: true}, token: "agent", target: str(web)},
		{name: "no authorizer", token: "agent", target: str(web), code: codes.PermissionDenied, reason: reasonNotEnabled},
		{name: "not a node agent", pods: onePod{synced: true}, token: "web", target: str(web), code: codes.PermissionDenied, reason: "not_node_agent"},
		{name: "not a node agent, target not a string", pods: onePod{synced: true}, token: "web", target: structpb.NewBoolValue(true), code: codes.PermissionDenied, reason: "not_node_agent"},
		{name: "target not a string", pods: onePod{synced: true}, token: "agent", target: structpb.NewBoolValue(true), code: codes.PermissionDenied, reason: "invalid_target"},
		{name: "target not a SPIFFE ID", pods: onePod{synced: true}, token: "agent", target: str("web"), code: codes.PermissionDenied, reason: "invalid_target"},
		{name: "target too long", pods: onePod{synced: true}, token: "agent", target: str(web + strings.Repeat("x", maxImpersonatedIDLen)), code: codes.PermissionDenied, reason: "invalid_target"},
		{name: "no pod on the node", pods: onePod{synced: true}, token: "agent", target: str("spiffe://cluster.local/ns/shop/sa/db"), code: codes.PermissionDenied, reason: "no_pod_on_node"},
		{name: "pods not listed yet", pods: onePod{}, token: "agent", target: str(web), code: codes.Unavailable, reason: "pods_unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startImpersonation(t, tt.pods)
			md := &structpb.Struct{Fields: map[string]*structpb.Value{impersonationKey: tt.target}}
			chain, err := s.client.CreateCertificateRequest(context.Background(), tt.token, &pb.IstioCertificateRequest{Csr: string(csrFor(t, "")), Metadata: md})
			if tt.code == codes.OK {
				if err != nil {
					t.Fatal(err)
				}
				block, _ := pem.Decode([]byte(chain[0]))
				leaf, err := x509.ParseCertificate(block.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				if len(leaf.URIs) != 1 || leaf.URIs[0].String() != web {
					t.Fatalf("SVID for %v, want %s", leaf.URIs, web)
				}
				if n := testutil.ToFloat64(s.metrics.impersonation.WithLabelValues(impersonationGranted, "")); n != 1 {
					t.Errorf("granted = %v, want 1", n)
				}
				return
			}
			if st := status.Convert(err); st.Code() != tt.code || !strings.Contains(st.Message(), tt.reason) {
				t.Fatalf("got %v, want %s with %q", err, tt.code, tt.reason)
			}
			if n := testutil.ToFloat64(s.metrics.impersonation.WithLabelValues(impersonationDenied, tt.reason)); n != 1 {
				t.Errorf("denied{reason=%s} = %v, want 1", tt.reason, n)
			}
			if n := counter(s, "castellan_ca_csr_rejected_total", string(reasonImpersonation)); n != 1 {
				t.Errorf("castellan_ca_csr_rejected_total{reason=impersonation} = %v, want 1", n)
			}
			if n := testutil.ToFloat64(s.metrics.issued); n != 0 {
				t.Errorf("issued = %v, want 0", n)
			}
			// Every reason is exported from the start (granted, not_enabled,
			// remote_cluster and nodeauth's).
			if n, err := testutil.GatherAndCount(s.reg, "castellan_ca_impersonation_total"); err != nil || n != len(nodeauth.Reasons())+3 {
				t.Errorf("castellan_ca_impersonation_total has %d series (%v), want %d", n, err, len(nodeauth.Reasons())+3)
			}
		})
	}
}

var _ ImpersonationAuthorizer = (*nodeauth.Authorizer)(nil)

// TestReadyWaitsForPods: a CA that authorizes node agents is not ready
// before its pod list is synced, since it would refuse every agent.
func TestReadyWaitsForPods(t *testing.T) {
	for _, tt := range []struct {
		name   string
		pods   nodeauth.Pods
		ready  bool
		reason string
	}{
		{name: "no node agents", pods: nil, ready: true},
		{name: "pods synced", pods: onePod{synced: true}, ready: true},
		{name: "pods not synced", pods: onePod{synced: false}, reason: "pod list"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startImpersonation(t, tt.pods)
			ok, why := s.Ready()
			if ok != tt.ready || !strings.Contains(why, tt.reason) {
				t.Fatalf("Ready() = %v, %q; want %v and %q", ok, why, tt.ready, tt.reason)
			}
		})
	}
}
