package source

import (
	"context"
	"fmt"
	"strings"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/pemder"
	"github.com/castellan-mesh/castellan/sds/sdsclient"
)

// The SDS resource names a proxy asks for: its own certificate and the
// trust bundle, as Istio names them.
const (
	sdsCertName   = "default"
	sdsBundleName = "ROOTCA"
)

// sdsBundleGrace is how long SDS waits for ROOTCA once default has arrived.
const sdsBundleGrace = 2 * time.Second

// sdsCloseGrace is how long SDS waits, once done, for the server to end
// the stream, so that its last ACK or NACK is delivered.
const sdsCloseGrace = time.Second

// SDS fetches the "default" and "ROOTCA" secrets from the SDS server at addr
// ("unix:///path/to/socket") as a proxy would: a state-of-the-world stream
// whose first request carries the node, each response checked and then
// acknowledged, or rejected as Envoy would. A response Envoy would reject is
// still inspected, with the reason as a source-rejected finding. ROOTCA
// becomes the bundle; if it does not arrive shortly after default, the chain
// is inspected without it and a note says so. ctx bounds the wait: a server
// with no certificate yet sends nothing.
func SDS(ctx context.Context, addr string) (inspect.Input, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok || path == "" {
		return inspect.Input{}, fmt.Errorf("source: SDS address %q: want unix:///path/to/socket", addr)
	}
	c, err := sdsclient.New(path)
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: SDS: %w", err)
	}
	defer c.Close()

	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.Stream(streamCtx)
	if err != nil {
		return inspect.Input{}, fmt.Errorf("source: SDS at %s: %w", addr, err)
	}
	defer s.Close()
	if err := s.Subscribe(sdsCertName, sdsBundleName); err != nil {
		return inspect.Input{}, fmt.Errorf("source: SDS at %s: %w", addr, err)
	}

	type recv struct {
		resp *sdsclient.Response
		err  error
	}
	responses := make(chan recv, 1)
	go func() {
		for {
			resp, err := s.Recv()
			select {
			case responses <- recv{resp, err}:
			case <-streamCtx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	// Runs before the stream and the connection are torn down: half-close,
	// and read until the server ends the stream, so that the last ACK or
	// NACK reaches it rather than being dropped with the connection.
	defer func() {
		if s.CloseSend() != nil {
			return
		}
		wait := time.NewTimer(sdsCloseGrace)
		defer wait.Stop()
		for {
			select {
			case r := <-responses:
				if r.err != nil {
					return
				}
			case <-wait.C:
				return
			case <-ctx.Done():
				return
			}
		}
	}()

	in := inspect.Input{Source: "sds:" + addr}
	var (
		haveCert, haveBundle bool
		grace                <-chan time.Time
	)
	timedOut := func() (inspect.Input, error) {
		if haveCert {
			in.Notes = append(in.Notes, fmt.Sprintf("no %s secret arrived before the time limit", sdsBundleName))
			return in, nil
		}
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		return inspect.Input{}, fmt.Errorf("source: SDS at %s: no %s secret before the time limit (does the server have a certificate yet?): %w", addr, sdsCertName, cause)
	}
	for !haveCert || !haveBundle {
		var r recv
		select {
		case r = <-responses:
		case <-grace:
			in.Notes = append(in.Notes, fmt.Sprintf("no %s secret arrived within %s of %s; the chain is not verified against it", sdsBundleName, sdsBundleGrace, sdsCertName))
			return in, nil
		case <-ctx.Done():
			return timedOut()
		}
		if r.err != nil {
			// The stream ends with the deadline, which the server may
			// enforce before the local timer fires: either way the
			// cause is the time limit.
			if ctx.Err() != nil || status.Code(r.err) == codes.DeadlineExceeded {
				return timedOut()
			}
			return inspect.Input{}, fmt.Errorf("source: SDS at %s: %w", addr, r.err)
		}
		resp := r.resp
		if st, ok := resp.Errors[sdsCertName]; ok {
			return inspect.Input{}, fmt.Errorf("source: SDS at %s reports an error for %q: %s", addr, sdsCertName, st.GetMessage())
		}
		if st, ok := resp.Errors[sdsBundleName]; ok && !haveBundle {
			in.Notes = append(in.Notes, fmt.Sprintf("the server reports an error for %s: %s", sdsBundleName, st.GetMessage()))
			haveBundle = true
		}
		secrets := resp.Secrets
		if resp.Invalid != nil {
			_ = s.NACK(resp, resp.Invalid.Error())
			in.Rejections = append(in.Rejections, "an Envoy-like SDS client rejects this response: "+resp.Invalid.Error())
			secrets = rawSecrets(resp)
		} else if err := s.ACK(resp); err != nil {
			return inspect.Input{}, fmt.Errorf("source: SDS at %s: %w", addr, err)
		}
		if sec := secrets[sdsCertName]; sec != nil && !haveCert {
			if err := sdsCertificate(&in, sec, addr); err != nil {
				return inspect.Input{}, err
			}
			haveCert = true
			if !haveBundle {
				grace = time.After(sdsBundleGrace)
			}
		}
		if sec := secrets[sdsBundleName]; sec != nil && !haveBundle {
			if err := sdsBundle(&in, sec, addr); err != nil {
				return inspect.Input{}, err
			}
			haveBundle = true
		}
	}
	return in, nil
}

// rawSecrets decodes every Secret of a response that the client refused,
// without its checks, so that the material can still be inspected.
func rawSecrets(resp *sdsclient.Response) map[string]*tlsv3.Secret {
	out := map[string]*tlsv3.Secret{}
	for name, sec := range resp.Secrets {
		out[name] = sec
	}
	for _, a := range resp.Raw.GetResources() {
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			continue
		}
		if _, ok := out[sec.GetName()]; !ok {
			out[sec.GetName()] = sec
		}
	}
	return out
}

func sdsCertificate(in *inspect.Input, sec *tlsv3.Secret, addr string) error {
	tc := sec.GetTlsCertificate()
	if tc == nil {
		return fmt.Errorf("source: SDS at %s: secret %q is not a tls_certificate", addr, sec.GetName())
	}
	chain := tc.GetCertificateChain().GetInlineBytes()
	if len(chain) == 0 {
		return fmt.Errorf("source: SDS at %s: secret %q has no inline certificate chain", addr, sec.GetName())
	}
	certs, err := pemder.ParseCertificates(chain)
	if err != nil {
		return fmt.Errorf("source: SDS at %s: secret %q certificate chain: %w", addr, sec.GetName(), err)
	}
	in.Chain = certs
	if key := tc.GetPrivateKey().GetInlineBytes(); len(key) > 0 {
		pub, err := pemder.ParseKey(key)
		if err != nil {
			return fmt.Errorf("source: SDS at %s: secret %q private key: %w", addr, sec.GetName(), err)
		}
		in.PublicKey, in.KeySource = pub, "sds:"+sec.GetName()
	}
	return nil
}

func sdsBundle(in *inspect.Input, sec *tlsv3.Secret, addr string) error {
	vc := sec.GetValidationContext()
	if vc == nil {
		return fmt.Errorf("source: SDS at %s: secret %q is not a validation_context", addr, sec.GetName())
	}
	ca := vc.GetTrustedCa().GetInlineBytes()
	if len(ca) == 0 {
		return fmt.Errorf("source: SDS at %s: secret %q has no inline trusted_ca", addr, sec.GetName())
	}
	certs, err := pemder.ParseCertificates(ca)
	if err != nil {
		return fmt.Errorf("source: SDS at %s: secret %q trusted_ca: %w", addr, sec.GetName(), err)
	}
	in.Bundle, in.BundleSource = certs, "sds:"+sec.GetName()
	return nil
}
