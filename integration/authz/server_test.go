package authz_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/watch"
	"github.com/castellan-mesh/castellan/authz/xds"
	"github.com/castellan-mesh/castellan/authz/xds/xdsclient"
	"github.com/castellan-mesh/castellan/integration/harness"
)

// issue gets an SVID for the service account ns/sa from the Castellan CA,
// as the agent does: a projected token and a CSR.
func issue(t *testing.T, ca *harness.CA, api *harness.APIServer, ns, sa string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, crypto.Signer(key))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	token := api.Token(t, ns, sa, []string{harness.DefaultAudience}, time.Hour)
	ctx = grpcmd.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := pb.NewIstioCertificateServiceClient(ca.Dial(t)).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
	})
	if err != nil {
		t.Fatalf("issuing an SVID for %s/%s: %v", ns, sa, err)
	}
	var cert tls.Certificate
	for _, p := range resp.GetCertChain() {
		rest := []byte(p)
		for {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			cert.Certificate = append(cert.Certificate, b.Bytes)
		}
	}
	cert.PrivateKey = key
	return cert
}

// policyServer runs "castellan authz serve" against the API server, with
// a certificate from the CA.
type policyServer struct {
	xdsAddr, metricsURL string
	roots               *x509.CertPool
}

func startPolicyServer(t *testing.T, ctx context.Context, api *harness.APIServer, ca *harness.CA) *policyServer {
	t.Helper()
	cert := issue(t, ca, api, "castellan-system", "castellan-authz")
	dir := t.TempDir()
	var chain []byte
	for _, c := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"cert-chain.pem": chain,
		"key.pem":        pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"root-cert.pem":  ca.RootPEM,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	xdsPort, httpPort := harness.FreePort(t), harness.FreePort(t)
	ps := &policyServer{
		xdsAddr:    "127.0.0.1:" + strconv.Itoa(xdsPort),
		metricsURL: "http://127.0.0.1:" + strconv.Itoa(httpPort) + "/metrics",
		roots:      ca.Roots(t),
	}
	cmd := exec.CommandContext(ctx, harness.Binary(t, "castellan"), "authz", "serve",
		"--kubeconfig", api.Kubeconfig, "--cert-dir", dir,
		"--xds-addr", ps.xdsAddr, "--http-addr", "127.0.0.1:"+strconv.Itoa(httpPort))
	logFile, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(logFile.Name())
			t.Logf("castellan authz serve log:\n%s", out)
		}
	})
	waitUntil(t, ctx, "authz serve to be ready", nil, func() bool {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(httpPort) + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return ps
}

// proxy connects like a sidecar of pod ns/pod presenting cert, for ECDS.
func (ps *policyServer) proxy(t *testing.T, ns, pod string, cert tls.Certificate, delta bool) *xdsclient.Client {
	t.Helper()
	return ps.start(t, ns, pod, cert, xdsclient.Config{Delta: delta, Names: xds.ResourceNames})
}

// start connects like a sidecar of pod ns/pod presenting cert.
func (ps *policyServer) start(t *testing.T, ns, pod string, cert tls.Certificate, cfg xdsclient.Config) *xdsclient.Client {
	t.Helper()
	conn, err := grpc.NewClient(ps.xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: ps.roots, Certificates: []tls.Certificate{cert},
		// The server's certificate is an SVID: check its SPIFFE ID.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			opts := x509.VerifyOptions{Roots: ps.roots, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return err
			}
			if u := cs.PeerCertificates[0].URIs; len(u) != 1 || u[0].String() != "spiffe://cluster.local/ns/castellan-system/sa/castellan-authz" {
				return fmt.Errorf("policy server presents %v", u)
			}
			return nil
		},
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cfg.NodeID = "sidecar~10.0.0.9~" + pod + "." + ns + "~" + ns + ".svc.cluster.local"
	c, err := xdsclient.Start(context.Background(), conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func (ps *policyServer) pushes(t *testing.T) float64 {
	m := harness.ScrapeMetrics(t, ps.metricsURL)
	return m.Value("castellan_authz_xds_pushes_total", "form", "sotw") + m.Value("castellan_authz_xds_pushes_total", "form", "delta")
}

func nextUpdate(t *testing.T, c *xdsclient.Client) xdsclient.Update {
	t.Helper()
	select {
	case u, ok := <-c.Updates():
		if !ok {
			t.Fatalf("stream ended: %v", c.Err())
		}
		return u
	case <-time.After(60 * time.Second):
		t.Fatal("no update within 60s")
	}
	return xdsclient.Update{}
}

func noUpdate(t *testing.T, name string, c *xdsclient.Client) {
	t.Helper()
	select {
	case u, ok := <-c.Updates():
		if !ok {
			t.Fatalf("%s: stream ended: %v", name, c.Err())
		}
		t.Errorf("%s received %v, want nothing", name, u.Names)
	default:
	}
}

// request is one request checked both ways.
type request struct {
	path, principal string
}

// checkAgainstCLI compares the decisions of a proxy's received filters
// with those of "castellan authz check" on the same policies.
func checkAgainstCLI(t *testing.T, c *xdsclient.Client, policies []string, workload, labels string, reqs []request, want []bool) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(file, []byte(strings.Join(policies, "---\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	filters := xdsclient.HTTPFilters(c.Config(), xds.HTTPNames)
	for i, r := range reqs {
		d, err := envoyrbac.New().EvaluateHTTP(filters, &envoyrbac.Request{
			Headers:        map[string][]string{":method": {"GET"}, ":path": {r.path}, ":authority": {strings.Split(workload, "/")[1]}},
			DirectRemoteIP: netip.MustParseAddr("10.0.0.1"), DestinationIP: netip.MustParseAddr("10.0.0.2"), DestinationPort: 8080,
			Peer: &envoyrbac.Peer{URISANs: []string{r.principal}},
		})
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"authz", "check", "--policies", file, "--workload", workload, "--labels", labels,
			"--path", r.path, "--source-principal", r.principal}
		out, err := exec.Command(harness.Binary(t, "castellan"), args...).Output()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		cli := strings.HasPrefix(string(out), "ALLOW")
		if d.Allowed != cli || d.Allowed != want[i] {
			t.Errorf("%s %+v: proxy filters allow=%v, castellan authz check allow=%v (%s), want %v", workload, r, d.Allowed, cli, strings.TrimSpace(string(out)), want[i])
		}
	}
}

const (
	webDenyAdmin = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  selector: {matchLabels: {app: web}}
  rules:
  - to:
    - operation: {paths: ["/admin"]}
`
	dbAllowWeb = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-from-web, namespace: foo}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/foo/sa/web"]}
`
)

// TestPolicyServer runs "castellan authz serve" against a real API server
// with the Istio CRDs, proxies with certificates from the Castellan CA,
// and policies applied with client-go.
func TestPolicyServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	api := harness.StartAPIServer(t)
	dyn, err := dynamic.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, ctx, dyn)
	for _, sa := range [][2]string{{"foo", "web"}, {"foo", "db"}, {"castellan-system", "castellan-authz"}} {
		api.CreateServiceAccount(t, sa[0], sa[1])
	}
	for _, p := range [][3]string{{"web-1", "web", "web"}, {"web-2", "web", "web"}, {"db-1", "db", "db"}} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p[0], Namespace: "foo", Labels: map[string]string{"app": p[1]}},
			Spec: corev1.PodSpec{ServiceAccountName: p[2], AutomountServiceAccountToken: new(bool),
				Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
		}
		if _, err := api.Client.CoreV1().Pods("foo").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ca := harness.StartCA(t, api)
	ps := startPolicyServer(t, ctx, api, ca)
	webCert, dbCert := issue(t, ca, api, "foo", "web"), issue(t, ca, api, "foo", "db")

	web1 := ps.proxy(t, "foo", "web-1", webCert, false)
	web2 := ps.proxy(t, "foo", "web-2", webCert, true)
	db := ps.proxy(t, "foo", "db-1", dbCert, true)
	for _, c := range []*xdsclient.Client{web1, web2, db} {
		if u := nextUpdate(t, c); !u.Accepted || len(u.Names) != len(xds.ResourceNames) {
			t.Fatalf("initial update %+v", u)
		}
	}
	webReqs := []request{{"/admin", "spiffe://cluster.local/ns/foo/sa/db"}, {"/", "spiffe://cluster.local/ns/foo/sa/db"}}
	dbReqs := []request{{"/", "spiffe://cluster.local/ns/foo/sa/web"}, {"/", "spiffe://cluster.local/ns/foo/sa/other"}}
	checkAgainstCLI(t, web1, nil, "foo/web-1", "app=web", webReqs, []bool{true, true})

	t.Run("a proxy presenting another workload's identity is refused", func(t *testing.T) {
		for _, delta := range []bool{false, true} {
			c := ps.proxy(t, "foo", "web-1", dbCert, delta)
			if _, ok := <-c.Updates(); ok {
				t.Fatal("configuration served to the wrong identity")
			}
			if code := status.Code(c.Err()); code != codes.PermissionDenied {
				t.Errorf("delta=%v: %v, want PermissionDenied", delta, c.Err())
			}
		}
	})

	// Apply a DENY selecting web: both web proxies, and only they, get it.
	before := ps.pushes(t)
	apply(t, ctx, dyn, webDenyAdmin)
	for _, c := range []*xdsclient.Client{web1, web2} {
		if u := nextUpdate(t, c); !u.Accepted {
			t.Fatalf("update %+v", u)
		}
	}
	checkAgainstCLI(t, web1, []string{webDenyAdmin}, "foo/web-1", "app=web", webReqs, []bool{false, true})
	checkAgainstCLI(t, web2, []string{webDenyAdmin}, "foo/web-2", "app=web", webReqs, []bool{false, true})
	// An ALLOW selecting db reaches db only; by then the server has handled
	// the web change, so the push count proves db got nothing before.
	apply(t, ctx, dyn, dbAllowWeb)
	if u := nextUpdate(t, db); !u.Accepted {
		t.Fatalf("db update %+v", u)
	}
	if got := ps.pushes(t) - before; got != 3 {
		t.Errorf("%v pushes for two policies, want 3 (web-1, web-2, db-1)", got)
	}
	noUpdate(t, "web-1", web1)
	noUpdate(t, "web-2", web2)
	checkAgainstCLI(t, db, []string{dbAllowWeb}, "foo/db-1", "app=db", dbReqs, []bool{true, false})

	// A proxy that NACKs keeps its last good config; the NACK is counted.
	nacker := ps.start(t, "foo", "db-1", dbCert, xdsclient.Config{Delta: true, Names: xds.ResourceNames,
		Reject: func(cfg map[string]*corev3.TypedExtensionConfig) error {
			if _, ok := cfg[xds.HTTPDeny]; ok {
				return errors.New("this proxy refuses DENY filters")
			}
			return nil
		}})
	if u := nextUpdate(t, nacker); u.Accepted {
		t.Fatal("initial config accepted, want a NACK")
	}
	if len(nacker.Config()) != 0 {
		t.Error("NACKed config in force")
	}
	waitUntil(t, ctx, "the NACK to be counted", nil, func() bool {
		return harness.ScrapeMetrics(t, ps.metricsURL).Value("castellan_authz_xds_answers_total", "result", "nack") == 1
	})
	nacker.Close()

	// Change the DENY: the web proxies get the new filters.
	changed := strings.Replace(webDenyAdmin, `"/admin"`, `"/"`, 1)
	apply(t, ctx, dyn, changed)
	for _, c := range []*xdsclient.Client{web1, web2} {
		nextUpdate(t, c)
	}
	checkAgainstCLI(t, web2, []string{changed}, "foo/web-2", "app=web", webReqs, []bool{true, false})

	// A broken ALLOW fails closed end to end: one typo, and db allows
	// nothing instead of everything.
	broken := strings.Replace(dbAllowWeb, "principals:", "principal:", 1)
	apply(t, ctx, dyn, broken)
	if u := nextUpdate(t, db); !u.Accepted {
		t.Fatalf("db update %+v", u)
	}
	checkAgainstCLI(t, db, []string{broken}, "foo/db-1", "app=db", dbReqs, []bool{false, false})

	// Delete the DENY: the web proxies allow again.
	if err := dyn.Resource(watch.AuthorizationPolicies).Namespace("foo").Delete(ctx, "deny-admin", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*xdsclient.Client{web1, web2} {
		nextUpdate(t, c)
	}
	checkAgainstCLI(t, web1, nil, "foo/web-1", "app=web", webReqs, []bool{true, true})

	// PeerAuthentication reaches the web proxy as its LDS listener.
	lds := ps.start(t, "foo", "web-1", webCert, xdsclient.Config{TypeURL: xdsclient.ListenerTypeURL})
	chains := func() string {
		t.Helper()
		if u := nextUpdate(t, lds); !u.Accepted {
			t.Fatalf("listener update %+v", u)
		}
		var out []string
		for _, c := range lds.Listeners()[xds.InboundListener].GetFilterChains() {
			m := c.GetFilterChainMatch()
			out = append(out, fmt.Sprintf("%d/%s", m.GetDestinationPort().GetValue(), m.GetTransportProtocol()))
		}
		return strings.Join(out, " ")
	}
	if got := chains(); got != "0/tls 0/raw_buffer" {
		t.Errorf("listener without PeerAuthentication (PERMISSIVE): %s", got)
	}
	apply(t, ctx, dyn, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-strict, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
`)
	if got := chains(); got != "0/tls" {
		t.Errorf("listener with STRICT: %s", got)
	}

	m := harness.ScrapeMetrics(t, ps.metricsURL)
	if got := m.Value("castellan_authz_xds_answers_total", "result", "nack"); got != 1 {
		t.Errorf("NACKs counted %v, want 1", got)
	}
	if got := m.Value("castellan_authz_xds_connected_proxies"); got != 4 {
		t.Errorf("connected proxies %v, want 4", got)
	}
	if m.Value("castellan_authz_xds_answers_total", "result", "ack") < 10 {
		t.Errorf("ACKs not counted: %s", m)
	}
	if m.Value("castellan_authz_xds_refused_streams_total", "reason", "identity") != 2 {
		t.Errorf("refusals not counted: %s", m)
	}
}
