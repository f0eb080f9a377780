package sdsclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// decodeSecret unpacks a Secret and applies the checks Envoy applies when
// it loads one: the proto's validation rules, and certificates and keys
// that parse and belong together.
func decodeSecret(a *anypb.Any) (*tlsv3.Secret, error) {
	if a.GetTypeUrl() != secretTypeURL {
		return nil, fmt.Errorf("sdsclient: resource has type %q, want %q", a.GetTypeUrl(), secretTypeURL)
	}
	secret := &tlsv3.Secret{}
	if err := a.UnmarshalTo(secret); err != nil {
		return nil, fmt.Errorf("sdsclient: resource does not decode as a Secret: %w", err)
	}
	if err := secret.ValidateAll(); err != nil {
		return nil, fmt.Errorf("sdsclient: secret %q fails validation: %w", secret.GetName(), err)
	}
	switch secret.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		if _, _, err := TLSCertificate(secret); err != nil {
			return nil, err
		}
	case *tlsv3.Secret_ValidationContext:
		if _, err := TrustedCA(secret); err != nil {
			return nil, err
		}
	}
	return secret, nil
}

// TLSCertificate returns the chain (leaf first) and private key of a
// tls_certificate Secret with inline content. It fails if the key does not
// match the leaf.
func TLSCertificate(secret *tlsv3.Secret) ([]*x509.Certificate, crypto.Signer, error) {
	tc := secret.GetTlsCertificate()
	if tc == nil {
		return nil, nil, fmt.Errorf("sdsclient: secret %q is not a tls_certificate", secret.GetName())
	}
	chainPEM := tc.GetCertificateChain().GetInlineBytes()
	keyPEM := tc.GetPrivateKey().GetInlineBytes()
	if len(chainPEM) == 0 || len(keyPEM) == 0 {
		return nil, nil, fmt.Errorf("sdsclient: secret %q has no inline certificate chain or key", secret.GetName())
	}
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("sdsclient: secret %q: certificate and key do not form a pair: %w", secret.GetName(), err)
	}
	certs := make([]*x509.Certificate, len(pair.Certificate))
	for i, der := range pair.Certificate {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, nil, fmt.Errorf("sdsclient: secret %q: certificate %d: %w", secret.GetName(), i, err)
		}
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("sdsclient: secret %q: key type %T cannot sign", secret.GetName(), pair.PrivateKey)
	}
	switch signer.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
	default:
		return nil, nil, fmt.Errorf("sdsclient: secret %q: unsupported key type %T", secret.GetName(), signer)
	}
	return certs, signer, nil
}

// TrustedCA returns the certificates of a validation_context Secret's
// inline trusted_ca.
func TrustedCA(secret *tlsv3.Secret) ([]*x509.Certificate, error) {
	vc := secret.GetValidationContext()
	if vc == nil {
		return nil, fmt.Errorf("sdsclient: secret %q is not a validation_context", secret.GetName())
	}
	rest := vc.GetTrustedCa().GetInlineBytes()
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("sdsclient: secret %q: trusted_ca holds a %q block", secret.GetName(), block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("sdsclient: secret %q: trusted_ca certificate %d: %w", secret.GetName(), len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("sdsclient: secret " + fmt.Sprintf("%q", secret.GetName()) + ": trusted_ca holds no certificate")
	}
	return certs, nil
}
