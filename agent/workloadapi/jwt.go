package workloadapi

import (
	"context"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/internal/svidserver"
)

// MaxJWTSVIDBytes bounds the token ValidateJWTSVID reads.
const MaxJWTSVIDBytes = 16 << 10

// JWTIssuer is the JWT half of what the server serves: JWT-SVIDs for the
// caller, and the trust domain's JWT bundle. The node agent implements
// it.
type JWTIssuer interface {
	// FetchJWTSVID returns a JWT-SVID for the caller of ctx and
	// audiences; spiffeID, if not empty, is the identity the caller asked
	// for. The error it returns ends the call as it is, so it should be a
	// gRPC status that says why.
	FetchJWTSVID(ctx context.Context, audiences []string, spiffeID string) (JWTSVID, error)
	// LoadJWTBundle returns the current JWT bundle (nil until one is
	// known) and a channel closed when it changes.
	LoadJWTBundle() (*JWTBundle, <-chan struct{})
}

// JWTSVID is a token and the SPIFFE ID it names.
type JWTSVID struct {
	SPIFFEID string
	Token    string
}

// JWTBundle is a trust domain's JWT authorities.
type JWTBundle struct {
	// Bundle holds the keys.
	Bundle *jwtbundle.Bundle
	// Doc is the bundle as the Workload API sends it (a JWKS document).
	Doc []byte
	// Version changes whenever the keys do.
	Version string
}

// WithJWT serves JWT-SVIDs and the JWT bundle from j. Without it,
// FetchJWTSVID and ValidateJWTSVID answer Unimplemented and
// FetchJWTBundles streams an empty key set.
func WithJWT(j JWTIssuer) Option {
	return svidserver.WithOwn(func(c *ownConfig) { c.jwt = j })
}

// FetchJWTSVID returns a JWT-SVID for the caller and the audiences of the
// request (at least one), as the SPIFFE Workload API specifies.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	const method = "FetchJWTSVID"
	if err := s.checkHeader(ctx, method); err != nil {
		return nil, err
	}
	if s.jwt == nil {
		return nil, status.Error(codes.Unimplemented, "workloadapi: this agent issues no JWT-SVIDs")
	}
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "workloadapi: audience is required")
	}
	svid, err := s.jwt.FetchJWTSVID(ctx, req.GetAudience(), req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	s.metrics.pushes.WithLabelValues(method).Inc()
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: svid.SPIFFEID, Svid: svid.Token}}}, nil
}

// FetchJWTBundles streams the JWT bundles: the trust domain's, keyed by
// its name, and those of the federated trust domains that have JWT
// authorities, keyed by trust domain ID (spiffe://<trust domain>) as
// federated X.509 bundles are. It sends once a bundle is known, and again
// whenever the local keys or the federated bundles change. Without a
// JWTIssuer it streams an empty key set for the trust domain of the
// workload's SVID, so that clients watching both kinds of bundle
// (go-spiffe's BundleSource) work.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	const method = "FetchJWTBundles"
	source, done, err := s.begin(stream.Context(), method)
	if err != nil {
		return err
	}
	defer done()
	if s.jwt == nil {
		return s.streamEmptyJWTBundle(stream, source)
	}
	type state struct {
		local *JWTBundle
		snap  svidstore.Snapshot
	}
	load := func() (state, <-chan struct{}, <-chan struct{}) {
		b, jwtChanged := s.jwt.LoadJWTBundle()
		snap, srcChanged := source.Load()
		return state{b, snap}, jwtChanged, srcChanged
	}
	return push(s, method, stream, load, func(st state) (string, *workload.JWTBundlesResponse, error) {
		key := federatedVersion(st.snap)
		if st.local != nil {
			key = st.local.Version + "/" + key
		}
		bundles, err := jwtBundleDocs(st.local, st.snap.Federated)
		switch {
		case err != nil:
			return "", nil, status.Error(codes.Internal, err.Error())
		case len(bundles) == 0:
			return key, nil, nil
		}
		return key, &workload.JWTBundlesResponse{Bundles: bundles}, nil
	})
}

