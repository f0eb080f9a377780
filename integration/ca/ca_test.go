package ca_test

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var sleepID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")

// TestIssue is the happy path: a workload with a TokenRequest token for
// audience istio-ca gets a conformant X509-SVID over gRPC+TLS.
func TestIssue(t *testing.T) {
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, "default", "sleep")
	c := harness.StartCA(t, api)
	conn := c.Dial(t)
	token := api.Token(t, "default", "sleep", []string{"istio-ca"}, time.Hour)
	lints := zlintRegistry(t)
	root := parseChain(t, []string{string(c.RootPEM)})[0]

	tests := []struct {
		name    string
		key     keyGen
		ttl     time.Duration
		wantTTL time.Duration
		rsa     bool
	}{
		{name: "P-256 default TTL", key: ecKey(elliptic.P256()), wantTTL: time.Hour},
		{name: "P-384 asked TTL", key: ecKey(elliptic.P384()), ttl: 2 * time.Hour, wantTTL: 2 * time.Hour},
		{name: "RSA-2048 clamped TTL", key: rsaKey(2048), ttl: 48 * time.Hour, wantTTL: 24 * time.Hour, rsa: true},
		{name: "RSA-3072", key: rsaKey(3072), ttl: 30 * time.Minute, wantTTL: 30 * time.Minute, rsa: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key(t)
			var resp interface{ GetCertChain() []string }
			delta := metricDelta(t, c, func() {
				r, err := createCertificate(t, conn, token, csrPEM(t, key, []string{sleepID.String()}, nil), tt.ttl)
				if err != nil {
					t.Fatalf("CreateCertificate: %v", err)
				}
				resp = r
			})
			if got := delta("castellan_ca_certificates_issued_total"); got != 1 {
				t.Errorf("castellan_ca_certificates_issued_total rose by %v, want 1", got)
			}
			chain := resp.GetCertChain()
			certs := parseChain(t, chain)
			// Istio's order: leaf first, root last.
			if last := certs[len(certs)-1]; !last.Equal(root) {
				t.Errorf("last certificate of the chain is %q, want the root %q", last.Subject, root.Subject)
			}
			verifySVID(t, chain, key, c.RootPEM, sleepID)
			leaf := certs[0]
			checkLeaf(t, leaf, key, tt.rsa, tt.wantTTL)
			for i, cert := range certs {
				what := "leaf"
				if i > 0 {
					what = fmt.Sprintf("chain[%d] %s", i, cert.Subject)
				}
				lintCert(t, lints, what, cert.Raw)
			}
		})
	}

	t.Run("TokenReview load does not grow with CSR load", func(t *testing.T) {
		api.CreateServiceAccount(t, "default", "busy")
		busy := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/busy")
		token := api.Token(t, "default", "busy", []string{"istio-ca"}, time.Hour)
		key := ecKey(elliptic.P256())(t)
		csr := csrPEM(t, key, []string{busy.String()}, nil)
		const n = 40
		delta := metricDelta(t, c, func() {
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					resp, err := createCertificate(t, conn, token, csr, 0)
					if err != nil {
						t.Errorf("CreateCertificate: %v", err)
						return
					}
					verifySVID(t, resp.GetCertChain(), key, c.RootPEM, busy)
				})
			}
			wg.Wait()
		})
		if got := delta("castellan_tokenreviews_total"); got != 1 {
			t.Errorf("%v TokenReviews for %d concurrent CSRs with one token, want 1", got, n)
		}
		if got := delta("castellan_ca_certificates_issued_total"); got != n {
			t.Errorf("%v certificates issued, want %d", got, n)
		}
	})

	t.Run("bundle endpoints", func(t *testing.T) {
		pemBundle := httpGet(t, "http://"+c.HTTPAddr+"/bundle")
		if !bytes.Equal(pemBundle, c.RootPEM) {
			t.Errorf("GET /bundle differs from %s", c.RootFile)
		}
		doc := httpGet(t, "http://"+c.HTTPAddr+"/bundle.spiffe")
		b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), doc)
		if err != nil {
			t.Fatalf("GET /bundle.spiffe: %v", err)
		}
		if !slices.ContainsFunc(b.X509Authorities(), root.Equal) {
			t.Error("GET /bundle.spiffe does not hold the root")
		}
	})
}

