package jwtsvid

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/ca/rotation"
)

var (
	jwtPhaseDesc = prometheus.NewDesc("castellan_ca_jwt_rotation_phase",
		"1 for the current JWT signing key rotation phase (steady, prepared, activated).", []string{"phase"}, nil)
	jwtActivateAfterDesc = prometheus.NewDesc("castellan_ca_jwt_rotation_activate_after_timestamp_seconds",
		"When a prepared JWT signing key has had the propagation delay to reach every verifier (0 when none is prepared).", nil, nil)
	jwtRetireAfterDesc = prometheus.NewDesc("castellan_ca_jwt_rotation_retire_after_timestamp_seconds",
		"When no JWT-SVID of the previous JWT signing key can be valid any more (0 when none is retiring).", nil, nil)
	jwtActivatedDesc = prometheus.NewDesc("castellan_ca_jwt_key_activated_timestamp_seconds",
		"When the active JWT signing key began signing (0 when not recorded).", nil, nil)
)

// Collector exports the JWT signing key rotation of a KeySet, as
// rotation.Collector does the root's: the phase and its times from the
// keys the CA holds (as of its last reload), and the automatic steps
// taken.
type Collector struct {
	keys   *KeySet
	policy rotation.Policy
	steps  *prometheus.CounterVec
}

// NewCollector returns a Collector of ks, whose prepared keys activate by
// the policy of r.
func NewCollector(ks *KeySet, r *Rotator) *Collector {
	return &Collector{keys: ks, policy: r.policy(), steps: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "castellan_ca_jwt_rotation_steps_total",
		Help: "Automatic JWT signing key rotation steps this CA took, by step (prepare, activate, retire, error).",
	}, []string{"step"})}
}

// ObserveStep counts an automatic rotation step (see Rotator.Run).
func (c *Collector) ObserveStep(step string) { c.steps.WithLabelValues(step).Inc() }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- jwtPhaseDesc
	ch <- jwtActivateAfterDesc
	ch <- jwtRetireAfterDesc
	ch <- jwtActivatedDesc
	c.steps.Describe(ch)
}

// Collect implements prometheus.Collector. Until the keys are loaded only
// the step counts are exported.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.steps.Collect(ch)
	k := c.keys.Keys()
	if k == nil {
		return
	}
	st := k.State
	for _, p := range rotation.Phases {
		v := 0.0
		if st.Phase == p {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(jwtPhaseDesc, prometheus.GaugeValue, v, string(p))
	}
	var activate, retire, activated float64
	if st.Phase == rotation.PhasePrepared {
		activate = float64(c.policy.ActivateAfter(st.PreparedAt).Unix())
	}
	if st.Phase == rotation.PhaseActivated {
		retire = float64(st.RetireAfter.Unix())
	}
	if !st.ActivatedAt.IsZero() {
		activated = float64(st.ActivatedAt.Unix())
	}
	ch <- prometheus.MustNewConstMetric(jwtActivateAfterDesc, prometheus.GaugeValue, activate)
	ch <- prometheus.MustNewConstMetric(jwtRetireAfterDesc, prometheus.GaugeValue, retire)
	ch <- prometheus.MustNewConstMetric(jwtActivatedDesc, prometheus.GaugeValue, activated)
}
