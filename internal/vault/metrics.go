package vault

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// metrics are the Client's Prometheus metrics. A nil *metrics records
// nothing.
type metrics struct {
	logins *prometheus.CounterVec
}

func registerMetrics(reg prometheus.Registerer) (*metrics, error) {
	logins := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "castellan_vault_logins_total",
		Help: "Logins to Vault, by auth method and result (success, failure).",
	}, []string{"method", "result"})
	// Several clients on one registry share the counter.
	logins, err := promreg.Shared(reg, logins)
	if err != nil {
		return nil, fmt.Errorf("vault: metrics: %w", err)
	}
	return &metrics{logins: logins}, nil
}

func (m *metrics) login(method string, ok bool) {
	if m == nil {
		return
	}
	result := "success"
	if !ok {
		result = "failure"
	}
	m.logins.WithLabelValues(method, result).Inc()
}
