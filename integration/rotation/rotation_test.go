package rotation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
	"sync/atomic"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/ca/upstream"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/castellan-mesh/castellan/internal/vault"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

const svidTTL = 10 * time.Second

// TestRootRotationUnderLiveMTLS runs a full self-signed root rotation
// (prepare → activate → retire) while two pairs of mTLS endpoints, fed by
// two agents over SDS, handshake continuously. No handshake may fail.
func TestRootRotationUnderLiveMTLS(t *testing.T) {
	env := newEnv(t, nil)
	r := &rotation.Engine{Backend: &material.Backend{Dir: env.dataDir, TrustDomain: td}, Policy: rotation.Policy{PropagationDelay: time.Second, MaxTTL: svidTTL, RetireMargin: time.Second}}
	env.rotateSelfSigned(t, r)
}

// rotateSelfSigned takes r through prepare, activate and retire, each as
// soon as it is allowed, checking that every peer follows, and that no
// handshake or SVID check failed.
func (env *env) rotateSelfSigned(t *testing.T, r rotation.Rotator) *x509.Certificate {
	t.Helper()
	ctx := context.Background()
	old := env.caRoot()

	// prepare: the new root reaches every peer's bundle; the old one signs.
	if err := r.Prepare(ctx, ""); err != nil {
		t.Fatal(err)
	}
	st, _ := r.Status(context.Background())
	newRoot := st.Roots[len(st.Roots)-1].Cert
	env.waitAll(t, "every peer trusts both roots", func(m *endpoint) bool { return m.trusts(old) && m.trusts(newRoot) })

	// activate: new SVIDs are signed under the new root.
	harness.WaitFor(t, 10*time.Second, "activation allowed", func() bool { return r.Activate(ctx, false) == nil })
	env.waitAll(t, "every SVID chains to the new root", func(m *endpoint) bool { return m.chainsTo(newRoot) })

	// retire: once no SVID under the old root can be valid.
	harness.WaitFor(t, 2*svidTTL, "retirement allowed", func() bool { return r.Retire(ctx, false) == nil })
	env.waitAll(t, "no peer trusts the old root", func(m *endpoint) bool { return !m.trusts(old) && m.trusts(newRoot) })
	time.Sleep(time.Second)
	env.finish(t, old)
	return newRoot
}

// TestPluggedInRotationSwappedOnDisk does the same with a plugged-in CA
// whose cacerts files are swapped on disk, as an operator (or a mounted
// Secret) would: first the bundle, then the intermediate, then the bundle.
func TestPluggedInRotationSwappedOnDisk(t *testing.T) {
	root1, key1 := newRoot(t, "root-1")
	root2, key2 := newRoot(t, "root-2")
	env := newEnv(t, func(dir string) { writeCACerts(t, dir, root1, key1, "inter-1", []*x509.Certificate{root1}) })

	// prepare: the bundle gains root-2.
	must(t, pemfile.WriteCertificates(filepath.Join(env.dataDir, material.RootCertFile), []*x509.Certificate{root1, root2}))
	env.waitAll(t, "every peer trusts both roots", func(m *endpoint) bool { return m.trusts(root1) && m.trusts(root2) })

	// activate: an intermediate under root-2 replaces inter-1.
	writeCACerts(t, env.dataDir, root2, key2, "inter-2", []*x509.Certificate{root1, root2})
	activated := time.Now()
	env.waitAll(t, "every SVID chains to root-2", func(m *endpoint) bool { return m.chainsTo(root2) })

	// retire: after the longest SVID lifetime, the bundle drops root-1.
	time.Sleep(time.Until(activated.Add(svidTTL + time.Second)))
	must(t, pemfile.WriteCertificates(filepath.Join(env.dataDir, material.RootCertFile), []*x509.Certificate{root2}))
	env.waitAll(t, "no peer trusts root-1", func(m *endpoint) bool { return !m.trusts(root1) && m.trusts(root2) })
	time.Sleep(time.Second)
	env.finish(t, root1)
}

