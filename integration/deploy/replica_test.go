package deploy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/kubestore"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/castellan-mesh/castellan/trust"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/client-go/kubernetes"
)

const (
	caNamespace = "castellan-system"
	caSA        = "castellan-ca"
	trustDomain = "cluster.local"
	serverName  = "castellan.castellan-system.svc"
)

var td = spiffeid.RequireTrustDomainFromString(trustDomain)

// replica is one in-process CA replica wired as "castellan ca
// --material=kubernetes" wires it: a kubestore Store as the signing
// source, the trust controller as a leader job, TokenReview authentication,
// all through one Kubernetes client.
type replica struct {
	name     string
	store    *kubestore.Store
	srv      *server.Server
	reg      *prometheus.Registry
	grpcAddr string
	httpAddr string

	kube kubernetes.Interface
	log  *slog.Logger
	logs *testLog

	opts      replicaOptions
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan error // the server's Serve
	storeDone chan error // the store's Run
	once      sync.Once
}

// replicaOptions adjust a replica.
type replicaOptions struct {
	trustConfig func(*trust.Config)
	storeConfig func(*kubestore.Config)
	// rotateBefore, if positive, has the leader rotate the root when less
	// than this is left of it, under rotationPolicy, looking every
	// rotationInterval.
	rotateBefore, rotationInterval time.Duration
	rotationPolicy                 rotation.Policy
}

// startReplica starts a replica named name with client, and returns once
// it serves, having loaded the CA material (creating it if it led first).
// It is stopped when the test ends.
func startReplica(t testing.TB, client kubernetes.Interface, name string, opts ...func(*replicaOptions)) *replica {
	t.Helper()
	r := launchReplica(t, client, name, opts...)
	r.serve(t, 60*time.Second)
	return r
}

// launchReplica starts a replica's store (its watch and its part in the
// leader election) without waiting for the CA material; serve starts the
// CA server once it is loaded. Replicas launched together race for the
// Lease as pods starting together do.
func launchReplica(t testing.TB, client kubernetes.Interface, name string, opts ...func(*replicaOptions)) *replica {
	t.Helper()
	var o replicaOptions
	for _, f := range opts {
		f(&o)
	}
	logs := &testLog{t: t, prefix: name + ": "}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	r := &replica{name: name, reg: reg, logs: logs, kube: client, log: log, opts: o, done: make(chan error, 1), storeDone: make(chan error, 1)}

	var store *kubestore.Store
	tcfg := trust.Config{
		Client: client,
		Bundle: func() []byte {
			if a := store.Authority(); a != nil {
				return a.BundlePEM()
			}
			return nil
		},
		Logger:     log.With("component", "trust"),
		Registerer: reg,
	}
	if o.trustConfig != nil {
		o.trustConfig(&tcfg)
	}
	ctrl, err := trust.New(tcfg)
	if err != nil {
		t.Fatal(err)
	}
	scfg := kubestore.Config{
		Client:          client,
		Namespace:       caNamespace,
		Identity:        name,
		TrustDomain:     td,
		LeaderJobs:      []func(context.Context) error{ctrl.Run, func(ctx context.Context) error { return followChanges(ctx, store, ctrl.BundleChanged) }},
		LeaseDuration:   3 * time.Second,
		RenewDeadline:   2 * time.Second,
		RetryPeriod:     250 * time.Millisecond,
		RecheckInterval: time.Second,
		Logger:          log.With("component", "kubestore"),
		Registerer:      reg,
	}
	if o.storeConfig != nil {
		o.storeConfig(&scfg)
	}
	store, err = kubestore.New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	r.store = store
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx, r.cancel = ctx, cancel
	go func() { r.storeDone <- store.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// followChanges calls f after each change of n's material until ctx
// ends, as "castellan ca" has its trust controller follow the store (as a
// leader job, it starts with the controller, which publishes the current
// bundle first).
func followChanges(ctx context.Context, n ca.Notifier, f func()) error {
	for ch := n.Changed(); ; ch = n.Changed() {
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
			f()
		}
	}
}

// serve waits up to timeout for the CA material, then starts the server.
func (r *replica) serve(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-r.store.Loaded():
	case <-time.After(timeout):
		_, why := r.store.Ready()
		t.Fatalf("replica %s: CA material not loaded after %v: %s", r.name, timeout, why)
	}
	tr, err := authn.NewTokenReview(authn.TokenReviewConfig{Client: r.kube, Audiences: []string{harness.DefaultAudience}, Registerer: r.reg})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := authn.NewCache(tr, authn.CacheConfig{Registerer: r.reg})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(r.ctx, server.Config{
		Source:           r.store,
		Rotation:         r.store.Rotation(r.opts.rotationPolicy),
		RootRotateBefore: r.opts.rotateBefore,
		RotationInterval: r.opts.rotationInterval,
		GRPCAddr:         "127.0.0.1:0",
		HTTPAddr:         "127.0.0.1:0",
		TrustDomain:      td,
		ServerDNSNames:   []string{serverName},
		Authenticator:    auth,
		Logger:           r.log,
		Registerer:       r.reg,
		Gatherer:         r.reg,
	})
	if err != nil {
		t.Fatalf("replica %s: %v", r.name, err)
	}
	r.srv, r.grpcAddr, r.httpAddr = srv, srv.GRPCAddr(), srv.HTTPAddr()
	go func() { r.done <- srv.Serve(r.ctx) }()
}

