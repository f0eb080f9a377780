package authn

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// fakeJWT builds an unsigned token with the given JSON payload. Only its
// shape is valid; its signature is junk.
func fakeJWT(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"ES256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestCheckShape(t *testing.T) {
	tests := []struct {
		name   string
		token  string
		reason Reason // empty: accepted
	}{
		{name: "jwt", token: "aGVhZA.cGF5bG9hZA.c2ln"},
		{name: "empty", token: "", reason: ReasonNoToken},
		{name: "one segment", token: "abc", reason: ReasonMalformed},
		{name: "two segments", token: "abc.def", reason: ReasonMalformed},
		{name: "four segments", token: "a.b.c.d", reason: ReasonMalformed},
		{name: "empty header", token: ".b.c", reason: ReasonMalformed},
		{name: "empty payload", token: "a..c", reason: ReasonMalformed},
		{name: "empty signature", token: "a.b.", reason: ReasonMalformed},
		{name: "padding", token: "a.b=.c", reason: ReasonMalformed},
		{name: "space", token: "a.b c.d", reason: ReasonMalformed},
		{name: "bearer prefix left in", token: "Bearer a.b.c", reason: ReasonMalformed},
		{name: "oversized", token: strings.Repeat("a", maxTokenLen) + ".b.c", reason: ReasonMalformed},
		{name: "non-ascii", token: "a.b\xff.c", reason: ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkShape(tt.token)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("checkShape: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkShape accepted %q", tt.token)
			}
			if got := ReasonOf(err); got != tt.reason {
				t.Errorf("reason = %s, want %s (%v)", got, tt.reason, err)
			}
		})
	}
}

func TestPeek(t *testing.T) {
	tests := []struct {
		name    string
		token   string
		issuer  string
		expiry  time.Time
		wantErr bool
	}{
		{name: "iss and exp", token: fakeJWT(`{"iss":"https://issuer","exp":1700000000}`), issuer: "https://issuer", expiry: time.Unix(1700000000, 0)},
		{name: "fractional exp", token: fakeJWT(`{"exp":1700000000.5}`), expiry: time.Unix(1700000000, 5e8)},
		{name: "no claims", token: fakeJWT(`{}`)},
		{name: "null exp", token: fakeJWT(`{"exp":null}`)},
		{name: "string exp", token: fakeJWT(`{"exp":"soon"}`), wantErr: true},
		{name: "negative exp", token: fakeJWT(`{"exp":-1}`), wantErr: true},
		{name: "huge exp", token: fakeJWT(`{"exp":1e300}`), wantErr: true},
		{name: "iss not a string", token: fakeJWT(`{"iss":5}`), wantErr: true},
		{name: "payload not an object", token: fakeJWT(`[1,2]`), wantErr: true},
		{name: "payload not JSON", token: fakeJWT(`not json`), wantErr: true},
		{name: "payload not base64", token: "aGVhZA.a.c2ln", wantErr: true},
		{name: "bad shape", token: "abc", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := peek(tt.token)
			if tt.wantErr {
				wantRejected(t, u, err, ReasonMalformed)
				return
			}
			if err != nil {
				t.Fatalf("peek: %v", err)
			}
			if u.Issuer != tt.issuer || !u.Expiry.Equal(tt.expiry) {
				t.Errorf("peek = %+v, want issuer %q expiry %v", u, tt.issuer, tt.expiry)
			}
		})
	}
}

func TestParseUsername(t *testing.T) {
	tests := []struct {
		name     string
		username string
		want     Caller
		wantErr  bool
	}{
		{name: "service account", username: "system:serviceaccount:default:sleep", want: Caller{Namespace: "default", ServiceAccount: "sleep"}},
		{name: "dotted names", username: "system:serviceaccount:team.a:sa-1.b", want: Caller{Namespace: "team.a", ServiceAccount: "sa-1.b"}},
		{name: "user", username: "alice", wantErr: true},
		{name: "node", username: "system:node:n1", wantErr: true},
		{name: "no name", username: "system:serviceaccount:default", wantErr: true},
		{name: "empty name", username: "system:serviceaccount:default:", wantErr: true},
		{name: "extra colon", username: "system:serviceaccount:default:a:b", wantErr: true},
		{name: "slash", username: "system:serviceaccount:default:a/b", wantErr: true},
		{name: "upper case", username: "system:serviceaccount:Default:sleep", wantErr: true},
		{name: "leading dash", username: "system:serviceaccount:-ns:sleep", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseUsername(tt.username)
			var reason Reason
			if tt.wantErr {
				reason = ReasonNotServiceAccount
			}
			checkOutcome(t, got, err, tt.want, reason)
		})
	}
}

// FuzzPeek checks that the unverified token reader never panics, and that
// anything it accepts has the shape of a JWT.
func FuzzPeek(f *testing.F) {
	for _, s := range []string{
		"",
		"a.b.c",
		fakeJWT(`{"iss":"https://issuer","exp":1700000000}`),
		fakeJWT(`{"exp":1e300}`),
		fakeJWT(`{"exp":-0.5}`),
		fakeJWT(`{"iss":null,"exp":null}`),
		"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		u, err := peek(token)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("peek returned %T, want *Error", err)
			}
			return
		}
		if strings.Count(token, ".") != 2 || len(token) > maxTokenLen {
			t.Fatalf("peek accepted a token that is not shaped like a JWT: %q", token)
		}
		if !u.Expiry.IsZero() && u.Expiry.Before(time.Unix(0, 0)) {
			t.Fatalf("expiry before the epoch: %v", u.Expiry)
		}
	})
}

// FuzzParseUsername checks that any accepted username yields names that
// cannot break out of a SPIFFE ID path.
func FuzzParseUsername(f *testing.F) {
	for _, s := range []string{"system:serviceaccount:default:sleep", "system:serviceaccount:a:b:c", "system:serviceaccount::", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, username string) {
		c, err := ParseUsername(username)
		if err != nil {
			return
		}
		for _, s := range []string{c.Namespace, c.ServiceAccount} {
			if s == "" || strings.ContainsAny(s, "/:%?#") {
				t.Fatalf("ParseUsername(%q) = %+v", username, c)
			}
		}
	})
}
