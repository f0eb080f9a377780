package upstream

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// fakeUpstream is an in-memory root CA, for unit tests of the renewal
// logic. The integration tests use Vault's PKI engine.
type fakeUpstream struct {
	mu    sync.Mutex
	root  *x509.Certificate
	key   *ecdsa.PrivateKey
	fail  int // fail this many calls, then succeed
	calls int
	ttls  []time.Duration
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	f := &fakeUpstream{}
	f.rotateRoot(t)
	return f
}

func (f *fakeUpstream) rotateRoot(t *testing.T) {
	root := testpki.NewCA(t, "Upstream Root")
	f.mu.Lock()
	f.root, f.key = root.Cert, root.Key
	f.mu.Unlock()
}

func (f *fakeUpstream) String() string { return "fake upstream" }

func (f *fakeUpstream) SignIntermediate(_ context.Context, csrPEM []byte, ttl time.Duration) (*x509.Certificate, []*x509.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.ttls = append(f.ttls, ttl)
	if f.fail > 0 {
		f.fail--
		return nil, nil, errors.New("upstream unreachable")
	}
	b, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, err
	}
	now := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: csr.Subject, URIs: csr.URIs,
		NotBefore: now.Add(-time.Second), NotAfter: now.Add(ttl),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.root, csr.PublicKey, f.key)
	if err != nil {
		return nil, nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, []*x509.Certificate{f.root}, nil
}

func (f *fakeUpstream) setFail(n int) {
	f.mu.Lock()
	f.fail = n
	f.mu.Unlock()
}

func (f *fakeUpstream) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func testConfig(t *testing.T, up Authority, dir string) Config {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return Config{Upstream: up, Signer: key, TrustDomain: td, DataDir: dir, TTL: time.Hour, Registerer: prometheus.NewRegistry()}
}

func TestNewSignsAndKeeps(t *testing.T) {
	up := newFakeUpstream(t)
	dir := t.TempDir()
	cfg := testConfig(t, up, dir)
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := s.Authority()
	if !a.Root().Equal(up.root) || len(a.Roots) != 1 {
		t.Fatalf("the trust bundle is not the upstream root")
	}
	if a.Cert.URIs[0].String() != "spiffe://example.org" || a.Cert.Subject.CommonName != "Castellan Intermediate CA" {
		t.Errorf("intermediate subject %q URIs %v", a.Cert.Subject, a.Cert.URIs)
	}
	if up.ttls[0] != time.Hour {
		t.Errorf("asked for TTL %s, want 1h", up.ttls[0])
	}
	bundle, err := pemfile.ReadCertificates(filepath.Join(dir, RootCertFile))
	if err != nil || len(bundle) != 1 || !bundle[0].Equal(up.root) {
		t.Fatalf("root-cert.pem: %v", err)
	}
	if ok, msg := s.Ready(); !ok || msg != "ok" {
		t.Errorf("Ready() = %v, %q", ok, msg)
	}

	// A restart within the renewal window reuses the kept intermediate
	// without asking the upstream.
	cfg.Registerer = prometheus.NewRegistry()
	s2, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if up.callCount() != 1 || !s2.Authority().Cert.Equal(a.Cert) {
		t.Fatalf("restart asked the upstream again (calls %d) or changed the intermediate", up.callCount())
	}

	// A restart while the upstream is down and the intermediate is past
	// its renewal point still starts, signing with the kept one.
	cfg.Registerer = prometheus.NewRegistry()
	cfg.Now = func() time.Time { return a.Cert.NotAfter.Add(-time.Minute) }
	up.setFail(1)
	s3, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New with a kept intermediate and the upstream down: %v", err)
	}
	if !s3.Authority().Cert.Equal(a.Cert) {
		t.Fatal("did not keep signing with the kept intermediate")
	}
	if ok, msg := s3.Ready(); !ok || !strings.Contains(msg, "renewal has failed") {
		t.Errorf("Ready() = %v, %q; want ready, with the failure", ok, msg)
	}
}