// checkLeaf checks the X509-SVID profile of the issue on the leaf.
func checkLeaf(t *testing.T, leaf *x509.Certificate, key crypto.Signer, isRSA bool, wantTTL time.Duration) {
	t.Helper()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != sleepID.String() {
		t.Errorf("URI SANs = %v, want exactly %s", leaf.URIs, sleepID)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has other SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if len(leaf.Subject.ToRDNSequence()) == 0 {
		critical := false
		for _, ext := range leaf.Extensions {
			if ext.Id.Equal([]int{2, 5, 29, 17}) {
				critical = ext.Critical
			}
		}
		if !critical {
			t.Error("empty Subject without a critical SAN extension")
		}
	}
	wantKU := x509.KeyUsageDigitalSignature
	if isRSA {
		wantKU |= x509.KeyUsageKeyEncipherment
	}
	if leaf.KeyUsage != wantKU {
		t.Errorf("key usage = %b, want %b", leaf.KeyUsage, wantKU)
	}
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal([]int{2, 5, 29, 15}) && !ext.Critical {
			t.Error("key usage is not critical")
		}
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || len(leaf.ExtKeyUsage) != 2 {
		t.Errorf("extended key usage = %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if len(leaf.SubjectKeyId) == 0 || len(leaf.AuthorityKeyId) == 0 {
		t.Error("leaf lacks SKID or AKID")
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() < 64-8 {
		t.Errorf("serial %x is too short to hold 64 random bits", leaf.SerialNumber)
	}
	if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Error("leaf key is not the CSR's key")
	}
	now := time.Now()
	if !leaf.NotBefore.Before(now.Add(-10 * time.Second)) {
		t.Errorf("NotBefore %v is not backdated", leaf.NotBefore)
	}
	if skew := now.Sub(leaf.NotBefore); skew > 10*time.Minute {
		t.Errorf("NotBefore %v is backdated by %v", leaf.NotBefore, skew)
	}
	// The lifetime is the one asked for, counted from issuance or from the
	// backdated NotBefore.
	backdate := now.Sub(leaf.NotBefore)
	if got := leaf.NotAfter.Sub(now); got < wantTTL-backdate-time.Minute || got > wantTTL+time.Minute {
		t.Errorf("leaf is valid for %v from now (NotBefore %v ago), want %v", got.Round(time.Second), backdate.Round(time.Second), wantTTL)
	}
}

// TestRejections sends every kind of bad request: each gets its gRPC code,
// no certificate, and is counted in the CA's metrics.
func TestRejections(t *testing.T) {
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, "default", "sleep")
	goneToken, strangerToken := refusedTokens(t, api)
	c := harness.StartCA(t, api)
	conn := c.Dial(t)
	good := api.Token(t, "default", "sleep", []string{"istio-ca"}, time.Hour)
	p256 := ecKey(elliptic.P256())(t)
	goodCSR := csrPEM(t, p256, []string{sleepID.String()}, nil)

	badSig := func() string {
		der, _ := pemDecode(goodCSR)
		der[len(der)-3] ^= 0xff // inside the signature
		return pemEncode("CERTIFICATE REQUEST", der)
	}()

	const (
		authFailures = "castellan_ca_auth_failures_total"
		rejected     = "castellan_ca_csr_rejected_total"
	)
	tests := []struct {
		name   string
		token  string
		csr    string
		ttl    time.Duration
		code   codes.Code
		metric string
		reason string
		msg    string // a word the message must hold, case-insensitive
	}{
		{name: "wrong audience", token: api.Token(t, "default", "sleep", []string{"kubernetes"}, time.Hour), csr: goodCSR,
			code: codes.Unauthenticated, metric: authFailures, reason: "invalid_token", msg: "audience"},
		{name: "expired token", token: api.SignToken(t, "default", "sleep", []string{"istio-ca"}, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)), csr: goodCSR,
			code: codes.Unauthenticated, metric: authFailures, reason: "invalid_token", msg: "expired"},
		{name: "deleted service account", token: goneToken, csr: csrPEM(t, p256, []string{"spiffe://cluster.local/ns/shop/sa/gone"}, nil),
			code: codes.Unauthenticated, metric: authFailures, reason: "invalid_token", msg: "token"},
		{name: "token signed by a stranger", token: strangerToken, csr: goodCSR,
			code: codes.Unauthenticated, metric: authFailures, reason: "invalid_token", msg: "token"},
		{name: "no token", csr: goodCSR,
			code: codes.Unauthenticated, metric: authFailures, reason: "no_token", msg: "authorization"},
		{name: "garbage token", token: "garbage", csr: goodCSR,
			code: codes.Unauthenticated, metric: authFailures, reason: "malformed_token", msg: "token"},
		{name: "CSR naming another SPIFFE ID", token: good, csr: csrPEM(t, p256, []string{"spiffe://cluster.local/ns/default/sa/admin"}, nil),
			code: codes.PermissionDenied, metric: rejected, reason: "identity_mismatch", msg: "spiffe://cluster.local/ns/default/sa/admin"},
		{name: "CSR naming another trust domain", token: good, csr: csrPEM(t, p256, []string{"spiffe://evil.example/ns/default/sa/sleep"}, nil),
			code: codes.PermissionDenied, metric: rejected, reason: "identity_mismatch", msg: "evil.example"},
		{name: "CSR with a DNS SAN", token: good, csr: csrPEM(t, p256, []string{sleepID.String()}, []string{"sleep.default.svc"}),
			code: codes.InvalidArgument, metric: rejected, reason: "forbidden_san", msg: "DNS"},
		{name: "CSR with a bad signature", token: good, csr: badSig,
			code: codes.InvalidArgument, metric: rejected, reason: "bad_signature", msg: "signature"},
		{name: "RSA-1024", token: good, csr: csrPEM(t, rsaKey(1024)(t), []string{sleepID.String()}, nil),
			code: codes.InvalidArgument, metric: rejected, reason: "unsupported_key", msg: "1024"},
		{name: "P-521", token: good, csr: csrPEM(t, ecKey(elliptic.P521())(t), []string{sleepID.String()}, nil),
			code: codes.InvalidArgument, metric: rejected, reason: "unsupported_key", msg: "P-521"},
		{name: "Ed25519", token: good, csr: csrPEM(t, ed25519Key(t), []string{sleepID.String()}, nil),
			code: codes.InvalidArgument, metric: rejected, reason: "unsupported_key", msg: "key"},
		{name: "garbage PEM", token: good, csr: "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n",
			code: codes.InvalidArgument, metric: rejected, reason: "malformed_csr", msg: "CSR"},
		{name: "not PEM at all", token: good, csr: "hello",
			code: codes.InvalidArgument, metric: rejected, reason: "malformed_csr", msg: "PEM"},
		{name: "negative TTL", token: good, csr: goodCSR, ttl: -time.Hour,
			code: codes.InvalidArgument, metric: rejected, reason: "invalid_ttl", msg: "validity"},
		{name: "oversized request", token: good, csr: goodCSR + strings.Repeat("A", 70<<10),
			code: codes.ResourceExhausted, metric: rejected, reason: "oversized_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp interface{ GetCertChain() []string }
			var err error
			before := c.Metrics(t)
			delta := metricDelta(t, c, func() {
				resp, err = createCertificate(t, conn, tt.token, tt.csr, tt.ttl)
			})
			if err == nil {
				t.Fatalf("CreateCertificate succeeded, want %s", tt.code)
			}
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Errorf("code = %s, want %s (%s)", st.Code(), tt.code, st.Message())
			}
			if tt.msg != "" && !strings.Contains(strings.ToLower(st.Message()), strings.ToLower(tt.msg)) {
				t.Errorf("message %q does not say %q", st.Message(), tt.msg)
			}
			if tt.token != "" && len(tt.token) > 20 && strings.Contains(st.Message(), tt.token) {
				t.Error("the error message echoes the token")
			}
			if resp != nil && len(resp.GetCertChain()) > 0 {
				t.Error("a certificate came back with the error")
			}
			if got := risen(t, c, before, tt.metric, "reason", tt.reason); got != 1 {
				t.Errorf("%s{reason=%q} rose by %v, want 1", tt.metric, tt.reason, got)
			}
			if got := delta("castellan_ca_certificates_issued_total"); got != 0 {
				t.Errorf("castellan_ca_certificates_issued_total rose by %v on an error path", got)
			}
			t.Logf("%s: %s", st.Code(), st.Message())
		})
	}

	// The CA kept serving through all of that.
	resp, err := createCertificate(t, conn, good, goodCSR, 0)
	if err != nil {
		t.Fatalf("CreateCertificate after the rejections: %v", err)
	}
	verifySVID(t, resp.GetCertChain(), p256, c.RootPEM, sleepID)
}

