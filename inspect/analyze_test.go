package inspect_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/inspect"
)

func TestAnalyzeFindings(t *testing.T) {
	day := 24 * time.Hour
	root := rootCA(t, "root", epoch.AddDate(-1, 0, 0), 10*365*day)
	otherRoot := rootCA(t, "other-root", epoch.AddDate(-1, 0, 0), 10*365*day)
	inter := intermediateCA(t, "intermediate", root, epoch.AddDate(0, -1, 0), 365*day)
	// impostor has the intermediate's name but another key.
	impostor := intermediateCA(t, "impostor", root, epoch.AddDate(0, -1, 0), 365*day)
	impostor.cert = sign(t, withSubject(impostor.cert, inter.cert.Subject), impostor.key.Public(), root)
	key := ecKey(t, "leaf")
	const id = "spiffe://cluster.local/ns/default/sa/sleep"
	now := epoch.Add(6 * time.Hour)

	// leaf signs a leaf from tmpl (a conformant SVID template edited by
	// edit) with inter.
	leaf := func(edit func(*x509.Certificate)) *x509.Certificate {
		tmpl := leafTemplate(id, epoch, day)
		if edit != nil {
			edit(tmpl)
		}
		return sign(t, tmpl, key.Public(), inter)
	}
	// signingCA issues an intermediate from a template edited by edit.
	signingCA := func(edit func(*x509.Certificate)) *ca {
		k := edKey("edited")
		tmpl := caTemplate(7, "Edited CA", epoch.AddDate(0, -1, 0), 365*day)
		edit(tmpl)
		return &ca{cert: sign(t, tmpl, k.Public(), root), key: k}
	}
	good := leaf(nil)
	chain := func(certs ...*x509.Certificate) []*x509.Certificate { return certs }
	bundle := chain(root.cert)

	tests := []struct {
		name string
		in   inspect.Input
		now  time.Time
		want map[string]inspect.Severity // every finding code expected, no more
	}{
		{
			name: "conformant chain",
			in:   inspect.Input{Chain: chain(good, inter.cert), Bundle: bundle, PublicKey: key.Public()},
			want: nil,
		},
		{
			name: "expired",
			in:   inspect.Input{Chain: chain(good, inter.cert)},
			now:  epoch.Add(day + time.Second),
			want: map[string]inspect.Severity{"expired": inspect.SeverityError},
		},
		{
			name: "not yet valid",
			in:   inspect.Input{Chain: chain(good, inter.cert)},
			now:  epoch.Add(-time.Minute),
			want: map[string]inspect.Severity{"not-yet-valid": inspect.SeverityError},
		},
		{
			name: "under 20% of lifetime left",
			in:   inspect.Input{Chain: chain(good, inter.cert)},
			now:  epoch.Add(20 * time.Hour),
			want: map[string]inspect.Severity{"low-lifetime": inspect.SeverityWarning},
		},
		{
			name: "exactly 20% left is fine",
			in:   inspect.Input{Chain: chain(good, inter.cert)},
			now:  epoch.Add(day * 8 / 10),
			want: nil,
		},
		{
			name: "expired trust anchor is a warning",
			in: inspect.Input{Chain: chain(good, inter.cert), Bundle: chain(root.cert, rootCA(t, "old", epoch.AddDate(-2, 0, 0), 365*day).cert),
				BundleSource: "file:bundle.pem"},
			want: map[string]inspect.Severity{"expired": inspect.SeverityWarning},
		},
		{
			name: "chain out of order",
			in:   inspect.Input{Chain: chain(good, root.cert, inter.cert)},
			want: map[string]inspect.Severity{"chain-order": inspect.SeverityError},
		},
		{
			name: "intermediate missing between leaf and root",
			in:   inspect.Input{Chain: chain(good, root.cert)},
			want: map[string]inspect.Severity{"missing-intermediate": inspect.SeverityError},
		},
		{
			name: "intermediate missing above the chain",
			in:   inspect.Input{Chain: chain(good), Bundle: bundle},
			want: map[string]inspect.Severity{"missing-intermediate": inspect.SeverityError, "verify-failed": inspect.SeverityError},
		},
		{
			name: "intermediate in the bundle",
			in:   inspect.Input{Chain: chain(good), Bundle: chain(root.cert, inter.cert)},
			want: nil,
		},
		{
			name: "issuer with the right name and the wrong key",
			in:   inspect.Input{Chain: chain(good, impostor.cert)},
			want: map[string]inspect.Severity{"chain-signature": inspect.SeverityError},
		},
		{
			name: "bundle of another CA",
			in:   inspect.Input{Chain: chain(good, inter.cert), Bundle: chain(otherRoot.cert)},
			want: map[string]inspect.Severity{"missing-intermediate": inspect.SeverityError, "verify-failed": inspect.SeverityError},
		},
		{
			name: "a bundle, not a chain",
			in:   inspect.Input{Chain: chain(root.cert, otherRoot.cert)},
			want: nil,
		},
		{
			name: "a chain followed by an unrelated root",
			in:   inspect.Input{Chain: chain(good, inter.cert, root.cert, otherRoot.cert)},
			want: map[string]inspect.Severity{"unrelated-certificates": inspect.SeverityWarning},
		},
		{
			name: "more than one URI SAN",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.URIs = append(c.URIs, mustURL("spiffe://cluster.local/ns/default/sa/other"))
			}), inter.cert)},
			want: map[string]inspect.Severity{"multiple-uri-sans": inspect.SeverityError},
		},
		{
			name: "leaf SPIFFE ID without a path",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.URIs = []*url.URL{mustURL("spiffe://cluster.local")}
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-root-id": inspect.SeverityError},
		},
		{
			name: "empty subject with a non-critical SAN",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.Subject = pkix.Name{}
				c.URIs = nil
				c.ExtraExtensions = append(c.ExtraExtensions, sanURI(t, id, false))
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-san-not-critical": inspect.SeverityError},
		},
		{
			name: "empty subject with a critical SAN",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.Subject = pkix.Name{}
			}), inter.cert)},
			want: nil,
		},
		{
			name: "leaf marked CA",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.IsCA = true
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-leaf-ca": inspect.SeverityError},
		},
		{
			name: "no key usage",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.KeyUsage = 0
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-no-key-usage": inspect.SeverityError},
		},
		{
			name: "key usage not critical",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.ExtraExtensions = append(c.ExtraExtensions, digitalSignatureOnly(t, false))
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-key-usage-not-critical": inspect.SeverityError},
		},
		{
			name: "no digitalSignature",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.KeyUsage = x509.KeyUsageKeyEncipherment
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-no-digital-signature": inspect.SeverityError},
		},
		{
			name: "leaf with keyCertSign and cRLSign",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-leaf-cert-sign": inspect.SeverityError, "svid-leaf-crl-sign": inspect.SeverityError},
		},
		{
			name: "no extended key usage",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.ExtKeyUsage = nil
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-no-ext-key-usage": inspect.SeverityWarning},
		},
		{
			name: "extended key usage without clientAuth",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			}), inter.cert)},
			want: map[string]inspect.Severity{"svid-ext-key-usage": inspect.SeverityError},
		},
		{
			name: "signing certificate not marked CA",
			in: func() inspect.Input {
				bad := signingCA(func(c *x509.Certificate) { c.IsCA = false })
				return inspect.Input{Chain: chain(sign(t, leafTemplate(id, epoch, day), key.Public(), bad), bad.cert)}
			}(),
			want: map[string]inspect.Severity{"svid-signing-not-ca": inspect.SeverityError},
		},
		{
			name: "signing certificate without keyCertSign",
			in: func() inspect.Input {
				bad := signingCA(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageCRLSign })
				return inspect.Input{Chain: chain(sign(t, leafTemplate(id, epoch, day), key.Public(), bad), bad.cert)}
			}(),
			want: map[string]inspect.Severity{"svid-signing-no-cert-sign": inspect.SeverityError},
		},
		{
			name: "signing certificate with a SPIFFE ID path",
			in: func() inspect.Input {
				bad := signingCA(func(c *x509.Certificate) { c.URIs = []*url.URL{mustURL("spiffe://cluster.local/ca")} })
				return inspect.Input{Chain: chain(sign(t, leafTemplate(id, epoch, day), key.Public(), bad), bad.cert)}
			}(),
			want: map[string]inspect.Severity{"svid-signing-id-path": inspect.SeverityError},
		},
		{
			name: "signing certificate in another trust domain",
			in: func() inspect.Input {
				bad := signingCA(func(c *x509.Certificate) { c.URIs = []*url.URL{mustURL("spiffe://other.test")} })
				return inspect.Input{Chain: chain(sign(t, leafTemplate(id, epoch, day), key.Public(), bad), bad.cert)}
			}(),
			want: map[string]inspect.Severity{"svid-signing-trust-domain": inspect.SeverityWarning},
		},
		{
			name: "an ordinary TLS certificate",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.URIs = nil
				c.DNSNames = []string{"sleep.default.svc"}
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			}), inter.cert), Bundle: bundle},
			want: nil,
		},
		{
			name: "a TLS certificate with a non-SPIFFE URI SAN",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.URIs = []*url.URL{mustURL("https://api.example.test/"), mustURL("urn:example:a")}
			}), inter.cert), Bundle: bundle},
			want: nil,
		},
		{
			name: "a TLS certificate without any SAN",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.URIs = nil
				c.Subject = pkix.Name{CommonName: "api.example.test"}
			}), inter.cert), Bundle: bundle},
			want: map[string]inspect.Severity{"tls-no-san": inspect.SeverityWarning},
		},
		{
			name: "a malformed SPIFFE ID is still judged as an SVID",
			in: inspect.Input{Chain: chain(leaf(func(c *x509.Certificate) {
				c.URIs = []*url.URL{{Scheme: "spiffe", Host: "Cluster.Local", Path: "/ns/a/sa/b"}}
			}), inter.cert), Bundle: bundle},
			want: map[string]inspect.Severity{"svid-invalid-id": inspect.SeverityError},
		},
		{
			name: "key does not match",
			in:   inspect.Input{Chain: chain(good, inter.cert), PublicKey: ecKey(t, "other").Public(), KeySource: "file:key.pem"},
			want: map[string]inspect.Severity{"key-mismatch": inspect.SeverityError},
		},
		{
			name: "key of another type",
			in:   inspect.Input{Chain: chain(good, inter.cert), PublicKey: edKey("x").Public()},
			want: map[string]inspect.Severity{"key-mismatch": inspect.SeverityError},
		},
		{
			name: "source rejected the material",
			in:   inspect.Input{Chain: chain(good, inter.cert), Rejections: []string{"an Envoy-like SDS client rejects this response: bad"}},
			want: map[string]inspect.Severity{"source-rejected": inspect.SeverityError},
		},
		{
			name: "no certificate",
			in:   inspect.Input{},
			want: map[string]inspect.Severity{"no-certificate": inspect.SeverityError},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := now
			if !tt.now.IsZero() {
				at = tt.now
			}
			r := inspect.Analyze(tt.in, inspect.Options{Now: at})
			got := map[string]inspect.Severity{}
			for _, f := range r.Findings {
				if f.Message == "" || strings.Contains(f.Message, "%!") {
					t.Errorf("finding %s has a bad message %q", f.Code, f.Message)
				}
				if prev, dup := got[f.Code]; dup && prev != f.Severity {
					t.Errorf("finding %s raised with two severities", f.Code)
				}
				got[f.Code] = f.Severity
			}
			if len(got) != len(tt.want) {
				t.Errorf("findings = %v, want %v\n%s", got, tt.want, messages(r))
			}
			for code, sev := range tt.want {
				if got[code] != sev {
					t.Errorf("finding %s = %q, want %q\n%s", code, got[code], sev, messages(r))
				}
			}
			wantStatus := inspect.StatusValid
			for _, sev := range tt.want {
				if sev == inspect.SeverityError {
					wantStatus = inspect.StatusInvalid
				} else if wantStatus == inspect.StatusValid {
					wantStatus = inspect.StatusWarning
				}
			}
			if r.Status != wantStatus {
				t.Errorf("status = %s, want %s", r.Status, wantStatus)
			}
			svid := r.Verification.SVID
			if svid.Checked {
				var errs []string
				for _, f := range r.Findings {
					if f.Severity == inspect.SeverityError && (strings.HasPrefix(f.Code, "svid-") || f.Code == "multiple-uri-sans") && !slices.Contains(errs, f.Code) {
						errs = append(errs, f.Code)
					}
				}
				if svid.Conformant != (len(errs) == 0) || !slices.Equal(svid.Violations, errs) {
					t.Errorf("svid = %+v, want violations %v", svid, errs)
				}
			}
		})
	}
}

