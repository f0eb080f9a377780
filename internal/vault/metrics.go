package vault

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
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
	if err := reg.Register(logins); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("vault: metrics: %w", err)
		}
		// Several clients on one registry share the counter.
		logins = are.ExistingCollector.(*prometheus.CounterVec)
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
