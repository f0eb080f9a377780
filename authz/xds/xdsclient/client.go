// Package xdsclient is an ECDS client that behaves as Envoy does, for
// tests and load runs of the policy server: the first request carries the
// node, an ACK echoes the version and nonce, a NACK carries error_detail
// and keeps the previous version, delta streams subscribe and unsubscribe
// by name. Every received config is checked with the proto's ValidateAll,
// the constraints Envoy enforces on load.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	extensionv3 "github.com/envoyproxy/go-control-plane/envoy/service/extension/v3"
	listenerservicev3 "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the ECDS resource type.
const TypeURL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

// ListenerTypeURL is the LDS resource type.
const ListenerTypeURL = "type.googleapis.com/envoy.config.listener.v3.Listener"

// Update is one response as the client handled it.
type Update struct {
	// Names are the resources the response carried.
	Names []string
	// Accepted is false for a NACK; Err says why.
	Accepted bool
	Err      error
	// At is when the response was received.
	At time.Time
}

// Config configures a Client.
type Config struct {
	// NodeID is sent in the first request.
	NodeID string
	// Delta selects the incremental protocol; otherwise state of the world.
	Delta bool
	// Names are the resources subscribed to at start.
	Names []string
	// TypeURL is the resource type; empty means TypeURL (ECDS). With
	// ListenerTypeURL, listeners are kept (see Listeners).
	TypeURL string
	// Reject, when set, is asked about every response after validation; a
	// non-nil error makes the client NACK it.
	Reject func(map[string]*corev3.TypedExtensionConfig) error
}

// Client is one proxy's ECDS stream.
type Client struct {
	cfg    Config
	cancel context.CancelFunc
	sotw   grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	delta  grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]

	sendMu    sync.Mutex
	mu        sync.Mutex
	config    map[string]*corev3.TypedExtensionConfig // last accepted
	listeners map[string]*listenerv3.Listener
	// sotw state
	version string
	names   []string
	updates chan Update
	done    chan struct{}
	err     error
}

// Start opens the stream on conn and sends the first request. Updates are
// delivered on Updates until the stream ends (see Err).
func Start(ctx context.Context, conn grpc.ClientConnInterface, cfg Config) (*Client, error) {
	ctx, cancel := context.WithCancel(ctx)
	if cfg.TypeURL == "" {
		cfg.TypeURL = TypeURL
	}
	c := &Client{cfg: cfg, cancel: cancel, config: map[string]*corev3.TypedExtensionConfig{}, listeners: map[string]*listenerv3.Listener{},
		names: append([]string(nil), cfg.Names...), updates: make(chan Update, 64), done: make(chan struct{})}
	api := extensionv3.NewExtensionConfigDiscoveryServiceClient(conn)
	lds := listenerservicev3.NewListenerDiscoveryServiceClient(conn)
	node := &corev3.Node{Id: cfg.NodeID, Cluster: "castellan-test"}
	var err error
	switch {
	case cfg.Delta && cfg.TypeURL == ListenerTypeURL:
		c.delta, err = lds.DeltaListeners(ctx)
	case cfg.Delta:
		c.delta, err = api.DeltaExtensionConfigs(ctx)
	case cfg.TypeURL == ListenerTypeURL:
		c.sotw, err = lds.StreamListeners(ctx)
	default:
		c.sotw, err = api.StreamExtensionConfigs(ctx)
	}
	if err == nil && cfg.Delta {
		err = c.delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: cfg.TypeURL, ResourceNamesSubscribe: cfg.Names})
	} else if err == nil {
		err = c.sotw.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: cfg.TypeURL, ResourceNames: cfg.Names})
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("xdsclient: opening the stream: %w", err)
	}
	go c.loop()
	return c, nil
}

// Updates delivers every response handled, ACKed or NACKed. It is closed
// when the stream ends.
func (c *Client) Updates() <-chan Update { return c.updates }

// Done is closed when the stream ends.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the stream ended, once Done is closed.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the stream.
func (c *Client) Close() { c.cancel() }

// Config returns the last accepted config, by resource name.
func (c *Client) Config() map[string]*corev3.TypedExtensionConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.config)
}

func (c *Client) loop() {
	var err error
	defer func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.updates)
		close(c.done)
	}()
	for {
		if c.delta != nil {
			var resp *discoveryv3.DeltaDiscoveryResponse
			if resp, err = c.delta.Recv(); err != nil {
				return
			}
			if err = c.handleDelta(resp); err != nil {
				return
			}
			continue
		}
		var resp *discoveryv3.DiscoveryResponse
		if resp, err = c.sotw.Recv(); err != nil {
			return
		}
		if err = c.handleSotw(resp); err != nil {
			return
		}
	}
}

