package xds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/envoyrbac"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/xds"
	"github.com/castellan-mesh/castellan/authz/xds/xdsclient"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

// pods is a fixed pod table; the integration tests use the real informer.
type pods map[string]string // "ns/name" -> service account

func (p pods) ServiceAccount(ns, name string) (string, bool) {
	sa, ok := p[ns+"/"+name]
	return sa, ok
}

type env struct {
	t       *testing.T
	engine  *authz.Engine
	server  *xds.Server
	metrics *xds.Metrics
	reg     *prometheus.Registry
	addr    string
	pki     *testpki.PKI
	serial  int64
	mu      sync.Mutex
}

func newEnv(t *testing.T) *env {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := authz.New(authz.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := xds.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	table := pods{"foo/web-1": "web", "foo/web-2": "web", "foo/db-1": "db"}
	for key := range table {
		ns, name, _ := strings.Cut(key, "/")
		app, _, _ := strings.Cut(name, "-")
		e.SetWorkload(policy.Workload{Namespace: ns, Name: name, Labels: map[string]string{"app": app}})
	}
	srv, err := xds.New(xds.Config{Engine: e, Pods: table, TrustDomain: "cluster.local", Logger: quiet, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	pki := testpki.New(t, testpki.WithID("spiffe://cluster.local/ns/castellan-system/sa/castellan-authz"))
	bundle := x509.NewCertPool()
	bundle.AddCert(pki.Root)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(xds.ServerTLSConfig(pki.TLSCertificate(), bundle))))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = g.Serve(lis) }()
	go func() { _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); g.Stop() })
	return &env{t: t, engine: e, server: srv, metrics: m, reg: reg, addr: lis.Addr().String(), pki: pki, serial: 100}
}

// dial connects as the holder of a certificate for id.
func (v *env) dial(id string) *grpc.ClientConn {
	v.t.Helper()
	v.mu.Lock()
	v.serial++
	serial := v.serial
	v.mu.Unlock()
	key := testpki.Key(v.t)
	u, _ := url.Parse(id)
	leaf := testpki.Create(v.t, &x509.Certificate{
		SerialNumber: big.NewInt(serial), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{u},
	}, v.pki.Intermediate, key.Public(), v.pki.IntermediateKey)
	roots := x509.NewCertPool()
	roots.AddCert(v.pki.Root)
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, v.pki.Intermediate.Raw}, PrivateKey: key}},
	}
	conn, err := grpc.NewClient(v.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		v.t.Fatal(err)
	}
	v.t.Cleanup(func() { conn.Close() })
	return conn
}

func nodeID(ns, pod string) string {
	return "sidecar~10.0.0.1~" + pod + "." + ns + "~" + ns + ".svc.cluster.local"
}

func sa(ns, name string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + name }

func (v *env) proxy(ns, pod, id string, delta bool, reject func(map[string]*corev3.TypedExtensionConfig) error) *xdsclient.Client {
	v.t.Helper()
	c, err := xdsclient.Start(context.Background(), v.dial(id), xdsclient.Config{NodeID: nodeID(ns, pod), Delta: delta, Names: xds.ResourceNames, Reject: reject})
	if err != nil {
		v.t.Fatal(err)
	}
	v.t.Cleanup(c.Close)
	return c
}

func (v *env) apply(yaml string) {
	v.t.Helper()
	rs, _ := policy.Decode([]byte(yaml), "test.yaml")
	if len(rs) == 0 {
		v.t.Fatal("no policy decoded")
	}
	for _, r := range rs {
		_, _ = v.engine.Apply(r)
	}
}

// next waits for the next update.
func next(t *testing.T, c *xdsclient.Client) xdsclient.Update {
	t.Helper()
	select {
	case u, ok := <-c.Updates():
		if !ok {
			t.Fatalf("stream ended: %v", c.Err())
		}
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("no update within 30s")
	}
	return xdsclient.Update{}
}

// quiet checks that nothing more arrived once the server has handled
// every change: a round trip through another proxy's change proves the
// server's loop has moved past it.
func none(t *testing.T, c *xdsclient.Client) {
	t.Helper()
	select {
	case u, ok := <-c.Updates():
		if !ok {
			t.Fatalf("stream ended: %v", c.Err())
		}
		t.Fatalf("unexpected update %v", u.Names)
	default:
	}
}

