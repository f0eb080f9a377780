package sds

import (
	"context"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// FetchSecrets answers one unary request with the current state of the
// named secrets. A name the server never serves is reported in
// resource_errors, as on a stream; a known secret that has no content yet
// (no valid SVID) makes the call fail with Unavailable, so that the caller
// retries rather than reading a partial answer.
func (s *Server) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	resp, err := s.fetch(ctx, req)
	s.metrics.fetches.WithLabelValues(status.Code(err).String()).Inc()
	return resp, err
}

func (s *Server) fetch(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	if err := checkRequest(req.GetTypeUrl(), req.GetResourceNames()); err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, n := range req.GetResourceNames() {
		if n == "*" {
			for _, k := range knownNames {
				names[k] = true
			}
			continue
		}
		names[n] = true
	}
	if len(names) == 0 {
		for _, k := range knownNames {
			names[k] = true
		}
	}
	source, err := s.resolve(ctx)
	if err != nil {
		return nil, err
	}
	snap, _ := source.Load()
	// A call builds its own Secrets: they are not worth keeping for
	// streams that may never come.
	var cache resourceCache
	var (
		ready     []*resource
		resources []*anypb.Any
		errs      []*discoveryv3.ResourceError
	)
	for _, name := range sortedKeys(names) {
		r, state := s.lookup(&cache, snap, name)
		switch state {
		case stateReady:
			ready = append(ready, r)
			resources = append(resources, r.any)
		case stateNotReady:
			return nil, status.Errorf(codes.Unavailable, "sds: secret %q is not available yet (no valid certificate or trust bundle); retry", name)
		case stateUnknown:
			s.metrics.unknown.WithLabelValues("fetch").Inc()
			errs = append(errs, resourceError(name))
		}
	}
	return &discoveryv3.DiscoveryResponse{
		VersionInfo:    combinedVersion(ready),
		Resources:      resources,
		TypeUrl:        SecretTypeURL,
		ResourceErrors: errs,
	}, nil
}
