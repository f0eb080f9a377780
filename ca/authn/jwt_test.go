package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const testIssuer = "https://issuer.example"

func newTestMinter(t testing.TB, issuer string) *Minter {
	t.Helper()
	m, err := NewMinter(issuer)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newFileJWT(t testing.TB, m *Minter, audiences ...string) (*JWT, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := m.WriteJWKS(path); err != nil {
		t.Fatal(err)
	}
	j, err := NewJWT(context.Background(), JWTConfig{Issuer: m.Issuer(), Audiences: audiences, JWKSFile: path})
	if err != nil {
		t.Fatal(err)
	}
	return j, path
}

// signClaims signs arbitrary claims with key, for tokens a Minter would
// not make.
func signClaims(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims ...any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b := jwt.Signed(signer)
	for _, c := range claims {
		b = b.Claims(c)
	}
	tok, err := b.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// unsignedToken builds a token with header alg "none" or another header.
func unsignedToken(header, payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(payload)) + "."
}

func TestJWT(t *testing.T) {
	m := newTestMinter(t, testIssuer)
	j, _ := newFileJWT(t, m, "istio-ca", "castellan")
	stranger := newTestMinter(t, testIssuer)
	now := time.Now()
	sleep := Caller{Namespace: "default", ServiceAccount: "sleep"}
	mint := func(ns, sa string, aud []string, at time.Time, ttl time.Duration) string {
		tok, err := m.MintAt(at, ns, sa, aud, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	std := func(mod func(*jwt.Claims)) jwt.Claims {
		c := jwt.Claims{
			Issuer:   testIssuer,
			Subject:  "system:serviceaccount:default:sleep",
			Audience: jwt.Audience{"istio-ca"},
			Expiry:   jwt.NewNumericDate(now.Add(time.Hour)),
			IssuedAt: jwt.NewNumericDate(now),
		}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	k8s := func(ns, sa string) map[string]any {
		return map[string]any{"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]any{"name": sa}}}
	}
	hmacKey := []byte("0123456789abcdef0123456789abcdef")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		token  string
		want   Caller
		reason Reason // empty: success
	}{
		{name: "minted", token: mint("default", "sleep", []string{"istio-ca"}, now, time.Hour), want: sleep},
		{name: "second audience", token: mint("default", "sleep", []string{"other", "castellan"}, now, time.Hour), want: sleep},
		{name: "sub only", token: signClaims(t, jose.ES256, m.key, m.kid, std(nil)), want: sleep},
		{name: "kubernetes claims without sub", token: signClaims(t, jose.ES256, m.key, m.kid, std(func(c *jwt.Claims) { c.Subject = "" }), k8s("default", "sleep")), want: sleep},
		{name: "no kid", token: signClaims(t, jose.ES256, m.key, "", std(nil)), want: sleep},
		{name: "expired within leeway", token: mint("default", "sleep", []string{"istio-ca"}, now.Add(-time.Hour-10*time.Second), time.Hour), want: sleep},
		{name: "wrong audience", token: mint("default", "sleep", []string{"kubernetes"}, now, time.Hour), reason: ReasonInvalid},
		{name: "expired", token: mint("default", "sleep", []string{"istio-ca"}, now.Add(-2*time.Hour), time.Hour), reason: ReasonInvalid},
		{name: "not yet valid", token: mint("default", "sleep", []string{"istio-ca"}, now.Add(time.Hour), time.Hour), reason: ReasonInvalid},
		{name: "wrong issuer", token: signClaims(t, jose.ES256, m.key, m.kid, std(func(c *jwt.Claims) { c.Issuer = "https://evil" })), reason: ReasonInvalid},
		{name: "no exp", token: signClaims(t, jose.ES256, m.key, m.kid, std(func(c *jwt.Claims) { c.Expiry = nil })), reason: ReasonInvalid},
		{name: "stranger key", token: func() string {
			tok, _ := stranger.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
			return tok
		}(), reason: ReasonInvalid},
		{name: "stranger key with our kid", token: signClaims(t, jose.ES256, stranger.key, m.kid, std(nil)), reason: ReasonInvalid},
		{name: "RSA key not in set", token: signClaims(t, jose.RS256, rsaKey, "", std(nil)), reason: ReasonInvalid},
		{name: "alg none", token: unsignedToken(`{"alg":"none","typ":"JWT"}`, `{"iss":"`+testIssuer+`","sub":"system:serviceaccount:default:sleep","aud":"istio-ca","exp":9999999999}`), reason: ReasonMalformed},
		{name: "HS256", token: signClaims(t, jose.HS256, hmacKey, m.kid, std(nil)), reason: ReasonMalformed},
		{name: "tampered payload", token: func() string {
			tok := mint("default", "sleep", []string{"istio-ca"}, now, time.Hour)
			parts := strings.Split(tok, ".")
			evil, _ := json.Marshal(std(func(c *jwt.Claims) { c.Subject = "system:serviceaccount:kube-system:admin" }))
			parts[1] = base64.RawURLEncoding.EncodeToString(evil)
			return strings.Join(parts, ".")
		}(), reason: ReasonInvalid},
		{name: "user subject", token: signClaims(t, jose.ES256, m.key, m.kid, std(func(c *jwt.Claims) { c.Subject = "alice" })), reason: ReasonNotServiceAccount},
		{name: "no subject", token: signClaims(t, jose.ES256, m.key, m.kid, std(func(c *jwt.Claims) { c.Subject = "" })), reason: ReasonNotServiceAccount},
		{name: "sub disagrees with kubernetes claims", token: signClaims(t, jose.ES256, m.key, m.kid, std(nil), k8s("kube-system", "admin")), reason: ReasonInvalid},
		{name: "incomplete kubernetes claims", token: signClaims(t, jose.ES256, m.key, m.kid, std(nil), map[string]any{"kubernetes.io": map[string]any{"namespace": "default"}}), reason: ReasonNotServiceAccount},
		{name: "invalid namespace in claims", token: signClaims(t, jose.ES256, m.key, m.kid, std(func(c *jwt.Claims) { c.Subject = "" }), k8s("a/b", "sleep")), reason: ReasonNotServiceAccount},
		{name: "empty", token: "", reason: ReasonNoToken},
		{name: "garbage", token: "not-a-token", reason: ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := j.Authenticate(context.Background(), tt.token)
			checkOutcome(t, got, err, tt.want, tt.reason)
		})
	}
}

func TestJWTErrorMessages(t *testing.T) {
	m := newTestMinter(t, testIssuer)
	j, _ := newFileJWT(t, m, "istio-ca")
	tests := []struct {
		name string
		aud  []string
		at   time.Time
		want string
	}{
		{name: "audience", aud: []string{"kubernetes"}, at: time.Now(), want: `token audiences ["kubernetes"] do not include any of ["istio-ca"]`},
		{name: "expired", aud: []string{"istio-ca"}, at: time.Unix(1_700_000_000, 0), want: "token expired at 2023-11-14T22:13:21Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := m.MintAt(tt.at, "default", "sleep", tt.aud, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_, err = j.Authenticate(context.Background(), tok)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), tok) {
				t.Error("error message contains the token")
			}
		})
	}
}

func TestJWTKeyRotationFile(t *testing.T) {
	old := newTestMinter(t, testIssuer)
	j, path := newFileJWT(t, old, "istio-ca")
	j.keys.(*fileKeys).minRefresh = 0
	next := newTestMinter(t, testIssuer)
	tok, err := next.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Authenticate(context.Background(), tok); err == nil {
		t.Fatal("token from the new key accepted before the key set was rotated")
	}
	if err := next.WriteJWKS(path); err != nil {
		t.Fatal(err)
	}
	// Make sure the file looks changed even on coarse mtime filesystems.
	later := time.Now().Add(time.Minute)
	os.Chtimes(path, later, later)
	if _, err := j.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	// A broken file keeps the last good key set.
	if err := os.WriteFile(path, []byte("{broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(path, later.Add(time.Minute), later.Add(time.Minute))
	if _, err := j.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("with a broken file: %v", err)
	}
	// Rotating back to the old key revokes the new one, although tokens
	// with a known key id never force a reload.
	if err := old.WriteJWKS(path); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(path, later.Add(2*time.Minute), later.Add(2*time.Minute))
	if _, err := j.Authenticate(context.Background(), tok); err == nil {
		t.Fatal("token of a key removed from the file still accepted")
	}
}

func TestJWTDiscovery(t *testing.T) {
	var srv *httptest.Server
	var m *Minter
	var jwksFetches atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": srv.URL, "jwks_uri": srv.URL + "/keys"})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		jwksFetches.Add(1)
		data, _ := m.JWKS()
		w.Write(data)
	})
	srv = httptest.NewTLSServer(mux)
	defer srv.Close()
	m = newTestMinter(t, srv.URL)

	j, err := NewJWT(context.Background(), JWTConfig{Issuer: srv.URL, Audiences: []string{"istio-ca"}, HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := m.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, err := j.Authenticate(context.Background(), tok)
	if err != nil || got != (Caller{Namespace: "default", ServiceAccount: "sleep"}) {
		t.Fatalf("Authenticate = %+v, %v", got, err)
	}

	// The issuer rotates its key: an unknown kid triggers one refetch, and
	// a flood of unknown kids does not trigger more inside the window.
	m = newTestMinter(t, srv.URL)
	tok, _ = m.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	j.keys.(*remoteKeys).minRefresh = 0
	if _, err := j.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	j.keys.(*remoteKeys).minRefresh = time.Hour
	before := jwksFetches.Load()
	stranger := newTestMinter(t, srv.URL)
	for range 10 {
		bad, _ := stranger.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
		if _, err := j.Authenticate(context.Background(), bad); err == nil {
			t.Fatal("stranger's token accepted")
		}
	}
	if n := jwksFetches.Load() - before; n != 0 {
		t.Errorf("%d key set fetches for unknown kids inside the refresh window, want 0", n)
	}
}

func TestNewJWTErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &ecKey.PublicKey, KeyID: "k"}}})
	mixed := `{"keys":[{"kty":"oct","k":"c2VjcmV0"},{"kty":"weird"},` + strings.TrimSuffix(strings.TrimPrefix(string(pub), `{"keys":[`), `]}`) + `]}`
	wrongIssuer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": "https://other", "jwks_uri": "https://other/keys"})
	}))
	defer wrongIssuer.Close()
	tests := []struct {
		name    string
		cfg     JWTConfig
		wantErr string
	}{
		{name: "no issuer", cfg: JWTConfig{Audiences: []string{"a"}}, wantErr: "needs an issuer"},
		{name: "no audience", cfg: JWTConfig{Issuer: testIssuer}, wantErr: "audience"},
		{name: "missing file", cfg: JWTConfig{Issuer: testIssuer, Audiences: []string{"a"}, JWKSFile: filepath.Join(dir, "nope")}, wantErr: "no such file"},
		{name: "not JSON", cfg: JWTConfig{Issuer: testIssuer, Audiences: []string{"a"}, JWKSFile: write("bad.json", "{")}, wantErr: "not a JSON Web Key Set"},
		{name: "no keys", cfg: JWTConfig{Issuer: testIssuer, Audiences: []string{"a"}, JWKSFile: write("empty.json", `{"keys":[]}`)}, wantErr: "no keys"},
		{name: "only symmetric", cfg: JWTConfig{Issuer: testIssuer, Audiences: []string{"a"}, JWKSFile: write("oct.json", `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`)}, wantErr: "not an asymmetric key"},
		{name: "plain http issuer", cfg: JWTConfig{Issuer: "http://issuer.example", Audiences: []string{"a"}}, wantErr: "plain http"},
		{name: "discovery names another issuer", cfg: JWTConfig{Issuer: wrongIssuer.URL, Audiences: []string{"a"}, HTTPClient: wrongIssuer.Client()}, wantErr: "names issuer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewJWT(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewJWT error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	// Unusable keys beside a good one are skipped.
	j, err := NewJWT(context.Background(), JWTConfig{Issuer: testIssuer, Audiences: []string{"a"}, JWKSFile: write("mixed.json", mixed)})
	if err != nil {
		t.Fatalf("mixed key set: %v", err)
	}
	set, _ := j.keys.load(context.Background(), false)
	if len(set.Keys) != 1 {
		t.Errorf("mixed key set kept %d keys, want 1", len(set.Keys))
	}
}

func TestMinterJWKSHasNoPrivateKey(t *testing.T) {
	m := newTestMinter(t, testIssuer)
	data, err := m.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("%d keys, want 1", len(set.Keys))
	}
	if _, ok := set.Keys[0]["d"]; ok {
		t.Fatal("JWKS holds the private key")
	}
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := m.WriteJWKS(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("JWKS file mode = %v, %v", fi.Mode(), err)
	}
}

