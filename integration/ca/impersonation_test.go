package ca_test

import (
	"context"
	"crypto/elliptic"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	agentNS = "castellan-system"
	agentSA = "castellan-agent"

	impersonations = "castellan_ca_impersonation_total"
	issuedTotal    = "castellan_ca_certificates_issued_total"
)

// impersonationCA starts a CA whose node agents are agentNS/agentSA, with
// a pod index on api, and returns it with the index (synced). Successful
// token checks are cached for an hour, so that the pod index alone must
// notice an agent pod that goes away.
func impersonationCA(t *testing.T, api *harness.APIServer) (*harness.CA, *nodeauth.PodIndex) {
	t.Helper()
	c := harness.StartCA(t, api,
		harness.WithAuthCacheTTL(time.Hour),
		harness.WithNodeAgents(nodeauth.ServiceAccount{Namespace: agentNS, Name: agentSA}))
	return c, c.Pods()
}

// createNode creates a Node object (no kubelet runs).
func createNode(t *testing.T, api *harness.APIServer, name string) {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := api.Client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
}

// runPod creates a pod of service account ns/sa already placed on node,
// and sets its phase to Running as the kubelet would.
func runPod(t *testing.T, api *harness.APIServer, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
		},
	}
	created, err := api.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	created.Status.Phase = corev1.PodRunning
	running, err := api.Client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("setting pod %s/%s running: %v", ns, name, err)
	}
	return running
}

// deletePod deletes a pod at once (grace period 0), as a force delete does.
func deletePod(t *testing.T, api *harness.APIServer, pod *corev1.Pod) {
	t.Helper()
	zero := int64(0)
	if err := api.Client.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("deleting pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

// impersonate calls the CA as ztunnel does: the agent's token, and the
// target in the ImpersonatedIdentity metadata (none when target is nil).
func impersonate(t *testing.T, conn *grpc.ClientConn, token, csr string, target *structpb.Value) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	req := &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: 3600}
	if target != nil {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"ImpersonatedIdentity": target}}
	}
	return pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
}

