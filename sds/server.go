// Package sds serves Envoy's Secret Discovery Service (xDS v3,
// envoy.service.secret.v3.SecretDiscoveryService) from an svidstore.
//
// Two resources are served, named as Istio names them: "default", a
// tls_certificate holding the workload's chain and private key, and
// "ROOTCA", a validation_context holding the trusted CA bundle (the local
// trust domain's roots only). With federation, each federated trust domain
// is a validation_context of its own named by its trust domain ID
// ("spiffe://b.example", as SPIRE's agent names them), and "ALL" holds the
// local roots and every federated domain's; these are served by name, not
// to a wildcard subscription. The server
// answers StreamSecrets (state of the world), DeltaSecrets (incremental) and
// FetchSecrets (unary), and follows the xDS protocol:
//
//   - every response carries a version and a nonce unique to its stream;
//   - an ACK echoes them, and a NACK (error_detail set) is logged and not
//     answered with a resend until the resource changes;
//   - a request whose response_nonce is not the latest one sent on its
//     stream is stale and ignored;
//   - resource_names (or the delta subscribe and unsubscribe lists) set the
//     subscription; an empty list after a subscription unsubscribes;
//   - a change is pushed only to streams subscribed to the changed
//     resource, and a stream is never sent a version it already has;
//   - a name the server does not serve gets a resource error with code
//     NOT_FOUND saying so, and the stream stays open.
//
// Every Secret passes go-control-plane's ValidateAll before it is sent.
//
// NewResolving serves each caller from its own Source (a node agent serves
// each workload its own certificate); streams of one Source share one
// watcher and one cache of built Secrets. A delta stream may hold at most
// MaxSubscriptions names.
package sds

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/clip"
	"github.com/castellan-mesh/castellan/internal/svidserver"
)

// Limits on what one request may ask for. A request over them ends its
// stream with InvalidArgument.
const (
	// MaxResourceNames is the most names one request may list.
	MaxResourceNames = 64
	// MaxResourceNameLen is the longest resource name accepted, in bytes.
	MaxResourceNameLen = 512
	// MaxSubscriptions is the most names one delta stream may be
	// subscribed to at once, over all its requests. A subscription past it
	// ends the stream with ResourceExhausted. (A state-of-the-world
	// request replaces the subscription, so MaxResourceNames bounds it.)
	MaxSubscriptions = 64
)

// Source is the SVID model's Source: the snapshot served, and a channel
// closed when it changes. The Workload API server consumes the same one.
type Source = svidstore.Source

// Resolver is the SVID model's Resolver: it picks the Source that serves a
// call's caller.
type Resolver = svidstore.Resolver

// Server implements secretv3.SecretDiscoveryServiceServer.
type Server struct {
	resolve Resolver
	log     *slog.Logger
	metrics *metrics
	hub     hub
}

var _ secretv3.SecretDiscoveryServiceServer = (*Server)(nil)

// Option configures a Server. The Workload API server takes the same
// kind (see internal/svidserver).
type Option = svidserver.Option[struct{}]

// WithLogger sets the logger. The default discards logs.
func WithLogger(l *slog.Logger) Option { return svidserver.WithLogger[struct{}](l) }

// WithRegisterer registers the server's metrics on r. By default they are
// counted but not registered anywhere.
func WithRegisterer(r prometheus.Registerer) Option { return svidserver.WithRegisterer[struct{}](r) }

// New returns a Server that serves source to every caller.
func New(source Source, opts ...Option) (*Server, error) {
	resolve, err := svidserver.Fixed("sds", source)
	if err != nil {
		return nil, err
	}
	return NewResolving(resolve, opts...)
}

// NewResolving returns a Server that serves each call from the Source
// that resolve returns for it. resolve is called once per stream, when it
// opens, and once per FetchSecrets call.
func NewResolving(resolve Resolver, opts ...Option) (*Server, error) {
	c, err := svidserver.Configure("sds", resolve, opts)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(c.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{resolve: c.Resolve, log: c.Logger, metrics: m}, nil
}

// Register registers the SDS service on g.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	secretv3.RegisterSecretDiscoveryServiceServer(g, s)
}

// checkRequest refuses a request for another type or with hostile lists.
func checkRequest(typeURL string, lists ...[]string) error {
	if typeURL != "" && typeURL != SecretTypeURL {
		return status.Errorf(codes.InvalidArgument, "sds: type_url %q is not served here; this server serves only %s", truncate(typeURL), SecretTypeURL)
	}
	for _, names := range lists {
		if len(names) > MaxResourceNames {
			return status.Errorf(codes.InvalidArgument, "sds: request lists %d resource names, over the limit of %d", len(names), MaxResourceNames)
		}
		for _, n := range names {
			if len(n) > MaxResourceNameLen {
				return status.Errorf(codes.InvalidArgument, "sds: resource name of %d bytes is over the limit of %d", len(n), MaxResourceNameLen)
			}
		}
	}
	return nil
}

// notFoundMessage explains the resource error sent for a name this server
// never serves.
func notFoundMessage(name string) string {
	return fmt.Sprintf("sds: no secret named %q; this server serves %q (certificate and key) and %q (trusted CA bundle)",
		truncate(name), DefaultSecretName, RootCASecretName)
}

// endOfStream maps the error that ended Recv to the handler's result: a
// client that closed its side cleanly ends the stream without error.
func endOfStream(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// nodeID names a client in logs.
func nodeID(n interface{ GetId() string }) string {
	if id := n.GetId(); id != "" {
		return truncate(id)
	}
	return "(no node id)"
}

// truncate shortens client-supplied text before it reaches a log or an
// error message.
func truncate(s string) string { return clip.String(s, 256) }
