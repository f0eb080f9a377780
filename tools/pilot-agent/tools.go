//go:build tools

// Package tools pins Istio's pilot-agent and pilot-discovery (istiod),
// built for the integration tests that check Castellan against Istio's own
// CA client and control plane.
package tools

import (
	_ "istio.io/istio/pilot/cmd/pilot-agent"
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
