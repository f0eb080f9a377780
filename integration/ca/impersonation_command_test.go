package ca_test

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestImpersonationCommand runs "castellan ca" as its own process with
// --node-agent-service-account: the named node agent (here ztunnel's
// service account) gets the SVID of a pod on its node, the default agent
// account is no longer one, and a malformed value is a usage error.
func TestImpersonationCommand(t *testing.T) {
	api := harness.StartAPIServer(t)
	createNode(t, api, "node-a")
	createNode(t, api, "node-b")
	api.CreateServiceAccount(t, "istio-system", "ztunnel")
	api.CreateServiceAccount(t, agentNS, agentSA)
	api.CreateServiceAccount(t, "shop", "web")
	ztunnel := runPod(t, api, "istio-system", "ztunnel-a", "ztunnel", "node-a")
	agent := runPod(t, api, agentNS, "agent-a", agentSA, "node-a")
	runPod(t, api, "shop", "web-1", "web", "node-a")

	ca := harness.StartCAProcess(t, "--kubeconfig", api.Kubeconfig, "--node-agent-service-account", "istio-system/ztunnel")
	deadline := time.Now().Add(60 * time.Second)
	for ca.Metrics(t).Value("castellan_ca_pod_index_pods") != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the CA's pod index did not reach 3 pods:\n%s", ca.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient(ca.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: ca.Roots(t), ServerName: ca.ServerName, MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	key := ecKey(elliptic.P256())(t)
	csr := csrPEM(t, key, nil, nil)
	webID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	target := structpb.NewStringValue(webID.String())

	resp, err := impersonate(t, conn, api.PodToken(t, ztunnel), csr, target)
	if err != nil {
		t.Fatalf("ztunnel on node-a asking for %s: %v", webID, err)
	}
	rootPEM, err := os.ReadFile(ca.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	verifySVID(t, resp.GetCertChain(), key, rootPEM, webID)

	_, err = impersonate(t, conn, api.PodToken(t, agent), csr, target)
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "not_node_agent") {
		t.Fatalf("castellan-agent without the flag naming it: %v, want PermissionDenied not_node_agent", err)
	}
	m := ca.Metrics(t)
	if g, d := m.Value(impersonations, "result", "granted"), m.Value(impersonations, "result", "denied", "reason", "not_node_agent"); g != 1 || d != 1 {
		t.Errorf("impersonations granted %v, denied not_node_agent %v; want 1 and 1", g, d)
	}

	t.Run("malformed flag", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, harness.Binary(t, "castellan"), "ca",
			"--data-dir", filepath.Join(t.TempDir(), "d"), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--kubeconfig", api.Kubeconfig, "--node-agent-service-account", "ztunnel").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "--node-agent-service-account") {
			t.Fatalf("exit %v, want 2 naming the flag:\n%s", err, out)
		}
	})
}
