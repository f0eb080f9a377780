package server

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/promreg"
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
	// limits count what the server's limits refused (limits.go).
	limits *limitMetrics
	// jwt are the JWT service's metrics (jwt.go); nil without a JWTIssuer.
	jwt *jwtMetrics
	// rotation exports the root rotation, when the CA's mode reports it.
	rotation *rotation.Collector
}

// newMetrics defines and registers the server's metrics, those of its
// limits and, with an issuer, of its JWT service.
func newMetrics(reg prometheus.Registerer, src ca.Source, jwt JWTIssuer) (*metrics, error) {
	f := promreg.With(reg)
	m := &metrics{
		received:     f.Counter("castellan_ca_csr_received_total", "Certificate signing requests received."),
		issued:       f.Counter("castellan_ca_certificates_issued_total", "Certificates issued."),
		authFailures: f.CounterVec("castellan_ca_auth_failures_total", "Requests refused because the caller was not authenticated, by reason.", "reason"),
		rejected:     f.CounterVec("castellan_ca_csr_rejected_total", "Authenticated requests refused, by reason.", "reason"),
		signSeconds: f.Histogram("castellan_ca_sign_duration_seconds", "Time to validate a CSR and sign its certificate.",
			[]float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5}),
		impersonation: newImpersonationCounter(f),
		limits:        newLimitMetrics(f),
	}
	f.GaugeFunc("castellan_ca_root_expiry_timestamp_seconds", "Expiry of the root the CA currently signs under, as a Unix timestamp.",
		func() float64 {
			if a := src.Authority(); a != nil {
				return float64(a.Root().NotAfter.Unix())
			}
			return 0
		})
	f.GaugeFunc("castellan_ca_chain_expiry_timestamp_seconds", "Earliest expiry in the CA's signing chain (no leaf outlives it), as a Unix timestamp.",
		func() float64 {
			if a := src.Authority(); a != nil {
				return float64(a.NotAfter().Unix())
			}
			return 0
		})
	if jwt != nil {
		m.jwt = newJWTMetrics(f, jwt)
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("server: could not register metrics: %w", err)
	}
	// Make every reason visible from the start, so alerts can use rate().
	for _, r := range []authn.Reason{authn.ReasonNoToken, authn.ReasonMalformed, authn.ReasonInvalid, authn.ReasonNotServiceAccount, authn.ReasonUnavailable, authn.ReasonUnknownCluster} {
		m.authFailures.WithLabelValues(string(r))
	}
	for _, r := range []ca.Reason{ca.ReasonMalformedCSR, ca.ReasonBadSignature, ca.ReasonUnsupportedKey, ca.ReasonForbiddenSAN,
		ca.ReasonDNSNotAllowed, ca.ReasonIdentityMismatch, ca.ReasonInvalidTTL, ca.ReasonCAUnavailable, reasonOversized, reasonImpersonation} {
		m.rejected.WithLabelValues(string(r))
	}
	return m, nil
}

// registerRotation exports the root rotation whose status is status,
// read at each scrape, with the roots src serves.
func (m *metrics) registerRotation(reg prometheus.Registerer, status func(context.Context) (*rotation.Status, error), src ca.Source) error {
	m.rotation = rotation.NewCollector(status, func() []*x509.Certificate {
		if a := src.Authority(); a != nil {
			return a.Roots
		}
		return nil
	})
	if err := promreg.Register(reg, m.rotation); err != nil {
		return fmt.Errorf("server: could not register the rotation metrics: %w", err)
	}
	return nil
}

// Reasons the server adds to the Issuer's.
const (
	reasonOversized     ca.Reason = "oversized_request"
	reasonImpersonation ca.Reason = "impersonation"
)
