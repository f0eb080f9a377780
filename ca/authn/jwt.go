package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// defaultLeeway is the clock skew allowed when checking exp, nbf and iat.
const defaultLeeway = 30 * time.Second

// signatureAlgorithms are the JWS algorithms a token may be signed with.
// Only asymmetric algorithms are listed: "none" and the HMAC family are
// refused at parse time.
var signatureAlgorithms = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512,
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.EdDSA,
}

// JWTConfig configures an offline JWT authenticator.
type JWTConfig struct {
	// Issuer is the exact "iss" a token must carry. Required.
	Issuer string
	// Audiences are the accepted "aud" values; a token must name at least
	// one of them. Required.
	Audiences []string
	// JWKSFile is a JSON Web Key Set file holding the issuer's public keys.
	// It is checked for changes at most every 10s, so added and removed
	// keys take effect without a restart. When empty, the keys are found
	// by OpenID Connect discovery: Issuer +
	// "/.well-known/openid-configuration", then its jwks_uri.
	JWKSFile string
	// HTTPClient fetches discovery documents and key sets. Nil means a
	// client with a 10s timeout.
	HTTPClient *http.Client
	// Leeway is the clock skew allowed when checking exp, nbf and iat.
	// Zero means 30s; a negative value means none.
	Leeway time.Duration
}

// JWT authenticates service-account tokens offline: it checks their
// signature against the issuer's published keys, their issuer, audience
// and validity period, and reads the service account from the Kubernetes
// claims ("kubernetes.io": namespace, serviceaccount.name) or from
// "sub" = system:serviceaccount:<namespace>:<name>. It never contacts an
// API server, so it cannot see that a service account was deleted; tokens
// should be short-lived.
type JWT struct {
	issuer    string
	audiences []string
	leeway    time.Duration
	keys      keySource
	now       func() time.Time
}

// leewayOf returns the clock skew allowed for a configured Leeway: zero
// means defaultLeeway, and a negative value none.
func leewayOf(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return defaultLeeway
	case d < 0:
		return 0
	}
	return d
}

// NewJWT returns a JWT authenticator for cfg. It loads the key set now, so
// a bad file or an unreachable issuer is reported at start-up.
func NewJWT(ctx context.Context, cfg JWTConfig) (*JWT, error) {
	switch {
	case cfg.Issuer == "":
		return nil, errors.New("authn: JWT authenticator needs an issuer")
	case len(cfg.Audiences) == 0:
		return nil, errors.New("authn: JWT authenticator needs at least one audience")
	case slices.Contains(cfg.Audiences, ""):
		return nil, errors.New("authn: JWT audience must not be empty")
	}
	leeway := leewayOf(cfg.Leeway)
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	var keys keySource
	var err error
	if cfg.JWKSFile != "" {
		keys, err = newFileKeys(cfg.JWKSFile)
	} else {
		keys, err = newRemoteKeys(cfg.Issuer, client)
	}
	if err != nil {
		return nil, err
	}
	if _, err := keys.load(ctx, true); err != nil {
		return nil, err
	}
	return &JWT{
		issuer:    cfg.Issuer,
		audiences: slices.Clone(cfg.Audiences),
		leeway:    leeway,
		keys:      keys,
		now:       time.Now,
	}, nil
}

// tokenClaims are the claims JWT reads from a verified token.
type tokenClaims struct {
	jwt.Claims
	Kubernetes *struct {
		Namespace      string     `json:"namespace"`
		ServiceAccount *objectRef `json:"serviceaccount"`
		// Pod, Secret and Node are the objects a bound token is bound
		// to (Node also appears in pod-bound tokens, naming the pod's
		// node).
		Pod    *objectRef `json:"pod"`
		Secret *objectRef `json:"secret"`
		Node   *objectRef `json:"node"`
	} `json:"kubernetes.io"`
}

// objectRef is a reference to a Kubernetes object in a token's claims.
type objectRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// Authenticate verifies token and returns the service account it names.
func (j *JWT) Authenticate(ctx context.Context, token string) (Caller, error) {
	claims, err := j.check(ctx, token)
	if err != nil {
		return Caller{}, err
	}
	return claims.caller()
}

// check verifies token's signature, issuer, audience and validity period
// and returns its claims. It never contacts anything but the key source.
func (j *JWT) check(ctx context.Context, token string) (*tokenClaims, error) {
	if err := checkShape(token); err != nil {
		return nil, err
	}
	tok, err := jwt.ParseSigned(token, signatureAlgorithms)
	if err != nil {
		return nil, Errorf(ReasonMalformed, "cannot parse token: %v", err)
	}
	if len(tok.Headers) != 1 {
		return nil, Errorf(ReasonMalformed, "token has %d signatures, want 1", len(tok.Headers))
	}
	claims, err := j.verify(ctx, tok, tok.Headers[0])
	if err != nil {
		return nil, err
	}
	if claims.Expiry == nil {
		return nil, Errorf(ReasonInvalid, "token has no exp claim")
	}
	issuer := j.expectedIssuer()
	if issuer == "" {
		return nil, Errorf(ReasonUnavailable, "the issuer of %s is not known yet", j.keys)
	}
	expected := jwt.Expected{Issuer: issuer, AnyAudience: j.audiences, Time: j.now()}
	if err := claims.ValidateWithLeeway(expected, j.leeway); err != nil {
		switch {
		case errors.Is(err, jwt.ErrInvalidIssuer):
			return nil, Errorf(ReasonInvalid, "token issuer %q is not %q", claims.Issuer, issuer)
		case errors.Is(err, jwt.ErrInvalidAudience):
			return nil, Errorf(ReasonInvalid, "token audiences %q do not include any of %q", []string(claims.Audience), j.audiences)
		case errors.Is(err, jwt.ErrExpired):
			return nil, Errorf(ReasonInvalid, "token expired at %s", claims.Expiry.Time().UTC().Format(time.RFC3339))
		case errors.Is(err, jwt.ErrNotValidYet):
			return nil, Errorf(ReasonInvalid, "token is not valid before %s", claims.NotBefore.Time().UTC().Format(time.RFC3339))
		case errors.Is(err, jwt.ErrIssuedInTheFuture):
			return nil, Errorf(ReasonInvalid, "token is issued in the future (%s)", claims.IssuedAt.Time().UTC().Format(time.RFC3339))
		}
		return nil, Errorf(ReasonInvalid, "token claims rejected: %v", err)
	}
	return claims, nil
}

