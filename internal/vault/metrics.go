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
	// Several clients on one registry share the counter.
	f := promreg.WithShared(reg)
	logins := f.CounterVec("castellan_vault_logins_total", "Logins to Vault, by auth method and result (success, failure).", "method", "result")
	if err := f.Err(); err != nil {
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
