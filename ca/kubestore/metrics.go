package kubestore

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// metrics are the Store's Prometheus metrics.
type metrics struct {
	leader     prometheus.Gauge
	loads      *prometheus.CounterVec
	readErrors *prometheus.CounterVec
	created    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Store) (*metrics, error) {
	f := promreg.With(reg)
	m := &metrics{
		leader: f.Gauge("castellan_kubestore_leader", "1 while this replica holds the CA's Lease, else 0."),
		loads: f.CounterVec("castellan_kubestore_secret_loads_total",
			"Changed CA Secret contents seen, by result (loaded or invalid).", "result"),
		readErrors: f.CounterVec("castellan_kubestore_secret_read_errors_total",
			"Failed direct reads of the CA Secret, by reason (not_found, forbidden, other).", "reason"),
		created: f.Counter("castellan_kubestore_roots_created_total", "Roots this replica created and wrote to the CA Secret."),
	}
	f.GaugeFunc("castellan_kubestore_ready", "1 while this replica has loaded the CA Secret and can read it, else 0.",
		func() float64 {
			if ok, _ := s.Ready(); ok {
				return 1
			}
			return 0
		})
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("kubestore: register metrics: %w", err)
	}
	return m, nil
}
