package istio_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// The DNS names of istiod's serving certificate, and the CA flag that
// allows them to istiod's service account alone.
const (
	istiodFQDN    = "istiod.istio-system.svc.cluster.local"
	istiodProfile = "istio-system/istiod=" + istiodSAN + "," + istiodFQDN
	clusterType   = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
)

// pilotDiscovery returns the path of the pilot-discovery (istiod) binary
// that scripts/build-istio.sh builds, failing when it is missing
// unless CASTELLAN_ALLOW_SKIP is set.
func pilotDiscovery(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CASTELLAN_PILOT_DISCOVERY"); p != "" {
		return p
	}
	cache := os.Getenv("CASTELLAN_CACHE_DIR")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "castellan")
	}
	p := filepath.Join(cache, "pilot-discovery-eed52ebb", "pilot-discovery")
	if _, err := os.Stat(p); err != nil {
		harness.SkipUnlessAllowed(t, fmt.Sprintf("pilot-discovery not built at %s; run scripts/build-istio.sh (make tools)", p))
	}
	return p
}

// writeTree writes files (path relative to dir → content) under dir.
func writeTree(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for path, data := range files {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// process is a command run for the test, with its output kept and shown
// when the test fails.
type process struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
}

func (p *process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out.Len() < 4<<20 {
		p.out.Write(b)
	}
	return len(b), nil
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.out.String()
	if len(s) > 20000 {
		s = "...\n" + s[len(s)-20000:]
	}
	return s
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// start runs bin in dir with env added to the test's environment; it is
// killed when the test ends.
func start(t *testing.T, name, dir string, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.output())
		}
	})
	return p
}

// waitFor polls cond until it holds, failing after limit or as soon as
// one of procs exits.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool, procs ...*process) {
	t.Helper()
	harness.WaitFor(t, limit, what, func() bool {
		if cond() {
			return true
		}
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("waiting for %s: %s exited", what, p.name)
			}
		}
		return false
	})
}

func nonEmpty(path string) func() bool {
	return func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Size() > 0
	}
}

// istiodChartValues is what the test reads of
// deploy/overlays/istio-ca/istiod-values.yaml.
type istiodChartValues struct {
	Env                map[string]string `json:"env"`
	ExtraContainerArgs []string          `json:"extraContainerArgs"`
	InitContainers     []struct {
		Name string   `json:"name"`
		Args []string `json:"args"`
	} `json:"initContainers"`

	agentArgs, discoveryArgs []string
}

// istiodValues reads the values for Istio's istiod chart that the
// istio-ca overlay ships.
func istiodValues(t *testing.T) *istiodChartValues {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "overlays", "istio-ca", "istiod-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v istiodChartValues
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("istiod-values.yaml: %v", err)
	}
	for _, c := range v.InitContainers {
		if c.Name == "castellan-agent" {
			v.agentArgs = c.Args
		}
	}
	if len(v.agentArgs) == 0 {
		t.Fatal("istiod-values.yaml runs no castellan-agent")
	}
	for _, a := range v.ExtraContainerArgs {
		v.discoveryArgs = append(v.discoveryArgs, inDir(a))
	}
	return &v
}

// flag returns the value of istiod's flag name in the values.
func (v *istiodChartValues) flag(t *testing.T, name string) string {
	t.Helper()
	for _, a := range v.ExtraContainerArgs {
		if n, val, ok := strings.Cut(a, "="); ok && n == name {
			return val
		}
	}
	t.Fatalf("istiod-values.yaml gives istiod no %s", name)
	return ""
}

// inDir makes the absolute paths under /var/run/secrets in a flag
// relative, for a process run in a test directory instead of a pod.
func inDir(arg string) string {
	return strings.ReplaceAll(arg, "=/var/run/secrets/", "=var/run/secrets/")
}

