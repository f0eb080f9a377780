package mtls

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// SDS resource names, as Istio's agent serves them.
const (
	// CertificateName is the SDS secret holding the workload certificate.
	CertificateName = "default"
	// ValidationName is the SDS secret holding the trust bundle.
	ValidationName = "ROOTCA"
)

// DefaultSDSCluster is the Envoy cluster of the SDS server when
// RenderOptions.SDSCluster is empty.
const DefaultSDSCluster = "sds-grpc"

// Envoy names used in the rendered configuration.
const (
	TLSInspectorName   = "envoy.filters.listener.tls_inspector"
	TLSTransportSocket = "envoy.transport_sockets.tls"
	TransportTLS       = "tls"
	TransportRawBuffer = "raw_buffer"
	chainNamePrefix    = "castellan-inbound"
)

// RenderOptions configures Render.
type RenderOptions struct {
	// SDSCluster is the Envoy cluster that reaches the SDS server. Empty
	// means DefaultSDSCluster.
	SDSCluster string
}

// Listener is the inbound listener configuration that enforces a Result.
//
// Each mode becomes filter chains, selected by Envoy's filter chain match:
//   - STRICT: one chain matching transport protocol "tls", terminating
//     mutual TLS and requiring a client certificate; a plaintext
//     connection matches no chain and is closed.
//   - PERMISSIVE: the same TLS chain, plus a chain matching transport
//     protocol "raw_buffer" that accepts plaintext. The tls_inspector
//     listener filter tells the two apart.
//   - DISABLE: one chain with no transport socket, accepting anything as
//     plaintext.
//
// Port-level settings become chains that also match destination_port.
// Envoy prefers a chain matching the destination port over the port-less
// ones, so the port's mode wins on that port.
//
// The chains carry only match and transport socket; the network filters
// (the HTTP connection manager or TCP proxy with the RBAC filters) are
// added by whoever assembles the listener.
type Listener struct {
	ListenerFilters []*listenerv3.ListenerFilter
	FilterChains    []*listenerv3.FilterChain
}

// Renderer renders Results with fixed options. It builds the TLS
// transport socket and the listener filter once. It is safe for concurrent
// use.
type Renderer struct {
	tlsSocket      *corev3.TransportSocket
	listenerFilter *listenerv3.ListenerFilter
}

// NewRenderer returns a Renderer for opts.
func NewRenderer(opts RenderOptions) (*Renderer, error) {
	cluster := opts.SDSCluster
	if cluster == "" {
		cluster = DefaultSDSCluster
	}
	tlsSocket, err := transportSocket(cluster)
	if err != nil {
		return nil, err
	}
	a, err := marshalAny(&tlsinspectorv3.TlsInspector{})
	if err != nil {
		return nil, err
	}
	lf := &listenerv3.ListenerFilter{Name: TLSInspectorName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: a}}
	if err := lf.ValidateAll(); err != nil {
		return nil, fmt.Errorf("mtls: generated listener filter is invalid: %w", err)
	}
	return &Renderer{tlsSocket: tlsSocket, listenerFilter: lf}, nil
}

// Render turns a Result into Envoy listener settings with a new Renderer.
func Render(r Result, opts RenderOptions) (*Listener, error) {
	rr, err := NewRenderer(opts)
	if err != nil {
		return nil, err
	}
	return rr.Render(r)
}

// Render turns a Result into Envoy listener settings. Every message passes
// ValidateAll. The messages it returns share the transport socket and
// listener filter; treat them as read-only.
func (rr *Renderer) Render(r Result) (*Listener, error) {
	l := &Listener{}
	inspect := false
	add := func(mode Mode, port uint32) {
		for _, c := range chains(mode, port, rr.tlsSocket) {
			if c.GetFilterChainMatch().GetTransportProtocol() != "" {
				inspect = true
			}
			l.FilterChains = append(l.FilterChains, c)
		}
	}
	for _, port := range r.SortedPorts() {
		add(r.Ports[port].Mode, port)
	}
	add(r.Workload.Mode, 0)
	if inspect {
		l.ListenerFilters = []*listenerv3.ListenerFilter{rr.listenerFilter}
	}
	for _, c := range l.FilterChains {
		if err := c.ValidateAll(); err != nil {
			return nil, fmt.Errorf("mtls: generated filter chain %s is invalid: %w", c.GetName(), err)
		}
	}
	return l, nil
}

func chains(mode Mode, port uint32, tlsSocket *corev3.TransportSocket) []*listenerv3.FilterChain {
	name := func(kind string) string {
		if port == 0 {
			return fmt.Sprintf("%s-%s", chainNamePrefix, kind)
		}
		return fmt.Sprintf("%s-%d-%s", chainNamePrefix, port, kind)
	}
	match := func(transport string) *listenerv3.FilterChainMatch {
		m := &listenerv3.FilterChainMatch{TransportProtocol: transport}
		if port != 0 {
			m.DestinationPort = wrapperspb.UInt32(port)
		}
		return m
	}
	mtlsChain := &listenerv3.FilterChain{Name: name("mtls"), FilterChainMatch: match(TransportTLS), TransportSocket: tlsSocket}
	switch mode {
	case Strict:
		return []*listenerv3.FilterChain{mtlsChain}
	case Permissive:
		return []*listenerv3.FilterChain{mtlsChain, {Name: name("plaintext"), FilterChainMatch: match(TransportRawBuffer)}}
	default: // Disable
		return []*listenerv3.FilterChain{{Name: name("plaintext"), FilterChainMatch: match("")}}
	}
}

// transportSocket is the TLS transport socket of a mutual TLS chain: the
// workload certificate from SDS "default", peers verified against the
// bundle from SDS "ROOTCA", and a client certificate required.
func transportSocket(cluster string) (*corev3.TransportSocket, error) {
	sds := &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:                   corev3.ApiConfigSource_GRPC,
			TransportApiVersion:       corev3.ApiVersion_V3,
			SetNodeOnFirstMessageOnly: true,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster},
			}}},
		}},
	}
	ctx := &tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{
				{Name: CertificateName, SdsConfig: sds},
			},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: ValidationName, SdsConfig: sds},
			},
			AlpnProtocols: []string{"h2", "http/1.1"},
		},
		RequireClientCertificate: wrapperspb.Bool(true),
	}
	if err := ctx.ValidateAll(); err != nil {
		return nil, fmt.Errorf("mtls: generated DownstreamTlsContext is invalid: %w", err)
	}
	a, err := marshalAny(ctx)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: TLSTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

func marshalAny(m proto.Message) (*anypb.Any, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("mtls: marshaling %T: %w", m, err)
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}, nil
}
