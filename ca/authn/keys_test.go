package authn

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// hungIssuer is an OIDC issuer whose JWKS endpoint can be made to hang,
// as a broken or overloaded identity provider does.
type hungIssuer struct {
	srv     *httptest.Server
	minter  *Minter
	hang    atomic.Bool
	release chan struct{}
	// blocked counts JWKS requests being held right now.
	blocked atomic.Int32
	fetches atomic.Int32
}

func newHungIssuer(t testing.TB) *hungIssuer {
	t.Helper()
	h := &hungIssuer{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": h.srv.URL, "jwks_uri": h.srv.URL + "/keys"})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		h.fetches.Add(1)
		if h.hang.Load() {
			h.blocked.Add(1)
			defer h.blocked.Add(-1)
			select {
			case <-h.release:
			case <-r.Context().Done():
			}
			return
		}
		data, _ := h.minter.JWKS()
		w.Write(data)
	})
	h.srv = httptest.NewTLSServer(mux)
	h.minter = newTestMinter(t, h.srv.URL)
	t.Cleanup(func() {
		close(h.release)
		h.srv.Close()
	})
	return h
}

// TestJWTLoginWithHungJWKS: once keys are cached, a JWKS endpoint that
// hangs holds up no login that a cached key can verify. Each login here
// completes while the background fetch is still blocked in the endpoint.
func TestJWTLoginWithHungJWKS(t *testing.T) {
	h := newHungIssuer(t)
	j, err := NewJWT(context.Background(), JWTConfig{Issuer: h.srv.URL, Audiences: []string{"istio-ca"}, HTTPClient: h.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	keys := j.keys.(*remoteKeys)
	// Make the cached keys stale, so that every load wants a refresh, and
	// let the refresh window pass, so that unknown kids may ask for one.
	keys.maxAge = time.Nanosecond
	keys.minRefresh = 0
	h.hang.Store(true)

	for i := range 4 {
		tok, err := h.minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := j.Authenticate(context.Background(), tok)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("login %d: %v", i, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("login %d still waiting after a minute", i)
		}
		if i == 0 {
			// The first login started the background fetch; wait until it
			// is held in the endpoint.
			for h.blocked.Load() == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		if h.blocked.Load() == 0 {
			t.Fatalf("login %d: the key fetch is no longer blocked; the login must not have waited for it", i)
		}
	}
	if n := h.fetches.Load(); n != 2 {
		t.Errorf("%d JWKS fetches, want 2 (start-up, then one background refresh at a time)", n)
	}

	// A token with an unknown kid waits for the refresh at most as long
	// as its context allows, and is then refused as unavailable.
	stranger := newTestMinter(t, h.srv.URL)
	tok, _ := stranger.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := j.Authenticate(ctx, tok); err == nil {
		t.Fatal("token with an unknown key accepted")
	}
}

// BenchmarkJWTLoginHungJWKS measures logins verified with cached keys
// while the JWKS endpoint hangs.
func BenchmarkJWTLoginHungJWKS(b *testing.B) {
	h := newHungIssuer(b)
	j, err := NewJWT(context.Background(), JWTConfig{Issuer: h.srv.URL, Audiences: []string{"istio-ca"}, HTTPClient: h.srv.Client()})
	if err != nil {
		b.Fatal(err)
	}
	keys := j.keys.(*remoteKeys)
	keys.maxAge = time.Nanosecond
	keys.minRefresh = 0
	h.hang.Store(true)
	tok, _ := h.minter.Mint("default", "sleep", []string{"istio-ca"}, time.Hour)
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := j.Authenticate(context.Background(), tok); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	if h.blocked.Load() == 0 {
		b.Fatal("the JWKS endpoint was not hung during the benchmark")
	}
}
