// Package check decides one request against a workload's policies the way
// its proxy would: the request, described in the terms of Istio's
// policies, is turned into what Envoy's RBAC filters see, run through the
// filters generated for the workload (not the policies), and the decision
// is reported. It is what "castellan authz check" prints.
package check
