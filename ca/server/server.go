// Package server runs the CA: Istio's certificate service over gRPC+TLS,
// and an HTTP endpoint for metrics, health and the trust bundle.
package server

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/authn"
	"github.com/castellan-mesh/castellan/ca/rotation"
	"github.com/castellan-mesh/castellan/internal/backoff"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	pb "istio.io/api/security/v1alpha1"
)

// MaxRequestBytes is the largest gRPC request the CA reads.
const MaxRequestBytes = 64 << 10

// Config configures a Server. Zero values select the noted defaults.
type Config struct {
	// Source supplies the signing material: a *material.Store, a
	// *kubestore.Store, an *upstream.Source. Required. A Source that is a
	// Readier tells /readyz whether it may sign.
	Source ca.Source
	// Rotation, if set, rotates the root of Source's material (the
	// rotation.Engine its package returns). The server exports its
	// status, read at each scrape (castellan_ca_rotation_*,
	// castellan_ca_bundle_*), and, when it is a Stepper, takes its
	// automatic steps (see RootRotateBefore).
	Rotation rotation.Rotator
	// Runners are background jobs (renewal, leader election, trust
	// distribution) run beside the listeners until Serve returns.
	Runners []func(context.Context) error
	// GRPCAddr is the listen address of the certificate service.
	// Default: 127.0.0.1:15012.
	GRPCAddr string
	// HTTPAddr is the listen address for /metrics, /healthz, /readyz,
	// /bundle and /bundle.spiffe. Default: 127.0.0.1:15014. "-" disables it.
	HTTPAddr string
	// TrustDomain of the SVIDs issued. Default: cluster.local.
	TrustDomain spiffeid.TrustDomain
	// ServerDNSNames are the DNS names in the CA's own serving certificate.
	// Default: castellan, castellan.castellan-system.svc, localhost.
	ServerDNSNames []string
	// Authenticator proves callers. Required.
	Authenticator authn.Authenticator
	// DefaultTTL and MaxTTL bound SVID lifetimes (see ca.Config).
	DefaultTTL, MaxTTL time.Duration
	// Logger receives the server's logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the server's metrics; Gatherer serves them on
	// /metrics. Default: a new registry for both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// RootRotateBefore, if positive, has the server take the automatic
	// steps of Rotation: a new root is prepared when the active one has
	// less than this left, activated after the policy's propagation delay,
	// and the old one retired once no SVID it signed can be valid.
	// Material rotated by hand, and a replica that does not lead, take no
	// step.
	RootRotateBefore time.Duration
	// RotationInterval is how often a due rotation step is looked for.
	// Default: 1m.
	RotationInterval time.Duration
	// PprofAddr, if set, serves net/http/pprof under /debug/pprof/ on
	// this address, which must be a loopback address: the profiles are
	// unauthenticated. Empty: pprof is not served. It is never served on
	// HTTPAddr.
	PprofAddr string
	// Limits bound headers, streams, connections and failed
	// authentications per peer (see Limits). Zero values are defaults.
	Limits Limits
	// Impersonation decides which callers may have an SVID for another
	// identity (Istio's ImpersonatedIdentity metadata, sent by node
	// agents), typically a *nodeauth.Authorizer. Nil: impersonation is
	// always refused.
	Impersonation ImpersonationAuthorizer
	// JWT, if set, signs JWT-SVIDs: the CA then serves
	// castellan.ca.v1.JWTService (see jwt.go) and publishes its keys in
	// /bundle.spiffe. Typically a *jwtsvid.KeySet.
	JWT JWTIssuer
	// JWTSVIDTTL is the lifetime of a JWT-SVID, within jwtsvid.MinTTL and
	// jwtsvid.MaxTTL. Default: jwtsvid.DefaultTTL (5m).
	JWTSVIDTTL time.Duration
	// DNSProfile lists the DNS SANs each service account may have in its
	// certificate (istiod's serving certificate). Nil: DNS SANs are
	// refused to every caller.
	DNSProfile *ca.DNSProfile
	// IstioMetrics also exports istiod's CA metrics (citadel_server_*),
	// derived from Castellan's at each scrape (see istiometrics.go), so
	// that Istio's dashboards and alerts work unchanged.
	IstioMetrics bool
}

// Server is a running CA.
type Server struct {
	cfg     Config
	log     *slog.Logger
	td      spiffeid.TrustDomain
	src     ca.Source
	issuer  *ca.Issuer
	metrics *metrics

	grpcLis net.Listener
	httpLis net.Listener
	grpc    *grpc.Server
	http    *http.Server
	health  *health.Server

	servingMu   sync.Mutex
	serving     *tls.Certificate
	servingAuth *ca.Authority

	// limits.go
	limits   Limits
	peers    *peerLimiter
	failLogs *logLimiter
	pprofLis net.Listener
	pprof    *http.Server
}

