package agent_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/castellan-mesh/castellan/internal/testrun"
	"github.com/castellan-mesh/castellan/sds"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
	"github.com/castellan-mesh/castellan/sds/sdsclient/sdsclienttest"
)

const (
	namespace   = "shop"
	account     = "checkout"
	wantID      = "spiffe://cluster.local/ns/shop/sa/checkout"
	waitTimeout = 30 * time.Second
	quiet       = 500 * time.Millisecond
)

// stack is the in-process API server, the real CA using TokenReview
// against it, and a projected-style token minted by TokenRequest.
type stack struct {
	api       *harness.APIServer
	ca        *harness.CA
	tokenFile string
}

func startStack(t *testing.T) *stack {
	t.Helper()
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, namespace, account)
	ca := harness.StartCA(t, api)
	tok := api.Token(t, namespace, account, []string{harness.DefaultAudience}, time.Hour)
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return &stack{api: api, ca: ca, tokenFile: tokenFile}
}

// node is a running agent.
type node struct {
	*agent.Agent
	t      *testing.T
	cfg    agent.Config
	reg    *prometheus.Registry
	client *sdsclient.Client
}

func (s *stack) startAgent(t *testing.T, edit func(*agent.Config)) *node {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	reg := prometheus.NewRegistry()
	cfg := agent.Config{
		CAAddr:           s.ca.GRPCAddr,
		CAServerName:     s.ca.ServerName,
		RootCertFile:     s.ca.RootFile,
		TokenFile:        s.tokenFile,
		SDSSocket:        filepath.Join(dir, "workload-spiffe-uds", "socket"),
		OutputDir:        filepath.Join(dir, "certs"),
		HTTPAddr:         "127.0.0.1:0",
		InitialBackoff:   100 * time.Millisecond,
		MaxBackoff:       500 * time.Millisecond,
		RootPollInterval: 100 * time.Millisecond,
		Logger:           slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
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
	c, err := sdsclient.New(cfg.SDSSocket, sdsclient.WithNode(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	n := &node{Agent: a, t: t, cfg: cfg, reg: reg, client: c}
	harness.WaitFor(t, waitTimeout, "the agent's first SVID", func() bool { ok, _ := a.Ready(); return ok })
	return n
}

// rotate makes the agent obtain a new SVID from the CA and returns its
// leaf.
func (n *node) rotate() *x509.Certificate {
	n.t.Helper()
	before, _ := n.Store().Load()
	n.RotateNow()
	var leaf *x509.Certificate
	harness.WaitFor(n.t, waitTimeout, "a rotation", func() bool {
		snap, _ := n.Store().Load()
		if snap.SVID == nil || snap.SVID.Version == before.SVID.Version {
			return false
		}
		leaf = snap.SVID.X509.Certificates[0]
		return true
	})
	return leaf
}

func (n *node) current() *x509.Certificate {
	snap, _ := n.Store().Load()
	return snap.SVID.X509.Certificates[0]
}

// metric sums the samples of metric name with a label of value label (all
// of them when label is empty).
func (n *node) metric(name, label string) float64 {
	n.t.Helper()
	return testmetric.Sum(n.t, n.reg, name, label)
}

// waitMetric waits until the agent has counted what the test caused.
func (n *node) waitMetric(name, label string, want float64) {
	n.t.Helper()
	harness.WaitFor(n.t, waitTimeout, fmt.Sprintf("%s{%s} >= %v", name, label, want), func() bool { return n.metric(name, label) >= want })
}

// sotw and delta are SDS streams read in the background.
type (
	sotw  = sdsclienttest.SotW
	delta = sdsclienttest.Delta
)

func (n *node) openSotW(t *testing.T) *sotw {
	t.Helper()
	st := sdsclienttest.OpenSotW(t, n.client)
	st.Timeout, st.Quiet = waitTimeout, quiet
	return st
}

func (n *node) openDelta(t *testing.T) *delta {
	t.Helper()
	st := sdsclienttest.OpenDelta(t, n.client, nil)
	st.Timeout, st.Quiet = waitTimeout, quiet
	return st
}

// leafOf checks a "default" secret (a chain that verifies against the
// CA's root, for the workload's SPIFFE ID) and returns its leaf and key.
func leafOf(t *testing.T, s *stack, secret *tlsv3.Secret) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	if secret == nil {
		t.Fatal("no default secret")
	}
	chain, key, err := sdsclient.TLSCertificate(secret)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	bundle, err := x509bundle.Parse(td, s.ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		t.Fatalf("SDS certificate does not verify against the CA's root: %v", err)
	}
	if id.String() != wantID {
		t.Fatalf("SVID for %s, want %s", id, wantID)
	}
	return chain[0], key
}

// TestAgentEndToEnd runs the agent against the real CA, which checks the
// agent's TokenRequest token with TokenReview on the in-process API server.
func TestAgentEndToEnd(t *testing.T) {
	s := startStack(t)
	n := s.startAgent(t, nil)

	t.Run("sotw", func(t *testing.T) {
		n.t = t
		sotwScenarios(t, s, n)
	})
	t.Run("delta", func(t *testing.T) {
		n.t = t
		deltaScenarios(t, s, n)
	})
	t.Run("workload API", func(t *testing.T) {
		n.t = t
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		src, err := spiffeapi.NewX509Source(ctx, spiffeapi.WithClientOptions(spiffeapi.WithAddr("unix://"+n.cfg.SDSSocket)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		id, _, err := x509svid.Verify(svid.Certificates, src)
		if err != nil {
			t.Fatalf("x509svid.Verify against the bundle from the Workload API: %v", err)
		}
		if id.String() != wantID {
			t.Fatalf("Workload API SVID for %s, want %s", id, wantID)
		}
		if !bytes.Equal(svid.Certificates[0].Raw, n.current().Raw) {
			t.Fatal("Workload API and the agent disagree on the current SVID")
		}
		// A rotation reaches the open source.
		leaf := n.rotate()
		for !bytes.Equal(svid.Certificates[0].Raw, leaf.Raw) {
			if err := src.WaitUntilUpdated(ctx); err != nil {
				t.Fatalf("rotation never reached the X509Source: %v", err)
			}
			if svid, err = src.GetX509SVID(); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("token file rotated by the kubelet", func(t *testing.T) {
		n.t = t
		// A fresh TokenRequest token replaces the file; the next CA call
		// reads it.
		tok := s.api.Token(t, namespace, account, []string{harness.DefaultAudience}, 2*time.Hour)
		if err := os.WriteFile(s.tokenFile+".new", []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(s.tokenFile+".new", s.tokenFile); err != nil {
			t.Fatal(err)
		}
		n.rotate()
		// A token the API server did not issue is refused by TokenReview,
		// and the agent keeps serving what it has.
		before := n.current()
		if err := os.WriteFile(s.tokenFile, []byte(tok[:len(tok)-4]+"AAAA"), 0o600); err != nil {
			t.Fatal(err)
		}
		failures := n.metric("castellan_agent_ca_request_failures_total", "unauthenticated")
		n.RotateNow()
		n.waitMetric("castellan_agent_ca_request_failures_total", "unauthenticated", failures+1)
		if !bytes.Equal(n.current().Raw, before.Raw) {
			t.Fatal("certificate changed after a refused token")
		}
		if err := os.WriteFile(s.tokenFile, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		harness.WaitFor(t, waitTimeout, "recovery with a good token", func() bool { return !bytes.Equal(n.current().Raw, before.Raw) })
	})
	t.Run("CA outage", func(t *testing.T) {
		n.t = t
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		before := n.current()
		s.ca.Stop()
		failures := n.metric("castellan_agent_ca_request_failures_total", "unavailable")
		n.RotateNow()
		n.waitMetric("castellan_agent_ca_request_failures_total", "unavailable", failures+2)
		// The agent keeps serving the valid certificate.
		secrets, err := n.client.Fetch(ctx, sds.DefaultSecretName)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := leafOf(t, s, secrets[sds.DefaultSecretName])
		if !bytes.Equal(leaf.Raw, before.Raw) {
			t.Fatal("certificate changed while the CA was down")
		}
		if ok, msg := n.Ready(); !ok {
			t.Fatalf("agent not ready during the outage: %s", msg)
		}
		// The CA comes back; the agent recovers and rotates.
		s.ca.Restart(t)
		harness.WaitFor(t, waitTimeout, "a new certificate after the CA came back", func() bool {
			return !bytes.Equal(n.current().Raw, before.Raw)
		})
		secrets, err = n.client.Fetch(ctx, sds.DefaultSecretName)
		if err != nil {
			t.Fatal(err)
		}
		if leaf, _ := leafOf(t, s, secrets[sds.DefaultSecretName]); bytes.Equal(leaf.Raw, before.Raw) {
			t.Fatal("SDS still serves the certificate from before the outage")
		}
		if got := n.metric("castellan_agent_ca_consecutive_failures", ""); got != 0 {
			t.Fatalf("castellan_agent_ca_consecutive_failures = %v after recovery", got)
		}
	})
}

// TestShortTTLRotation: with a short TTL, the agent pushes a new
// certificate with a new key before the old one expires, over both SDS
// forms.
func TestShortTTLRotation(t *testing.T) {
	s := startStack(t)
	n := s.startAgent(t, func(c *agent.Config) { c.TTL = 6 * time.Second })

	st := n.openSotW(t)
	st.Subscribe(sds.DefaultSecretName)
	d := n.openDelta(t)
	d.Subscribe(sds.DefaultSecretName)

	first := st.AwaitACK()
	leaf1, key1 := leafOf(t, s, first.Secrets[sds.DefaultSecretName])
	dfirst := d.AwaitACK()
	dleaf1, _ := leafOf(t, s, dfirst.Secrets[sds.DefaultSecretName])
	if !bytes.Equal(leaf1.Raw, dleaf1.Raw) {
		t.Fatal("the two streams got different certificates")
	}

	second := st.AwaitACK()
	received := time.Now()
	leaf2, key2 := leafOf(t, s, second.Secrets[sds.DefaultSecretName])
	if !received.Before(leaf1.NotAfter) {
		t.Fatalf("rotation arrived at %s, after the old certificate expired at %s", received, leaf1.NotAfter)
	}
	if key2.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key1.Public()) {
		t.Fatal("the rotation reused the private key")
	}
	if bytes.Equal(leaf1.Raw, leaf2.Raw) {
		t.Fatal("the rotation reused the certificate")
	}
	dsecond := d.AwaitACK()
	dleaf2, _ := leafOf(t, s, dsecond.Secrets[sds.DefaultSecretName])
	if !time.Now().Before(dleaf1.NotAfter) {
		t.Fatal("delta rotation arrived after expiry")
	}
	if bytes.Equal(dleaf2.Raw, dleaf1.Raw) {
		t.Fatal("delta stream got no new certificate")
	}
}

// sharedScenarios runs the scenarios that go the same over both SDS forms,
// on streams opened by open, whose castellan_sds_* metrics carry label.
// sendStale sends a NACK of r after a later response was sent, so with a
// stale nonce.
func sharedScenarios[R any, S sdsclienttest.Stream[R]](t *testing.T, s *stack, n *node, label string, open func(*testing.T) S, sendStale func(st S, r R) error) {
	t.Run("ACK", func(t *testing.T) {
		n.t = t
		st := open(t)
		st.Subscribe(sds.DefaultSecretName)
		acks := n.metric("castellan_sds_acks_total", label)
		st.AwaitACK()
		n.waitMetric("castellan_sds_acks_total", label, acks+1)
		st.None()
		leaf := n.rotate()
		if got, _ := leafOf(t, s, st.Secret(st.AwaitACK(), sds.DefaultSecretName)); !bytes.Equal(got.Raw, leaf.Raw) {
			t.Fatal("rotation not pushed")
		}
	})
	t.Run("NACK is not answered with a resend", func(t *testing.T) {
		n.t = t
		st := open(t)
		st.Subscribe(sds.DefaultSecretName)
		nacks := n.metric("castellan_sds_nacks_total", label)
		if err := st.NACK(st.Await(), "pretend the key does not load"); err != nil {
			t.Fatal(err)
		}
		n.waitMetric("castellan_sds_nacks_total", label, nacks+1)
		st.None()
		leaf := n.rotate()
		if got, _ := leafOf(t, s, st.Secret(st.AwaitACK(), sds.DefaultSecretName)); !bytes.Equal(got.Raw, leaf.Raw) {
			t.Fatal("the next rotation was not pushed after a NACK")
		}
	})
	t.Run("parallel streams", func(t *testing.T) {
		n.t = t
		const count = 50
		streams := make([]S, count)
		for i := range streams {
			streams[i] = open(t)
			streams[i].Subscribe(sds.DefaultSecretName)
		}
		for _, st := range streams {
			st.AwaitACK()
		}
		leaf := n.rotate()
		for _, st := range streams {
			if got, _ := leafOf(t, s, st.Secret(st.AwaitACK(), sds.DefaultSecretName)); !bytes.Equal(got.Raw, leaf.Raw) {
				t.Fatal("a stream did not get the rotation")
			}
		}
	})
	t.Run("stale nonce is ignored", func(t *testing.T) {
		n.t = t
		st := open(t)
		st.Subscribe(sds.DefaultSecretName)
		acks := n.metric("castellan_sds_acks_total", label)
		r1 := st.AwaitACK()
		n.waitMetric("castellan_sds_acks_total", label, acks+1)
		n.rotate()
		r2 := st.Await()
		stale := n.metric("castellan_sds_stale_requests_total", label)
		nacks := n.metric("castellan_sds_nacks_total", label)
		if err := sendStale(st, r1); err != nil {
			t.Fatal(err)
		}
		n.waitMetric("castellan_sds_stale_requests_total", label, stale+1)
		st.None()
		if n.metric("castellan_sds_nacks_total", label) != nacks {
			t.Fatal("a stale NACK was counted")
		}
		st.ACK(r2)
		leaf := n.rotate()
		r3 := st.AwaitACK()
		if st.Secret(r3, sds.RootCASecretName) != nil {
			t.Fatal("the stale request changed the subscription")
		}
		if got, _ := leafOf(t, s, st.Secret(r3, sds.DefaultSecretName)); !bytes.Equal(got.Raw, leaf.Raw) {
			t.Fatal("rotation not pushed")
		}
	})
}

// staleNACK is the NACK of r, sent on st after a later response: it also
// names another resource, which a stale request must not subscribe to.
func staleNACK(st *sotw, r *sdsclient.Response) error {
	return st.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo:   r.Version,
		ResourceNames: []string{sds.RootCASecretName},
		TypeUrl:       sds.SecretTypeURL,
		ResponseNonce: r.Nonce,
		ErrorDetail:   &rpcstatus.Status{Code: int32(codes.Internal), Message: "stale"},
	})
}

// staleDeltaNACK is the NACK of r, sent on d after a later response.
func staleDeltaNACK(d *delta, r *sdsclient.DeltaResponse) error {
	return d.Send(&discoveryv3.DeltaDiscoveryRequest{
		TypeUrl:       sds.SecretTypeURL,
		ResponseNonce: r.Nonce,
		ErrorDetail:   &rpcstatus.Status{Code: int32(codes.Internal), Message: "stale"},
	})
}

// sotwScenarios runs the state-of-the-world scenarios, those of
// sharedScenarios among them.
func sotwScenarios(t *testing.T, s *stack, n *node) {
	t.Run("first response", func(t *testing.T) {
		n.t = t
		st := n.openSotW(t)
		if err := st.Subscribe(sds.DefaultSecretName); err != nil {
			t.Fatal(err)
		}
		r := st.Await()
		if r.Version == "" || r.Nonce == "" || len(r.Secrets) != 1 {
			t.Fatalf("first response: version %q nonce %q, %d secrets", r.Version, r.Nonce, len(r.Secrets))
		}
		if leaf, _ := leafOf(t, s, r.Secrets[sds.DefaultSecretName]); !bytes.Equal(leaf.Raw, n.current().Raw) {
			t.Fatal("not the agent's current certificate")
		}
	})
	sharedScenarios(t, s, n, "sotw", n.openSotW, staleNACK)
	t.Run("unsubscribe", func(t *testing.T) {
		n.t = t
		st := n.openSotW(t)
		st.Subscribe(sds.DefaultSecretName)
		st.AwaitACK()
		acks := n.metric("castellan_sds_acks_total", "sotw")
		st.Subscribe()
		n.waitMetric("castellan_sds_acks_total", "sotw", acks+1)
		n.rotate()
		st.None()
		st.Subscribe(sds.DefaultSecretName)
		if got, _ := leafOf(t, s, st.AwaitACK().Secrets[sds.DefaultSecretName]); !bytes.Equal(got.Raw, n.current().Raw) {
			t.Fatal("re-subscribing did not return the current certificate")
		}
	})
	t.Run("two resources on one stream", func(t *testing.T) {
		n.t = t
		st := n.openSotW(t)
		st.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
		r := st.AwaitACK()
		leafOf(t, s, r.Secrets[sds.DefaultSecretName])
		roots, err := sdsclient.TrustedCA(r.Secrets[sds.RootCASecretName])
		if err != nil {
			t.Fatal(err)
		}
		if len(roots) == 0 || !bytes.Contains(s.ca.RootPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: roots[0].Raw})) {
			t.Fatal("ROOTCA is not the CA's root")
		}
		leaf := n.rotate()
		r = st.AwaitACK()
		if got, _ := leafOf(t, s, r.Secrets[sds.DefaultSecretName]); !bytes.Equal(got.Raw, leaf.Raw) || r.Secrets[sds.RootCASecretName] == nil {
			t.Fatal("state-of-the-world push lacks the new certificate or ROOTCA")
		}
	})
}

// deltaScenarios runs the delta scenarios, those of sharedScenarios among
// them.
func deltaScenarios(t *testing.T, s *stack, n *node) {
	t.Run("first response", func(t *testing.T) {
		n.t = t
		d := n.openDelta(t)
		d.Subscribe(sds.DefaultSecretName)
		r := d.Await()
		if r.Nonce == "" || r.Versions[sds.DefaultSecretName] == "" {
			t.Fatalf("first response: nonce %q, versions %v", r.Nonce, r.Versions)
		}
		if leaf, _ := leafOf(t, s, r.Secrets[sds.DefaultSecretName]); !bytes.Equal(leaf.Raw, n.current().Raw) {
			t.Fatal("not the agent's current certificate")
		}
	})
	sharedScenarios(t, s, n, "delta", n.openDelta, staleDeltaNACK)
	t.Run("unsubscribe", func(t *testing.T) {
		n.t = t
		d := n.openDelta(t)
		d.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
		d.AwaitACK()
		d.Unsubscribe(sds.DefaultSecretName)
		// An unknown name is answered with an error: a barrier showing the
		// unsubscribe was processed, and the stream stays usable.
		d.Subscribe("no-such-secret")
		if r := d.AwaitACK(); r.Errors["no-such-secret"] == nil {
			t.Fatal("no error for an unknown name")
		}
		n.rotate()
		d.None()
		d.Subscribe(sds.DefaultSecretName)
		if got, _ := leafOf(t, s, d.AwaitACK().Secrets[sds.DefaultSecretName]); !bytes.Equal(got.Raw, n.current().Raw) {
			t.Fatal("re-subscribing did not return the current certificate")
		}
	})
	t.Run("two resources on one stream", func(t *testing.T) {
		n.t = t
		d := n.openDelta(t)
		d.Subscribe(sds.DefaultSecretName, sds.RootCASecretName)
		r := d.AwaitACK()
		if len(r.Secrets) != 2 {
			t.Fatalf("got %d secrets, want 2", len(r.Secrets))
		}
		leaf := n.rotate()
		r = d.AwaitACK()
		if len(r.Secrets) != 1 {
			t.Fatalf("rotation sent %d secrets, want only default", len(r.Secrets))
		}
		if got, _ := leafOf(t, s, r.Secrets[sds.DefaultSecretName]); !bytes.Equal(got.Raw, leaf.Raw) {
			t.Fatal("rotation not pushed")
		}
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