// TestVaultRootRotationUnderLiveMTLS rotates a Vault-backed root: Vault's
// PKI engine signs the CA's intermediate, and the rotation moves it from
// the mount's first root issuer to a new root the rotation creates in the
// same mount. The CA logs in with an AppRole that may only sign
// intermediates; the operator's steps use Vault's root token.
func TestVaultRootRotationUnderLiveMTLS(t *testing.T) {
	v := harness.StartVault(t)
	old := v.EnablePKI(t)
	roleID, secretID := v.AppRole(t, time.Hour)
	policy := rotation.Policy{PropagationDelay: time.Second, MaxTTL: svidTTL, RetireMargin: time.Second}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	env := newEnv(t, nil, func(ctx context.Context, dataDir string, cfg *server.Config) {
		caVault, err := vault.New(vault.Config{Address: v.Addr, Auth: vault.AppRoleAuth{RoleID: roleID, SecretID: secretID}, Logger: cfg.Logger})
		must(t, err)
		src, err := upstream.New(ctx, upstream.Config{
			Upstream: &upstream.VaultPKI{Client: caVault}, Signer: key, TrustDomain: td, DataDir: dataDir,
			TTL: time.Hour, ReloadInterval: 100 * time.Millisecond, RotationPolicy: policy, Logger: cfg.Logger,
		})
		must(t, err)
		cfg.Source, cfg.Rotation = src, src.Rotation()
		cfg.Runners = append(cfg.Runners, src.Run)
	})
	if !env.caRoot().Equal(old) {
		t.Fatal("the CA does not sign under Vault's root")
	}
	operator, err := vault.New(vault.Config{Address: v.Addr, Auth: vault.TokenAuth{Token: v.RootToken}})
	must(t, err)
	pki := &upstream.VaultPKI{Client: operator}
	r := &rotation.Engine{Backend: &upstream.Backend{Dir: env.dataDir, Upstream: pki, TrustDomain: td, RootTTL: 365 * 24 * time.Hour}, Policy: policy}
	ctx := context.Background()

	// prepare: Vault creates a new root issuer; it reaches every peer's
	// bundle while the old root still signs.
	must(t, r.Prepare(ctx, ""))
	prepared, err := r.Status(ctx)
	must(t, err)
	iss, err := pki.LookupIssuer(ctx, prepared.NextIssuer)
	must(t, err)
	newRoot := iss.Root()
	env.waitAll(t, "every peer trusts both roots", func(m *endpoint) bool { return m.trusts(old) && m.trusts(newRoot) })
	if !env.caRoot().Equal(old) {
		t.Fatal("the CA signs under the prepared root before activation")
	}
	env.waitMetrics(t, `castellan_ca_rotation_phase{phase="prepared"} 1`, "castellan_ca_bundle_roots 2",
		`castellan_ca_bundle_root_expiry_timestamp_seconds{serial="`+fmt.Sprintf("%x", newRoot.SerialNumber)+`",state="prepared"}`)

	// activate: the new issuer signs the CA's next intermediate.
	harness.WaitFor(t, 10*time.Second, "activation allowed", func() bool { return r.Activate(ctx, false) == nil })
	env.waitAll(t, "every SVID chains to the new root", func(m *endpoint) bool { return m.chainsTo(newRoot) })
	inter := env.ca.Source().Authority().Cert
	if err := inter.CheckSignatureFrom(iss.Cert); err != nil {
		t.Fatalf("the CA's intermediate is not signed by the new Vault issuer: %v", err)
	}
	st, err := r.Status(context.Background())
	must(t, err)
	if st.Phase != rotation.PhaseActivated || st.Issuer != iss.ID {
		t.Fatalf("status after activation: phase %s, issuer %q; want activated, %q", st.Phase, st.Issuer, iss.ID)
	}
	env.waitMetrics(t, `castellan_ca_rotation_phase{phase="activated"} 1`,
		`castellan_ca_bundle_root_expiry_timestamp_seconds{serial="`+fmt.Sprintf("%x", old.SerialNumber)+`",state="retiring"}`)

	// retire: once no SVID under the old root can be valid.
	harness.WaitFor(t, 2*svidTTL, "retirement allowed", func() bool { return r.Retire(ctx, false) == nil })
	env.waitAll(t, "no peer trusts the old root", func(m *endpoint) bool { return !m.trusts(old) && m.trusts(newRoot) })
	time.Sleep(time.Second)
	env.finish(t, old)
	bundle, err := pemfile.ReadCertificates(filepath.Join(env.dataDir, upstream.RootCertFile))
	must(t, err)
	if len(bundle) != 1 || !bundle[0].Equal(newRoot) {
		t.Fatalf("root-cert.pem holds %d roots after retirement, want only the new one", len(bundle))
	}
}

