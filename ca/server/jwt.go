package server

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/castellan-mesh/castellan/ca/jwtapi"
	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/castellan-mesh/castellan/internal/promreg"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// JWTIssuer signs JWT-SVIDs and holds the keys that verify them.
// *jwtsvid.KeySet implements it.
type JWTIssuer interface {
	// Mint signs a JWT-SVID for id, audiences and ttl.
	Mint(ctx context.Context, id spiffeid.ID, audiences []string, ttl time.Duration) (*jwtsvid.Token, error)
	// JWTAuthorities returns the published keys by key ID.
	JWTAuthorities() map[string]crypto.PublicKey
}

// jwtServicePrefix is the method prefix of castellan.ca.v1.JWTService,
// whose calls authenticate as the certificate service's do.
const jwtServicePrefix = "/castellan.ca.v1.JWTService/"

// Reasons of castellan_ca_jwt_svids_refused_total.
const (
	jwtRefusedUnauthenticated = "unauthenticated"
	jwtRefusedImpersonation   = "impersonation"
	jwtRefusedAudience        = "invalid_audience"
	jwtRefusedUnavailable     = "unavailable"
)

type jwtMetrics struct {
	minted  prometheus.Counter
	refused *prometheus.CounterVec
}

func newJWTMetrics(f *promreg.Factory, issuer JWTIssuer) *jwtMetrics {
	m := &jwtMetrics{
		minted: f.Counter("castellan_ca_jwt_svids_minted_total", "JWT-SVIDs signed."),
		refused: f.CounterVec("castellan_ca_jwt_svids_refused_total",
			"JWT-SVID requests refused, by reason (unauthenticated, impersonation, invalid_audience, unavailable).", "reason"),
	}
	f.GaugeFunc("castellan_ca_jwt_authorities", "JWT signing keys published (active, prepared, retiring).",
		func() float64 { return float64(len(issuer.JWTAuthorities())) })
	for _, r := range []string{jwtRefusedUnauthenticated, jwtRefusedImpersonation, jwtRefusedAudience, jwtRefusedUnavailable} {
		m.refused.WithLabelValues(r)
	}
	return m
}

// jwtService implements castellan.ca.v1.JWTService.
type jwtService struct {
	jwtapi.UnimplementedJWTServiceServer
	s       *Server
	issuer  JWTIssuer
	ttl     time.Duration
	metrics *jwtMetrics
}

// registerJWT registers the JWT service on g when the CA has a JWTIssuer.
func (s *Server) registerJWT(g grpc.ServiceRegistrar) {
	if s.cfg.JWT == nil {
		return
	}
	ttl := s.cfg.JWTSVIDTTL
	if ttl <= 0 {
		ttl = jwtsvid.DefaultTTL
	}
	ttl = min(max(ttl, jwtsvid.MinTTL), jwtsvid.MaxTTL)
	jwtapi.RegisterJWTServiceServer(g, &jwtService{s: s, issuer: s.cfg.JWT, ttl: ttl, metrics: s.metrics.jwt})
}

// MintJWTSVID authenticates the caller exactly as CreateCertificate does
// (its token, and the node-agent rule for another identity), checks the
// audiences and signs a JWT-SVID.
func (j *jwtService) MintJWTSVID(ctx context.Context, req *jwtapi.MintJWTSVIDRequest) (*jwtapi.MintJWTSVIDResponse, error) {
	s := j.s
	caller, id, err := s.authenticate(ctx)
	if err != nil {
		j.metrics.refused.WithLabelValues(jwtRefusedUnauthenticated).Inc()
		return nil, err
	}
	if want := req.GetSpiffeId(); want != "" && want != id.String() {
		if id, err = s.impersonate(ctx, caller, id, structpb.NewStringValue(want)); err != nil {
			j.metrics.refused.WithLabelValues(jwtRefusedImpersonation).Inc()
			return nil, err
		}
	}
	if err := jwtsvid.CheckAudiences(req.GetAudience()); err != nil {
		j.metrics.refused.WithLabelValues(jwtRefusedAudience).Inc()
		return nil, status.Error(codes.InvalidArgument, strings.TrimPrefix(err.Error(), "jwtsvid: "))
	}
	tok, err := j.issuer.Mint(ctx, id, req.GetAudience(), j.ttl)
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return nil, status.FromContextError(err).Err()
	case err != nil:
		j.metrics.refused.WithLabelValues(jwtRefusedUnavailable).Inc()
		s.log.ErrorContext(ctx, "JWT-SVID signing failed", "spiffe_id", id.String(), "error", err)
		return nil, status.Error(codes.Unavailable, "JWT-SVID signing failed: "+strings.TrimPrefix(err.Error(), "jwtsvid: "))
	}
	j.metrics.minted.Inc()
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.DebugContext(ctx, "issued JWT-SVID", "spiffe_id", id.String(), "kid", tok.KeyID, "audiences", len(req.GetAudience()), "exp", tok.Expiry)
	}
	return &jwtapi.MintJWTSVIDResponse{Token: tok.Token, SpiffeId: id.String(), ExpiresAt: tok.Expiry.Unix()}, nil
}

// FetchJWTAuthorities returns the published JWT keys to an authenticated
// caller.
func (j *jwtService) FetchJWTAuthorities(ctx context.Context, _ *jwtapi.FetchJWTAuthoritiesRequest) (*jwtapi.FetchJWTAuthoritiesResponse, error) {
	if _, _, err := j.s.authenticate(ctx); err != nil {
		return nil, err
	}
	auths := j.issuer.JWTAuthorities()
	resp := &jwtapi.FetchJWTAuthoritiesResponse{TrustDomain: j.s.td.Name()}
	for kid, key := range auths {
		der, err := x509.MarshalPKIXPublicKey(key)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "JWT authority %s cannot be encoded: %v", kid, err)
		}
		resp.Authorities = append(resp.Authorities, &jwtapi.JWTAuthority{KeyId: kid, PublicKey: der})
	}
	sort.Slice(resp.Authorities, func(a, b int) bool { return resp.Authorities[a].KeyId < resp.Authorities[b].KeyId })
	return resp, nil
}
