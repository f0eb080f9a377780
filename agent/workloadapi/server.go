// Package workloadapi serves the SPIFFE Workload API's X.509 half
// (SpiffeWorkloadAPI.FetchX509SVID and FetchX509Bundles) from an
// svidstore, so that workloads using a SPIFFE library get their SVID and
// trust bundle, and every rotation, on a stream that stays open.
//
// As the SPIFFE Workload API specification requires, a call without the
// gRPC metadata "workload.spiffe.io: true" is refused with InvalidArgument.
// With WithJWT it also serves the JWT half (jwt.go): FetchJWTSVID,
// FetchJWTBundles and ValidateJWTSVID. Without it, JWT-SVIDs are not
// issued: FetchJWTSVID and ValidateJWTSVID answer Unimplemented, and
// FetchJWTBundles streams an empty key set for the trust domain, so that
// clients watching both kinds of bundle (such as go-spiffe's BundleSource)
// work.
//
// NewResolving serves each caller from its own source (a node agent's
// per-workload SVID); a FetchX509SVID stream whose SVID is withdrawn ends
// with PermissionDenied.
package workloadapi

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/svidserver"
)

// SecurityHeader is the metadata key every Workload API call must carry,
// with the value "true".
const SecurityHeader = "workload.spiffe.io"

// Source is the SVID model's Source: the snapshot served, and a channel
// closed when it changes. The SDS server consumes the same one.
type Source = svidstore.Source

// Resolver is the SVID model's Resolver: it picks the Source that serves a
// call's caller.
type Resolver = svidstore.Resolver

// Server implements workload.SpiffeWorkloadAPIServer.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	resolve Resolver
	log     *slog.Logger
	metrics *metrics
	jwt     JWTIssuer // nil: no JWT-SVIDs (jwt.go)
}

// Option configures a Server. The SDS server takes the same kind (see
// internal/svidserver), with settings of its own.
type Option = svidserver.Option[ownConfig]

// ownConfig holds the settings only this server has.
type ownConfig struct {
	jwt JWTIssuer
}

// WithLogger sets the logger. The default discards logs.
func WithLogger(l *slog.Logger) Option { return svidserver.WithLogger[ownConfig](l) }

// WithRegisterer registers the server's metrics on r. By default they are
// counted but not registered anywhere.
func WithRegisterer(r prometheus.Registerer) Option { return svidserver.WithRegisterer[ownConfig](r) }

// New returns a Server that serves source to every caller.
func New(source Source, opts ...Option) (*Server, error) {
	resolve, err := svidserver.Fixed("workloadapi", source)
	if err != nil {
		return nil, err
	}
	return NewResolving(resolve, opts...)
}

// NewResolving returns a Server that serves each call from the Source
// that resolve returns for it, called once when the call starts.
func NewResolving(resolve Resolver, opts ...Option) (*Server, error) {
	c, err := svidserver.Configure("workloadapi", resolve, opts)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(c.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{resolve: c.Resolve, log: c.Logger, metrics: m, jwt: c.Own.jwt}, nil
}

// begin starts a stream of method: it checks the security header,
// resolves the caller's Source, and counts the stream until done is
// called.
func (s *Server) begin(ctx context.Context, method string) (source Source, done func(), err error) {
	if err := s.checkHeader(ctx, method); err != nil {
		return nil, nil, err
	}
	if source, err = s.resolve(ctx); err != nil {
		return nil, nil, err
	}
	streams := s.metrics.streams.WithLabelValues(method)
	streams.Inc()
	return source, streams.Dec, nil
}

// Register registers the Workload API service on g.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	workload.RegisterSpiffeWorkloadAPIServer(g, s)
}

