package authn

import (
	"context"
	"maps"
)

// ByIssuer routes each token to the Authenticator for its issuer, read
// from the token's unverified "iss" claim, and every other token to a
// default. Routing on an unverified claim is safe because the chosen
// Authenticator verifies the token in full: a forged "iss" only picks
// which verifier rejects it.
type ByIssuer struct {
	issuers  map[string]Authenticator
	fallback Authenticator
}

// NewByIssuer returns a ByIssuer that sends tokens from each issuer in
// issuers to its Authenticator and all other tokens to fallback. A nil
// fallback rejects tokens from unknown issuers.
func NewByIssuer(issuers map[string]Authenticator, fallback Authenticator) *ByIssuer {
	return &ByIssuer{issuers: maps.Clone(issuers), fallback: fallback}
}

// Authenticate passes token to the Authenticator for its issuer.
func (b *ByIssuer) Authenticate(ctx context.Context, token string) (Caller, error) {
	u, err := peek(token)
	if err != nil {
		return Caller{}, err
	}
	if a, ok := b.issuers[u.Issuer]; ok {
		return a.Authenticate(ctx, token)
	}
	if b.fallback == nil {
		return Caller{}, Errorf(ReasonInvalid, "token issuer %q is not trusted", u.Issuer)
	}
	return b.fallback.Authenticate(ctx, token)
}