func TestAnalyzeVerification(t *testing.T) {
	day := 24 * time.Hour
	root := rootCA(t, "root", epoch.AddDate(-1, 0, 0), 10*365*day)
	inter := intermediateCA(t, "intermediate", root, epoch.AddDate(0, -1, 0), 365*day)
	key := ecKey(t, "leaf")
	leaf := sign(t, leafTemplate("spiffe://cluster.local/ns/a/sa/b", epoch, day), key.Public(), inter)
	now := epoch.Add(time.Hour)

	r := inspect.Analyze(inspect.Input{Chain: []*x509.Certificate{leaf, inter.cert}, Bundle: []*x509.Certificate{root.cert}, PublicKey: key.Public(), KeySource: "k"}, inspect.Options{Now: now})
	v := r.Verification
	if !v.Chain.Checked || !v.Chain.Verified || !slices.Equal(v.Chain.Path, []string{"chain[0]", "chain[1]", "bundle[0]"}) {
		t.Errorf("chain = %+v", v.Chain)
	}
	if !v.SVID.Checked || v.SVID.Kind != "leaf" || !v.SVID.Conformant || v.SVID.SPIFFEID != "spiffe://cluster.local/ns/a/sa/b" || v.SVID.TrustDomain != "cluster.local" {
		t.Errorf("svid = %+v", v.SVID)
	}
	if !v.Key.Checked || !v.Key.Matches || v.Key.Source != "k" {
		t.Errorf("key = %+v", v.Key)
	}
	if !r.InspectedAt.Equal(now) || r.SchemaVersion != inspect.SchemaVersion {
		t.Errorf("inspected_at %v, schema %d", r.InspectedAt, r.SchemaVersion)
	}
	c := r.Certificates[0]
	if c.Validity.LifetimeSeconds != 86400 || c.Validity.RemainingSeconds != 82800 || c.Validity.RemainingPercent != 95.8 || c.Validity.State != "valid" {
		t.Errorf("validity = %+v", c.Validity)
	}
	if c.PublicKey.String() != "ECDSA P-256" || r.Certificates[1].PublicKey.String() != "Ed25519" {
		t.Errorf("keys = %v, %v", c.PublicKey, r.Certificates[1].PublicKey)
	}
	if c.AuthorityKeyID == "" || c.AuthorityKeyID != r.Certificates[1].SubjectKeyID {
		t.Errorf("AKID %q does not match the issuer's SKID %q", c.AuthorityKeyID, r.Certificates[1].SubjectKeyID)
	}

	// Without a bundle, nothing is verified and nothing is claimed.
	r = inspect.Analyze(inspect.Input{Chain: []*x509.Certificate{leaf, inter.cert}}, inspect.Options{Now: now})
	if r.Verification.Chain.Checked || r.Verification.Key.Checked || r.Status != inspect.StatusValid {
		t.Errorf("without bundle or key: %+v, status %s", r.Verification, r.Status)
	}

	// A CA certificate alone is checked as SVID signing certificates.
	r = inspect.Analyze(inspect.Input{Chain: []*x509.Certificate{inter.cert, root.cert}}, inspect.Options{Now: now})
	if r.Verification.SVID.Kind != "signing" || !r.Verification.SVID.Conformant || r.Status != inspect.StatusValid {
		t.Errorf("cacerts: %+v, status %s, findings %v", r.Verification.SVID, r.Status, r.Findings)
	}
}

