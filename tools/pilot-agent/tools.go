//go:build tools

// Package tools pins Istio's pilot-agent, built for the integration tests
// that check Castellan against Istio's own CA client.
package tools

import _ "istio.io/istio/pilot/cmd/pilot-agent"
