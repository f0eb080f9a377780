package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	extensionv3 "github.com/envoyproxy/go-control-plane/envoy/service/extension/v3"
	listenerservicev3 "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/castellan-mesh/castellan/authz"
	"github.com/castellan-mesh/castellan/internal/clip"
)

// Pods tells which service account a pod runs as.
type Pods interface {
	// ServiceAccount returns the service account of the pod, and false if
	// the pod is not known.
	ServiceAccount(namespace, name string) (string, bool)
}

// Config configures a Server.
type Config struct {
	// Engine computes the workloads' configurations. Required.
	Engine *authz.Engine
	// Pods resolves a proxy's pod to its service account. Required.
	Pods Pods
	// TrustDomain is the trust domain of the proxies' SPIFFE IDs. Required.
	TrustDomain string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Metrics; nil records nothing.
	Metrics *Metrics
	// MaxStreams caps the concurrent xDS streams; zero means 100000.
	MaxStreams int
}

// Server is the ECDS server. Create it with New, register it on a gRPC
// server with Register, and run Run to push changes.
type Server struct {
	engine  *authz.Engine
	pods    Pods
	td      string
	log     *slog.Logger
	metrics *Metrics
	max     int
	xds     serverv3.Server

	mu        sync.Mutex
	workloads map[workloadKey]*workloadState
	// streams are keyed by form and ID: the state-of-the-world and delta
	// servers number their streams independently.
	streams map[streamKey]*streamState
	// inflight maps a response sent for a change to the change it carries.
	inflight map[any]*round
}

type workloadKey struct{ ns, name string }

func (k workloadKey) String() string { return k.ns + "/" + k.name }

type workloadState struct {
	gen   uint64
	known bool // the engine has a configuration for it
	// round is the last change of the workload's resources, joined by the
	// responses that carry it, also those sent when a proxy's next request
	// comes after the change.
	round *round
	// listenerKey is what the inbound listener in res was rendered from.
	listenerKey string
	res         resourceSet
	watches     map[*watch]struct{}
	streams     int
}

// watch is one open request of a proxy: state of the world or delta.
type watch struct {
	req  *cachev3.Request
	sub  cachev3.Subscription
	ch   chan cachev3.Response
	dreq *cachev3.DeltaRequest
	dch  chan cachev3.DeltaResponse
	// sent is the response given to the watch, if any: the key of its
	// entry in Server.inflight until the stream sends it.
	sent any
}

type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	peerID string
	wk     workloadKey
	node   string
	bound  bool
	delta  bool
	// nonce of the last response and the change it carried, if any.
	nonce string
	round *round
}

// round is one change pushed to several proxies; it ends when the last of
// them has answered.
type round struct {
	start   time.Time
	pending int
	done    bool
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Engine == nil:
		return nil, errors.New("xds: Config.Engine is required")
	case cfg.Pods == nil:
		return nil, errors.New("xds: Config.Pods is required")
	case cfg.TrustDomain == "":
		return nil, errors.New("xds: Config.TrustDomain is required")
	}
	s := &Server{
		engine:    cfg.Engine,
		pods:      cfg.Pods,
		td:        cfg.TrustDomain,
		log:       cfg.Logger,
		metrics:   cfg.Metrics,
		max:       cfg.MaxStreams,
		workloads: map[workloadKey]*workloadState{},
		streams:   map[streamKey]*streamState{},
		inflight:  map[any]*round{},
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.max == 0 {
		s.max = 100000
	}
	s.xds = serverv3.NewServer(context.Background(), (*cacheAdapter)(s), (*callbacks)(s))
	return s, nil
}

// Register registers the ECDS and LDS services on g.
func (s *Server) Register(g *grpc.Server) {
	extensionv3.RegisterExtensionConfigDiscoveryServiceServer(g, s.xds)
	listenerservicev3.RegisterListenerDiscoveryServiceServer(g, s.xds)
}

