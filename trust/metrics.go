package trust

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// metrics are the Controller's Prometheus metrics.
type metrics struct {
	writes *prometheus.CounterVec
	errors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	f := promreg.With(reg)
	m := &metrics{
		writes: f.CounterVec("castellan_trust_writes_total",
			"Trust bundle objects written (ConfigMaps and the ClusterTrustBundle), by operation (create or update).", "op"),
		errors: f.Counter("castellan_trust_sync_errors_total", "Failed attempts to publish the trust bundle; each is retried."),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("trust: register metrics: %w", err)
	}
	return m, nil
}