// trustConfigMap waits for Castellan's istio-ca-root-cert in ns and
// returns its root-cert.pem; with want set, it checks that the ConfigMap
// holds want and is still labelled as Castellan's.
func trustConfigMap(t *testing.T, api *harness.APIServer, ns string, want []byte) []byte {
	t.Helper()
	var cm *corev1.ConfigMap
	waitFor(t, "istio-ca-root-cert in "+ns, 60*time.Second, func() bool {
		var err error
		cm, err = api.Client.CoreV1().ConfigMaps(ns).Get(context.Background(), "istio-ca-root-cert", metav1.GetOptions{})
		return err == nil && cm.Data["root-cert.pem"] != ""
	})
	got := []byte(cm.Data["root-cert.pem"])
	if want != nil {
		if string(got) != string(want) || cm.Labels["app.kubernetes.io/managed-by"] != "castellan" {
			t.Errorf("%s/istio-ca-root-cert was changed (labels %v)", ns, cm.Labels)
		}
	}
	return got
}

// sidecar is Istio's pilot-agent run as a sidecar without Envoy.
type sidecar struct {
	*process
	pod, work, out string
}

// startSidecar runs pilot-agent for the pod name of shop/checkout with
// Castellan at caAddr as its CA (CA_ADDR, root-cert.pem as the
// istio-ca-root-cert ConfigMap mounts it) and istiod at discoveryAddr,
// with env added.
func startSidecar(t *testing.T, bin, name string, token, root []byte, caAddr, discoveryAddr string, env ...string) *sidecar {
	t.Helper()
	_, caPort, _ := net.SplitHostPort(caAddr)
	work := t.TempDir()
	out := filepath.Join(work, "out")
	writeTree(t, work, map[string][]byte{
		"var/run/secrets/tokens/istio-token":  token,
		"var/run/secrets/istio/root-cert.pem": root,
	})
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	proxyConfig, _ := json.Marshal(map[string]any{"discoveryAddress": discoveryAddr, "statusPort": harness.FreePort(t)})
	p := start(t, "pilot-agent "+name, work, append([]string{
		"DISABLE_ENVOY=true",
		"CA_ADDR=localhost:" + caPort,
		"PROXY_CONFIG=" + string(proxyConfig),
		"ISTIOD_SAN=" + istiodSAN,
		"OUTPUT_CERTS=" + out,
		"POD_NAMESPACE=shop", "POD_NAME=" + name, "SERVICE_ACCOUNT=checkout",
		"JWT_POLICY=third-party-jwt", "PKCS8_KEY=true", "ISTIO_META_CLUSTER_ID=Kubernetes",
		"INSTANCE_IP=127.0.0.1",
	}, env...), bin, "proxy", "sidecar")
	return &sidecar{process: p, pod: name, work: work, out: out}
}

// askClusters sends a CDS request, as Envoy's first, to the sidecar's
// xDS proxy socket and returns the first response.
func (s *sidecar) askClusters(t *testing.T) (*discoveryv3.DiscoveryResponse, error) {
	t.Helper()
	socket := filepath.Join(s.work, "etc/istio/proxy/XDS")
	waitFor(t, "pilot-agent's XDS socket", 30*time.Second, func() bool { _, err := os.Stat(socket); return err == nil }, s.process)
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	name := s.pod
	meta, err := structpb.NewStruct(map[string]any{
		"NAMESPACE": "shop", "NAME": name, "SERVICE_ACCOUNT": "checkout",
		"CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "1.29.0", "INSTANCE_IPS": "127.0.0.1",
	})
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sidecar~127.0.0.1~" + name + ".shop~shop.svc.cluster.local", Cluster: "checkout.shop", Metadata: meta}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	// ACK, as Envoy does.
	_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: clusterType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	return resp, nil
}

// selfSignedRoot returns a PEM CA certificate that has nothing to do with
// Castellan.
func selfSignedRoot(t *testing.T) []byte {
	t.Helper()
	return testpki.CertPEM(testpki.NewCA(t, "another root").Cert)
}