// New binds both listeners and returns a Server ready to Serve.
func New(ctx context.Context, cfg Config) (*Server, error) {
	switch {
	case cfg.Source == nil:
		return nil, errors.New("server: no CA material (Source) configured")
	case cfg.Authenticator == nil:
		return nil, errors.New("server: no authenticator configured")
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	}
	cfg.GRPCAddr = cmp.Or(cfg.GRPCAddr, "127.0.0.1:15012")
	cfg.HTTPAddr = cmp.Or(cfg.HTTPAddr, "127.0.0.1:15014")
	if len(cfg.ServerDNSNames) == 0 {
		cfg.ServerDNSNames = []string{"castellan", "castellan.castellan-system.svc", "localhost"}
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Registerer == nil {
		reg := prometheus.NewRegistry()
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	if cfg.RotationInterval <= 0 {
		cfg.RotationInterval = time.Minute
	}
	s := &Server{cfg: cfg, log: cfg.Logger, td: cfg.TrustDomain, src: cfg.Source}
	iss, err := ca.NewIssuer(s.src, ca.Config{DefaultTTL: cfg.DefaultTTL, MaxTTL: cfg.MaxTTL, DNS: cfg.DNSProfile})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.issuer = iss
	if s.metrics, err = newMetrics(cfg.Registerer, s.src, cfg.JWT); err != nil {
		return nil, err
	}
	if cfg.IstioMetrics {
		if err := cfg.Registerer.Register(newIstioCollector(s.metrics, s.src)); err != nil {
			return nil, fmt.Errorf("server: Istio-compatible metrics: %w", err)
		}
	}
	if cfg.Rotation != nil {
		if err := s.metrics.registerRotation(cfg.Registerer, cfg.Rotation.Status, s.src); err != nil {
			return nil, err
		}
	}
	// Issue the first serving certificate now, so that a broken CA fails
	// at start-up rather than on the first handshake.
	if _, err := s.servingCertificate(nil); err != nil {
		return nil, err
	}
	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("server: gRPC listener: %w", err)
	}
	if cfg.HTTPAddr != "-" {
		if s.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			s.grpcLis.Close()
			return nil, fmt.Errorf("server: HTTP listener: %w", err)
		}
	}
	s.setupLimits()
	if err := s.listenPprof(); err != nil {
		s.grpcLis.Close()
		if s.httpLis != nil {
			s.httpLis.Close()
		}
		return nil, err
	}
	s.grpc = s.newGRPCServer()
	s.http = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

func (s *Server) newGRPCServer() *grpc.Server {
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.servingCertificate,
	}
	opts := []grpc.ServerOption{
		grpc.Creds(batchingCreds{credentials.NewTLS(tlsCfg)}),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ConnectionTimeout(10 * time.Second),
		// A fixed pool of workers serves the streams: their stacks have
		// already grown through the signing path, so requests do not pay
		// for a new goroutine's stack growth. The pool covers two
		// connections' worth of concurrent calls; past it, a stream gets
		// its own goroutine.
		grpc.NumStreamWorkers(uint32(max(4*runtime.GOMAXPROCS(0), 2*int(s.limits.MaxConcurrentStreams)))),
	}
	g := grpc.NewServer(append(opts, s.grpcLimitOptions()...)...)
	reg := &oversizeRegistrar{g: g, m: s.metrics}
	pb.RegisterIstioCertificateServiceServer(reg, &certService{s: s})
	s.registerJWT(reg)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(reg, s.health)
	return g
}

// GRPCAddr returns the bound address of the certificate service.
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr returns the bound HTTP address, or "" when disabled.
func (s *Server) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// Source returns the CA's signing material.
func (s *Server) Source() ca.Source { return s.src }

// Serve serves until ctx ends, then stops gracefully (in-flight requests
// finish, for at most 5 seconds).
func (s *Server) Serve(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.grpc.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("server: gRPC: %w", err)
		}
		return nil
	})
	serveHTTP := func(name string, srv *http.Server, lis net.Listener) {
		g.Go(func() error {
			if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("server: %s: %w", name, err)
			}
			return nil
		})
	}
	if s.httpLis != nil {
		serveHTTP("HTTP", s.http, s.httpLis)
	}
	if s.pprofLis != nil {
		serveHTTP("pprof", s.pprof, s.pprofLis)
	}
	if st, ok := s.cfg.Rotation.(Stepper); ok && s.cfg.RootRotateBefore > 0 {
		step := func(ctx context.Context) (string, error) { return st.Step(ctx, s.cfg.RootRotateBefore) }
		g.Go(func() error {
			return rotation.Run(ctx, s.cfg.RotationInterval, step, s.log, s.metrics.rotation.ObserveStep)
		})
	}
	for _, run := range s.cfg.Runners {
		g.Go(func() error { return run(ctx) })
	}
	g.Go(func() error {
		<-ctx.Done()
		s.health.Shutdown()
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.grpc.Stop()
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.http.Shutdown(sctx)
		if s.pprof != nil {
			_ = s.pprof.Shutdown(sctx)
		}
		return nil
	})
	s.log.Info("CA serving", "grpc", s.GRPCAddr(), "http", s.HTTPAddr(), "trust_domain", s.td.Name())
	return g.Wait()
}

// servingCertificate returns the CA's own TLS certificate, issuing a new
// one when the signing material changed or half its life has passed.
func (s *Server) servingCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	a := s.src.Authority()
	if a == nil {
		return nil, errors.New("server: no signing authority loaded")
	}
	s.servingMu.Lock()
	defer s.servingMu.Unlock()
	now := time.Now()
	if c := s.serving; c != nil && s.servingAuth == a && now.Before(backoff.RenewAt(c.Leaf.NotBefore, c.Leaf.NotAfter, 0.5, 0)) {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("server: serving key: %w", err)
	}
	leaf, err := ca.IssueServingCertificate(a, key.Public(), s.cfg.ServerDNSNames, 24*time.Hour, now)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	chain := [][]byte{leaf.Raw, a.Cert.Raw}
	for _, c := range a.Chain {
		if !ca.IsSelfSigned(c) {
			chain = append(chain, c.Raw)
		}
	}
	if ca.IsSelfSigned(a.Cert) {
		chain = chain[:1]
	}
	s.serving = &tls.Certificate{Certificate: chain, PrivateKey: crypto.Signer(key), Leaf: leaf}
	s.servingAuth = a
	return s.serving, nil
}