// FuzzJWTAuthenticate feeds arbitrary tokens to the offline verifier: it
// must never panic, and anything it accepts can only be (an alternative
// encoding of) the one token that was signed.
func FuzzJWTAuthenticate(f *testing.F) {
	m := newTestMinter(f, testIssuer)
	path := filepath.Join(f.TempDir(), "jwks.json")
	if err := m.WriteJWKS(path); err != nil {
		f.Fatal(err)
	}
	j, err := NewJWT(context.Background(), JWTConfig{Issuer: testIssuer, Audiences: []string{"istio-ca"}, JWKSFile: path})
	if err != nil {
		f.Fatal(err)
	}
	good, _ := m.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	f.Add(good)
	f.Add(unsignedToken(`{"alg":"none"}`, `{"sub":"system:serviceaccount:a:b"}`))
	f.Add(unsignedToken(`{"alg":"ES256","kid":"`+m.kid+`"}`, `{}`) + "AAAA")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		c, err := j.Authenticate(context.Background(), token)
		if err == nil && c != (Caller{Namespace: "default", ServiceAccount: "sleep"}) {
			t.Fatalf("accepted a forged token %q as %+v", token, c)
		}
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error is %T, want *Error", err)
			}
		}
	})
}

// BenchmarkJWTAuthenticate measures one offline verification of a minted
// ES256 token (the cost of a cache miss with the JWT authenticator).
func BenchmarkJWTAuthenticate(b *testing.B) {
	m := newTestMinter(b, testIssuer)
	j, _ := newFileJWT(b, m, "istio-ca")
	tok, err := m.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := j.Authenticate(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
	}
}
