package federation

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

type metrics struct {
	failures *prometheus.CounterVec
	updates  *prometheus.CounterVec
}

// bundleCollector exports, per trust domain, when its last good bundle
// was fetched and how old that is, and its sequence number.
type bundleCollector struct {
	f                          *Federator
	lastGood, age, seq, hasOne *prometheus.Desc
}

func newMetrics(reg prometheus.Registerer, f *Federator) (*metrics, error) {
	pf := promreg.With(reg)
	m := &metrics{
		failures: pf.CounterVec("castellan_federation_refresh_failures_total",
			"Fetches of a foreign trust domain's bundle that failed or were refused, by trust domain and reason (unreachable, http_status, too_large, malformed, empty, wrong_trust_domain, sequence_backwards); the last good bundle is kept.",
			"trust_domain", "reason"),
		updates: pf.CounterVec("castellan_federation_bundle_updates_total", "New bundles of a foreign trust domain taken in, by trust domain.", "trust_domain"),
	}
	labels := []string{"trust_domain"}
	c := &bundleCollector{
		f:        f,
		lastGood: prometheus.NewDesc("castellan_federation_bundle_last_refresh_timestamp_seconds", "When the bundle of a foreign trust domain was last fetched (or loaded at start) successfully, in Unix seconds.", labels, nil),
		age:      prometheus.NewDesc("castellan_federation_bundle_age_seconds", "Time since the bundle of a foreign trust domain was last fetched (or loaded at start) successfully.", labels, nil),
		seq:      prometheus.NewDesc("castellan_federation_bundle_sequence", "spiffe_sequence of the last good bundle of a foreign trust domain (absent when it has none).", labels, nil),
		hasOne:   prometheus.NewDesc("castellan_federation_bundle_present", "1 when the CA holds a bundle of the foreign trust domain, 0 while it has none.", labels, nil),
	}
	pf.Register(c)
	if err := pf.Err(); err != nil {
		return nil, fmt.Errorf("federation: could not register metrics: %w", err)
	}
	// Every trust domain shows up from the start.
	for _, r := range f.cfg.Relationships {
		m.updates.WithLabelValues(r.TrustDomain.Name())
	}
	return m, nil
}

func (c *bundleCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lastGood
	ch <- c.age
	ch <- c.seq
	ch <- c.hasOne
}

func (c *bundleCollector) Collect(ch chan<- prometheus.Metric) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	now := time.Now()
	for _, p := range c.f.peers {
		td := p.rel.TrustDomain.Name()
		if p.bundle == nil {
			ch <- prometheus.MustNewConstMetric(c.hasOne, prometheus.GaugeValue, 0, td)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.hasOne, prometheus.GaugeValue, 1, td)
		ch <- prometheus.MustNewConstMetric(c.lastGood, prometheus.GaugeValue, float64(p.lastGood.UnixNano())/1e9, td)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, now.Sub(p.lastGood).Seconds(), td)
		if seq, ok := p.bundle.SequenceNumber(); ok {
			ch <- prometheus.MustNewConstMetric(c.seq, prometheus.GaugeValue, float64(seq), td)
		}
	}
}
