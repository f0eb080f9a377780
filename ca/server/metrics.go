package server

import (
	"context"
	"crypto/x509"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/rotation"
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
	// rotation exports the root rotation, when the CA's mode reports it.
	rotation *rotation.Collector
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
	for _, r := range []authn.Reason{authn.ReasonNoToken, authn.ReasonMalformed, authn.ReasonInvalid, authn.ReasonNotServiceAccount, authn.ReasonUnavailable, authn.ReasonUnknownCluster} {
		m.authFailures.WithLabelValues(string(r))
	}
	for _, r := range []ca.Reason{ca.ReasonMalformedCSR, ca.ReasonBadSignature, ca.ReasonUnsupportedKey, ca.ReasonForbiddenSAN,
		ca.ReasonDNSNotAllowed, ca.ReasonIdentityMismatch, ca.ReasonInvalidTTL, ca.ReasonCAUnavailable, reasonOversized, reasonImpersonation} {
		m.rejected.WithLabelValues(string(r))
	}
	return m
}

// Reasons the server adds to the Issuer's.
const (
	reasonOversized     ca.Reason = "oversized_request"
	reasonImpersonation ca.Reason = "impersonation"
)

// newRotationCollector returns the rotation metrics of a CA whose
// rotation status is status and whose served roots are src's.
func newRotationCollector(status func(context.Context) (*rotation.Status, error), src ca.Source) *rotation.Collector {
	return rotation.NewCollector(status, func() []*x509.Certificate {
		if a := src.Authority(); a != nil {
			return a.Roots
		}
		return nil
	})
}
