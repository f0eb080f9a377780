package server

import (
	"crypto/x509"
	"fmt"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/material"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the CA server's Prometheus metrics.
type metrics struct {
	received     prometheus.Counter
	issued       prometheus.Counter
	authFailures *prometheus.CounterVec
	rejected     *prometheus.CounterVec
	// impersonation is castellan_ca_impersonation_total (impersonation.go).
	impersonation *prometheus.CounterVec
	signSeconds   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, src ca.Source) *metrics {
	m := &metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_ca_csr_received_total",
			Help: "Certificate signing requests received.",
		}),
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_ca_certificates_issued_total",
			Help: "Certificates issued.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_ca_auth_failures_total",
			Help: "Requests refused because the caller was not authenticated, by reason.",
		}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_ca_csr_rejected_total",
			Help: "Authenticated requests refused, by reason.",
		}, []string{"reason"}),
		signSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "castellan_ca_sign_duration_seconds",
			Help:    "Time to validate a CSR and sign its certificate.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5},
		}),
	}
	rootExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "castellan_ca_root_expiry_timestamp_seconds",
		Help: "Expiry of the root the CA currently signs under, as a Unix timestamp.",
	}, func() float64 {
		if a := src.Authority(); a != nil {
			return float64(a.Root().NotAfter.Unix())
		}
		return 0
	})
	chainExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "castellan_ca_chain_expiry_timestamp_seconds",
		Help: "Earliest expiry in the CA's signing chain (no leaf outlives it), as a Unix timestamp.",
	}, func() float64 {
		if a := src.Authority(); a != nil {
			return float64(a.NotAfter().Unix())
		}
		return 0
	})
	reg.MustRegister(m.received, m.issued, m.authFailures, m.rejected, m.signSeconds, rootExpiry, chainExpiry)
	m.impersonation = newImpersonationCounter(reg)
	// Make every reason visible from the start, so alerts can use rate().
	for _, r := range []authn.Reason{authn.ReasonNoToken, authn.ReasonMalformed, authn.ReasonInvalid, authn.ReasonNotServiceAccount, authn.ReasonUnavailable} {
		m.authFailures.WithLabelValues(string(r))
	}
	for _, r := range []ca.Reason{ca.ReasonMalformedCSR, ca.ReasonBadSignature, ca.ReasonUnsupportedKey, ca.ReasonForbiddenSAN,
		ca.ReasonIdentityMismatch, ca.ReasonInvalidTTL, ca.ReasonCAUnavailable, reasonOversized, reasonImpersonation} {
		m.rejected.WithLabelValues(string(r))
	}
	return m
}

// Reasons the server adds to the Issuer's.
const (
	reasonOversized     ca.Reason = "oversized_request"
	reasonImpersonation ca.Reason = "impersonation"
)

// rotationCollector exports the trust bundle's roots and the rotation
// phase, read from the data directory at each scrape. When they cannot be
// read, it counts the error and still exports the roots the CA serves.
type rotationCollector struct {
	status func() (*material.RotationStatus, error)
	// src is the CA's material, for the roots it serves when status fails.
	src    ca.Source
	errors prometheus.Counter
}

func newRotationCollector(status func() (*material.RotationStatus, error), src ca.Source) *rotationCollector {
	return &rotationCollector{status: status, src: src, errors: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "castellan_ca_rotation_status_errors_total",
		Help: "Scrapes at which the root rotation state could not be read; the roots the CA serves are exported with state unknown.",
	})}
}

var (
	rootNotAfterDesc = prometheus.NewDesc("castellan_ca_bundle_root_expiry_timestamp_seconds",
		"Expiry of each root in the trust bundle, by state (active, prepared, retiring), as a Unix timestamp.",
		[]string{"serial", "state"}, nil)
	bundleRootsDesc = prometheus.NewDesc("castellan_ca_bundle_roots",
		"Roots in the trust bundle.", nil, nil)
	phaseDesc = prometheus.NewDesc("castellan_ca_rotation_phase",
		"1 for the current root rotation phase (steady, prepared, activated).", []string{"phase"}, nil)
	activateAfterDesc = prometheus.NewDesc("castellan_ca_rotation_activate_after_timestamp_seconds",
		"When a prepared root has had the propagation delay to reach every peer (0 when none is prepared).", nil, nil)
)

func (c *rotationCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rootNotAfterDesc
	ch <- bundleRootsDesc
	ch <- phaseDesc
	ch <- activateAfterDesc
	c.errors.Describe(ch)
}

func (c *rotationCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.status()
	if err != nil {
		c.errors.Inc()
		c.errors.Collect(ch)
		var roots []*x509.Certificate
		if a := c.src.Authority(); a != nil {
			roots = a.Roots
		}
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
	for _, p := range []material.Phase{material.PhaseSteady, material.PhasePrepared, material.PhaseActivated} {
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
