package workloadapi

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
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
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.streams, m.pushes, m.rejected} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("workloadapi: could not register metrics: %w", err)
	}
	return m, nil
}
