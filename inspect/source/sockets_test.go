package source_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/castellan-mesh/castellan/agent/svidstore"
	"github.com/castellan-mesh/castellan/agent/svidstore/svidstoretest"
	"github.com/castellan-mesh/castellan/agent/workloadapi"
	"github.com/castellan-mesh/castellan/inspect"
	"github.com/castellan-mesh/castellan/inspect/source"
	"github.com/castellan-mesh/castellan/internal/testpki"
	"github.com/castellan-mesh/castellan/sds"
)

// serveUnix serves register's services on a Unix socket in a temp dir until
// the test ends, and returns the socket's unix:// address.
func serveUnix(t *testing.T, register func(grpc.ServiceRegistrar)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return "unix://" + path
}

// TestSockets reads the SDS and Workload API servers the agent uses, fed
// from one store, without the rest of the agent.
func TestSockets(t *testing.T) {
	ca := svidstoretest.NewCA(t, "test root")
	store := svidstore.New()
	t.Cleanup(store.Close)
	svid := ca.Issue(t, "spiffe://example.test/ns/default/sa/web", time.Hour)
	store.SetBundle(ca.Bundle(t))
	store.SetSVID(svid)

	sdsSrv, err := sds.New(store)
	if err != nil {
		t.Fatal(err)
	}
	sdsAddr := serveUnix(t, sdsSrv.Register)
	wlSrv, err := workloadapi.New(store)
	if err != nil {
		t.Fatal(err)
	}
	wlAddr := serveUnix(t, wlSrv.Register)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tt := range []struct {
		name       string
		load       func() (inspect.Input, error)
		wantBundle string
	}{
		{"SDS", func() (inspect.Input, error) { return source.SDS(ctx, sdsAddr) }, "sds:ROOTCA"},
		{"Workload API", func() (inspect.Input, error) { return source.WorkloadAPI(ctx, wlAddr) }, "workload-api:" + wlAddr + " bundle for example.test"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in, err := tt.load()
			if err != nil {
				t.Fatal(err)
			}
			r := inspect.Analyze(in, inspect.Options{})
			if r.Status != inspect.StatusValid || !r.Verification.Chain.Verified || !r.Verification.Key.Matches ||
				r.Verification.SVID.SPIFFEID != "spiffe://example.test/ns/default/sa/web" || r.Bundle.Source != tt.wantBundle {
				t.Errorf("status %s, bundle %+v, verification %+v, findings %+v", r.Status, r.Bundle, r.Verification, r.Findings)
			}
			if !in.Chain[0].Equal(svid.X509.Certificates[0]) {
				t.Error("not the SVID in the store")
			}
		})
	}

	t.Run("SDS without an SVID yet", func(t *testing.T) {
		empty := svidstore.New()
		t.Cleanup(empty.Close)
		srv, err := sds.New(empty)
		if err != nil {
			t.Fatal(err)
		}
		addr := serveUnix(t, srv.Register)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err = source.SDS(ctx, addr)
		if err == nil || !strings.Contains(err.Error(), "no default secret before the time limit") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("bad addresses", func(t *testing.T) {
		if _, err := source.SDS(ctx, "/no/scheme"); err == nil || !strings.Contains(err.Error(), "want unix:///path") {
			t.Errorf("SDS err = %v", err)
		}
		if _, err := source.WorkloadAPI(ctx, "tcp://"); err == nil || !strings.Contains(err.Error(), "Workload API address") {
			t.Errorf("WorkloadAPI err = %v", err)
		}
	})
}

// rejectedSDS is an SDS server that answers every stream with one response
// whose default secret pairs the chain with another key: a response Envoy
// NACKs. It exists to test that the material is still inspected.
type rejectedSDS struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	resources []*anypb.Any
	nacked    chan string
}

func (s *rejectedSDS) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&discoveryv3.DiscoveryResponse{VersionInfo: "1", Nonce: "n1", TypeUrl: sds.SecretTypeURL, Resources: s.resources}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		if req.GetErrorDetail() != nil {
			select {
			case s.nacked <- req.GetErrorDetail().GetMessage():
			default:
			}
		}
	}
}

func TestSDSRejectedResponse(t *testing.T) {
	p := testpki.New(t)
	other := testpki.Key(t)
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	mustAny := func(s *tlsv3.Secret) *anypb.Any {
		a, err := anypb.New(s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	srv := &rejectedSDS{nacked: make(chan string, 1), resources: []*anypb.Any{
		mustAny(&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(testpki.CertPEM(p.Leaf, p.Intermediate)), PrivateKey: inline(testpki.KeyPEM(t, other)),
		}}}),
		mustAny(&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(testpki.CertPEM(p.Root)),
		}}}),
	}}
	addr := serveUnix(t, func(g grpc.ServiceRegistrar) { secretv3.RegisterSecretDiscoveryServiceServer(g, srv) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := source.SDS(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.nacked:
	case <-ctx.Done():
		t.Error("the response was not NACKed")
	}
	r := inspect.Analyze(in, inspect.Options{})
	var codes []string
	for _, f := range r.Findings {
		codes = append(codes, f.Code)
	}
	if r.Status != inspect.StatusInvalid || !slices.Contains(codes, "source-rejected") || !slices.Contains(codes, "key-mismatch") {
		t.Errorf("status %s, findings %v", r.Status, codes)
	}
	if !r.Verification.Chain.Verified {
		t.Errorf("the chain itself should verify: %+v", r.Verification.Chain)
	}
}