// stop stops the replica gracefully (in-flight requests finish; a held
// Lease is released) and waits for it.
func (r *replica) stop() {
	r.once.Do(func() {
		r.cancel()
		if r.srv != nil {
			if err := <-r.done; err != nil {
				r.logs.t.Errorf("replica %s: server stopped with an error: %v", r.name, err)
			}
		}
		if err := <-r.storeDone; err != nil {
			r.logs.t.Errorf("replica %s: store stopped with an error: %v", r.name, err)
		}
		r.logs.close()
	})
}

// ready reports the replica's /readyz answer.
func (r *replica) ready(t testing.TB) (bool, string) {
	t.Helper()
	resp, err := http.Get("http://" + r.httpAddr + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return resp.StatusCode == http.StatusOK, strings.TrimSpace(b.String())
}

// counter returns the value of a counter in the replica's registry,
// summed over label values.
func (r *replica) counter(t testing.TB, name string) float64 {
	t.Helper()
	return testmetric.Sum(t, r.reg, name, "")
}

// client returns a caclient for the replica that trusts roots.
func (r *replica) client(t testing.TB, roots *x509.CertPool) *caclient.Client {
	t.Helper()
	c, err := caclient.New(caclient.Config{Addr: r.grpcAddr, Roots: roots, ServerName: serverName})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// workload is a service account that asks for SVIDs.
type workload struct {
	id    spiffeid.ID
	token string
}

// spiffeIDFor returns the SPIFFE ID the CA gives the service account ns/sa.
func spiffeIDFor(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa)
}

func newWorkload(t testing.TB, api *harness.APIServer, ns, sa string) workload {
	t.Helper()
	api.CreateServiceAccount(t, ns, sa)
	return workload{
		id:    spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa),
		token: api.Token(t, ns, sa, []string{harness.DefaultAudience}, time.Hour),
	}
}

// csr returns a new P-256 key's CSR for w's SPIFFE ID.
func (w workload) csr() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(w.id.String())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// issue asks c for an SVID for w and checks it against bundle with
// go-spiffe: the SVID is for w, and chains to the bundle's root.
func issue(ctx context.Context, c *caclient.Client, w workload, bundle *x509bundle.Bundle) error {
	csr, err := w.csr()
	if err != nil {
		return err
	}
	chain, err := c.CreateCertificate(ctx, w.token, csr, 0)
	if err != nil {
		return err
	}
	if err := verifyChain(chain, w, bundle); err != nil {
		return verifyError{err}
	}
	return nil
}

// verifyError is an issued certificate that failed verification.
type verifyError struct{ err error }

func (e verifyError) Error() string { return e.err.Error() }
func (e verifyError) Unwrap() error { return e.err }

// verifyChain checks an issued chain (leaf first, root last) with
// go-spiffe's x509svid.Verify against bundle.
func verifyChain(chain []string, w workload, bundle *x509bundle.Bundle) error {
	var certs []*x509.Certificate
	for i, p := range chain {
		b, _ := pem.Decode([]byte(p))
		if b == nil {
			return fmt.Errorf("chain element %d is not PEM", i)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return fmt.Errorf("chain element %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	id, _, err := x509svid.Verify(certs, bundle)
	if err != nil {
		return fmt.Errorf("SVID does not verify: %w", err)
	}
	if id != w.id {
		return fmt.Errorf("SVID is for %s, want %s", id, w.id)
	}
	return nil
}

// testLog sends log lines to t.Log until it is closed.
type testLog struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	closed bool
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.t.Log(l.prefix + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (l *testLog) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}