func TestAnalyzeDefaultsToNow(t *testing.T) {
	root := rootCA(t, "now", time.Now().Add(-time.Hour), 10*time.Hour)
	before := time.Now()
	r := inspect.Analyze(inspect.Input{Chain: []*x509.Certificate{root.cert}}, inspect.Options{})
	if r.InspectedAt.Before(before.Add(-time.Second)) || r.InspectedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("inspected_at = %v, want about now", r.InspectedAt)
	}
	if r.InspectedAt.Location() != time.UTC {
		t.Errorf("inspected_at is not UTC: %v", r.InspectedAt)
	}
}

func withSubject(c *x509.Certificate, name pkix.Name) *x509.Certificate {
	tmpl := *c
	tmpl.Subject = name
	tmpl.RawSubject = nil
	tmpl.SerialNumber = big.NewInt(99)
	return &tmpl
}

// sanURI is a subject alternative name extension holding one URI.
func sanURI(t *testing.T, uri string, critical bool) pkix.Extension {
	t.Helper()
	v, err := asn1.Marshal([]asn1.RawValue{{Tag: 6, Class: asn1.ClassContextSpecific, Bytes: []byte(uri)}})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: critical, Value: v}
}

// digitalSignatureOnly is a key usage extension with digitalSignature set.
func digitalSignatureOnly(t *testing.T, critical bool) pkix.Extension {
	t.Helper()
	v, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x80}, BitLength: 1})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: critical, Value: v}
}

