package kubestore

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// Keys of the CA Secret. They are those of Istio's cacerts Secret, so a
// Secret made for Istio's plugged-in CA can be used as it is.
const (
	// CACertKey holds the certificate that signs leaves: the self-signed
	// root, or an intermediate.
	CACertKey = "ca-cert.pem"
	// CAKeyKey holds CACertKey's private key (PKCS#8, SEC 1 or PKCS#1 PEM).
	// It is absent when the key lives outside Kubernetes (Config.Signer).
	CAKeyKey = "ca-key.pem"
	// CertChainKey holds the certificates above CACertKey, nearest first.
	// It is empty for a self-signed root.
	CertChainKey = "cert-chain.pem"
	// RootCertKey holds the trust bundle.
	RootCertKey = "root-cert.pem"
)

// decodeAuthority builds an Authority from the data of a CA Secret. When
// signer is not nil it is the CA key, and the Secret's ca-key.pem, if any,
// must not contradict it.
func decodeAuthority(data map[string][]byte, signer crypto.Signer) (*ca.Authority, error) {
	certPEM := data[CACertKey]
	if len(bytes.TrimSpace(certPEM)) == 0 {
		return nil, fmt.Errorf("no %s", CACertKey)
	}
	certs, err := pemfile.ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertKey, err)
	}
	cert := certs[0]

	key := signer
	if key == nil {
		keyPEM := data[CAKeyKey]
		if len(bytes.TrimSpace(keyPEM)) == 0 {
			return nil, fmt.Errorf("no %s", CAKeyKey)
		}
		if key, err = pemfile.ParsePrivateKey(keyPEM); err != nil {
			return nil, fmt.Errorf("%s: %w", CAKeyKey, err)
		}
	}

	var chainFile []*x509.Certificate
	if b := data[CertChainKey]; len(bytes.TrimSpace(b)) != 0 {
		if chainFile, err = pemfile.ParseCertificates(b); err != nil {
			return nil, fmt.Errorf("%s: %w", CertChainKey, err)
		}
	}
	var roots []*x509.Certificate
	if b := data[RootCertKey]; len(bytes.TrimSpace(b)) != 0 {
		if roots, err = pemfile.ParseCertificates(b); err != nil {
			return nil, fmt.Errorf("%s: %w", RootCertKey, err)
		}
	}
	if len(roots) == 0 {
		if !ca.IsSelfSigned(cert) {
			return nil, fmt.Errorf("no %s, and %s is not self-signed", RootCertKey, CACertKey)
		}
		roots = []*x509.Certificate{cert}
	}
	a, err := ca.NewAuthority(cert, key, ca.ChainAbove(cert, chainFile, roots), roots)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// encodeAuthority returns the Secret data for a self-signed root. The key
// is left out when keyOutside is true.
func encodeAuthority(root *x509.Certificate, key crypto.Signer, keyOutside bool) (map[string][]byte, error) {
	certPEM := pemfile.EncodeCertificates([]*x509.Certificate{root})
	data := map[string][]byte{
		CACertKey:    certPEM,
		CertChainKey: {},
		RootCertKey:  certPEM,
	}
	if !keyOutside {
		keyPEM, err := pemfile.EncodePrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("could not encode the root key: %w", err)
		}
		data[CAKeyKey] = keyPEM
	}
	return data, nil
}
