package authn

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const clusterIssuer = "https://kubernetes.default.svc.cluster.local"

// discoveryServer serves an API server's service-account issuer discovery
// document and key set.
func discoveryServer(t *testing.T, m *Minter) rest.Interface {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": m.Issuer(), "jwks_uri": "https://unreachable.invalid/openid/v1/jwks"})
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		data, _ := m.JWKS()
		w.Write(data)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c.CoreV1().RESTClient()
}

// recordingReview is a fake reviewer that accepts every token and records
// that it was asked.
type recordingReview struct {
	mu     sync.Mutex
	tokens []string
	caller Caller
}

func (r *recordingReview) Authenticate(_ context.Context, token string) (Caller, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tokens = append(r.tokens, token)
	return r.caller, nil
}

func (r *recordingReview) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.tokens)
}

// uidTable is a fake ObjectIndex.
type uidTable map[string]string

func (u uidTable) LiveUID(ns, name string) (string, bool) {
	uid, ok := u[ns+"/"+name]
	return uid, ok
}

// clusterToken signs Kubernetes-shaped claims with m's key.
func clusterToken(t *testing.T, m *Minter, mutate func(c *jwt.Claims, k map[string]any)) string {
	t.Helper()
	now := time.Now()
	c := jwt.Claims{
		Issuer: m.Issuer(), Subject: "system:serviceaccount:shop:cart", Audience: jwt.Audience{"istio-ca"},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
	}
	k := map[string]any{
		"namespace":      "shop",
		"serviceaccount": map[string]string{"name": "cart", "uid": "sa-uid"},
	}
	if mutate != nil {
		mutate(&c, k)
	}
	return signClaims(t, jose.ES256, m.key, m.kid, c, map[string]any{"kubernetes.io": k})
}