// check validates and decodes resources as Envoy would on load.
func (c *Client) check(anys []*anypb.Any) (map[string]*corev3.TypedExtensionConfig, []string, error) {
	if c.cfg.TypeURL == ListenerTypeURL {
		return c.checkListeners(anys)
	}
	got := map[string]*corev3.TypedExtensionConfig{}
	var names []string
	for _, a := range anys {
		if a.GetTypeUrl() != TypeURL {
			return nil, nil, fmt.Errorf("resource of type %q, want %q", a.GetTypeUrl(), TypeURL)
		}
		var tec corev3.TypedExtensionConfig
		if err := a.UnmarshalTo(&tec); err != nil {
			return nil, nil, err
		}
		if err := tec.ValidateAll(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", tec.GetName(), err)
		}
		if err := validateFilter(tec.GetTypedConfig()); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", tec.GetName(), err)
		}
		got[tec.GetName()] = &tec
		names = append(names, tec.GetName())
	}
	if c.cfg.Reject != nil {
		if err := c.cfg.Reject(got); err != nil {
			return nil, names, err
		}
	}
	return got, names, nil
}

// checkListeners validates listeners and keeps them aside: they are
// applied with the update, as the other configs are.
func (c *Client) checkListeners(anys []*anypb.Any) (map[string]*corev3.TypedExtensionConfig, []string, error) {
	var names []string
	got := map[string]*listenerv3.Listener{}
	for _, a := range anys {
		var l listenerv3.Listener
		if a.GetTypeUrl() != ListenerTypeURL {
			return nil, nil, fmt.Errorf("resource of type %q, want %q", a.GetTypeUrl(), ListenerTypeURL)
		}
		if err := a.UnmarshalTo(&l); err != nil {
			return nil, nil, err
		}
		if err := l.ValidateAll(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", l.GetName(), err)
		}
		got[l.GetName()] = &l
		names = append(names, l.GetName())
	}
	c.mu.Lock()
	maps.Copy(c.listeners, got)
	c.mu.Unlock()
	return map[string]*corev3.TypedExtensionConfig{}, names, nil
}

// Listeners returns the last accepted listeners, by name.
func (c *Client) Listeners() map[string]*listenerv3.Listener {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.listeners)
}

func validateFilter(a *anypb.Any) error {
	var m interface {
		proto.Message
		ValidateAll() error
	}
	switch a.GetTypeUrl() {
	case "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC":
		m = &httprbacv3.RBAC{}
	case "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC":
		m = &netrbacv3.RBAC{}
	default:
		return fmt.Errorf("unexpected filter type %q", a.GetTypeUrl())
	}
	if err := a.UnmarshalTo(m); err != nil {
		return err
	}
	return m.ValidateAll()
}

func (c *Client) handleSotw(resp *discoveryv3.DiscoveryResponse) error {
	got, names, err := c.check(resp.GetResources())
	u := Update{Names: names, Accepted: err == nil, Err: err, At: time.Now()}
	c.mu.Lock()
	req := &discoveryv3.DiscoveryRequest{TypeUrl: c.cfg.TypeURL, ResponseNonce: resp.GetNonce(), ResourceNames: c.names}
	if err == nil {
		maps.Copy(c.config, got)
		c.version = resp.GetVersionInfo()
	} else {
		req.ErrorDetail = &status.Status{Code: 3, Message: err.Error()}
	}
	req.VersionInfo = c.version
	c.mu.Unlock()
	if serr := c.send(func() error { return c.sotw.Send(req) }); serr != nil {
		return serr
	}
	c.updates <- u
	return nil
}

func (c *Client) handleDelta(resp *discoveryv3.DeltaDiscoveryResponse) error {
	anys := make([]*anypb.Any, 0, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		anys = append(anys, r.GetResource())
	}
	got, names, err := c.check(anys)
	u := Update{Names: names, Accepted: err == nil, Err: err, At: time.Now()}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: c.cfg.TypeURL, ResponseNonce: resp.GetNonce()}
	c.mu.Lock()
	if err == nil {
		maps.Copy(c.config, got)
		for _, n := range resp.GetRemovedResources() {
			delete(c.config, n)
		}
	} else {
		req.ErrorDetail = &status.Status{Code: 3, Message: err.Error()}
	}
	c.mu.Unlock()
	if serr := c.send(func() error { return c.delta.Send(req) }); serr != nil {
		return serr
	}
	c.updates <- u
	return nil
}

func (c *Client) send(f func() error) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return f()
}

// Subscribe adds names to a delta subscription.
func (c *Client) Subscribe(names ...string) error {
	if c.delta == nil {
		return errors.New("xdsclient: Subscribe needs a delta stream")
	}
	return c.send(func() error {
		return c.delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: c.cfg.TypeURL, ResourceNamesSubscribe: names})
	})
}

// Unsubscribe removes names from a delta subscription, and forgets them.
func (c *Client) Unsubscribe(names ...string) error {
	if c.delta == nil {
		return errors.New("xdsclient: Unsubscribe needs a delta stream")
	}
	c.mu.Lock()
	for _, n := range names {
		delete(c.config, n)
	}
	c.mu.Unlock()
	return c.send(func() error {
		return c.delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: c.cfg.TypeURL, ResourceNamesUnsubscribe: names})
	})
}

// HTTPFilters returns the accepted configs of names, in order, as the
// HTTP filters Envoy would run; a name without config is left out.
func HTTPFilters(cfg map[string]*corev3.TypedExtensionConfig, names []string) []*hcmv3.HttpFilter {
	var out []*hcmv3.HttpFilter
	for _, n := range names {
		if tec, ok := cfg[n]; ok {
			out = append(out, &hcmv3.HttpFilter{Name: n, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: tec.GetTypedConfig()}})
		}
	}
	return out
}
