// Package federation_test runs two Castellan CAs of two trust domains
// that federate through their SPIFFE bundle endpoints over TLS, an agent
// of the first, and a workload that verifies an SVID of the second with
// go-spiffe.
package federation_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/loadgen"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"github.com/castellan-mesh/castellan/trust/federated"
)

const waitTimeout = 60 * time.Second

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.test")
	tdB = spiffeid.RequireTrustDomainFromString("b.test")
	tdC = spiffeid.RequireTrustDomainFromString("c.test")
)

// stack is CA A and CA B federating both ways (A polls B's https_spiffe
// endpoint, B polls A's https_web endpoint), A also federating with c.test
// served by a test server, and an agent of A.
type stack struct {
	minter         *authn.Minter
	a, b           *harness.CAProcess
	agentSocket    string
	agentLogs      *harness.Output
	c              *fakeEndpoint
	bEndpoint      string
	aEndpointRoots string
}

func startStack(t *testing.T) *stack {
	t.Helper()
	dir := t.TempDir()
	minter, err := authn.NewMinter("https://issuer.castellan.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(dir, "jwks.json")
	if err := minter.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	auth := []string{"--token-review=false", "--jwt-issuer", minter.Issuer(), "--jwks-file", jwks}
	s := &stack{minter: minter}

	// A's https_web endpoint certificate, for localhost, from a test PKI.
	web := testpki.New(t)
	webCert := testpki.WriteFile(t, dir, "web-cert.pem", web.ChainPEM())
	webKey := testpki.WriteFile(t, dir, "web-key.pem", testpki.KeyPEM(t, web.LeafKey))
	s.aEndpointRoots = testpki.WriteFile(t, dir, "web-roots.pem", testpki.CertPEM(web.Root))
	aEndpoint := "127.0.0.1:" + strconv.Itoa(endpointPort(t))
	s.bEndpoint = "127.0.0.1:" + strconv.Itoa(endpointPort(t))

	s.b = harness.StartCAProcess(t, append(auth, "--trust-domain", "b.test",
		"--bundle-endpoint-addr", s.bEndpoint, "--bundle-endpoint-refresh-hint", "1s",
		"--federate-with", "a.test=https://localhost:"+port(aEndpoint)+"/,https_web,roots="+s.aEndpointRoots,
		"--federation-min-refresh", "1s")...)
	// A's first bundle of B: what B's bundle endpoint serves, copied out
	// of band as an operator would (there is no trust on first use).
	bBundle := filepath.Join(dir, "b-bundle.json")
	if err := os.WriteFile(bBundle, httpGet(t, "http://"+s.b.HTTPAddr+"/bundle.spiffe"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.c = startFakeEndpoint(t)
	s.a = harness.StartCAProcess(t, append(auth, "--trust-domain", "a.test",
		"--bundle-endpoint-addr", aEndpoint, "--bundle-endpoint-profile", "https_web",
		"--bundle-endpoint-cert", webCert, "--bundle-endpoint-key", webKey, "--bundle-endpoint-refresh-hint", "1s",
		"--federate-with", "b.test=https://"+s.bEndpoint+",https_spiffe,spiffe://b.test/castellan/bundle-endpoint,bundle="+bBundle,
		"--federate-with", "c.test="+s.c.srv.URL+"/bundle,https_web,roots="+s.c.rootsFile,
		"--federation-min-refresh", "1s")...)
	s.startAgent(t, dir)
	return s
}

// endpointPort returns a free port below Linux's ephemeral range, for a
// bundle endpoint that a peer polls before it listens: a port in the
// ephemeral range could meanwhile be taken as the source port of an
// outgoing connection (even the poller's own connection to it, which then
// connects to itself), and the endpoint would fail to bind.
func endpointPort(t *testing.T) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port between 20000 and 32000")
	return 0
}

func port(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }

func (s *stack) startAgent(t *testing.T, dir string) {
	t.Helper()
	tok, err := s.minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "fed")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s.agentSocket = filepath.Join(sockDir, "agent.sock")
	bin := harness.Binary(t, "castellan-agent", "-tags", "grpcnotrace")
	// The federated bundles file is found beside --root-cert: A's data
	// directory holds both, as the trust ConfigMap does in a cluster.
	cmd := exec.Command(bin, "--ca-addr="+s.a.GRPCAddr, "--ca-server-name="+s.a.ServerName, "--root-cert="+s.a.RootFile,
		"--token-file="+tokenFile, "--sds-socket="+s.agentSocket, "--http-addr=-", "--root-poll-interval=1s")
	s.agentLogs = &harness.Output{}
	cmd.Stdout, cmd.Stderr = s.agentLogs, s.agentLogs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("agent logs:\n%s", s.agentLogs.String())
			t.Logf("CA A logs:\n%s", s.a.Logs())
			t.Logf("CA B logs:\n%s", s.b.Logs())
		}
	})
}

