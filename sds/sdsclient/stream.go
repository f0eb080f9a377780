package sdsclient

import (
	"context"
	"errors"
	"fmt"
	"sync"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Stream is a state-of-the-world SDS stream (StreamSecrets). It tracks what
// Envoy tracks: the subscribed names, the last accepted version and the
// nonce of the latest response answered. One goroutine may call Recv while
// another calls the other methods.
type Stream struct {
	c      *Client
	cancel context.CancelFunc
	stream grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]

	mu       sync.Mutex
	sentNode bool
	names    []string
	accepted string // version_info of the last accepted response
	nonce    string // nonce of the last response answered
}

// Response is one DiscoveryResponse, decoded.
type Response struct {
	// Version and Nonce are the response's version_info and nonce.
	Version, Nonce string
	// Secrets are the secrets in the response that passed the checks,
	// keyed by name.
	Secrets map[string]*tlsv3.Secret
	// Errors are the response's resource_errors, keyed by resource name.
	Errors map[string]*rpcstatus.Status
	// Invalid is why the response must be rejected (a wrong type, a secret
	// that fails validation, a key that does not match its certificate), or
	// nil. Envoy would NACK such a response.
	Invalid error
	// Raw is the response as received.
	Raw *discoveryv3.DiscoveryResponse
}

// Stream opens a state-of-the-world stream. Nothing is sent until
// Subscribe. The stream ends when ctx is done or Close is called.
func (c *Client) Stream(ctx context.Context) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.sds.StreamSecrets(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("sdsclient: could not open StreamSecrets: %w", err)
	}
	return &Stream{c: c, cancel: cancel, stream: st}, nil
}

// Subscribe replaces the subscription with names (none unsubscribes from
// everything). Like Envoy, it echoes the last accepted version and the
// latest nonce, and the first request carries the node.
func (s *Stream) Subscribe(names ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = append([]string(nil), names...)
	return s.sendLocked(s.requestLocked())
}

// Recv waits for the next response and checks it. It neither acknowledges
// nor rejects it: call ACK or NACK (or use Next).
func (s *Stream) Recv() (*Response, error) {
	raw, err := s.stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("sdsclient: stream ended: %w", err)
	}
	return decodeResponse(raw), nil
}

// decodeResponse decodes and checks a state-of-the-world response.
func decodeResponse(raw *discoveryv3.DiscoveryResponse) *Response {
	resp := &Response{
		Version: raw.GetVersionInfo(),
		Nonce:   raw.GetNonce(),
		Secrets: map[string]*tlsv3.Secret{},
		Errors:  map[string]*rpcstatus.Status{},
		Raw:     raw,
	}
	for _, e := range raw.GetResourceErrors() {
		resp.Errors[e.GetResourceName().GetName()] = e.GetErrorDetail()
	}
	var errs []error
	if raw.GetTypeUrl() != secretTypeURL {
		errs = append(errs, fmt.Errorf("sdsclient: response type_url is %q, want %q", raw.GetTypeUrl(), secretTypeURL))
	}
	for i, a := range raw.GetResources() {
		secret, err := decodeSecret(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("resource %d: %w", i, err))
			continue
		}
		if _, dup := resp.Secrets[secret.GetName()]; dup {
			errs = append(errs, fmt.Errorf("sdsclient: resource %d: secret %q appears twice", i, secret.GetName()))
			continue
		}
		resp.Secrets[secret.GetName()] = secret
	}
	resp.Invalid = errors.Join(errs...)
	return resp
}

// ACK accepts resp: it echoes its version and nonce with the current
// subscription.
func (s *Stream) ACK(resp *Response) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted = resp.Version
	s.nonce = resp.Nonce
	return s.sendLocked(s.requestLocked())
}

// NACK rejects resp: it echoes its nonce, keeps the last accepted version
// and sets error_detail to msg.
func (s *Stream) NACK(resp *Response, msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nonce = resp.Nonce
	req := s.requestLocked()
	req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg}
	return s.sendLocked(req)
}

// Next receives the next response and answers it as Envoy would: an ACK
// when it passes the checks, a NACK naming the problem when it does not.
func (s *Stream) Next() (*Response, error) {
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	if resp.Invalid != nil {
		return resp, s.NACK(resp, resp.Invalid.Error())
	}
	return resp, s.ACK(resp)
}

// Send sends req as it is, apart from the node, which is added to the
// first request when req has none. It is for requests Envoy would not
// send, such as one with a stale nonce.
func (s *Stream) Send(req *discoveryv3.DiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sendLocked(req)
}

func (s *Stream) sendLocked(req *discoveryv3.DiscoveryRequest) error {
	if !s.sentNode && req.Node == nil {
		req.Node = s.c.node
	}
	s.sentNode = true
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("sdsclient: could not send request: %w", err)
	}
	return nil
}

// CloseSend tells the server that no more requests will come; requests
// already sent are still delivered. A server then ends the stream, which
// Recv reports as io.EOF. Close after that, or to give up waiting.
func (s *Stream) CloseSend() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream.CloseSend()
}

// Close ends the stream at once: requests not yet delivered may be lost.
func (s *Stream) Close() error {
	err := s.stream.CloseSend()
	s.cancel()
	return err
}

// requestLocked is the request Envoy would send now.
func (s *Stream) requestLocked() *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{
		VersionInfo:   s.accepted,
		ResourceNames: append([]string(nil), s.names...),
		TypeUrl:       secretTypeURL,
		ResponseNonce: s.nonce,
	}
}
