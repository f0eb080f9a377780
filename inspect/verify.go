package inspect

import (
	"bytes"
	"crypto/x509"
	"fmt"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// checkLinks walks the chain as presented and explains every broken link:
// certificates out of order, a missing intermediate, or certificates after a
// self-signed one. With a bundle it also checks that the top of the chain is
// issued by (or is) a bundle certificate.
func (a *analysis) checkLinks() {
	chain := a.in.Chain
	if a.r.Profile == ProfileBundle {
		return // unrelated roots by definition
	}
	for i := 0; i+1 < len(chain); i++ {
		child, parent := chain[i], chain[i+1]
		childRef, parentRef := a.refs[child], a.refs[parent]
		if selfSigned(child) {
			a.add("unrelated-certificates", SeverityWarning, parentRef,
				"%s follows the self-signed %s, so it cannot be part of its chain: is this a bundle rather than a chain?",
				parentRef, childRef)
			return
		}
		if issued(parent, child) {
			continue
		}
		switch other := a.issuerOf(child); {
		case other != "":
			a.add("chain-order", SeverityError, childRef,
				"%s was issued by %s, not by the next certificate %s: the chain is out of order",
				childRef, other, parentRef)
			return // the rest of the walk would only repeat the disorder
		case bytes.Equal(child.RawIssuer, parent.RawSubject):
			a.add("chain-signature", SeverityError, childRef,
				"%s names %s (%s) as its issuer, but that certificate's key did not sign it: the CA was re-keyed or the chain mixes two CAs",
				childRef, parentRef, nameOr(parent.Subject.String()))
		default:
			a.add("missing-intermediate", SeverityError, childRef,
				"%s was issued by %s, which is missing: an intermediate certificate belongs between %s and %s",
				childRef, nameOr(child.Issuer.String()), childRef, parentRef)
		}
	}

	top := chain[len(chain)-1]
	if len(a.in.Bundle) == 0 || selfSigned(top) || a.inBundle(top) {
		return
	}
	for _, b := range a.in.Bundle {
		if issued(b, top) {
			return
		}
	}
	topRef := a.refs[top]
	a.add("missing-intermediate", SeverityError, topRef,
		"%s was issued by %s, which is in neither the chain nor the bundle: an intermediate certificate is missing, or the bundle belongs to another CA",
		topRef, nameOr(top.Issuer.String()))
}

// issuerOf returns the ref of a chain or bundle certificate that issued
// child, or "".
func (a *analysis) issuerOf(child *x509.Certificate) string {
	for _, c := range a.in.Chain {
		if c != child && issued(c, child) {
			return a.refs[c]
		}
	}
	for _, c := range a.in.Bundle {
		if issued(c, child) {
			return a.refs[c]
		}
	}
	return ""
}

func (a *analysis) inBundle(cert *x509.Certificate) bool {
	for _, b := range a.in.Bundle {
		if bytes.Equal(b.Raw, cert.Raw) {
			return true
		}
	}
	return false
}

// verifyChain runs RFC 5280 path validation of the leaf against the bundle,
// with the rest of the chain as intermediates.
func (a *analysis) verifyChain() {
	v := &a.r.Verification.Chain
	if len(a.in.Bundle) == 0 || a.r.Profile == ProfileBundle {
		return
	}
	v.Checked = true
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   a.now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	for _, b := range a.in.Bundle {
		opts.Roots.AddCert(b)
	}
	for _, c := range a.in.Chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	leaf := a.in.Chain[0]
	chains, err := leaf.Verify(opts)
	if err != nil {
		v.Error = err.Error()
		a.add("verify-failed", SeverityError, a.refs[leaf],
			"the chain does not verify against the bundle from %s: %s", nameOr(a.in.BundleSource), err)
		return
	}
	v.Verified = true
	for _, c := range chains[0] {
		v.Path = append(v.Path, a.refOf(c))
	}
}

// refOf returns the ref of cert, matching by content when the verifier
// returned a different pointer for the same certificate.
func (a *analysis) refOf(cert *x509.Certificate) string {
	if ref, ok := a.refs[cert]; ok {
		return ref
	}
	for _, list := range [][]*x509.Certificate{a.in.Chain, a.in.Bundle} {
		for _, c := range list {
			if bytes.Equal(c.Raw, cert.Raw) {
				return a.refs[c]
			}
		}
	}
	return "?"
}

// checkKey compares the private key's public half with the leaf's key.
func (a *analysis) checkKey() {
	if a.in.PublicKey == nil {
		return
	}
	leaf := a.in.Chain[0]
	k := &a.r.Verification.Key
	k.Checked = true
	k.Source = a.in.KeySource
	if pemfile.SameKey(a.in.PublicKey, leaf.PublicKey) {
		k.Matches = true
		return
	}
	kind, certKind := describeKey(a.in.PublicKey).String(), describeKey(leaf.PublicKey).String()
	detail := ""
	if kind != certKind {
		detail = fmt.Sprintf(" (the key is %s, the certificate's is %s)", kind, certKind)
	}
	a.add("key-mismatch", SeverityError, a.refs[leaf],
		"the private key from %s does not match the public key of %s%s: TLS with this pair fails",
		nameOr(a.in.KeySource), a.refs[leaf], detail)
}

// nameOr returns s, or a placeholder for an empty name.
func nameOr(s string) string {
	if s == "" {
		return "(empty name)"
	}
	return s
}
