// Package agent is Castellan's node agent. It obtains the workload's
// X.509-SVID from the CA and keeps it fresh, and hands it out over Envoy's
// SDS, over the SPIFFE Workload API and as files.
//
// The private key is generated in the agent, anew for every SVID, and
// never leaves it: the CA receives a CSR. The CA call carries the
// workload's service-account token, read from its file on every call
// because the kubelet rotates it, and the CA's serving certificate is
// verified against the trust bundle from the root certificate file. The
// SVID is renewed at a fraction of its lifetime, with jitter; failures are
// retried with exponential backoff and jitter, and while the CA is
// unreachable the current SVID keeps being served until it expires, never
// after. Changes to the root certificate file reach every consumer without
// a restart.
//
// Everything the agent obtains goes into one svidstore.Store; the SDS
// server, the Workload API server and the file writer all follow it, so one
// rotation reaches all of them.
//
// With AttestationNode, one agent serves every pod of its node: each
// connection is attributed to the pod whose process opened it (package
// attest), and each caller is served from the store of its service
// account's SVID, which the agent asks of the CA on the workload's behalf
// (Istio's ImpersonatedIdentity) with its own token. Each such identity has
// its own rotation, made on first demand and withdrawn when no running pod
// of its service account is left on the node. A caller that cannot be
// attested gets PermissionDenied, never the agent's identity or another's.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/castellan-mesh/castellan/agent/attest"
	"github.com/castellan-mesh/castellan/agent/certdir"
	"github.com/castellan-mesh/castellan/agent/connlimit"
	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/workloadapi"
	"github.com/castellan-mesh/castellan/ca/caclient"
	"github.com/castellan-mesh/castellan/sds"
)

// DefaultSDSSocket is where Istio's proxies look for the SDS server.
const DefaultSDSSocket = "/var/run/secrets/workload-spiffe-uds/socket"

// Disabled, as a socket path or HTTP address, turns that listener off.
const Disabled = "-"

// maxSocketRequestBytes bounds one request on the agent's sockets. SDS and
// Workload API requests are a few hundred bytes.
const maxSocketRequestBytes = 64 << 10

// maxStreamsPerConn is the HTTP/2 limit on the streams one connection may
// hold open. A proxy needs a handful (its certificate, its roots,
// per-cluster secrets). It is above connlimit's limit, which refuses the
// streams in between with a clear error; past it, clients queue.
const maxStreamsPerConn = 128

// socketBufferBytes is the read and write buffer of one connection on the
// agent's sockets.
const socketBufferBytes = 8 << 10