// FetchX509SVID streams the workload's X.509-SVID with its trust bundle:
// once both are available, and again whenever either changes. Nothing is
// sent while there is no valid SVID; an expired SVID is never sent.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	const method = "FetchX509SVID"
	source, done, err := s.begin(stream.Context(), method)
	if err != nil {
		return err
	}
	defer done()

	return push(s, method, stream, fromSource(source), func(snap svidstore.Snapshot) (string, *workload.X509SVIDResponse, error) {
		switch {
		case snap.Withdrawn != "":
			// The workload is no longer entitled to the SVID: end the
			// stream, so that its client stops using what it was sent.
			return "", nil, status.Error(codes.PermissionDenied, "workloadapi: the SVID of this workload was withdrawn: "+snap.Withdrawn)
		case snap.SVID == nil || snap.Bundle == nil:
			return "", nil, nil
		}
		return snap.SVID.Version + "/" + snap.Bundle.Version + "/" + federatedVersion(snap), &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId:    snap.SVID.ID().String(),
			X509Svid:    snap.SVID.ChainDER,
			X509SvidKey: snap.SVID.KeyDER,
			Bundle:      snap.Bundle.DER,
		}}, FederatedBundles: federatedX509(snap, nil)}, nil
	})
}

// feed returns what a stream serves, and the channels closed when it
// changes (a nil channel never is).
type feed[T any] func() (state T, changed, alsoChanged <-chan struct{})

// fromSource feeds a stream with the snapshots of source.
func fromSource(source Source) feed[svidstore.Snapshot] {
	return func() (svidstore.Snapshot, <-chan struct{}, <-chan struct{}) {
		snap, changed := source.Load()
		return snap, changed, nil
	}
}

// push sends on stream, counted as a push of method, what render makes
// of each state load feeds it, whenever its key differs from the last
// one sent, until the stream ends or render fails. render returns no
// response for a state with nothing to send.
func push[T, R any](s *Server, method string, stream grpc.ServerStreamingServer[R], load feed[T], render func(T) (key string, resp *R, err error)) error {
	var sent string
	for {
		state, changed, alsoChanged := load()
		key, resp, err := render(state)
		if err != nil {
			return err
		}
		if resp != nil && key != sent {
			if err := stream.Send(resp); err != nil {
				return err
			}
			s.metrics.pushes.WithLabelValues(method).Inc()
			sent = key
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		case <-alsoChanged:
		}
	}
}

// federatedVersion names the federated bundles of snap ("" for none).
func federatedVersion(snap svidstore.Snapshot) string {
	if snap.Federated == nil {
		return ""
	}
	return snap.Federated.Version
}

// federatedX509 adds to m (a new map when nil) the X.509 authorities of
// every federated trust domain of snap, in DER, keyed by trust domain ID
// (spiffe://<trust domain>), as federated_bundles and the bundles of
// X509BundlesResponse hold them. A trust domain without X.509 authorities
// is left out.
func federatedX509(snap svidstore.Snapshot, m map[string][]byte) map[string][]byte {
	if snap.Federated == nil {
		return m
	}
	if m == nil {
		m = make(map[string][]byte, len(snap.Federated.Bundles))
	}
	for _, fb := range snap.Federated.Bundles {
		if fb.X509 != nil {
			m[fb.TrustDomain.IDString()] = fb.X509.DER
		}
	}
	return m
}

// FetchX509Bundles streams the trust bundle, keyed by the trust domain of
// the workload's SVID, and those of the federated trust domains: once the
// SVID and the bundle are known, and again whenever a bundle changes.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	const method = "FetchX509Bundles"
	source, done, err := s.begin(stream.Context(), method)
	if err != nil {
		return err
	}
	defer done()

	return push(s, method, stream, fromSource(source), func(snap svidstore.Snapshot) (string, *workload.X509BundlesResponse, error) {
		if snap.SVID == nil || snap.Bundle == nil {
			return "", nil, nil
		}
		td := snap.SVID.ID().TrustDomain().Name()
		return td + "/" + snap.Bundle.Version + "/" + federatedVersion(snap),
			&workload.X509BundlesResponse{Bundles: federatedX509(snap, map[string][]byte{td: snap.Bundle.DER})}, nil
	})
}

// checkHeader enforces the Workload API's security header.
func (s *Server) checkHeader(ctx context.Context, method string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(SecurityHeader)
	if len(vals) == 1 && vals[0] == "true" {
		return nil
	}
	s.metrics.rejected.WithLabelValues(method).Inc()
	s.log.Warn("workloadapi: refused a call without the security header", "method", method)
	return status.Error(codes.InvalidArgument, fmt.Sprintf("workloadapi: security header missing from request: the Workload API requires metadata %q with value \"true\"", SecurityHeader))
}