// waitMetrics waits until the CA's /metrics holds every line prefix in want.
func (e *env) waitMetrics(t *testing.T, want ...string) {
	t.Helper()
	var body string
	harness.WaitFor(t, 10*time.Second, "metrics "+strings.Join(want, ", "), func() bool {
		resp, err := http.Get("http://" + e.ca.HTTPAddr() + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		for _, w := range want {
			if !strings.Contains(body, "\n"+w) {
				return false
			}
		}
		return true
	})
}

// env is one CA, two agents and four mTLS endpoints making handshakes.
type env struct {
	dataDir   string
	ca        *server.Server
	endpoints []*endpoint
	ok, bad   atomic.Int64
	verifyBad atomic.Int64
	mu        sync.Mutex
	errs      []string
	stop      context.CancelFunc
	done      sync.WaitGroup
}

// newEnv starts the API server, the CA on a new data directory (set up by
// setup, if given; edit adjusts the CA's configuration) and the agents
// and endpoints, and starts the handshakes.
func newEnv(t *testing.T, setup func(dataDir string), edit ...func(ctx context.Context, dataDir string, cfg *server.Config)) *env {
	t.Helper()
	api := harness.StartAPIServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{dataDir: t.TempDir()}
	if setup != nil {
		setup(e.dataDir)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tr, err := authn.NewTokenReview(authn.TokenReviewConfig{Client: api.Client, Audiences: []string{"istio-ca"}})
	must(t, err)
	cached, err := authn.NewCache(tr, authn.CacheConfig{})
	must(t, err)
	cfg := server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TrustDomain: td,
		ServerDNSNames: []string{"castellan.test"}, Authenticator: cached,
		DefaultTTL: svidTTL, MaxTTL: svidTTL, Logger: log,
	}
	for _, f := range edit {
		f(ctx, e.dataDir, &cfg)
	}
	if cfg.Source == nil {
		harness.UseDataDir(t, &cfg, material.Config{Dir: e.dataDir, ReloadInterval: 100 * time.Millisecond})
	}
	srv, err := server.New(ctx, cfg)
	must(t, err)
	go func() { _ = srv.Serve(ctx) }()
	e.ca = srv

	for _, sa := range []string{"alpha", "beta"} {
		api.CreateServiceAccount(t, "default", sa)
		dir := t.TempDir()
		tokenFile := filepath.Join(dir, "token")
		must(t, os.WriteFile(tokenFile, []byte(api.Token(t, "default", sa, []string{"istio-ca"}, time.Hour)), 0o600))
		sock := filepath.Join(dir, "sds.sock")
		a, err := agent.New(agent.Config{
			CAAddr: srv.GRPCAddr(), CAServerName: "castellan.test",
			RootCertFile: filepath.Join(e.dataDir, material.RootCertFile), TokenFile: tokenFile,
			TTL: svidTTL, RootPollInterval: 100 * time.Millisecond,
			InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
			SDSSocket: sock, WorkloadAPISocket: agent.Disabled, HTTPAddr: agent.Disabled, Logger: log,
		})
		must(t, err)
		go func() { _ = a.Run(ctx) }()
		// Each agent feeds a client and a server endpoint.
		for _, role := range []string{"server", "client"} {
			e.endpoints = append(e.endpoints, watchSDS(t, ctx, sa+"/"+role, sock))
		}
	}
	e.waitAll(t, "every endpoint has its SVID and bundle", func(m *endpoint) bool { return m.ready() })

	// alpha's client → beta's server, beta's client → alpha's server.
	hctx, hcancel := context.WithCancel(ctx)
	e.stop = hcancel
	e.pair(t, hctx, e.endpoints[1], e.endpoints[2])
	e.pair(t, hctx, e.endpoints[3], e.endpoints[0])
	e.checkSVIDs(hctx)
	time.Sleep(500 * time.Millisecond)
	return e
}

func (e *env) caRoot() *x509.Certificate { return e.ca.Source().Authority().Root() }

func (e *env) fail(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.errs) < 20 {
		e.errs = append(e.errs, fmt.Sprintf(format, args...))
	}
}

