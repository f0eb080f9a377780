package sds

import (
	"maps"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// StreamSecrets serves one state-of-the-world SDS stream.
func (s *Server) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	st := newSotwStream(s)
	return serveStream(s, apiSotW, stream, &st.streamBase, st.next, st.handle)
}

// sotwStream is the server's view of one state-of-the-world stream.
type sotwStream struct {
	s *Server

	streamBase   // its mu guards everything below, and Send
	subscription // subs: the names in the latest resource_names

	// legacyWildcard is set by an empty first request, and sets wildcard
	// (as "*" does) until the client names resources.
	legacyWildcard bool
}

func newSotwStream(s *Server) *sotwStream {
	return &sotwStream{s: s, subscription: newSubscription()}
}

// handle applies one request and reports whether it changed the
// subscription, so that the client may need a response. A stale request
// changes nothing.
func (st *sotwStream) handle(req *discoveryv3.DiscoveryRequest) (changed bool, err error) {
	if err := checkRequest(req.GetTypeUrl(), req.GetResourceNames()); err != nil {
		return false, err
	}
	if n := req.GetResponseNonce(); n != "" && n != st.lastNonce {
		st.s.metrics.stale.WithLabelValues(apiSotW).Inc()
		st.s.log.Debug("sds: ignored request with stale nonce", "node", st.node, "nonce", truncate(n), "latest", st.lastNonce)
		return false, nil
	}
	if !st.started {
		st.started = true
		// Only the ID is kept: a proxy's node carries kilobytes of
		// metadata, and a node agent holds a thousand streams.
		st.node = nodeID(req.GetNode())
		st.legacyWildcard = len(req.GetResourceNames()) == 0
		st.s.log.Debug("sds: stream opened", "api", apiSotW, "node", st.node, "resources", req.GetResourceNames())
	}
	switch {
	case req.GetErrorDetail() != nil:
		st.s.metrics.nacks.WithLabelValues(apiSotW).Inc()
		st.s.log.Warn("sds: client rejected secrets",
			"node", st.node, "nonce", req.GetResponseNonce(), "kept_version", truncate(req.GetVersionInfo()),
			"error", truncate(req.GetErrorDetail().GetMessage()))
	case req.GetResponseNonce() != "":
		st.s.metrics.acks.WithLabelValues(apiSotW).Inc()
	}
	// The first request always changes the subscription: from nothing to
	// names, to the wildcard, or to the legacy wildcard of an empty list.
	return st.subscribe(req.GetResourceNames()), nil
}

// subscribe replaces the subscription with names and reports whether it
// changed.
func (st *sotwStream) subscribe(names []string) bool {
	subs := make(map[string]bool, len(names))
	wildcard := false
	for _, n := range names {
		if n == "*" {
			wildcard = true
			continue
		}
		subs[n] = true
	}
	if len(names) > 0 {
		st.legacyWildcard = false
	}
	if st.legacyWildcard {
		wildcard = true
	}
	if wildcard == st.wildcard && maps.Equal(subs, st.subs) {
		// An ACK, mostly: nothing to forget.
		return false
	}
	st.subs, st.wildcard = subs, wildcard
	st.forgetUncovered()
	return true
}

// next returns the response the client needs, or nil when it is up to date.
// A response holds every subscribed resource that can be served, as state
// of the world requires; it is sent when one of them has a version this
// stream has not been sent, when a name is new and unknown, or when a
// resource sent before can no longer be served (its SVID expired).
func (st *sotwStream) next(f *feed, snap snapshot) *discoveryv3.DiscoveryResponse {
	need := false
	var (
		ready  []*resource
		errs   []*discoveryv3.ResourceError
		newErr []string
	)
	for _, name := range st.names() {
		r, state := st.s.lookup(&f.cache, snap, name)
		switch state {
		case stateReady:
			ready = append(ready, r)
			if st.versions[name] != r.version {
				need = true
			}
		case stateNotReady:
			if _, had := st.versions[name]; had {
				need = true
			}
		case stateUnknown:
			errs = append(errs, resourceError(name))
			if !st.errored[name] {
				need = true
				newErr = append(newErr, name)
			}
		}
	}
	if !need {
		return nil
	}
	clear(st.versions)
	resources := make([]*anypb.Any, len(ready))
	for i, r := range ready {
		resources[i] = r.any
		st.versions[r.name] = r.version
	}
	for _, n := range newErr {
		st.errored[n] = true
		st.s.metrics.unknown.WithLabelValues(apiSotW).Inc()
		st.s.log.Info("sds: client asked for an unknown secret", "node", st.node, "name", truncate(n))
	}
	nonce := st.nextNonce()
	return &discoveryv3.DiscoveryResponse{
		VersionInfo:    combinedVersion(ready),
		Resources:      resources,
		TypeUrl:        SecretTypeURL,
		Nonce:          nonce,
		ResourceErrors: errs,
	}
}

// resourceError is the NOT_FOUND error for a name the server never serves.
func resourceError(name string) *discoveryv3.ResourceError {
	return &discoveryv3.ResourceError{
		ResourceName: &discoveryv3.ResourceName{Name: name},
		ErrorDetail:  &status.Status{Code: int32(codes.NotFound), Message: notFoundMessage(name)},
	}
}

func isKnown(name string) bool {
	return name == DefaultSecretName || name == RootCASecretName
}
