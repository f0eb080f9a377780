package upstream

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// metrics are the Source's Prometheus metrics.
type metrics struct {
	renewals prometheus.Counter
	failures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Source) (*metrics, error) {
	m := &metrics{
		renewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_ca_intermediate_renewals_total",
			Help: "Intermediates the upstream CA signed.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_ca_intermediate_renewal_failures_total",
			Help: "Failed attempts to have the upstream CA sign an intermediate.",
		}),
	}
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "castellan_ca_intermediate_expiry_timestamp_seconds",
		Help: "Expiry of the intermediate the CA signs with, as a Unix timestamp. No leaf outlives it.",
	}, func() float64 {
		if a := s.Authority(); a != nil {
			return float64(a.Cert.NotAfter.Unix())
		}
		return 0
	})
	next := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "castellan_ca_intermediate_next_renewal_timestamp_seconds",
		Help: "When the next renewal attempt is due, as a Unix timestamp (0 before the renewal loop starts).",
	}, func() float64 {
		s.stateMu.Lock()
		defer s.stateMu.Unlock()
		if s.next.IsZero() {
			return 0
		}
		return float64(s.next.Unix())
	})
	failing := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "castellan_ca_intermediate_renewal_failing",
		Help: "1 while the latest renewal attempt failed, else 0.",
	}, func() float64 {
		if s.LastError() != nil {
			return 1
		}
		return 0
	})
	if err := promreg.Register(reg, m.renewals, m.failures, expiry, next, failing); err != nil {
		return nil, fmt.Errorf("upstream: metrics: %w", err)
	}
	return m, nil
}