// jwtBundleDocs returns the JWKS documents of local (nil: none) and of
// every federated trust domain with JWT authorities, keyed as
// FetchJWTBundles sends them.
func jwtBundleDocs(local *JWTBundle, fed *svidstore.Federated) (map[string][]byte, error) {
	m := make(map[string][]byte, 1)
	if local != nil {
		m[local.Bundle.TrustDomain().Name()] = local.Doc
	}
	for _, jb := range federatedJWT(fed) {
		doc, err := jb.Marshal()
		if err != nil {
			return nil, fmt.Errorf("workloadapi: could not encode the JWT bundle of federated trust domain %s: %w", jb.TrustDomain().Name(), err)
		}
		m[jb.TrustDomain().IDString()] = doc
	}
	return m, nil
}

// federatedJWT returns the JWT bundles of the federated trust domains of
// fed that have JWT authorities.
func federatedJWT(fed *svidstore.Federated) []*jwtbundle.Bundle {
	if fed == nil {
		return nil
	}
	out := make([]*jwtbundle.Bundle, 0, len(fed.Bundles))
	for _, fb := range fed.Bundles {
		if fb.SPIFFE == nil {
			continue
		}
		if keys := fb.SPIFFE.JWTAuthorities(); len(keys) > 0 {
			out = append(out, jwtbundle.FromJWTAuthorities(fb.TrustDomain, keys))
		}
	}
	return out
}

// streamEmptyJWTBundle sends an empty JWT key set for the trust domain of
// the workload's SVID, again only if the trust domain changes.
func (s *Server) streamEmptyJWTBundle(stream grpc.ServerStreamingServer[workload.JWTBundlesResponse], source Source) error {
	return push(s, "FetchJWTBundles", stream, fromSource(source), func(snap svidstore.Snapshot) (string, *workload.JWTBundlesResponse, error) {
		if snap.SVID == nil {
			return "", nil, nil
		}
		td := snap.SVID.ID().TrustDomain().Name()
		return td, &workload.JWTBundlesResponse{Bundles: map[string][]byte{td: []byte(`{"keys":[]}`)}}, nil
	})
}

// ValidateJWTSVID checks a JWT-SVID's signature against the JWT bundle of
// its trust domain (the local one, or a federated one), its expiry and
// that it names the audience, and returns its SPIFFE ID and claims. A
// token of a trust domain whose JWT bundle the agent does not hold fails.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	const method = "ValidateJWTSVID"
	if err := s.checkHeader(ctx, method); err != nil {
		return nil, err
	}
	if s.jwt == nil {
		return nil, status.Error(codes.Unimplemented, "workloadapi: this agent holds no JWT bundle")
	}
	switch {
	case req.GetAudience() == "":
		return nil, status.Error(codes.InvalidArgument, "workloadapi: audience is required")
	case req.GetSvid() == "":
		return nil, status.Error(codes.InvalidArgument, "workloadapi: svid is required")
	case len(req.GetSvid()) > MaxJWTSVIDBytes:
		return nil, status.Errorf(codes.InvalidArgument, "workloadapi: svid is %d bytes, more than %d", len(req.GetSvid()), MaxJWTSVIDBytes)
	}
	source, err := s.resolve(ctx)
	if err != nil {
		return nil, err
	}
	b, _ := s.jwt.LoadJWTBundle()
	snap, _ := source.Load()
	fed := federatedJWT(snap.Federated)
	if b == nil && len(fed) == 0 {
		return nil, status.Error(codes.Unavailable, "workloadapi: no JWT bundle received from the CA yet")
	}
	set := jwtbundle.NewSet(fed...)
	if b != nil {
		// The local trust domain's own keys win over a federated bundle
		// that claims the same trust domain.
		set.Add(b.Bundle)
	}
	svid, err := spiffejwt.ParseAndValidate(req.GetSvid(), set, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "workloadapi: "+strings.TrimPrefix(err.Error(), "jwtsvid: "))
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "workloadapi: claims of the JWT-SVID cannot be returned: %v", err)
	}
	s.metrics.pushes.WithLabelValues(method).Inc()
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// NewJWTBundle returns the JWTBundle of b, its Doc marshalled.
func NewJWTBundle(b *jwtbundle.Bundle, version string) (*JWTBundle, error) {
	doc, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("workloadapi: could not encode the JWT bundle of %s: %w", b.TrustDomain(), err)
	}
	return &JWTBundle{Bundle: b, Doc: doc, Version: version}, nil
}
