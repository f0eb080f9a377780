package sds

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// The api label of the stream metrics.
const (
	apiSotW  = "sotw"
	apiDelta = "delta"
)

// metrics are the server's Prometheus metrics.
type metrics struct {
	streams        *prometheus.GaugeVec
	pushes         *prometheus.CounterVec
	acks           *prometheus.CounterVec
	nacks          *prometheus.CounterVec
	stale          *prometheus.CounterVec
	unknown        *prometheus.CounterVec
	fetches        *prometheus.CounterVec
	invalidSecrets prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	f := promreg.With(reg)
	m := &metrics{
		streams:        f.GaugeVec("castellan_sds_streams", "SDS streams open now, by API (sotw or delta).", "api"),
		pushes:         f.CounterVec("castellan_sds_pushes_total", "SDS responses sent on streams, by API.", "api"),
		acks:           f.CounterVec("castellan_sds_acks_total", "SDS responses acknowledged by clients, by API.", "api"),
		nacks:          f.CounterVec("castellan_sds_nacks_total", "SDS responses rejected by clients (error_detail set), by API.", "api"),
		stale:          f.CounterVec("castellan_sds_stale_requests_total", "SDS requests ignored because their response_nonce was not the latest sent, by API.", "api"),
		unknown:        f.CounterVec("castellan_sds_unknown_resources_total", "Subscriptions to resource names the server does not serve, by API.", "api"),
		fetches:        f.CounterVec("castellan_sds_fetches_total", "FetchSecrets calls, by gRPC status code.", "code"),
		invalidSecrets: f.Counter("castellan_sds_invalid_secrets_total", "Secrets that failed validation and were not sent."),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("sds: could not register metrics: %w", err)
	}
	for _, api := range []string{apiSotW, apiDelta} {
		m.streams.WithLabelValues(api)
		m.pushes.WithLabelValues(api)
		m.acks.WithLabelValues(api)
		m.nacks.WithLabelValues(api)
	}
	return m, nil
}
