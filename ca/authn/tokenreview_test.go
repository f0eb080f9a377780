package authn

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// reviewServer answers TokenReviews over HTTP the way the API server does,
// with a status chosen by the test. It lets the unit tests run the real
// client-go request path; the integration tests use a real API server.
type reviewServer struct {
	*httptest.Server
	requests atomic.Int32
	// answer returns the review status, or an HTTP status code to fail with.
	answer func(spec authenticationv1.TokenReviewSpec) (authenticationv1.TokenReviewStatus, int)
}

func newReviewServer(t *testing.T) *reviewServer {
	t.Helper()
	rs := &reviewServer{}
	rs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.NotFound(w, r)
			return
		}
		rs.requests.Add(1)
		var review authenticationv1.TokenReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		status, code := rs.answer(review.Spec)
		if code != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(map[string]any{
				"kind": "Status", "apiVersion": "v1", "status": "Failure",
				"message": "the server is on fire", "reason": "InternalError", "code": code,
			})
			return
		}
		review.Status = status
		review.APIVersion, review.Kind = "authentication.k8s.io/v1", "TokenReview"
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&review)
	}))
	t.Cleanup(rs.Close)
	return rs
}

func (rs *reviewServer) client(t *testing.T) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{Host: rs.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTokenReview(t *testing.T) {
	const token = "aGVhZA.cGF5bG9hZA.c2ln"
	audiences := []string{"istio-ca", "castellan"}
	tests := []struct {
		name     string
		token    string
		status   authenticationv1.TokenReviewStatus
		code     int
		want     Caller
		reason   Reason // empty: success
		reviewed bool
		result   string // castellan_tokenreviews_total label counted
	}{
		{
			name:     "authenticated",
			token:    token,
			status:   authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: authenticationv1.UserInfo{Username: "system:serviceaccount:default:sleep"}},
			want:     Caller{Namespace: "default", ServiceAccount: "sleep"},
			reviewed: true, result: "authenticated",
		},
		{
			name:     "rejected with reason",
			token:    token,
			status:   authenticationv1.TokenReviewStatus{Error: "token audiences are invalid"},
			reason:   ReasonInvalid,
			reviewed: true, result: "unauthenticated",
		},
		{
			name:     "rejected",
			token:    token,
			reason:   ReasonInvalid,
			reviewed: true, result: "unauthenticated",
		},
		{
			name:     "audiences not ours",
			token:    token,
			status:   authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"kubernetes"}, User: authenticationv1.UserInfo{Username: "system:serviceaccount:default:sleep"}},
			reason:   ReasonInvalid,
			reviewed: true, result: "authenticated",
		},
		{
			name:     "audiences missing",
			token:    token,
			status:   authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "system:serviceaccount:default:sleep"}},
			reason:   ReasonInvalid,
			reviewed: true, result: "authenticated",
		},
		{
			name:     "not a service account",
			token:    token,
			status:   authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"castellan"}, User: authenticationv1.UserInfo{Username: "alice"}},
			reason:   ReasonNotServiceAccount,
			reviewed: true, result: "authenticated",
		},
		{
			name:     "API server error",
			token:    token,
			code:     http.StatusInternalServerError,
			reason:   ReasonUnavailable,
			reviewed: true, result: "error",
		},
		{
			name:     "forbidden",
			token:    token,
			code:     http.StatusForbidden,
			reason:   ReasonUnavailable,
			reviewed: true, result: "error",
		},
		{name: "no token", token: "", reason: ReasonNoToken},
		{name: "not a JWT", token: "opaque-token", reason: ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := newReviewServer(t)
			rs.answer = func(spec authenticationv1.TokenReviewSpec) (authenticationv1.TokenReviewStatus, int) {
				if spec.Token != tt.token || !slices.Equal(spec.Audiences, audiences) {
					t.Errorf("review spec = %+v", spec)
				}
				return tt.status, tt.code
			}
			reg := prometheus.NewPedanticRegistry()
			tr, err := NewTokenReview(TokenReviewConfig{Client: rs.client(t), Audiences: audiences, Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			got, err := tr.Authenticate(context.Background(), tt.token)
			checkOutcome(t, got, err, tt.want, tt.reason)
			if n := rs.requests.Load(); (n == 1) != tt.reviewed || n > 1 {
				t.Errorf("%d reviews sent, want reviewed=%v", n, tt.reviewed)
			}
			if tt.result != "" {
				if n := testutil.ToFloat64(tr.reviews.WithLabelValues(tt.result)); n != 1 {
					t.Errorf("castellan_tokenreviews_total{result=%q} = %v, want 1", tt.result, n)
				}
			}
			if n, err := testutil.GatherAndCount(reg, "castellan_tokenreviews_total"); err != nil || n > 1 {
				t.Errorf("castellan_tokenreviews_total series = %d, %v", n, err)
			}
		})
	}
}

func TestNewTokenReviewConfig(t *testing.T) {
	rs := newReviewServer(t)
	tests := []struct {
		name string
		cfg  TokenReviewConfig
	}{
		{name: "no client", cfg: TokenReviewConfig{Audiences: []string{"a"}}},
		{name: "no audience", cfg: TokenReviewConfig{Client: rs.client(t)}},
		{name: "empty audience", cfg: TokenReviewConfig{Client: rs.client(t), Audiences: []string{""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewTokenReview(tt.cfg); err == nil {
				t.Fatal("NewTokenReview accepted the config")
			}
		})
	}
}

func TestTokenReviewSharedRegistry(t *testing.T) {
	rs := newReviewServer(t)
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := NewTokenReview(TokenReviewConfig{Client: rs.client(t), Audiences: []string{"a"}, Registerer: reg}); err != nil {
			t.Fatalf("second registration on one registry: %v", err)
		}
	}
}
