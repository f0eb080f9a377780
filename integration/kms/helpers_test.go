// Package kms_test runs the CA with its key in real key stores (a file,
// SoftHSM2 over PKCS#11, Vault Transit) and under Vault's PKI engine as the
// upstream root, against a real Vault server and the in-process Kubernetes
// API server.
package kms_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/ca/upstream"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/vault"
	"github.com/castellan-mesh/castellan/kms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const softHSMModule = harness.SoftHSMModule

// softHSMToken creates a SoftHSM2 token labelled label (see
// harness.SoftHSMToken).
func softHSMToken(t testing.TB, label string) { harness.SoftHSMToken(t, label, "root") }

func softHSMURI(object string) string {
	return "pkcs11:token=castellan;object=" + object + "?module-path=" + softHSMModule + "&pin-value=1234"
}

// workload is a service account that asks the CA for SVIDs.
type workload struct {
	ns, sa string
	// token returns a bearer token the CA accepts for ns/sa.
	token func(t testing.TB) string
}

// newWorkload creates the service account ns/sa in api; its tokens come
// from TokenRequest and the CA checks them with TokenReview.
func newWorkload(t testing.TB, api *harness.APIServer, ns, sa string) *workload {
	api.CreateServiceAccount(t, ns, sa)
	return &workload{ns: ns, sa: sa, token: func(t testing.TB) string {
		return api.Token(t, ns, sa, []string{harness.DefaultAudience}, time.Hour)
	}}
}

// offlineIssuer mints workload tokens that the CA checks offline against
// a JWKS file (the --jwt-issuer/--jwks-file authenticator), for tests
// that need no Kubernetes API server.
type offlineIssuer struct {
	m    *authn.Minter
	jwks string
}

