// Package sdsclienttest holds SDS streams for tests: each reads its
// responses in the background, so that a test can wait for the next one
// with a timeout, or make sure that none arrives.
package sdsclienttest

import (
	"context"
	"fmt"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

const (
	// DefaultTimeout is how long Await waits for a response unless
	// Timeout says otherwise. It only fires when none ever comes.
	DefaultTimeout = 30 * time.Second
	// DefaultQuiet is how long None waits to be sure that nothing
	// arrives, unless Quiet says otherwise.
	DefaultQuiet = 300 * time.Millisecond
)

// Received holds the responses of a stream, read in the background. R is
// the stream's response type: *sdsclient.Response for state-of-the-world,
// *sdsclient.DeltaResponse for delta.
type Received[R any] struct {
	// Timeout is how long Await waits for a response; Quiet is how long
	// None waits to be sure that none arrives.
	Timeout, Quiet time.Duration

	t    testing.TB
	resp chan R
	errc chan error
	// ack answers a response with an ACK; invalid returns why the client
	// rejects it, or nil; secrets returns its secrets by name; describe
	// names it in a failure message.
	ack      func(R) error
	invalid  func(R) error
	secrets  func(R) map[string]*tlsv3.Secret
	describe func(R) string
}

// receive starts reading responses with recv until the stream ends.
func receive[R any](t testing.TB, recv func() (R, error), r *Received[R]) *Received[R] {
	r.t, r.Timeout, r.Quiet = t, DefaultTimeout, DefaultQuiet
	r.resp, r.errc = make(chan R, 16), make(chan error, 1)
	go func() {
		for {
			m, err := recv()
			if err != nil {
				r.errc <- err
				return
			}
			r.resp <- m
		}
	}()
	return r
}

// Await waits for the next response and fails the test if the client
// finds it invalid, if the stream ends first, or after Timeout.
func (r *Received[R]) Await() R {
	r.t.Helper()
	select {
	case m := <-r.resp:
		if err := r.invalid(m); err != nil {
			r.t.Fatalf("server sent an invalid response: %v", err)
		}
		return m
	case err := <-r.errc:
		r.t.Fatalf("stream ended: %v", err)
	case <-time.After(r.Timeout):
		r.t.Fatalf("no response within %s", r.Timeout)
	}
	var zero R
	return zero
}

// AwaitACK waits for the next response, as Await does, and acknowledges
// it.
func (r *Received[R]) AwaitACK() R {
	r.t.Helper()
	m := r.Await()
	if err := r.ack(m); err != nil {
		r.t.Fatal(err)
	}
	return m
}

// None fails the test if a response arrives, or the stream ends, within
// Quiet.
func (r *Received[R]) None() {
	r.t.Helper()
	select {
	case m := <-r.resp:
		r.t.Fatalf("unexpected response: %s", r.describe(m))
	case err := <-r.errc:
		r.t.Fatalf("stream ended: %v", err)
	case <-time.After(r.Quiet):
	}
}

// Secret returns the secret name in resp, or nil.
func (r *Received[R]) Secret(resp R, name string) *tlsv3.Secret {
	return r.secrets(resp)[name]
}

// Responses delivers the responses not yet taken by Await.
func (r *Received[R]) Responses() <-chan R { return r.resp }

// Err delivers the error the stream ended with.
func (r *Received[R]) Err() <-chan error { return r.errc }

// SotW is a state-of-the-world stream whose responses are received in the
// background.
type SotW struct {
	*sdsclient.Stream
	*Received[*sdsclient.Response]
}

// OpenSotW opens a state-of-the-world stream of c, closed when the test
// ends.
func OpenSotW(t testing.TB, c *sdsclient.Client) *SotW {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &SotW{Stream: st, Received: receive(t, st.Recv, &Received[*sdsclient.Response]{
		ack:     st.ACK,
		invalid: func(r *sdsclient.Response) error { return r.Invalid },
		secrets: func(r *sdsclient.Response) map[string]*tlsv3.Secret { return r.Secrets },
		describe: func(r *sdsclient.Response) string {
			return fmt.Sprintf("version %q nonce %q, %d secrets", r.Version, r.Nonce, len(r.Secrets))
		},
	})}
}

// Delta is an incremental stream whose responses are received in the
// background.
type Delta struct {
	*sdsclient.DeltaStream
	*Received[*sdsclient.DeltaResponse]
}

// OpenDelta opens an incremental stream of c, with the initial resource
// versions initial, closed when the test ends.
func OpenDelta(t testing.TB, c *sdsclient.Client, initial map[string]string) *Delta {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := c.DeltaStream(ctx, initial)
	if err != nil {
		t.Fatal(err)
	}
	return &Delta{DeltaStream: st, Received: receive(t, st.Recv, &Received[*sdsclient.DeltaResponse]{
		ack:     st.ACK,
		invalid: func(r *sdsclient.DeltaResponse) error { return r.Invalid },
		secrets: func(r *sdsclient.DeltaResponse) map[string]*tlsv3.Secret { return r.Secrets },
		describe: func(r *sdsclient.DeltaResponse) string {
			return fmt.Sprintf("nonce %q, %d resources, removed %v", r.Nonce, len(r.Secrets), r.Removed)
		},
	})}
}

// Stream is what SotW and Delta have in common, for the scenarios that go
// the same over both forms of SDS. R is the stream's response type.
type Stream[R any] interface {
	Subscribe(names ...string) error
	ACK(resp R) error
	NACK(resp R, msg string) error
	Await() R
	AwaitACK() R
	None()
	Secret(resp R, name string) *tlsv3.Secret
}

var (
	_ Stream[*sdsclient.Response]      = (*SotW)(nil)
	_ Stream[*sdsclient.DeltaResponse] = (*Delta)(nil)
)
