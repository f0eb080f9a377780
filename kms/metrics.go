package kms

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// metrics are the signing metrics, shared by every key on one registry.
type metrics struct {
	seconds *prometheus.HistogramVec
	errors  *prometheus.CounterVec
}

func registerMetrics(reg prometheus.Registerer) (*metrics, error) {
	f := promreg.WithShared(reg)
	m := &metrics{
		seconds: f.HistogramVec("castellan_kms_sign_duration_seconds", "Time the CA key takes to sign, by key store (file, pkcs11, vault-transit).",
			[]float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5}, "backend"),
		errors: f.CounterVec("castellan_kms_sign_errors_total", "Signatures the CA key store failed to make, by key store.", "backend"),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("kms: metrics: %w", err)
	}
	return m, nil
}

// measuredSigner times each signature.
type measuredSigner struct {
	crypto.Signer
	m       *metrics
	backend string
}

func (s *measuredSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.SignContext(context.Background(), r, digest, opts)
}

// SignContext times a signature that gives up when ctx ends, if the key
// store can.
func (s *measuredSigner) SignContext(ctx context.Context, r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	start := time.Now()
	sig, err := signContext(ctx, s.Signer, r, digest, opts)
	s.m.seconds.WithLabelValues(s.backend).Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.errors.WithLabelValues(s.backend).Inc()
	}
	return sig, err
}