const denyAdminWeb = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  selector: {matchLabels: {app: web}}
  rules:
  - to:
    - operation: {paths: ["/admin"]}
`

const allowDB = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-db, namespace: foo}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/foo/sa/web"]}
`

// decide evaluates a request against the filters a proxy holds.
func decide(t *testing.T, c *xdsclient.Client, path, principal string) bool {
	t.Helper()
	r := &envoyrbac.Request{
		Headers:        map[string][]string{":method": {"GET"}, ":path": {path}, ":authority": {"x"}},
		DirectRemoteIP: netip.MustParseAddr("10.1.1.1"), DestinationIP: netip.MustParseAddr("10.2.2.2"), DestinationPort: 8080,
	}
	if principal != "" {
		r.Peer = &envoyrbac.Peer{URISANs: []string{principal}}
	}
	d, err := envoyrbac.New().EvaluateHTTP(xdsclient.HTTPFilters(c.Config(), xds.HTTPNames), r)
	if err != nil {
		t.Fatal(err)
	}
	return d.Allowed
}

func TestPushesOnlyToAffectedProxies(t *testing.T) {
	// mixed has both stream forms on one server, whose stream IDs overlap.
	for _, mode := range []string{"sotw", "delta", "mixed"} {
		t.Run(mode, func(t *testing.T) {
			delta, mixed := mode == "delta", mode == "mixed"
			v := newEnv(t)
			web1 := v.proxy("foo", "web-1", sa("foo", "web"), delta, nil)
			web2 := v.proxy("foo", "web-2", sa("foo", "web"), delta || mixed, nil)
			db := v.proxy("foo", "db-1", sa("foo", "db"), delta, nil)
			for _, c := range []*xdsclient.Client{web1, web2, db} {
				if u := next(t, c); !u.Accepted || len(u.Names) != 6 {
					t.Fatalf("initial update %+v", u)
				}
				if !decide(t, c, "/admin", "") {
					t.Fatal("no policy yet, but denied")
				}
			}

			v.apply(denyAdminWeb)
			for _, c := range []*xdsclient.Client{web1, web2} {
				u := next(t, c)
				if !u.Accepted || (delta && (len(u.Names) != 2 || u.Names[0] != xds.HTTPDeny)) || (!delta && !mixed && len(u.Names) != 6) {
					t.Fatalf("update %+v", u)
				}
				if decide(t, c, "/admin", "") || !decide(t, c, "/", "") {
					t.Error("web proxy does not enforce the DENY")
				}
			}
			// db is not selected: it receives nothing. The db change below
			// reaches db only after the server handled the web change.
			v.apply(allowDB)
			if u := next(t, db); !u.Accepted {
				t.Fatalf("db update %+v", u)
			}
			none(t, web1)
			none(t, web2)
			if decide(t, db, "/", sa("foo", "other")) || !decide(t, db, "/", sa("foo", "web")) {
				t.Error("db proxy does not enforce the ALLOW")
			}
			// The proxy's filters decide as the engine's own filters.
			cfg, _, _ := v.engine.Workload("foo", "db-1")
			want, _ := envoyrbac.New().EvaluateHTTP(cfg.HTTPFilters, &envoyrbac.Request{
				Headers: map[string][]string{":path": {"/"}}, DirectRemoteIP: netip.MustParseAddr("10.1.1.1"),
				Peer: &envoyrbac.Peer{URISANs: []string{sa("foo", "other")}},
			})
			if want.Allowed {
				t.Error("engine allows what the proxy denies")
			}
			// Counted when produced, under the server's lock: the three
			// initial configs, the two web proxies, the db proxy. Nothing
			// else was pushed.
			if n := counter(t, v.reg, "castellan_authz_xds_pushes_total", "sotw") + counter(t, v.reg, "castellan_authz_xds_pushes_total", "delta"); n != 6 {
				t.Errorf("pushes = %v, want 6", n)
			}
			// Each of the two changes ends when its proxies have answered.
			deadline := time.Now().Add(30 * time.Second)
			for histogramCount(t, v.reg, "castellan_authz_xds_change_to_ack_seconds") < 2 {
				if time.Now().After(deadline) {
					t.Fatal("change-to-ACK never observed")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got := testutil.ToFloat64(v.proxiesGauge()); got != 3 {
				t.Errorf("connected proxies = %v, want 3", got)
			}
		})
	}
}

func (v *env) proxiesGauge() prometheus.Collector {
	mfs, _ := v.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "castellan_authz_xds_connected_proxies" {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return mf.GetMetric()[0].GetGauge().GetValue() })
		}
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return -1 })
}

