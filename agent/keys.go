package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// KeyType is the kind of private key the agent generates for each SVID.
type KeyType string

// The key types the agent can generate. The zero value means KeyECDSAP256.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA3072   KeyType = "rsa-3072"
)

// ParseKeyType returns the KeyType named s (case-insensitive).
func ParseKeyType(s string) (KeyType, error) {
	switch k := KeyType(strings.ToLower(s)); k {
	case KeyECDSAP256, KeyRSA2048, KeyRSA3072:
		return k, nil
	case "":
		return KeyECDSAP256, nil
	}
	return "", fmt.Errorf("agent: unknown key type %q: want %s, %s or %s", s, KeyECDSAP256, KeyRSA2048, KeyRSA3072)
}

// generateKey makes a new private key of type t. Keys never leave the
// agent: only the CSR built from them is sent.
func generateKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case KeyECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyRSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("agent: unknown key type %q", t)
}

// MaxDNSNames is the most DNS names an agent asks for (Config.DNSNames),
// as many as the CA allows one service account.
const MaxDNSNames = 16

// newCSR returns a PEM certificate request signed by key. It names id as
// its only URI SAN when id is set, and nothing otherwise: the CA takes the
// identity from the caller's token either way. dns, if any, are asked for
// beside it.
func newCSR(key crypto.Signer, id spiffeid.ID, dns ...string) ([]byte, error) {
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	if !id.IsZero() {
		u, err := url.Parse(id.String())
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("agent: could not create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
