package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// CAServerName is a DNS name in the serving certificate of every CA the
// harness starts.
const CAServerName = "castellan.castellan-system.svc"

// DefaultAudience is the token audience the harness CA accepts, the one
// Istio's agent sends.
const DefaultAudience = "istio-ca"

// CA is a Castellan CA running in-process, with TokenReview authentication
// against an APIServer (unless an option replaces it).
type CA struct {
	// GRPCAddr is the address of the certificate service (gRPC over TLS).
	GRPCAddr string
	// HTTPAddr serves /metrics, /healthz, /readyz, /bundle and
	// /bundle.spiffe.
	HTTPAddr string
	// DataDir holds the CA material.
	DataDir string
	// RootPEM is the trust bundle (root-cert.pem) as of the last start.
	RootPEM []byte
	// RootFile is the path of root-cert.pem in DataDir.
	RootFile string
	// TrustDomain of the SVIDs the CA issues.
	TrustDomain string
	// ServerName is a DNS name in the CA's serving certificate.
	ServerName string
	// Registry holds the metrics of the current run; it is new on every
	// start, so counters restart at zero.
	Registry *prometheus.Registry

	t    testing.TB
	api  *APIServer
	opts caOptions

	mu     sync.Mutex
	srv    *server.Server
	cancel context.CancelFunc
	done   chan error
	logs   *testWriter
	pods   *nodeauth.PodIndex
}

// CAOption configures StartCA.
type CAOption interface{ apply(*caOptions) }

type caOptions struct {
	trustDomain string
	dataDir     string
	audiences   []string
	defaultTTL  time.Duration
	maxTTL      time.Duration
	auth        func(t testing.TB, reg prometheus.Registerer) authn.Authenticator
	config      []func(*server.Config)
	material    func(t testing.TB, dataDir string, cfg *server.Config)
	cacheTTL    time.Duration
	nodeAgents  []nodeauth.ServiceAccount
}

type optionFunc func(*caOptions)

func (f optionFunc) apply(o *caOptions) { f(o) }

// WithTrustDomain sets the CA's trust domain. Default: cluster.local.
func WithTrustDomain(td string) CAOption {
	return optionFunc(func(o *caOptions) { o.trustDomain = td })
}

// WithDataDir runs the CA on dir, which may already hold CA material (for
// example Istio's cacerts layout). Default: a new temp dir.
func WithDataDir(dir string) CAOption {
	return optionFunc(func(o *caOptions) { o.dataDir = dir })
}

// WithAudiences sets the token audiences the CA accepts. Default:
// istio-ca.
func WithAudiences(audiences ...string) CAOption {
	return optionFunc(func(o *caOptions) { o.audiences = audiences })
}

// WithTTL sets the default and maximum SVID lifetimes. Defaults: 1h, 24h.
func WithTTL(defaultTTL, maxTTL time.Duration) CAOption {
	return optionFunc(func(o *caOptions) { o.defaultTTL, o.maxTTL = defaultTTL, maxTTL })
}

// WithAuthenticator replaces the TokenReview authenticator. newAuth is
// called on every start with that run's registry.
func WithAuthenticator(newAuth func(t testing.TB, reg prometheus.Registerer) authn.Authenticator) CAOption {
	return optionFunc(func(o *caOptions) { o.auth = newAuth })
}

// WithAuthCacheTTL sets how long the default authenticator reuses a
// successful TokenReview (authn.CacheConfig.MaxTTL). Default: authn's.
func WithAuthCacheTTL(d time.Duration) CAOption {
	return optionFunc(func(o *caOptions) { o.cacheTTL = d })
}

// WithNodeAgents lets these service accounts impersonate pods of their
// node, as "castellan ca --node-agent-service-account" does: the CA runs a
// pod index on the API server and its node-agent authorizer. Each start
// waits until the index has listed the pods; CA.Pods returns it.
func WithNodeAgents(agents ...nodeauth.ServiceAccount) CAOption {
	return optionFunc(func(o *caOptions) { o.nodeAgents = append(o.nodeAgents, agents...) })
}

// WithServerConfig edits the server configuration just before each start.
func WithServerConfig(edit func(*server.Config)) CAOption {
	return optionFunc(func(o *caOptions) { o.config = append(o.config, edit) })
}

// WithMaterial replaces the CA material of the data directory: open is
// called on every start, before the WithServerConfig edits, with the data
// directory and that run's configuration, and sets its Source (and
// Rotation, Runners). Default: UseDataDir with no key outside it.
func WithMaterial(open func(t testing.TB, dataDir string, cfg *server.Config)) CAOption {
	return optionFunc(func(o *caOptions) { o.material = open })
}

