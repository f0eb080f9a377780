package xds_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/xds"
	"github.com/castellan-mesh/castellan/authz/xds/xdsclient"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// benchProxies is the number of proxies connected in BenchmarkPush.
const benchProxies = 1000

type arrival struct {
	proxy int
	at    time.Time
}

// BenchmarkPush runs the policy server in a process of its own (this test
// binary, as TestPushServerProcess) and connects 1,000 proxies to it, half
// state of the world and half delta, over gRPC and mutual TLS on loopback,
// each for its own pod. Every iteration applies a policy selecting 10
// workloads, waits until their proxies have it and checks that nothing went
// to the other 990, then applies a mesh-wide policy and waits until all
// 1,000 have it; between phases it waits until every push is answered. It
// reports the p99 and max latency from the change to a targeted proxy's
// receipt, the time for the mesh-wide change to reach the last proxy, the
// pushes that reached untargeted proxies, and the server process's peak RSS.
//
//	go test ./authz/xds -run '^$' -bench Push -benchtime 20x
func BenchmarkPush(b *testing.B) {
	dir := b.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPushServerProcess$", "-test.v")
	cmd.Env = append(os.Environ(), benchServerEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	// call sends a command to the server process and returns its answer.
	call := func(command string) string {
		if _, err := fmt.Fprintln(stdin, command); err != nil {
			b.Fatal(err)
		}
		for lines.Scan() {
			if v, ok := strings.CutPrefix(lines.Text(), "bench: "); ok {
				return v
			}
		}
		b.Fatalf("server process ended: %v", lines.Err())
		return ""
	}
	addr := call("addr")
	read := func(name string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		return data
	}
	cert, err := tls.X509KeyPair(read("client.pem"), read("client-key.pem"))
	if err != nil {
		b.Fatal(err)
	}
	bundle := x509.NewCertPool()
	bundle.AppendCertsFromPEM(read("root.pem"))
	clientTLS := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: bundle, ServerName: "localhost", Certificates: []tls.Certificate{cert}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	answered := func() {
		for call("settled") != "yes" {
			time.Sleep(10 * time.Millisecond)
		}
	}

	arrivals := make(chan arrival, 4*benchProxies)
	clients := make([]*xdsclient.Client, benchProxies)
	start := time.Now()
	for i := range benchProxies {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		pod := fmt.Sprintf("p-%04d", i)
		c, err := xdsclient.Start(ctx, conn, xdsclient.Config{NodeID: "sidecar~10.1.0.1~" + pod + ".bench~bench.svc.cluster.local",
			Delta: i%2 == 1, Names: xds.ResourceNames})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
		go func(i int) {
			for range c.Updates() {
				arrivals <- arrival{proxy: i, at: time.Now()}
			}
		}(i)
	}
	for n := range benchProxies {
		select {
		case <-arrivals:
		case <-time.After(2 * time.Minute):
			b.Fatalf("%d of %d proxies got their initial config", n, benchProxies)
		}
	}
	b.Logf("%d proxies connected and configured in %v", benchProxies, time.Since(start).Round(time.Millisecond))

	var targeted []time.Duration
	var meshAll []time.Duration
	stray := 0
	b.ResetTimer()
	for n := range b.N {
		group := n % (benchProxies / 10)
		answered()
		t0 := time.Now()
		call(fmt.Sprintf("group %d %d", group, n))
		// The previous round's group loses the policy, this round's gains
		// it: both are affected, 20 proxies in all after the first round.
		want := 10
		if n > 0 && (n-1)%(benchProxies/10) != group {
			want = 20
		}
		got := 0
		for got < want {
			select {
			case a := <-arrivals:
				got++
				if a.proxy/10 == group {
					targeted = append(targeted, a.at.Sub(t0))
				} else if n == 0 || a.proxy/10 != (n-1)%(benchProxies/10) {
					stray++
				}
			case <-time.After(time.Minute):
				b.Fatalf("round %d: %d of %d proxies updated", n, got, want)
			}
		}
		// Mesh-wide: a policy in the root namespace.
		answered()
		t0 = time.Now()
		call(fmt.Sprintf("mesh %d", n))
		var last time.Duration
		seen := map[int]bool{}
		for got := 0; got < benchProxies; got++ {
			select {
			case a := <-arrivals:
				seen[a.proxy] = true
				last = max(last, a.at.Sub(t0))
			case <-time.After(20 * time.Second):
				var missing []int
				for i := range benchProxies {
					if !seen[i] {
						missing = append(missing, i)
						select {
						case <-clients[i].Done():
							b.Logf("proxy %d: stream ended: %v", i, clients[i].Err())
						default:
						}
					}
				}
				b.Fatalf("round %d: %d of %d proxies got the mesh-wide change; missing %v", n, got, benchProxies, missing)
			}
		}
		meshAll = append(meshAll, last)
	}
	b.StopTimer()
	select {
	case a := <-arrivals:
		stray++
		b.Errorf("proxy %d got an update no change called for", a.proxy)
	case <-time.After(200 * time.Millisecond):
	}
	slices.Sort(targeted)
	slices.Sort(meshAll)
	p99 := targeted[(len(targeted)*99+99)/100-1]
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-targeted-ms")
	b.ReportMetric(float64(targeted[len(targeted)-1].Microseconds())/1000, "max-targeted-ms")
	b.ReportMetric(float64(meshAll[len(meshAll)-1].Microseconds())/1000, "max-mesh-wide-ms")
	b.ReportMetric(float64(stray), "stray-pushes")
	rss, _ := strconv.ParseFloat(call("rss"), 64)
	b.ReportMetric(rss/(1<<20), "server-peak-rss-MiB")
	if stray > 0 {
		b.Errorf("%d pushes reached proxies no change selected", stray)
	}
}

// benchServerEnv names the directory where TestPushServerProcess writes
// the client credentials; when it is unset that test has nothing to do.
const benchServerEnv = "CASTELLAN_XDS_BENCH_SERVER_DIR"

// TestPushServerProcess is the server process of BenchmarkPush: an Engine
// with 1,000 workloads and the ECDS server, driven by commands on stdin
// (addr, group G N, mesh N, settled, rss), each answered by one line
// "bench: ..." on stdout.
func TestPushServerProcess(t *testing.T) {
	dir := os.Getenv(benchServerEnv)
	if dir == "" {
		t.Skip("the server process of BenchmarkPush; run by it")
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := authz.New(authz.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	table := pods{}
	for i := range benchProxies {
		name := fmt.Sprintf("p-%04d", i)
		table["bench/"+name] = "app"
		e.SetWorkload(policy.Workload{Namespace: "bench", Name: name, Labels: map[string]string{"app": name, "group": fmt.Sprintf("g-%03d", i/10)}})
	}
	reg := prometheus.NewRegistry()
	m, err := xds.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := xds.New(xds.Config{Engine: e, Pods: table, TrustDomain: "cluster.local", Logger: quiet, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	pki := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/castellan-system/sa/castellan-authz"))
	bundle := x509.NewCertPool()
	bundle.AddCert(pki.Root)
	g := grpc.NewServer(append(xds.GRPCServerOptions(), grpc.Creds(credentials.NewTLS(xds.ServerTLSConfig(pki.TLSCertificate(), bundle))))...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	go func() { _ = srv.Run(ctx) }()

	key := testpki.Key(t)
	id, _ := url.Parse("spiffe://cluster.local/ns/bench/sa/app")
	leaf := testpki.Create(t, &x509.Certificate{
		SerialNumber: big.NewInt(77), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{id},
	}, pki.Intermediate, key.Public(), pki.IntermediateKey)
	testpki.WriteFile(t, dir, "client.pem", testpki.CertPEM(leaf, pki.Intermediate))
	testpki.WriteFile(t, dir, "client-key.pem", testpki.KeyPEM(t, key))
	testpki.WriteFile(t, dir, "root.pem", testpki.CertPEM(pki.Root))

	apply := func(yaml string) {
		rs, err := policy.Decode([]byte(yaml), "bench.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Apply(rs[0]); err != nil {
			t.Fatal(err)
		}
	}
	counter := func(name string) float64 {
		mfs, _ := reg.Gather()
		total := 0.0
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.GetMetric() {
					total += m.GetCounter().GetValue()
				}
			}
		}
		return total
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		var answer string
		switch {
		case len(f) == 1 && f[0] == "addr":
			answer = lis.Addr().String()
		case len(f) == 3 && f[0] == "group":
			group, _ := strconv.Atoi(f[1])
			apply(fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: group-deny, namespace: bench}\n"+
				"spec:\n  action: DENY\n  selector: {matchLabels: {group: g-%03d}}\n  rules:\n  - to:\n    - operation: {paths: [\"/round-%s\"]}\n", group, f[2]))
			answer = "ok"
		case len(f) == 2 && f[0] == "mesh":
			apply(fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh-deny, namespace: istio-system}\n"+
				"spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/mesh-%s\"]}\n", f[1]))
			answer = "ok"
		case len(f) == 1 && f[0] == "settled":
			answer = "no"
			if counter("castellan_authz_xds_pushes_total") == counter("castellan_authz_xds_answers_total") {
				answer = "yes"
			}
		case len(f) == 1 && f[0] == "rss":
			answer = strconv.FormatInt(peakRSS(), 10)
		default:
			t.Fatalf("unknown command %q", in.Text())
		}
		fmt.Printf("bench: %s\n", answer)
	}
}

// peakRSS returns the process's peak resident set size (VmHWM), in bytes.
func peakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return -1
}
