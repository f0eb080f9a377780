package kubestore

import (
	"crypto"
	"crypto/x509"
	"fmt"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/internal/cacerts"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// Keys of the CA Secret. They are the files of Istio's cacerts layout
// (package cacerts), so a Secret made for Istio's plugged-in CA can be
// used as it is.
const (
	// CACertKey holds the certificate that signs leaves: the self-signed
	// root, or an intermediate.
	CACertKey = cacerts.CACertFile
	// CAKeyKey holds CACertKey's private key (PKCS#8, SEC 1 or PKCS#1 PEM).
	// It is absent when the key lives outside Kubernetes (Config.Signer).
	CAKeyKey = cacerts.CAKeyFile
	// CertChainKey holds the certificates above CACertKey, nearest first.
	// It is empty for a self-signed root.
	CertChainKey = cacerts.CertChainFile
	// RootCertKey holds the trust bundle.
	RootCertKey = cacerts.RootCertFile
)

// decodeAuthority builds an Authority from the data of a CA Secret. When
// signer is not nil it is the CA key, and the Secret's ca-key.pem, if any,
// must not contradict it.
func decodeAuthority(data map[string][]byte, signer crypto.Signer) (*ca.Authority, error) {
	set, err := cacerts.Decode(data, signer == nil)
	if err != nil {
		return nil, err
	}
	key := signer
	if key == nil {
		key = set.Key
	}
	return ca.NewAuthority(set.Cert, key, ca.ChainAbove(set.Cert, set.Chain, set.Roots), set.Roots)
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
