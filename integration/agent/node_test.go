package agent_test

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

const (
	nodeA     = "node-a"
	nodeB     = "node-b"
	agentNS   = "castellan-system"
	agentSA   = "castellan-agent"
	helperEnv = "CASTELLAN_AGENT_TEST_HELPER"
)

// nodeCluster is a real API server with an agent pod on node A, a real CA
// that lets that pod's service account impersonate pods of its node, and
// castellan-agent (the slim binary) in node mode on node A.
type nodeCluster struct {
	api     *harness.APIServer
	ca      *harness.CA
	layouts []harness.CgroupLayout
	socket  string
	metrics string // the agent's /metrics URL
	agent   *exec.Cmd
	logs    *harness.Output
}

// startNodeCluster starts everything; ns holds the workloads' service
// accounts sas.
func startNodeCluster(t *testing.T, ns string, sas ...string) *nodeCluster {
	t.Helper()
	layouts := harness.CgroupLayouts(t)
	api := harness.StartAPIServer(t)
	for _, n := range []string{ns, agentNS} {
		if _, err := api.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range sas {
		api.CreateServiceAccount(t, ns, sa)
	}
	api.CreateServiceAccount(t, agentNS, agentSA)
	ca := startNodeAgentCA(t, api)

	// The agent's pod, and its projected token, bound to it.
	agentPod := api.CreatePod(t, agentNS, "castellan-agent-a", agentSA, nodeA, corev1.PodRunning)
	dir, err := os.MkdirTemp("", "node")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tokenFile := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(tokenFile, []byte(api.PodToken(t, agentPod)), 0o600); err != nil {
		t.Fatal(err)
	}

	c := &nodeCluster{api: api, ca: ca, layouts: layouts, socket: filepath.Join(dir, "socket"), logs: &harness.Output{}}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	c.metrics = "http://" + httpAddr + "/metrics"
	bin := harness.Binary(t, "castellan-agent", "-tags", "grpcnotrace")
	c.agent = exec.Command(bin,
		"--attestation=node", "--node-name="+nodeA, "--kubeconfig="+api.Kubeconfig,
		"--ca-addr="+ca.GRPCAddr, "--ca-server-name="+ca.ServerName, "--root-cert="+ca.RootFile,
		"--token-file="+tokenFile, "--sds-socket="+c.socket, "--http-addr="+httpAddr,
		"--initial-backoff=100ms", "--max-backoff=1s", "--log-level=debug")
	c.agent.Stdout, c.agent.Stderr = c.logs, c.logs
	if err := c.agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { c.agent.Wait(); close(exited) }()
	t.Cleanup(func() {
		c.agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			c.agent.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", c.logs.String())
		}
	})
	harness.WaitFor(t, waitTimeout, "the agent's socket", func() bool {
		_, err := os.Stat(c.socket)
		return err == nil
	})
	return c
}

// startNodeAgentCA starts a CA whose node agents are agentNS/agentSA, as
// "castellan ca --node-agent-service-account" does, and waits for its pod
// index.
func startNodeAgentCA(t *testing.T, api *harness.APIServer) *harness.CA {
	t.Helper()
	return harness.StartCA(t, api, harness.WithNodeAgents(nodeauth.ServiceAccount{Namespace: agentNS, Name: agentSA}))
}

// grants returns the impersonations the CA granted: one per CSR the agent
// sent for a workload.
func (c *nodeCluster) grants(t *testing.T) float64 {
	return c.ca.Metrics(t).Value("castellan_ca_impersonation_total", "result", "granted")
}

// agentMetric returns the sum of the agent's series of name with all of
// labels (name=value pairs).
func (c *nodeCluster) agentMetric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return harness.ScrapeMetrics(t, c.metrics).Value(name, labels...)
}

// workloadPod is a pod of the API server and one container's cgroups.
type workloadPod struct {
	*corev1.Pod
	container string
}

func (c *nodeCluster) createPod(t *testing.T, ns, name, sa, node string) workloadPod {
	t.Helper()
	return workloadPod{Pod: c.api.CreatePod(t, ns, name, sa, node, corev1.PodRunning), container: harness.NewContainerID(t)}
}

// startHelper starts a helper (the test binary run as TestHelperProcess,
// a Go client of the agent's socket) in mode and, if pod is set, puts it
// in the pod's container cgroups before it connects.
func (c *nodeCluster) startHelper(t *testing.T, mode string, pod *workloadPod) *harness.Child {
	t.Helper()
	h := harness.StartChild(t, "^TestHelperProcess$", helperEnv+"="+mode)
	if pod != nil {
		harness.JoinPodCgroup(t, h.Pid(), string(pod.UID), pod.container, c.layouts...)
	}
	h.Send(t, c.socket)
	return h
}

