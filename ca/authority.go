// Package ca issues SPIFFE X.509 SVIDs. Its Issuer follows the issuance path
// in order: validate the CSR (ParseCSR, ValidateCSR), build the leaf
// template, sign it with the current Authority, and return the chain. It
// does not authenticate callers; the server does that first and passes the
// proven SPIFFE ID in.
package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// Authority is the signing material of a CA at one moment: the issuing
// certificate, its key, the certificates above it and the trust bundle.
// An Authority is immutable; a reload or rotation makes a new one.
type Authority struct {
	// Cert is the certificate that signs leaves.
	Cert *x509.Certificate
	// Signer is Cert's private key. It may live in a KMS or an HSM; when
	// it is a ContextSigner, a signature gives up with the request's
	// context.
	Signer crypto.Signer
	// Chain holds the certificates above Cert, nearest first, ending with
	// the root. It is empty when Cert is itself the root.
	Chain []*x509.Certificate
	// Roots is the trust bundle: every root a peer should trust. It holds
	// Cert's root and may hold others during a rotation.
	Roots []*x509.Certificate

	sig       sigAlg
	sigAlgDER []byte // sig's AlgorithmIdentifier
	akid      []byte
	akidExt   []byte   // the leaves' authorityKeyIdentifier extension
	chainPEM  []string // Cert and Chain in PEM, nearest first
	notAfter  time.Time
	rootIndex int
}

