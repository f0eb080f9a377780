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
	rotations  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Store) (*metrics, error) {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "castellan_kubestore_leader",
			Help: "1 while this replica holds the CA's Lease, else 0.",
		}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_kubestore_secret_loads_total",
			Help: "Changed CA Secret contents seen, by result (loaded or invalid).",
		}, []string{"result"}),
		readErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_kubestore_secret_read_errors_total",
			Help: "Failed direct reads of the CA Secret, by reason (not_found, forbidden, other).",
		}, []string{"reason"}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_kubestore_roots_created_total",
			Help: "Roots this replica created and wrote to the CA Secret.",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_kubestore_root_rotation_steps_total",
			Help: "Root rotation steps this replica took as leader, by step (prepare, activate, retire, error).",
		}, []string{"step"}),
	}
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "castellan_kubestore_ready",
		Help: "1 while this replica has loaded the CA Secret and can read it, else 0.",
	}, func() float64 {
		if ok, _ := s.Ready(); ok {
			return 1
		}
		return 0
	})
	if err := promreg.Register(reg, m.leader, m.loads, m.readErrors, m.created, m.rotations, ready); err != nil {
		return nil, fmt.Errorf("kubestore: register metrics: %w", err)
	}
	return m, nil
}
