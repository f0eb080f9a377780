package jwtsvid

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/castellan-mesh/castellan/internal/jwtaudience"
)

// Limits of a JWT-SVID request.
const (
	// MaxAudiences is the most audiences one token names.
	MaxAudiences = jwtaudience.MaxCount
	// MaxAudienceLen is the longest audience, in bytes.
	MaxAudienceLen = jwtaudience.MaxLen
)

// Lifetimes of a JWT-SVID.
const (
	DefaultTTL = 5 * time.Minute
	MinTTL     = 10 * time.Second
	MaxTTL     = time.Hour
)

// ErrNoKey is returned by Mint when no signing key is loaded.
var ErrNoKey = errors.New("jwtsvid: no JWT signing key loaded")

// CheckAudiences refuses an audience list a JWT-SVID may not carry: none,
// more than MaxAudiences, an empty or duplicate one, one longer than
// MaxAudienceLen or holding anything but printable ASCII.
func CheckAudiences(aud []string) error { return jwtaudience.Check(aud) }

// Token is a signed JWT-SVID.
type Token struct {
	// Token is the JWS compact serialization.
	Token string
	// KeyID is the "kid" of the key that signed it.
	KeyID    string
	IssuedAt time.Time
	Expiry   time.Time
}

// Mint signs a JWT-SVID for id with the active key: ES256, header kid,
// claims sub (id), aud, iat and exp (now + ttl; ttl must be within
// MinTTL and MaxTTL). The audiences must pass CheckAudiences.
func (s *KeySet) Mint(ctx context.Context, id spiffeid.ID, audiences []string, ttl time.Duration) (*Token, error) {
	k := s.Keys()
	if k == nil {
		if err := s.Err(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoKey, err)
		}
		return nil, ErrNoKey
	}
	return Mint(ctx, k.Active, id, audiences, ttl, time.Now())
}

// Mint signs a JWT-SVID for id with key at now (see KeySet.Mint).
func Mint(ctx context.Context, key *Key, id spiffeid.ID, audiences []string, ttl time.Duration, now time.Time) (*Token, error) {
	switch {
	case key == nil || key.signer == nil:
		return nil, ErrNoKey
	case id.IsZero():
		return nil, errors.New("jwtsvid: no SPIFFE ID to sign for")
	case ttl < MinTTL || ttl > MaxTTL:
		return nil, fmt.Errorf("jwtsvid: lifetime %s is outside [%s, %s]", ttl, MinTTL, MaxTTL)
	}
	if err := CheckAudiences(audiences); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: cryptosigner.Opaque(key.signer), KeyID: key.ID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("jwtsvid: %w", err)
	}
	// The seconds of iat and exp are what the token says; the fractions
	// are dropped so that Token reports them exactly.
	iat := now.Truncate(time.Second)
	exp := iat.Add(ttl)
	claims := jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audiences),
		IssuedAt: jwt.NewNumericDate(iat),
		Expiry:   jwt.NewNumericDate(exp),
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return nil, fmt.Errorf("jwtsvid: signing with key %s: %w", key.Name, err)
	}
	return &Token{Token: tok, KeyID: key.ID, IssuedAt: iat, Expiry: exp}, nil
}
