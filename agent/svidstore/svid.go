package svidstore

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// SVID is an X.509-SVID together with the encodings its consumers need. It
// is immutable once built: every field is computed by NewSVID and must not be
// modified, because the same SVID is shared by every subscriber.
type SVID struct {
	// X509 is the parsed SVID: its SPIFFE ID, its chain (leaf first, then
	// intermediates, without the root) and its private key.
	X509 *x509svid.SVID
	// ChainPEM is the chain as concatenated PEM CERTIFICATE blocks.
	ChainPEM []byte
	// ChainDER is the chain as concatenated DER certificates, the form the
	// SPIFFE Workload API uses.
	ChainDER []byte
	// KeyPEM is the private key as a PKCS #8 "PRIVATE KEY" PEM block.
	KeyPEM []byte
	// KeyDER is the private key in PKCS #8 DER form.
	KeyDER []byte
	// NotAfter is the earliest NotAfter in the chain: the SVID must not be
	// served after it.
	NotAfter time.Time
	// Version identifies the content: it is derived from the chain, so a new
	// certificate always has a new version and the same one never changes.
	Version string
}

// ID returns the SVID's SPIFFE ID.
func (s *SVID) ID() spiffeid.ID { return s.X509.ID }

// NewSVID validates chain and key as an X.509-SVID (a SPIFFE ID in the leaf,
// signing rules on every certificate, a key that matches the leaf) and
// precomputes its encodings. chain is leaf first; a trailing self-signed
// root, as CAs often append, is dropped, because a trust anchor belongs in
// the bundle and not in the chain a workload presents.
func NewSVID(chain []*x509.Certificate, key any) (*SVID, error) {
	if len(chain) == 0 {
		return nil, errors.New("svidstore: empty certificate chain")
	}
	if len(chain) > 1 && pemfile.IsSelfSigned(chain[len(chain)-1]) {
		chain = chain[:len(chain)-1]
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("svidstore: could not encode private key: %w", err)
	}
	var chainDER []byte
	for _, c := range chain {
		chainDER = append(chainDER, c.Raw...)
	}
	parsed, err := x509svid.ParseRaw(chainDER, keyDER)
	if err != nil {
		return nil, fmt.Errorf("svidstore: not a valid X.509-SVID: %w", err)
	}
	var chainPEM bytes.Buffer
	notAfter := chain[0].NotAfter
	for _, c := range chain {
		_ = pem.Encode(&chainPEM, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return &SVID{
		X509:     parsed,
		ChainPEM: chainPEM.Bytes(),
		ChainDER: chainDER,
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		KeyDER:   keyDER,
		NotAfter: notAfter,
		Version:  contentVersion(chainDER),
	}, nil
}

// Bundle is the set of trusted root certificates, with its encodings. It is
// immutable once built.
type Bundle struct {
	// Certificates are the trusted roots, in file order.
	Certificates []*x509.Certificate
	// PEM is the roots as concatenated PEM CERTIFICATE blocks.
	PEM []byte
	// DER is the roots as concatenated DER certificates.
	DER []byte
	// Version identifies the content.
	Version string
}

// MaxBundleSize is the largest PEM trust bundle ParseBundle accepts.
const MaxBundleSize = 1 << 20

// ParseBundle parses PEM trust anchors. Every PEM block must be a
// CERTIFICATE that parses and is a CA; anything else is an error naming the
// block, so that a half-written or wrong file is refused rather than
// partly trusted.
func ParseBundle(pemBytes []byte) (*Bundle, error) {
	if len(pemBytes) > MaxBundleSize {
		return nil, fmt.Errorf("svidstore: trust bundle is %d bytes, over the %d-byte limit", len(pemBytes), MaxBundleSize)
	}
	certs, err := pemfile.ParseCertificates(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("svidstore: trust bundle: %w", err)
	}
	return NewBundle(certs)
}

// NewBundle builds a Bundle from CA certificates. It refuses an empty set
// and any certificate that is not a CA.
func NewBundle(certs []*x509.Certificate) (*Bundle, error) {
	if len(certs) == 0 {
		return nil, errors.New("svidstore: trust bundle holds no certificate")
	}
	var pemBuf bytes.Buffer
	var der []byte
	for i, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("svidstore: trust bundle certificate %d (subject %q) is not a CA", i+1, c.Subject.String())
		}
		_ = pem.Encode(&pemBuf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		der = append(der, c.Raw...)
	}
	return &Bundle{
		Certificates: append([]*x509.Certificate(nil), certs...),
		PEM:          pemBuf.Bytes(),
		DER:          der,
		Version:      contentVersion(der),
	}, nil
}

// contentVersion is a short, stable name for content: the first 8 bytes of
// its SHA-256, in hex. It survives restarts, so a client that reconnects
// with a version it already holds is not sent the same content again.
func contentVersion(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
