package xds_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// The extensions the bootstrap names, so that its Any fields resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/castellan-mesh/castellan/authz/xds"
)

// TestEnvoyBootstrap checks the documented sidecar bootstrap with Envoy's
// own constraints, and that its listeners take exactly the served ECDS
// names, in order, from the policy server.
func TestEnvoyBootstrap(t *testing.T) {
	raw, err := os.ReadFile("../../docs/envoy-bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	raw = []byte(strings.NewReplacer("${POD_IP}", "10.0.0.5", "${POD_NAME}", "web-1", "${POD_NAMESPACE}", "foo").Replace(string(raw)))
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("bootstrap does not decode as envoy.config.bootstrap.v3.Bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("bootstrap fails ValidateAll: %v", err)
	}
	if _, err := xds.ParseNodeID(b.GetNode().GetId()); err != nil {
		t.Errorf("node ID: %v", err)
	}
	var httpNames, netNames []string
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetConfigDiscovery() != nil {
					netNames = append(netNames, f.GetName())
					checkSource(t, f.GetName(), f.GetConfigDiscovery().GetConfigSource().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName())
				}
				if f.GetName() != "envoy.filters.network.http_connection_manager" {
					continue
				}
				var hcm hcmv3.HttpConnectionManager
				if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
					t.Fatal(err)
				}
				if err := hcm.ValidateAll(); err != nil {
					t.Fatal(err)
				}
				for _, hf := range hcm.GetHttpFilters() {
					if hf.GetConfigDiscovery() != nil {
						httpNames = append(httpNames, hf.GetName())
						checkSource(t, hf.GetName(), hf.GetConfigDiscovery().GetConfigSource().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName())
					}
				}
			}
		}
	}
	// The network filters are in the listener served over LDS (see
	// TestListenerCarriesPeerAuthentication).
	if !slices.Equal(httpNames, xds.HTTPNames) || len(netNames) != 0 {
		t.Errorf("ECDS names: http %v, network %v; want %v and none", httpNames, netNames, xds.HTTPNames)
	}
	if c := b.GetDynamicResources().GetLdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName(); c != xds.ServerCluster {
		t.Errorf("LDS from cluster %q, want %q", c, xds.ServerCluster)
	}
	found := false
	for _, c := range b.GetStaticResources().GetClusters() {
		found = found || c.GetName() == xds.PassthroughCluster
	}
	if !found {
		t.Errorf("no cluster %s for the inbound listener", xds.PassthroughCluster)
	}
}

func checkSource(t *testing.T, name, cluster string) {
	t.Helper()
	if cluster != "castellan-authz" {
		t.Errorf("%s comes from cluster %q, want castellan-authz", name, cluster)
	}
}
