package authz

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/internal/promreg"
)

// Metrics holds the engine's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	policyChanges *prometheus.CounterVec
	rejections    *prometheus.CounterVec
	recomputes    prometheus.Counter
}

// NewMetrics creates the engine's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		policyChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_authz_policy_changes_total",
			Help: "Policies applied or deleted, by kind and operation.",
		}, []string{"kind", "op"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_authz_policy_rejections_total",
			Help: "Policies rejected as invalid or unsupported, by kind.",
		}, []string{"kind"}),
		recomputes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_authz_workload_recomputes_total",
			Help: "Workload configurations recomputed.",
		}),
	}
	if err := promreg.Register(reg, m.policyChanges, m.rejections, m.recomputes); err != nil {
		return nil, fmt.Errorf("authz: could not register metrics: %w", err)
	}
	return m, nil
}

func (m *Metrics) applied(k policy.Kind, _ int) {
	if m != nil {
		m.policyChanges.WithLabelValues(string(k), "apply").Inc()
	}
}

func (m *Metrics) deleted(k policy.Kind, _ int) {
	if m != nil {
		m.policyChanges.WithLabelValues(string(k), "delete").Inc()
	}
}

func (m *Metrics) rejected(k policy.Kind) {
	if m != nil {
		m.rejections.WithLabelValues(string(k)).Inc()
	}
}

func (m *Metrics) recomputed(n int) {
	if m != nil {
		m.recomputes.Add(float64(n))
	}
}