// expectedIssuer is the configured issuer, or the one the key source
// discovered when none was configured.
func (j *JWT) expectedIssuer() string {
	if j.issuer != "" {
		return j.issuer
	}
	if d, ok := j.keys.(interface{ issuer() string }); ok {
		return d.issuer()
	}
	return ""
}

// verify checks the signature of tok against the issuer's keys and returns
// its claims. When the token names a key id that is not known, the key set
// is loaded again once (rate limited) in case the issuer rotated keys.
func (j *JWT) verify(ctx context.Context, tok *jwt.JSONWebToken, h jose.Header) (*tokenClaims, error) {
	set, err := j.keys.load(ctx, false)
	if err != nil {
		return nil, err
	}
	candidates := verificationKeys(set, h)
	if len(candidates) == 0 && h.KeyID != "" {
		if set, err = j.keys.load(ctx, true); err != nil {
			return nil, err
		}
		candidates = verificationKeys(set, h)
	}
	if len(candidates) == 0 {
		if h.KeyID != "" {
			return nil, Errorf(ReasonInvalid, "token is signed with unknown key %q (%s)", h.KeyID, h.Algorithm)
		}
		return nil, Errorf(ReasonInvalid, "no key of the issuer can verify a %s signature", h.Algorithm)
	}
	for _, k := range candidates {
		var claims tokenClaims
		if err := tok.Claims(k.Key, &claims); err == nil {
			return &claims, nil
		}
	}
	return nil, Errorf(ReasonInvalid, "token signature does not verify with the issuer's keys")
}

// verificationKeys returns the public signing keys of set that may have
// produced a signature with header h.
func verificationKeys(set *jose.JSONWebKeySet, h jose.Header) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range set.Keys {
		switch {
		case h.KeyID != "" && k.KeyID != h.KeyID:
			continue
		case k.Use != "" && k.Use != "sig":
			continue
		case k.Algorithm != "" && k.Algorithm != h.Algorithm:
			continue
		}
		if !keyFitsAlgorithm(k.Key, h.Algorithm) {
			continue
		}
		out = append(out, k.Public())
	}
	return out
}

// keyFitsAlgorithm reports whether a key of this type can verify alg, so
// that an RSA key is never tried for an ECDSA signature and symmetric keys
// are never used at all.
func keyFitsAlgorithm(key any, alg string) bool {
	switch key.(type) {
	case *ecdsa.PublicKey, *ecdsa.PrivateKey:
		return strings.HasPrefix(alg, "ES")
	case *rsa.PublicKey, *rsa.PrivateKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case ed25519.PublicKey, ed25519.PrivateKey:
		return alg == string(jose.EdDSA)
	}
	return false
}

// isAsymmetric reports whether key is an ECDSA, RSA or Ed25519 key.
func isAsymmetric(key any) bool {
	switch key.(type) {
	case *ecdsa.PublicKey, *ecdsa.PrivateKey, *rsa.PublicKey, *rsa.PrivateKey, ed25519.PublicKey, ed25519.PrivateKey:
		return true
	}
	return false
}

// caller extracts the service account from verified claims.
func (c *tokenClaims) caller() (Caller, error) {
	k := c.Kubernetes
	if k == nil {
		if c.Subject == "" {
			return Caller{}, Errorf(ReasonNotServiceAccount, "token has neither kubernetes.io claims nor a subject")
		}
		return ParseUsername(c.Subject)
	}
	if k.Namespace == "" || k.ServiceAccount == nil || k.ServiceAccount.Name == "" {
		return Caller{}, Errorf(ReasonNotServiceAccount, "token kubernetes.io claims name no namespace and service account")
	}
	caller, err := ParseUsername(saPrefix + k.Namespace + ":" + k.ServiceAccount.Name)
	if err != nil {
		return Caller{}, err
	}
	if strings.HasPrefix(c.Subject, saPrefix) {
		if sub, err := ParseUsername(c.Subject); err != nil || sub != caller {
			return Caller{}, Errorf(ReasonInvalid, "token subject %q disagrees with its kubernetes.io claims", c.Subject)
		}
	}
	if k.Pod != nil {
		var node string
		if k.Node != nil {
			node = k.Node.Name
		}
		caller.PodName, caller.PodUID, caller.NodeName = checkBinding(k.Pod.Name, k.Pod.UID, node)
	}
	return caller, nil
}

// String describes the authenticator for logs.
func (j *JWT) String() string {
	return fmt.Sprintf("JWT(issuer=%s, keys=%s)", j.issuer, j.keys)
}