// UseDataDir opens the CA material of mcfg.Dir and wires it into cfg as
// "castellan ca" does: the Source, its rotation (no automatic steps; the
// policy's waits are the defaults, with cfg.MaxTTL) and its reload.
// mcfg's TrustDomain and Logger default to cfg's.
func UseDataDir(t testing.TB, cfg *server.Config, mcfg material.Config) *material.Store {
	t.Helper()
	if mcfg.TrustDomain.IsZero() {
		mcfg.TrustDomain = cfg.TrustDomain
	}
	if mcfg.Logger == nil {
		mcfg.Logger = cfg.Logger
	}
	store, err := material.Open(context.Background(), mcfg)
	if err != nil {
		t.Fatalf("harness: CA material: %v", err)
	}
	cfg.Source = store
	cfg.Rotation = store.Rotation(rotation.Policy{MaxTTL: cfg.MaxTTL})
	cfg.Runners = append(cfg.Runners, store.Run)
	return store
}

// StartCA starts a CA on 127.0.0.1 ports chosen by the OS, authenticating
// callers with a cached TokenReview against api, as "castellan ca" does.
// api may be nil when WithAuthenticator is given. The CA is stopped when
// the test ends.
func StartCA(t testing.TB, api *APIServer, opts ...CAOption) *CA {
	t.Helper()
	o := caOptions{
		trustDomain: "cluster.local",
		audiences:   []string{DefaultAudience},
		defaultTTL:  time.Hour,
		maxTTL:      24 * time.Hour,
	}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if o.dataDir == "" {
		o.dataDir = filepath.Join(t.TempDir(), "ca")
	}
	if o.auth == nil && api == nil {
		t.Fatal("harness: StartCA needs an API server or WithAuthenticator")
	}
	c := &CA{
		DataDir:     o.dataDir,
		RootFile:    filepath.Join(o.dataDir, material.RootCertFile),
		TrustDomain: o.trustDomain,
		ServerName:  CAServerName,
		t:           t,
		api:         api,
		opts:        o,
	}
	c.start(t, "127.0.0.1:0", "127.0.0.1:0")
	t.Cleanup(c.Stop)
	return c
}

// authenticator builds the CA's authenticator for one run.
func (c *CA) authenticator(t testing.TB, reg prometheus.Registerer) authn.Authenticator {
	t.Helper()
	if c.opts.auth != nil {
		return c.opts.auth(t, reg)
	}
	tr, err := authn.NewTokenReview(authn.TokenReviewConfig{Client: c.api.Client, Audiences: c.opts.audiences, Registerer: reg})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	cache, err := authn.NewCache(tr, authn.CacheConfig{MaxTTL: c.opts.cacheTTL, Registerer: reg})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return cache
}

// nodeAgents wires the pod index and the node-agent authorizer into cfg.
func (c *CA) nodeAgents(t testing.TB, cfg *server.Config) *nodeauth.PodIndex {
	t.Helper()
	idx, err := nodeauth.NewPodIndex(nodeauth.PodIndexConfig{Client: c.api.Client, Registerer: cfg.Registerer})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	a, err := nodeauth.New(nodeauth.Config{TrustDomain: cfg.TrustDomain, NodeAgents: c.opts.nodeAgents, Pods: idx})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	cfg.Impersonation = a
	cfg.Runners = append(cfg.Runners, idx.Run)
	return idx
}

// Pods returns the pod index of a CA started WithNodeAgents, or nil.
func (c *CA) Pods() *nodeauth.PodIndex {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pods
}