// pair runs handshakes from client to server until ctx ends.
func (e *env) pair(t *testing.T, ctx context.Context, client, srv *endpoint) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	context.AfterFunc(ctx, func() { lis.Close() })
	serverCfg := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		ClientAuth:            tls.RequireAnyClientCert,
		GetCertificate:        func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return srv.certificate(), nil },
		VerifyPeerCertificate: srv.verifyPeer,
	}
	e.done.Add(2)
	go func() {
		defer e.done.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, serverCfg)
				_ = tc.HandshakeContext(ctx)
				_, _ = tc.Write([]byte{1})
			}()
		}
	}()
	clientCfg := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		InsecureSkipVerify:    true, // the SPIFFE check is VerifyPeerCertificate's
		VerifyPeerCertificate: client.verifyPeer,
		GetClientCertificate:  func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client.certificate(), nil },
	}
	go func() {
		defer e.done.Done()
		for ctx.Err() == nil {
			c, err := net.Dial("tcp", lis.Addr().String())
			if err != nil {
				if ctx.Err() == nil {
					e.bad.Add(1)
					e.fail("dial: %v", err)
				}
				return
			}
			tc := tls.Client(c, clientCfg)
			err = tc.HandshakeContext(ctx)
			if err == nil {
				// The server's verdict on our certificate arrives with its
				// first record.
				_, err = tc.Read(make([]byte, 1))
			}
			c.Close()
			switch {
			case ctx.Err() != nil:
			case err != nil:
				e.bad.Add(1)
				e.fail("%s → %s: %v", client.name, srv.name, err)
			default:
				e.ok.Add(1)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
}

// checkSVIDs verifies, every 20ms, each endpoint's SVID against the bundle
// every other endpoint holds at that moment.
func (e *env) checkSVIDs(ctx context.Context) {
	e.done.Add(1)
	go func() {
		defer e.done.Done()
		for ctx.Err() == nil {
			for _, a := range e.endpoints {
				chain := a.svidChain()
				for _, b := range e.endpoints {
					if _, _, err := x509svid.Verify(chain, b.bundle()); err != nil {
						e.verifyBad.Add(1)
						e.fail("SVID of %s does not verify against the bundle of %s: %v", a.name, b.name, err)
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
}

func (e *env) waitAll(t *testing.T, what string, cond func(*endpoint) bool) {
	t.Helper()
	harness.WaitFor(t, 3*svidTTL, what, func() bool {
		for _, m := range e.endpoints {
			if !cond(m) {
				return false
			}
		}
		return true
	})
	t.Logf("%s (handshakes so far: %d ok, %d failed)", what, e.ok.Load(), e.bad.Load())
}

// finish stops the handshakes and checks the outcome.
func (e *env) finish(t *testing.T, old *x509.Certificate) {
	t.Helper()
	e.stop()
	e.done.Wait()
	t.Logf("handshakes: %d ok, %d failed; SVID checks failed: %d", e.ok.Load(), e.bad.Load(), e.verifyBad.Load())
	for _, msg := range e.errs {
		t.Error(msg)
	}
	if e.bad.Load() != 0 || e.verifyBad.Load() != 0 {
		t.Fatalf("%d handshakes and %d SVID checks failed during the rotation", e.bad.Load(), e.verifyBad.Load())
	}
	if e.ok.Load() < 100 {
		t.Fatalf("only %d handshakes ran", e.ok.Load())
	}
	for _, r := range e.ca.Source().Authority().Roots {
		if r.Equal(old) {
			t.Fatal("the CA's bundle still holds the old root")
		}
	}
}

// endpoint is one TLS endpoint's view of its SDS material.
type endpoint struct {
	name string
	mu   sync.RWMutex
	cert *tls.Certificate
	svid []*x509.Certificate
	b    *x509bundle.Bundle
}

func watchSDS(t *testing.T, ctx context.Context, name, socket string) *endpoint {
	t.Helper()
	m := &endpoint{name: name}
	var c *sdsclient.Client
	harness.WaitFor(t, 10*time.Second, "SDS socket of "+name, func() bool {
		if _, err := os.Stat(socket); err != nil {
			return false
		}
		var err error
		c, err = sdsclient.New(socket)
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	st, err := c.Stream(ctx)
	must(t, err)
	must(t, st.Subscribe("default", "ROOTCA"))
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				return
			}
			if resp.Invalid != nil {
				_ = st.NACK(resp, resp.Invalid.Error())
				continue
			}
			if err := m.update(resp.Secrets); err != nil {
				_ = st.NACK(resp, err.Error())
				continue
			}
			_ = st.ACK(resp)
		}
	}()
	return m
}

func (m *endpoint) update(secrets map[string]*tlsv3.Secret) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := secrets["default"]; ok {
		tc := s.GetTlsCertificate()
		cert, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err != nil {
			return err
		}
		chain, err := pemfile.ParseCertificates(tc.GetCertificateChain().GetInlineBytes())
		if err != nil {
			return err
		}
		m.cert, m.svid = &cert, chain
	}
	if s, ok := secrets["ROOTCA"]; ok {
		roots, err := pemfile.ParseCertificates(s.GetValidationContext().GetTrustedCa().GetInlineBytes())
		if err != nil {
			return err
		}
		m.b = x509bundle.FromX509Authorities(td, roots)
	}
	return nil
}

func (m *endpoint) ready() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cert != nil && m.b != nil
}

func (m *endpoint) certificate() *tls.Certificate {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cert
}

func (m *endpoint) svidChain() []*x509.Certificate {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.svid
}

func (m *endpoint) bundle() *x509bundle.Bundle {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.b
}

func (m *endpoint) trusts(root *x509.Certificate) bool {
	return m.bundle().HasX509Authority(root)
}

// chainsTo reports whether the endpoint's SVID verifies under root alone.
func (m *endpoint) chainsTo(root *x509.Certificate) bool {
	_, _, err := x509svid.Verify(m.svidChain(), x509bundle.FromX509Authorities(td, []*x509.Certificate{root}))
	return err == nil
}

// verifyPeer checks a peer's chain against the endpoint's current bundle.
func (m *endpoint) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	var chain []*x509.Certificate
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return errors.New("no peer certificate")
	}
	_, _, err := x509svid.Verify(chain, m.bundle())
	return err
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func newRoot(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: td, CommonName: cn})
	must(t, err)
	return root, key
}

// writeCACerts writes Istio's cacerts layout for a new intermediate under
// root; the key goes first, as a file-by-file swap would.
func writeCACerts(t *testing.T, dir string, root *x509.Certificate, rootKey *ecdsa.PrivateKey, cn string, bundle []*x509.Certificate) {
	t.Helper()
	inter := (&testpki.CA{Cert: root, Key: rootKey}).ChildCA(t, cn)
	must(t, pemfile.WriteFileAtomic(filepath.Join(dir, material.CAKeyFile), testpki.KeyPEM(t, inter.Key), 0o600))
	must(t, pemfile.WriteCertificates(filepath.Join(dir, material.CertChainFile), inter.Chain))
	must(t, pemfile.WriteCertificates(filepath.Join(dir, material.CACertFile), []*x509.Certificate{inter.Cert}))
	must(t, pemfile.WriteCertificates(filepath.Join(dir, material.RootCertFile), bundle))
}
