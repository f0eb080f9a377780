package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/internal/pemfile"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

var (
	testTD = spiffeid.RequireTrustDomainFromString("cluster.local")
	testID = spiffeid.RequireFromPath(testTD, "/ns/default/sa/sleep")
)

// newTestAuthority returns a self-signed root Authority with a key of the
// given kind.
func newTestAuthority(t testing.TB, key crypto.Signer) *Authority {
	t.Helper()
	root, err := NewSelfSignedRoot(key, RootTemplate{TrustDomain: testTD})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthority(root, key, nil, []*x509.Certificate{root})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// newIntermediateAuthority returns an Authority signing with an
// intermediate under a fresh root.
func newIntermediateAuthority(t testing.TB) *Authority {
	t.Helper()
	root := testpki.NewCA(t, "Castellan Root")
	inter := root.ChildCA(t, "Castellan Intermediate", testpki.WithKeyType(testpki.P384))
	a, err := NewAuthority(inter.Cert, inter.Key, []*x509.Certificate{root.Cert}, []*x509.Certificate{root.Cert})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// makeCSR returns a PEM CSR for key, with the given SANs.
func makeCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{URIs: []*url.URL{testID.URL()}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestIssueConformantSVID(t *testing.T) {
	authorities := map[string]*Authority{
		"p256 root":         newTestAuthority(t, testpki.NewKey(t, testpki.P256)),
		"rsa root":          newTestAuthority(t, testpki.NewKey(t, testpki.RSA2048)),
		"p384 intermediate": newIntermediateAuthority(t),
	}
	keys := map[string]crypto.Signer{
		"p256":    testpki.NewKey(t, testpki.P256),
		"p384":    testpki.NewKey(t, testpki.P384),
		"rsa2048": testpki.NewKey(t, testpki.RSA2048),
	}
	for an, a := range authorities {
		for kn, key := range keys {
			t.Run(an+"/"+kn, func(t *testing.T) {
				iss, err := NewIssuer(StaticSource{a}, Config{})
				if err != nil {
					t.Fatal(err)
				}
				svid, err := iss.Issue(context.Background(), Request{CSR: makeCSR(t, key, nil), ID: testID})
				if err != nil {
					t.Fatalf("Issue: %v", err)
				}
				checkSVID(t, a, svid, key)
			})
		}
	}
}

func checkSVID(t *testing.T, a *Authority, svid *SVID, key crypto.Signer) {
	t.Helper()
	leaf, err := x509.ParseCertificate(svid.Certificate)
	if err != nil {
		t.Fatalf("parse leaf: %v", err)
	}
	var chain []*x509.Certificate
	for i, p := range svid.ChainPEM {
		b, _ := pem.Decode([]byte(p))
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("chain[%d]: %v", i, err)
		}
		chain = append(chain, c)
	}
	if !bytes.Equal(chain[0].Raw, leaf.Raw) {
		t.Fatal("chain does not start with the leaf")
	}
	if !bytes.Equal(chain[len(chain)-1].Raw, a.Root().Raw) {
		t.Fatal("chain does not end with the root")
	}
	// go-spiffe's SVID checks: one URI SAN, CA false, key usage, etc.
	bundle := x509bundle.FromX509Authorities(testTD, a.Roots)
	id, _, err := x509svid.Verify(chain[:len(chain)-1], bundle)
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if id != testID {
		t.Fatalf("id = %s, want %s", id, testID)
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	if _, err := x509svid.ParseRaw(svid.Certificate, pkcs8); err != nil {
		t.Fatalf("x509svid.ParseRaw: %v", err)
	}
	wantKU := x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok {
		wantKU |= x509.KeyUsageKeyEncipherment
	}
	switch {
	case leaf.KeyUsage != wantKU:
		t.Errorf("key usage = %v, want %v", leaf.KeyUsage, wantKU)
	case len(leaf.ExtKeyUsage) != 2:
		t.Errorf("EKU = %v", leaf.ExtKeyUsage)
	case leaf.IsCA || !leaf.BasicConstraintsValid:
		t.Error("leaf must be CA:FALSE with basicConstraints present")
	case len(leaf.SubjectKeyId) == 0 || !bytes.Equal(leaf.AuthorityKeyId, a.Cert.SubjectKeyId):
		t.Error("SKID/AKID missing or wrong")
	case leaf.SerialNumber.BitLen() < 64:
		t.Errorf("serial has %d bits", leaf.SerialNumber.BitLen())
	case !leaf.NotBefore.Before(time.Now()):
		t.Error("NotBefore not backdated")
	case len(leaf.RawSubject) != 2:
		t.Errorf("subject should be empty, got %v", leaf.Subject)
	case !pemfile.SameKey(key.Public(), leaf.PublicKey):
		t.Error("leaf key differs from CSR key")
	}
	for _, e := range leaf.Extensions {
		if e.Id.Equal(oidExtSubjectAltName) && !e.Critical {
			t.Error("SAN must be critical with an empty subject")
		}
		if e.Id.Equal(oidExtKeyUsage) && !e.Critical {
			t.Error("key usage must be critical")
		}
	}
}

// TestTBSMatchesStdlib holds the hand encoding to byte equality with
// crypto/x509.CreateCertificate for the same template.
func TestTBSMatchesStdlib(t *testing.T) {
	cases := []struct {
		name string
		a    *Authority
		key  crypto.Signer
		ttl  time.Duration
		dns  []string
	}{
		{"p256 ca, p256 leaf", newTestAuthority(t, testpki.NewKey(t, testpki.P256)), testpki.NewKey(t, testpki.P256), time.Hour, nil},
		{"rsa ca, rsa leaf", newTestAuthority(t, testpki.NewKey(t, testpki.RSA2048)), testpki.NewKey(t, testpki.RSA2048), time.Hour, nil},
		{"p384 intermediate, p384 leaf", newIntermediateAuthority(t), testpki.NewKey(t, testpki.P384), time.Hour, nil},
		{"generalized time", newTestAuthority(t, testpki.NewKey(t, testpki.P256)), testpki.NewKey(t, testpki.P256), 0, nil},
		{"ed25519 ca", newTestAuthority(t, testpki.NewKey(t, testpki.Ed25519)), testpki.NewKey(t, testpki.P256), time.Hour, nil},
		{"dns profile", newTestAuthority(t, testpki.NewKey(t, testpki.P256)), testpki.NewKey(t, testpki.P256), time.Hour,
			[]string{"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local"}},
		{"dns profile, long names", newIntermediateAuthority(t), testpki.NewKey(t, testpki.RSA2048), time.Hour,
			[]string{strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := ParseCSR(makeCSR(t, tc.key, nil))
			if err != nil {
				t.Fatal(err)
			}
			nb := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			na := nb.Add(tc.ttl)
			if tc.ttl == 0 {
				na = time.Date(2051, 1, 1, 0, 0, 0, 0, time.UTC)
			}
			serial, _ := randomSerial(rand.Reader)
			tmpl := newLeafTemplate(keyOf(csr), testID.String(), serial.Bytes(), nb, na)
			tmpl.dns = tc.dns
			got, err := tmpl.marshalTBS(tc.a)
			if err != nil {
				t.Fatal(err)
			}
			ku := x509.KeyUsageDigitalSignature
			if tmpl.rsa {
				ku |= x509.KeyUsageKeyEncipherment
			}
			std := &x509.Certificate{
				SerialNumber:          serial,
				NotBefore:             nb,
				NotAfter:              na,
				KeyUsage:              ku,
				ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				BasicConstraintsValid: true,
				SubjectKeyId:          tmpl.skid[:],
				URIs:                  []*url.URL{testID.URL()},
				DNSNames:              tc.dns,
			}
			// The stdlib sets AKID from the parent's SKID.
			der, err := x509.CreateCertificate(rand.Reader, std, tc.a.Cert, csr.PublicKey, tc.a.Signer)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := x509.ParseCertificate(der)
			if !bytes.Equal(got, want.RawTBSCertificate) {
				t.Fatalf("TBS differs from crypto/x509's:\n got %x\nwant %x", got, want.RawTBSCertificate)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	a := newTestAuthority(t, testpki.NewKey(t, testpki.P256))
	iss, _ := NewIssuer(StaticSource{a}, Config{})
	p256 := testpki.NewKey(t, testpki.P256)
	other := spiffeid.RequireFromPath(testTD, "/ns/prod/sa/admin")
	goodCSR := makeCSR(t, p256, nil)
	tampered := func() []byte {
		b, _ := pem.Decode(goodCSR)
		der := append([]byte(nil), b.Bytes...)
		der[len(der)-5] ^= 0xff // inside the signature
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}()
	tests := []struct {
		name   string
		csr    []byte
		ttl    time.Duration
		reason Reason
	}{
		{"empty", nil, 0, ReasonMalformedCSR},
		{"garbage", []byte("hello"), 0, ReasonMalformedCSR},
		{"wrong pem type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), 0, ReasonMalformedCSR},
		{"bad der", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x01, 0x00}}), 0, ReasonMalformedCSR},
		{"trailing data", append(append([]byte(nil), goodCSR...), "junk"...), 0, ReasonMalformedCSR},
		{"two csrs", append(append([]byte(nil), goodCSR...), goodCSR...), 0, ReasonMalformedCSR},
		{"oversized", bytes.Repeat([]byte("A"), MaxCSRSize+1), 0, ReasonMalformedCSR},
		{"bad signature", tampered, 0, ReasonBadSignature},
		{"rsa 1024", makeCSR(t, testpki.NewKey(t, testpki.RSA1024), nil), 0, ReasonUnsupportedKey},
		{"p224", makeCSR(t, testpki.NewKey(t, testpki.P224), nil), 0, ReasonUnsupportedKey},
		{"ed25519", makeCSR(t, testpki.NewKey(t, testpki.Ed25519), nil), 0, ReasonUnsupportedKey},
		{"other spiffe id", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{other.URL()}}), 0, ReasonIdentityMismatch},
		{"two uris", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{testID.URL(), other.URL()}}), 0, ReasonForbiddenSAN},
		{"dns san", makeCSR(t, p256, &x509.CertificateRequest{DNSNames: []string{"evil.example.com"}}), 0, ReasonForbiddenSAN},
		{"ip san", makeCSR(t, p256, &x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), 0, ReasonForbiddenSAN},
		{"email san", makeCSR(t, p256, &x509.CertificateRequest{EmailAddresses: []string{"a@b.c"}}), 0, ReasonForbiddenSAN},
		{"negative ttl", goodCSR, -time.Second, ReasonInvalidTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := iss.Issue(context.Background(), Request{CSR: tt.csr, ID: testID, TTL: tt.ttl})
			if svid != nil {
				t.Fatal("issued a certificate on an error path")
			}
			if got := ReasonOf(err); got != tt.reason {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.reason)
			}
			if !strings.HasPrefix(err.Error(), "ca: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestValidity(t *testing.T) {
	a := newIntermediateAuthority(t) // expires in 48h
	now := time.Now()
	iss, _ := NewIssuer(StaticSource{a}, Config{DefaultTTL: time.Hour, MaxTTL: 100 * time.Hour, Now: func() time.Time { return now }})
	key := testpki.NewKey(t, testpki.P256)
	tests := []struct {
		name string
		ttl  time.Duration
		want time.Duration
	}{
		{"default", 0, time.Hour},
		{"asked", 2 * time.Hour, 2 * time.Hour},
		{"clamped to max, then to the CA", 1000 * time.Hour, time.Until(a.NotAfter())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := iss.Issue(context.Background(), Request{CSR: makeCSR(t, key, nil), ID: testID, TTL: tt.ttl})
			if err != nil {
				t.Fatal(err)
			}
			got := svid.NotAfter.Sub(now.Truncate(time.Second))
			if d := got - tt.want; d > 2*time.Second || d < -2*time.Second {
				t.Fatalf("lifetime = %s, want %s", got, tt.want)
			}
			if svid.NotAfter.After(a.NotAfter()) {
				t.Fatal("leaf outlives its CA")
			}
		})
	}
	// A CSR with no SAN at all gets the caller's identity.
	svid, err := iss.Issue(context.Background(), Request{CSR: makeCSR(t, key, &x509.CertificateRequest{}), ID: testID})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(svid.Certificate)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() {
		t.Fatalf("URIs = %v", leaf.URIs)
	}
	// An expired chain issues nothing.
	late, _ := NewIssuer(StaticSource{a}, Config{Now: func() time.Time { return now.Add(72 * time.Hour) }})
	if _, err := late.Issue(context.Background(), Request{CSR: makeCSR(t, key, nil), ID: testID}); ReasonOf(err) != ReasonCAUnavailable {
		t.Fatalf("err = %v, want ca_unavailable", err)
	}
}

func TestNewAuthorityRejects(t *testing.T) {
	k := testpki.NewKey(t, testpki.P256)
	root := newTestAuthority(t, k)
	other := newTestAuthority(t, testpki.NewKey(t, testpki.P256))
	inter := newIntermediateAuthority(t)
	tests := []struct {
		name   string
		cert   *x509.Certificate
		key    crypto.Signer
		chain  []*x509.Certificate
		roots  []*x509.Certificate
		substr string
	}{
		{"key mismatch", root.Cert, testpki.NewKey(t, testpki.P256), nil, []*x509.Certificate{root.Cert}, "does not match"},
		{"empty bundle", root.Cert, k, nil, nil, "empty trust bundle"},
		{"root not in bundle", root.Cert, k, nil, []*x509.Certificate{other.Cert}, "not in the trust bundle"},
		{"intermediate without chain", inter.Cert, inter.Signer, nil, inter.Roots, "not self-signed"},
		{"intermediate under other root", inter.Cert, inter.Signer, []*x509.Certificate{other.Cert}, []*x509.Certificate{other.Cert}, "does not chain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewAuthority(tt.cert, tt.key, tt.chain, tt.roots)
			if err == nil || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.substr)
			}
		})
	}
}

func FuzzParseCSR(f *testing.F) {
	good := makeCSR(f, testpki.NewKey(f, testpki.P256), nil)
	f.Add(good)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, in []byte) {
		csr, err := ParseCSR(in)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
		_ = ValidateCSR(csr, testID)
	})
}

func TestErrorsAreRejectErrors(t *testing.T) {
	var re *RejectError
	if !errors.As(reject(ReasonBadSignature, "x"), &re) {
		t.Fatal("reject does not build a *RejectError")
	}
}
