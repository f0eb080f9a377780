// Package connlimit bounds what one client connection may cost the node
// agent: the streams it holds open at once and the rate of its requests.
//
// The agent serves every proxy on a node from one process, so a single
// local client that opens streams or sends requests without end would
// starve all the others. A Handler gives each connection its own budget
// when gRPC accepts it (as a stats.Handler, whose connection context is
// the parent of every stream's); the Handler's interceptors charge each
// new call to it, and a server that reads many requests on one stream
// charges each with Allow. Past a limit the call ends with
// ResourceExhausted and a message that says which limit was hit.
package connlimit

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/internal/promreg"
)

// Defaults for Limits. A proxy opens a few streams on its connection and
// sends a request or two on each per rotation; these leave it a wide
// margin.
const (
	DefaultMaxStreams = 100
	// DefaultMaxTotalStreams bounds the streams of all connections
	// together: ten for each of a thousand proxies.
	DefaultMaxTotalStreams = 10000
	DefaultRequestRate     = 100
	DefaultRequestBurst    = 1000
)

// The reason label of castellan_agent_connection_refusals_total.
const (
	reasonStreams      = "streams"
	reasonTotalStreams = "total_streams"
	reasonRate         = "request_rate"
)

// Limits are the per-connection limits. Zero values select the defaults.
type Limits struct {
	// MaxStreams is the most streams one connection may hold open at
	// once. Default: DefaultMaxStreams.
	MaxStreams int
	// MaxTotalStreams is the most streams all connections together may
	// hold open at once, so that many connections cannot do what one may
	// not. Default: DefaultMaxTotalStreams.
	MaxTotalStreams int
	// RequestRate is the sustained number of requests per second one
	// connection may send (new calls and messages on streams), and
	// RequestBurst how many it may send at once. Defaults:
	// DefaultRequestRate and DefaultRequestBurst.
	RequestRate  float64
	RequestBurst int
}

// Handler gives every connection of a gRPC server its own budget. Install
// it with grpc.StatsHandler, and its StreamInterceptor and
// UnaryInterceptor. It is safe for concurrent use.
type Handler struct {
	limits   Limits
	refusals *prometheus.CounterVec

	mu    sync.Mutex
	total int // streams open on all connections
}

// New returns a Handler enforcing limits. Its refusals are counted in
// castellan_agent_connection_refusals_total{reason}, registered on reg
// unless reg is nil.
func New(limits Limits, reg prometheus.Registerer) (*Handler, error) {
	switch {
	case limits.MaxStreams < 0 || limits.MaxTotalStreams < 0 || limits.RequestRate < 0 || limits.RequestBurst < 0:
		return nil, errors.New("connlimit: negative limit")
	}
	if limits.MaxStreams == 0 {
		limits.MaxStreams = DefaultMaxStreams
	}
	if limits.MaxTotalStreams == 0 {
		limits.MaxTotalStreams = DefaultMaxTotalStreams
	}
	if limits.RequestRate == 0 {
		limits.RequestRate = DefaultRequestRate
	}
	if limits.RequestBurst == 0 {
		limits.RequestBurst = DefaultRequestBurst
	}
	f := promreg.With(reg)
	h := &Handler{
		limits: limits,
		refusals: f.CounterVec("castellan_agent_connection_refusals_total",
			"Calls and requests on the agent's sockets refused because their connection, or all of them, were over a limit, by reason (streams, total_streams or request_rate).", "reason"),
	}
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("connlimit: could not register metrics: %w", err)
	}
	for _, r := range []string{reasonStreams, reasonTotalStreams, reasonRate} {
		h.refusals.WithLabelValues(r)
	}
	return h, nil
}

// conn is the budget of one connection.
type conn struct {
	h       *Handler
	limiter *rate.Limiter

	mu      sync.Mutex
	streams int
}

type connKey struct{}

// TagConn gives the new connection its budget.
func (h *Handler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connKey{}, &conn{h: h, limiter: rate.NewLimiter(rate.Limit(h.limits.RequestRate), h.limits.RequestBurst)})
}

// HandleConn implements stats.Handler; it does nothing.
func (h *Handler) HandleConn(context.Context, stats.ConnStats) {}

// TagRPC implements stats.Handler; it does nothing.
func (h *Handler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// HandleRPC implements stats.Handler; it does nothing.
func (h *Handler) HandleRPC(context.Context, stats.RPCStats) {}

// StreamInterceptor charges a new stream to its connection: one request,
// and one of its open streams until the handler returns.
func (h *Handler) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		c, _ := ss.Context().Value(connKey{}).(*conn)
		if c == nil {
			return handler(srv, ss)
		}
		if err := c.allow(); err != nil {
			return err
		}
		if err := c.open(); err != nil {
			return err
		}
		defer c.close()
		return handler(srv, ss)
	}
}

// UnaryInterceptor charges a unary call to its connection as one request.
func (h *Handler) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := Allow(ctx); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Allow charges one request to the connection of ctx, a stream's or a
// call's context, and returns a ResourceExhausted status when the
// connection is over its request rate. It returns nil for a context that
// belongs to no connection with a budget.
func Allow(ctx context.Context) error {
	c, _ := ctx.Value(connKey{}).(*conn)
	if c == nil {
		return nil
	}
	return c.allow()
}

func (c *conn) allow() error {
	if c.limiter.Allow() {
		return nil
	}
	c.h.refusals.WithLabelValues(reasonRate).Inc()
	return status.Errorf(codes.ResourceExhausted,
		"agent: this connection sent requests faster than %g a second (bursts of %d); slow down and reconnect",
		c.h.limits.RequestRate, c.h.limits.RequestBurst)
}

func (c *conn) open() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams >= c.h.limits.MaxStreams {
		c.h.refusals.WithLabelValues(reasonStreams).Inc()
		return status.Errorf(codes.ResourceExhausted,
			"agent: this connection already holds %d streams, the limit; close one or share them", c.streams)
	}
	h := c.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.total >= h.limits.MaxTotalStreams {
		h.refusals.WithLabelValues(reasonTotalStreams).Inc()
		return status.Errorf(codes.ResourceExhausted,
			"agent: the agent already holds %d streams from all its clients, the limit; retry later", h.total)
	}
	c.streams++
	h.total++
	return nil
}

func (c *conn) close() {
	c.mu.Lock()
	c.streams--
	c.mu.Unlock()
	c.h.mu.Lock()
	c.h.total--
	c.h.mu.Unlock()
}
