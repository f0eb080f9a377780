package server

import (
	"context"
	"crypto"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/castellan-mesh/castellan/ca/jwtapi"
	"github.com/castellan-mesh/castellan/ca/jwtsvid"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// noJWT is a JWTIssuer that signs nothing: the tests here never get past
// decoding.
type noJWT struct{}

func (noJWT) Mint(context.Context, spiffeid.ID, []string, time.Duration) (*jwtsvid.Token, error) {
	return nil, context.Canceled
}
func (noJWT) JWTAuthorities() map[string]crypto.PublicKey { return nil }

// TestOversizedRequestsCounted: a request over MaxRequestBytes is refused
// with ResourceExhausted on every service the CA serves, and counted once
// as received and as rejected for oversized_request when the answer is
// sent. A request at the limit is decoded and judged on its content, and
// other ResourceExhausted answers (the peer failure limit) are not counted
// as oversized.
func TestOversizedRequestsCounted(t *testing.T) {
	s := start(t, func(c *Config) {
		c.JWT = noJWT{}
		c.Limits = Limits{PeerFailureRate: 0.001, PeerFailureBurst: 1}
	})
	ctx := context.Background()
	conn := s.client.Conn()
	// CSR sizes that make the encoded request MaxRequestBytes+1 and
	// MaxRequestBytes bytes (tag, 3-byte length, CSR).
	over := strings.Repeat("A", MaxRequestBytes+1-4)
	at := strings.Repeat("A", MaxRequestBytes-4)
	tests := []struct {
		name      string
		call      func() error
		code      codes.Code
		oversized bool
	}{
		{"certificate service, one byte over", func() error {
			_, err := s.client.CreateCertificate(ctx, "good", []byte(over), 0)
			return err
		}, codes.ResourceExhausted, true},
		{"certificate service, 4 MiB", func() error {
			_, err := s.client.CreateCertificate(ctx, "good", []byte(strings.Repeat("A", 4<<20)), 0)
			return err
		}, codes.ResourceExhausted, true},
		{"certificate service, at the limit", func() error {
			_, err := s.client.CreateCertificate(ctx, "good", []byte(at), 0)
			return err
		}, codes.InvalidArgument, false},
		{"JWT service", func() error {
			_, err := jwtapi.NewJWTServiceClient(conn).MintJWTSVID(ctx, &jwtapi.MintJWTSVIDRequest{Audience: []string{over}})
			return err
		}, codes.ResourceExhausted, true},
		{"health check", func() error {
			_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: over})
			return err
		}, codes.ResourceExhausted, true},
		{"health watch (a stream)", func() error {
			w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: over})
			if err != nil {
				return err
			}
			_, err = w.Recv()
			return err
		}, codes.ResourceExhausted, true},
		{"failed authentication", func() error {
			_, err := s.client.CreateCertificate(ctx, "junk", csrFor(t, ""), 0)
			return err
		}, codes.Unauthenticated, false},
		{"peer failure limit", func() error {
			_, err := s.client.CreateCertificate(ctx, "junk", csrFor(t, ""), 0)
			return err
		}, codes.ResourceExhausted, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			received := testutil.ToFloat64(s.metrics.received)
			oversized := counter(s, "castellan_ca_csr_rejected_total", string(reasonOversized))
			err := tt.call()
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
			}
			if tt.code == codes.ResourceExhausted && tt.oversized && !strings.Contains(err.Error(), "larger than max") {
				t.Errorf("message %q does not say the request is too large", err)
			}
			want := 0.0
			if tt.oversized {
				want = 1
			}
			if got := counter(s, "castellan_ca_csr_rejected_total", string(reasonOversized)) - oversized; got != want {
				t.Errorf("oversized_request counted %v times, want %v", got, want)
			}
			if tt.oversized {
				if got := testutil.ToFloat64(s.metrics.received) - received; got != 1 {
					t.Errorf("received counted %v times, want 1", got)
				}
			}
		})
	}
}

// TestRegistrarKeepsServices: the services registered through the
// counting registrar keep their names and methods.
func TestRegistrarKeepsServices(t *testing.T) {
	s := start(t, func(c *Config) { c.JWT = noJWT{} })
	info := s.grpc.GetServiceInfo()
	for _, desc := range []struct {
		name    string
		methods int
	}{
		{pb.IstioCertificateService_ServiceDesc.ServiceName, len(pb.IstioCertificateService_ServiceDesc.Methods)},
		{jwtapi.JWTService_ServiceDesc.ServiceName, len(jwtapi.JWTService_ServiceDesc.Methods)},
		{healthpb.Health_ServiceDesc.ServiceName, len(healthpb.Health_ServiceDesc.Methods) + len(healthpb.Health_ServiceDesc.Streams)},
	} {
		if got := len(info[desc.name].Methods); got != desc.methods {
			t.Errorf("%s: %d methods, want %d", desc.name, got, desc.methods)
		}
	}
}

// TestPeerOf: the peer address of a TCP connection is read without
// formatting it, with the same result as parsing its text.
func TestPeerOf(t *testing.T) {
	viaText := func(a net.Addr) netip.Addr {
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}
		}
		return ap.Addr().Unmap()
	}
	for _, a := range []net.Addr{
		&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 443},
		&net.TCPAddr{IP: net.IP{10, 1, 2, 3}, Port: 1},
		&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 15012},
		&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 15012, Zone: "eth0"},
		&net.TCPAddr{Port: 15012},
		&net.TCPAddr{IP: net.IP{1, 2, 3}, Port: 15012},
		&net.UnixAddr{Name: "/run/castellan.sock", Net: "unix"},
		&net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53},
	} {
		if got, want := peerOf(a), viaText(a); got != want {
			t.Errorf("peerOf(%v) = %v, want %v", a, got, want)
		}
	}
	if got := peerOf(nil); got.IsValid() {
		t.Errorf("peerOf(nil) = %v", got)
	}
	if got := peerOf((*net.TCPAddr)(nil)); got.IsValid() {
		t.Errorf("peerOf of a nil *TCPAddr = %v", got)
	}
}
