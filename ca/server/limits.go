package server

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// Limits bound what the callers of the certificate service can make the CA
// hold: header bytes, streams and connections, and the failed
// authentications one peer may cost. Zero values select the defaults.
type Limits struct {
	// MaxHeaderListSize bounds the request metadata of one call, in bytes
	// (a service-account token is 1-2 KiB; the CA refuses tokens over
	// 16 KiB). Default: 32 KiB.
	MaxHeaderListSize uint32
	// MaxConcurrentStreams bounds the calls in flight on one connection.
	// Default: 32.
	MaxConcurrentStreams uint32
	// MaxConnections bounds the open connections of the certificate
	// service; MaxConnectionsPerPeer those from one IP address. Past
	// either, a new connection is closed at once. Defaults: 4096 and 64.
	MaxConnections, MaxConnectionsPerPeer int
	// PeerFailureRate is the sustained rate of failed authentications
	// allowed to one IP address, per second, and PeerFailureBurst how many
	// may come at once. Past them, calls from that address are refused
	// with ResourceExhausted before their token is looked at. Defaults:
	// 5/s and 50.
	PeerFailureRate  float64
	PeerFailureBurst int
	// FailureLogsPerInterval bounds the "authentication failed" lines
	// logged per FailureLogInterval; the rest are counted in metrics and
	// summed up in one line per interval. Defaults: 20 per 10s.
	FailureLogsPerInterval int
	FailureLogInterval     time.Duration
	// MaxConnectionAge is how long a connection to the certificate
	// service is kept before the server asks its client to go away
	// (HTTP/2 GOAWAY), and MaxConnectionAgeGrace how long in-flight calls
	// then have to finish. Clients reconnect, through the Service, to any
	// replica, so connections spread over replicas added since, as
	// istiod's do. Defaults: 30m (istiod's keepaliveMaxServerConnectionAge)
	// and 10s; a random +/-10% is added by gRPC so that clients do not
	// all reconnect at once.
	MaxConnectionAge, MaxConnectionAgeGrace time.Duration
}

// Defaults for Limits.
const (
	defaultMaxHeaderListSize      = 32 << 10
	defaultMaxConcurrentStreams   = 32
	defaultMaxConnections         = 4096
	defaultMaxConnectionsPerPeer  = 64
	defaultPeerFailureRate        = 5
	defaultPeerFailureBurst       = 50
	defaultFailureLogsPerInterval = 20
	defaultFailureLogInterval     = 10 * time.Second
	defaultMaxConnectionAge       = 30 * time.Minute
	defaultMaxConnectionAgeGrace  = 10 * time.Second
	// maxTrackedPeers bounds the failure buckets kept, one per IP.
	maxTrackedPeers = 16384
)

func (l Limits) withDefaults() Limits {
	orDefault(&l.MaxHeaderListSize, defaultMaxHeaderListSize)
	orDefault(&l.MaxConcurrentStreams, defaultMaxConcurrentStreams)
	orDefault(&l.MaxConnections, defaultMaxConnections)
	orDefault(&l.MaxConnectionsPerPeer, defaultMaxConnectionsPerPeer)
	orDefault(&l.PeerFailureRate, defaultPeerFailureRate)
	orDefault(&l.PeerFailureBurst, defaultPeerFailureBurst)
	orDefault(&l.FailureLogsPerInterval, defaultFailureLogsPerInterval)
	orDefault(&l.FailureLogInterval, defaultFailureLogInterval)
	orDefault(&l.MaxConnectionAge, defaultMaxConnectionAge)
	orDefault(&l.MaxConnectionAgeGrace, defaultMaxConnectionAgeGrace)
	return l
}

