package inspect

import (
	"crypto/x509"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// checkSVID checks the chain against the X509-SVID specification. A leaf with
// a SPIFFE ID that has a path is checked as a leaf SVID; a CA certificate
// without one (Istio's cacerts, a root file) and every root of a bundle are
// checked as SVID signing certificates; a leaf without a SPIFFE ID is an
// ordinary TLS certificate, checked by checkTLS instead.
func (a *analysis) checkSVID() {
	s := &a.r.Verification.SVID
	leaf := a.in.Chain[0]
	leafRef := a.refs[leaf]
	if a.r.Profile == ProfileTLS {
		a.checkTLS(leaf)
		return
	}

	var leafID spiffeid.ID
	hasID := false
	if len(leaf.URIs) > 0 {
		if id, err := spiffeIDFromURI(leaf.URIs[0]); err == nil {
			leafID, hasID = id, true
			s.SPIFFEID = id.String()
			s.TrustDomain = id.TrustDomain().Name()
		}
	}

	before := len(a.r.Findings)
	switch {
	case a.r.Profile == ProfileBundle || leaf.IsCA && (!hasID || leafID.Path() == ""):
		s.Checked, s.Kind = true, "signing"
		signingID := leafID
		if a.r.Profile == ProfileBundle {
			signingID = spiffeid.ID{} // roots of several trust domains may share a bundle
		}
		for _, c := range a.in.Chain {
			a.checkSigning(c, signingID)
		}
	default:
		s.Checked, s.Kind = true, "leaf"
		a.checkLeaf(leaf)
		for _, c := range a.in.Chain[1:] {
			a.checkSigning(c, leafID)
		}
	}
	for _, f := range a.r.Findings[before:] {
		if f.Severity == SeverityError && !slices.Contains(s.Violations, f.Code) {
			s.Violations = append(s.Violations, f.Code)
		}
	}
	s.Conformant = len(s.Violations) == 0

	// go-spiffe's own verification, as a SPIFFE-aware peer runs it. Report
	// its verdict only when nothing above already explains a rejection.
	if s.Kind != "leaf" || !hasID || len(a.in.Bundle) == 0 || a.hasError() {
		return
	}
	bundle := x509bundle.FromX509Authorities(leafID.TrustDomain(), a.in.Bundle)
	if _, _, err := x509svid.Verify(a.in.Chain, bundle, x509svid.WithTime(a.now)); err != nil {
		a.add("svid-rejected", SeverityError, leafRef, "go-spiffe rejects the X509-SVID: %s", err)
		s.Violations = append(s.Violations, "svid-rejected")
		s.Conformant = false
	}
}

// checkTLS judges a leaf without a SPIFFE ID as an ordinary TLS
// certificate: clients match the host name against its subject alternative
// names only (RFC 6125; the common name is ignored), so it needs one.
func (a *analysis) checkTLS(leaf *x509.Certificate) {
	if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 && len(leaf.URIs) == 0 && len(leaf.EmailAddresses) == 0 {
		ref := a.refs[leaf]
		a.add("tls-no-san", SeverityWarning, ref,
			"%s has no subject alternative name: TLS clients match host names against SANs only and will reject it", ref)
	}
}

// checkLeaf applies the specification's MUSTs (and one SHOULD) for a leaf
// X509-SVID.
func (a *analysis) checkLeaf(leaf *x509.Certificate) {
	ref := a.refs[leaf]
	if n := len(leaf.URIs); n > 1 {
		uris := make([]string, 0, n)
		for _, u := range leaf.URIs {
			uris = append(uris, u.String())
		}
		a.add("multiple-uri-sans", SeverityError, ref,
			"%s has %d URI SANs (%s): an X509-SVID has exactly one, and validators must reject it",
			ref, n, strings.Join(uris, ", "))
	}
	if id, err := x509svid.IDFromCert(leaf); err == nil {
		if id.Path() == "" {
			a.add("svid-root-id", SeverityError, ref,
				"the SPIFFE ID %s of %s has no path: a leaf X509-SVID needs a non-root path such as /ns/NS/sa/SA", id, ref)
		}
	} else if len(leaf.URIs) == 1 {
		a.add("svid-invalid-id", SeverityError, ref,
			"the URI SAN %q of %s is not a valid SPIFFE ID: %s", leaf.URIs[0].String(), ref, err)
	}
	if len(leaf.RawSubject) <= 2 && !extensionCritical(leaf, oidSubjectAltName) {
		a.add("svid-san-not-critical", SeverityError, ref,
			"%s has an empty subject, so its subject alternative name extension must be marked critical", ref)
	}
	if leaf.IsCA {
		a.add("svid-leaf-ca", SeverityError, ref,
			"%s is a leaf X509-SVID but its basic constraints say CA=true; a leaf must have CA=false", ref)
	}
	a.checkKeyUsageExtension(leaf)
	if hasExtension(leaf, oidKeyUsage) {
		if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
			a.add("svid-no-digital-signature", SeverityError, ref,
				"%s lacks the digitalSignature key usage, which a leaf X509-SVID must have", ref)
		}
		if leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
			a.add("svid-leaf-cert-sign", SeverityError, ref,
				"%s is a leaf but has the keyCertSign key usage, which a leaf X509-SVID must not have", ref)
		}
		if leaf.KeyUsage&x509.KeyUsageCRLSign != 0 {
			a.add("svid-leaf-crl-sign", SeverityError, ref,
				"%s is a leaf but has the cRLSign key usage, which a leaf X509-SVID must not have", ref)
		}
	}
	if !hasExtension(leaf, oidExtKeyUsage) {
		a.add("svid-no-ext-key-usage", SeverityWarning, ref,
			"%s has no extended key usage; a leaf X509-SVID should list serverAuth and clientAuth", ref)
		return
	}
	server := slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	client := slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	if !server || !client {
		missing := "serverAuth"
		switch {
		case server:
			missing = "clientAuth"
		case !client:
			missing = "serverAuth and clientAuth"
		}
		a.add("svid-ext-key-usage", SeverityError, ref,
			"%s has an extended key usage without %s: a leaf X509-SVID that has the extension must allow both serverAuth and clientAuth, or mTLS fails in one direction",
			ref, missing)
	}
}