func messages(r *inspect.Report) string {
	var b strings.Builder
	for _, f := range r.Findings {
		b.WriteString("  " + f.Code + ": " + f.Message + "\n")
	}
	return b.String()
}

// TestProfiles checks what each kind of input is judged as, and the role
// each certificate gets.
func TestProfiles(t *testing.T) {
	day := 24 * time.Hour
	root := rootCA(t, "root", epoch.AddDate(-1, 0, 0), 10*365*day)
	otherRoot := rootCA(t, "other-root", epoch.AddDate(-1, 0, 0), 10*365*day)
	inter := intermediateCA(t, "intermediate", root, epoch.AddDate(0, -1, 0), 365*day)
	key := ecKey(t, "leaf")
	svid := sign(t, leafTemplate("spiffe://cluster.local/ns/a/sa/b", epoch, day), key.Public(), inter)
	tlsTmpl := leafTemplate("spiffe://cluster.local/ns/a/sa/b", epoch, day)
	tlsTmpl.URIs, tlsTmpl.DNSNames = nil, []string{"api.example.test"}
	tlsLeaf := sign(t, tlsTmpl, key.Public(), inter)
	chain := func(certs ...*x509.Certificate) []*x509.Certificate { return certs }

	tests := []struct {
		name    string
		chain   []*x509.Certificate
		profile inspect.Profile
		roles   []string
		svid    string // the SVID check's kind, "" when not checked
	}{
		{name: "SVID", chain: chain(svid, inter.cert), profile: inspect.ProfileSVID, roles: []string{"leaf", "intermediate"}, svid: "leaf"},
		{name: "TLS certificate", chain: chain(tlsLeaf, inter.cert), profile: inspect.ProfileTLS, roles: []string{"leaf", "intermediate"}},
		{name: "self-signed root alone", chain: chain(root.cert), profile: inspect.ProfileCA, roles: []string{"root"}, svid: "signing"},
		{name: "cacerts chain", chain: chain(inter.cert, root.cert), profile: inspect.ProfileCA, roles: []string{"intermediate", "root"}, svid: "signing"},
		{name: "bundle of unrelated roots", chain: chain(root.cert, otherRoot.cert), profile: inspect.ProfileBundle, roles: []string{"root", "root"}, svid: "signing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := inspect.Analyze(inspect.Input{Chain: tt.chain}, inspect.Options{Now: epoch.Add(time.Hour)})
			if r.Profile != tt.profile {
				t.Errorf("profile = %q, want %q", r.Profile, tt.profile)
			}
			var roles []string
			for _, c := range r.Certificates {
				roles = append(roles, c.Role)
			}
			if !slices.Equal(roles, tt.roles) {
				t.Errorf("roles = %v, want %v", roles, tt.roles)
			}
			if got := r.Verification.SVID; got.Checked != (tt.svid != "") || got.Kind != tt.svid {
				t.Errorf("SVID check = %+v, want kind %q", got, tt.svid)
			}
			if r.Status != inspect.StatusValid {
				t.Errorf("status = %s, want valid: %s", r.Status, messages(r))
			}
		})
	}
}
