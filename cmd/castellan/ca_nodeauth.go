package main

import (
	"fmt"

	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/ca/server"
	"github.com/castellan-mesh/castellan/internal/cliflag"
	"github.com/spf13/pflag"
)

// nodeAuthFlags select the node agents that may ask for the SVIDs of the
// pods on their node (Istio's ImpersonatedIdentity).
type nodeAuthFlags struct {
	agents *cliflag.StringList
}

func (n *nodeAuthFlags) register(fs *pflag.FlagSet) {
	n.agents = cliflag.NewStringList(nodeauth.DefaultNodeAgent)
	fs.Var(n.agents, "node-agent-service-account", "service account namespace/name of a node agent, which may obtain the SVIDs of pods on its own node (repeatable; needs get, list and watch on pods)")
}

// authorizer returns the impersonation rule for the configured node agents,
// with the pod index it reads added to d.runners. With no cluster to read
// pods from (offline JWT only, outside a pod, no --kubeconfig), it returns
// nil and impersonation is refused.
func (n *nodeAuthFlags) authorizer(d *caDeps) (server.ImpersonationAuthorizer, error) {
	agents := make([]nodeauth.ServiceAccount, 0, len(n.agents.Values()))
	for _, v := range n.agents.Values() {
		sa, err := nodeauth.ParseServiceAccount(v)
		if err != nil {
			return nil, usageError{Err: fmt.Errorf("--node-agent-service-account: %w", err)}
		}
		agents = append(agents, sa)
	}
	if _, err := kubeConfig(d.kubeconfig); err != nil {
		d.log.Warn("no cluster to list pods from: node agents may not impersonate (set --kubeconfig or run in a pod)", "error", err.Error())
		return nil, nil
	}
	// The pod index is shared with the token checks (caauth.go).
	pods, err := d.podIndex()
	if err != nil {
		return nil, err
	}
	a, err := nodeauth.New(nodeauth.Config{TrustDomain: d.trustDomain, NodeAgents: agents, Pods: pods})
	if err != nil {
		return nil, usageError{Err: err}
	}
	d.log.Info("node agents may impersonate pods on their node", "node_agents", n.agents.String())
	return a, nil
}
