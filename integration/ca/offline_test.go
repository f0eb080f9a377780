package ca_test

import (
	"context"
	"crypto/elliptic"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestOfflineJWTBesideTokenReview runs the CA with both authenticators, as
// "castellan ca --jwt-issuer --jwks-file" does in a cluster: tokens from
// the offline issuer are checked against its JWKS file, all others by
// TokenReview, and a token claiming the offline issuer but signed by
// another key is refused without reaching the API server.
func TestOfflineJWTBesideTokenReview(t *testing.T) {
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, "default", "sleep")
	const offlineIssuer = "https://castellan.example/offline"
	minter, err := authn.NewMinter(offlineIssuer)
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := minter.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	c := harness.StartCA(t, api, harness.WithAuthenticator(func(t testing.TB, reg prometheus.Registerer) authn.Authenticator {
		tr, err := authn.NewTokenReview(authn.TokenReviewConfig{Client: api.Client, Audiences: []string{harness.DefaultAudience}, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		j, err := authn.NewJWT(context.Background(), authn.JWTConfig{Issuer: offlineIssuer, Audiences: []string{harness.DefaultAudience}, JWKSFile: jwks})
		if err != nil {
			t.Fatal(err)
		}
		cache, err := authn.NewCache(authn.NewByIssuer(map[string]authn.Authenticator{offlineIssuer: j}, tr), authn.CacheConfig{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		return cache
	}))
	conn := c.Dial(t)
	key := ecKey(elliptic.P256())(t)
	mint := func(m *authn.Minter, ns, sa string, aud string) string {
		tok, err := m.Mint(ns, sa, []string{aud}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	impostor, err := authn.NewMinter(offlineIssuer)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		token   string
		id      spiffeid.ID
		code    codes.Code // OK: issued
		reviews float64    // TokenReviews sent
	}{
		{name: "offline token", token: mint(minter, "offline", "batch", "istio-ca"), id: spiffeid.RequireFromString("spiffe://cluster.local/ns/offline/sa/batch")},
		{name: "TokenRequest token", token: api.Token(t, "default", "sleep", []string{"istio-ca"}, time.Hour), id: sleepID, reviews: 1},
		{name: "offline token for another audience", token: mint(minter, "offline", "batch", "other"), id: spiffeid.RequireFromString("spiffe://cluster.local/ns/offline/sa/batch"), code: codes.Unauthenticated},
		{name: "impostor of the offline issuer", token: mint(impostor, "kube-system", "admin", "istio-ca"), id: spiffeid.RequireFromString("spiffe://cluster.local/ns/kube-system/sa/admin"), code: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr := csrPEM(t, key, []string{tt.id.String()}, nil)
			var chain []string
			var err error
			delta := metricDelta(t, c, func() {
				resp, rerr := createCertificate(t, conn, tt.token, csr, 0)
				chain, err = resp.GetCertChain(), rerr
			})
			if got := delta("castellan_tokenreviews_total"); got != tt.reviews {
				t.Errorf("%v TokenReviews sent, want %v", got, tt.reviews)
			}
			if tt.code != codes.OK {
				if status.Code(err) != tt.code || len(chain) != 0 {
					t.Fatalf("CreateCertificate = %d certs, %v; want %s", len(chain), err, tt.code)
				}
				t.Logf("%s", status.Convert(err).Message())
				return
			}
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			verifySVID(t, chain, key, c.RootPEM, tt.id)
		})
	}
}
