package authn

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"time"
)

// maxTokenLen bounds the size of a bearer token. Kubernetes service-account
// tokens are around 1 KiB; anything much larger is refused before any work
// is done on it.
const maxTokenLen = 16 << 10

// errNoToken is returned for an empty bearer token.
var errNoToken = &Error{Reason: ReasonNoToken, Err: errors.New("no bearer token presented")}

// unverified holds the claims read from a JWT payload without checking its
// signature. They are only ever used to route a token or to bound how long
// a verified result is cached, never to decide who the caller is.
type unverified struct {
	// Issuer is the "iss" claim, empty when absent.
	Issuer string
	// Expiry is the "exp" claim, zero when absent.
	Expiry time.Time
}

// checkShape reports whether token is plausibly a JWS compact
// serialization: three non-empty base64url segments within the size limit.
// It does not decode anything.
func checkShape(token string) error {
	switch {
	case token == "":
		return errNoToken
	case len(token) > maxTokenLen:
		return Errorf(ReasonMalformed, "token is %d bytes, over the limit of %d", len(token), maxTokenLen)
	}
	dots, segStart := 0, 0
	for i := 0; i < len(token); i++ {
		c := token[i]
		if c != '.' {
			if !isBase64URL(c) {
				return Errorf(ReasonMalformed, "token has an invalid character at offset %d", i)
			}
			continue
		}
		if i == segStart {
			return Errorf(ReasonMalformed, "token segment %d is empty", dots+1)
		}
		dots++
		if dots > 2 {
			return Errorf(ReasonMalformed, "token has more than 3 segments, want header.payload.signature")
		}
		segStart = i + 1
	}
	switch {
	case dots != 2:
		return Errorf(ReasonMalformed, "token has %d segments, want 3 (header.payload.signature)", dots+1)
	case segStart == len(token):
		return Errorf(ReasonMalformed, "token has an empty signature")
	}
	return nil
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// peek reads the iss and exp claims of a JWT without verifying it.
func peek(token string) (unverified, error) {
	if err := checkShape(token); err != nil {
		return unverified{}, err
	}
	_, rest, _ := strings.Cut(token, ".")
	payload, _, _ := strings.Cut(rest, ".")
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return unverified{}, Errorf(ReasonMalformed, "token payload is not base64url: %v", err)
	}
	var claims struct {
		Issuer string          `json:"iss"`
		Expiry json.RawMessage `json:"exp"`
	}
	if err := json.Unmarshal(raw, &claims); err != nil {
		return unverified{}, Errorf(ReasonMalformed, "token payload is not a JSON object: %v", err)
	}
	u := unverified{Issuer: claims.Issuer}
	if len(claims.Expiry) > 0 && string(claims.Expiry) != "null" {
		exp, err := numericDate(claims.Expiry)
		if err != nil {
			return unverified{}, err
		}
		u.Expiry = exp
	}
	return u, nil
}

// numericDate parses a JWT NumericDate (seconds since the epoch, possibly
// fractional).
func numericDate(raw json.RawMessage) (time.Time, error) {
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return time.Time{}, Errorf(ReasonMalformed, "token exp claim is not a number")
	}
	// Bound to a range time.Time handles without overflow (year ~2^33).
	if math.IsNaN(f) || f < 0 || f > 1<<33 {
		return time.Time{}, Errorf(ReasonMalformed, "token exp claim %v is out of range", f)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}
