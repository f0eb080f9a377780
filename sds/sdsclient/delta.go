package sdsclient

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// DeltaStream is an incremental SDS stream (DeltaSecrets). It tracks the
// version of each resource it holds, as Envoy does. One goroutine may call
// Recv while another calls the other methods.
type DeltaStream struct {
	c      *Client
	cancel context.CancelFunc
	stream grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]

	mu        sync.Mutex
	sentFirst bool
	initial   map[string]string
	known     map[string]string
}

// DeltaResponse is one DeltaDiscoveryResponse, decoded.
type DeltaResponse struct {
	// SystemVersion and Nonce are the response's system_version_info and
	// nonce.
	SystemVersion, Nonce string
	// Secrets are the added or updated secrets that passed the checks,
	// keyed by name, and Versions their resource versions.
	Secrets  map[string]*tlsv3.Secret
	Versions map[string]string
	// Removed names the resources the server removed.
	Removed []string
	// Errors are the response's resource_errors, keyed by resource name.
	Errors map[string]*rpcstatus.Status
	// Invalid is why the response must be rejected, or nil.
	Invalid error
	// Raw is the response as received.
	Raw *discoveryv3.DeltaDiscoveryResponse
}

// DeltaStream opens an incremental stream. initial, which may be nil,
// declares the resource versions already held, as a client that reconnects
// does in initial_resource_versions. Nothing is sent until Subscribe.
func (c *Client) DeltaStream(ctx context.Context, initial map[string]string) (*DeltaStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.sds.DeltaSecrets(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("sdsclient: could not open DeltaSecrets: %w", err)
	}
	known := maps.Clone(initial)
	if known == nil {
		known = map[string]string{}
	}
	return &DeltaStream{c: c, cancel: cancel, stream: st, initial: maps.Clone(initial), known: known}, nil
}

// Subscribe adds names to the subscription.
func (d *DeltaStream) Subscribe(names ...string) error {
	return d.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretTypeURL, ResourceNamesSubscribe: names})
}

// Unsubscribe removes names from the subscription and forgets them.
func (d *DeltaStream) Unsubscribe(names ...string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range names {
		delete(d.known, n)
	}
	return d.sendLocked(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretTypeURL, ResourceNamesUnsubscribe: names})
}

// Recv waits for the next response and checks it. It neither accepts nor
// rejects it: call ACK or NACK (or use Next).
func (d *DeltaStream) Recv() (*DeltaResponse, error) {
	raw, err := d.stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("sdsclient: stream ended: %w", err)
	}
	resp := &DeltaResponse{
		SystemVersion: raw.GetSystemVersionInfo(),
		Nonce:         raw.GetNonce(),
		Secrets:       map[string]*tlsv3.Secret{},
		Versions:      map[string]string{},
		Removed:       raw.GetRemovedResources(),
		Errors:        map[string]*rpcstatus.Status{},
		Raw:           raw,
	}
	for _, e := range raw.GetResourceErrors() {
		resp.Errors[e.GetResourceName().GetName()] = e.GetErrorDetail()
	}
	var errs []error
	if raw.GetNonce() == "" {
		errs = append(errs, errors.New("sdsclient: delta response has no nonce"))
	}
	if raw.GetTypeUrl() != secretTypeURL {
		errs = append(errs, fmt.Errorf("sdsclient: response type_url is %q, want %q", raw.GetTypeUrl(), secretTypeURL))
	}
	for i, r := range raw.GetResources() {
		secret, err := decodeSecret(r.GetResource())
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("resource %d: %w", i, err))
		case secret.GetName() != r.GetName():
			errs = append(errs, fmt.Errorf("sdsclient: resource %q holds a secret named %q", r.GetName(), secret.GetName()))
		default:
			resp.Secrets[r.GetName()] = secret
			resp.Versions[r.GetName()] = r.GetVersion()
		}
	}
	resp.Invalid = errors.Join(errs...)
	return resp, nil
}

// ACK accepts resp: its resources and removals update the versions held,
// and its nonce is echoed.
func (d *DeltaStream) ACK(resp *DeltaResponse) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	maps.Copy(d.known, resp.Versions)
	for _, n := range resp.Removed {
		delete(d.known, n)
	}
	return d.sendLocked(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretTypeURL, ResponseNonce: resp.Nonce})
}

// NACK rejects resp with msg; the versions held do not change.
func (d *DeltaStream) NACK(resp *DeltaResponse, msg string) error {
	return d.Send(&discoveryv3.DeltaDiscoveryRequest{
		TypeUrl:       secretTypeURL,
		ResponseNonce: resp.Nonce,
		ErrorDetail:   &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg},
	})
}

// Next receives the next response and answers it as Envoy would.
func (d *DeltaStream) Next() (*DeltaResponse, error) {
	resp, err := d.Recv()
	if err != nil {
		return nil, err
	}
	if resp.Invalid != nil {
		return resp, d.NACK(resp, resp.Invalid.Error())
	}
	return resp, d.ACK(resp)
}

// Known returns the version of each resource held.
func (d *DeltaStream) Known() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.known)
}

// Send sends req as it is, except that the first request on the stream
// gets the node and the initial resource versions when it has none.
func (d *DeltaStream) Send(req *discoveryv3.DeltaDiscoveryRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sendLocked(req)
}

func (d *DeltaStream) sendLocked(req *discoveryv3.DeltaDiscoveryRequest) error {
	if !d.sentFirst {
		if req.Node == nil {
			req.Node = d.c.node
		}
		if req.InitialResourceVersions == nil && len(d.initial) > 0 {
			req.InitialResourceVersions = d.initial
		}
	}
	d.sentFirst = true
	if err := d.stream.Send(req); err != nil {
		return fmt.Errorf("sdsclient: could not send request: %w", err)
	}
	return nil
}

// Close ends the stream.
func (d *DeltaStream) Close() error {
	err := d.stream.CloseSend()
	d.cancel()
	return err
}
