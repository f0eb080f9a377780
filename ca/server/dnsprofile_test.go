package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/castellan-mesh/castellan/ca"
	"github.com/castellan-mesh/castellan/ca/nodeauth"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// TestDNSProfile: the service account a DNS profile names gets its DNS
// names; a name outside the list is PermissionDenied, a DNS SAN from
// another caller InvalidArgument, and a node agent asking on that account's
// behalf (ImpersonatedIdentity) gets no DNS name. Each refusal is counted
// by reason.
func TestDNSProfile(t *testing.T) {
	profile, err := ca.ParseDNSProfile("shop/web=web.shop.svc")
	if err != nil {
		t.Fatal(err)
	}
	imp, err := nodeauth.New(nodeauth.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		NodeAgents:  []nodeauth.ServiceAccount{{Namespace: "castellan-system", Name: "castellan-agent"}},
		Pods:        onePod{synced: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, func(c *Config) {
		c.DNSProfile = profile
		c.Impersonation = imp
		c.Authenticator = tokenTable{
			"agent": {Namespace: "castellan-system", ServiceAccount: "castellan-agent", PodName: "agent-a", PodUID: "uid-a", NodeName: "node-a"},
			"web":   {Namespace: "shop", ServiceAccount: "web", PodName: "web-1", PodUID: "uid-w"},
			"other": {Namespace: "shop", ServiceAccount: "db"},
		}
	})
	csr := func(names ...string) string {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: names}, key)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	onBehalfOfWeb := &structpb.Struct{Fields: map[string]*structpb.Value{impersonationKey: structpb.NewStringValue("spiffe://cluster.local/ns/shop/sa/web")}}
	tests := []struct {
		name     string
		token    string
		req      *pb.IstioCertificateRequest
		code     codes.Code
		contains string
	}{
		{"its own names", "web", &pb.IstioCertificateRequest{Csr: csr("web.shop.svc")}, codes.OK, ""},
		{"a name outside its list", "web", &pb.IstioCertificateRequest{Csr: csr("db.shop.svc")}, codes.PermissionDenied, `"db.shop.svc", which is not in the DNS SAN profile`},
		{"another caller", "other", &pb.IstioCertificateRequest{Csr: csr("web.shop.svc")}, codes.InvalidArgument, "no DNS SAN profile names this service account"},
		{"through impersonation", "agent", &pb.IstioCertificateRequest{Csr: csr("web.shop.svc"), Metadata: onBehalfOfWeb}, codes.PermissionDenied, "never through impersonation"},
		{"impersonation without DNS names", "agent", &pb.IstioCertificateRequest{Csr: csr(), Metadata: onBehalfOfWeb}, codes.OK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := s.client.CreateCertificateRequest(context.Background(), tt.token, tt.req)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %s (%v), want %s", got, err, tt.code)
			}
			if tt.code != codes.OK {
				if !strings.Contains(status.Convert(err).Message(), tt.contains) {
					t.Fatalf("message %q does not say %q", status.Convert(err).Message(), tt.contains)
				}
				return
			}
			block, _ := pem.Decode([]byte(chain[0]))
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/shop/sa/web" {
				t.Fatalf("SVID for %v", leaf.URIs)
			}
		})
	}
	for reason, want := range map[ca.Reason]float64{ca.ReasonDNSNotAllowed: 2, ca.ReasonForbiddenSAN: 1} {
		if n := counter(s, "castellan_ca_csr_rejected_total", string(reason)); n != want {
			t.Errorf("castellan_ca_csr_rejected_total{reason=%s} = %v, want %v", reason, n, want)
		}
	}
}
