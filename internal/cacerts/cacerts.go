// Package cacerts names the files of Istio's plugged-in CA layout,
// "cacerts" (a directory, or the keys of a Secret), and decodes a set of
// them. The CA's data directory, its Kubernetes Secret and
// `castellan cert inspect` read the same names through it, so that a set
// made for Istio's plugged-in CA is used as it is.
package cacerts

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"

	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// The files of a cacerts set.
const (
	// CACertFile holds the certificate that signs leaves: a self-signed
	// root, or an intermediate.
	CACertFile = "ca-cert.pem"
	// CAKeyFile holds CACertFile's private key (PKCS#8, SEC 1 or PKCS#1
	// PEM). It is absent when the key lives in a key store.
	CAKeyFile = "ca-key.pem"
	// CertChainFile holds the certificates above CACertFile, nearest
	// first. It is empty for a self-signed root.
	CertChainFile = "cert-chain.pem"
	// RootCertFile holds the trust bundle.
	RootCertFile = "root-cert.pem"
)

// Files returns the names of a complete set, CACertFile first.
func Files() []string { return []string{CACertFile, CAKeyFile, CertChainFile, RootCertFile} }

// Set is a decoded cacerts set.
type Set struct {
	// Cert is the first certificate of CACertFile.
	Cert *x509.Certificate
	// Key is CAKeyFile's key, or nil when Decode was told the key lives
	// elsewhere.
	Key crypto.Signer
	// Chain is CertChainFile's certificates, possibly none.
	Chain []*x509.Certificate
	// Roots is RootCertFile's certificates; when that is empty or absent
	// and Cert is self-signed, Cert alone.
	Roots []*x509.Certificate
}

// Decode decodes the set whose files' contents data holds, keyed by file
// name. CACertFile is required; so is CAKeyFile when withKey is true (it
// is not read otherwise); CertChainFile may be empty or absent; an empty
// or absent RootCertFile is allowed only for a self-signed CACertFile.
// Every error names the file.
func Decode(data map[string][]byte, withKey bool) (*Set, error) {
	certs, err := certsIn(data, CACertFile)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no %s", CACertFile)
	}
	s := &Set{Cert: certs[0]}
	if withKey {
		keyPEM := data[CAKeyFile]
		if len(bytes.TrimSpace(keyPEM)) == 0 {
			return nil, fmt.Errorf("no %s", CAKeyFile)
		}
		if s.Key, err = pemfile.ParsePrivateKey(keyPEM); err != nil {
			return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
		}
	}
	if s.Chain, err = certsIn(data, CertChainFile); err != nil {
		return nil, err
	}
	if s.Roots, err = certsIn(data, RootCertFile); err != nil {
		return nil, err
	}
	if len(s.Roots) == 0 {
		if !pemfile.IsSelfSigned(s.Cert) {
			return nil, fmt.Errorf("no %s, and %s is not self-signed", RootCertFile, CACertFile)
		}
		s.Roots = []*x509.Certificate{s.Cert}
	}
	return s, nil
}

// certsIn parses the certificates of file name in data; an empty or
// absent file holds none.
func certsIn(data map[string][]byte, name string) ([]*x509.Certificate, error) {
	b := data[name]
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, nil
	}
	certs, err := pemfile.ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return certs, nil
}
