package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// tokenTable is a unit-test Authenticator: token → caller.
type tokenTable map[string]authn.Caller

func (t tokenTable) Authenticate(_ context.Context, token string) (authn.Caller, error) {
	if c, ok := t[token]; ok {
		return c, nil
	}
	if token == "down" {
		return authn.Caller{}, authn.Errorf(authn.ReasonUnavailable, "API server unreachable")
	}
	return authn.Caller{}, authn.Errorf(authn.ReasonInvalid, "unknown token")
}

// dirSource opens the CA material of a new data directory: a
// self-signed root.
func dirSource(t testing.TB) *material.Store {
	t.Helper()
	s, err := material.Open(context.Background(), material.Config{
		Dir: t.TempDir(), TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type testServer struct {
	*Server
	reg    *prometheus.Registry
	client *caclient.Client
}

func start(t testing.TB, edits ...func(*Config)) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reg := prometheus.NewPedanticRegistry()
	src := dirSource(t)
	cfg := Config{
		Source:         src,
		Rotation:       src.Rotation(rotation.Policy{}),
		GRPCAddr:       "127.0.0.1:0",
		HTTPAddr:       "127.0.0.1:0",
		ServerDNSNames: []string{"castellan.test"},
		Authenticator:  tokenTable{"good": {Namespace: "default", ServiceAccount: "sleep"}},
		Logger:         slog.New(slog.DiscardHandler),
		Registerer:     reg,
		Gatherer:       reg,
	}
	for _, edit := range edits {
		edit(&cfg)
	}
	s, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	roots := x509.NewCertPool()
	roots.AddCert(s.Source().Authority().Root())
	c, err := caclient.New(caclient.Config{Addr: s.GRPCAddr(), Roots: roots, ServerName: "castellan.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &testServer{Server: s, reg: reg, client: c}
}

func csrFor(t testing.TB, uri string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestCreateCertificate(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	const me = "spiffe://cluster.local/ns/default/sa/sleep"
	tests := []struct {
		name     string
		token    string
		csr      []byte
		ttl      time.Duration
		code     codes.Code
		metric   string
		reason   string
		contains string
	}{
		{name: "issued", token: "good", csr: csrFor(t, me), code: codes.OK},
		{name: "no san", token: "good", csr: csrFor(t, ""), code: codes.OK},
		{name: "bad token", token: "stranger", csr: csrFor(t, me), code: codes.Unauthenticated, metric: "castellan_ca_auth_failures_total", reason: "invalid_token"},
		{name: "authn backend down", token: "down", csr: csrFor(t, me), code: codes.Unavailable, metric: "castellan_ca_auth_failures_total", reason: "unavailable"},
		{name: "other identity", token: "good", csr: csrFor(t, "spiffe://cluster.local/ns/kube-system/sa/admin"), code: codes.PermissionDenied, metric: "castellan_ca_csr_rejected_total", reason: "identity_mismatch", contains: "the caller is " + me},
		{name: "garbage", token: "good", csr: []byte("garbage"), code: codes.InvalidArgument, metric: "castellan_ca_csr_rejected_total", reason: "malformed_csr"},
		{name: "oversized", token: "good", csr: []byte(strings.Repeat("A", MaxRequestBytes+1)), code: codes.ResourceExhausted, metric: "castellan_ca_csr_rejected_total", reason: "oversized_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := counter(s, tt.metric, tt.reason)
			chain, err := s.client.CreateCertificate(ctx, tt.token, tt.csr, tt.ttl)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
			}
			if tt.code != codes.OK {
				if chain != nil {
					t.Fatal("certificate returned with an error")
				}
				if tt.metric != "" && !rises(s, tt.metric, tt.reason, before) {
					t.Errorf("%s{reason=%q} not counted", tt.metric, tt.reason)
				}
				if tt.contains != "" && !strings.Contains(err.Error(), tt.contains) {
					t.Errorf("message %q lacks %q", err, tt.contains)
				}
				return
			}
			if len(chain) != 2 {
				t.Fatalf("chain has %d elements, want leaf and root", len(chain))
			}
		})
	}
	if n := testutil.ToFloat64(s.metrics.issued); n != 2 {
		t.Errorf("issued = %v, want 2", n)
	}
}

func TestNoTokenAndImpersonation(t *testing.T) {
	s := start(t)
	// No token at all: call through the raw stub without metadata.
	roots := x509.NewCertPool()
	roots.AddCert(s.Source().Authority().Root())
	raw, err := caclient.New(caclient.Config{Addr: s.GRPCAddr(), Roots: roots, ServerName: "castellan.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	stub := pb.NewIstioCertificateServiceClient(raw.Conn())
	_, err = stub.CreateCertificate(context.Background(), &pb.IstioCertificateRequest{Csr: string(csrFor(t, ""))})
	if status.Code(err) != codes.Unauthenticated || counter(s, "castellan_ca_auth_failures_total", "no_token") != 1 {
		t.Fatalf("no token: %v", err)
	}
	md, _ := structpb.NewStruct(map[string]any{"ImpersonatedIdentity": "spiffe://cluster.local/ns/x/sa/y"})
	_, err = s.client.CreateCertificateRequest(context.Background(), "good", &pb.IstioCertificateRequest{Csr: string(csrFor(t, "")), Metadata: md})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("impersonation: %v", err)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	s := start(t)
	base := "http://" + s.HTTPAddr()
	get := func(path string) (int, []byte) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d", code)
	}
	code, body := get("/bundle")
	blk, _ := pem.Decode(body)
	if code != 200 || blk == nil {
		t.Fatalf("/bundle = %d %q", code, body)
	}
	root, _ := x509.ParseCertificate(blk.Bytes)
	if !root.Equal(s.Source().Authority().Root()) {
		t.Fatal("/bundle is not the root")
	}
	code, body = get("/bundle.spiffe")
	if code != 200 {
		t.Fatalf("/bundle.spiffe = %d", code)
	}
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), body)
	if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(root) {
		t.Fatalf("/bundle.spiffe: %v", err)
	}
	var doc struct {
		Keys []struct {
			Use string `json:"use"`
		} `json:"keys"`
	}
	if json.Unmarshal(body, &doc) != nil || len(doc.Keys) != 1 || doc.Keys[0].Use != "x509-svid" {
		t.Fatalf("bundle keys: %s", body)
	}
	code, body = get("/metrics")
	if code != 200 || !strings.Contains(string(body), "castellan_ca_root_expiry_timestamp_seconds") {
		t.Fatal("/metrics lacks the root expiry")
	}
}

// rises reports whether a counter rose by one from before, reading it for
// up to 2s: gRPC counts a request refused for its size just after the
// status has been sent.
func rises(s *testServer, name, reason string, before float64) bool {
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if got := counter(s, name, reason); got == before+1 || time.Now().After(deadline) {
			return got == before+1
		}
	}
}

func counter(s *testServer, name, reason string) float64 {
	switch name {
	case "castellan_ca_auth_failures_total":
		return testutil.ToFloat64(s.metrics.authFailures.WithLabelValues(reason))
	case "castellan_ca_csr_rejected_total":
		return testutil.ToFloat64(s.metrics.rejected.WithLabelValues(reason))
	}
	return 0
}
