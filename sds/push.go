package sds

import (
	"runtime"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"

	"github.com/castellan-mesh/castellan/agent/connlimit"
)

// A stream spends its life blocked in Recv on its own goroutine. Changes
// reach it through a pusher: one watcher per server waits for the source
// to change and kicks every open stream, and a kicked stream computes and
// sends its update on a short-lived goroutine. An idle stream thus costs
// one goroutine, not two, which matters with a thousand proxies on a node.

// pusher is the part of a stream that the watcher wakes.
type pusher struct {
	running atomic.Bool
	dirty   atomic.Bool
	// push computes the stream's update and sends it, under the stream's
	// lock. It must not block for long except in Send.
	push func()
}

// kick runs push soon. At most one push runs at a time per stream; a kick
// during a push makes it run again, so no change is missed.
func (p *pusher) kick() {
	p.dirty.Store(true)
	if p.running.CompareAndSwap(false, true) {
		go p.run()
	}
}

func (p *pusher) run() {
	for {
		p.dirty.Store(false)
		p.push()
		p.running.Store(false)
		if !p.dirty.Load() || !p.running.CompareAndSwap(false, true) {
			return
		}
	}
}

// hub holds the open streams of a server, by the source each serves, and
// runs one watcher per source while it has streams. A server with one
// source (a single-identity agent) has one feed; a node agent has one per
// workload identity in use.
type hub struct {
	mu    sync.Mutex
	feeds map[Source]*feed
}

// feed is one source, the streams it serves and the Secrets built from it.
type feed struct {
	source  Source
	cache   resourceCache
	streams map[*pusher]struct{}
	stop    chan struct{}
}

// register adds p to the streams of source, kicked on each change, and
// returns the feed and the function that removes p. The feed and its
// watcher end with its last stream.
func (s *Server) register(source Source, p *pusher) (*feed, func()) {
	h := &s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.feeds == nil {
		h.feeds = map[Source]*feed{}
	}
	f := h.feeds[source]
	if f == nil {
		f = &feed{source: source, streams: map[*pusher]struct{}{}, stop: make(chan struct{})}
		h.feeds[source] = f
		go s.watch(f)
	}
	f.streams[p] = struct{}{}
	return f, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(f.streams, p)
		if len(f.streams) == 0 {
			close(f.stop)
			delete(h.feeds, source)
		}
	}
}

// watch kicks every open stream of f on each change of its source, until
// its last stream ends. It also kicks them once at the start, for a change
// that came between a stream's first look at the source and this
// watcher's.
func (s *Server) watch(f *feed) {
	_, changed := f.source.Load()
	for {
		s.kickAll(f)
		select {
		case <-f.stop:
			return
		case <-changed:
			_, changed = f.source.Load()
		}
	}
}

// kickAll kicks every open stream of f. After each kick it yields, so that
// the push just started runs (and usually finishes) before the next one is
// started: a thousand streams then need a few push goroutines and their
// stacks at a time, not a thousand at once. A push that blocks (a client
// that does not read) holds up nothing but itself.
func (s *Server) kickAll(f *feed) {
	s.hub.mu.Lock()
	streams := make([]*pusher, 0, len(f.streams))
	for p := range f.streams {
		streams = append(streams, p)
	}
	s.hub.mu.Unlock()
	for _, p := range streams {
		p.kick()
		runtime.Gosched()
	}
}

// streamBase is the state both kinds of stream share.
type streamBase struct {
	mu      sync.Mutex
	closed  bool   // the handler has returned: no more Send
	started bool   // the first request has been handled
	node    string // the client's node ID, for logs
}

// serveStream runs one SDS stream of either kind (api). The handler only
// reads requests: every response is built by next and sent by the
// stream's pusher, so that the goroutine a stream holds for its whole life
// stays small. A request that changes what the client should have (handle
// reports it) kicks the pusher; an ACK or a NACK changes nothing. The lock
// in base makes the handler and the pusher take turns; closed stops every
// Send once the handler has returned, as gRPC requires.
func serveStream[Req, Resp any](s *Server, api string, stream grpc.BidiStreamingServer[Req, Resp], base *streamBase,
	next func(*feed, snapshot) *Resp, handle func(*Req) (changed bool, err error)) error {
	source, err := s.resolve(stream.Context())
	if err != nil {
		return err
	}
	s.metrics.streams.WithLabelValues(api).Inc()
	defer s.metrics.streams.WithLabelValues(api).Dec()
	var f *feed
	p := &pusher{push: func() {
		base.mu.Lock()
		defer base.mu.Unlock()
		if base.closed || !base.started {
			return
		}
		snap, _ := source.Load()
		resp := next(f, snap)
		if resp == nil {
			return
		}
		if err := stream.Send(resp); err != nil {
			return // A broken stream also fails the handler's Recv.
		}
		s.metrics.pushes.WithLabelValues(api).Inc()
	}}
	f, unregister := s.register(source, p)
	defer unregister()
	defer func() {
		base.mu.Lock()
		base.closed = true
		base.mu.Unlock()
	}()
	for {
		req, err := stream.Recv()
		if err != nil {
			return endOfStream(err)
		}
		if err := connlimit.Allow(stream.Context()); err != nil {
			return err
		}
		base.mu.Lock()
		changed, err := handle(req)
		base.mu.Unlock()
		if err != nil {
			return err
		}
		if changed {
			p.kick()
		}
	}
}