// Run pushes every change of the engine's workload configurations to the
// proxies of the workloads that changed, until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	for {
		changed := s.engine.Changed()
		s.scan(time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// scan rebuilds the resources of every workload with a proxy whose
// configuration changed, and answers the watches that now have news.
func (s *Server) scan(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var r *round
	for wk, st := range s.workloads {
		if !s.refresh(wk, st) {
			continue
		}
		if r == nil {
			r = &round{start: now}
		}
		st.round = r
		for w := range st.watches {
			if s.answer(st, w, &r) {
				delete(st.watches, w)
			}
		}
	}
}

// refresh brings st's resources up to date and reports whether they
// changed. A workload the engine no longer knows keeps its last resources:
// its proxy is not opened up by a pod deletion it has not yet seen.
func (s *Server) refresh(wk workloadKey, st *workloadState) bool {
	cfg, ok, _ := s.engine.Workload(wk.ns, wk.name)
	if !ok || cfg == nil || (st.known && cfg.Generation == st.gen) {
		return false
	}
	res, err := buildResources(cfg)
	if err == nil {
		// The listener is rendered again only when the modes changed.
		key := listenerKey(cfg.MTLS)
		if l, ok := st.res[InboundListener]; ok && st.listenerKey == key {
			res[InboundListener] = l
		} else if res[InboundListener], err = listenerResource(cfg); err == nil {
			st.listenerKey = key
		}
	}
	if err != nil {
		s.log.Error("xds: building resources; the proxies keep their last config", "workload", wk.String(), "error", err)
		return false
	}
	changed := !st.known || !sameVersions(st.res, res)
	st.gen, st.known, st.res = cfg.Generation, true, res
	return changed
}

func sameVersions(a, b resourceSet) bool {
	if len(a) != len(b) {
		return false
	}
	for n, r := range a {
		if b[n].version != r.version {
			return false
		}
	}
	return true
}

// answer sends w the resources it lacks, if any, and reports whether it
// did. The response joins the change round *r, if any.
func (s *Server) answer(st *workloadState, w *watch, r **round) bool {
	var (
		key  any // the response's entry in s.inflight
		api  string
		send func()
	)
	if w.ch != nil {
		resp := sotwResponse(st, w.req, w.sub)
		if resp == nil {
			return false
		}
		key, api, send = resp.DiscoveryResponse, "sotw", func() { w.ch <- resp }
	} else {
		resp := deltaResponse(st, w.dreq, w.sub)
		if resp == nil {
			return false
		}
		key, api, send = resp.DeltaDiscoveryResponse, "delta", func() { w.dch <- resp }
	}
	if r != nil && *r != nil && !(*r).done {
		(*r).pending++
		s.inflight[key] = *r
	}
	w.sent = key
	send()
	s.metrics.pushed(api)
	return true
}

// namesOf returns the resource names served for a type.
func namesOf(typ string) []string {
	if typ == listenerTypeURL {
		return []string{InboundListener}
	}
	return ResourceNames
}

// requested returns the resource names of type typ a subscription asks
// for.
func requested(typ string, sub cachev3.Subscription) []string {
	if sub.IsWildcard() {
		return namesOf(typ)
	}
	var out []string
	for _, n := range namesOf(typ) {
		if _, ok := sub.SubscribedResources()[n]; ok {
			out = append(out, n)
		}
	}
	return out
}

func sotwResponse(st *workloadState, req *cachev3.Request, sub cachev3.Subscription) *cachev3.PassthroughResponse {
	if !st.known {
		return nil
	}
	names := requested(req.GetTypeUrl(), sub)
	returned := sub.ReturnedResources()
	news := false
	for _, n := range names {
		if v, ok := returned[n]; !ok || v != st.res[n].version {
			news = true
		}
	}
	if !news {
		return nil
	}
	out := &discoveryv3.DiscoveryResponse{TypeUrl: req.GetTypeUrl(), Resources: make([]*anypb.Any, 0, len(names))}
	versions := make(map[string]string, len(names))
	h := sha256.New()
	for _, n := range names {
		r := st.res[n]
		out.Resources = append(out.Resources, r.any)
		versions[n] = r.version
		fmt.Fprintf(h, "%s=%s;", n, r.version)
	}
	out.VersionInfo = hex.EncodeToString(h.Sum(nil)[:8])
	return &cachev3.PassthroughResponse{Request: req, DiscoveryResponse: out, ReturnedResources: versions}
}

func deltaResponse(st *workloadState, req *cachev3.DeltaRequest, sub cachev3.Subscription) *cachev3.DeltaPassthroughResponse {
	if !st.known {
		return nil
	}
	returned := sub.ReturnedResources()
	next := maps.Clone(returned)
	if next == nil {
		next = map[string]string{}
	}
	out := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: req.GetTypeUrl(), SystemVersionInfo: strconv.FormatUint(st.gen, 10)}
	for _, n := range requested(req.GetTypeUrl(), sub) {
		r := st.res[n]
		if v, ok := returned[n]; ok && v == r.version {
			continue
		}
		out.Resources = append(out.Resources, &discoveryv3.Resource{Name: n, Version: r.version, Resource: r.any})
		next[n] = r.version
	}
	if len(out.Resources) == 0 {
		return nil
	}
	return &cachev3.DeltaPassthroughResponse{DeltaRequest: req, NextVersionMap: next, DeltaDiscoveryResponse: out}
}

