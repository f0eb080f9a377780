package sds

import (
	"strconv"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DeltaSecrets serves one incremental (delta) SDS stream.
func (s *Server) DeltaSecrets(stream grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	st := newDeltaStream(s)
	return serveStream(s, apiDelta, stream, &st.streamBase, st.next, st.handle)
}

// deltaStream is the server's view of one incremental stream.
type deltaStream struct {
	s *Server

	streamBase // its mu guards everything below, and Send
	subscription
}

func newDeltaStream(s *Server) *deltaStream {
	return &deltaStream{s: s, subscription: newSubscription()}
}

// handle applies one request and reports whether it may change what the
// client should have: the first request, and any with subscription changes.
// Subscription changes always apply, because they are deltas that cannot
// be replayed; a stale nonce only means the request does not acknowledge or
// reject anything.
func (st *deltaStream) handle(req *discoveryv3.DeltaDiscoveryRequest) (changed bool, err error) {
	if err := checkRequest(req.GetTypeUrl(), req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()); err != nil {
		return false, err
	}
	initial := req.GetInitialResourceVersions()
	if len(initial) > MaxResourceNames {
		return false, status.Errorf(codes.InvalidArgument, "sds: initial_resource_versions lists %d resources, over the limit of %d", len(initial), MaxResourceNames)
	}
	changed = !st.started || len(req.GetResourceNamesSubscribe()) > 0 || len(req.GetResourceNamesUnsubscribe()) > 0
	if !st.started {
		st.started = true
		// Only the ID is kept (see sotwStream.handle).
		st.node = nodeID(req.GetNode())
		// An empty first subscription is the legacy wildcard.
		st.wildcard = len(req.GetResourceNamesSubscribe()) == 0
		for name, version := range initial {
			if len(name) <= MaxResourceNameLen {
				st.versions[name] = version
			}
		}
		st.s.log.Debug("sds: stream opened", "api", apiDelta, "node", st.node, "resources", req.GetResourceNamesSubscribe())
	}

	switch n := req.GetResponseNonce(); {
	case n != "" && n != st.lastNonce:
		st.s.metrics.stale.WithLabelValues(apiDelta).Inc()
		st.s.log.Debug("sds: stale nonce; request does not acknowledge anything", "node", st.node, "nonce", truncate(n), "latest", st.lastNonce)
	case req.GetErrorDetail() != nil:
		st.s.metrics.nacks.WithLabelValues(apiDelta).Inc()
		st.s.log.Warn("sds: client rejected secrets",
			"node", st.node, "nonce", n, "error", truncate(req.GetErrorDetail().GetMessage()))
	case n != "":
		st.s.metrics.acks.WithLabelValues(apiDelta).Inc()
	}

	for _, name := range req.GetResourceNamesSubscribe() {
		if name == "*" {
			st.wildcard = true
			continue
		}
		if !st.subs[name] && len(st.subs) >= MaxSubscriptions {
			return false, status.Errorf(codes.ResourceExhausted,
				"sds: stream already subscribes to %d resource names, the limit; unsubscribe from some before subscribing to %q", len(st.subs), truncate(name))
		}
		st.subs[name] = true
		// A subscribed resource must be sent even if the client seems to
		// have it: it may have dropped it before its unsubscribe reached
		// us. Only initial_resource_versions vouches for what it holds.
		if _, declared := initial[name]; !declared {
			delete(st.versions, name)
		}
		delete(st.errored, name)
	}
	for _, name := range req.GetResourceNamesUnsubscribe() {
		if name == "*" {
			st.wildcard = false
			continue
		}
		delete(st.subs, name)
	}
	st.forgetUncovered()
	return changed, nil
}

// next returns the changes the client needs, or nil when it is up to date:
// resources whose version it does not have, removals of resources it has
// that can no longer be served, and NOT_FOUND errors for new unknown names.
func (st *deltaStream) next(f *feed, snap snapshot) *discoveryv3.DeltaDiscoveryResponse {
	var (
		resources []*discoveryv3.Resource
		removed   []string
		errs      []*discoveryv3.ResourceError
	)
	for _, name := range st.names() {
		r, state := st.s.lookup(&f.cache, snap, name)
		switch state {
		case stateReady:
			if st.versions[name] != r.version {
				resources = append(resources, &discoveryv3.Resource{Name: name, Version: r.version, Resource: r.any})
				st.versions[name] = r.version
			}
		case stateNotReady:
			if _, had := st.versions[name]; had {
				removed = append(removed, name)
				delete(st.versions, name)
			}
		case stateUnknown:
			if !st.errored[name] {
				st.errored[name] = true
				errs = append(errs, resourceError(name))
				st.s.metrics.unknown.WithLabelValues(apiDelta).Inc()
				st.s.log.Info("sds: client asked for an unknown secret", "node", st.node, "name", truncate(name))
			}
		}
	}
	if len(resources) == 0 && len(removed) == 0 && len(errs) == 0 {
		return nil
	}
	nonce := st.nextNonce()
	return &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: strconv.FormatUint(snap.Generation, 10),
		Resources:         resources,
		TypeUrl:           SecretTypeURL,
		RemovedResources:  removed,
		Nonce:             nonce,
		ResourceErrors:    errs,
	}
}
