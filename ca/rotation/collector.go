package rotation

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	rootNotAfterDesc = prometheus.NewDesc("castellan_ca_bundle_root_expiry_timestamp_seconds",
		"Expiry of each root in the trust bundle, by state (active, prepared, retiring; unknown when the rotation state cannot be read), as a Unix timestamp.",
		[]string{"serial", "state"}, nil)
	bundleRootsDesc = prometheus.NewDesc("castellan_ca_bundle_roots",
		"Roots in the trust bundle.", nil, nil)
	phaseDesc = prometheus.NewDesc("castellan_ca_rotation_phase",
		"1 for the current root rotation phase (steady, prepared, activated).", []string{"phase"}, nil)
	activateAfterDesc = prometheus.NewDesc("castellan_ca_rotation_activate_after_timestamp_seconds",
		"When a prepared root has had the propagation delay to reach every peer (0 when none is prepared).", nil, nil)
)

// ScrapeTimeout bounds the reading of a status at a scrape.
const ScrapeTimeout = 10 * time.Second

// Collector exports a CA's trust bundle roots and rotation phase, read at
// each scrape, whatever the CA's mode. When the status cannot be read it
// counts the error and still exports the roots the CA serves.
type Collector struct {
	status func(context.Context) (*Status, error)
	bundle func() []*x509.Certificate
	errors prometheus.Counter
	steps  *prometheus.CounterVec
}

// NewCollector returns a Collector that reads status at each scrape, for
// at most ScrapeTimeout; bundle returns the roots the CA serves, for
// scrapes at which status fails.
func NewCollector(status func(context.Context) (*Status, error), bundle func() []*x509.Certificate) *Collector {
	return &Collector{
		status: status, bundle: bundle,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_ca_rotation_status_errors_total",
			Help: "Scrapes at which the root rotation state could not be read; the roots the CA serves are exported with state unknown.",
		}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_ca_rotation_steps_total",
			Help: "Automatic root rotation steps this CA took, by step (prepare, activate, retire, error).",
		}, []string{"step"}),
	}
}

// ObserveStep counts an automatic rotation step (see Run).
func (c *Collector) ObserveStep(step string) { c.steps.WithLabelValues(step).Inc() }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rootNotAfterDesc
	ch <- bundleRootsDesc
	ch <- phaseDesc
	ch <- activateAfterDesc
	c.errors.Describe(ch)
	c.steps.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	defer c.steps.Collect(ch)
	ctx, cancel := context.WithTimeout(context.Background(), ScrapeTimeout)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		c.errors.Inc()
		c.errors.Collect(ch)
		roots := c.bundle()
		ch <- prometheus.MustNewConstMetric(bundleRootsDesc, prometheus.GaugeValue, float64(len(roots)))
		for _, r := range roots {
			ch <- prometheus.MustNewConstMetric(rootNotAfterDesc, prometheus.GaugeValue, float64(r.NotAfter.Unix()), fmt.Sprintf("%x", r.SerialNumber), "unknown")
		}
		return
	}
	c.errors.Collect(ch)
	ch <- prometheus.MustNewConstMetric(bundleRootsDesc, prometheus.GaugeValue, float64(len(st.Roots)))
	for _, r := range st.Roots {
		ch <- prometheus.MustNewConstMetric(rootNotAfterDesc, prometheus.GaugeValue, float64(r.NotAfter.Unix()), r.Serial, string(r.State))
	}
	for _, p := range Phases {
		v := 0.0
		if st.Phase == p {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(phaseDesc, prometheus.GaugeValue, v, string(p))
	}
	var after float64
	if !st.ActivateAfter.IsZero() {
		after = float64(st.ActivateAfter.Unix())
	}
	ch <- prometheus.MustNewConstMetric(activateAfterDesc, prometheus.GaugeValue, after)
}
