package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

// keyGen makes a key for a CSR.
type keyGen func(t testing.TB) crypto.Signer

func ecKey(curve elliptic.Curve) keyGen {
	return func(t testing.TB) crypto.Signer {
		t.Helper()
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}

func rsaKey(bits int) keyGen {
	return func(t testing.TB) crypto.Signer {
		t.Helper()
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}

func ed25519Key(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrPEM returns a PEM CSR for key with the given URI and DNS SANs, as
// Istio's agent makes them (the SPIFFE ID as the only URI SAN).
func csrPEM(t testing.TB, key crypto.Signer, uris []string, dnsNames []string) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{DNSNames: dnsNames}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("creating CSR: %v", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// createCertificate calls the CA as Istio's agent does: the token in the
// authorization metadata (none when token is empty).
func createCertificate(t testing.TB, conn *grpc.ClientConn, token, csr string, ttl time.Duration) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              csr,
		ValidityDuration: int64(ttl / time.Second),
	})
}

// parseChain parses a response chain, one PEM certificate per element.
func parseChain(t testing.TB, chain []string) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for i, p := range chain {
		rest := []byte(p)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatalf("chain element %d: %v", i, err)
			}
			certs = append(certs, c)
		}
	}
	if len(certs) == 0 {
		t.Fatal("empty certificate chain")
	}
	return certs
}

// verifySVID checks a response chain as a SPIFFE X509-SVID: go-spiffe
// parses it with its key and verifies it against the CA's bundle, and the
// SPIFFE ID is want.
func verifySVID(t testing.TB, chain []string, key crypto.Signer, rootPEM []byte, want spiffeid.ID) *x509svid.SVID {
	t.Helper()
	svid, err := x509svid.Parse([]byte(strings.Join(chain, "")), testpki.KeyPEM(t, key))
	if err != nil {
		t.Fatalf("x509svid.Parse: %v", err)
	}
	if svid.ID != want {
		t.Fatalf("SVID ID = %s, want %s", svid.ID, want)
	}
	roots, err := parsePEMCerts(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	bundle := x509bundle.FromX509Authorities(want.TrustDomain(), roots)
	id, _, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if id != want {
		t.Fatalf("verified ID = %s, want %s", id, want)
	}
	return svid
}

func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs, nil
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}

// zlintRegistry holds the RFC 5280, 5480, 3279 and Community lints; the
// CA/Browser Forum lints are for public web PKI and do not apply.
func zlintRegistry(t testing.TB) lint.Registry {
	t.Helper()
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{
		IncludeSources: lint.SourceList{lint.RFC5280, lint.RFC5480, lint.RFC3279, lint.Community},
	})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// lintCert runs zlint on der and fails on any warning, error or fatal.
func lintCert(t testing.TB, reg lint.Registry, what string, der []byte) {
	t.Helper()
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("%s: zcrypto cannot parse the certificate: %v", what, err)
	}
	rs := zlint.LintCertificateEx(c, reg)
	ran := 0
	for name, r := range rs.Results {
		switch r.Status {
		case lint.Warn, lint.Error, lint.Fatal:
			t.Errorf("%s: zlint %s: %s %s", what, name, r.Status, r.Details)
		case lint.Notice:
			t.Logf("%s: zlint notice %s: %s", what, name, r.Details)
		}
		if r.Status != lint.NA {
			ran++
		}
	}
	if ran == 0 {
		t.Errorf("%s: no zlint lint applied", what)
	}
	t.Logf("%s: %d zlint lints applied, no warning or error", what, ran)
}

// metricDelta scrapes the CA's metrics around f and returns a function
// giving the change of a series.
func metricDelta(t testing.TB, c *harness.CA, f func()) func(name string, labels ...string) float64 {
	t.Helper()
	before := c.Metrics(t)
	f()
	after := c.Metrics(t)
	return func(name string, labels ...string) float64 {
		return after.Value(name, labels...) - before.Value(name, labels...)
	}
}

// risen returns how much a counter has risen since before, re-reading it
// for up to 2s while it has not: gRPC counts a request its transport
// refuses for size just after the status has been sent.
func risen(t testing.TB, c *harness.CA, before harness.Metrics, name string, labels ...string) float64 {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		d := c.Metrics(t).Value(name, labels...) - before.Value(name, labels...)
		if d != 0 || time.Now().After(deadline) {
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pemDecode(s string) ([]byte, string) {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return nil, ""
	}
	return block.Bytes, block.Type
}

func pemEncode(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// refusedTokens returns two tokens for the audience istio-ca that the API
// server refuses: one of the service account shop/gone, deleted since, and
// one of default/sleep that names the server's issuer but is signed by
// another key.
func refusedTokens(t *testing.T, api *harness.APIServer) (gone, stranger string) {
	t.Helper()
	api.CreateServiceAccount(t, "shop", "gone")
	gone = api.Token(t, "shop", "gone", []string{"istio-ca"}, time.Hour)
	api.DeleteServiceAccount(t, "shop", "gone")
	m, err := authn.NewMinter(api.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err = m.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return gone, stranger
}
