package attest

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

type metrics struct {
	attestations *prometheus.CounterVec
	failures     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	f := promreg.With(reg)
	m := &metrics{
		attestations: f.CounterVec("castellan_agent_attestations_total",
			"Callers of the agent's socket attributed to a pod (result ok) or refused (result refused).", "result"),
		failures: f.CounterVec("castellan_agent_attestation_failures_total",
			"Callers of the agent's socket refused because they could not be attested, by reason.", "reason"),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("attest: could not register metrics: %w", err)
	}
	m.attestations.WithLabelValues("ok")
	m.attestations.WithLabelValues("refused")
	for _, r := range Reasons {
		m.failures.WithLabelValues(string(r))
	}
	return m, nil
}
