package federation_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/castellan-mesh/castellan/ca/jwtapi"
	"github.com/castellan-mesh/castellan/integration/harness"
)

// TestFederatedJWTSVID: a workload of a.test validates a JWT-SVID of
// b.test through a.test's agent (ValidateJWTSVID) and with go-spiffe's
// jwtsvid.ParseAndValidate against the set from FetchJWTBundles, which
// holds b.test's JWT authorities keyed by its trust domain ID; a token of
// b.test for another audience fails both ways.
func TestFederatedJWTSVID(t *testing.T) {
	s := startStack(t)
	addr := workloadapi.WithAddr("unix://" + s.agentSocket)
	tokB := s.jwtOf(t, s.b, "api", "a-service")

	harness.WaitFor(t, waitTimeout, "b.test's JWT authorities at a.test's workload", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		set, err := workloadapi.FetchJWTBundles(ctx, addr)
		return err == nil && set.Has(tdB) && set.Has(tdA)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	set, err := workloadapi.FetchJWTBundles(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(tokB, set, []string{"a-service"})
	if err != nil {
		t.Fatalf("a JWT-SVID of b.test does not validate against a.test's FetchJWTBundles: %v", err)
	}
	if svid.ID.String() != "spiffe://b.test/ns/default/sa/api" {
		t.Fatalf("validated ID %s", svid.ID)
	}
	if _, err := jwtsvid.ParseAndValidate(tokB, set, []string{"other"}); err == nil {
		t.Fatal("a JWT-SVID of b.test for a-service validated for another audience")
	}

	got, err := workloadapi.ValidateJWTSVID(ctx, tokB, "a-service", addr)
	if err != nil {
		t.Fatalf("a.test's agent does not validate a JWT-SVID of b.test: %v", err)
	}
	if got.ID != svid.ID {
		t.Fatalf("agent validated ID %s", got.ID)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, tokB, "other", addr); err == nil {
		t.Fatal("a.test's agent validated a JWT-SVID of b.test for another audience")
	}
	// A local token still validates beside it.
	if _, err := workloadapi.ValidateJWTSVID(ctx, s.jwtOf(t, s.a, "web", "a-service"), "a-service", addr); err != nil {
		t.Fatalf("a local JWT-SVID: %v", err)
	}
}

// jwtOf asks ca for a JWT-SVID of default/sa for audience.
func (s *stack) jwtOf(t *testing.T, ca *harness.CAProcess, sa, audience string) string {
	t.Helper()
	tok, err := s.minter.Mint("default", sa, []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ca.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: ca.Roots(t), ServerName: ca.ServerName, MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := jwtapi.NewJWTServiceClient(conn).MintJWTSVID(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok),
		&jwtapi.MintJWTSVIDRequest{Audience: []string{audience}})
	if err != nil {
		t.Fatalf("JWT-SVID from the CA: %v", err)
	}
	return resp.GetToken()
}