// checkSigning applies the specification's MUSTs for a signing certificate,
// and its SHOULD that the CA's SPIFFE ID is in the leaf's trust domain.
func (a *analysis) checkSigning(c *x509.Certificate, leafID spiffeid.ID) {
	ref := a.refs[c]
	if !c.IsCA {
		a.add("svid-signing-not-ca", SeverityError, ref,
			"%s signs certificates in an X509-SVID chain but its basic constraints do not say CA=true", ref)
	}
	a.checkKeyUsageExtension(c)
	if hasExtension(c, oidKeyUsage) && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		a.add("svid-signing-no-cert-sign", SeverityError, ref,
			"%s signs certificates in an X509-SVID chain but lacks the keyCertSign key usage", ref)
	}
	if len(c.URIs) > 1 {
		a.add("multiple-uri-sans", SeverityError, ref,
			"%s has %d URI SANs: an SVID signing certificate has at most one", ref, len(c.URIs))
	}
	for _, u := range c.URIs {
		id, err := spiffeIDFromURI(u)
		if err != nil {
			continue
		}
		if id.Path() != "" {
			a.add("svid-signing-id-path", SeverityError, ref,
				"the SPIFFE ID %s of the signing certificate %s has a path: a signing certificate's ID must be the bare trust domain", id, ref)
		}
		if !leafID.IsZero() && id.TrustDomain() != leafID.TrustDomain() {
			a.add("svid-signing-trust-domain", SeverityWarning, ref,
				"the signing certificate %s is in trust domain %s but the leaf is in %s", ref, id.TrustDomain().Name(), leafID.TrustDomain().Name())
		}
	}
}

// checkKeyUsageExtension checks that the key usage extension is present and
// critical, as the specification requires of every SVID.
func (a *analysis) checkKeyUsageExtension(c *x509.Certificate) {
	ref := a.refs[c]
	switch {
	case !hasExtension(c, oidKeyUsage):
		a.add("svid-no-key-usage", SeverityError, ref,
			"%s has no key usage extension, which every X509-SVID certificate must have", ref)
	case !extensionCritical(c, oidKeyUsage):
		a.add("svid-key-usage-not-critical", SeverityError, ref,
			"the key usage extension of %s is not marked critical, as the X509-SVID specification requires", ref)
	}
}
