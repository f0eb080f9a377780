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
	m := &metrics{
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_agent_attestations_total",
			Help: "Callers of the agent's socket attributed to a pod (result ok) or refused (result refused).",
		}, []string{"result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_agent_attestation_failures_total",
			Help: "Callers of the agent's socket refused because they could not be attested, by reason.",
		}, []string{"reason"}),
	}
	m.attestations.WithLabelValues("ok")
	m.attestations.WithLabelValues("refused")
	for _, r := range Reasons {
		m.failures.WithLabelValues(string(r))
	}
	if err := promreg.Register(reg, m.attestations, m.failures); err != nil {
		return nil, fmt.Errorf("attest: could not register metrics: %w", err)
	}
	return m, nil
}
