package server

import (
	"context"
	"fmt"
	"strings"

	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/castellan-mesh/castellan/internal/clip"
	"github.com/castellan-mesh/castellan/internal/promreg"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// ImpersonationAuthorizer decides whether a proven caller may have an SVID
// for another identity, as Istio's node proxies (ztunnel) and Castellan's
// node agent ask with the ImpersonatedIdentity metadata. It returns nil to
// grant, or an error saying why not (a *nodeauth.Error carries a reason).
// nodeauth.Authorizer implements it.
type ImpersonationAuthorizer interface {
	AuthorizeImpersonation(ctx context.Context, caller authn.Caller, target spiffeid.ID) error
}

// maxImpersonatedIDLen bounds the ImpersonatedIdentity value; a SPIFFE ID
// longer than this is refused before it is parsed.
const maxImpersonatedIDLen = 2048

// Labels of castellan_ca_impersonation_total beyond nodeauth's reasons.
const (
	impersonationGranted = "granted"
	impersonationDenied  = "denied"
	// reasonNotEnabled: the CA has no ImpersonationAuthorizer.
	reasonNotEnabled = "not_enabled"
	// reasonOther: the ImpersonationAuthorizer refused without a
	// nodeauth reason.
	reasonOther = "other"
	// reasonRemoteCluster: the caller's token was proven by a remote
	// cluster, whose pods the CA does not watch.
	reasonRemoteCluster = "remote_cluster"
)

func newImpersonationCounter(f *promreg.Factory) *prometheus.CounterVec {
	c := f.CounterVec("castellan_ca_impersonation_total",
		"Requests for another identity's SVID (ImpersonatedIdentity), by result (granted, denied) and reason of a denial.", "result", "reason")
	c.WithLabelValues(impersonationGranted, "")
	c.WithLabelValues(impersonationDenied, reasonNotEnabled)
	c.WithLabelValues(impersonationDenied, reasonRemoteCluster)
	for _, r := range nodeauth.Reasons() {
		c.WithLabelValues(impersonationDenied, string(r))
	}
	return c
}

// impersonate decides a request for target's SVID by caller (whose own
// identity is self), and returns the identity to issue for.
func (s *Server) impersonate(ctx context.Context, caller authn.Caller, self spiffeid.ID, v *structpb.Value) (spiffeid.ID, error) {
	raw := v.GetStringValue()
	if s.cfg.Impersonation == nil {
		return spiffeid.ID{}, s.denyImpersonation(ctx, caller, self, raw, reasonNotEnabled,
			status.Errorf(codes.PermissionDenied, "%s may not impersonate %q (%s): impersonation is not enabled on this CA", self, truncate(raw), reasonNotEnabled))
	}
	// Node agents are authorized against the local cluster's pods only:
	// a remote cluster's pod names mean nothing there.
	if caller.Cluster != "" {
		return spiffeid.ID{}, s.denyImpersonation(ctx, caller, self, raw, reasonRemoteCluster,
			status.Errorf(codes.PermissionDenied, "%s may not impersonate %q (%s): its token is from cluster %q, and node agents may impersonate only in the CA's local cluster", self, truncate(raw), reasonRemoteCluster, caller.Cluster))
	}
	// A malformed target is passed on as the zero ID, so that a caller
	// that is not a node agent is told that first, as before.
	target, parseErr := parseImpersonated(v)
	err := s.cfg.Impersonation.AuthorizeImpersonation(ctx, caller, target)
	if parseErr != nil && nodeauth.ReasonOf(err) != nodeauth.ReasonNotNodeAgent {
		err = parseErr
	}
	if err != nil {
		reason := string(nodeauth.ReasonOf(err))
		if reason == "" {
			reason = reasonOther
		}
		code := codes.PermissionDenied
		if reason == string(nodeauth.ReasonPodsUnavailable) {
			code = codes.Unavailable
		}
		msg := strings.TrimPrefix(err.Error(), "nodeauth: ")
		return spiffeid.ID{}, s.denyImpersonation(ctx, caller, self, raw, reason,
			status.Errorf(code, "%s may not impersonate %q (%s): %s", self, truncate(raw), reason, msg))
	}
	s.metrics.impersonation.WithLabelValues(impersonationGranted, "").Inc()
	s.log.InfoContext(ctx, "impersonation granted", "agent", self.String(), "agent_pod", caller.PodName,
		"node", caller.NodeName, "target", target.String())
	return target, nil
}

// denyImpersonation counts and logs a refused impersonation and returns err.
func (s *Server) denyImpersonation(ctx context.Context, caller authn.Caller, self spiffeid.ID, target, reason string, err error) error {
	s.metrics.rejected.WithLabelValues(string(reasonImpersonation)).Inc()
	s.metrics.impersonation.WithLabelValues(impersonationDenied, reason).Inc()
	if s.failLogs.allow() {
		s.log.InfoContext(ctx, "impersonation refused", "agent", self.String(), "agent_pod", caller.PodName,
			"node", caller.NodeName, "target", truncate(target), "reason", reason, "error", status.Convert(err).Message())
	}
	return err
}

// parseImpersonated reads the ImpersonatedIdentity value: a string holding
// a SPIFFE ID.
func parseImpersonated(v *structpb.Value) (spiffeid.ID, error) {
	invalid := func(format string, args ...any) error {
		return &nodeauth.Error{Reason: nodeauth.ReasonInvalidTarget, Err: fmt.Errorf(format, args...)}
	}
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	switch {
	case !ok:
		return spiffeid.ID{}, invalid("ImpersonatedIdentity is not a string")
	case len(s.StringValue) > maxImpersonatedIDLen:
		return spiffeid.ID{}, invalid("ImpersonatedIdentity is %d bytes, over the limit of %d", len(s.StringValue), maxImpersonatedIDLen)
	}
	id, err := spiffeid.FromString(s.StringValue)
	if err != nil {
		return spiffeid.ID{}, invalid("ImpersonatedIdentity is not a SPIFFE ID: %v", err)
	}
	return id, nil
}

// truncate shortens a caller-supplied value for messages and logs.
func truncate(s string) string { return clip.String(s, 256) }
