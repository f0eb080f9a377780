package server

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/prometheus/client_golang/prometheus"
)

// TestNewMetricClash: a registry that already holds one of the server's
// metrics (two servers on one registry, a name taken by another
// component) makes New fail with an error naming it, not panic.
func TestNewMetricClash(t *testing.T) {
	for _, name := range []string{
		"castellan_ca_csr_received_total",        // metrics.go
		"castellan_ca_connections_refused_total", // limits.go
		"castellan_ca_impersonation_total",       // impersonation.go
		"castellan_ca_rotation_phase",            // the rotation collector
	} {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "taken"}))
			src := dirSource(t)
			_, err := New(context.Background(), Config{
				Source: src, Rotation: src.Rotation(rotation.Policy{}), GRPCAddr: "127.0.0.1:0", HTTPAddr: "-",
				Authenticator: tokenTable{}, Logger: slog.New(slog.DiscardHandler), Registerer: reg, Gatherer: reg,
			})
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("New over a registry holding %s: err = %v, want one naming it", name, err)
			}
		})
	}
}