func (c *CA) start(t testing.TB, grpcAddr, httpAddr string) {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(c.opts.trustDomain)
	if err != nil {
		t.Fatalf("harness: trust domain: %v", err)
	}
	reg := prometheus.NewRegistry()
	logs := &testWriter{t: t}
	cfg := server.Config{
		GRPCAddr:       grpcAddr,
		HTTPAddr:       httpAddr,
		TrustDomain:    td,
		ServerDNSNames: []string{CAServerName, "localhost"},
		Authenticator:  c.authenticator(t, reg),
		DefaultTTL:     c.opts.defaultTTL,
		MaxTTL:         c.opts.maxTTL,
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:     reg,
		Gatherer:       reg,
	}
	var pods *nodeauth.PodIndex
	if len(c.opts.nodeAgents) > 0 {
		pods = c.nodeAgents(t, &cfg)
	}
	if c.opts.material != nil {
		c.opts.material(t, c.DataDir, &cfg)
	} else {
		UseDataDir(t, &cfg, material.Config{Dir: c.DataDir})
	}
	for _, edit := range c.opts.config {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := newServerRetrying(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("harness: starting CA: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()

	c.mu.Lock()
	c.srv, c.cancel, c.done, c.logs, c.Registry, c.pods = srv, cancel, done, logs, reg, pods
	c.GRPCAddr, c.HTTPAddr = srv.GRPCAddr(), srv.HTTPAddr()
	c.mu.Unlock()

	c.RootPEM, err = os.ReadFile(c.RootFile)
	if err != nil {
		t.Fatalf("harness: reading the CA's trust bundle: %v", err)
	}
	c.waitReady(t)
	if pods != nil {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		if err := pods.WaitSynced(wctx); err != nil {
			t.Fatalf("harness: the CA's pod index did not sync: %v", err)
		}
	}
}

// newServerRetrying starts the server, retrying briefly when a fixed
// address (on restart) is still held by the previous run.
func newServerRetrying(ctx context.Context, cfg server.Config) (*server.Server, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		srv, err := server.New(ctx, cfg)
		if err == nil || !isAddrInUse(err) || time.Now().After(deadline) {
			return srv, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isAddrInUse(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(err.Error(), "address already in use")
}

// waitReady waits until /readyz answers 200.
func (c *CA) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + c.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: CA not ready after 10s (last error %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the CA and waits for it to finish. It is safe to call more
// than once.
func (c *CA) Stop() {
	c.mu.Lock()
	cancel, done, logs := c.cancel, c.done, c.logs
	c.cancel, c.done = nil, nil
	c.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	if err := <-done; err != nil {
		c.t.Errorf("harness: CA stopped with an error: %v", err)
	}
	logs.close()
}

// Restart stops the CA and starts it again on the same data directory and
// the same addresses. RootPEM is read again.
func (c *CA) Restart(t testing.TB) {
	t.Helper()
	grpcAddr, httpAddr := c.GRPCAddr, c.HTTPAddr
	c.Stop()
	c.start(t, grpcAddr, httpAddr)
}

// Server returns the running server.
func (c *CA) Server() *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.srv
}

// Roots returns a pool holding the CA's trust bundle.
func (c *CA) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.RootPEM) {
		t.Fatal("harness: the CA's trust bundle holds no certificate")
	}
	return pool
}

// TLSConfig returns a client TLS configuration that verifies the CA's
// serving certificate.
func (c *CA) TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	return &tls.Config{RootCAs: c.Roots(t), ServerName: c.ServerName, MinVersion: tls.VersionTLS12}
}

// Dial returns a gRPC client connection to the certificate service over
// TLS, closed when the test ends.
func (c *CA) Dial(t testing.TB, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(c.TLSConfig(t)))}, opts...)
	conn, err := grpc.NewClient(c.GRPCAddr, opts...)
	if err != nil {
		t.Fatalf("harness: dialing the CA: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Metrics scrapes the CA's /metrics endpoint over HTTP.
func (c *CA) Metrics(t testing.TB) Metrics {
	t.Helper()
	return ScrapeMetrics(t, "http://"+c.HTTPAddr+"/metrics")
}

// Metrics are scraped metric families by name.
type Metrics map[string]*dto.MetricFamily

// Value returns the sum of the counter, gauge or untyped series of the
// family name whose labels include all of labels (pairs of name, value).
// It is 0 when nothing matches.
func (m Metrics) Value(name string, labels ...string) float64 {
	fam, ok := m[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, metric := range fam.GetMetric() {
		if !hasLabels(metric, labels) {
			continue
		}
		switch {
		case metric.Counter != nil:
			sum += metric.Counter.GetValue()
		case metric.Gauge != nil:
			sum += metric.Gauge.GetValue()
		case metric.Untyped != nil:
			sum += metric.Untyped.GetValue()
		case metric.Histogram != nil:
			sum += float64(metric.Histogram.GetSampleCount())
		}
	}
	return sum
}

// String lists the series of every family, for test failure messages.
func (m Metrics) String() string {
	var b strings.Builder
	for name, fam := range m {
		if !strings.HasPrefix(name, "castellan_") {
			continue
		}
		for _, metric := range fam.GetMetric() {
			fmt.Fprintf(&b, "%s{", name)
			for i, l := range metric.GetLabel() {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, "%s=%q", l.GetName(), l.GetValue())
			}
			b.WriteString("} ")
			switch {
			case metric.Counter != nil:
				fmt.Fprintf(&b, "%v\n", metric.Counter.GetValue())
			case metric.Gauge != nil:
				fmt.Fprintf(&b, "%v\n", metric.Gauge.GetValue())
			case metric.Histogram != nil:
				fmt.Fprintf(&b, "count=%v\n", metric.Histogram.GetSampleCount())
			default:
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}

func hasLabels(metric *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range metric.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// testWriter sends log lines to t.Log until closed, so that a line logged
// after the test ended does not panic.
type testWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
}

var _ io.Writer = (*testWriter)(nil)

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}
