// Package monitoring checks deploy/monitoring against running servers:
// every metric its alerts and dashboard name (testdata/metrics.txt, kept
// equal to the expressions by the rules module beside this package, which
// parses them with Prometheus's own parser) is served by a real CA or
// agent.
package monitoring