// Config configures an Agent. Zero values select the noted defaults.
type Config struct {
	// CAAddr is the CA's gRPC address (host:port). Required.
	CAAddr string
	// CAServerName is the name checked in the CA's serving certificate.
	// Default: the host of CAAddr.
	CAServerName string
	// RootCertFile holds the trusted roots (PEM): they verify the CA and
	// the SVIDs, and are served as the trust bundle. It is re-read every
	// RootPollInterval. Required.
	RootCertFile string
	// FederatedBundlesFile holds the bundles of federated trust domains
	// (package trust/federated), served beside the local roots. It is
	// re-read every RootPollInterval; a missing file means none. Default:
	// federated-bundles.json beside RootCertFile. Disabled turns it off.
	FederatedBundlesFile string
	// TokenFile holds the service-account token sent to the CA. It is read
	// on every CA call. Required.
	TokenFile string
	// SPIFFEID, if set, is put in the CSR, and an SVID for any other ID is
	// refused. By default the CSR names nothing and the CA derives the ID
	// from the token.
	SPIFFEID spiffeid.ID
	// KeyType of the keys generated. Default: KeyECDSAP256.
	KeyType KeyType
	// TTL is the lifetime asked of the CA. Zero asks for the CA's default.
	TTL time.Duration
	// RotateFraction is the fraction of an SVID's lifetime after which it
	// is renewed, in (0, 1). Default: 0.5.
	RotateFraction float64
	// RotateJitter moves each renewal by a random amount of up to ±half
	// this fraction of the lifetime, in [0, 0.5]. Default: 0.1. A negative
	// value means no jitter.
	RotateJitter float64
	// InitialBackoff and MaxBackoff bound the wait between failed
	// attempts. Defaults: 1s and 30s.
	InitialBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one CA call. Default: 10s.
	RequestTimeout time.Duration
	// RootPollInterval is how often RootCertFile is checked for changes.
	// Default: 5s.
	RootPollInterval time.Duration
	// SDSSocket is the Unix socket of the SDS server. Default:
	// DefaultSDSSocket. Disabled turns SDS off.
	SDSSocket string
	// WorkloadAPISocket is the Unix socket of the SPIFFE Workload API.
	// Default: the SDS socket, which then serves both. Disabled turns the
	// Workload API off.
	WorkloadAPISocket string
	// SocketMode is the file mode of the sockets. Default: 0600.
	SocketMode os.FileMode
	// OutputDir, if set, receives cert-chain.pem, key.pem and
	// root-cert.pem on every change (see package certdir).
	OutputDir string
	// OutputLayout names the files of OutputDir. Default (zero):
	// certdir.IstioLayout; certdir.IstiodLayout writes tls.crt, tls.key
	// and ca.crt, where istiod reads its serving certificate.
	OutputLayout certdir.Layout
	// DNSNames are put in the CSR beside the SPIFFE ID, for a serving
	// certificate such as istiod's; the CA grants them only to a service
	// account its DNS SAN profile names (castellan ca --dns-san-allow).
	// At most MaxDNSNames; not with AttestationNode.
	DNSNames []string
	// HTTPAddr serves /metrics, /healthz and /readyz. Default:
	// 127.0.0.1:15020. Disabled turns it off.
	HTTPAddr string
	// Pprof serves net/http/pprof under /debug/pprof/ on HTTPAddr.
	Pprof bool
	// Attestation selects whom the agent serves: AttestationNone (the
	// default) serves the agent's own SVID to every caller; AttestationNode
	// serves each caller its own pod's, and needs Attestor and Pods.
	Attestation Attestation
	// Attestor attributes each caller to its pod (AttestationNode).
	Attestor WorkloadAttestor
	// Pods says which service accounts have a running pod on the node
	// (AttestationNode): an SVID is dropped when its service account has
	// none left.
	Pods PodSet
	// ProcRoot is where the host's /proc is mounted, for the callers'
	// credentials (AttestationNode). Default: /proc.
	ProcRoot string
	// TrustDomain of the SPIFFE IDs asked for on behalf of workloads
	// (AttestationNode). Default: cluster.local.
	TrustDomain spiffeid.TrustDomain
	// MaxIdentities caps the service accounts served at once
	// (AttestationNode). Default: DefaultMaxIdentities.
	MaxIdentities int
	// JWTBundleRefresh is how often the CA's JWT authorities are fetched
	// for the Workload API's JWT bundle (see jwt.go). Default:
	// DefaultJWTBundleRefresh.
	JWTBundleRefresh time.Duration
	// Logger receives the agent's logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the agent's metrics and Gatherer serves them.
	// Default: a new registry for both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Agent is a node agent. New binds its listeners; Run serves them.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	store   *svidstore.Store
	metrics *metrics

	grpc      *grpc.Server
	listeners []net.Listener
	httpLis   net.Listener
	http      *http.Server

	// primary keeps the agent's own SVID in store (AttestationNone); ids
	// hold one SVID per service account (AttestationNode). Exactly one
	// of them is set.
	primary *rotator
	ids     *identities
	// jwt mints JWT-SVIDs and holds the JWT bundle (jwt.go).
	jwt *jwtAgent

	caMu     sync.Mutex
	ca       *caclient.Client
	caBundle string
}

