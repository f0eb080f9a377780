// Package istio_test checks Castellan against Istio's own CA client: the
// real pilot-agent, built from Istio's module, fetches its workload
// certificate from a Castellan CA with a projected-style token.
package istio_test

import (
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
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
// scripts/build-istio.sh builds, failing when it is missing unless
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
		harness.SkipUnlessAllowed(t, fmt.Sprintf("pilot-agent not built at %s; run scripts/build-istio.sh (make tools)", p))
	}
	return p
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

	sc := startSidecar(t, bin, "checkout-7d9f8", []byte(token), ca.RootPEM, ca.GRPCAddr, ca.GRPCAddr)
	certFile := filepath.Join(sc.out, "cert-chain.pem")
	waitFor(t, "certificate from pilot-agent", 60*time.Second, nonEmpty(certFile), sc.process)
	time.Sleep(200 * time.Millisecond) // let it finish writing key.pem and root-cert.pem

	chain, err := pemfile.ReadCertificates(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pemfile.ReadCertificates(filepath.Join(sc.out, "root-cert.pem"))
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
	key, err := pemfile.ReadPrivateKey(filepath.Join(sc.out, "key.pem"))
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
