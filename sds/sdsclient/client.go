// Package sdsclient is a client of Envoy's Secret Discovery Service that
// behaves as Envoy does: the first request on a stream carries the node, an
// ACK echoes the response's version and nonce, a NACK sets error_detail and
// keeps the last accepted version, and every secret received is checked
// before it is accepted.
//
// Fetch is the one-call form, for tools that want the current secrets:
//
//	secrets, err := sdsclient.Fetch(ctx, "/var/run/secrets/workload-spiffe-uds/socket", "default", "ROOTCA")
//
// Stream and DeltaStream expose each protocol step, for tests and for
// programs that follow rotations.
package sdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// secretTypeURL is the xDS type URL of
// envoy.extensions.transport_sockets.tls.v3.Secret, the one resource type
// asked for and accepted. The package depends on go-control-plane's types
// alone, never on the server it talks to.
var secretTypeURL = "type.googleapis.com/" + string((&tlsv3.Secret{}).ProtoReflect().Descriptor().FullName())

// Client is a connection to one SDS server. It is safe for concurrent use;
// each Stream is not.
type Client struct {
	conn *grpc.ClientConn
	sds  secretv3.SecretDiscoveryServiceClient
	node *corev3.Node
}

// Option configures a Client.
type Option interface{ apply(*config) }

type config struct {
	node     *corev3.Node
	dialOpts []grpc.DialOption
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithNode sets the node the client identifies as in the first request of
// each stream. The default names the host, with cluster "sdsclient".
func WithNode(n *corev3.Node) Option {
	return optionFunc(func(c *config) { c.node = n })
}

// WithDialOptions adds gRPC dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return optionFunc(func(c *config) { c.dialOpts = append(c.dialOpts, opts...) })
}

// New returns a Client for the SDS server listening on the Unix socket at
// socketPath. It connects lazily, on the first call.
func New(socketPath string, opts ...Option) (*Client, error) {
	if socketPath == "" {
		return nil, errors.New("sdsclient: empty socket path")
	}
	abs, err := filepath.Abs(socketPath)
	if err != nil {
		return nil, fmt.Errorf("sdsclient: socket path %q: %w", socketPath, err)
	}
	host, _ := os.Hostname()
	c := config{node: &corev3.Node{Id: "sdsclient~" + host, Cluster: "sdsclient"}}
	for _, o := range opts {
		o.apply(&c)
	}
	dialOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, c.dialOpts...)
	conn, err := grpc.NewClient("unix://"+abs, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("sdsclient: could not create client for %s: %w", abs, err)
	}
	return &Client{conn: conn, sds: secretv3.NewSecretDiscoveryServiceClient(conn), node: c.node}, nil
}

// Close closes the connection and every stream on it.
func (c *Client) Close() error { return c.conn.Close() }

// Fetch opens a state-of-the-world stream to the server at socketPath,
// subscribes to names, and returns each named secret once all have
// arrived, keyed by name. See Client.Fetch.
func Fetch(ctx context.Context, socketPath string, names ...string) (map[string]*tlsv3.Secret, error) {
	c, err := New(socketPath)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Fetch(ctx, names...)
}

// Fetch subscribes to names on a new stream, waits until every one has
// arrived and passed the checks Envoy applies, acknowledges the response,
// and returns the secrets keyed by name. A name the server reports an error
// for fails the call with that error. ctx bounds the wait: a server that has
// no certificate yet sends nothing, so callers should set a deadline.
func (c *Client) Fetch(ctx context.Context, names ...string) (map[string]*tlsv3.Secret, error) {
	if len(names) == 0 {
		return nil, errors.New("sdsclient: no secret names to fetch")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	// A send fails with io.EOF when the server has already ended the
	// stream (a refusal, say); the next Recv then returns its status.
	if err := s.Subscribe(names...); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return nil, err
		}
		if resp.Invalid != nil {
			_ = s.NACK(resp, resp.Invalid.Error())
			return nil, resp.Invalid
		}
		if err := s.ACK(resp); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		for _, n := range names {
			if st, ok := resp.Errors[n]; ok {
				return nil, fmt.Errorf("sdsclient: server reported an error for %q: %s", n, st.GetMessage())
			}
		}
		if complete(resp.Secrets, names) {
			return resp.Secrets, nil
		}
	}
}

func complete(got map[string]*tlsv3.Secret, names []string) bool {
	for _, n := range names {
		if got[n] == nil {
			return false
		}
	}
	return true
}

// FetchSecrets calls the unary FetchSecrets RPC for names and decodes the
// answer. Unlike Fetch it does not wait: the server answers with what it
// has now, or fails with Unavailable when a named secret has no content yet.
func (c *Client) FetchSecrets(ctx context.Context, names ...string) (*Response, error) {
	req := &discoveryv3.DiscoveryRequest{Node: c.node, ResourceNames: names, TypeUrl: secretTypeURL}
	raw, err := c.sds.FetchSecrets(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("sdsclient: FetchSecrets: %w", err)
	}
	return decodeResponse(raw), nil
}