// orDefault sets *v to d when it is zero or negative.
func orDefault[T uint32 | int | float64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// limitMetrics count what the limits refused.
type limitMetrics struct {
	connsRefused *prometheus.CounterVec
	peerLimited  prometheus.Counter
	logsDropped  prometheus.Counter
}

func newLimitMetrics(f *promreg.Factory) *limitMetrics {
	m := &limitMetrics{
		connsRefused: f.CounterVec("castellan_ca_connections_refused_total",
			"Connections to the certificate service closed on accept, by limit: total or per_peer.", "limit"),
		peerLimited: f.Counter("castellan_ca_peer_limited_total",
			"Calls refused with ResourceExhausted because their peer IP had too many failed authentications."),
		logsDropped: f.Counter("castellan_ca_auth_failure_logs_suppressed_total",
			"Authentication failures not logged because of the log rate limit (all are counted in castellan_ca_auth_failures_total)."),
	}
	m.connsRefused.WithLabelValues("total")
	m.connsRefused.WithLabelValues("per_peer")
	return m
}

// peerOf returns the IP address of a peer, or the zero Addr.
func peerOf(addr net.Addr) netip.Addr {
	switch a := addr.(type) {
	case nil:
		return netip.Addr{}
	case *net.TCPAddr:
		// Every call to the certificate service asks: no text round trip.
		return a.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// connLimitListener closes connections past a total limit or a per-peer
// limit as soon as they are accepted.
type connLimitListener struct {
	net.Listener
	max, perPeer int
	refused      *prometheus.CounterVec

	mu     sync.Mutex
	total  int
	byPeer map[netip.Addr]int
}

func newConnLimitListener(l net.Listener, lim Limits, m *limitMetrics) *connLimitListener {
	return &connLimitListener{Listener: l, max: lim.MaxConnections, perPeer: lim.MaxConnectionsPerPeer, refused: m.connsRefused, byPeer: map[netip.Addr]int{}}
}

// Accept returns the next connection within the limits.
func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := peerOf(c.RemoteAddr())
		l.mu.Lock()
		switch {
		case l.total >= l.max:
			l.mu.Unlock()
			l.refused.WithLabelValues("total").Inc()
			c.Close()
			continue
		case l.byPeer[ip] >= l.perPeer:
			l.mu.Unlock()
			l.refused.WithLabelValues("per_peer").Inc()
			c.Close()
			continue
		}
		l.total++
		l.byPeer[ip]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

func (l *connLimitListener) release(ip netip.Addr) {
	l.mu.Lock()
	l.total--
	if l.byPeer[ip]--; l.byPeer[ip] <= 0 {
		delete(l.byPeer, ip)
	}
	l.mu.Unlock()
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// peerLimiter keeps a token bucket of failed authentications per peer IP,
// in a bounded map: when it is full, peers whose bucket has refilled are
// dropped first, then arbitrary ones.
type peerLimiter struct {
	rate  float64 // tokens per second
	burst float64
	max   int
	now   func() time.Time

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newPeerLimiter(lim Limits) *peerLimiter {
	return &peerLimiter{rate: lim.PeerFailureRate, burst: float64(lim.PeerFailureBurst), max: maxTrackedPeers, now: time.Now, buckets: map[netip.Addr]*bucket{}}
}

// allow reports whether ip may still fail an authentication. It consumes
// nothing: only failures do (see fail).
func (p *peerLimiter) allow(ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.buckets[ip]
	if !ok {
		return true
	}
	p.refill(b)
	return b.tokens >= 1
}

// fail takes one token from ip's bucket.
func (p *peerLimiter) fail(ip netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.buckets[ip]
	if !ok {
		if len(p.buckets) >= p.max {
			p.evict()
		}
		b = &bucket{tokens: p.burst, last: p.now()}
		p.buckets[ip] = b
	}
	p.refill(b)
	b.tokens = max(b.tokens-1, 0)
}

func (p *peerLimiter) refill(b *bucket) {
	now := p.now()
	b.tokens = min(p.burst, b.tokens+now.Sub(b.last).Seconds()*p.rate)
	b.last = now
}

// evict makes room for new peers. The caller holds p.mu.
func (p *peerLimiter) evict() {
	for ip, b := range p.buckets {
		if p.refill(b); b.tokens >= p.burst {
			delete(p.buckets, ip)
		}
	}
	target := p.max - max(1, p.max/8)
	for ip := range p.buckets {
		if len(p.buckets) <= target {
			break
		}
		delete(p.buckets, ip)
	}
}

// logLimiter lets a bounded number of log lines through per interval and
// sums up the rest in one line when the interval ends.
type logLimiter struct {
	log      *slog.Logger
	perIvl   int
	interval time.Duration
	dropped  prometheus.Counter

	mu         sync.Mutex
	start      time.Time
	logged     int
	suppressed int
	timer      *time.Timer
}

// allow reports whether one more line may be logged now; when not, the
// line is counted and reported in the interval's summary.
func (l *logLimiter) allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.start) >= l.interval && l.suppressed == 0 {
		l.start, l.logged = now, 0
	}
	if l.logged < l.perIvl && l.suppressed == 0 {
		l.logged++
		return true
	}
	l.suppressed++
	l.dropped.Inc()
	if l.timer == nil {
		wait := max(0, l.interval-now.Sub(l.start))
		l.timer = time.AfterFunc(wait, l.summarize)
	}
	return false
}

// summarize logs how many lines the ending interval suppressed and opens a
// new interval.
func (l *logLimiter) summarize() {
	l.mu.Lock()
	n := l.suppressed
	l.suppressed, l.logged, l.start, l.timer = 0, 0, time.Now(), nil
	l.mu.Unlock()
	if n > 0 {
		l.log.LogAttrs(context.Background(), slog.LevelInfo, "authentication failures not logged (rate limit); all are counted in castellan_ca_auth_failures_total",
			slog.Int("suppressed", n), slog.Duration("interval", l.interval))
	}
}

// certServicePrefix is the method prefix of Istio's certificate service,
// the calls that authenticate.
const certServicePrefix = "/istio.v1.auth.IstioCertificateService/"

// peerLimitInterceptor refuses calls to the certificate service from a
// peer IP that failed authentication too often, before anything is done
// with their token, and counts each Unauthenticated answer against the
// peer.
func (s *Server) peerLimitInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !strings.HasPrefix(info.FullMethod, certServicePrefix) && !strings.HasPrefix(info.FullMethod, jwtServicePrefix) {
		return handler(ctx, req)
	}
	var ip netip.Addr
	if p, ok := peer.FromContext(ctx); ok {
		ip = peerOf(p.Addr)
	}
	if !s.peers.allow(ip) {
		s.metrics.limits.peerLimited.Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "too many failed authentications from %s; retry later", ip)
	}
	resp, err := handler(ctx, req)
	if status.Code(err) == codes.Unauthenticated {
		s.peers.fail(ip)
	}
	return resp, err
}

// grpcLimitOptions are the gRPC server options that enforce s's limits.
func (s *Server) grpcLimitOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxHeaderListSize(s.limits.MaxHeaderListSize),
		grpc.MaxConcurrentStreams(s.limits.MaxConcurrentStreams),
		// Idle connections are closed, and dead peers found, so that
		// connection slots come back; old connections are closed so that
		// clients rebalance over replicas.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: 5 * time.Minute, Time: time.Minute, Timeout: 20 * time.Second,
			MaxConnectionAge: s.limits.MaxConnectionAge, MaxConnectionAgeGrace: s.limits.MaxConnectionAgeGrace,
		}),
		grpc.ChainUnaryInterceptor(s.peerLimitInterceptor),
	}
}

// setupLimits prepares the limits of cfg and wraps the gRPC listener.
func (s *Server) setupLimits() {
	s.limits = s.cfg.Limits.withDefaults()
	s.peers = newPeerLimiter(s.limits)
	s.failLogs = &logLimiter{log: s.log, perIvl: s.limits.FailureLogsPerInterval, interval: s.limits.FailureLogInterval, dropped: s.metrics.limits.logsDropped}
	s.grpcLis = newConnLimitListener(s.grpcLis, s.limits, s.metrics.limits)
}