func counter(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func TestNACKKeepsLastGoodConfig(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			v := newEnv(t)
			var refuse sync.Map
			reject := func(cfg map[string]*corev3.TypedExtensionConfig) error {
				if _, ok := refuse.Load("on"); ok {
					return errors.New("refused by the test proxy")
				}
				return nil
			}
			web := v.proxy("foo", "web-1", sa("foo", "web"), delta, reject)
			next(t, web)
			refuse.Store("on", true)
			v.apply(denyAdminWeb)
			if u := next(t, web); u.Accepted {
				t.Fatal("update accepted, want NACK")
			}
			if !decide(t, web, "/admin", "") {
				t.Error("NACKed config in force")
			}
			// Nothing is resent after the NACK until the config changes.
			refuse.Delete("on")
			db := v.proxy("foo", "db-1", sa("foo", "db"), delta, nil)
			next(t, db)
			v.apply(allowDB)
			next(t, db)
			none(t, web)
			v.apply(strings.Replace(denyAdminWeb, "/admin", "/secret", 1))
			if u := next(t, web); !u.Accepted {
				t.Fatalf("update after change %+v", u)
			}
			if decide(t, web, "/secret", "") || !decide(t, web, "/admin", "") {
				t.Error("new config not in force")
			}
			if n := counter(t, v.reg, "castellan_authz_xds_answers_total", "nack"); n != 1 {
				t.Errorf("nacks = %v, want 1", n)
			}
		})
	}
}

func TestRefusesAnotherWorkloadsIdentity(t *testing.T) {
	v := newEnv(t)
	for _, tc := range []struct {
		name, ns, pod, id string
		code              codes.Code
	}{
		{"db identity for a web pod", "foo", "web-1", sa("foo", "db"), codes.PermissionDenied},
		{"other trust domain", "foo", "web-1", "spiffe://evil.td/ns/foo/sa/web", codes.PermissionDenied},
		{"unknown pod", "foo", "ghost", sa("foo", "web"), codes.Unavailable},
		{"malformed node ID", "foo", "web-1~x", sa("foo", "web"), codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, delta := range []bool{false, true} {
				c := v.proxy(tc.ns, tc.pod, tc.id, delta, nil)
				select {
				case u, ok := <-c.Updates():
					if ok {
						t.Fatalf("got config %v", u.Names)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("stream not refused")
				}
				if got := status.Code(c.Err()); got != tc.code {
					t.Errorf("delta=%v: code %v (%v), want %v", delta, got, c.Err(), tc.code)
				}
			}
		})
	}
	if n := counter(t, v.reg, "castellan_authz_xds_refused_streams_total", "identity"); n < 8 {
		t.Errorf("refusals = %v, want 8", n)
	}
}