// svidOf asks ca for an SVID of namespace/sa and returns its chain.
func (s *stack) svidOf(t *testing.T, ca *harness.CAProcess, sa string) []*x509.Certificate {
	t.Helper()
	tok, err := s.minter.Mint("default", sa, []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: ca.Roots(t), ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	csrs, err := loadgen.MakeCSRs(1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	chainPEM, err := client.CreateCertificate(ctx, tok, csrs[0], 0)
	if err != nil {
		t.Fatalf("SVID from the CA: %v", err)
	}
	var chain []*x509.Certificate
	for _, p := range chainPEM {
		block, _ := pem.Decode([]byte(p))
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !c.IsCA {
			chain = append(chain, c)
		}
	}
	return chain
}

// workloadBundles returns the bundles A's agent gives a workload over the
// Workload API, as go-spiffe's client reads them.
func (s *stack) workloadBundles(t *testing.T) *x509bundle.Set {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+s.agentSocket))
	if err != nil {
		t.Fatalf("Workload API: %v", err)
	}
	return x509ctx.Bundles
}

// tryBundles is workloadBundles that returns nil while the agent is not
// serving yet.
func (s *stack) tryBundles() *x509bundle.Set {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+s.agentSocket))
	if err != nil {
		return nil
	}
	return x509ctx.Bundles
}

func authorities(set *x509bundle.Set, td spiffeid.TrustDomain) int {
	if set == nil {
		return 0
	}
	b, ok := set.Get(td)
	if !ok {
		return 0
	}
	return len(b.X509Authorities())
}