// fetchResult is what a "fetch" helper saw: the SVID from the Workload
// API (verified with go-spiffe against the Workload API's bundle) and the
// default secret from SDS, or the refusal.
type fetchResult struct {
	id, serial, sdsSerial string
	refused               string // "<code> <message>" when refused
}

func (c *nodeCluster) fetchFrom(t *testing.T, pod *workloadPod) fetchResult {
	t.Helper()
	h := c.startHelper(t, "fetch", pod)
	line := h.Next(t, waitTimeout)
	if code, msg, ok := strings.Cut(strings.TrimPrefix(line, "refused "), " "); strings.HasPrefix(line, "refused ") && ok {
		return fetchResult{refused: code + " " + msg}
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "svid" {
		t.Fatalf("helper printed %q", line)
	}
	return fetchResult{id: f[1], serial: f[2], sdsSerial: f[3]}
}

// TestNodeAgentEndToEnd runs castellan-agent in node mode against a real
// API server and a real CA. Processes put into real cgroups of real pods
// connect to its one socket and each gets its own service account's SVID,
// over the Workload API (checked with go-spiffe's x509svid.Verify) and
// over SDS; callers that are in no pod, or in a pod of another node, are
// refused; a service account whose pods are all deleted is no longer
// renewed and is withdrawn from the streams that asked for it.
func TestNodeAgentEndToEnd(t *testing.T) {
	const ns = "shop"
	c := startNodeCluster(t, ns, "web", "db")
	web0 := c.createPod(t, ns, "web-0", "web", nodeA)
	db0 := c.createPod(t, ns, "db-0", "db", nodeA)
	web1 := c.createPod(t, ns, "web-1", "web", nodeA)
	webB := c.createPod(t, ns, "web-b", "web", nodeB)

	var web, db fetchResult
	t.Run("two pods, two service accounts, two SVIDs", func(t *testing.T) {
		web = c.fetchFrom(t, &web0)
		db = c.fetchFrom(t, &db0)
		if web.refused != "" || db.refused != "" {
			t.Fatalf("refused: web %q, db %q", web.refused, db.refused)
		}
		if web.id != "spiffe://cluster.local/ns/shop/sa/web" || db.id != "spiffe://cluster.local/ns/shop/sa/db" {
			t.Fatalf("got %s and %s", web.id, db.id)
		}
		if web.serial == db.serial || web.sdsSerial != web.serial || db.sdsSerial != db.serial {
			t.Fatalf("serials: web %s (SDS %s), db %s (SDS %s)", web.serial, web.sdsSerial, db.serial, db.sdsSerial)
		}
	})

	t.Run("a third pod of the first service account shares its SVID", func(t *testing.T) {
		before := c.grants(t)
		r := c.fetchFrom(t, &web1)
		if r.refused != "" || r.serial != web.serial {
			t.Fatalf("web-1 got serial %s (%q), want web-0's %s", r.serial, r.refused, web.serial)
		}
		if after := c.grants(t); after != before || after != 2 {
			t.Fatalf("CSRs granted: %v before, %v after; want 2 (one per service account)", before, after)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		before := c.grants(t)
		for _, tc := range []struct {
			name   string
			pod    *workloadPod
			reason string
			msg    string
		}{
			{"process in no pod", nil, "not_in_pod", "runs in no pod"},
			{"pod of another node", &webB, "unknown_pod", "not a pod bound to node " + nodeA},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := c.fetchFrom(t, tc.pod)
				if !strings.HasPrefix(r.refused, "PermissionDenied ") || !strings.Contains(r.refused, tc.msg) {
					t.Fatalf("got %+v, want PermissionDenied saying %q", r, tc.msg)
				}
				if n := c.agentMetric(t, "castellan_agent_callers_refused_total", "reason", tc.reason); n < 1 {
					t.Fatalf("refusals{reason=%s} = %v", tc.reason, n)
				}
			})
		}
		if after := c.grants(t); after != before {
			t.Fatalf("refused callers cost %v CSRs", after-before)
		}
	})

	t.Run("deleting the last pod of a service account withdraws its SVID", func(t *testing.T) {
		w := c.startHelper(t, "watch", &db0)
		if l := w.Next(t, waitTimeout); l != "sds default "+db.serial {
			t.Fatalf("watcher's first line %q, want db's SVID", l)
		}
		if l := w.Next(t, waitTimeout); l != "workloadapi "+db.serial {
			t.Fatalf("watcher's second line %q, want db's SVID", l)
		}
		c.api.DeletePod(t, ns, db0.Name, false)
		seen := map[string]bool{}
		for len(seen) < 2 {
			l := w.Next(t, waitTimeout)
			switch {
			case l == "sds removed default":
				seen["sds"] = true
			case strings.HasPrefix(l, "workloadapi end PermissionDenied"):
				seen["workloadapi"] = true
			default:
				t.Fatalf("watcher printed %q after its pod was deleted", l)
			}
		}
		// A rotation of every identity renews web, never db again.
		harness.WaitFor(t, waitTimeout, "one identity left", func() bool { return c.agentMetric(t, "castellan_agent_identities") == 1 })
		before := c.grants(t)
		c.agent.Process.Signal(syscall.SIGHUP)
		harness.WaitFor(t, waitTimeout, "web renewed", func() bool { return c.grants(t) == before+1 })
		time.Sleep(quiet)
		if after := c.grants(t); after != before+1 {
			t.Fatalf("a rotation sent %v CSRs, want 1 (web only)", after-before)
		}
		if r := c.fetchFrom(t, &web0); r.refused != "" || r.id != web.id || r.serial == web.serial {
			t.Fatalf("web after the rotation: %+v", r)
		}
	})
}

