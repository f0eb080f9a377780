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
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_trust_writes_total",
			Help: "Trust bundle objects written (ConfigMaps and the ClusterTrustBundle), by operation (create or update).",
		}, []string{"op"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_trust_sync_errors_total",
			Help: "Failed attempts to publish the trust bundle; each is retried.",
		}),
	}
	if err := promreg.Register(reg, m.writes, m.errors); err != nil {
		return nil, fmt.Errorf("trust: register metrics: %w", err)
	}
	return m, nil
}
