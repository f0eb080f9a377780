package ca

import (
	"context"
	"crypto/x509"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/internal/dnsname"
	"github.com/castellan-mesh/castellan/internal/testpki"
)

var istiodID = spiffeid.RequireFromPath(testTD, "/ns/istio-system/sa/istiod")

const istiodProfile = "istio-system/istiod=istiod.istio-system.svc,istiod.istio-system.svc.cluster.local"

func TestParseDNSProfile(t *testing.T) {
	many := func(n int, f func(i int) string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = f(i)
		}
		return strings.Join(parts, "")
	}
	tests := []struct {
		name    string
		entries []string
		want    string // String() of the profile; "" with wantErr
		wantErr string
	}{
		{"none", nil, "", ""},
		{"istiod", []string{istiodProfile}, istiodProfile, ""},
		{"lowercased and sorted", []string{" istio-system/istiod = Istiod.Istio-System.svc.cluster.local , istiod.istio-system.svc "}, istiodProfile, ""},
		{"two entries in one value", []string{istiodProfile + "; ops/gw=gw.ops.svc"}, istiodProfile + ";ops/gw=gw.ops.svc", ""},
		{"repeated flag", []string{istiodProfile, "ops/gw=gw.ops.svc"}, istiodProfile + ";ops/gw=gw.ops.svc", ""},
		{"dotted service account", []string{"ns/sa.v1=a.b"}, "ns/sa.v1=a.b", ""},
		{"no equals", []string{"istio-system/istiod"}, "", "want namespace/serviceaccount=name"},
		{"no slash", []string{"istiod=a.b"}, "", "is not namespace/serviceaccount"},
		{"empty namespace", []string{"/istiod=a.b"}, "", "namespace \"\""},
		{"bad namespace", []string{"Istio_System/istiod=a.b"}, "", "namespace"},
		{"namespace with dot", []string{"a.b/istiod=a.b"}, "", "namespace"},
		{"bad service account", []string{"ns/-sa=a.b"}, "", "service account"},
		{"three segments", []string{"ns/sa/x=a.b"}, "", "service account"},
		{"no names", []string{"ns/sa="}, "", "empty DNS name"},
		{"empty name in list", []string{"ns/sa=a.b,,c.d"}, "", "empty DNS name"},
		{"wildcard", []string{"ns/sa=*.istio-system.svc"}, "", "wildcard"},
		{"trailing dot", []string{"ns/sa=istiod.istio-system.svc."}, "", "ends with a dot"},
		{"underscore", []string{"ns/sa=a_b.svc"}, "", "use lowercase letters"},
		{"ip address", []string{"ns/sa=10.0.0.1"}, "ns/sa=10.0.0.1", ""}, // all-digit labels are RFC 1123 host names
		{"label too long", []string{"ns/sa=" + strings.Repeat("a", 64) + ".svc"}, "", "over 63"},
		{"name too long", []string{"ns/sa=" + many(64, func(int) string { return "abc." }) + "svc"}, "", "over 253"},
		{"duplicate name", []string{"ns/sa=a.b,a.b"}, "", "listed twice"},
		{"duplicate account", []string{"ns/sa=a.b", "ns/sa=c.d"}, "", "names ns/sa twice"},
		{"too many names", []string{"ns/sa=" + strings.TrimSuffix(many(MaxDNSNamesPerAccount+1, func(i int) string { return "n" + string(rune('a'+i)) + ".svc," }), ",")}, "", "more than 16 names"},
		{"too many accounts", []string{many(MaxDNSProfileAccounts+1, func(i int) string { return "ns/sa" + strings.Repeat("x", i) + "=a.b;" })}, "", "more than 32 service accounts"},
		{"entry too long", []string{"ns/sa=" + strings.Repeat("a", 5000)}, "", "byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseDNSProfile(tt.entries...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "ca: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.String(); got != tt.want {
				t.Fatalf("profile = %q, want %q", got, tt.want)
			}
			// What String prints parses back to the same profile.
			again, err := ParseDNSProfile(p.String())
			if err != nil || again.String() != tt.want {
				t.Fatalf("round trip: %q, %v", again.String(), err)
			}
		})
	}
}

func FuzzParseDNSProfile(f *testing.F) {
	f.Add(istiodProfile)
	f.Add("a/b=c.d;e/f=g.h,i.j")
	f.Add("ns/sa=*.x")
	f.Add("ns/sa=a..b")
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParseDNSProfile(in)
		if err != nil {
			return
		}
		if p.Len() > MaxDNSProfileAccounts {
			t.Fatalf("%d accounts", p.Len())
		}
		for _, names := range p.allow {
			if len(names) == 0 || len(names) > MaxDNSNamesPerAccount {
				t.Fatalf("%d names", len(names))
			}
			for _, n := range names {
				if dnsname.CheckHost(n) != nil || strings.ContainsAny(n, "*;,= ") {
					t.Fatalf("accepted name %q", n)
				}
			}
		}
		again, err := ParseDNSProfile(p.String())
		if err != nil || again.String() != p.String() {
			t.Fatalf("round trip of %q: %q, %v", p.String(), again.String(), err)
		}
	})
}

