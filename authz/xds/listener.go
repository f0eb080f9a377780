package xds

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// The LDS resource: each proxy's inbound listener, which carries the
// workload's mTLS mode per port (PeerAuthentication) as filter chains.
const (
	// InboundListener is the name of the listener served over LDS.
	InboundListener = "castellan.inbound"
	// InboundPort is the port it listens on (Istio's inbound capture port).
	InboundPort = 15006
	// PassthroughCluster is the ORIGINAL_DST cluster the listener forwards
	// accepted connections to; the proxy's bootstrap defines it.
	PassthroughCluster = "castellan.inbound.passthrough"
	// ServerCluster is the cluster, in the proxy's bootstrap, that reaches
	// the policy server; the listener's RBAC filters come from it by ECDS.
	ServerCluster = "castellan-authz"
)

// listenerTypeURL is the LDS resource type.
const listenerTypeURL = "type.googleapis.com/envoy.config.listener.v3.Listener"

var (
	originalDst = mustAny(&origdstv3.OriginalDst{})
	ecdsSource  = &corev3.ConfigSource{
		ResourceApiVersion:  corev3.ApiVersion_V3,
		InitialFetchTimeout: durationpb.New(30e9),
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType: corev3.ApiConfigSource_DELTA_GRPC, TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ServerCluster}}}},
		}},
	}
	denyAllNetwork = mustAny(&netrbacv3.RBAC{StatPrefix: rbac.NetworkStatPrefix, Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}})
)

// buildListener renders the inbound listener of cfg: the filter chains of
// its mTLS mode per port, each running the three network RBAC filters
// from ECDS (until they arrive, the allow slot denies every connection)
// and then a TCP proxy to the original destination.
func buildListener(cfg *authz.WorkloadConfig) (*listenerv3.Listener, error) {
	if cfg.Listener == nil {
		return nil, fmt.Errorf("xds: %s: no listener rendered", cfg.Workload)
	}
	tcp, err := anypb.New(&tcpproxyv3.TcpProxy{
		StatPrefix:       "inbound",
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: PassthroughCluster},
	})
	if err != nil {
		return nil, err
	}
	var filters []*listenerv3.Filter
	for i, name := range NetworkNames {
		def := networkPassThrough
		if i == len(NetworkNames)-1 {
			def = denyAllNetwork
		}
		filters = append(filters, &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_ConfigDiscovery{
			ConfigDiscovery: &corev3.ExtensionConfigSource{
				ConfigSource:  ecdsSource,
				DefaultConfig: def,
				TypeUrls:      []string{def.GetTypeUrl()},
			},
		}})
	}
	filters = append(filters, &listenerv3.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tcp}})
	l := &listenerv3.Listener{
		Name: InboundListener,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: InboundPort},
		}}},
		ListenerFilters: append([]*listenerv3.ListenerFilter{{
			Name: "envoy.filters.listener.original_dst", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: originalDst},
		}}, cfg.Listener.ListenerFilters...),
	}
	for _, c := range cfg.Listener.FilterChains {
		c = proto.Clone(c).(*listenerv3.FilterChain)
		c.Filters = filters
		l.FilterChains = append(l.FilterChains, c)
	}
	if err := l.ValidateAll(); err != nil {
		return nil, fmt.Errorf("xds: %s: inbound listener: %w", cfg.Workload, err)
	}
	return l, nil
}

// listenerKey identifies what the inbound listener is rendered from: the
// mode of the workload and of each port.
func listenerKey(r mtls.Result) string {
	var b strings.Builder
	b.WriteString(string(r.Workload.Mode))
	for _, p := range r.SortedPorts() {
		fmt.Fprintf(&b, ";%d=%s", p, r.Ports[p].Mode)
	}
	return b.String()
}

// listenerResource encodes the LDS resource of cfg.
func listenerResource(cfg *authz.WorkloadConfig) (resource, error) {
	l, err := buildListener(cfg)
	if err != nil {
		return resource{}, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
	if err != nil {
		return resource{}, fmt.Errorf("xds: encoding %s: %w", InboundListener, err)
	}
	return resource{version: versionOf(b), any: &anypb.Any{TypeUrl: listenerTypeURL, Value: b}}, nil
}