// state returns the state of wk, creating and filling it.
func (s *Server) state(wk workloadKey) *workloadState {
	st, ok := s.workloads[wk]
	if !ok {
		st = &workloadState{watches: map[*watch]struct{}{}}
		s.workloads[wk] = st
		s.refresh(wk, st)
	}
	return st
}

func (s *Server) dropIfUnused(wk workloadKey, st *workloadState) {
	if st.streams == 0 && len(st.watches) == 0 && s.workloads[wk] == st {
		delete(s.workloads, wk)
	}
}

// cacheAdapter is the Server seen as go-control-plane's cache.
type cacheAdapter Server

var _ cachev3.Cache = (*cacheAdapter)(nil)

// watchedWorkload checks that a watch asks for a served type and returns
// the workload its node names.
func watchedWorkload(asked string, node *corev3.Node) (workloadKey, error) {
	if asked != typeURL && asked != listenerTypeURL {
		return workloadKey{}, status.Errorf(codes.InvalidArgument, "type %q is not served", asked)
	}
	return workloadOf(node)
}

func workloadOf(node *corev3.Node) (workloadKey, error) {
	p, err := ParseNodeID(node.GetId())
	if err != nil {
		return workloadKey{}, status.Error(codes.InvalidArgument, err.Error())
	}
	return workloadKey{p.Namespace, p.Pod}, nil
}

// CreateWatch implements cache.ConfigWatcher for state-of-the-world
// streams.
func (c *cacheAdapter) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	s := (*Server)(c)
	wk, err := watchedWorkload(req.GetTypeUrl(), req.GetNode())
	if err != nil {
		return nil, err
	}
	w := &watch{req: req, sub: sub, ch: ch}
	return s.open(wk, w), nil
}

// CreateDeltaWatch implements cache.ConfigWatcher for delta streams.
func (c *cacheAdapter) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	s := (*Server)(c)
	wk, err := watchedWorkload(req.GetTypeUrl(), req.GetNode())
	if err != nil {
		return nil, err
	}
	w := &watch{dreq: req, sub: sub, dch: ch}
	return s.open(wk, w), nil
}

// open answers w at once if it lacks resources, or parks it until they
// change; it returns the cancel function.
func (s *Server) open(wk workloadKey, w *watch) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state(wk)
	if !st.known || !s.answer(st, w, &st.round) {
		st.watches[w] = struct{}{}
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(st.watches, w)
		// A response the stream ended before sending leaves its round.
		if r, ok := s.inflight[w.sent]; ok && w.sent != nil {
			delete(s.inflight, w.sent)
			s.finish(r)
		}
		s.dropIfUnused(wk, st)
	}
}

