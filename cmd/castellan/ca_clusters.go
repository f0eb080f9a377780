package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

// defaultClusterID is the cluster ID Istio's agents send when CLUSTER_ID is
// not set.
const defaultClusterID = "Kubernetes"

// clusterFlags name the clusters whose tokens the CA checks: its own, and
// remote ones that requests choose with Istio's ClusterID metadata.
type clusterFlags struct {
	localID string
	remote  []remoteCluster
}

// remoteCluster is one --remote-cluster.
type remoteCluster struct{ id, kubeconfig string }

func (c *clusterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.localID, "cluster-id", defaultClusterID, "ID of the CA's own cluster, as Istio's agents send it in the ClusterID metadata (pilot-agent's ISTIO_META_CLUSTER_ID); a request naming no cluster is checked here too")
	fs.Func("remote-cluster", "`ID=KUBECONFIG`: also check the tokens of requests whose ClusterID is ID, against that cluster's API server, with their own keys, caches and watches (repeatable); a request naming any other cluster is refused", c.addRemote)
}

func (c *clusterFlags) addRemote(v string) error {
	id, path, ok := strings.Cut(v, "=")
	switch {
	case !ok || id == "" || path == "":
		return fmt.Errorf("%q: want ID=KUBECONFIG", v)
	}
	for _, r := range c.remote {
		if r.id == id {
			return fmt.Errorf("%q: cluster %s is given twice", v, id)
		}
	}
	c.remote = append(c.remote, remoteCluster{id: id, kubeconfig: path})
	return nil
}

// clusterAuthenticator builds one authenticator per cluster (see
// caFlags.authenticator), each with its own TokenReview client, offline
// keys, cache and watches, and routes requests to them by ClusterID. With
// remote clusters, every token-check metric carries a cluster label.
//
// Node agents may impersonate only in the local cluster: the pod index
// they are authorized against is the local cluster's.
func (f *caFlags) clusterAuthenticator(ctx context.Context, d *caDeps) (authn.Authenticator, error) {
	remote := f.clusters.remote
	for _, r := range remote {
		if r.id == f.clusters.localID {
			return nil, usageError{Err: fmt.Errorf("--remote-cluster %s: %s is the local cluster (--cluster-id)", r.id, r.id)}
		}
	}
	if len(remote) == 0 {
		local, err := f.authenticator(ctx, d)
		if err != nil {
			return nil, err
		}
		c, err := authn.NewClusters(f.clusters.localID, local, nil)
		if err != nil {
			return nil, usageError{Err: fmt.Errorf("--cluster-id: %w", err)}
		}
		return c, nil
	}
	if !f.tokenReview {
		return nil, usageError{Err: errors.New("--remote-cluster needs --token-review: a remote cluster's tokens are checked by its API server")}
	}

	// The local cluster's metrics get its label too, so that each metric
	// has one label set; its pod index is the one node agents use.
	ld := *d
	ld.reg = clusterRegisterer(d.reg, f.clusters.localID)
	local, err := f.authenticator(ctx, &ld)
	if err != nil {
		return nil, err
	}
	d.runners, d.pods = ld.runners, ld.pods

	auths := make(map[string]authn.Authenticator, len(remote))
	for _, r := range remote {
		rd := &caDeps{
			log: d.log.With("cluster", r.id), reg: clusterRegisterer(d.reg, r.id),
			trustDomain: d.trustDomain, kubeconfig: r.kubeconfig, remoteCluster: r.id,
		}
		a, err := f.authenticator(ctx, rd)
		if err != nil {
			return nil, fmt.Errorf("--remote-cluster %s: %w", r.id, err)
		}
		d.runners = append(d.runners, rd.runners...)
		auths[r.id] = a
	}
	c, err := authn.NewClusters(f.clusters.localID, local, auths)
	if err != nil {
		return nil, usageError{Err: err}
	}
	d.log.Info("checking tokens by ClusterID", "local", c.Local(), "remote", c.Remote())
	return c, nil
}

// clusterRegisterer adds the label cluster=id to every metric registered.
func clusterRegisterer(reg prometheus.Registerer, id string) prometheus.Registerer {
	return prometheus.WrapRegistererWith(prometheus.Labels{"cluster": id}, reg)
}
