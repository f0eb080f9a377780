package agentcmd

import (
	"context"
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/castellan-mesh/castellan/agent"
	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/agent/attest/podindex"
)

// nodeOptions are the flags that node attestation needs beyond
// agent.Config.
type nodeOptions struct {
	nodeName, kubeconfig, procRoot string
}

// setUp starts the watch on this node's pods (until ctx ends) and gives
// cfg the attestor and the pod set built on it.
func (o nodeOptions) setUp(ctx context.Context, cfg *agent.Config) error {
	restCfg, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	index, err := podindex.New(restCfg, o.nodeName, podindex.WithLogger(cfg.Logger))
	if err != nil {
		return err
	}
	attestor, err := attest.New(attest.Config{
		ProcRoot:   o.procRoot,
		Pods:       index,
		NodeName:   o.nodeName,
		Logger:     cfg.Logger,
		Registerer: cfg.Registerer,
	})
	if err != nil {
		return err
	}
	index.Start(ctx)
	cfg.Attestor = attestor
	cfg.Pods = podSet{index}
	return nil
}

// kubeConfig loads path, or the in-cluster configuration when path is
// empty.
func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration for the pod watch (or set --kubeconfig): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", path, err)
	}
	return c, nil
}

// podSet adapts a pod index to agent.PodSet.
type podSet struct{ *podindex.Index }

// Changed returns a channel closed at the index's next change.
func (p podSet) Changed() <-chan struct{} {
	_, changed := p.Load()
	return changed
}

// Synced reports whether the index has listed the node's pods.
func (p podSet) Synced() bool {
	snap, _ := p.Load()
	return snap.Synced
}