// Fetch implements cache.ConfigFetcher. REST fetches are not served: a
// proxy is identified on a stream.
func (c *cacheAdapter) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, status.Error(codes.Unimplemented, "fetch is not served; open an ECDS stream")
}

// callbacks identify proxies and track ACKs and NACKs.
type callbacks Server

var _ serverv3.Callbacks = (*callbacks)(nil)

// peerID returns the SPIFFE ID of the stream's verified client
// certificate.
func peerID(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.PeerCertificates) == 0 {
		return "", errors.New("no verified client certificate")
	}
	var ids []*url.URL
	for _, u := range ti.State.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			ids = append(ids, u)
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("client certificate has %d SPIFFE IDs, want 1", len(ids))
	}
	return ids[0].String(), nil
}

func (c *callbacks) open(ctx context.Context, id streamKey) error {
	s := (*Server)(c)
	pid, err := peerID(ctx)
	if err != nil {
		s.metrics.refused("identity")
		return status.Errorf(codes.Unauthenticated, "xds: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.streams) >= s.max {
		s.metrics.refused("limit")
		return status.Errorf(codes.ResourceExhausted, "xds: %d streams open, the limit", len(s.streams))
	}
	s.streams[id] = &streamState{peerID: pid, delta: id.delta}
	return nil
}

func (c *callbacks) closed(id streamKey) {
	s := (*Server)(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	if !ok {
		return
	}
	delete(s.streams, id)
	if st.round != nil {
		s.finish(st.round)
	}
	if st.bound {
		s.metrics.connected(-1)
		if ws, ok := s.workloads[st.wk]; ok {
			ws.streams--
			s.dropIfUnused(st.wk, ws)
		}
	}
}

// request binds a stream to its proxy on the first request, checking the
// proxy's identity, and records ACKs and NACKs.
// maxNames bounds the resource names one request may name: only a few
// exist, so a long list is hostile.
const maxNames = 16

// checkNames refuses resource names that are not served, so that no
// subscription can grow without bound.
func checkNames(typ string, names []string) error {
	if len(names) > maxNames {
		return status.Errorf(codes.InvalidArgument, "xds: %d resource names in one request, more than the limit of %d", len(names), maxNames)
	}
	for _, n := range names {
		if n != "*" && !slices.Contains(namesOf(typ), n) {
			return status.Errorf(codes.InvalidArgument, "xds: resource %q is not served (served: %v)", clip.String(n, 128), namesOf(typ))
		}
	}
	return nil
}

func (c *callbacks) request(id streamKey, node *corev3.Node, nonce string, errDetail *status.Status) error {
	s := (*Server)(c)
	s.mu.Lock()
	st, ok := s.streams[id]
	if !ok {
		s.mu.Unlock()
		return status.Error(codes.Internal, "xds: unknown stream")
	}
	if !st.bound {
		s.mu.Unlock()
		if err := s.bind(id, st, node); err != nil {
			s.metrics.refused("identity")
			s.log.Warn("xds: proxy refused", "node", clip.String(node.GetId(), 128), "peer", st.peerID, "error", err)
			return err
		}
		return nil
	}
	defer s.mu.Unlock()
	if node.GetId() != "" && node.GetId() != st.node {
		return status.Errorf(codes.PermissionDenied, "xds: node ID changed on the stream from %q", clip.String(st.node, 128))
	}
	if nonce == "" || nonce != st.nonce {
		return nil // not an answer to the last response
	}
	st.nonce = ""
	if errDetail != nil {
		s.metrics.answered(false)
		s.log.Warn("xds: proxy rejected its config (NACK); it keeps its last good config", "workload", st.wk.String(),
			"node", st.node, "error", clip.String(errDetail.Message(), 512))
	} else {
		s.metrics.answered(true)
	}
	if st.round != nil {
		s.finish(st.round)
		st.round = nil
	}
	return nil
}

// bind checks that the client certificate is the pod's service account.
func (s *Server) bind(id streamKey, st *streamState, node *corev3.Node) error {
	p, err := ParseNodeID(node.GetId())
	if err != nil {
		return status.Error(codes.InvalidArgument, "xds: "+err.Error())
	}
	sa, ok := s.pods.ServiceAccount(p.Namespace, p.Pod)
	if !ok {
		return status.Errorf(codes.Unavailable, "xds: pod %s/%s is not known (yet)", p.Namespace, p.Pod)
	}
	want := (&url.URL{Scheme: "spiffe", Host: s.td, Path: "/ns/" + p.Namespace + "/sa/" + sa}).String()
	if st.peerID != want {
		return status.Errorf(codes.PermissionDenied, "xds: client certificate %s is not the identity of pod %s/%s (%s)", st.peerID, p.Namespace, p.Pod, want)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.streams[id]; !ok || cur != st {
		return status.Error(codes.Canceled, "xds: stream closed")
	}
	st.bound, st.node, st.wk = true, node.GetId(), workloadKey{p.Namespace, p.Pod}
	s.state(st.wk).streams++
	s.metrics.connected(1)
	return nil
}

// response records the nonce of a response and the change it carries.
func (c *callbacks) response(id streamKey, nonce string, key any) {
	s := (*Server)(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	r := s.inflight[key]
	delete(s.inflight, key)
	if !ok {
		if r != nil {
			s.finish(r)
		}
		return
	}
	if st.round != nil {
		s.finish(st.round) // superseded before it was answered
	}
	st.nonce, st.round = nonce, r
}

func (s *Server) finish(r *round) {
	r.pending--
	if r.pending == 0 && !r.done {
		r.done = true
		s.metrics.changeDone(time.Since(r.start))
	}
}

func (c *callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, streamKey{false, id})
}

func (c *callbacks) OnStreamClosed(id int64, _ *corev3.Node) { c.closed(streamKey{false, id}) }

func (c *callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	if err := checkNames(req.GetTypeUrl(), req.GetResourceNames()); err != nil {
		return err
	}
	var detail *status.Status
	if req.GetErrorDetail() != nil {
		detail = status.FromProto(req.GetErrorDetail())
	}
	return c.request(streamKey{false, id}, req.GetNode(), req.GetResponseNonce(), detail)
}

func (c *callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.response(streamKey{false, id}, resp.GetNonce(), resp)
}

func (c *callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, streamKey{true, id})
}

func (c *callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) { c.closed(streamKey{true, id}) }

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	if err := checkNames(req.GetTypeUrl(), req.GetResourceNamesSubscribe()); err != nil {
		return err
	}
	if len(req.GetResourceNamesUnsubscribe()) > maxNames {
		return status.Errorf(codes.InvalidArgument, "xds: %d names to unsubscribe, more than the limit of %d", len(req.GetResourceNamesUnsubscribe()), maxNames)
	}
	var detail *status.Status
	if req.GetErrorDetail() != nil {
		detail = status.FromProto(req.GetErrorDetail())
	}
	return c.request(streamKey{true, id}, req.GetNode(), req.GetResponseNonce(), detail)
}

func (c *callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.response(streamKey{true, id}, resp.GetNonce(), resp)
}

func (c *callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "fetch is not served")
}

func (c *callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

// GRPCServerOptions are the gRPC server options the policy server runs
// with: small per-connection buffers (a proxy's configs are a few KiB, and
// thousands of proxies stay connected), a shared write buffer, and bounds
// on what one client can send.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ReadBufferSize(4 << 10),
		grpc.WriteBufferSize(4 << 10),
		grpc.MaxRecvMsgSize(1 << 20),
		grpc.MaxHeaderListSize(32 << 10),
		grpc.MaxConcurrentStreams(16),
	}
}
