package ca_test

import (
	"context"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/integration/harness"
	"github.com/castellan-mesh/castellan/internal/testmetric"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestTokenReviewAuthenticator checks the TokenReview authenticator and its
// cache against a real API server: TokenRequest tokens for the CA's
// audience pass, everything else is refused with the right reason, and
// repeated checks of one token send one review.
func TestTokenReviewAuthenticator(t *testing.T) {
	api := harness.StartAPIServer(t)
	api.CreateServiceAccount(t, "default", "sleep")
	api.CreateServiceAccount(t, "shop", "cart")
	goneToken, strangerToken := refusedTokens(t, api)

	// The CA reaches the API server through a kubeconfig file, as
	// "castellan ca --kubeconfig" does.
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatalf("loading the harness kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	tr, err := authn.NewTokenReview(authn.TokenReviewConfig{Client: client, Audiences: []string{"istio-ca"}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		token  string
		want   authn.Caller
		reason authn.Reason // empty: success
	}{
		{name: "istio-ca audience", token: api.Token(t, "default", "sleep", []string{"istio-ca"}, time.Hour), want: authn.Caller{Namespace: "default", ServiceAccount: "sleep"}},
		{name: "several audiences", token: api.Token(t, "shop", "cart", []string{"other", "istio-ca"}, time.Hour), want: authn.Caller{Namespace: "shop", ServiceAccount: "cart"}},
		{name: "wrong audience", token: api.Token(t, "default", "sleep", []string{"kubernetes"}, time.Hour), reason: authn.ReasonInvalid},
		{name: "API server audience", token: api.Token(t, "default", "sleep", nil, time.Hour), reason: authn.ReasonInvalid},
		{name: "expired", token: api.SignToken(t, "default", "sleep", []string{"istio-ca"}, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)), reason: authn.ReasonInvalid},
		{name: "signed by the API server's key", token: api.SignToken(t, "default", "sleep", []string{"istio-ca"}, time.Now(), time.Now().Add(time.Hour)), want: authn.Caller{Namespace: "default", ServiceAccount: "sleep"}},
		{name: "deleted service account", token: goneToken, reason: authn.ReasonInvalid},
		{name: "stranger's key", token: strangerToken, reason: authn.ReasonInvalid},
		{name: "garbage", token: "not-a-token", reason: authn.ReasonMalformed},
		{name: "no token", token: "", reason: authn.ReasonNoToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tr.Authenticate(context.Background(), tt.token)
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("Authenticate: %v", err)
			case tt.reason == "" && got != tt.want:
				t.Fatalf("Authenticate = %+v, want %+v", got, tt.want)
			case tt.reason != "" && err == nil:
				t.Fatalf("Authenticate = %+v, want a %s error", got, tt.reason)
			case tt.reason != "" && authn.ReasonOf(err) != tt.reason:
				t.Fatalf("reason = %s, want %s (%v)", authn.ReasonOf(err), tt.reason, err)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
		})
	}

	t.Run("cached", func(t *testing.T) {
		reg := prometheus.NewPedanticRegistry()
		tr, err := authn.NewTokenReview(authn.TokenReviewConfig{Client: api.Client, Audiences: []string{"istio-ca"}, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		cache, err := authn.NewCache(tr, authn.CacheConfig{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		token := api.Token(t, "default", "sleep", []string{"istio-ca"}, time.Hour)
		for range 100 {
			if _, err := cache.Authenticate(context.Background(), token); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := testutil.GatherAndCount(reg, "castellan_tokenreviews_total"); err != nil || n != 1 {
			t.Fatalf("tokenreview series = %d, %v", n, err)
		}
		if v := testmetric.Sum(t, reg, "castellan_tokenreviews_total", ""); v != 1 {
			t.Errorf("%v TokenReviews sent for 100 checks of one token, want 1", v)
		}
	})
}
