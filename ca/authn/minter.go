package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/castellan-mesh/castellan/internal/dnsname"
	"github.com/castellan-mesh/castellan/internal/pemfile"
)

// Minter issues service-account tokens shaped like Kubernetes' own, signed
// with an ECDSA P-256 key it generates. It stands in for a cluster's token
// issuer in the demo and in tests: publish its key set with WriteJWKS and
// point a JWT authenticator at the file.
type Minter struct {
	issuer string
	key    *ecdsa.PrivateKey
	kid    string
	signer jose.Signer
}

// NewMinter returns a Minter for issuer with a fresh signing key.
func NewMinter(issuer string) (*Minter, error) {
	if issuer == "" {
		return nil, errors.New("authn: minter needs an issuer")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("authn: generating minter key: %w", err)
	}
	jwk := jose.JSONWebKey{Key: &key.PublicKey}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("authn: minter key thumbprint: %w", err)
	}
	kid := base64.RawURLEncoding.EncodeToString(thumb)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		return nil, fmt.Errorf("authn: minter signer: %w", err)
	}
	return &Minter{issuer: issuer, key: key, kid: kid, signer: signer}, nil
}

// Issuer returns the "iss" of the tokens m mints.
func (m *Minter) Issuer() string { return m.issuer }

// JWKS returns m's public key as a JSON Web Key Set document.
func (m *Minter) JWKS() ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key:       &m.key.PublicKey,
		KeyID:     m.kid,
		Algorithm: string(jose.ES256),
		Use:       "sig",
	}}}
	data, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("authn: encoding JWKS: %w", err)
	}
	return append(data, '\n'), nil
}

// WriteJWKS writes m's key set to path (mode 0644: it holds only the
// public key), replacing the file atomically.
func (m *Minter) WriteJWKS(path string) error {
	data, err := m.JWKS()
	if err != nil {
		return err
	}
	if err := pemfile.WriteFileAtomic(path, data, 0o644); err != nil {
		return fmt.Errorf("authn: writing JWKS: %w", err)
	}
	return nil
}

// Mint returns a token for the service account namespace/serviceAccount,
// valid for audiences from now for ttl.
func (m *Minter) Mint(namespace, serviceAccount string, audiences []string, ttl time.Duration) (string, error) {
	return m.MintAt(time.Now(), namespace, serviceAccount, audiences, ttl)
}

// MintAt is Mint with the token's issue time set to now, which may be in
// the past (to make an expired token) or the future.
func (m *Minter) MintAt(now time.Time, namespace, serviceAccount string, audiences []string, ttl time.Duration) (string, error) {
	switch {
	case !dnsname.IsSubdomain(namespace):
		return "", fmt.Errorf("authn: mint: invalid namespace %q", namespace)
	case !dnsname.IsSubdomain(serviceAccount):
		return "", fmt.Errorf("authn: mint: invalid service account name %q", serviceAccount)
	case len(audiences) == 0:
		return "", errors.New("authn: mint: no audience")
	case ttl <= 0:
		return "", fmt.Errorf("authn: mint: ttl %v is not positive", ttl)
	}
	uid := make([]byte, 16)
	if _, err := rand.Read(uid); err != nil {
		return "", fmt.Errorf("authn: mint: %w", err)
	}
	type serviceAccountClaim struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	}
	type kubernetesClaim struct {
		Namespace      string              `json:"namespace"`
		ServiceAccount serviceAccountClaim `json:"serviceaccount"`
	}
	extra := struct {
		Kubernetes kubernetesClaim `json:"kubernetes.io"`
	}{kubernetesClaim{
		Namespace:      namespace,
		ServiceAccount: serviceAccountClaim{Name: serviceAccount, UID: hex.EncodeToString(uid)},
	}}
	std := jwt.Claims{
		Issuer:    m.issuer,
		Subject:   saPrefix + namespace + ":" + serviceAccount,
		Audience:  jwt.Audience(audiences),
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(ttl)),
	}
	token, err := jwt.Signed(m.signer).Claims(std).Claims(extra).Serialize()
	if err != nil {
		return "", fmt.Errorf("authn: mint: %w", err)
	}
	return token, nil
}
