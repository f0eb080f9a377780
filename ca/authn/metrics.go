package authn

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// register registers c on reg and returns the collector to use: c itself,
// or the identical collector already registered (as when a CA restarts
// in-process on the same registry). A nil reg leaves c unregistered.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := promreg.Shared(reg, c)
	if err != nil {
		return c, fmt.Errorf("authn: %w", err)
	}
	return c, nil
}