// TestFederation: a workload of a.test verifies an SVID of b.test with
// the bundle set from a.test's agent, and a root rotation of b.test
// reaches the agent without a restart; b.test holds a.test's bundle,
// fetched over https_web.
func TestFederation(t *testing.T) {
	s := startStack(t)

	harness.WaitFor(t, waitTimeout, "b.test's bundle at the workload", func() bool { return authorities(s.tryBundles(), tdB) == 1 })
	svidB := s.svidOf(t, s.b, "api")
	set := s.workloadBundles(t)
	id, _, err := x509svid.Verify(svidB, set)
	if err != nil {
		t.Fatalf("an SVID of b.test does not verify against a.test's Workload API bundles: %v", err)
	}
	if id.String() != "spiffe://b.test/ns/default/sa/api" {
		t.Fatalf("verified ID %s", id)
	}
	if _, _, err := x509svid.Verify(s.svidOf(t, s.a, "web"), set); err != nil {
		t.Fatalf("a local SVID does not verify: %v", err)
	}
	// B holds A's bundle too, from A's https_web endpoint.
	harness.WaitFor(t, waitTimeout, "a.test's bundle at B", func() bool {
		return publishedAuthorities(t, s.b.DataDir, tdA) == 1
	})

	// SDS: ROOTCA is a.test's roots only; spiffe://b.test is b.test's;
	// ALL holds a.test's, b.test's and c.test's.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	secrets, err := sdsclient.Fetch(ctx, s.agentSocket, sds.RootCASecretName, sds.FederatedSecretName(tdB), sds.AllBundlesSecretName)
	if err != nil {
		t.Fatalf("SDS: %v", err)
	}
	count := func(name string) map[string]int {
		sec := secrets[name]
		if sec == nil {
			t.Fatalf("SDS: no %s", name)
		}
		if err := sec.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		certs, err := sdsclient.TrustedCA(sec)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, c := range certs {
			id, err := x509svid.IDFromCert(c)
			if err != nil {
				t.Fatalf("%s: a root without a trust domain ID: %v", name, err)
			}
			out[id.TrustDomain().Name()]++
		}
		return out
	}
	if got := count(sds.RootCASecretName); len(got) != 1 || got["a.test"] != 1 {
		t.Fatalf("ROOTCA holds roots of %v, want a.test's only", got)
	}
	if got := count(sds.FederatedSecretName(tdB)); len(got) != 1 || got["b.test"] != 1 {
		t.Fatalf("spiffe://b.test holds roots of %v, want b.test's only", got)
	}
	if got := count(sds.AllBundlesSecretName); got["a.test"] != 1 || got["b.test"] != 1 || got["c.test"] != 1 {
		t.Fatalf("ALL holds roots of %v, want a.test's, b.test's and c.test's", got)
	}

	// Rotation of b.test: prepare, then activate.
	prepared := time.Now()
	harness.RunCastellan(t, 0, "", "ca", "rotate", "prepare", "--trust-domain", "b.test", "--data-dir", s.b.DataDir)
	harness.WaitFor(t, waitTimeout, "b.test's new root at the workload", func() bool { return authorities(s.workloadBundles(t), tdB) == 2 })
	// B reloads its data directory every 5 s, A polls B every second (its
	// refresh hint) and the agent reads the file every second.
	t.Logf("b.test's prepared root reached a.test's workload %s after the prepare command started", time.Since(prepared).Round(10*time.Millisecond))
	harness.RunCastellan(t, 0, "", "ca", "rotate", "activate", "--force", "--data-dir", s.b.DataDir)
	harness.WaitFor(t, waitTimeout, "an SVID of b.test's new root", func() bool {
		chain := s.svidOf(t, s.b, "api")
		_, _, err := x509svid.Verify(chain, s.workloadBundles(t))
		return err == nil && !sameIssuer(chain, svidB)
	})
}

func sameIssuer(a, b []*x509.Certificate) bool {
	return string(a[len(a)-1].RawIssuer) == string(b[len(b)-1].RawIssuer) &&
		string(a[len(a)-1].AuthorityKeyId) == string(b[len(b)-1].AuthorityKeyId)
}

// publishedAuthorities returns how many X.509 authorities of td the
// federated-bundles.json in dir holds.
func publishedAuthorities(t *testing.T, dir string, td spiffeid.TrustDomain) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, federated.FileName))
	if err != nil {
		return 0
	}
	bundles, err := federated.Parse(data)
	if err != nil {
		t.Fatalf("published federated bundles: %v", err)
	}
	for _, b := range bundles {
		if b.TrustDomain() == td {
			return len(b.X509Authorities())
		}
	}
	return 0
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return body
}

// fakeEndpoint is the https_web bundle endpoint of c.test, served by the
// test so that it can answer badly.
type fakeEndpoint struct {
	srv       *httptest.Server
	rootsFile string
	good      *spiffebundle.Bundle

	mu     sync.Mutex
	answer func(http.ResponseWriter)
}

func startFakeEndpoint(t *testing.T) *fakeEndpoint {
	t.Helper()
	f := &fakeEndpoint{}
	pki := testpki.New(t, testpki.WithID("spiffe://c.test/ns/default/sa/c"))
	f.good = spiffebundle.FromX509Authorities(tdC, []*x509.Certificate{pki.Root})
	f.good.SetSequenceNumber(100)
	f.good.SetRefreshHint(time.Second)
	f.serve(f.good)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		answer := f.answer
		f.mu.Unlock()
		answer(w)
	}))
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.rootsFile = testpki.WriteFile(t, t.TempDir(), "c-roots.pem", testpki.CertPEM(f.srv.Certificate()))
	return f
}