// TestServiceAccountTokensOffline: every token that fails the offline
// checks is refused without a review; tokens the watch caches confirm are
// accepted without one; everything else is reviewed.
func TestServiceAccountTokensOffline(t *testing.T) {
	m := newTestMinter(t, clusterIssuer)
	stranger := newTestMinter(t, clusterIssuer)
	other := newTestMinter(t, "https://other.example")
	client := discoveryServer(t, m)
	sas := uidTable{"shop/cart": "sa-uid"}
	pods := uidTable{"shop/cart-1": "pod-uid"}
	pod := func(c *jwt.Claims, k map[string]any) {
		k["pod"] = map[string]string{"name": "cart-1", "uid": "pod-uid"}
		k["node"] = map[string]string{"name": "node-a", "uid": "node-uid"}
	}
	strangerTok := func() string {
		tok := clusterToken(t, m, nil)
		forged := clusterToken(t, stranger, nil)
		// The stranger's signature on a token naming the cluster's key.
		return tok[:lastDot(tok)] + forged[lastDot(forged):]
	}
	tests := []struct {
		name         string
		token        string
		alwaysReview bool
		reason       Reason // empty: accepted
		reviewed     bool
		want         Caller
	}{
		{name: "junk", token: "a.b.c", reason: ReasonMalformed},
		{name: "forged signature", token: strangerTok(), reason: ReasonInvalid},
		{name: "other issuer's key", token: clusterToken(t, other, nil), reason: ReasonInvalid},
		{name: "wrong issuer", token: clusterToken(t, m, func(c *jwt.Claims, _ map[string]any) { c.Issuer = "https://evil" }), reason: ReasonInvalid},
		{name: "wrong audience", token: clusterToken(t, m, func(c *jwt.Claims, _ map[string]any) { c.Audience = jwt.Audience{"kubernetes"} }), reason: ReasonInvalid},
		{name: "expired", token: clusterToken(t, m, func(c *jwt.Claims, _ map[string]any) {
			c.NotBefore = jwt.NewNumericDate(time.Now().Add(-2 * time.Hour))
			c.IssuedAt = c.NotBefore
			c.Expiry = jwt.NewNumericDate(time.Now().Add(-time.Hour))
		}), reason: ReasonInvalid},
		{name: "not yet valid", token: clusterToken(t, m, func(c *jwt.Claims, _ map[string]any) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour)) }), reason: ReasonInvalid},
		{name: "no service account uid", token: clusterToken(t, m, func(_ *jwt.Claims, k map[string]any) { k["serviceaccount"] = map[string]string{"name": "cart"} }), reason: ReasonNotServiceAccount},
		{name: "unbound, confirmed", token: clusterToken(t, m, nil), want: Caller{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "sa-uid"}},
		{name: "pod-bound, confirmed", token: clusterToken(t, m, pod), want: Caller{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "sa-uid", PodName: "cart-1", PodUID: "pod-uid", NodeName: "node-a"}},
		{name: "service account recreated", token: clusterToken(t, m, func(_ *jwt.Claims, k map[string]any) {
			k["serviceaccount"] = map[string]string{"name": "cart", "uid": "old-uid"}
		}), reviewed: true},
		{name: "pod unknown", token: clusterToken(t, m, func(c *jwt.Claims, k map[string]any) {
			k["pod"] = map[string]string{"name": "cart-2", "uid": "pod-uid-2"}
		}), reviewed: true},
		{name: "secret-bound", token: clusterToken(t, m, func(_ *jwt.Claims, k map[string]any) {
			k["secret"] = map[string]string{"name": "s", "uid": "secret-uid"}
		}), reviewed: true},
		{name: "always review", token: clusterToken(t, m, nil), alwaysReview: true, reviewed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			review := &recordingReview{caller: Caller{Namespace: "shop", ServiceAccount: "cart"}}
			s, err := NewServiceAccountTokens(ServiceAccountConfig{
				Client: client, Audiences: []string{"istio-ca"}, Review: review,
				ServiceAccounts: sas, Pods: pods, AlwaysReview: tt.alwaysReview,
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Authenticate(context.Background(), tt.token)
			switch {
			case tt.reason != "" && ReasonOf(err) != tt.reason:
				t.Fatalf("err = %v (%s), want %s", err, ReasonOf(err), tt.reason)
			case tt.reason == "" && err != nil:
				t.Fatalf("Authenticate: %v", err)
			case tt.reason == "" && !tt.reviewed && got != tt.want:
				t.Fatalf("Authenticate = %+v, want %+v", got, tt.want)
			}
			if n := review.count(); (n == 1) != tt.reviewed || n > 1 {
				t.Errorf("%d reviews, want reviewed=%v", n, tt.reviewed)
			}
			if tt.reason == "" && s.Issuer() != clusterIssuer {
				t.Errorf("Issuer() = %q", s.Issuer())
			}
		})
	}
}

func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return i
		}
	}
	return -1
}

// TestServiceAccountTokensStillValid: a cached success stops holding as
// soon as the caches lose its service account or pod, or show another UID.
func TestServiceAccountTokensStillValid(t *testing.T) {
	m := newTestMinter(t, clusterIssuer)
	sas := uidTable{"shop/cart": "sa-uid"}
	pods := uidTable{"shop/cart-1": "pod-uid"}
	s, err := NewServiceAccountTokens(ServiceAccountConfig{
		Client: discoveryServer(t, m), Audiences: []string{"istio-ca"}, Review: &recordingReview{},
		ServiceAccounts: sas, Pods: pods,
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		caller Caller
		want   bool
	}{
		{"live", Caller{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "sa-uid"}, true},
		{"live pod", Caller{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "sa-uid", PodName: "cart-1", PodUID: "pod-uid"}, true},
		{"deleted service account", Caller{Namespace: "shop", ServiceAccount: "gone", ServiceAccountUID: "x"}, false},
		{"recreated service account", Caller{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "old"}, false},
		{"deleted pod", Caller{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "sa-uid", PodName: "cart-2", PodUID: "p2"}, false},
		{"recreated pod", Caller{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "sa-uid", PodName: "cart-1", PodUID: "old"}, false},
		{"no uid (another issuer)", Caller{Namespace: "x", ServiceAccount: "y"}, true},
	}
	for _, tt := range tests {
		if got := s.StillValid(tt.caller); got != tt.want {
			t.Errorf("%s: StillValid = %v, want %v", tt.name, got, tt.want)
		}
	}
}
