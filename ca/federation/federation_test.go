package federation_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/federation"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/castellan-mesh/castellan/trust/federated"
)

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.test")
	tdB = spiffeid.RequireTrustDomainFromString("b.test")
	tdC = spiffeid.RequireTrustDomainFromString("c.test")
)

// source is a ca.Source whose Authority can be swapped.
type source struct {
	mu sync.Mutex
	a  *ca.Authority
}

func (s *source) Authority() *ca.Authority {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.a
}

func (s *source) set(a *ca.Authority) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.a = a
}

func newAuthority(t testing.TB, td spiffeid.TrustDomain, extraRoots ...*x509.Certificate) *ca.Authority {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.NewSelfSignedRoot(key, ca.RootTemplate{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.NewAuthority(root, key, nil, append([]*x509.Certificate{root}, extraRoots...))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

type jwtKeys map[string]crypto.PublicKey

func (k jwtKeys) JWTAuthorities() map[string]crypto.PublicKey { return k }

func startEndpoint(t *testing.T, cfg federation.EndpointConfig) *federation.Endpoint {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	e, err := federation.NewEndpoint(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func writeBundle(t *testing.T, b *spiffebundle.Bundle) string {
	t.Helper()
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "bundle.json")
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startFederator(t *testing.T, rels []federation.Relationship, reg prometheus.Registerer) (*federation.Federator, string) {
	t.Helper()
	dir := t.TempDir()
	f, err := federation.New(federation.Config{TrustDomain: tdA, Relationships: rels, DataDir: dir,
		MinRefresh: 20 * time.Millisecond, MaxRefresh: 200 * time.Millisecond, FetchTimeout: 2 * time.Second, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f, filepath.Join(dir, federated.FileName)
}

// TestSPIFFEProfileFederation: a Federator authenticates an https_spiffe
// endpoint with the bundle file, follows a root rotation, and publishes
// every new bundle in federated-bundles.json.
func TestSPIFFEProfileFederation(t *testing.T) {
	srcB := &source{a: newAuthority(t, tdB)}
	jwtKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e := startEndpoint(t, federation.EndpointConfig{TrustDomain: tdB, Source: srcB, RefreshHint: time.Second,
		JWT: jwtKeys{"k1": jwtKey.Public()}})
	first, err := e.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	seq1, _ := first.SequenceNumber()
	if len(first.JWTAuthorities()) != 1 || len(first.X509Authorities()) != 1 {
		t.Fatalf("bundle: %d X.509 and %d JWT authorities", len(first.X509Authorities()), len(first.JWTAuthorities()))
	}
	if again, _ := e.Bundle(); !again.Equal(first) {
		t.Fatal("the same content got a new sequence number")
	}
	rel := federation.Relationship{TrustDomain: tdB, URL: "https://" + e.Addr() + "/", Profile: federation.ProfileSPIFFE,
		EndpointID: e.ID(), BundleFile: writeBundle(t, first)}
	reg := prometheus.NewRegistry()
	f, path := startFederator(t, []federation.Relationship{rel}, reg)
	published := func() []*spiffebundle.Bundle {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		b, err := federated.Parse(data)
		if err != nil {
			t.Fatalf("published document: %v", err)
		}
		return b
	}
	if got := published(); len(got) != 1 || !got[0].Equal(first) {
		t.Fatalf("the bundle file was not published at start: %v", got)
	}
	waitFor(t, "a fetch", func() bool { return fetched(reg) })
	_ = f

	// Rotation: a second root joins B's bundle.
	old, next := srcB.Authority(), newAuthority(t, tdB)
	prepared, err := ca.NewAuthority(old.Cert, old.Signer, nil, []*x509.Certificate{old.Root(), next.Root()})
	if err != nil {
		t.Fatal(err)
	}
	srcB.set(prepared)
	waitFor(t, "the rotated bundle", func() bool {
		got := published()
		return len(got) == 1 && len(got[0].X509Authorities()) == 2
	})
	got := published()[0]
	if seq2, _ := got.SequenceNumber(); seq2 <= seq1 {
		t.Fatalf("sequence %d after a change, was %d", seq2, seq1)
	}
	if failures := testutil.CollectAndCount(reg, "castellan_federation_refresh_failures_total"); failures != 0 {
		t.Fatalf("%d failure series on a healthy endpoint", failures)
	}
}

func fetched(reg *prometheus.Registry) bool {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "castellan_federation_bundle_last_refresh_timestamp_seconds" {
			return len(mf.GetMetric()) == 1
		}
	}
	return false
}

// TestSPIFFEProfileRefusesWrongEndpoint: an https_spiffe endpoint that
// presents another SPIFFE ID is refused before its bundle is read.
func TestSPIFFEProfileRefusesWrongEndpoint(t *testing.T) {
	srcB := &source{a: newAuthority(t, tdB)}
	e := startEndpoint(t, federation.EndpointConfig{TrustDomain: tdB, Source: srcB, ID: spiffeid.RequireFromPath(tdB, "/other")})
	b, _ := e.Bundle()
	rel := federation.Relationship{TrustDomain: tdB, URL: "https://" + e.Addr(), Profile: federation.ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdB, "/castellan/bundle-endpoint"), BundleFile: writeBundle(t, b)}
	reg := prometheus.NewRegistry()
	startFederator(t, []federation.Relationship{rel}, reg)
	waitFor(t, "a refusal", func() bool {
		return failures(reg, "b.test", federation.ReasonUnreachable) > 0
	})
}

// failures reads one series of castellan_federation_refresh_failures_total.
func failures(reg *prometheus.Registry, td, reason string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "castellan_federation_refresh_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["trust_domain"] == td && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestBadEndpoints: each bad answer of an https_web endpoint is refused
// with its reason and counted, and the last good bundle stays published.
func TestBadEndpoints(t *testing.T) {
	srcB := &source{a: newAuthority(t, tdB)}
	good := startEndpointBundle(t, srcB)
	otherTD, _ := federation.NewEndpointBundleForTest(t.TempDir(), tdB, newAuthority(t, tdC))

	var mu sync.Mutex
	var answer func(w http.ResponseWriter)
	setAnswer := func(f func(w http.ResponseWriter)) { mu.Lock(); answer = f; mu.Unlock() }
	serveBundle := func(b *spiffebundle.Bundle) func(w http.ResponseWriter) {
		doc, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return func(w http.ResponseWriter) { _, _ = w.Write(doc) }
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		f := answer
		mu.Unlock()
		f(w)
	}))
	defer srv.Close()
	roots := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	setAnswer(serveBundle(good))
	rel := federation.Relationship{TrustDomain: tdB, URL: srv.URL + "/bundle", Profile: federation.ProfileWeb, WebRootsFile: roots}
	reg := prometheus.NewRegistry()
	f, _ := startFederator(t, []federation.Relationship{rel}, reg)
	waitFor(t, "the good bundle", func() bool { b := f.Bundles(); return len(b) == 1 && b[0].Equal(good) })

	older := good.Clone()
	older.SetSequenceNumber(1)
	older.SetX509Authorities(newAuthority(t, tdB).Roots)
	huge := strings.Repeat(" ", federation.MaxBundleResponse+10)
	tests := []struct {
		name, reason string
		answer       func(w http.ResponseWriter)
	}{
		{name: "garbage", reason: federation.ReasonMalformed, answer: func(w http.ResponseWriter) { _, _ = w.Write([]byte("<html>not a bundle</html>")) }},
		{name: "error status", reason: federation.ReasonHTTPStatus, answer: func(w http.ResponseWriter) { http.Error(w, "down for maintenance", http.StatusServiceUnavailable) }},
		{name: "another trust domain", reason: federation.ReasonWrongTrustDomain, answer: serveBundle(otherTD)},
		{name: "sequence backwards", reason: federation.ReasonSequenceBackward, answer: serveBundle(older)},
		{name: "too large", reason: federation.ReasonTooLarge, answer: func(w http.ResponseWriter) { _, _ = w.Write([]byte(huge)) }},
		{name: "empty", reason: federation.ReasonEmpty, answer: func(w http.ResponseWriter) { _, _ = w.Write([]byte(`{"keys":[]}`)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setAnswer(tt.answer)
			waitFor(t, "the refusal", func() bool { return failures(reg, "b.test", tt.reason) > 0 })
			if b := f.Bundles(); len(b) != 1 || !b[0].Equal(good) {
				t.Fatal("the last good bundle was not kept")
			}
		})
	}
	t.Run("down", func(t *testing.T) {
		srv.Close()
		waitFor(t, "the refusal", func() bool { return failures(reg, "b.test", federation.ReasonUnreachable) > 0 })
		if b := f.Bundles(); len(b) != 1 || !b[0].Equal(good) {
			t.Fatal("the last good bundle was not kept")
		}
	})
}

func startEndpointBundle(t *testing.T, src ca.Source) *spiffebundle.Bundle {
	t.Helper()
	b, err := federation.NewEndpointBundleForTest(t.TempDir(), tdB, src.Authority())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSequenceSurvivesRestart: the sequence number is kept in the data
// directory, so a restarted endpoint serves the same number for the same
// content and a higher one for new content.
func TestSequenceSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	a := newAuthority(t, tdB)
	b1, err := federation.NewEndpointBundleForTest(dir, tdB, a)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := federation.NewEndpointBundleForTest(dir, tdB, a)
	s1, _ := b1.SequenceNumber()
	s2, _ := b2.SequenceNumber()
	if s1 != s2 {
		t.Fatalf("same content, sequence %d then %d", s1, s2)
	}
	b3, _ := federation.NewEndpointBundleForTest(dir, tdB, newAuthority(t, tdB))
	if s3, _ := b3.SequenceNumber(); s3 <= s1 {
		t.Fatalf("new content, sequence %d after %d", s3, s1)
	}
}

// TestWebProfileReloadsCertificate: an https_web endpoint serves the
// operator's certificate, picks up a new pair written over it, and keeps
// the last good pair when a new one does not load.
func TestWebProfileReloadsCertificate(t *testing.T) {
	t.Cleanup(federation.SetWebCertCheck(10 * time.Millisecond)) // restored after the endpoint stops
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	install := func(p *testpki.PKI) {
		t.Helper()
		if err := os.WriteFile(keyFile, testpki.KeyPEM(t, p.LeafKey), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certFile, p.ChainPEM(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	first, second := testpki.New(t), testpki.New(t)
	install(first)
	e := startEndpoint(t, federation.EndpointConfig{TrustDomain: tdB, Source: &source{a: newAuthority(t, tdB)},
		Profile: federation.ProfileWeb, CertFile: certFile, KeyFile: keyFile})
	served := func() *x509.Certificate {
		conn, err := tls.Dial("tcp", e.Addr(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reads the served certificate only
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	if !served().Equal(first.Leaf) {
		t.Fatal("the first certificate is not served")
	}
	// The endpoint answers a client that trusts the first root.
	pool := x509.NewCertPool()
	pool.AddCert(first.Root)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get("https://localhost:" + e.Addr()[strings.LastIndexByte(e.Addr(), ':')+1:] + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, err := spiffebundle.Parse(tdB, body); err != nil {
		t.Fatalf("served bundle: %v", err)
	}

	install(second)
	waitFor(t, "the new certificate", func() bool { return served().Equal(second.Leaf) })
	// A key that does not match: the last good pair stays.
	if err := os.WriteFile(keyFile, testpki.KeyPEM(t, first.LeafKey), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	for range 5 {
		if !served().Equal(second.Leaf) {
			t.Fatal("a broken pair replaced the last good one")
		}
	}
}

// TestFederatorStartsFromLastPublished: a restarted federator serves the
// bundles it last published, before any fetch; a document that does not
// parse is ignored and the bundle file used.
func TestFederatorStartsFromLastPublished(t *testing.T) {
	dir := t.TempDir()
	published := newAuthority(t, tdB)
	b := spiffebundle.FromX509Authorities(tdB, published.Roots)
	b.SetSequenceNumber(42)
	doc, err := federated.Marshal([]*spiffebundle.Bundle{b})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, federated.FileName)
	if err := os.WriteFile(path, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	fromFile := spiffebundle.FromX509Authorities(tdB, newAuthority(t, tdB).Roots)
	rel := federation.Relationship{TrustDomain: tdB, URL: "https://127.0.0.1:1/", Profile: federation.ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdB, "/e"), BundleFile: writeBundle(t, fromFile)}
	newFederator := func() *federation.Federator {
		f, err := federation.New(federation.Config{TrustDomain: tdA, Relationships: []federation.Relationship{rel}, DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if got := newFederator().Bundles(); len(got) != 1 || !got[0].Equal(b) {
		t.Fatal("the last published bundle was not loaded")
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := newFederator().Bundles(); len(got) != 1 || !got[0].Equal(fromFile) {
		t.Fatal("the bundle file was not used in place of a broken document")
	}
	if _, err := federation.New(federation.Config{TrustDomain: tdB, Relationships: []federation.Relationship{rel}, DataDir: dir}); err == nil {
		t.Fatal("federating with the local trust domain was accepted")
	}
	if _, err := federation.New(federation.Config{TrustDomain: tdA, Relationships: []federation.Relationship{rel, rel}, DataDir: dir}); err == nil {
		t.Fatal("a trust domain named twice was accepted")
	}
}
