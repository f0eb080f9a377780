// Package rules holds the tests of deploy/monitoring against Prometheus's
// own code: every alerting rule and dashboard query parses with
// Prometheus's parser, names only the metrics listed in
// ../testdata/metrics.txt (which integration/monitoring checks against a
// scrape of a running CA and agent), and every alert fires and resolves on
// synthetic series evaluated by Prometheus's rule engine.
//
// It is a Go module of its own so that Prometheus's dependencies stay out
// of both the product's module and the integration module.
package rules