func TestIssueDNSProfile(t *testing.T) {
	a := newTestAuthority(t, testpki.NewKey(t, testpki.P256))
	profile, err := ParseDNSProfile(istiodProfile)
	if err != nil {
		t.Fatal(err)
	}
	iss, _ := NewIssuer(StaticSource{a}, Config{DNS: profile})
	key := testpki.NewKey(t, testpki.P256)
	csr := func(id spiffeid.ID, names ...string) []byte {
		return makeCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}, DNSNames: names})
	}

	t.Run("istiod gets its names", func(t *testing.T) {
		for _, names := range [][]string{
			{"istiod.istio-system.svc"},
			{"istiod.istio-system.svc.cluster.local", "istiod.istio-system.svc"},
		} {
			svid, err := iss.Issue(context.Background(), Request{CSR: csr(istiodID, names...), ID: istiodID})
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(svid.Certificate)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cert.DNSNames, names) {
				t.Errorf("DNS SANs = %q, want %q", cert.DNSNames, names)
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != istiodID.String() {
				t.Errorf("URI SANs = %v, want %s", cert.URIs, istiodID)
			}
			if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
				t.Errorf("EKU %v lacks serverAuth", cert.ExtKeyUsage)
			}
			// Still an X509-SVID: the spec allows other SAN types beside the one URI.
			if id, _, err := x509svid.Verify([]*x509.Certificate{cert}, x509bundle.FromX509Authorities(testTD, a.Roots)); err != nil || id != istiodID {
				t.Errorf("x509svid.Verify: %s, %v", id, err)
			}
			// A TLS client that dials istiod by name verifies it against the root.
			pool := x509.NewCertPool()
			pool.AddCert(a.Cert)
			for _, n := range names {
				if _, err := cert.Verify(x509.VerifyOptions{DNSName: n, Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					t.Errorf("verify as %s: %v", n, err)
				}
			}
		}
	})
	t.Run("no uri in the csr", func(t *testing.T) {
		svid, err := iss.Issue(context.Background(), Request{
			CSR: makeCSR(t, key, &x509.CertificateRequest{DNSNames: []string{"istiod.istio-system.svc"}}), ID: istiodID})
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(svid.Certificate)
		if len(cert.URIs) != 1 || cert.URIs[0].String() != istiodID.String() || len(cert.DNSNames) != 1 {
			t.Fatalf("SANs = %v %v", cert.URIs, cert.DNSNames)
		}
	})

	other := spiffeid.RequireFromPath(testTD, "/ns/istio-system/sa/default")
	refusals := []struct {
		name         string
		req          Request
		reason       Reason
		wantInReason string
	}{
		{"name outside the list", Request{CSR: csr(istiodID, "istiod.istio-system.svc", "evil.example.com"), ID: istiodID},
			ReasonDNSNotAllowed, `"evil.example.com", which is not in the DNS SAN profile of spiffe://cluster.local/ns/istio-system/sa/istiod`},
		{"wildcard", Request{CSR: csr(istiodID, "*.istio-system.svc"), ID: istiodID}, ReasonDNSNotAllowed, `"*.istio-system.svc"`},
		{"uppercase", Request{CSR: csr(istiodID, "ISTIOD.istio-system.svc"), ID: istiodID}, ReasonDNSNotAllowed, `"ISTIOD.istio-system.svc"`},
		{"duplicate", Request{CSR: csr(istiodID, "istiod.istio-system.svc", "istiod.istio-system.svc"), ID: istiodID}, ReasonDNSNotAllowed, "twice"},
		{"too many", Request{CSR: csr(istiodID, "istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local", "istiod"), ID: istiodID}, ReasonDNSNotAllowed, "asks for 3 DNS SANs"},
		{"another service account", Request{CSR: csr(other, "istiod.istio-system.svc"), ID: other},
			ReasonForbiddenSAN, `DNS SAN "istiod.istio-system.svc"; only the caller's SPIFFE ID spiffe://cluster.local/ns/istio-system/sa/default`},
		{"istiod's names with another uri", Request{CSR: csr(istiodID, "istiod.istio-system.svc"), ID: other}, ReasonIdentityMismatch, "but the caller is"},
		{"through impersonation", Request{CSR: csr(istiodID, "istiod.istio-system.svc"), ID: istiodID, Impersonated: true},
			ReasonDNSNotAllowed, "never through impersonation"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := iss.Issue(context.Background(), tt.req)
			if svid != nil {
				t.Fatal("issued a certificate on an error path")
			}
			if got := ReasonOf(err); got != tt.reason {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.reason)
			}
			if !strings.Contains(err.Error(), tt.wantInReason) {
				t.Fatalf("error %q does not say %q", err, tt.wantInReason)
			}
		})
	}

	t.Run("no profile", func(t *testing.T) {
		plain, _ := NewIssuer(StaticSource{a}, Config{})
		_, err := plain.Issue(context.Background(), Request{CSR: csr(istiodID, "istiod.istio-system.svc"), ID: istiodID})
		if ReasonOf(err) != ReasonForbiddenSAN {
			t.Fatalf("err = %v, want %s", err, ReasonForbiddenSAN)
		}
	})
}