// TestRestart restarts the CA on its data directory: the root is the same,
// SVIDs issued before still verify, and issuance goes on.
func TestRestart(t *testing.T) {
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, "default", "sleep")
	c := harness.StartCA(t, api)
	token := api.Token(t, "default", "sleep", []string{"istio-ca"}, time.Hour)
	key := ecKey(elliptic.P256())(t)
	csr := csrPEM(t, key, []string{sleepID.String()}, nil)
	resp, err := createCertificate(t, c.Dial(t), token, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	before := verifySVID(t, resp.GetCertChain(), key, c.RootPEM, sleepID)
	rootBefore := c.RootPEM

	c.Restart(t)

	if !bytes.Equal(c.RootPEM, rootBefore) {
		t.Fatal("the root changed across a restart")
	}
	if got := httpGet(t, "http://"+c.HTTPAddr+"/bundle"); !bytes.Equal(got, rootBefore) {
		t.Fatal("GET /bundle changed across a restart")
	}
	// The SVID from before the restart verifies against the bundle served
	// after it.
	verifySVID(t, resp.GetCertChain(), key, c.RootPEM, sleepID)
	resp, err = createCertificate(t, c.Dial(t), token, csr, 0)
	if err != nil {
		t.Fatalf("CreateCertificate after restart: %v", err)
	}
	after := verifySVID(t, resp.GetCertChain(), key, c.RootPEM, sleepID)
	if after.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
		t.Error("same serial before and after the restart")
	}
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}
