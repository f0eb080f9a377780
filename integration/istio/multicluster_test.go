package istio_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
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

	sc := startSidecar(t, bin, "checkout-7d9f8", []byte(token), rootPEM, ca.GRPCAddr, ca.GRPCAddr, "ISTIO_META_CLUSTER_ID=east")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("CA output:\n%s", ca.Logs())
		}
	})
	certFile := filepath.Join(sc.out, "cert-chain.pem")
	waitFor(t, "certificate from pilot-agent", 60*time.Second, nonEmpty(certFile), sc.process)
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