func (f *fakeEndpoint) set(answer func(http.ResponseWriter)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

func (f *fakeEndpoint) serve(b *spiffebundle.Bundle) {
	doc, err := b.Marshal()
	if err != nil {
		panic(err)
	}
	f.set(func(w http.ResponseWriter) { _, _ = w.Write(doc) })
}

// TestBadFederatedEndpoint: c.test's endpoint goes bad in each way; each
// is refused with its reason (log and metric), c.test's last good bundle
// stays published and served, and A keeps issuing.
func TestBadFederatedEndpoint(t *testing.T) {
	s := startStack(t)
	harness.WaitFor(t, waitTimeout, "c.test's bundle at the workload", func() bool { return authorities(s.tryBundles(), tdC) == 1 })
	good := s.c.good

	other := testpki.New(t, testpki.WithID("spiffe://d.test/ns/default/sa/d"))
	otherDomain := spiffebundle.FromX509Authorities(tdC, []*x509.Certificate{other.Root})
	otherDomain.SetSequenceNumber(200)
	backwards := spiffebundle.FromX509Authorities(tdC, []*x509.Certificate{testpki.New(t, testpki.WithID("spiffe://c.test/ns/default/sa/x")).Root})
	backwards.SetSequenceNumber(5)
	cases := []struct {
		name, reason string
		bad          func()
	}{
		{name: "garbage", reason: "malformed", bad: func() { s.c.set(func(w http.ResponseWriter) { _, _ = w.Write([]byte("<html>it works</html>")) }) }},
		{name: "another trust domain's bundle", reason: "wrong_trust_domain", bad: func() { s.c.serve(otherDomain) }},
		{name: "sequence moving backwards", reason: "sequence_backwards", bad: func() { s.c.serve(backwards) }},
		{name: "down", reason: "unreachable", bad: func() { s.c.srv.CloseClientConnections(); s.c.srv.Listener.Close() }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.bad()
			harness.WaitFor(t, waitTimeout, "the refusal, counted", func() bool {
				return s.a.Metrics(t).Value("castellan_federation_refresh_failures_total", "trust_domain", "c.test", "reason", tc.reason) > 0
			})
			if _, n := s.a.LogLines(`reason=` + tc.reason); n == 0 {
				if _, n := s.a.LogLines(`"reason":"` + tc.reason + `"`); n == 0 {
					t.Errorf("no log line gives the reason %s", tc.reason)
				}
			}
			if n := publishedAuthorities(t, s.a.DataDir, tdC); n != 1 {
				t.Fatalf("c.test's published bundle has %d authorities, want the last good one's 1", n)
			}
			b, ok := s.workloadBundles(t).Get(tdC)
			if !ok || !b.Equal(good.X509Bundle()) {
				t.Fatal("the workload lost c.test's last good bundle")
			}
			// Local issuance and b.test are undisturbed.
			if _, _, err := x509svid.Verify(s.svidOf(t, s.a, "web"), s.workloadBundles(t)); err != nil {
				t.Fatalf("local SVID: %v", err)
			}
			if authorities(s.workloadBundles(t), tdB) != 1 {
				t.Fatal("b.test's bundle was disturbed")
			}
		})
	}
	m := s.a.Metrics(t)
	t.Logf("c.test: age of the last good bundle %.1fs; b.test: %.1fs", m.Value("castellan_federation_bundle_age_seconds", "trust_domain", "c.test"), m.Value("castellan_federation_bundle_age_seconds", "trust_domain", "b.test"))
}

// newCARoot returns a new CA certificate that names the trust domain of id.
func newCARoot(t *testing.T, id string) *x509.Certificate {
	t.Helper()
	return testpki.New(t, testpki.WithID(id)).Root
}