// TestImpersonation runs the CA's node-agent rule against a real API
// server: pods placed on two nodes, tokens bound to them by TokenRequest.
// Every way around the rule is refused with its code and reason and
// issues nothing; an agent gets the SVID of a pod on its own node.
func TestImpersonation(t *testing.T) {
	api := harness.StartAPIServer(t)
	createNode(t, api, "node-a")
	createNode(t, api, "node-b")
	api.CreateServiceAccount(t, agentNS, agentSA)
	api.CreateServiceAccount(t, "shop", "web")
	api.CreateServiceAccount(t, "shop", "db")
	api.CreateServiceAccount(t, "shop", "idle") // no pod anywhere

	agentA := runPod(t, api, agentNS, "agent-a", agentSA, "node-a")
	agentGone := runPod(t, api, agentNS, "agent-gone", agentSA, "node-a")
	webPod := runPod(t, api, "shop", "web-1", "web", "node-a")
	runPod(t, api, "shop", "db-1", "db", "node-b")

	agentToken := api.PodToken(t, agentA)
	goneToken := api.PodToken(t, agentGone)
	deletePod(t, api, agentGone)
	unboundToken := api.Token(t, agentNS, agentSA, []string{harness.DefaultAudience}, time.Hour)
	webToken := api.PodToken(t, webPod)

	c, _ := impersonationCA(t, api)
	conn := c.Dial(t)
	key := ecKey(elliptic.P256())(t)
	td := spiffeid.RequireTrustDomainFromString(c.TrustDomain)
	webID := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	agentID := spiffeid.RequireFromPath(td, "/ns/"+agentNS+"/sa/"+agentSA)
	str := structpb.NewStringValue
	emptyCSR := csrPEM(t, key, nil, nil)

	t.Run("refused", func(t *testing.T) {
		tests := []struct {
			name   string
			token  string
			csr    string
			target *structpb.Value
			code   codes.Code
			metric string // the counter that must grow by one
			labels []string
			msg    string // a word the message must hold
		}{
			{name: "service account that is not a node agent", token: webToken, csr: emptyCSR, target: str("spiffe://cluster.local/ns/shop/sa/db"),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "not_node_agent"}, msg: "not a node agent"},
			{name: "not a node agent, asking for its own identity", token: webToken, csr: emptyCSR, target: str(webID.String()),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "not_node_agent"}, msg: "not a node agent"},
			{name: "not a node agent, malformed target", token: webToken, csr: emptyCSR, target: str("not a SPIFFE ID"),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "not_node_agent"}, msg: "not a node agent"},
			{name: "agent token bound to no pod", token: unboundToken, csr: emptyCSR, target: str(webID.String()),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "token_not_pod_bound"}, msg: "bound to no pod"},
			{name: "agent token bound to a deleted pod", token: goneToken, csr: emptyCSR, target: str(webID.String()),
				code: codes.Unauthenticated, metric: "castellan_ca_auth_failures_total", labels: []string{"reason", "invalid_token"}, msg: "token"},
			{name: "service account with no pod on the agent's node", token: agentToken, csr: emptyCSR, target: str("spiffe://cluster.local/ns/shop/sa/idle"),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "no_pod_on_node"}, msg: "node-a"},
			{name: "service account whose pod is on another node", token: agentToken, csr: emptyCSR, target: str("spiffe://cluster.local/ns/shop/sa/db"),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "no_pod_on_node"}, msg: "no pod of service account shop/db"},
			{name: "target in another trust domain", token: agentToken, csr: emptyCSR, target: str("spiffe://evil.example/ns/shop/sa/web"),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "invalid_target"}, msg: "trust domain"},
			{name: "target that is not a service account", token: agentToken, csr: emptyCSR, target: str("spiffe://cluster.local/ns/shop/sa/web/admin"),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "invalid_target"}, msg: "/ns/<namespace>/sa/<service account>"},
			{name: "target that is not a SPIFFE ID", token: agentToken, csr: emptyCSR, target: str("shop/web"),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "invalid_target"}, msg: "not a SPIFFE ID"},
			{name: "empty target", token: agentToken, csr: emptyCSR, target: str(""),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "invalid_target"}, msg: "not a SPIFFE ID"},
			{name: "target that is not a string", token: agentToken, csr: emptyCSR, target: structpb.NewNumberValue(7),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "invalid_target"}, msg: "not a string"},
			{name: "oversized target", token: agentToken, csr: emptyCSR, target: str("spiffe://cluster.local/ns/shop/sa/" + strings.Repeat("w", 3000)),
				code: codes.PermissionDenied, metric: impersonations, labels: []string{"result", "denied", "reason", "invalid_target"}, msg: "over the limit"},
			{name: "CSR naming the agent while impersonating", token: agentToken, csr: csrPEM(t, key, []string{agentID.String()}, nil), target: str(webID.String()),
				code: codes.PermissionDenied, metric: "castellan_ca_csr_rejected_total", labels: []string{"reason", "identity_mismatch"}, msg: webID.String()},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before := c.Metrics(t)
				resp, err := impersonate(t, conn, tt.token, tt.csr, tt.target)
				if err == nil {
					t.Fatalf("issued %d certificates, want %s", len(resp.GetCertChain()), tt.code)
				}
				st := status.Convert(err)
				if st.Code() != tt.code || !strings.Contains(st.Message(), tt.msg) {
					t.Fatalf("got %s %q, want %s with %q", st.Code(), st.Message(), tt.code, tt.msg)
				}
				after := c.Metrics(t)
				if d := after.Value(tt.metric, tt.labels...) - before.Value(tt.metric, tt.labels...); d != 1 {
					t.Errorf("%s%v grew by %v, want 1\n%s", tt.metric, tt.labels, d, after)
				}
				if d := after.Value(issuedTotal) - before.Value(issuedTotal); d != 0 {
					t.Errorf("%s grew by %v, want 0", issuedTotal, d)
				}
			})
		}
	})

	t.Run("granted", func(t *testing.T) {
		for _, csr := range []struct {
			name string
			uris []string
		}{{"CSR naming no identity", nil}, {"CSR naming the target", []string{webID.String()}}} {
			t.Run(csr.name, func(t *testing.T) {
				before := c.Metrics(t)
				resp, err := impersonate(t, conn, agentToken, csrPEM(t, key, csr.uris, nil), str(webID.String()))
				if err != nil {
					t.Fatalf("agent on node-a asking for %s: %v", webID, err)
				}
				verifySVID(t, resp.GetCertChain(), key, c.RootPEM, webID)
				after := c.Metrics(t)
				if d := after.Value(impersonations, "result", "granted") - before.Value(impersonations, "result", "granted"); d != 1 {
					t.Errorf("granted impersonations grew by %v, want 1", d)
				}
				if d := after.Value(issuedTotal) - before.Value(issuedTotal); d != 1 {
					t.Errorf("%s grew by %v, want 1", issuedTotal, d)
				}
			})
		}
	})

	t.Run("without impersonation the agent gets its own identity", func(t *testing.T) {
		resp, err := impersonate(t, conn, agentToken, emptyCSR, nil)
		if err != nil {
			t.Fatal(err)
		}
		verifySVID(t, resp.GetCertChain(), key, c.RootPEM, agentID)
	})
}

