package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// certService implements Istio's IstioCertificateService.
type certService struct {
	pb.UnimplementedIstioCertificateServiceServer
	s *Server
}

// impersonationKey is the metadata field Istio's node proxies use to ask
// for another identity's certificate. Only Config.Impersonation grants it.
const impersonationKey = "ImpersonatedIdentity"

// CreateCertificate authenticates the caller, validates the CSR against the
// caller's identity, signs an SVID and returns its chain, leaf first.
func (c *certService) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	s := c.s
	s.metrics.received.Inc()

	caller, id, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	v, impersonated := req.GetMetadata().GetFields()[impersonationKey]
	if impersonated {
		if id, err = s.impersonate(ctx, caller, id, v); err != nil {
			return nil, err
		}
	}
	if req.GetValidityDuration() < 0 {
		s.metrics.rejected.WithLabelValues(string(ca.ReasonInvalidTTL)).Inc()
		return nil, status.Errorf(codes.InvalidArgument, "validity_duration %d is negative", req.GetValidityDuration())
	}
	ttl := time.Duration(min(req.GetValidityDuration(), int64(100*365*24*time.Hour/time.Second))) * time.Second

	start := time.Now()
	svid, err := s.issuer.Issue(ctx, ca.Request{CSR: []byte(req.GetCsr()), ID: id, TTL: ttl, Impersonated: impersonated})
	if err != nil {
		return nil, s.rejection(ctx, id, err)
	}
	s.metrics.signSeconds.Observe(time.Since(start).Seconds())
	s.metrics.issued.Inc()
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.DebugContext(ctx, "issued SVID", "spiffe_id", id.String(), "not_after", svid.NotAfter)
	}
	return &pb.IstioCertificateResponse{CertChain: svid.ChainPEM}, nil
}

// authenticate proves the caller from the bearer token in the request
// metadata and returns it with its SPIFFE ID.
func (s *Server) authenticate(ctx context.Context) (authn.Caller, spiffeid.ID, error) {
	token, err := bearerToken(ctx)
	var cluster string
	if err == nil {
		cluster, err = clusterID(ctx)
	}
	if err == nil {
		var caller authn.Caller
		if caller, err = s.authenticateToken(ctx, cluster, token); err == nil {
			id, idErr := spiffeid.FromSegments(s.td, "ns", caller.Namespace, "sa", caller.ServiceAccount)
			if idErr == nil {
				return caller, id, nil
			}
			err = authn.Errorf(authn.ReasonNotServiceAccount, "service account %s/%s does not make a valid SPIFFE ID: %v", caller.Namespace, caller.ServiceAccount, idErr)
		}
	}
	reason := authn.ReasonOf(err)
	s.metrics.authFailures.WithLabelValues(string(reason)).Inc()
	if s.failLogs.allow() {
		s.log.InfoContext(ctx, "authentication failed", "reason", string(reason), "error", err.Error(), "peer", peerAddr(ctx))
	}
	code := codes.Unauthenticated
	if reason == authn.ReasonUnavailable {
		code = codes.Unavailable
	}
	return authn.Caller{}, spiffeid.ID{}, status.Error(code, "authentication failed: "+strings.TrimPrefix(err.Error(), "authn: "))
}

// clusterIDKey is the metadata field in which Istio's agents name the
// cluster they run in (gRPC lowercases the "ClusterID" they send).
const clusterIDKey = "clusterid"

// ClusterAuthenticator is an Authenticator that checks the tokens of
// several clusters, choosing by the ClusterID metadata of the request ("":
// none was sent). *authn.Clusters implements it.
type ClusterAuthenticator interface {
	authn.Authenticator
	AuthenticateCluster(ctx context.Context, cluster, token string) (authn.Caller, error)
}

// authenticateToken checks token with the configured Authenticator, for
// the cluster the request names when it is a ClusterAuthenticator. Any
// other Authenticator checks every token the same way, whatever cluster
// is named.
func (s *Server) authenticateToken(ctx context.Context, cluster, token string) (authn.Caller, error) {
	if c, ok := s.cfg.Authenticator.(ClusterAuthenticator); ok {
		return c.AuthenticateCluster(ctx, cluster, token)
	}
	return s.cfg.Authenticator.Authenticate(ctx, token)
}

// clusterID reads the ClusterID metadata: "" when absent, an error when
// sent more than once (which cluster was meant is then unclear).
func clusterID(ctx context.Context) (string, error) {
	vals := metadata.ValueFromIncomingContext(ctx, clusterIDKey)
	switch {
	case len(vals) == 0:
		return "", nil
	case len(vals) > 1:
		return "", authn.Errorf(authn.ReasonUnknownCluster, "%d ClusterID values; send at most one", len(vals))
	}
	return vals[0], nil
}

// bearerToken extracts the token from "authorization: Bearer <token>".
func bearerToken(ctx context.Context) (string, error) {
	// Only this key is read: copying all metadata costs on every call.
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	switch {
	case len(vals) == 0:
		return "", authn.Errorf(authn.ReasonNoToken, "no authorization metadata; send \"authorization: Bearer <service account token>\"")
	case len(vals) > 1:
		return "", authn.Errorf(authn.ReasonMalformed, "%d authorization values; send exactly one", len(vals))
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		return "", authn.Errorf(authn.ReasonMalformed, "authorization metadata is not of the form \"Bearer <token>\"")
	}
	return strings.TrimSpace(token), nil
}

// rejection counts, logs and converts an Issuer error to a gRPC status.
func (s *Server) rejection(ctx context.Context, id spiffeid.ID, err error) error {
	var re *ca.RejectError
	if !errors.As(err, &re) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return status.FromContextError(err).Err()
		}
		s.log.ErrorContext(ctx, "signing failed", "spiffe_id", id.String(), "error", err)
		return status.Error(codes.Internal, "signing failed")
	}
	reason := re.Reason
	s.metrics.rejected.WithLabelValues(string(reason)).Inc()
	s.log.InfoContext(ctx, "CSR rejected", "spiffe_id", id.String(), "reason", string(reason), "error", err.Error())
	code := codes.InvalidArgument
	switch reason {
	case ca.ReasonIdentityMismatch, ca.ReasonDNSNotAllowed:
		code = codes.PermissionDenied
	case ca.ReasonCAUnavailable:
		code = codes.Unavailable
	}
	return status.Error(code, re.Err.Error())
}
