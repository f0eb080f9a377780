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
	f := promreg.With(reg)
	m := &metrics{
		streams:  f.GaugeVec("castellan_workloadapi_streams", "Workload API streams open now, by method.", "method"),
		pushes:   f.CounterVec("castellan_workloadapi_pushes_total", "Workload API responses sent, by method.", "method"),
		rejected: f.CounterVec("castellan_workloadapi_rejected_calls_total", "Workload API calls refused for lack of the security header, by method.", "method"),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("workloadapi: could not register metrics: %w", err)
	}
	for _, method := range []string{"FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles"} {
		m.streams.WithLabelValues(method)
		m.pushes.WithLabelValues(method)
	}
	return m, nil
}