// TestImpersonationAgentPodDeleted checks that an agent whose pod is being
// deleted, is deleted, or is replaced by a pod of the same name, is refused
// at once, even though the CA still holds its token's successful check in
// its cache.
func TestImpersonationAgentPodDeleted(t *testing.T) {
	api := harness.StartAPIServer(t)
	createNode(t, api, "node-a")
	api.CreateServiceAccount(t, agentNS, agentSA)
	api.CreateServiceAccount(t, "shop", "web")
	agent := runPod(t, api, agentNS, "agent-a", agentSA, "node-a")
	runPod(t, api, "shop", "web-1", "web", "node-a")
	token := api.PodToken(t, agent)

	c, pods := impersonationCA(t, api)
	conn := c.Dial(t)
	key := ecKey(elliptic.P256())(t)
	webID := spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(c.TrustDomain), "/ns/shop/sa/web")
	target := structpb.NewStringValue(webID.String())
	csr := csrPEM(t, key, nil, nil)

	resp, err := impersonate(t, conn, token, csr, target)
	if err != nil {
		t.Fatalf("before the agent pod is deleted: %v", err)
	}
	verifySVID(t, resp.GetCertChain(), key, c.RootPEM, webID)

	waitPod := func(what string, done func(uid string, ok bool) bool) {
		t.Helper()
		harness.WaitFor(t, 30*time.Second, "the CA's pod index to see "+what, func() bool { return done(pods.LiveUID(agentNS, "agent-a")) })
	}
	refusedFromCache := func(t *testing.T) {
		t.Helper()
		before := c.Metrics(t)
		_, err := impersonate(t, conn, token, csr, target)
		if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "agent_pod_not_found") {
			t.Fatalf("got %v, want PermissionDenied agent_pod_not_found", err)
		}
		after := c.Metrics(t)
		if d := after.Value("castellan_authn_cache_total", "result", "hit") - before.Value("castellan_authn_cache_total", "result", "hit"); d != 1 {
			t.Errorf("authentication cache hits grew by %v, want 1 (the token's check must come from the cache)", d)
		}
		if d := after.Value("castellan_tokenreviews_total") - before.Value("castellan_tokenreviews_total"); d != 0 {
			t.Errorf("%v TokenReviews sent, want 0", d)
		}
		if d := after.Value(impersonations, "result", "denied", "reason", "agent_pod_not_found") - before.Value(impersonations, "result", "denied", "reason", "agent_pod_not_found"); d != 1 {
			t.Errorf("agent_pod_not_found denials grew by %v, want 1", d)
		}
		if d := after.Value(issuedTotal) - before.Value(issuedTotal); d != 0 {
			t.Errorf("%s grew by %v, want 0", issuedTotal, d)
		}
	}

	// A graceful delete leaves the pod in place, with a deletion
	// timestamp, until its kubelet confirms (none runs here).
	if err := api.Client.CoreV1().Pods(agentNS).Delete(context.Background(), agent.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod("the deletion timestamp", func(_ string, ok bool) bool { return !ok })
	if p, ok := pods.Pod(agentNS, agent.Name); !ok || !p.Deleting {
		t.Fatalf("agent pod = %+v, %v; want it present and being deleted", p, ok)
	}
	t.Run("being deleted", refusedFromCache)

	deletePod(t, api, agent)
	waitPod("the deletion", func(string, bool) bool { _, ok := pods.Pod(agentNS, agent.Name); return !ok })
	t.Run("deleted", refusedFromCache)

	// A new pod of the same name (as a StatefulSet would make) is not the
	// pod the token is bound to.
	replacement := runPod(t, api, agentNS, "agent-a", agentSA, "node-a")
	waitPod("the replacement", func(uid string, ok bool) bool { return ok && uid == string(replacement.UID) })
	t.Run("replaced", refusedFromCache)
}
