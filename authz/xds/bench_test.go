package xds_test

import (
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

// BenchmarkPush connects 1,000 proxies (half state of the world, half
// delta) over gRPC and mutual TLS on loopback, each for its own pod. Every
// iteration applies a policy selecting 10 workloads, waits until their
// proxies have it and checks that nothing went to the other 990, then
// applies a mesh-wide policy and waits until all 1,000 have it. It reports
// the p99 and max latency from Apply to a targeted proxy's receipt, the
// time for the mesh-wide change to reach the last proxy, the pushes that
// went to untargeted proxies, and the process's peak RSS (server and all
// clients together).
//
//	go test ./authz/xds -run '^$' -bench Push -benchtime 20x
func BenchmarkPush(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := authz.New(authz.Config{Logger: quiet})
	if err != nil {
		b.Fatal(err)
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
		b.Fatal(err)
	}
	srv, err := xds.New(xds.Config{Engine: e, Pods: table, TrustDomain: "cluster.local", Logger: quiet, Metrics: m})
	if err != nil {
		b.Fatal(err)
	}
	pki := testpki.New(b, testpki.WithID("spiffe://cluster.local/ns/castellan-system/sa/castellan-authz"))
	bundle := x509.NewCertPool()
	bundle.AddCert(pki.Root)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(xds.ServerTLSConfig(pki.TLSCertificate(), bundle))))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	go func() { _ = srv.Run(ctx) }()

	key := testpki.Key(b)
	id, _ := url.Parse("spiffe://cluster.local/ns/bench/sa/app")
	leaf := testpki.Create(b, &x509.Certificate{
		SerialNumber: big.NewInt(77), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{id},
	}, pki.Intermediate, key.Public(), pki.IntermediateKey)
	clientTLS := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: bundle, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, pki.Intermediate.Raw}, PrivateKey: key}}}

	arrivals := make(chan arrival, 4*benchProxies)
	clients := make([]*xdsclient.Client, benchProxies)
	start := time.Now()
	for i := range benchProxies {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
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
			b.Fatalf("%d of %d proxies got their initial config; %d streams bound", n, benchProxies, srv.Proxies())
		}
	}
	b.Logf("%d proxies connected and configured in %v", benchProxies, time.Since(start).Round(time.Millisecond))

	apply := func(yaml string) {
		rs, err := policy.Decode([]byte(yaml), "bench.yaml")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Apply(rs[0]); err != nil {
			b.Fatal(err)
		}
	}
	var targeted []time.Duration
	var meshAll []time.Duration
	stray := 0
	b.ResetTimer()
	for n := range b.N {
		group := n % (benchProxies / 10)
		t0 := time.Now()
		apply(fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: group-deny, namespace: bench}
spec:
  action: DENY
  selector: {matchLabels: {group: g-%03d}}
  rules:
  - to:
    - operation: {paths: ["/round-%d"]}
`, group, n))
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
		t0 = time.Now()
		apply(fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/mesh-%d"]}
`, n))
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
	b.ReportMetric(float64(peakRSS())/(1<<20), "peak-rss-MiB")
	if stray > 0 {
		b.Errorf("%d pushes reached proxies no change selected", stray)
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