func newOfflineIssuer(t testing.TB) *offlineIssuer {
	t.Helper()
	m, err := authn.NewMinter("https://castellan.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := m.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	return &offlineIssuer{m: m, jwks: jwks}
}

// option makes the CA authenticate with the issuer's keys, behind the
// same cache as in production.
func (o *offlineIssuer) option() harness.CAOption {
	return harness.WithAuthenticator(func(t testing.TB, reg prometheus.Registerer) authn.Authenticator {
		j, err := authn.NewJWT(context.Background(), authn.JWTConfig{Issuer: o.m.Issuer(), Audiences: []string{harness.DefaultAudience}, JWKSFile: o.jwks})
		if err != nil {
			t.Fatal(err)
		}
		cache, err := authn.NewCache(j, authn.CacheConfig{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		return cache
	})
}

func (o *offlineIssuer) mint(t testing.TB, ns, sa string) string {
	t.Helper()
	tok, err := o.m.Mint(ns, sa, []string{harness.DefaultAudience}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (o *offlineIssuer) workload(ns, sa string) *workload {
	return &workload{ns: ns, sa: sa, token: func(t testing.TB) string { return o.mint(t, ns, sa) }}
}

// svid is an issued SVID, verified.
type svid struct {
	chain []*x509.Certificate // leaf first, root last
	id    spiffeid.ID
}

func (s *svid) leaf() *x509.Certificate { return s.chain[0] }

// fetchSVID asks c for an SVID over gRPC+TLS, then verifies it with
// go-spiffe against the bundle c serves at /bundle.
func (w *workload) fetchSVID(t testing.TB, c *harness.CA) *svid {
	t.Helper()
	s, err := w.tryFetchSVID(t, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (w *workload) tryFetchSVID(t testing.TB, c *harness.CA) (*svid, error) {
	t.Helper()
	return requestSVID(t, endpointOf(t, c), w.token(t), w.ns, w.sa)
}

// caEndpoint is where a CA serves, and what verifies it.
type caEndpoint struct {
	grpcAddr, httpAddr, serverName string
	trustDomain                    spiffeid.TrustDomain
	roots                          *x509.CertPool
}

func endpointOf(t testing.TB, c *harness.CA) caEndpoint {
	return caEndpoint{
		grpcAddr: c.GRPCAddr, httpAddr: c.HTTPAddr, serverName: c.ServerName,
		trustDomain: spiffeid.RequireTrustDomainFromString(c.TrustDomain), roots: c.Roots(t),
	}
}

// requestSVID asks the CA at ep for an SVID for ns/sa with token over
// gRPC+TLS, then verifies it with go-spiffe against the bundle the CA
// serves at /bundle.
func requestSVID(t testing.TB, ep caEndpoint, token, ns, sa string) (*svid, error) {
	t.Helper()
	id := spiffeid.RequireFromPathf(ep.trustDomain, "/ns/%s/sa/%s", ns, sa)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(id.String())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, err
	}
	cl, err := caclient.New(caclient.Config{Addr: ep.grpcAddr, Roots: ep.roots, ServerName: ep.serverName})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	chainPEM, err := cl.CreateCertificate(ctx, token, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0)
	if err != nil {
		return nil, fmt.Errorf("CreateCertificate: %w", err)
	}
	var chain []*x509.Certificate
	var raw [][]byte
	for _, p := range chainPEM {
		cs, err := pemfile.ParseCertificates([]byte(p))
		if err != nil {
			return nil, err
		}
		for _, c := range cs {
			chain = append(chain, c)
			raw = append(raw, c.Raw)
		}
	}
	bundle, err := x509bundle.Parse(ep.trustDomain, fetchBundle(t, ep.httpAddr))
	if err != nil {
		return nil, fmt.Errorf("parsing /bundle: %w", err)
	}
	got, _, err := x509svid.ParseAndVerify(raw, bundle)
	if err != nil {
		return nil, fmt.Errorf("go-spiffe does not verify the SVID against /bundle: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("SVID names %s, want %s", got, id)
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return nil, fmt.Errorf("the SVID is not for the CSR's key")
	}
	return &svid{chain: chain, id: got}, nil
}

// fetchBundle returns the PEM trust bundle served at /bundle on httpAddr.
func fetchBundle(t testing.TB, httpAddr string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/bundle")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /bundle: %s %v", resp.Status, err)
	}
	return b
}

func readyz(t testing.TB, c *harness.CA) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + c.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// keyedCA is what a CA run holds open: its key and, with an upstream, its
// Source. The key is closed before the next run opens it again, as a
// process restart would.
type keyedCA struct {
	mu     sync.Mutex
	key    *kms.Key
	source *upstream.Source
	vault  *vault.Client
}

// caSetup says where a test CA keeps its key and who signs it.
type caSetup struct {
	// keyURI is the CA key (created on first start).
	keyURI string
	// vaultAuth, if set, makes a Vault client for vault-transit keys and
	// the upstream.
	vaultAddr string
	vaultAuth vault.Auth
	// upstream, if set, has Vault's PKI engine sign the intermediate.
	upstream bool
	// upstreamCfg adjusts the upstream configuration.
	upstreamCfg func(*upstream.Config)
	// transitBatch is kms.Config.TransitMaxBatch.
	transitBatch int
}

// option returns the harness option that opens the key (and upstream) on
// every start of the CA.
func (s caSetup) option(t testing.TB, held *keyedCA) harness.CAOption {
	return harness.WithMaterial(func(t testing.TB, dataDir string, cfg *server.Config) {
		held.mu.Lock()
		defer held.mu.Unlock()
		if held.key != nil {
			held.key.Close()
			held.key = nil
		}
		ctx := context.Background()
		var vc *vault.Client
		if s.vaultAuth != nil {
			var err error
			vc, err = vault.New(vault.Config{Address: s.vaultAddr, Auth: s.vaultAuth, Logger: cfg.Logger, Registerer: cfg.Registerer})
			if err != nil {
				t.Fatal(err)
			}
		}
		key, _, err := kms.OpenOrCreate(ctx, s.keyURI, kms.ECDSAP256, kms.Config{
			Vault: vc, Logger: cfg.Logger, Registerer: cfg.Registerer, TransitMaxBatch: s.transitBatch,
		})
		if err != nil {
			t.Fatalf("opening the CA key: %v", err)
		}
		held.key, held.vault = key, vc
		if !s.upstream {
			harness.UseDataDir(t, cfg, material.Config{Dir: dataDir, Signer: key})
			return
		}
		ucfg := upstream.Config{
			Upstream:    &upstream.VaultPKI{Client: vc},
			Signer:      key,
			TrustDomain: cfg.TrustDomain,
			DataDir:     dataDir,
			TTL:         time.Hour,
			Logger:      cfg.Logger,
			Registerer:  cfg.Registerer,
		}
		if s.upstreamCfg != nil {
			s.upstreamCfg(&ucfg)
		}
		src, err := upstream.New(ctx, ucfg)
		if err != nil {
			t.Fatalf("upstream: %v", err)
		}
		held.source = src
		cfg.Source, cfg.Rotation = src, src.Rotation()
		cfg.Runners = append(cfg.Runners, src.Run)
	})
}

func (h *keyedCA) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.key != nil {
		h.key.Close()
		h.key = nil
	}
}

// startKeyedCA starts a CA with the key and upstream of setup. It checks
// tokens with TokenReview against api, unless opts replace the
// authenticator (api may then be nil).
func startKeyedCA(t testing.TB, api *harness.APIServer, setup caSetup, opts ...harness.CAOption) (*harness.CA, *keyedCA) {
	t.Helper()
	held := &keyedCA{}
	// Registered first, so it runs after the CA has stopped.
	t.Cleanup(held.close)
	c := harness.StartCA(t, api, append([]harness.CAOption{setup.option(t, held)}, opts...)...)
	return c, held
}
