package istio_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// TestIstioPilotAgentRemoteCluster: Istio's pilot-agent in a remote
// cluster (ISTIO_META_CLUSTER_ID=east, which it sends as the ClusterID
// metadata) gets its certificate with a token of that cluster, checked
// against that cluster's API server, from a CA whose own cluster is
// another one.
func TestIstioPilotAgentRemoteCluster(t *testing.T) {
	bin := pilotAgent(t)
	local := harness.StartAPIServer(t)
	east := harness.StartAPIServer(t)
	east.CreateServiceAccount(t, "shop", "checkout")
	token := east.Token(t, "shop", "checkout", []string{"istio-ca"}, time.Hour)
	ca := harness.StartCAProcess(t, "--kubeconfig", local.Kubeconfig, "--remote-cluster", "east="+east.Kubeconfig,
		"--server-dns-name", istiodSAN)
	rootPEM, err := os.ReadFile(ca.RootFile)
	if err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	for path, data := range map[string][]byte{
		"var/run/secrets/tokens/istio-token":  []byte(token),
		"var/run/secrets/istio/root-cert.pem": rootPEM,
	} {
		p := filepath.Join(work, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(work, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	proxyConfig, _ := json.Marshal(map[string]any{"discoveryAddress": ca.GRPCAddr, "statusPort": freePort(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "proxy", "sidecar")
	cmd.Dir = work
	cmd.Env = append(os.Environ(),
		"DISABLE_ENVOY=true",
		"PROXY_CONFIG="+string(proxyConfig),
		"ISTIOD_SAN="+istiodSAN,
		"OUTPUT_CERTS="+out,
		"POD_NAMESPACE=shop",
		"POD_NAME=checkout-7d9f8",
		"SERVICE_ACCOUNT=checkout",
		"JWT_POLICY=third-party-jwt",
		"PKCS8_KEY=true",
		"ISTIO_META_CLUSTER_ID=east",
	)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("pilot-agent output:\n%s\nCA output:\n%s", logs.String(), ca.Logs())
		}
	}()

	certFile := filepath.Join(out, "cert-chain.pem")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if fi, err := os.Stat(certFile); err == nil && fi.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pilot-agent wrote no certificate within 60s")
		}
	}
	chain, err := pemfile.ReadCertificates(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pemfile.ReadCertificates(ca.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, []*x509.Certificate{roots[0]}))
	if err != nil {
		t.Fatalf("the certificate pilot-agent received does not verify: %v", err)
	}
	if want := "spiffe://cluster.local/ns/shop/sa/checkout"; id.String() != want {
		t.Fatalf("pilot-agent got %s, want %s", id, want)
	}
	m := ca.Metrics(t)
	if n := m.Value("castellan_authn_token_checks_total", "cluster", "east"); n == 0 {
		t.Errorf("no token check counted for cluster east\n%s", m)
	}
	if n := m.Value("castellan_authn_token_checks_total", "cluster", "Kubernetes"); n != 0 {
		t.Errorf("%v token checks counted for the local cluster, want 0\n%s", n, m)
	}
	t.Logf("pilot-agent with ISTIO_META_CLUSTER_ID=east received %s", id)
}
