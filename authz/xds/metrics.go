package xds

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// Metrics holds the policy server's Prometheus metrics. A nil *Metrics
// records nothing.
type Metrics struct {
	proxies     prometheus.Gauge
	pushes      *prometheus.CounterVec
	answers     *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	changeToAck prometheus.Histogram
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	f := promreg.With(reg)
	m := &Metrics{
		proxies:  f.Gauge("castellan_authz_xds_connected_proxies", "Proxies connected and identified, one per xDS stream."),
		pushes:   f.CounterVec("castellan_authz_xds_pushes_total", "ECDS responses sent to proxies, by stream form (sotw or delta).", "form"),
		answers:  f.CounterVec("castellan_authz_xds_answers_total", "Proxy answers to ECDS responses, by result (ack or nack).", "result"),
		refusals: f.CounterVec("castellan_authz_xds_refused_streams_total", "xDS streams refused, by reason (identity or limit).", "reason"),
		changeToAck: f.Histogram("castellan_authz_xds_change_to_ack_seconds",
			"Seconds from a policy or pod change reaching the server to the last answer (ACK or NACK) of the proxies it was pushed to.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("xds: could not register metrics: %w", err)
	}
	return m, nil
}

func (m *Metrics) connected(d float64) {
	if m != nil {
		m.proxies.Add(d)
	}
}

func (m *Metrics) pushed(form string) {
	if m != nil {
		m.pushes.WithLabelValues(form).Inc()
	}
}

func (m *Metrics) answered(ack bool) {
	if m == nil {
		return
	}
	if ack {
		m.answers.WithLabelValues("ack").Inc()
	} else {
		m.answers.WithLabelValues("nack").Inc()
	}
}

func (m *Metrics) refused(reason string) {
	if m != nil {
		m.refusals.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) changeDone(d time.Duration) {
	if m != nil {
		m.changeToAck.Observe(d.Seconds())
	}
}
