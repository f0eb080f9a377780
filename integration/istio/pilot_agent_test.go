// Package istio_test checks Castellan against Istio's own CA client: the
// real pilot-agent, built from Istio's module, fetches its workload
// certificate from a Castellan CA with a projected-style token.
package istio_test

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// pilotAgent returns the path of the pilot-agent binary that
// scripts/build-pilot-agent.sh builds, failing when it is missing unless
// CASTELLAN_ALLOW_SKIP is set.
func pilotAgent(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CASTELLAN_PILOT_AGENT"); p != "" {
		return p
	}
	cache := os.Getenv("CASTELLAN_CACHE_DIR")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "castellan")
	}
	p := filepath.Join(cache, "pilot-agent-eed52ebb", "pilot-agent")
	if _, err := os.Stat(p); err != nil {
		harness.SkipUnlessAllowed(t, fmt.Sprintf("pilot-agent not built at %s; run scripts/build-pilot-agent.sh (make tools)", p))
	}
	return p
}

// freePort returns a loopback port that was free a moment ago, for
// pilot-agent's status server, which takes a number rather than a listener.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

const istiodSAN = "istiod.istio-system.svc"

func TestIstioPilotAgentGetsItsCertificate(t *testing.T) {
	bin := pilotAgent(t)
	api := harness.StartAPIServer(t)
	ca := harness.StartCA(t, api, harness.WithServerConfig(func(c *server.Config) {
		c.ServerDNSNames = append(c.ServerDNSNames, istiodSAN)
	}))
	api.CreateServiceAccount(t, "shop", "checkout")
	token := api.Token(t, "shop", "checkout", []string{"istio-ca"}, time.Hour)

	work := t.TempDir()
	for path, data := range map[string][]byte{
		"var/run/secrets/tokens/istio-token":  []byte(token),
		"var/run/secrets/istio/root-cert.pem": ca.RootPEM,
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
		"ISTIO_META_CLUSTER_ID=Kubernetes",
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
			t.Logf("pilot-agent output:\n%s", logs.String())
		}
	}()

	certFile := filepath.Join(out, "cert-chain.pem")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if fi, err := os.Stat(certFile); err == nil && fi.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pilot-agent wrote no certificate within 60s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let it finish writing key.pem and root-cert.pem

	chain, err := pemfile.ReadCertificates(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pemfile.ReadCertificates(filepath.Join(out, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	caRoot := ca.Server().Source().Authority().Root()
	if !roots[0].Equal(caRoot) {
		t.Fatal("pilot-agent's root-cert.pem is not the CA's root")
	}
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, []*x509.Certificate{caRoot}))
	if err != nil {
		t.Fatalf("the certificate pilot-agent received does not verify: %v", err)
	}
	if want := "spiffe://cluster.local/ns/shop/sa/checkout"; id.String() != want {
		t.Fatalf("pilot-agent got %s, want %s", id, want)
	}
	key, err := pemfile.ReadPrivateKey(filepath.Join(out, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		t.Errorf("pilot-agent's default key is %T, expected RSA", key)
	}
	if chain[0].KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		t.Errorf("RSA leaf key usage = %v", chain[0].KeyUsage)
	}
	if n := ca.Metrics(t).Value("castellan_ca_certificates_issued_total"); n < 1 {
		t.Errorf("issued counter = %v", n)
	}
	t.Logf("pilot-agent received %s, valid until %s", id, chain[0].NotAfter.Format(time.RFC3339))
}