// startIstiod runs pilot-discovery in dir with env and args added, on
// loopback ports, and returns its secure xDS address once it is ready.
func startIstiod(t *testing.T, bin, dir, kubeconfig string, env []string, args ...string) string {
	t.Helper()
	httpAddr, secureAddr := loopback(t), loopback(t)
	p := start(t, "pilot-discovery in "+filepath.Base(dir), dir, env, bin, append([]string{"discovery", "--kubeconfig", kubeconfig,
		"--httpAddr", httpAddr, "--grpcAddr", loopback(t), "--secureGRPCAddr", secureAddr,
		"--monitoringAddr", loopback(t), "--httpsAddr", loopback(t), "--ctrlz_port", strconv.Itoa(harness.FreePort(t)),
		"--domain", "cluster.local"}, args...)...)
	waitFor(t, "istiod /ready", 120*time.Second, func() bool {
		resp, err := http.Get("http://" + httpAddr + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, p)
	return secureAddr
}

// servedCertificate returns the leaf istiod serves on addr, verified with
// roots for istiod's service name.
func servedCertificate(t *testing.T, addr string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: istiodSAN, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS to istiod, verified with Castellan's root: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func loopback(t *testing.T) string { return "127.0.0.1:" + strconv.Itoa(harness.FreePort(t)) }

// TestIstiod runs Istio's control plane with its CA off and Castellan as
// the mesh's only CA: istiod serves xDS over TLS with a certificate from
// Castellan's DNS profile, delivered by a castellan agent beside it in the
// layout istiod reads; Istio's own pilot-agent gets its SVID from
// Castellan, verifies istiod with Castellan's root, and receives its
// configuration.
func TestIstiod(t *testing.T) {
	pilotAgentBin, discoveryBin := pilotAgent(t), pilotDiscovery(t)
	agentBin := harness.Binary(t, "castellan-agent")
	api := harness.StartAPIServer(t)
	api.InstallIstioCRDs(t)
	api.CreateServiceAccount(t, "istio-system", "istiod")
	api.CreateServiceAccount(t, "shop", "checkout")
	// pilot-agent checks a CA it reaches as "localhost" under istiod's
	// name (Istio's pilot/pkg/grpc/tls.go), so the CA's serving
	// certificate names it too; in a cluster, CA_ADDR names Castellan's
	// Service and its certificate that name.
	// The CA keeps its material in a Secret and, as the istio-ca overlay
	// runs it, publishes istio-ca-root-cert in every namespace: istiod's
	// agent and the sidecar take Castellan's root from there, as their
	// pods mount it.
	api.CreateServiceAccount(t, "castellan-system", "castellan-ca")
	ca := harness.StartCAProcess(t, "--kubeconfig", api.Kubeconfig, "--material=kubernetes",
		"--namespace=castellan-system", "--pod-name=castellan-ca-0",
		"--dns-san-allow", istiodProfile, "--server-dns-name", istiodSAN)
	root := trustConfigMap(t, api, "istio-system", nil)
	if sidecarRoot := trustConfigMap(t, api, "shop", nil); string(sidecarRoot) != string(root) {
		t.Fatal("istio-ca-root-cert differs between namespaces")
	}
	caRoots, err := pemfile.ParseCertificates(root)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	bundle := x509bundle.FromX509Authorities(td, caRoots)

	// istiod's pod as deploy/overlays/istio-ca/istiod-values.yaml makes
	// it: castellan-agent beside istiod, with the flags of that file,
	// writes istiod's serving certificate where istiod's flags say. Only
	// the CA's address, the paths (under this test's directory) and the
	// HTTP listener differ.
	values := istiodValues(t)
	istiodDir := t.TempDir()
	writeTree(t, istiodDir, map[string][]byte{
		"var/run/secrets/tokens/istio-token":  []byte(api.Token(t, "istio-system", "istiod", []string{"istio-ca"}, time.Hour)),
		"var/run/secrets/istio/root-cert.pem": root,
	})
	var agentArgs []string
	for _, a := range values.agentArgs {
		switch name, _, _ := strings.Cut(a, "="); name {
		case "--ca-addr":
			a = "--ca-addr=" + ca.GRPCAddr
		case "--http-addr":
			a = "--http-addr=-"
		}
		agentArgs = append(agentArgs, inDir(a))
	}
	agent := start(t, "castellan-agent", istiodDir, nil, agentBin, append(agentArgs, "--ca-server-name", ca.ServerName, "--log-format", "text")...)
	certFile, keyFile := filepath.Join(istiodDir, inDir(values.flag(t, "--tlsCertFile"))), filepath.Join(istiodDir, inDir(values.flag(t, "--tlsKeyFile")))
	waitFor(t, "istiod serving certificate", 60*time.Second, nonEmpty(certFile), agent)
	waitFor(t, "istiod serving key", 10*time.Second, nonEmpty(keyFile), agent)
	serving, err := pemfile.ReadCertificates(certFile)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(serving, bundle)
	if err != nil || id.String() != "spiffe://cluster.local/ns/istio-system/sa/istiod" {
		t.Fatalf("istiod's certificate is for %s (%v)", id, err)
	}
	if got := serving[0].DNSNames; !slices.Equal(got, []string{istiodSAN, istiodFQDN}) {
		t.Fatalf("istiod's certificate names %q", got)
	}

	// istiod, with its CA off.
	istiodEnv := []string{"POD_NAMESPACE=istio-system", "POD_NAME=istiod-0", "CLUSTER_ID=Kubernetes"}
	for k, v := range values.Env {
		istiodEnv = append(istiodEnv, k+"="+v)
	}
	if !slices.Contains(istiodEnv, "ENABLE_CA_SERVER=false") {
		t.Fatalf("istiod-values.yaml leaves istiod's CA on: env %v", values.Env)
	}
	secureAddr := startIstiod(t, discoveryBin, istiodDir, api.Kubeconfig, istiodEnv, values.discoveryArgs...)

	// A client that trusts Castellan's root alone accepts istiod's
	// serving certificate under its service name.
	pool := x509.NewCertPool()
	for _, c := range caRoots {
		pool.AddCert(c)
	}
	if peer := servedCertificate(t, secureAddr, pool); !peer.Equal(serving[0]) {
		t.Errorf("istiod serves %v, not the certificate the agent wrote", peer.Subject)
	}

	// Istio's sidecar agent: its CA is Castellan, its control plane istiod.
	token := []byte(api.Token(t, "shop", "checkout", []string{"istio-ca"}, time.Hour))
	began := time.Now()
	sidecar := startSidecar(t, pilotAgentBin, "checkout-7d9f8", token, root, ca.GRPCAddr, secureAddr)
	waitFor(t, "SVID from Castellan", 60*time.Second, nonEmpty(filepath.Join(sidecar.out, "cert-chain.pem")), sidecar.process)
	firstSVID := time.Since(began)
	waitFor(t, "pilot-agent's key", 10*time.Second, nonEmpty(filepath.Join(sidecar.out, "key.pem")), sidecar.process)
	chain, err := pemfile.ReadCertificates(filepath.Join(sidecar.out, "cert-chain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if id, _, err := x509svid.Verify(chain, bundle); err != nil || id.String() != "spiffe://cluster.local/ns/shop/sa/checkout" {
		t.Fatalf("pilot-agent's SVID is for %s (%v)", id, err)
	}

	// What Envoy would do: ask pilot-agent's xDS proxy for clusters. The
	// proxy forwards to istiod over TLS, verified with Castellan's root
	// and ISTIOD_SAN.
	resp, err := sidecar.askClusters(t)
	if err != nil {
		t.Fatalf("no CDS response through pilot-agent from istiod: %v", err)
	}
	firstXDS := time.Since(began)
	if resp.GetTypeUrl() != clusterType || len(resp.GetResources()) == 0 {
		t.Fatalf("CDS response of type %s with %d resources", resp.GetTypeUrl(), len(resp.GetResources()))
	}
	var names []string
	for _, r := range resp.GetResources() {
		var c clusterv3.Cluster
		if err := r.UnmarshalTo(&c); err != nil {
			t.Fatalf("CDS resource: %v", err)
		}
		names = append(names, c.GetName())
	}
	if !slices.Contains(names, "BlackHoleCluster") {
		t.Errorf("istiod's clusters %q lack BlackHoleCluster", names)
	}

	// The control: a sidecar that trusts another root for xDS (XDS_ROOT_CA)
	// still gets its SVID from Castellan but no configuration: istiod's
	// certificate chains to Castellan's root and nothing else. How
	// pilot-agent's xDS proxy ends the stream varies (the x509 error, or
	// EOF when it closes first), so the TLS refusal itself is checked
	// with a client that trusts the same foreign root.
	foreignRoot := selfSignedRoot(t)
	foreign := filepath.Join(t.TempDir(), "foreign-root.pem")
	if err := os.WriteFile(foreign, foreignRoot, 0o600); err != nil {
		t.Fatal(err)
	}
	other := startSidecar(t, pilotAgentBin, "checkout-b4c1e", token, root, ca.GRPCAddr, secureAddr, "XDS_ROOT_CA="+foreign)
	waitFor(t, "the second sidecar's SVID", 60*time.Second, nonEmpty(filepath.Join(other.out, "cert-chain.pem")), other.process)
	if resp, err := other.askClusters(t); err == nil {
		t.Fatalf("a sidecar trusting another root got %d clusters from istiod", len(resp.GetResources()))
	} else {
		t.Logf("the sidecar trusting another root got no configuration: %v", err)
	}
	foreignPool := x509.NewCertPool()
	foreignPool.AppendCertsFromPEM(foreignRoot)
	if conn, err := tls.Dial("tcp", secureAddr, &tls.Config{RootCAs: foreignPool, ServerName: istiodSAN, NextProtos: []string{"h2"}}); err == nil {
		conn.Close()
		t.Fatal("istiod's certificate verifies with a root other than Castellan's")
	} else if !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("TLS to istiod trusting another root failed (%v), but not on istiod's certificate", err)
	}

	// Without flags, istiod finds the agent's istiod layout at its
	// well-known path, /var/run/secrets/istiod/tls (Istio's
	// pkg/config/constants: tls.crt, tls.key, ca.crt).
	wellKnown := t.TempDir()
	writeTree(t, wellKnown, map[string][]byte{
		"var/run/secrets/tokens/istio-token":  []byte(api.Token(t, "istio-system", "istiod", []string{"istio-ca"}, time.Hour)),
		"var/run/secrets/istio/root-cert.pem": root,
	})
	tlsDir := filepath.Join(wellKnown, "var/run/secrets/istiod/tls")
	agent2 := start(t, "castellan-agent (well-known path)", wellKnown, nil, agentBin,
		"--ca-addr", ca.GRPCAddr, "--ca-server-name", ca.ServerName,
		"--root-cert", "var/run/secrets/istio/root-cert.pem", "--token-file", "var/run/secrets/tokens/istio-token",
		"--output-dir", tlsDir, "--output-layout", "istiod", "--dns-name", istiodSAN,
		"--sds-socket", "-", "--http-addr", "-", "--log-format", "text")
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		waitFor(t, f+" at istiod's well-known path", 60*time.Second, nonEmpty(filepath.Join(tlsDir, f)), agent2)
	}
	written, err := pemfile.ReadCertificates(filepath.Join(tlsDir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	env2 := slices.Clone(istiodEnv)
	env2[slices.Index(env2, "POD_NAME=istiod-0")] = "POD_NAME=istiod-1"
	if peer := servedCertificate(t, startIstiod(t, discoveryBin, wellKnown, api.Kubeconfig, env2), pool); !peer.Equal(written[0]) {
		t.Errorf("istiod without flags serves %v, not the certificate at its well-known path", peer.Subject)
	}

	// istiod, its CA off, left istio-ca-root-cert to Castellan.
	for _, ns := range []string{"istio-system", "shop"} {
		trustConfigMap(t, api, ns, root)
	}

	m := ca.Metrics(t)
	if n := m.Value("castellan_ca_certificates_issued_total"); n < 2 {
		t.Errorf("Castellan issued %v certificates, want istiod's and the sidecar's", n)
	}
	t.Logf("pilot-agent: first SVID from Castellan after %s, first xDS response (%d clusters, version %s) from istiod after %s (polled every 10 ms)",
		firstSVID.Round(time.Millisecond), len(names), resp.GetVersionInfo(), firstXDS.Round(time.Millisecond))
}

// TestDNSProfileRefusals asks a real CA process for DNS SANs it must
// refuse: a name outside istiod's list, and istiod's names for another
// service account. The allowed request is the control.
func TestDNSProfileRefusals(t *testing.T) {
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, "istio-system", "istiod")
	api.CreateServiceAccount(t, "istio-system", "default")
	api.CreateServiceAccount(t, "shop", "checkout")
	ca := harness.StartCAProcess(t, "--kubeconfig", api.Kubeconfig, "--dns-san-allow", istiodProfile)
	client, err := caclient.New(caclient.Config{Addr: ca.GRPCAddr, Roots: ca.Roots(t), ServerName: ca.ServerName})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr := func(id string, names ...string) []byte {
		tmpl := &x509.CertificateRequest{DNSNames: names}
		if id != "" {
			u, _ := url.Parse(id)
			tmpl.URIs = []*url.URL{u}
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	tokens := map[string]string{}
	for _, sa := range []string{"istio-system/istiod", "istio-system/default", "shop/checkout"} {
		ns, name, _ := strings.Cut(sa, "/")
		tokens[sa] = api.Token(t, ns, name, []string{"istio-ca"}, time.Hour)
	}
	tests := []struct {
		name     string
		caller   string
		csr      []byte
		code     codes.Code
		contains string
	}{
		{"istiod, its names", "istio-system/istiod", csr("", istiodSAN, istiodFQDN), codes.OK, ""},
		{"istiod, a name outside its list", "istio-system/istiod", csr("spiffe://cluster.local/ns/istio-system/sa/istiod", istiodSAN, "evil.example.com"),
			codes.PermissionDenied, `DNS SAN "evil.example.com", which is not in the DNS SAN profile of spiffe://cluster.local/ns/istio-system/sa/istiod`},
		{"istiod, a wildcard", "istio-system/istiod", csr("", "*.istio-system.svc"), codes.PermissionDenied, `"*.istio-system.svc"`},
		{"istiod's names, another account of its namespace", "istio-system/default", csr("", istiodSAN), codes.InvalidArgument,
			`DNS SAN "istiod.istio-system.svc"; only the caller's SPIFFE ID spiffe://cluster.local/ns/istio-system/sa/default may be requested (no DNS SAN profile names this service account)`},
		{"istiod's names, a workload", "shop/checkout", csr("", istiodFQDN), codes.InvalidArgument, "no DNS SAN profile names this service account"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			chain, err := client.CreateCertificate(ctx, tokens[tt.caller], tt.csr, time.Hour)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %s (%v), want %s", got, err, tt.code)
			}
			if tt.code != codes.OK {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.contains) {
					t.Fatalf("message %q does not say %q", msg, tt.contains)
				}
				return
			}
			certs, err := pemfile.ParseCertificates([]byte(strings.Join(chain, "")))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(certs[0].DNSNames, []string{istiodSAN, istiodFQDN}) || len(certs[0].URIs) != 1 {
				t.Fatalf("issued SANs %v %q", certs[0].URIs, certs[0].DNSNames)
			}
		})
	}
	m := ca.Metrics(t)
	for reason, want := range map[string]float64{"dns_san_not_allowed": 2, "forbidden_san": 2} {
		if got := m.Value("castellan_ca_csr_rejected_total", "reason", reason); got != want {
			t.Errorf("castellan_ca_csr_rejected_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}

	// A profile that would let a service account serve a whole zone, or
	// that is malformed, stops the CA at startup.
	for _, bad := range []string{"istio-system/istiod=*.istio-system.svc", "istiod=istiod.istio-system.svc", "istio-system/istiod=bad_name.svc"} {
		harness.RunCastellan(t, 2, "--dns-san-allow", "ca", "--data-dir", t.TempDir(), "--dns-san-allow", bad)
	}
}