// ContextSigner is a crypto.Signer whose signatures may wait on a remote
// key store (Vault Transit): SignContext gives up when ctx ends, so that
// a request its caller abandoned does not hold a signature slot.
type ContextSigner interface {
	crypto.Signer
	SignContext(ctx context.Context, rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

// NewAuthority checks that cert is a CA certificate whose key is signer,
// that chain links cert to a root in roots, and returns the Authority.
func NewAuthority(cert *x509.Certificate, signer crypto.Signer, chain, roots []*x509.Certificate) (*Authority, error) {
	switch {
	case cert == nil:
		return nil, errors.New("ca: no CA certificate")
	case signer == nil:
		return nil, errors.New("ca: no CA signer")
	case !cert.IsCA || !cert.BasicConstraintsValid:
		return nil, fmt.Errorf("ca: certificate %q is not a CA certificate (basicConstraints CA is false)", cert.Subject)
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, fmt.Errorf("ca: certificate %q may not sign certificates (no keyCertSign key usage)", cert.Subject)
	case len(roots) == 0:
		return nil, errors.New("ca: empty trust bundle")
	}
	if !pemfile.SameKey(signer.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("ca: the CA key does not match the public key of certificate %q", cert.Subject)
	}
	sig, err := sigAlgFor(signer.Public())
	if err != nil {
		return nil, err
	}
	a := &Authority{Cert: cert, Signer: signer, Chain: chain, Roots: roots, sig: sig, notAfter: cert.NotAfter}
	if err := a.verifyChain(); err != nil {
		return nil, err
	}
	a.akid = cert.SubjectKeyId
	if len(a.akid) == 0 {
		id := keyIDOf(cert.RawSubjectPublicKeyInfo)
		a.akid = id[:]
	}
	a.sigAlgDER = algorithmIdentifier(sig)
	a.akidExt = authorityKeyIDExt(a.akid)
	for _, c := range append([]*x509.Certificate{cert}, chain...) {
		a.chainPEM = append(a.chainPEM, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
		if c.NotAfter.Before(a.notAfter) {
			a.notAfter = c.NotAfter
		}
	}
	return a, nil
}

// verifyChain checks that Cert chains through Chain to one of Roots.
func (a *Authority) verifyChain() error {
	pool := x509.NewCertPool()
	for _, r := range a.Roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	top := a.Cert
	for _, c := range a.Chain {
		inter.AddCert(c)
		top = c
	}
	if len(a.Chain) == 0 && !bytes.Equal(a.Cert.RawIssuer, a.Cert.RawSubject) {
		return fmt.Errorf("ca: certificate %q is not self-signed and no chain up to its root was given", a.Cert.Subject)
	}
	// The root may be given in Chain; it must also be in Roots.
	if a.rootIndex = slices.IndexFunc(a.Roots, top.Equal); a.rootIndex < 0 {
		return fmt.Errorf("ca: the chain of %q ends at %q, which is not in the trust bundle", a.Cert.Subject, top.Subject)
	}
	// Check the links at a moment when every certificate is valid, so that
	// a chain prepared ahead of time loads; expiry is enforced at signing.
	at := a.Cert.NotBefore
	for _, c := range append(a.Chain, a.Roots[a.rootIndex]) {
		if c.NotBefore.After(at) {
			at = c.NotBefore
		}
	}
	_, err := a.Cert.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   at.Add(time.Second),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("ca: certificate %q does not chain to the trust bundle: %w", a.Cert.Subject, err)
	}
	return nil
}

// NotAfter is the earliest expiry in the signing chain. No leaf outlives it.
func (a *Authority) NotAfter() time.Time { return a.notAfter }

// Root returns the root that Cert chains to.
func (a *Authority) Root() *x509.Certificate { return a.Roots[a.rootIndex] }

// ChainPEM returns Cert and the certificates above it, nearest first, as
// PEM blocks. It ends with the root.
func (a *Authority) ChainPEM() []string { return slices.Clone(a.chainPEM) }

// BundlePEM returns the trust bundle as concatenated PEM.
func (a *Authority) BundlePEM() []byte { return pemfile.EncodeCertificates(a.Roots) }

// Source gives the Authority to sign with now. Implementations swap in a
// new Authority on reload or rotation; they must be safe for concurrent use.
type Source interface {
	Authority() *Authority
}

// Notifier is a Source that says when its Authority changes (a reload, a
// rotation step): Changed returns a channel closed at the next change. A
// caller takes the channel before it reads Authority, then waits on it.
type Notifier interface {
	Source
	Changed() <-chan struct{}
}

// StaticSource is a Source that always returns the same Authority.
type StaticSource struct{ A *Authority }

// Authority returns s.A.
func (s StaticSource) Authority() *Authority { return s.A }

type sigAlg struct {
	oid  asn1.ObjectIdentifier
	null bool // parameters are NULL (RSA PKCS#1 v1.5)
	hash crypto.Hash
}

var (
	oidSigECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidSigECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidSigECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidSigSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidSigEd25519         = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// maxSigLen bounds the size of one signature, for buffer sizing.
func (alg sigAlg) maxSigLen() int {
	if alg.null { // RSA
		return 1024 // 8192 bits
	}
	return 160 // ECDSA P-521 in DER; Ed25519 is 64
}

// sigAlgFor picks the signature algorithm crypto/x509 would pick for pub.
func sigAlgFor(pub crypto.PublicKey) (sigAlg, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return sigAlg{oid: oidSigECDSAWithSHA256, hash: crypto.SHA256}, nil
		case elliptic.P384():
			return sigAlg{oid: oidSigECDSAWithSHA384, hash: crypto.SHA384}, nil
		case elliptic.P521():
			return sigAlg{oid: oidSigECDSAWithSHA512, hash: crypto.SHA512}, nil
		}
		return sigAlg{}, fmt.Errorf("ca: unsupported CA key curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		return sigAlg{oid: oidSigSHA256WithRSA, null: true, hash: crypto.SHA256}, nil
	case ed25519.PublicKey:
		return sigAlg{oid: oidSigEd25519}, nil
	}
	return sigAlg{}, fmt.Errorf("ca: unsupported CA key type %T", pub)
}

// keyIDLen is the length of a key identifier.
const keyIDLen = 20

// keyIDOf computes a key identifier from a DER SubjectPublicKeyInfo: the
// leftmost 160 bits of the SHA-256 of the subjectPublicKey bits (RFC 7093,
// section 2, method 1), as crypto/x509 does. It is an array, which a
// leaf's template holds without an allocation.
func keyIDOf(spki []byte) [keyIDLen]byte {
	bits, err := subjectPublicKeyBits(spki)
	if err != nil {
		bits = spki
	}
	sum := sha256.Sum256(bits)
	return [keyIDLen]byte(sum[:keyIDLen])
}

// ChainAbove returns the certificates above cert, nearest first, ending
// with its root. Like Istio's cert-chain.pem, chainFile may or may not start
// with cert and may or may not end with the root; a missing root is taken
// from roots.
func ChainAbove(cert *x509.Certificate, chainFile, roots []*x509.Certificate) []*x509.Certificate {
	var chain []*x509.Certificate
	for _, c := range chainFile {
		if !c.Equal(cert) {
			chain = append(chain, c)
		}
	}
	top := cert
	if len(chain) > 0 {
		top = chain[len(chain)-1]
	}
	if IsSelfSigned(top) {
		return chain
	}
	for _, r := range roots {
		if top.CheckSignatureFrom(r) == nil {
			return append(chain, r)
		}
	}
	return chain
}

// IsSelfSigned reports whether c names itself as issuer and its signature
// verifies with its own key.
func IsSelfSigned(c *x509.Certificate) bool { return pemfile.IsSelfSigned(c) }