// New checks cfg, binds the sockets and the HTTP listener, and returns an
// Agent ready to Run. If Run is never called, Close releases them.
func New(cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, store: svidstore.New()}
	if cfg.Attestation == AttestationNode {
		a.ids = newIdentities(a)
	} else {
		a.primary = newRotator(a, a.store, cfg.SPIFFEID, false)
	}
	m, err := newMetrics(cfg.Registerer, a.store, a.soonestExpiry, a.identityCount)
	if err != nil {
		return nil, err
	}
	a.metrics = m

	limits, err := connlimit.New(connlimit.Limits{}, cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var creds []grpc.ServerOption
	if a.ids != nil {
		// Every connection carries the credentials of the process that
		// opened it, for attestation.
		opts := []attest.CredentialsOption{attest.WithProcRoot(cfg.ProcRoot)}
		if at, ok := cfg.Attestor.(*attest.Attestor); ok {
			// Connections refused at the handshake are counted and logged
			// with the calls refused later.
			opts = append(opts, attest.WithAttestor(at))
		}
		creds = append(creds, grpc.Creds(attest.Credentials(opts...)))
	}
	a.grpc = grpc.NewServer(append(creds,
		// Each connection has its own budget of streams and requests (see
		// package connlimit), so that one local client cannot starve the
		// others: the limit of the transport below only makes clients
		// queue, and refuses nothing clearly.
		grpc.StatsHandler(limits),
		grpc.ChainStreamInterceptor(limits.StreamInterceptor()),
		grpc.ChainUnaryInterceptor(limits.UnaryInterceptor()),
		grpc.MaxRecvMsgSize(maxSocketRequestBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Every proxy holds a connection open for its whole life, and the
		// messages are a few kilobytes: small per-connection buffers, and
		// a write buffer released after each flush, keep a node with a
		// thousand proxies at a few megabytes.
		grpc.MaxConcurrentStreams(maxStreamsPerConn),
		grpc.ReadBufferSize(socketBufferBytes),
		grpc.WriteBufferSize(socketBufferBytes),
		// A proxy opens a stream or two per connection, so an HPACK
		// dynamic table saves nothing but costs each connection its own
		// copy of the request headers: clients are told not to index.
		grpc.HeaderTableSize(0),
	)...)
	if cfg.SDSSocket != Disabled {
		resolve := func(ctx context.Context) (sds.Source, error) { return a.resolve(ctx) }
		srv, err := sds.NewResolving(resolve, sds.WithLogger(cfg.Logger), sds.WithRegisterer(cfg.Registerer))
		if err != nil {
			return nil, err
		}
		srv.Register(a.grpc)
	}
	if cfg.WorkloadAPISocket != Disabled {
		resolve := func(ctx context.Context) (workloadapi.Source, error) { return a.resolve(ctx) }
		if a.jwt, err = newJWTAgent(a); err != nil {
			return nil, err
		}
		srv, err := workloadapi.NewResolving(resolve, workloadapi.WithLogger(cfg.Logger), workloadapi.WithRegisterer(cfg.Registerer), workloadapi.WithJWT(a.jwt))
		if err != nil {
			return nil, err
		}
		srv.Register(a.grpc)
	}
	for _, path := range cfg.socketPaths() {
		l, err := listenUnix(path, cfg.SocketMode)
		if err != nil {
			a.Close()
			return nil, err
		}
		a.listeners = append(a.listeners, l)
	}
	if cfg.HTTPAddr != Disabled {
		if a.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			a.Close()
			return nil, fmt.Errorf("agent: HTTP listener: %w", err)
		}
		a.http = &http.Server{Handler: a.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	}
	return a, nil
}

func (c *Config) setDefaults() error {
	switch {
	case c.CAAddr == "":
		return errors.New("agent: no CA address")
	case c.RootCertFile == "":
		return errors.New("agent: no root certificate file")
	case c.TokenFile == "":
		return errors.New("agent: no token file")
	case c.RotateFraction < 0 || c.RotateFraction >= 1:
		return fmt.Errorf("agent: rotate fraction %v is not in (0, 1)", c.RotateFraction)
	case c.RotateJitter > 0.5:
		return fmt.Errorf("agent: rotate jitter %v is over 0.5", c.RotateJitter)
	case c.TTL < 0:
		return fmt.Errorf("agent: negative TTL %s", c.TTL)
	case len(c.DNSNames) > MaxDNSNames:
		return fmt.Errorf("agent: %d DNS names; at most %d", len(c.DNSNames), MaxDNSNames)
	}
	for _, n := range c.DNSNames {
		if n == "" || len(n) > 253 || strings.ContainsAny(n, "*/ ,") {
			return fmt.Errorf("agent: DNS name %q is not a host name", n)
		}
	}
	if _, err := ParseKeyType(string(c.KeyType)); err != nil {
		return err
	}
	if _, err := ParseAttestation(string(c.Attestation)); err != nil {
		return err
	}
	if c.Attestation == "" {
		c.Attestation = AttestationNone
	}
	if c.Attestation == AttestationNode {
		switch {
		case len(c.DNSNames) > 0:
			return errors.New("agent: node attestation asks for its workloads' SVIDs, which never carry DNS names; run an agent beside the workload (--attestation=none) for a serving certificate")
		case c.Attestor == nil:
			return errors.New("agent: node attestation needs an attestor")
		case c.Pods == nil:
			return errors.New("agent: node attestation needs the node's pods")
		case c.OutputDir != "":
			return errors.New("agent: node attestation serves many identities and writes no output directory")
		case !c.SPIFFEID.IsZero():
			return errors.New("agent: node attestation derives each SPIFFE ID from the caller's pod; set no SPIFFE ID")
		case c.MaxIdentities < 0:
			return fmt.Errorf("agent: negative identity cap %d", c.MaxIdentities)
		}
		if c.TrustDomain.IsZero() {
			c.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
		}
		if c.MaxIdentities == 0 {
			c.MaxIdentities = DefaultMaxIdentities
		}
		if c.ProcRoot == "" {
			c.ProcRoot = attest.DefaultProcRoot
		}
	}
	if c.KeyType == "" {
		c.KeyType = KeyECDSAP256
	}
	if c.RotateFraction == 0 {
		c.RotateFraction = 0.5
	}
	switch {
	case c.RotateJitter == 0:
		c.RotateJitter = 0.1
	case c.RotateJitter < 0:
		c.RotateJitter = 0
	}
	setDuration(&c.InitialBackoff, time.Second)
	setDuration(&c.MaxBackoff, 30*time.Second)
	setDuration(&c.RequestTimeout, 10*time.Second)
	setDuration(&c.RootPollInterval, 5*time.Second)
	setDuration(&c.JWTBundleRefresh, DefaultJWTBundleRefresh)
	if c.MaxBackoff < c.InitialBackoff {
		return fmt.Errorf("agent: max backoff %s is below the initial backoff %s", c.MaxBackoff, c.InitialBackoff)
	}
	if c.SDSSocket == "" {
		c.SDSSocket = DefaultSDSSocket
	}
	if c.WorkloadAPISocket == "" {
		c.WorkloadAPISocket = c.SDSSocket
	}
	if c.SocketMode == 0 {
		c.SocketMode = 0o600
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = "127.0.0.1:15020"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		reg := prometheus.NewRegistry()
		c.Registerer, c.Gatherer = reg, reg
	}
	if c.Gatherer == nil {
		c.Gatherer = prometheus.NewRegistry()
	}
	return nil
}

func setDuration(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// socketPaths lists the distinct socket paths to listen on.
func (c *Config) socketPaths() []string {
	var paths []string
	for _, p := range []string{c.SDSSocket, c.WorkloadAPISocket} {
		if p != Disabled && (len(paths) == 0 || paths[0] != p) {
			paths = append(paths, p)
		}
	}
	return paths
}

// Store returns the store the agent fills.
func (a *Agent) Store() *svidstore.Store { return a.store }

// HTTPAddr returns the bound HTTP address, or "" when it is disabled.
func (a *Agent) HTTPAddr() string {
	if a.httpLis == nil {
		return ""
	}
	return a.httpLis.Addr().String()
}

// RotateNow asks for new SVIDs at once, as if the current ones were due.
func (a *Agent) RotateNow() {
	if a.ids != nil {
		a.ids.rotateNow()
		return
	}
	a.primary.rotateNow()
}

// setBundle installs a new trust bundle for every identity served.
func (a *Agent) setBundle(b *svidstore.Bundle) {
	a.store.SetBundle(b)
	if a.ids != nil {
		a.ids.setBundle(b)
	}
}

// soonestExpiry returns the earliest expiry of the SVIDs served, and false
// if there is none.
func (a *Agent) soonestExpiry() (time.Time, bool) {
	if a.ids != nil {
		return a.ids.soonestExpiry()
	}
	snap, _ := a.store.Load()
	if snap.SVID == nil {
		return time.Time{}, false
	}
	return snap.SVID.NotAfter, true
}

// identityCount returns the number of identities served.
func (a *Agent) identityCount() int {
	if a.ids != nil {
		n, _ := a.ids.count()
		return n
	}
	if snap, _ := a.store.Load(); snap.SVID != nil {
		return 1
	}
	return 0
}

// Run serves until ctx ends, then stops everything and closes the
// listeners.
func (a *Agent) Run(ctx context.Context) error {
	// The first CA call needs the bundle to verify the CA, so it is loaded
	// before anything starts.
	bundles, err := a.newBundleWatcher()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	bundles.Check()
	g, ctx := errgroup.WithContext(ctx)
	defer a.closeCAClient()
	g.Go(func() error { return bundles.Run(ctx) })
	if a.jwt != nil {
		g.Go(func() error { return a.jwt.run(ctx) })
	}
	if fed := a.startFederated(); fed != nil {
		g.Go(func() error { return fed(ctx) })
	}
	if a.ids != nil {
		a.ids.start(ctx)
		g.Go(func() error { return a.ids.run(ctx) })
	} else {
		g.Go(func() error { return a.primary.run(ctx) })
	}
	if a.cfg.OutputDir != "" {
		g.Go(func() error { return a.writeFiles(ctx) })
	}
	for _, l := range a.listeners {
		g.Go(func() error {
			if err := a.grpc.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("agent: serving %s: %w", l.Addr(), err)
			}
			return nil
		})
	}
	if a.http != nil {
		g.Go(func() error {
			if err := a.http.Serve(a.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("agent: HTTP: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-ctx.Done()
		a.Close()
		return nil
	})
	a.log.Info("agent running", "ca", a.cfg.CAAddr, "sds_socket", a.cfg.SDSSocket, "workload_api_socket", a.cfg.WorkloadAPISocket,
		"output_dir", a.cfg.OutputDir, "http", a.HTTPAddr(), "key_type", a.cfg.KeyType, "attestation", a.cfg.Attestation)
	return g.Wait()
}

// Close stops the servers and releases the listeners. Streams are ended:
// clients reconnect to the next agent.
func (a *Agent) Close() {
	a.grpc.Stop()
	for _, l := range a.listeners {
		l.Close()
	}
	if a.http != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = a.http.Shutdown(sctx)
	} else if a.httpLis != nil {
		a.httpLis.Close()
	}
	a.store.Close()
}
