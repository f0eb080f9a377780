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
	f := promreg.With(reg)
	m := &metrics{
		renewals: f.Counter("castellan_ca_intermediate_renewals_total", "Intermediates the upstream CA signed."),
		failures: f.Counter("castellan_ca_intermediate_renewal_failures_total", "Failed attempts to have the upstream CA sign an intermediate."),
	}
	f.GaugeFunc("castellan_ca_intermediate_expiry_timestamp_seconds",
		"Expiry of the intermediate the CA signs with, as a Unix timestamp. No leaf outlives it.",
		func() float64 {
			if a := s.Authority(); a != nil {
				return float64(a.Cert.NotAfter.Unix())
			}
			return 0
		})
	f.GaugeFunc("castellan_ca_intermediate_next_renewal_timestamp_seconds",
		"When the next renewal attempt is due, as a Unix timestamp (0 before the renewal loop starts).",
		func() float64 {
			s.stateMu.Lock()
			defer s.stateMu.Unlock()
			if s.next.IsZero() {
				return 0
			}
			return float64(s.next.Unix())
		})
	f.GaugeFunc("castellan_ca_intermediate_renewal_failing", "1 while the latest renewal attempt failed, else 0.",
		func() float64 {
			if s.LastError() != nil {
				return 1
			}
			return 0
		})
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("upstream: metrics: %w", err)
	}
	return m, nil
}
