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
	m := &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "castellan_sds_streams",
			Help: "SDS streams open now, by API (sotw or delta).",
		}, []string{"api"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_sds_pushes_total",
			Help: "SDS responses sent on streams, by API.",
		}, []string{"api"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_sds_acks_total",
			Help: "SDS responses acknowledged by clients, by API.",
		}, []string{"api"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_sds_nacks_total",
			Help: "SDS responses rejected by clients (error_detail set), by API.",
		}, []string{"api"}),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_sds_stale_requests_total",
			Help: "SDS requests ignored because their response_nonce was not the latest sent, by API.",
		}, []string{"api"}),
		unknown: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_sds_unknown_resources_total",
			Help: "Subscriptions to resource names the server does not serve, by API.",
		}, []string{"api"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_sds_fetches_total",
			Help: "FetchSecrets calls, by gRPC status code.",
		}, []string{"code"}),
		invalidSecrets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "castellan_sds_invalid_secrets_total",
			Help: "Secrets that failed validation and were not sent.",
		}),
	}
	for _, api := range []string{apiSotW, apiDelta} {
		m.streams.WithLabelValues(api)
		m.pushes.WithLabelValues(api)
		m.acks.WithLabelValues(api)
		m.nacks.WithLabelValues(api)
	}
	if err := promreg.Register(reg, m.streams, m.pushes, m.acks, m.nacks, m.stale, m.unknown, m.fetches, m.invalidSecrets); err != nil {
		return nil, fmt.Errorf("sds: could not register metrics: %w", err)
	}
	return m, nil
}
