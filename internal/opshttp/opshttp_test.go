package opshttp_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/opshttp"
)

func TestMux(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "castellan_test_total", Help: "A test counter."}))
	var ready atomic.Bool
	const why = "no signing material loaded"
	srv := httptest.NewServer(opshttp.NewMux(opshttp.Config{
		Gatherer: reg,
		Ready:    func() (bool, string) { return ready.Load(), why },
	}))
	defer srv.Close()

	get := func(method, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}

	tests := []struct {
		name, method, path string
		ready              bool
		wantCode           int
		wantBody           string // a substring
	}{
		{name: "metrics", method: "GET", path: "/metrics", wantCode: 200, wantBody: "castellan_test_total 0"},
		{name: "healthz while not ready", method: "GET", path: "/healthz", wantCode: 200, wantBody: "ok\n"},
		{name: "readyz not ready names why", method: "GET", path: "/readyz", wantCode: 503, wantBody: "no signing material loaded\n"},
		{name: "readyz ready", method: "GET", path: "/readyz", ready: true, wantCode: 200, wantBody: "no signing material loaded\n"},
		{name: "POST refused", method: "POST", path: "/healthz", wantCode: http.StatusMethodNotAllowed},
		{name: "unknown path", method: "GET", path: "/debug/pprof/", wantCode: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready.Store(tt.ready)
			code, body := get(tt.method, tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("%s %s = %d %q; want %d with %q", tt.method, tt.path, code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestMuxZeroConfig(t *testing.T) {
	srv := httptest.NewServer(opshttp.NewMux(opshttp.Config{}))
	defer srv.Close()
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s = %d, want 200", path, resp.StatusCode)
		}
	}
}

func TestHandlePprof(t *testing.T) {
	mux := opshttp.NewMux(opshttp.Config{})
	opshttp.HandlePprof(mux)
	for path, want := range map[string]int{
		"/debug/pprof/":        http.StatusOK,
		"/debug/pprof/symbol":  http.StatusOK,
		"/debug/pprof/cmdline": http.StatusNotFound, // the command line is not among them
		"/metrics":             http.StatusOK,
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Errorf("GET %s = %d, want %d", path, rec.Code, want)
		}
	}
}
