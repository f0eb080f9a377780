// Package opshttp builds the operations endpoint every Castellan server
// serves on its HTTP address, the same way in the CA, the node agent and
// the policy server: GET /metrics (Prometheus), GET /healthz (the process
// answers) and GET /readyz (it can do its work now, or why not).
package opshttp

import (
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config says what the operations endpoint serves. The zero value serves
// an empty /metrics page and is always ready.
type Config struct {
	// Gatherer is what /metrics shows. Nil: nothing.
	Gatherer prometheus.Gatherer
	// Ready reports whether the server can do its work now, and if not,
	// why. /readyz answers 200 with the message, or 503 with the reason.
	// Nil: always ready, with the message "ok".
	Ready func() (ok bool, why string)
	// DisableCompression serves /metrics uncompressed even to a scraper
	// that accepts gzip: for a small page read over loopback, where a gzip
	// writer would cost more memory than it saves.
	DisableCompression bool
}

// NewMux returns a ServeMux that serves the operations endpoint. A server
// adds its own routes (bundles, profiling) to it.
func NewMux(cfg Config) *http.ServeMux {
	g := cfg.Gatherer
	if g == nil {
		g = prometheus.NewRegistry()
	}
	ready := cfg.Ready
	if ready == nil {
		ready = func() (bool, string) { return true, "ok" }
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{DisableCompression: cfg.DisableCompression}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, msg := ready()
		if !ok {
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(msg + "\n"))
	})
	return mux
}

// HandlePprof adds Go's profiles to mux under /debug/pprof/: the index,
// CPU profiles, symbols and execution traces. They are unauthenticated:
// a server adds them only where no one else can reach (a loopback
// address, or on an operator's request).
func HandlePprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