func TestNewErrors(t *testing.T) {
	up := newFakeUpstream(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, cfg *Config)
		want  string
	}{
		{name: "upstream down, nothing kept", setup: func(t *testing.T, cfg *Config) { up.setFail(1) },
			want: "no usable intermediate in"},
		{name: "self-signed material", setup: func(t *testing.T, cfg *Config) {
			os.WriteFile(filepath.Join(cfg.DataDir, "root-key.pem"), nil, 0o600)
		}, want: "use another data directory"},
		{name: "bad fraction", setup: func(t *testing.T, cfg *Config) { cfg.RenewFraction = 1 }, want: "not in (0, 1)"},
		{name: "no key", setup: func(t *testing.T, cfg *Config) { cfg.Signer = nil }, want: "no intermediate key"},
		{name: "kept intermediate for another key", setup: func(t *testing.T, cfg *Config) {
			other := testConfig(t, up, cfg.DataDir)
			if _, err := New(context.Background(), other); err != nil {
				t.Fatal(err)
			}
			up.setFail(1)
		}, want: "no usable intermediate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, up, t.TempDir())
			tt.setup(t, &cfg)
			_, err := New(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestRunRenewsAndRetries(t *testing.T) {
	up := newFakeUpstream(t)
	cfg := testConfig(t, up, t.TempDir())
	cfg.TTL = 3 * time.Second
	cfg.RenewFraction = 0.3
	cfg.RetryMin, cfg.RetryMax = 20*time.Millisecond, 80*time.Millisecond
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := s.Authority()
	up.setFail(4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for s.Authority() == first && time.Now().Before(deadline) {
		// While renewal fails, the current intermediate keeps signing.
		if s.Authority() == nil {
			t.Fatal("no authority while renewal fails")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s.Authority() == first {
		t.Fatal("the intermediate was not renewed")
	}
	if got := testutil.ToFloat64(s.m.failures); got != 4 {
		t.Errorf("renewal failures = %v, want 4", got)
	}
	if got := testutil.ToFloat64(s.m.renewals); got < 2 {
		t.Errorf("renewals = %v, want at least 2 (start-up and after the failures)", got)
	}
	if s.LastError() != nil {
		t.Errorf("LastError() = %v after a successful renewal", s.LastError())
	}
	if n := testutil.CollectAndCount(reg, "castellan_ca_intermediate_expiry_timestamp_seconds"); n != 1 {
		t.Errorf("expiry gauge series = %d", n)
	}
}

func TestRootChangeKeepsOldRoot(t *testing.T) {
	up := newFakeUpstream(t)
	cfg := testConfig(t, up, t.TempDir())
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot := up.root
	old := s.Authority()
	changed := s.Changed()
	up.rotateRoot(t)
	if err := s.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("the renewal was not signalled to Changed")
	}
	a := s.Authority()
	if len(a.Roots) != 2 || !a.Roots[0].Equal(up.root) || !a.Roots[1].Equal(oldRoot) {
		t.Fatalf("bundle after a root change has %d roots; want the new and the old", len(a.Roots))
	}
	// Once every leaf of the old intermediate has expired, the old root
	// leaves the bundle.
	s.cfg.Now = func() time.Time { return old.NotAfter().Add(time.Second) }
	s.cfg.TTL = 3 * time.Hour
	if err := s.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Authority().Roots); n != 1 {
		t.Fatalf("bundle still has %d roots after the old intermediate expired", n)
	}
}

func TestLeavesNeverOutliveIntermediate(t *testing.T) {
	up := newFakeUpstream(t)
	cfg := testConfig(t, up, t.TempDir())
	cfg.TTL = 30 * time.Minute
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.NewIssuer(s, ca.Config{DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	u, _ := url.Parse(id.String())
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	svid, err := iss.Issue(context.Background(), ca.Request{CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), ID: id, TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if svid.NotAfter.After(s.Authority().Cert.NotAfter) {
		t.Fatalf("leaf expires %s, after its intermediate %s", svid.NotAfter, s.Authority().Cert.NotAfter)
	}
}