// TestHelperProcess is not a test: it is the workload process of the
// tests above, run by startHelper with helperEnv set. It reads the
// socket's path on stdin, once the test has put it in its pod's cgroups.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		os.Exit(1)
	}
	socket := in.Text()
	var err error
	switch mode {
	case "fetch":
		err = helperFetch(socket)
	case "watch":
		err = helperWatch(socket)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		st := status.Convert(err)
		fmt.Printf("refused %s %s\n", st.Code(), st.Message())
	}
	for in.Scan() {
	}
	os.Exit(0)
}

// helperFetch fetches the SVID and bundle with go-spiffe's Workload API
// client, verifies the SVID, and fetches the default secret over SDS.
// It prints "svid <id> <serial> <SDS serial>".
func helperFetch(socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	client, err := spiffeapi.New(ctx, spiffeapi.WithAddr("unix://"+socket))
	if err != nil {
		return err
	}
	defer client.Close()
	svid, err := client.FetchX509SVID(ctx)
	if err != nil {
		return unwrapStatus(err)
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return unwrapStatus(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil {
		return fmt.Errorf("the SVID does not verify: %w", err)
	}
	secrets, err := sdsclient.Fetch(ctx, socket, sds.DefaultSecretName)
	if err != nil {
		return unwrapStatus(err)
	}
	chain, _, err := sdsclient.TLSCertificate(secrets[sds.DefaultSecretName])
	if err != nil {
		return err
	}
	fmt.Printf("svid %s %s %s\n", svid.ID, svid.Certificates[0].SerialNumber.Text(16), chain[0].SerialNumber.Text(16))
	return nil
}

// helperWatch holds an SDS delta stream and a Workload API stream open and
// prints what they carry: "sds default <serial>", "sds removed default",
// "workloadapi <serial>", "workloadapi end <code>".
func helperWatch(socket string) error {
	ctx := context.Background()
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	c, err := sdsclient.New(socket)
	if err != nil {
		return err
	}
	d, err := c.DeltaStream(ctx, nil)
	if err != nil {
		return err
	}
	if err := d.Subscribe(sds.DefaultSecretName); err != nil {
		return err
	}
	r, err := d.Next()
	if err != nil {
		return unwrapStatus(err)
	}
	chain, _, err := sdsclient.TLSCertificate(r.Secrets[sds.DefaultSecretName])
	if err != nil {
		return err
	}
	say("sds default %s", chain[0].SerialNumber.Text(16))

	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	wctx := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	ws, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(wctx, &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	first, err := ws.Recv()
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(firstCert(first.GetSvids()[0].GetX509Svid()))
	if err != nil {
		return err
	}
	say("workloadapi %s", cert.SerialNumber.Text(16))
	go func() {
		for {
			if _, err := ws.Recv(); err != nil {
				say("workloadapi end %s", status.Code(err))
				return
			}
		}
	}()
	for {
		r, err := d.Next()
		if err != nil {
			say("sds end %v", err)
			return nil
		}
		for _, n := range r.Removed {
			say("sds removed %s", n)
		}
	}
}

// firstCert returns the first certificate of concatenated DER.
func firstCert(der []byte) []byte {
	certs, err := x509.ParseCertificates(der)
	if err != nil || len(certs) == 0 {
		return der
	}
	return certs[0].Raw
}

// unwrapStatus finds the gRPC status in err's chain, for the refusal
// line.
func unwrapStatus(err error) error {
	for e := err; e != nil; {
		if _, ok := status.FromError(e); ok {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return err
}