func TestDeltaSubscribeUnsubscribe(t *testing.T) {
	v := newEnv(t)
	c, err := xdsclient.Start(context.Background(), v.dial(sa("foo", "web")), xdsclient.Config{
		NodeID: nodeID("foo", "web-1"), Delta: true, Names: []string{xds.HTTPAllow},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if u := next(t, c); len(u.Names) != 1 || u.Names[0] != xds.HTTPAllow {
		t.Fatalf("initial %+v", u)
	}
	if err := c.Subscribe(xds.HTTPDeny); err != nil {
		t.Fatal(err)
	}
	if u := next(t, c); len(u.Names) != 1 || u.Names[0] != xds.HTTPDeny {
		t.Fatalf("after subscribe %+v", u)
	}
	if err := c.Unsubscribe(xds.HTTPDeny); err != nil {
		t.Fatal(err)
	}
	// The server handles requests in order: once the next subscription is
	// answered, the unsubscription is in force.
	if err := c.Subscribe(xds.NetworkAllow); err != nil {
		t.Fatal(err)
	}
	if u := next(t, c); len(u.Names) != 1 || u.Names[0] != xds.NetworkAllow {
		t.Fatalf("after second subscribe %+v", u)
	}
	// A change to the unsubscribed resource is not sent.
	v.apply(denyAdminWeb)
	db := v.proxy("foo", "db-1", sa("foo", "db"), true, nil)
	next(t, db)
	v.apply(allowDB)
	next(t, db)
	none(t, c)
}

// TestListenerCarriesPeerAuthentication checks the LDS half: a
// PeerAuthentication change reaches the workload's inbound listener, and
// only it (the ECDS stream of the same proxy receives nothing).
func TestListenerCarriesPeerAuthentication(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			v := newEnv(t)
			var names []string
			if delta {
				names = []string{xds.InboundListener}
			}
			lds, err := xdsclient.Start(context.Background(), v.dial(sa("foo", "web")), xdsclient.Config{
				NodeID: nodeID("foo", "web-1"), Delta: delta, TypeURL: xdsclient.ListenerTypeURL, Names: names,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer lds.Close()
			ecds := v.proxy("foo", "web-1", sa("foo", "web"), delta, nil)
			next(t, ecds)
			chains := func() []string {
				t.Helper()
				if u := next(t, lds); !u.Accepted || len(u.Names) != 1 || u.Names[0] != xds.InboundListener {
					t.Fatalf("listener update %+v", u)
				}
				l := lds.Listeners()[xds.InboundListener]
				var out []string
				for _, c := range l.GetFilterChains() {
					m := c.GetFilterChainMatch()
					out = append(out, fmt.Sprintf("%d/%s/tls=%v", m.GetDestinationPort().GetValue(), m.GetTransportProtocol(), c.GetTransportSocket() != nil))
					var fs []string
					for _, f := range c.GetFilters() {
						fs = append(fs, f.GetName())
					}
					if want := append(append([]string(nil), xds.NetworkNames...), "envoy.filters.network.tcp_proxy"); !slices.Equal(fs, want) {
						t.Errorf("chain %s has filters %v, want %v", c.GetName(), fs, want)
					}
				}
				return out
			}
			if got := strings.Join(chains(), " "); got != "0/tls/tls=true 0/raw_buffer/tls=false" {
				t.Errorf("default (PERMISSIVE) chains: %s", got)
			}
			v.apply(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls:
    9090: {mode: DISABLE}
`)
			if got := strings.Join(chains(), " "); got != "9090//tls=false 0/tls/tls=true" {
				t.Errorf("STRICT with 9090 DISABLE: %s", got)
			}
			// The RBAC filters did not change: nothing on ECDS.
			v.apply(allowDB)
			db := v.proxy("foo", "db-1", sa("foo", "db"), delta, nil)
			next(t, db)
			none(t, ecds)
		})
	}
}

// TestRefusesUnknownNames: a subscription cannot grow with names that are
// not served.
func TestRefusesUnknownNames(t *testing.T) {
	v := newEnv(t)
	for _, delta := range []bool{false, true} {
		c, err := xdsclient.Start(context.Background(), v.dial(sa("foo", "web")), xdsclient.Config{
			NodeID: nodeID("foo", "web-1"), Delta: delta, Names: []string{xds.HTTPAllow, "junk-name"},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, ok := <-c.Updates(); ok {
			t.Fatal("served a subscription with an unknown name")
		}
		if code := status.Code(c.Err()); code != codes.InvalidArgument {
			t.Errorf("delta=%v: %v, want InvalidArgument", delta, c.Err())
		}
	}
}

// TestRefusesUnservedTypes: a stream for a type the server does not serve
// (here clusters) is refused, in both forms.
func TestRefusesUnservedTypes(t *testing.T) {
	v := newEnv(t)
	for _, delta := range []bool{false, true} {
		c, err := xdsclient.Start(context.Background(), v.dial(sa("foo", "web")), xdsclient.Config{
			NodeID: nodeID("foo", "web-1"), Delta: delta, TypeURL: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, ok := <-c.Updates(); ok {
			t.Fatal("served a type the server does not serve")
		}
		if code := status.Code(c.Err()); code != codes.InvalidArgument {
			t.Errorf("delta=%v: %v, want InvalidArgument", delta, c.Err())
		}
	}
}
