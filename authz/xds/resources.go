package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// The ECDS resource names, in the order a listener lists them.
const (
	HTTPAudit    = "castellan.authz.http.audit"
	HTTPDeny     = "castellan.authz.http.deny"
	HTTPAllow    = "castellan.authz.http.allow"
	NetworkAudit = "castellan.authz.network.audit"
	NetworkDeny  = "castellan.authz.network.deny"
	NetworkAllow = "castellan.authz.network.allow"
)

// HTTPNames and NetworkNames list the resource names in filter order.
var (
	HTTPNames    = []string{HTTPAudit, HTTPDeny, HTTPAllow}
	NetworkNames = []string{NetworkAudit, NetworkDeny, NetworkAllow}
)

// ResourceNames are all the resource names a proxy is served.
var ResourceNames = append(append([]string(nil), HTTPNames...), NetworkNames...)

// slotOf maps an RBAC action to its position in HTTPNames and NetworkNames.
func slotOf(a rbacv3.RBAC_Action) (int, bool) {
	switch a {
	case rbacv3.RBAC_LOG:
		return 0, true
	case rbacv3.RBAC_DENY:
		return 1, true
	case rbacv3.RBAC_ALLOW:
		return 2, true
	}
	return 0, false
}

// resource is one encoded resource and its version.
type resource struct {
	version string
	any     *anypb.Any
}

// versionOf is the version of an encoded resource: a hash of its bytes.
func versionOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// resourceSet is the six resources of one workload configuration.
type resourceSet map[string]resource

// passThrough are the filters of an empty slot: RBAC without rules
// enforces nothing.
var (
	httpPassThrough    = mustAny(&httprbacv3.RBAC{})
	networkPassThrough = mustAny(&netrbacv3.RBAC{StatPrefix: rbac.NetworkStatPrefix})
)

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// passThroughResources are the six resources of a workload no policy
// applies to, encoded once.
var passThroughResources resourceSet

func init() {
	set, err := buildResources(nil)
	if err != nil {
		panic(err)
	}
	passThroughResources = set
}

// buildResources encodes cfg's filters as the six resources.
func buildResources(cfg *authz.WorkloadConfig) (resourceSet, error) {
	http := []*anypb.Any{httpPassThrough, httpPassThrough, httpPassThrough}
	network := []*anypb.Any{networkPassThrough, networkPassThrough, networkPassThrough}
	if cfg != nil {
		if len(cfg.FilterActions) != len(cfg.HTTPFilters) || len(cfg.FilterActions) != len(cfg.NetworkFilters) {
			return nil, fmt.Errorf("xds: %s: filters and actions do not line up", cfg.Workload)
		}
		for i, a := range cfg.FilterActions {
			slot, ok := slotOf(a)
			if !ok {
				return nil, fmt.Errorf("xds: %s: unexpected RBAC action %v", cfg.Workload, a)
			}
			http[slot] = cfg.HTTPFilters[i].GetTypedConfig()
			network[slot] = cfg.NetworkFilters[i].GetTypedConfig()
		}
	}
	out := make(resourceSet, len(ResourceNames)+1)
	add := func(name string, cfg *anypb.Any) error {
		if r, ok := passThroughResources[name]; ok && (cfg == httpPassThrough || cfg == networkPassThrough) {
			out[name] = r // encoded once
			return nil
		}
		msg := &corev3.TypedExtensionConfig{Name: name, TypedConfig: cfg}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
		if err != nil {
			return fmt.Errorf("xds: encoding %s: %w", name, err)
		}
		out[name] = resource{version: versionOf(b), any: &anypb.Any{TypeUrl: typeURL, Value: b}}
		return nil
	}
	for i := range HTTPNames {
		if err := add(HTTPNames[i], http[i]); err != nil {
			return nil, err
		}
		if err := add(NetworkNames[i], network[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// typeURL is the ECDS resource type.
const typeURL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
