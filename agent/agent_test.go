package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/agent/certdir"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/castellan-mesh/castellan/internal/testpoll"
	"github.com/castellan-mesh/castellan/internal/testrun"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"github.com/castellan-mesh/castellan/sds/sdsclient/sdsclienttest"
)

const (
	wantID      = "spiffe://cluster.local/ns/default/sa/web"
	serverName  = "castellan.test"
	waitTimeout = 20 * time.Second
)

// testCA is the real CA server, with an offline JWT authenticator whose
// tokens the test mints.
type testCA struct {
	dir    string
	addr   string
	minter *authn.Minter
	jwks   string
	stop   func()
	// impersonation, if set before start, lets callers ask for other
	// identities.
	impersonation server.ImpersonationAuthorizer
	// jwt, if set before start, signs JWT-SVIDs.
	jwt server.JWTIssuer
}

func startCA(t testing.TB) *testCA {
	t.Helper()
	return startCAWith(t, nil)
}

// startCAWith starts the CA with an impersonation authorizer.
func startCAWith(t testing.TB, impersonation server.ImpersonationAuthorizer) *testCA {
	t.Helper()
	c := newTestCA(t, impersonation)
	c.start(t)
	t.Cleanup(func() { c.stop() })
	return c
}

// newTestCA returns a CA, not started yet, with a data directory and a
// token issuer of its own.
func newTestCA(t testing.TB, impersonation server.ImpersonationAuthorizer) *testCA {
	t.Helper()
	m, err := authn.NewMinter("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	c := &testCA{dir: t.TempDir(), addr: "127.0.0.1:0", minter: m, impersonation: impersonation}
	c.jwks = filepath.Join(t.TempDir(), "jwks.json")
	if err := m.WriteJWKS(c.jwks); err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs the CA on c.addr and c.dir; after the first start the address
// is fixed, so a restart is found where the agent expects it.
func (c *testCA) start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	auth, err := authn.NewJWT(ctx, authn.JWTConfig{Issuer: c.minter.Issuer(), Audiences: []string{"istio-ca"}, JWKSFile: c.jwks})
	if err != nil {
		t.Fatal(err)
	}
	store, err := material.Open(ctx, material.Config{Dir: c.dir, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cfg := server.Config{
		Source:         store,
		Runners:        []func(context.Context) error{store.Run},
		GRPCAddr:       c.addr,
		HTTPAddr:       agent.Disabled,
		ServerDNSNames: []string{serverName},
		Authenticator:  auth,
		Impersonation:  c.impersonation,
		Logger:         slog.New(slog.DiscardHandler),
	}
	if c.jwt != nil {
		cfg.JWT, cfg.JWTSVIDTTL = c.jwt, time.Minute
	}
	s, err := server.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c.addr = s.GRPCAddr()
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	c.stop = func() { cancel(); <-done }
}

func (c *testCA) rootFile() string { return filepath.Join(c.dir, "root-cert.pem") }

func (c *testCA) tokenFile(t testing.TB) string {
	t.Helper()
	tok, err := c.minter.Mint("default", "web", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type testAgent struct {
	*agent.Agent
	cfg agent.Config
	reg *prometheus.Registry
}

func startAgent(t testing.TB, ca *testCA, edit func(*agent.Config)) *testAgent {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	reg := prometheus.NewRegistry()
	cfg := agent.Config{
		CAAddr:           ca.addr,
		CAServerName:     serverName,
		RootCertFile:     ca.rootFile(),
		TokenFile:        ca.tokenFile(t),
		SDSSocket:        filepath.Join(dir, "sds", "socket"),
		OutputDir:        filepath.Join(dir, "out"),
		HTTPAddr:         "127.0.0.1:0",
		InitialBackoff:   50 * time.Millisecond,
		MaxBackoff:       200 * time.Millisecond,
		RootPollInterval: 50 * time.Millisecond,
		Logger:           slog.New(slog.DiscardHandler),
		Registerer:       reg,
		Gatherer:         reg,
	}
	if edit != nil {
		edit(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testrun.Background(t, "agent", a.Run)
	return &testAgent{Agent: a, cfg: cfg, reg: reg}
}

// metric sums the samples of metric name with a label of value label (all
// of them when label is empty).
func (a *testAgent) metric(t *testing.T, name, label string) float64 {
	t.Helper()
	return testmetric.Sum(t, a.reg, name, label)
}

// sdsStream opens a state-of-the-world SDS stream to a, subscribed to
// names, closed when the test ends.
func sdsStream(t *testing.T, a *testAgent, names ...string) *sdsclienttest.SotW {
	t.Helper()
	c, err := sdsclient.New(a.cfg.SDSSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := sdsclienttest.OpenSotW(t, c)
	if err := s.Subscribe(names...); err != nil {
		t.Fatal(err)
	}
	return s
}

func fetch(t *testing.T, a *testAgent) (leaf *x509.Certificate, key any, roots []*x509.Certificate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	secrets, err := sdsclient.Fetch(ctx, a.cfg.SDSSocket, sds.DefaultSecretName, sds.RootCASecretName)
	if err != nil {
		t.Fatal(err)
	}
	chain, k, err := sdsclient.TLSCertificate(secrets[sds.DefaultSecretName])
	if err != nil {
		t.Fatal(err)
	}
	roots, err = sdsclient.TrustedCA(secrets[sds.RootCASecretName])
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil {
		t.Fatalf("SDS certificate does not verify against ROOTCA: %v", err)
	}
	if id.String() != wantID {
		t.Fatalf("SVID for %s, want %s", id, wantID)
	}
	return chain[0], k, roots
}

func TestAgentServesSDSWorkloadAPIAndFiles(t *testing.T) {
	ca := startCA(t)
	a := startAgent(t, ca, nil)

	leaf, key, _ := fetch(t, a)
	if _, ok := key.(*ecdsa.PrivateKey); !ok {
		t.Fatalf("default key type is %T, want ECDSA", key)
	}

	// The same SVID over the Workload API, on the same socket.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	src, err := spiffeapi.NewX509Source(ctx, spiffeapi.WithClientOptions(spiffeapi.WithAddr("unix://"+a.cfg.SDSSocket)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(svid.Certificates[0].Raw, leaf.Raw) {
		t.Fatal("Workload API and SDS serve different certificates")
	}
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Fatalf("x509svid.Verify against the Workload API bundle: %v", err)
	}

	// The same SVID in the output directory.
	// certdir links the top-level names after the first version is in
	// place, so wait for key.pem too.
	testpoll.Until(t, "output files", func() bool {
		f, err := certdir.Read(a.cfg.OutputDir)
		_, statErr := os.Stat(filepath.Join(a.cfg.OutputDir, certdir.KeyFile))
		return err == nil && statErr == nil && bytes.Contains(f.Chain, pemOf(leaf))
	})
	f, err := certdir.Read(a.cfg.OutputDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(f.Chain, f.Key); err != nil {
		t.Fatalf("output key and chain do not match: %v", err)
	}
	fi, err := os.Stat(filepath.Join(a.cfg.OutputDir, certdir.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem mode: %v", fi.Mode())
	}

	// The socket is private to its owner.
	si, err := os.Stat(a.cfg.SDSSocket)
	if err != nil {
		t.Fatal(err)
	}
	if si.Mode().Type() != fs.ModeSocket || si.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a socket with 0600", si.Mode())
	}

	// Health and metrics.
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": wantID, "/metrics": "castellan_agent_svid_expiry_seconds"} {
		resp, err := http.Get("http://" + a.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s: %d %q, want 200 containing %q", path, resp.StatusCode, body, want)
		}
	}
	if got := a.metric(t, "castellan_agent_svid_expiry_seconds", ""); got < 3000 {
		t.Fatalf("castellan_agent_svid_expiry_seconds = %v, want about an hour", got)
	}
}

func TestRotationBeforeExpiryWithNewKey(t *testing.T) {
	ca := startCA(t)
	a := startAgent(t, ca, func(c *agent.Config) { c.TTL = 4 * time.Second })

	s := sdsStream(t, a, sds.DefaultSecretName)
	first := s.AwaitACK()
	chain1, key1, _ := sdsclient.TLSCertificate(first.Secrets[sds.DefaultSecretName])
	second := s.AwaitACK()
	received := time.Now()
	chain2, key2, _ := sdsclient.TLSCertificate(second.Secrets[sds.DefaultSecretName])
	if !received.Before(chain1[0].NotAfter) {
		t.Fatalf("rotation arrived at %s, after the old certificate expired at %s", received, chain1[0].NotAfter)
	}
	if key1.Public().(*ecdsa.PublicKey).Equal(key2.Public()) {
		t.Fatal("rotation reused the key")
	}
	if chain1[0].SerialNumber.Cmp(chain2[0].SerialNumber) == 0 {
		t.Fatal("rotation reused the certificate")
	}
}

func TestRSAKeys(t *testing.T) {
	ca := startCA(t)
	a := startAgent(t, ca, func(c *agent.Config) { c.KeyType = agent.KeyRSA2048 })
	_, key, _ := fetch(t, a)
	if k, ok := key.(*rsa.PrivateKey); !ok || k.N.BitLen() != 2048 {
		t.Fatalf("key is %T, want RSA 2048", key)
	}
}

func TestCAOutage(t *testing.T) {
	ca := startCA(t)
	a := startAgent(t, ca, nil)
	before, _, _ := fetch(t, a)
	// SDS serves the SVID as soon as it is in the store; the output
	// directory is written just after. Ready before the outage, so that
	// what is checked during it is the outage alone.
	testpoll.Until(t, "the agent to be ready", func() bool { ok, _ := a.Ready(); return ok })

	ca.stop()
	failures := a.metric(t, "castellan_agent_ca_request_failures_total", "unavailable")
	a.RotateNow()
	testpoll.Until(t, "failed CA requests", func() bool {
		return a.metric(t, "castellan_agent_ca_request_failures_total", "unavailable") >= failures+2
	})
	// Still serving the valid certificate, and ready.
	during, _, _ := fetch(t, a)
	if !bytes.Equal(during.Raw, before.Raw) {
		t.Fatal("certificate changed while the CA was down")
	}
	if ok, msg := a.Ready(); !ok {
		t.Fatalf("not ready during the outage: %s", msg)
	}
	if a.metric(t, "castellan_agent_ca_consecutive_failures", "") < 2 {
		t.Fatal("outage not visible in castellan_agent_ca_consecutive_failures")
	}

	ca.start(t)
	testpoll.Until(t, "a new certificate after the CA came back", func() bool {
		after, _, _ := fetch(t, a)
		return !bytes.Equal(after.Raw, before.Raw)
	})
	if got := a.metric(t, "castellan_agent_ca_consecutive_failures", ""); got != 0 {
		t.Fatalf("consecutive failures %v after recovery", got)
	}
}

// TestExpiredSVIDLeavesOutputDir lets the SVID expire while the CA is down:
// cert-chain.pem and key.pem leave the output directory, root-cert.pem
// stays, and both come back with the next SVID.
func TestExpiredSVIDLeavesOutputDir(t *testing.T) {
	ca := startCA(t)
	a := startAgent(t, ca, func(c *agent.Config) { c.TTL = 3 * time.Second; c.RotateFraction = 0.9 })
	testpoll.Until(t, "output files", func() bool {
		f, err := certdir.Read(a.cfg.OutputDir)
		return err == nil && f.HasCertificate()
	})
	ca.stop()
	testpoll.Until(t, "the expired SVID to leave the output directory", func() bool {
		f, err := certdir.Read(a.cfg.OutputDir)
		return err == nil && !f.HasCertificate() && len(f.Root) > 0
	})
	if _, err := os.Stat(filepath.Join(a.cfg.OutputDir, certdir.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("key.pem after expiry: %v", err)
	}
	ca.start(t)
	testpoll.Until(t, "a new SVID in the output directory", func() bool {
		f, err := certdir.Read(a.cfg.OutputDir)
		if err != nil || !f.HasCertificate() {
			return false
		}
		_, err = tls.X509KeyPair(f.Chain, f.Key)
		return err == nil
	})
}

// TestStaleOutputDirAtStart starts an agent, with the CA down, on an output
// directory that holds an SVID from an earlier run: an expired one is taken
// out at once; a valid one stays until it expires.
func TestStaleOutputDirAtStart(t *testing.T) {
	for _, tt := range []struct {
		name string
		ttl  time.Duration
	}{
		{"expired", -time.Second},
		{"expiring", 2 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ca := startCA(t)
			ca.stop()
			out := filepath.Join(t.TempDir(), "out")
			old := svidstoretest.NewCA(t, "earlier root")
			left := old.Issue(t, wantID, tt.ttl)
			if err := certdir.Write(out, certdir.Files{Chain: left.ChainPEM, Key: left.KeyPEM, Root: old.Bundle(t).PEM}); err != nil {
				t.Fatal(err)
			}
			a := startAgent(t, ca, func(c *agent.Config) { c.OutputDir = out })
			if tt.ttl > 0 {
				time.Sleep(200 * time.Millisecond)
				f, err := certdir.Read(out)
				if err != nil {
					t.Fatal(err)
				}
				if !f.HasCertificate() && time.Now().Before(left.NotAfter) {
					t.Fatal("a valid SVID was taken out before it expired")
				}
			}
			testpoll.Until(t, "the SVID left by the earlier run to leave the output directory", func() bool {
				f, err := certdir.Read(a.cfg.OutputDir)
				return err == nil && !f.HasCertificate()
			})
			if time.Now().Before(left.NotAfter) {
				t.Fatalf("taken out before it expired at %s", left.NotAfter)
			}
			f, err := certdir.Read(a.cfg.OutputDir)
			if err != nil {
				t.Fatal(err)
			}
			if roots, _ := os.ReadFile(ca.rootFile()); !bytes.Equal(f.Root, roots) {
				t.Error("root-cert.pem is not the agent's bundle")
			}
		})
	}
}

func TestTokenReadOnEveryCall(t *testing.T) {
	ca := startCA(t)
	bad := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(bad, []byte("not-a-jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, ca, func(c *agent.Config) { c.TokenFile = bad })
	testpoll.Until(t, "an authentication failure", func() bool {
		return a.metric(t, "castellan_agent_ca_request_failures_total", "unauthenticated") > 0
	})
	if ok, _ := a.Ready(); ok {
		t.Fatal("ready without an SVID")
	}
	// The kubelet writes a valid token; no restart needed.
	good, err := os.ReadFile(ca.tokenFile(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, good, 0o600); err != nil {
		t.Fatal(err)
	}
	fetch(t, a)
}

func TestUntrustedCAIsRefused(t *testing.T) {
	ca := startCA(t)
	other := filepath.Join(t.TempDir(), "other-root.pem")
	if err := os.WriteFile(other, svidstoretest.NewCA(t, "stranger").Bundle(t).PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, ca, func(c *agent.Config) { c.RootCertFile = other })
	testpoll.Until(t, "failed CA requests", func() bool {
		return a.metric(t, "castellan_agent_ca_request_failures_total", "unavailable") >= 2
	})
	if ok, _ := a.Ready(); ok {
		t.Fatal("agent got an SVID from a CA it should not trust")
	}
}

func TestRootFileChangeReachesSubscribers(t *testing.T) {
	ca := startCA(t)
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	caRoot, err := os.ReadFile(ca.rootFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootFile, caRoot, 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, ca, func(c *agent.Config) { c.RootCertFile = rootFile })
	fetch(t, a)

	s := sdsStream(t, a, sds.RootCASecretName)
	first := s.AwaitACK()
	if roots, _ := sdsclient.TrustedCA(first.Secrets[sds.RootCASecretName]); len(roots) != 1 {
		t.Fatalf("ROOTCA has %d roots, want 1", len(roots))
	}

	// A half-written file is refused and the bundle stays.
	if err := os.WriteFile(rootFile, caRoot[:len(caRoot)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	testpoll.Until(t, "the bad file to be noticed", func() bool {
		return a.metric(t, "castellan_agent_trust_bundle_loads_total", "error") > 0
	})
	// Adding a second root (as in a root rotation) reaches the stream.
	extra := svidstoretest.NewCA(t, "next root").Bundle(t).PEM
	if err := os.WriteFile(rootFile, append(append([]byte{}, caRoot...), extra...), 0o644); err != nil {
		t.Fatal(err)
	}
	next := s.AwaitACK()
	roots2, _ := sdsclient.TrustedCA(next.Secrets[sds.RootCASecretName])
	if len(roots2) != 2 {
		t.Fatalf("ROOTCA has %d roots after the change, want 2", len(roots2))
	}
	testpoll.Until(t, "root-cert.pem in the output directory", func() bool {
		f, err := certdir.Read(a.cfg.OutputDir)
		return err == nil && bytes.Contains(f.Root, extra)
	})
	// Each root of the bundle is a series, so that a root's propagation
	// across a fleet can be counted.
	for _, root := range roots2 {
		want := float64(root.NotAfter.Unix())
		if got := a.metric(t, "castellan_agent_trust_bundle_root_expiry_timestamp_seconds", root.SerialNumber.Text(16)); got != want {
			t.Errorf("bundle root %s expiry metric = %v, want %v", root.SerialNumber.Text(16), got, want)
		}
	}
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
