package workloadapi

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

type metrics struct {
	streams  *prometheus.GaugeVec
	pushes   *prometheus.CounterVec
	rejected *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "castellan_workloadapi_streams",
			Help: "Workload API streams open now, by method.",
		}, []string{"method"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_workloadapi_pushes_total",
			Help: "Workload API responses sent, by method.",
		}, []string{"method"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "castellan_workloadapi_rejected_calls_total",
			Help: "Workload API calls refused for lack of the security header, by method.",
		}, []string{"method"}),
	}
	for _, method := range []string{"FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles"} {
		m.streams.WithLabelValues(method)
		m.pushes.WithLabelValues(method)
	}
	if err := promreg.Register(reg, m.streams, m.pushes, m.rejected); err != nil {
		return nil, fmt.Errorf("workloadapi: could not register metrics: %w", err)
	}
	return m, nil
}
