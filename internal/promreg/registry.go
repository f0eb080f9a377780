package promreg

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/castellan-mesh/castellan/internal/buildinfo"
)

// NewRegistry returns the registry of a Castellan process: the Go
// runtime's metrics, the process's (CPU, memory, file descriptors) and
// castellan_build_info, registered once for every command that serves
// /metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	// A fresh registry holds no clash: these cannot fail.
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.NewCollector())
	return reg
}
