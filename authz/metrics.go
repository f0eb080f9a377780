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
	f := promreg.With(reg)
	m := &Metrics{
		policyChanges: f.CounterVec("castellan_authz_policy_changes_total", "Policies applied or deleted, by kind and operation.", "kind", "op"),
		rejections:    f.CounterVec("castellan_authz_policy_rejections_total", "Policies rejected as invalid or unsupported, by kind.", "kind"),
		recomputes:    f.Counter("castellan_authz_workload_recomputes_total", "Workload configurations recomputed."),
	}
	if err := f.Err(); err != nil {
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
