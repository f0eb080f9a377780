package authn

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// ReasonUnknownCluster: the request names a cluster the CA has no
// authenticator for, so its token cannot be checked anywhere.
const ReasonUnknownCluster Reason = "unknown_cluster"

// MaxClusterIDLen bounds a cluster ID; a longer one is refused before it is
// looked up or logged.
const MaxClusterIDLen = 253

// Clusters routes each token check to the Authenticator of the cluster the
// request names, as Istio's agents name theirs with the ClusterID metadata.
// Each cluster has its own Authenticator, with its own keys, caches and
// limits: a success cached for one cluster's token says nothing about
// another cluster, and one cluster's outage does not hold up the others.
//
// A request that names no cluster, or the local cluster, is checked by the
// local cluster. A request naming any other cluster that is not configured
// is refused with ReasonUnknownCluster: it is never checked against another
// cluster's API server. The Caller of a remote cluster has Cluster set;
// the local cluster's has it empty.
type Clusters struct {
	local  string
	byID   map[string]Authenticator
	remote []string // sorted, for messages
}

// NewClusters returns a Clusters whose local cluster is named local and
// checked by localAuth, with the remote clusters in remote (cluster ID to
// Authenticator). Cluster IDs must be non-empty, at most MaxClusterIDLen
// bytes and distinct from local.
func NewClusters(local string, localAuth Authenticator, remote map[string]Authenticator) (*Clusters, error) {
	if err := checkClusterID(local); err != nil {
		return nil, fmt.Errorf("authn: local cluster: %w", err)
	}
	if localAuth == nil {
		return nil, fmt.Errorf("authn: local cluster %q has no authenticator", local)
	}
	c := &Clusters{local: local, byID: map[string]Authenticator{local: localAuth}}
	for _, id := range slices.Sorted(maps.Keys(remote)) {
		switch err := checkClusterID(id); {
		case err != nil:
			return nil, fmt.Errorf("authn: remote cluster: %w", err)
		case id == local:
			return nil, fmt.Errorf("authn: cluster %q is both the local cluster and a remote one", id)
		case remote[id] == nil:
			return nil, fmt.Errorf("authn: cluster %q has no authenticator", id)
		}
		c.byID[id] = remote[id]
		c.remote = append(c.remote, id)
	}
	return c, nil
}

func checkClusterID(id string) error {
	switch {
	case id == "":
		return errors.New("empty cluster ID")
	case len(id) > MaxClusterIDLen:
		return fmt.Errorf("cluster ID of %d bytes, over the limit of %d", len(id), MaxClusterIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("cluster ID has byte 0x%02x at offset %d, which is not printable ASCII", c, i)
		}
	}
	return nil
}

// Local returns the ID of the local cluster.
func (c *Clusters) Local() string { return c.local }

// Remote returns the IDs of the remote clusters, sorted.
func (c *Clusters) Remote() []string { return slices.Clone(c.remote) }

// Authenticate checks token against the local cluster, as for a request
// that names no cluster.
func (c *Clusters) Authenticate(ctx context.Context, token string) (Caller, error) {
	return c.AuthenticateCluster(ctx, "", token)
}

// AuthenticateCluster checks token against the cluster named cluster ("" is
// the local cluster). An unknown cluster is refused with
// ReasonUnknownCluster, before anything is asked of any cluster.
func (c *Clusters) AuthenticateCluster(ctx context.Context, cluster, token string) (Caller, error) {
	if cluster == "" {
		cluster = c.local
	}
	a, ok := c.byID[cluster]
	if !ok {
		if err := checkClusterID(cluster); err != nil {
			return Caller{}, Errorf(ReasonUnknownCluster, "ClusterID is not valid: %v", err)
		}
		return Caller{}, Errorf(ReasonUnknownCluster, "ClusterID %q is not a cluster this CA checks tokens of (local %q, remote %q)", cluster, c.local, c.remote)
	}
	caller, err := a.Authenticate(ctx, token)
	switch {
	case err != nil && cluster != c.local:
		return Caller{}, wrapCluster(cluster, err)
	case err != nil:
		return Caller{}, err
	case cluster != c.local:
		caller.Cluster = cluster
	}
	return caller, nil
}

// wrapCluster names the remote cluster in err, keeping its reason. The
// message of an *Error is taken from inside it, so that it does not
// repeat the package prefix.
func wrapCluster(cluster string, err error) error {
	e := &Error{Reason: ReasonInvalid, Err: err}
	errors.As(err, &e)
	return &Error{Reason: e.Reason, Err: fmt.Errorf("cluster %q: %w", cluster, e.Err)}
}
