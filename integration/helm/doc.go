// Package helm renders deploy/helm/castellan with Helm's own Go library
// for each set of values an operator is expected to use, and holds every
// rendering equal to a golden file in testdata/ (go test -update rewrites
// them). integration/deploy compares the default rendering with the
// kustomize overlay and applies every rendering to a real API server.
//
// It is a Go module of its own so that Helm's dependencies stay out of the
// product's module and the integration module.
package helm
